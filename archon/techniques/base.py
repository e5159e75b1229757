"""The technique interface: a node of the pipeline DAG.

A technique's ``run`` is a generator. It ``yield``s a list of model requests and
receives their results, as many rounds as it needs, then ``return``s its output
candidates. The engine drives every (node, query) generator of a DAG level in
lockstep and merges their requests into one backend batch per model per round, so a
technique written for one query is batched across all queries, samples, particles and
beams without knowing it.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from archon.backends.types import GenerationRequest, GenerationResult, Message, Sample, chat
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate, Query
from archon.scoring.base import ModelRequest, ModelResult, ScoreContext

Program = Generator[list[ModelRequest], list[ModelResult], list[Candidate]]


class TechniqueParams(BaseModel):
    """Parameters every technique accepts. Subclasses add their own; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="model for this node's calls (default: the pipeline's)")
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    system: str | None = Field(None, description="system prompt for this node's calls")
    prompt_template: str | None = Field(None, description="path to a jinja2 file overriding the packaged prompt")


@dataclass
class Defaults:
    """Pipeline-wide defaults a node falls back on."""

    model: str = "embedded"
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int = 0
    system: str | None = None


@dataclass
class NodeContext:
    """What a node may know while running for one query. No gold answer is reachable."""

    node_id: str
    query: Query
    defaults: Defaults
    rng: random.Random
    notes: list[str] = field(default_factory=list)
    step_scores: dict[tuple[str, ...], float] = field(default_factory=dict)
    """Per-step scores already computed for this query, by step prefix (step searches)."""

    def note(self, message: str) -> None:
        self.notes.append(message)


class Technique(ABC):
    name: ClassVar[str]
    Params: ClassVar[type[TechniqueParams]] = TechniqueParams
    consumes: ClassVar[Literal["query", "candidates"]] = "candidates"
    description: ClassVar[str] = ""

    def __init__(self, params: TechniqueParams | dict[str, Any] | None = None, **kwargs: Any) -> None:
        if params is None or isinstance(params, dict):
            params = self.Params(**{**(params or {}), **kwargs})
        elif kwargs:
            params = params.model_copy(update=kwargs)
        self.params = params

    def models(self, defaults: Defaults) -> list[str]:
        return [self.params.model or defaults.model]

    # -- what the technique knows about itself (read by config, the search and its cost model) --

    @classmethod
    def model_params(cls) -> tuple[str, ...]:
        """Parameters holding model names (``archon run --model X`` rewrites them). By default
        ``model``, ``*_model``, ``drafter`` and ``judge``; scorer parameters are found apart."""
        return tuple(name for name in cls.Params.model_fields
                     if name in ("model", "drafter", "judge") or name.endswith("_model"))

    def output_count(self, inputs: int) -> int:
        """How many candidates this node hands on for ``inputs`` candidates in."""
        return 1 if self.consumes == "query" else inputs

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow] | None:
        """Estimated calls per query and the candidates handed on; None: no estimate (the
        search then never skips this technique on a guess)."""
        return None

    @abstractmethod
    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        """Yield request lists, receive results, return output candidates."""

    # -- helpers shared by techniques -------------------------------------------------

    def request(self, ctx: NodeContext, user: str, *, model: str | None = None, n: int = 1,
                temperature: float | None = None, max_tokens: int | None = None,
                stop: Sequence[str] = (), logprobs: bool = False, top_logprobs: int = 0,
                assistant_prefix: str = "", seed_offset: int = 0,
                history: Sequence[Message] | None = None) -> GenerationRequest:
        """A chat request with this node's settings.

        ``history`` replaces the single user turn when the query itself is a chat.
        """
        p = self.params
        system = p.system if p.system is not None else ctx.defaults.system
        if history:
            lead = [Message("system", system)] if system and history[0].role != "system" else []
            messages = [*lead, *history]
        else:
            messages = list(chat(system, user))
        return GenerationRequest(
            model=model or p.model or ctx.defaults.model,
            messages=tuple(messages),
            assistant_prefix=assistant_prefix,
            n=n,
            temperature=temperature if temperature is not None else (
                p.temperature if p.temperature is not None else ctx.defaults.temperature),
            top_p=p.top_p,
            max_tokens=max_tokens or p.max_tokens or ctx.defaults.max_tokens,
            stop=tuple(stop),
            seed=ctx.defaults.seed + seed_offset,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
        )

    def score_context(self, ctx: NodeContext, *, samples: Sequence[Sample | None] | None = None,
                      prior: Sequence[Sequence[float]] | None = None) -> ScoreContext:
        """What a scorer run by this node may use: the node's model, seed, token limit, system
        prompt and trace notes (plus the candidates' generations and known step scores)."""
        p = self.params
        return ScoreContext(model=p.model or ctx.defaults.model, seed=ctx.defaults.seed,
                            max_tokens=p.max_tokens or ctx.defaults.max_tokens,
                            system=p.system if p.system is not None else ctx.defaults.system,
                            samples=samples, prior=prior, note=ctx.note)

    def describe(self) -> dict[str, Any]:
        return {"technique": self.name, **self.params.model_dump(exclude_defaults=True)}


def first_text(result: ModelResult) -> str | None:
    """The first sample's text, or None when the engine skipped the call (budget)."""
    if isinstance(result, GenerationResult) and result.samples:
        return result.samples[0].text
    return None
