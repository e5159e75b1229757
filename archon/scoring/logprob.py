"""Log-probability of a candidate: the generator's own, or another model's."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from archon.backends.types import ScoreRequest, ScoreResult
from archon.cost import CallCost, CostInputs
from archon.prompts import render, template_tokens
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram
from archon.scoring.llm import LLMScorer
from archon.scoring.values import NAN, mean


class LogprobScorer(LLMScorer):
    """Mean (or summed) token log-probability of each candidate as the answer.

    Without ``model`` and with the candidates' own generations at hand (``ctx.samples``,
    as step searches pass them), the generator's log-probabilities are read with no
    extra call: in a step search that is the newest step's mean log-probability, the
    cheap "self-certainty" step reward. Otherwise one ``ScoreRequest`` holding every
    candidate asks ``model`` (e.g. a stronger model's likelihood of a weaker one's answers).
    Values are <= 0.
    """

    key: ClassVar[str] = "logprob"
    type: Literal["logprob"] = "logprob"
    reduce: Literal["mean", "sum"] = Field("mean", description="mean per token (length-neutral) or total")

    def uses_generation_logprobs(self) -> bool:
        return self.model is None

    def estimate(self, c: CostInputs) -> list[CallCost]:
        n = c.inputs.count
        if n <= 0:
            return []  # with ctx.samples (step searches) nothing is asked; best_of_n asks one request
        return [CallCost(self.model or c.model, n * (c.question + template_tokens("judge_logprob.j2")
                                                     + c.inputs.length), 0.0, 1)]

    def _from_samples(self, ctx: ScoreContext, count: int) -> list[float] | None:
        if self.model is not None or ctx.samples is None or len(ctx.samples) != count:
            return None
        out = []
        for s in ctx.samples:
            if s is None or not s.logprobs:
                out.append(NAN)
            else:
                lps = [t.logprob for t in s.logprobs]
                out.append(sum(lps) if self.reduce == "sum" else mean(lps))
        return out

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        own = self._from_samples(ctx, len(candidates))
        if own is not None:
            return own
        user = render("judge_logprob.j2", self.prompt_template, question=question)
        (result,) = yield [ScoreRequest(model=self.target(ctx), messages=self.messages(ctx, user, self.system),
                                        continuations=tuple(c if c else " " for c in candidates))]
        if not isinstance(result, ScoreResult) or not result.logprobs:
            ctx.note("logprob: scoring skipped (budget)")
            return [NAN] * len(candidates)
        return [float(total) if self.reduce == "sum" else mean(per_token)
                for total, per_token in zip(result.logprobs, result.token_logprobs, strict=True)]

    def score_steps(self, question: str, candidates: list[str], steps: list[list[str]],
                    ctx: ScoreContext) -> ScoreProgram:
        own = self._from_samples(ctx, len(candidates))
        if own is None:
            return (yield from super().score_steps(question, candidates, steps, ctx))
        # the generation only tells the newest step; earlier steps keep what the search knew
        out = []
        for c, (st, value) in enumerate(zip(steps, own, strict=True)):
            known = list(ctx.prior[c]) if ctx.prior is not None else []
            row = [*known[: len(st) - 1], *[NAN] * max(0, len(st) - 1 - len(known))]
            out.append([*row, value] if st else [])
        return out


SCORERS.register("logprob", LogprobScorer, "self_logprob")
