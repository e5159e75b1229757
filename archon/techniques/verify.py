"""An LLM judges each candidate; the accepted ones go on.

``mode: one_call`` (default): one call reasons and ends with "Verdict: yes/no".
``mode: reason_then_verdict`` is Archon's verifier (ScalingIntelligence/Archon
``Verifier.py``): a first call writes the reasoning for why the response addresses the
instruction (system prompt ``reasoning_system``), a second call sees query, response and that
reasoning and ends with ``[Correct]`` or ``[Incorrect]`` (exactly one of them; anything else
is unreadable and the verdict call is repeated, at most ``max_retries`` times, where Archon
tries 10 times). A candidate whose verdict stays unreadable is rejected here; Archon drops it
from the next layer altogether.

The one-call check is a scorer (``scorer:``, default ``{type: judge, mode: verdict}``
with the node's temperature and prompt template). A candidate is accepted when its score
reaches ``threshold``; any scorer works (a yes/no probability, a reward model).
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, Literal

from pydantic import Field

from archon import prompts
from archon.backends.types import Message
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.scoring import NAN, Scorer, ScorerField, is_missing, make_scorer
from archon.scoring.parsing import parse_verdict
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams, first_text


def _verdict_judge() -> Scorer:
    return make_scorer({"type": "judge", "mode": "verdict", "temperature": 0.7})


ARCHON_REASONING_SYSTEM = "You are a reasoning generator for instructions and their responses."


class VerifyParams(TechniqueParams):
    fallback: Literal["all", "first", "none"] = Field(
        "all", description="when no candidate passes: keep all (Archon's), the first, or none")
    scorer: ScorerField = Field(default_factory=_verdict_judge,
                                description="the check: default {type: judge, mode: verdict}")
    threshold: float = Field(0.5, description="accept candidates whose score is at least this")
    mode: Literal["one_call", "reason_then_verdict"] = Field(
        "one_call", description="one call with a yes/no verdict, or Archon's reasoning call then a "
                                "[Correct]/[Incorrect] verdict call")
    reasoning_system: str = Field(ARCHON_REASONING_SYSTEM, description="system prompt of the reasoning call "
                                                                       "(reason_then_verdict)")
    max_retries: int = Field(2, ge=0, le=10, description="reason_then_verdict: re-asks for an unreadable verdict")
    reasoning_template: str | None = Field(None, description="jinja2 file overriding verify_reasoning.j2 "
                                                             "(prompt_template overrides the verdict prompt)")


def parse_bracket_verdict(text: str) -> bool | None:
    """Archon's verdict: ``[Correct]`` or ``[Incorrect]``; None when neither or both appear."""
    correct, incorrect = "[Correct]" in text, "[Incorrect]" in text
    if correct == incorrect:
        return None
    return correct


class Verify(Technique):
    name = "verify"
    Params = VerifyParams
    description = "LLM verification, keep accepted candidates"
    params: VerifyParams

    def models(self, defaults: Defaults) -> list[str]:
        if self.params.mode == "reason_then_verdict":
            return super().models(defaults)
        return list(dict.fromkeys(self.params.scorer.models(self.params.model or defaults.model)))

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        n = c.inputs.count
        if self.params.mode == "reason_then_verdict":  # a reasoning call, then a verdict call, per candidate
            prompt = c.question + c.inputs.length + prompts.template_tokens("verify_reasoning.j2")
            verdict = prompt + c.max_tokens + prompts.template_tokens("verify_verdict.j2")
            return [CallCost(c.model, n * (prompt + verdict), 2 * n * c.max_tokens, 2 * n)], c.inputs
        return self.params.scorer.estimate(c), c.inputs

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if self.params.mode == "reason_then_verdict":
            verdicts = yield from self.reason_then_verdict(ctx, inputs)
            values = [NAN if v is None else float(v) for v in verdicts]
        else:
            values = yield from self.one_call(ctx, inputs)
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

    def one_call(self, ctx: NodeContext, inputs: list[Candidate]) -> Generator[Any, Any, list[float]]:
        """The scorer's score per candidate; the default verdict judge takes the node's
        temperature and prompt template (one call that reasons and ends "Verdict: yes/no")."""
        if not inputs:
            return []
        p = self.params
        scorer = p.scorer
        if "scorer" not in p.model_fields_set:
            temperature = p.temperature if p.temperature is not None else ctx.defaults.temperature
            scorer = scorer.model_copy(update={"temperature": temperature, "prompt_template": p.prompt_template})
        return (yield from scorer.score(ctx.query.question_text(), [c.text for c in inputs],
                                        self.score_context(ctx)))

    def reason_then_verdict(self, ctx: NodeContext, inputs: list[Candidate]) -> Generator[Any, Any, list[bool | None]]:
        p = self.params
        question = ctx.query.question_text()
        reasoning_history = (Message("system", p.reasoning_system),) if p.reasoning_system else None
        requests = [self.request(ctx, "", history=(*(reasoning_history or ()), Message(
            "user", prompts.render("verify_reasoning.j2", p.reasoning_template, question=question, candidate=c.text))))
                    for c in inputs]
        results = yield list(requests)
        reasonings = [first_text(res) for res in results]
        verdicts: list[bool | None] = [None] * len(inputs)
        pending = [i for i, r in enumerate(reasonings) if r is not None]
        for i, r in enumerate(reasonings):
            if r is None:
                ctx.note(f"reasoning for {inputs[i].id} skipped (budget)")
        for attempt in range(p.max_retries + 1):
            if not pending:
                break
            requests = [self.request(ctx, prompts.render("verify_verdict.j2", p.prompt_template, question=question,
                                                         candidate=inputs[i].text, reasoning=reasonings[i]),
                                     seed_offset=attempt)
                        for i in pending]
            results = yield list(requests)
            still = []
            for i, res in zip(pending, results, strict=True):
                text = first_text(res)
                verdict = parse_bracket_verdict(text) if text is not None else None
                if verdict is None and text is not None:
                    still.append(i)
                verdicts[i] = verdict
            pending = still
        return verdicts


__all__ = ["Verify", "VerifyParams", "parse_bracket_verdict", "parse_verdict"]
