"""Scoring with a scorer: ``score`` attaches a number to every candidate, ``best_of_n``
keeps the top k.

The scorer is any ``archon.scoring`` scorer (an LLM judge, a pairwise judge, DeepSeek-GRM,
a log-probability, a token-probability PRM, or a reward model served by vLLM), written in
YAML as ``scorer: {type: judge, model: embedded}``. Its requests go out in the node's
rounds, so the engine batches them across queries like any other call.
"""

from __future__ import annotations

from pydantic import Field

from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.scoring import NAN, Scorer, ScorerField, is_missing, make_scorer, order_by_score
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams


def _default_judge() -> Scorer:
    return make_scorer({"type": "judge"})


class ScoreParams(TechniqueParams):
    scorer: ScorerField = Field(default_factory=_default_judge,
                                description="the scorer, e.g. {type: judge} / pairwise / grm / logprob / token_prm / "
                                            "reward_model")
    key: str | None = Field(None, description="score name on the candidates (default: the scorer's own, "
                                              "e.g. judge, pairwise, grm, logprob, prm, reward)")


def score_candidates(tech: Technique, ctx: NodeContext, inputs: list[Candidate], scorer: Scorer,
                     key: str) -> Program:
    """Every input with ``scores[key]`` (and ``metadata.score_key``) where the scorer produced
    a number; the order is kept. Shared by every technique that takes a ``scorer:``."""
    if not inputs:
        return []
    question, texts = ctx.query.question_text(), [c.text for c in inputs]
    per_step: list[list[float]] | None = None
    if scorer.process:  # a PRM scores each step of a finished answer; its aggregation makes the score
        per_step = yield from scorer.score(question, texts, tech.score_context(ctx),
                                           steps=[scorer.split_steps(t) for t in texts])
        values = [scorer.reduce_steps(row) for row in per_step]
    else:
        values = yield from scorer.score(question, texts, tech.score_context(ctx))
    missing = sum(1 for v in values if is_missing(v))
    if missing:
        ctx.note(f"{missing} of {len(inputs)} candidates got no {key!r} score")
    out = []
    for i, (c, v) in enumerate(zip(inputs, values, strict=True)):
        if is_missing(v):
            out.append(c)
            continue
        extra = {"step_scores": per_step[i]} if per_step is not None else {}
        out.append(c.derive(scores={**c.scores, key: float(v)}, metadata={**c.metadata, "score_key": key, **extra}))
    return out


class Score(Technique):
    name = "score"
    Params = ScoreParams
    description = "attach a scorer's score to every candidate (order kept)"
    params: ScoreParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys(self.params.scorer.models(self.params.model or defaults.model)))

    @property
    def key(self) -> str:
        return self.params.key or self.params.scorer.key

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        out = Flow(float(self.output_count(int(c.inputs.count))), c.inputs.length)
        return self.params.scorer.estimate(c), out

    def scored(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidates to score")
            return []
        return (yield from score_candidates(self, ctx, inputs, self.params.scorer, self.key))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        return (yield from self.scored(ctx, inputs))


class BestOfNParams(ScoreParams):
    top_k: int = Field(1, ge=1, description="how many of the best-scored candidates to keep")


class BestOfN(Score):
    """Best-of-N (a.k.a. rejection sampling with a verifier; Cobbe et al. 2021, Lightman
    et al. 2023 with a reward model): keep the ``top_k`` candidates by the scorer."""

    name = "best_of_n"
    Params = BestOfNParams
    description = "keep the top-k candidates by a scorer"
    params: BestOfNParams

    def output_count(self, inputs: int) -> int:
        return min(self.params.top_k, inputs)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        scored = yield from self.scored(ctx, inputs)
        values = [c.scores.get(self.key, NAN) for c in scored]
        if scored and all(is_missing(v) for v in values):
            ctx.note(f"no {self.key!r} scores; kept the input order")
        return [scored[i] for i in order_by_score(values)][: self.params.top_k]
