"""Majority or score-weighted voting over extracted final answers.

Answers are compared after ``normalize_answer`` (``1,000`` = ``1000``, ``\\dfrac12`` =
``\\frac{1}{2}``). Candidates with no extractable answer vote with their whole text.
Ties go to the answer seen first, so the result is deterministic.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.scoring import OptionalScorerField
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.techniques.score import score_candidates
from archon.verifiers.answers import normalize_answer


class VoteParams(TechniqueParams):
    method: Literal["majority", "weighted"] = "majority"
    weight: str | None = Field(None, description="score name weighting each vote (method: weighted; default: "
                                                 "the scorer's key)")
    scorer: OptionalScorerField = Field(None, description="method: weighted: score the candidates first with this "
                                                          "scorer and weight each vote by its score (e.g. a PRM: "
                                                          "weighted self-consistency)")


def vote_key(c: Candidate) -> str:
    return normalize_answer(c.answer) if c.answer else " ".join(c.text.split()).lower()


def tally(candidates: list[Candidate], method: str = "majority", weight: str | None = None) -> list[Candidate]:
    """All candidates, winning answer group first, each with a ``votes`` share."""
    if not candidates:
        return []
    totals: dict[str, float] = {}
    first_seen: dict[str, int] = {}
    for i, c in enumerate(candidates):
        key = vote_key(c)
        w = c.scores.get(weight, 0.0) if (method == "weighted" and weight) else 1.0
        totals[key] = totals.get(key, 0.0) + w
        first_seen.setdefault(key, i)
    total = sum(totals.values()) or 1.0
    ordered = sorted(totals, key=lambda k: (-totals[k], first_seen[k]))
    rank = {k: r for r, k in enumerate(ordered)}
    out = [c.derive(scores={**c.scores, "votes": totals[vote_key(c)] / total},
                    metadata={**c.metadata, "score_key": "votes"}) for c in candidates]
    return sorted(out, key=lambda c: (rank[vote_key(c)], first_seen[vote_key(c)]))


class Vote(Technique):
    name = "vote"
    Params = VoteParams
    description = "majority / weighted vote over final answers"
    params: VoteParams

    def models(self, defaults: Defaults) -> list[str]:
        scorer = self.params.scorer
        return [] if scorer is None else list(scorer.models(self.params.model or defaults.model))

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        scorer = self.params.scorer
        calls = scorer.estimate(c) if scorer is not None and self.params.method == "weighted" else []
        return calls, c.inputs

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        weight = p.weight
        if p.scorer is not None and p.method == "weighted" and inputs:
            weight = weight or p.scorer.key
            inputs = yield from score_candidates(self, ctx, inputs, p.scorer, weight)
        if p.method == "weighted" and not weight:
            ctx.note("weighted vote without `weight` or `scorer`: every vote counts 1")
        return tally(inputs, p.method, weight)
