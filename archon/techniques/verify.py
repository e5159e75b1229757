"""An LLM judges each candidate; the accepted ones go on.

The check is a scorer (``scorer:``, default ``{type: judge, mode: verdict}``: a short
reasoned reply ending "Verdict: yes/no", Archon's verifier). A candidate is accepted
when its score reaches ``threshold``; any scorer works (a yes/no probability, a reward
model with a threshold on its reward).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archon.data import Candidate
from archon.scoring import Scorer, ScorerField, is_missing, make_scorer
from archon.scoring.parsing import parse_verdict
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams


def _verdict_judge() -> Scorer:
    return make_scorer({"type": "judge", "mode": "verdict", "temperature": 0.7})


class VerifyParams(TechniqueParams):
    fallback: Literal["all", "first", "none"] = Field(
        "all", description="when no candidate passes: keep all (Archon's), the first, or none")
    scorer: ScorerField = Field(default_factory=_verdict_judge,
                                description="the check: default {type: judge, mode: verdict}")
    threshold: float = Field(0.5, description="accept candidates whose score is at least this")


class Verify(Technique):
    name = "verify"
    Params = VerifyParams
    description = "LLM verification, keep accepted candidates"
    params: VerifyParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys(self.params.scorer.models(self.params.model or defaults.model)))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            return []
        scorer = self.params.scorer
        if self.params.prompt_template and getattr(scorer, "prompt_template", "") is None:
            scorer = scorer.model_copy(update={"prompt_template": self.params.prompt_template})
        values = yield from scorer.score(ctx.query.question_text(), [c.text for c in inputs], self.score_context(ctx))
        judged: list[Candidate] = []
        for cand, value in zip(inputs, values, strict=True):
            if is_missing(value):
                ctx.note(f"no verdict for {cand.id}; counted as rejected")
            ok = not is_missing(value) and value >= self.params.threshold
            judged.append(cand.derive(scores={**cand.scores, "verified": 1.0 if ok else 0.0},
                                      metadata={**cand.metadata, "score_key": "verified"}))
        accepted = [c for c in judged if c.scores["verified"] == 1.0]
        if accepted:
            return accepted
        ctx.note(f"no candidate passed verification; fallback={self.params.fallback}")
        if self.params.fallback == "all":
            return judged
        if self.params.fallback == "first":
            return judged[:1]
        return []


__all__ = ["Verify", "VerifyParams", "parse_verdict"]
