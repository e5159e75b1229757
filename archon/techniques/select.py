"""The output node: picks one candidate, deterministically (never at random)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams
from archon.techniques.vote import tally


def default_score_key(candidates: list[Candidate]) -> str | None:
    """The score the nearest scoring node wrote: its ``metadata.score_key`` (every technique
    that takes a scorer, and every ranking technique, records the key it wrote); else the
    most recently added score of the first scored candidate."""
    for c in candidates:
        key = c.metadata.get("score_key")
        if isinstance(key, str) and any(key in x.scores for x in candidates):
            return key
    for c in candidates:
        if c.scores:
            return list(c.scores)[-1]
    return None


class SelectParams(TechniqueParams):
    method: Literal["best_scored", "first", "vote"] = "best_scored"
    score: str | None = Field(None, description="score to maximise (best_scored); default: the key the nearest "
                                                "scoring node wrote (its scorer's key)")


class Select(Technique):
    name = "select"
    Params = SelectParams
    description = "pick the final answer: best-scored, first, or vote winner"
    params: SelectParams

    def models(self, defaults):  # type: ignore[no-untyped-def]
        return []

    def output_count(self, inputs: int) -> int:
        return min(1, inputs)

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        return [], Flow(min(1.0, c.inputs.count), c.inputs.length)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidate to select from")
            return []
        method = self.params.method
        if method == "first":
            return [inputs[0]]
        if method == "vote":
            return tally(inputs)[:1]
        key = self.params.score or default_score_key(inputs)
        if key is None:
            ctx.note("no scores on candidates; selected the first")
            return [inputs[0]]
        best = max(range(len(inputs)), key=lambda i: (inputs[i].scores.get(key, float("-inf")), -i))
        return [inputs[best]]
        yield []  # pragma: no cover
