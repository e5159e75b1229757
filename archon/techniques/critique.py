"""Strengths and weaknesses of each candidate, attached to that candidate.

``mode: each`` (default) critiques every candidate in its own call. ``mode: comparative``
is Archon's critic (ScalingIntelligence/Archon ``Critic.py``): ONE call shows every
candidate under an identifier ``[i]`` and asks for each one's strengths and weaknesses, so
the critic judges them against each other; the reply is split at ``[1]``, ``[2]``, ... in
order, and each piece must name both strengths and weaknesses. A reply that does not split
into one such critique per candidate is asked again (``max_retries``, with a new seed; Archon
retries up to 10 times, then fails), after which the candidates go on without critiques and
the trace says so.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archon import prompts
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams, first_text


class CritiqueParams(TechniqueParams):
    mode: Literal["each", "comparative"] = Field(
        "each", description="each: one call per candidate; comparative: Archon's one call judging all together")
    max_retries: int = Field(2, ge=0, le=10, description="comparative: re-asks when the reply does not split "
                                                         "into one critique per candidate")


def split_critiques(text: str, count: int) -> list[str] | None:
    """The critiques of ``[1]`` .. ``[count]``, in order; None unless every one is there and
    names both strengths and weaknesses."""
    out: list[str] = []
    pos = 0
    starts: list[tuple[int, int]] = []
    for k in range(1, count + 1):
        at = text.find(f"[{k}]", pos)
        if at < 0:
            return None
        starts.append((at, at + len(f"[{k}]")))
        pos = at + len(f"[{k}]")
    for j, (_, body_start) in enumerate(starts):
        end = starts[j + 1][0] if j + 1 < len(starts) else len(text)
        piece = text[body_start:end].replace("---", "").strip()
        low = piece.lower()
        if len(piece) < 10 or "strength" not in low or "weakness" not in low:
            return None
        out.append(piece)
    return out


class Critique(Technique):
    name = "critique"
    Params = CritiqueParams
    description = "an LLM critique attached to every candidate (one call each, or Archon's comparative call)"
    params: CritiqueParams

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        n, q = c.inputs.count, c.question
        if self.params.mode == "comparative":
            prompt = q + prompts.template_tokens("critique_comparative.j2") + n * c.inputs.length
            calls = [CallCost(c.model, prompt, n * c.max_tokens, 1)] if n else []
        else:
            prompt = q + prompts.template_tokens("critique.j2") + c.inputs.length
            calls = [CallCost(c.model, n * prompt, n * c.max_tokens, n)] if n else []
        return calls, Flow(n, c.inputs.length + c.max_tokens)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            return []
        if self.params.mode == "comparative":
            return (yield from self.run_comparative(ctx, inputs))
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

    def run_comparative(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        prompt = prompts.render("critique_comparative.j2", self.params.prompt_template,
                                question=ctx.query.question_text(), candidates=inputs)
        for attempt in range(self.params.max_retries + 1):
            (res,) = yield [self.request(ctx, prompt, seed_offset=attempt)]
            text = first_text(res)
            if text is None:
                ctx.note("comparative critique skipped (budget)")
                return list(inputs)
            critiques = split_critiques(text, len(inputs))
            if critiques is not None:
                return [c.derive(critique=k) for c, k in zip(inputs, critiques, strict=True)]
            ctx.note(f"attempt {attempt + 1}: the reply does not hold one critique (strengths and weaknesses) "
                     f"per candidate")
        ctx.note("no usable comparative critique; the candidates go on without critiques")
        return list(inputs)
