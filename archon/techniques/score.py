"""Scoring with a scorer: ``score`` attaches a number to every candidate, ``best_of_n``
keeps the top k.

The scorer is any ``archon.verifiers.scorers.Scorer`` (an LLM judge, a pairwise judge,
DeepSeek-GRM, a log-probability, or a reward model over HTTP), written in YAML as
``scorer: {type: judge, model: embedded}``. Its requests go out in the node's rounds, so
the engine batches them across queries like any other call.
"""

from __future__ import annotations

from pydantic import Field

from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.verifiers.scorers import ScoreContext, Scorer, ScorerField, is_missing, make_scorer, order_by_score


def _default_judge() -> Scorer:
    return make_scorer({"type": "judge"})


class ScoreParams(TechniqueParams):
    scorer: ScorerField = Field(default_factory=_default_judge,
                                description="the scorer, e.g. {type: judge} / pairwise / grm / logprob / reward_model")
    key: str | None = Field(None, description="score name on the candidates (default: the scorer's own, "
                                              "e.g. judge, pairwise, grm, logprob, reward)")


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

    def scored(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        """Every input with ``scores[key]`` attached where the scorer produced a number."""
        if not inputs:
            ctx.note("no candidates to score")
            return []
        values = yield from self.params.scorer.score(ctx.query.question_text(), [c.text for c in inputs],
                                                     ScoreContext.for_node(ctx, self.params))
        if len(values) != len(inputs):
            raise ValueError(f"scorer returned {len(values)} scores for {len(inputs)} candidates")
        missing = sum(1 for v in values if is_missing(v))
        if missing:
            ctx.note(f"{missing} of {len(inputs)} candidates got no {self.key!r} score")
        out = [c if is_missing(v) else c.derive(scores={**c.scores, self.key: float(v)})
               for c, v in zip(inputs, values, strict=True)]
        return out

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

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        scored = yield from self.scored(ctx, inputs)
        values = [c.scores.get(self.key, float("nan")) for c in scored]
        if scored and all(is_missing(v) for v in values):
            ctx.note(f"no {self.key!r} scores; kept the input order")
        return [scored[i] for i in order_by_score(values)][: self.params.top_k]
