"""Pairwise preferences (MT-Bench's pairwise judge) turned into per-candidate win rates."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from archon.cost import CallCost, CostInputs
from archon.prompts import render, template_tokens
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram, samples_of
from archon.scoring.llm import LLMScorer
from archon.scoring.parsing import parse_preference
from archon.scoring.values import NAN


class PairwiseJudgeScorer(LLMScorer):
    """Pairwise preferences (MT-Bench's pairwise judge, Zheng et al. 2023) turned into
    scores: each candidate's win rate (a tie counts half) over its comparisons.

    ``round_robin`` compares every pair; ``vs_first`` compares each candidate with the
    first (the reference, which scores 0.5). ``both_orders`` asks each pair twice with
    the positions swapped, cancelling the judge's position bias.
    """

    key: ClassVar[str] = "pairwise"
    type: Literal["pairwise"] = "pairwise"
    mode: Literal["round_robin", "vs_first"] = Field("round_robin", description="which pairs are compared")
    both_orders: bool = Field(True, description="judge each pair in both orders (position-bias control)")

    def pairs(self, count: int) -> list[tuple[int, int]]:
        base = ([(i, j) for i in range(count) for j in range(i + 1, count)] if self.mode == "round_robin"
                else [(0, j) for j in range(1, count)])
        return [p for i, j in base for p in ([(i, j), (j, i)] if self.both_orders else [(i, j)])]

    def estimate(self, c: CostInputs) -> list[CallCost]:
        pairs = len(self.pairs(int(c.inputs.count))) if c.inputs.count > 1 else 0
        if not pairs:
            return []
        prompt = c.question + template_tokens("judge_pairwise.j2") + 2 * c.inputs.length
        return [CallCost(self.model or c.model, pairs * prompt, pairs * self.completion_tokens(c), pairs)]

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        if len(candidates) <= 1:
            return [0.5] * len(candidates)
        pairs = self.pairs(len(candidates))
        requests = [self.request(ctx, render("judge_pairwise.j2", self.prompt_template, question=question,
                                                      response_a=candidates[a], response_b=candidates[b]))
                    for a, b in pairs]
        results = yield list(requests)
        wins = [0.0] * len(candidates)
        games = [0] * len(candidates)
        unparsed = skipped = 0
        for (a, b), res in zip(pairs, results, strict=True):
            samples = samples_of(res)
            if not samples:
                skipped += 1
                continue
            pref = parse_preference(samples[0].text)
            if pref is None:
                unparsed += 1
                continue
            games[a] += 1
            games[b] += 1
            if pref == "tie":
                wins[a] += 0.5
                wins[b] += 0.5
            else:
                wins[a if pref == "A" else b] += 1.0
        if skipped:
            ctx.note(f"pairwise: {skipped} of {len(pairs)} comparisons skipped (budget)")
        if unparsed:
            ctx.note(f"pairwise: {unparsed} of {len(pairs)} comparisons had no verdict")
        out = [wins[i] / games[i] if games[i] else NAN for i in range(len(candidates))]
        if self.mode == "vs_first" and games[0]:
            out[0] = 0.5
        return out


SCORERS.register("pairwise", PairwiseJudgeScorer)
