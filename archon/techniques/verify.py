"""An LLM judges each candidate; the accepted ones go on.

``mode: one_call`` (default): one call reasons and ends with "Verdict: yes/no".
``mode: reason_then_verdict`` is Archon's verifier (ScalingIntelligence/Archon
``Verifier.py``): a first call writes the reasoning for why the response addresses the
instruction (system prompt ``reasoning_system``), a second call sees query, response and that
reasoning and ends with ``[Correct]`` or ``[Incorrect]`` (exactly one of them; anything else
is unreadable and the verdict call is repeated, at most ``max_retries`` times, where Archon
tries 10 times). A candidate whose verdict stays unreadable is rejected here; Archon drops it
from the next layer altogether.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any, Literal

from pydantic import Field

from archon import prompts
from archon.backends.types import Message
from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams, first_text

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(yes|no|correct|incorrect)", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


ARCHON_REASONING_SYSTEM = "You are a reasoning generator for instructions and their responses."


class VerifyParams(TechniqueParams):
    fallback: Literal["all", "first", "none"] = Field(
        "all", description="when no candidate passes: keep all (Archon's), the first, or none")
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


def parse_verdict(text: str) -> bool | None:
    """True/False from "Verdict: yes/no"; the last verdict wins; None when absent."""
    found = _VERDICT.findall(text)
    if found:
        return found[-1].lower() in ("yes", "correct")
    words = _WORD.findall(text)
    if words:
        return words[-1].lower() == "yes"
    return None


class Verify(Technique):
    name = "verify"
    Params = VerifyParams
    description = "LLM verification, keep accepted candidates"
    params: VerifyParams

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if self.params.mode == "reason_then_verdict":
            verdicts = yield from self.reason_then_verdict(ctx, inputs)
        else:
            verdicts = yield from self.one_call(ctx, inputs)
        judged: list[Candidate] = []
        for cand, verdict in zip(inputs, verdicts, strict=True):
            if verdict is None:
                ctx.note(f"no verdict for {cand.id}; counted as rejected")
            judged.append(cand.derive(scores={**cand.scores, "verified": 1.0 if verdict else 0.0}))
        accepted = [c for c in judged if c.scores["verified"] == 1.0]
        if accepted:
            return accepted
        ctx.note(f"no candidate passed verification; fallback={self.params.fallback}")
        if self.params.fallback == "all":
            return judged
        if self.params.fallback == "first":
            return judged[:1]
        return []

    def one_call(self, ctx: NodeContext, inputs: list[Candidate]) -> Generator[Any, Any, list[bool | None]]:
        question = ctx.query.question_text()
        requests = [self.request(ctx, prompts.render("verify.j2", self.params.prompt_template,
                                                     question=question, candidate=c.text))
                    for c in inputs]
        results = yield list(requests)
        texts = [first_text(res) for res in results]
        return [parse_verdict(t) if t is not None else None for t in texts]

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
