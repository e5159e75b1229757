"""Strengths and weaknesses of each candidate, attached to that candidate."""

from __future__ import annotations

from archon import prompts
from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, first_text


class Critique(Technique):
    name = "critique"
    description = "an LLM critique attached to every candidate"

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        question = ctx.query.question_text()
        requests = [
            self.request(ctx, prompts.render("critique.j2", self.params.prompt_template,
                                             question=question, candidate=c.text))
            for c in inputs
        ]
        results = yield list(requests)
        out = []
        for cand, res in zip(inputs, results, strict=True):
            text = first_text(res)
            if text is None:
                ctx.note(f"critique of {cand.id} skipped")
                out.append(cand)
            else:
                out.append(cand.derive(critique=text.strip()))
        return out
