"""DeepSeek-GRM: sampled principles + critiques + scores, aggregated by voting."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from archon.prompts import render
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram, samples_of
from archon.scoring.llm import LLMScorer
from archon.scoring.parsing import parse_score_list
from archon.scoring.values import NAN, mean


class GenerativeRewardScorer(LLMScorer):
    """DeepSeek-GRM (Liu et al. 2025, "Inference-Time Scaling for Generalist Reward
    Modeling"): the judge writes principles, critiques the responses against them and
    scores each 1-10, all in one generation; ``samples`` such generations are drawn in
    parallel and aggregated. ``sum`` is the paper's voting (scores summed over the valid
    samples, finer-grained than one sample); ``mean`` averages; ``majority`` counts how
    often each candidate gets the top score. Responses are judged together in groups of
    ``group_size``; a sample whose score list is incomplete is discarded.
    """

    key: ClassVar[str] = "grm"
    type: Literal["grm"] = "grm"
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature of the k judgments")
    samples: int = Field(4, ge=1, le=64, description="k: parallel judgments (inference-time scaling of the RM)")
    aggregate: Literal["sum", "mean", "majority"] = Field("sum", description="how the k judgments combine")
    principles: list[str] | None = Field(None, description="fixed principles (default: the judge writes its own)")
    group_size: int = Field(4, ge=1, le=16, description="responses judged together in one prompt")
    scale_max: int = Field(10, ge=2, le=100, description="each judgment scores 1 to scale_max")

    def calls_per_candidate(self, candidates: int) -> float:
        return -(-candidates // self.group_size) / max(candidates, 1)

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        if not candidates:
            return []
        groups = [list(range(s, min(s + self.group_size, len(candidates))))
                  for s in range(0, len(candidates), self.group_size)]
        requests = [self.request(ctx, render("judge_grm.j2", self.prompt_template, question=question,
                                                      responses=[candidates[i] for i in g],
                                                      principles=self.principles, scale_max=self.scale_max),
                                  n=self.samples)
                    for g in groups]
        results = yield list(requests)
        out = [NAN] * len(candidates)
        for g, res in zip(groups, results, strict=True):
            samples = samples_of(res)
            if not samples:
                ctx.note(f"grm: candidates {g[0] + 1}-{g[-1] + 1} not scored (call skipped)")
                continue
            valid = [v for v in (parse_score_list(s.text, len(g), 1, self.scale_max) for s in samples)
                     if v is not None]
            if len(valid) < len(samples):
                ctx.note(f"grm: {len(samples) - len(valid)} of {len(samples)} judgments had no complete score list")
            if not valid:
                continue
            for pos, i in enumerate(g):
                if self.aggregate == "sum":
                    out[i] = sum(v[pos] for v in valid)
                elif self.aggregate == "mean":
                    out[i] = mean([v[pos] for v in valid])
                else:
                    out[i] = sum(1.0 for v in valid if v[pos] == max(v)) / len(valid)
        return out


SCORERS.register("grm", GenerativeRewardScorer, "generative_reward", "deepseek_grm")
