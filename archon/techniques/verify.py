"""An LLM judges each candidate; the accepted ones go on."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from archon import prompts
from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams, first_text

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(yes|no|correct|incorrect)", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


class VerifyParams(TechniqueParams):
    fallback: Literal["all", "first", "none"] = Field(
        "all", description="when no candidate passes: keep all (Archon's), the first, or none")


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
        question = ctx.query.question_text()
        requests = [self.request(ctx, prompts.render("verify.j2", self.params.prompt_template,
                                                     question=question, candidate=c.text))
                    for c in inputs]
        results = yield list(requests)
        judged: list[Candidate] = []
        for cand, res in zip(inputs, results, strict=True):
            text = first_text(res)
            verdict = parse_verdict(text) if text is not None else None
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
