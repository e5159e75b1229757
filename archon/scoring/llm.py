"""Settings and request building shared by scorers that prompt an LLM judge."""

from __future__ import annotations

from pydantic import Field

from archon.backends.types import GenerationRequest
from archon.cost import CostInputs
from archon.scoring.base import ScoreContext, Scorer


class LLMScorer(Scorer):
    """A scorer that renders a prompt template and asks a chat model."""

    temperature: float = Field(0.0, ge=0.0, le=2.0, description="judge sampling temperature")
    max_tokens: int | None = Field(None, ge=1, description="judge reply length (default: the node's)")
    system: str | None = Field(None, description="system prompt for judge calls (default: the node's)")
    prompt_template: str | None = Field(None, description="jinja2 file overriding the packaged judge prompt")

    def completion_tokens(self, c: CostInputs) -> float:
        return float(self.max_tokens or c.max_tokens)

    def request(self, ctx: ScoreContext, user: str, *, n: int = 1, temperature: float | None = None,
                max_tokens: int | None = None, seed_offset: int = 0, logprobs: bool = False,
                top_logprobs: int = 0, assistant_prefix: str = "") -> GenerationRequest:
        return GenerationRequest(
            model=self.target(ctx), messages=self.messages(ctx, user, self.system), n=n,
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=max_tokens or self.max_tokens or ctx.max_tokens, seed=ctx.seed + seed_offset,
            logprobs=logprobs, top_logprobs=top_logprobs, assistant_prefix=assistant_prefix,
        )
