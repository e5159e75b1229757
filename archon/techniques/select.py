"""The output node: picks one candidate, deterministically (never at random)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams
from archon.techniques.vote import tally

PREFERRED_SCORES = ("reward", "judge", "grm", "pairwise", "tests_passed", "nl_tests_passed", "rebel", "criteria",
                    "verified", "rank_score", "votes", "logprob", "mean_logprob")


class SelectParams(TechniqueParams):
    method: Literal["best_scored", "first", "vote"] = "best_scored"
    score: str | None = Field(None, description="score to maximise (best_scored); default: the first present of "
                                                + ", ".join(PREFERRED_SCORES))


class Select(Technique):
    name = "select"
    Params = SelectParams
    description = "pick the final answer: best-scored, first, or vote winner"
    params: SelectParams

    def models(self, defaults):  # type: ignore[no-untyped-def]
        return []

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidate to select from")
            return []
        method = self.params.method
        if method == "first":
            return [inputs[0]]
        if method == "vote":
            return tally(inputs)[:1]
        key = self.params.score or next((k for k in PREFERRED_SCORES if any(k in c.scores for c in inputs)), None)
        if key is None:
            ctx.note("no scores on candidates; selected the first")
            return [inputs[0]]
        best = max(range(len(inputs)), key=lambda i: (inputs[i].scores.get(key, float("-inf")), -i))
        return [inputs[best]]
        yield []  # pragma: no cover
