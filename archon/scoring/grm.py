"""DeepSeek-GRM: sampled principles + critiques + scores, aggregated by voting (``grm_vote``)."""

from __future__ import annotations

import math
from typing import ClassVar, Literal

from pydantic import Field

from archon.cost import CallCost, CostInputs
from archon.prompts import render, template_tokens
from archon.scoring.base import SCORERS, OptionalScorerField, ScoreContext, ScoreProgram, samples_of
from archon.scoring.grm_vote import Judgment, keep_by_meta, vote
from archon.scoring.llm import LLMScorer
from archon.scoring.parsing import parse_score_list
from archon.scoring.values import NAN


class GenerativeRewardScorer(LLMScorer):
    """DeepSeek-GRM (Liu et al. 2025, "Inference-Time Scaling for Generalist Reward
    Modeling"): the judge writes principles, critiques the responses against them and
    scores each 1-10, all in one generation; ``samples`` (k) such judgments are drawn in
    parallel and voted on (``archon.scoring.grm_vote``): ``sum`` is the paper's (scores summed
    over the judgments), ``mean`` averages, ``majority`` counts top scores.

    All responses are judged together in one prompt, as in the paper (``group_size``: at most
    that many per prompt; each group's sum is then put on the scale of k judgments so totals
    compare across groups). ``meta_rm`` (any scorer, e.g. a reward model or an LLM judge) rates
    each judgment, shown with the question and responses, and only the ``k_meta`` best vote:
    the paper's meta-RM guided voting. A judgment without a complete score list is discarded.
    """

    key: ClassVar[str] = "grm"
    type: Literal["grm"] = "grm"
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature of the k judgments")
    samples: int = Field(4, ge=1, le=64, description="k: parallel judgments (inference-time scaling of the RM)")
    aggregate: Literal["sum", "mean", "majority"] = Field("sum", description="how the k judgments combine")
    principles: list[str] | None = Field(None, description="fixed principles (default: the judge writes its own)")
    group_size: int | None = Field(None, ge=1, le=64, description="most responses per prompt (default: all)")
    scale_max: int = Field(10, ge=2, le=100, description="each judgment scores 1 to scale_max")
    meta_rm: OptionalScorerField = Field(None, description="a scorer rating each judgment (meta-RM guided voting)")
    k_meta: int | None = Field(None, ge=1, description="judgments kept by the meta-RM (default: half of k)")
    meta_template: str | None = Field(None, description="jinja2 file overriding judge_grm_meta.j2")

    def models(self, default: str) -> list[str]:
        own = [self.model or default]
        return list(dict.fromkeys(own + (list(self.meta_rm.models(default)) if self.meta_rm is not None else [])))

    def kept_count(self) -> int:
        return self.k_meta or max(1, math.ceil(self.samples / 2))

    def estimate(self, c: CostInputs) -> list[CallCost]:
        n = int(c.inputs.count)
        if n <= 0:
            return []
        size = min(self.group_size or n, n)
        groups = math.ceil(n / size)
        prompt = c.question + template_tokens("judge_grm.j2") + size * c.inputs.length
        k = self.samples
        out = [CallCost(self.model or c.model, groups * k * prompt, groups * k * self.completion_tokens(c), groups)]
        if self.meta_rm is not None:  # each judgment is shown to the meta-RM
            judged = CostInputs(c.question, type(c.inputs)(groups * k, size * c.inputs.length
                                                            + self.completion_tokens(c)), c.model, c.max_tokens)
            out += self.meta_rm.estimate(judged)
        return out

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        size = self.group_size or len(candidates)
        groups = [list(range(s, min(s + size, len(candidates)))) for s in range(0, len(candidates), size)]
        requests = [self.request(ctx, render("judge_grm.j2", self.prompt_template, question=question,
                                                      responses=[candidates[i] for i in g],
                                                      principles=self.principles, scale_max=self.scale_max),
                                  n=self.samples)
                    for g in groups]
        results = yield list(requests)
        judged: list[list[Judgment]] = []
        for g, res in zip(groups, results, strict=True):
            samples = samples_of(res)
            if not samples:
                ctx.note(f"grm: candidates {g[0] + 1}-{g[-1] + 1} not scored (call skipped)")
            judgments = []
            for s in samples:
                values = parse_score_list(s.text, len(g), 1, self.scale_max)
                judgments.append(Judgment(s.text, tuple(values) if values is not None else None))
            bad = sum(j.scores is None for j in judgments)
            if bad:
                ctx.note(f"grm: {bad} of {len(judgments)} judgments had no complete score list")
            judged.append(judgments)
        metas: list[list[float] | None] = [None] * len(groups)
        if self.meta_rm is not None:
            texts, where = [], []
            for gi, (g, judgments) in enumerate(zip(groups, judged, strict=True)):
                for ji, j in enumerate(judgments):
                    if j.scores is not None:
                        texts.append(render("judge_grm_meta.j2", self.meta_template, question=question,
                                                    responses=[candidates[i] for i in g], judgment=j.text))
                        where.append((gi, ji))
            meta_values = (yield from self.meta_rm.score(question, texts, ctx)) if texts else []
            for gi, judgments in enumerate(judged):
                metas[gi] = [NAN] * len(judgments)
            for (gi, ji), value in zip(where, meta_values, strict=True):
                metas[gi][ji] = value  # type: ignore[index]
        k_meta = self.kept_count() if self.meta_rm is not None else None
        keeps = [keep_by_meta(judgments, metas[gi], k_meta) for gi, judgments in enumerate(judged)]
        nominal = max((len(k) for k in keeps), default=0)  # one group: the plain sum
        out = [NAN] * len(candidates)
        for g, judgments, keep in zip(groups, judged, keeps, strict=True):
            for pos, value in enumerate(vote(judgments, len(g), nominal, keep, self.aggregate)):
                out[g[pos]] = value
        return out


SCORERS.register("grm", GenerativeRewardScorer, "generative_reward", "deepseek_grm")
