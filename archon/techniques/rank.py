"""Listwise ranking by an LLM; keeps the top k.

Parsing is lenient (``[2] > [1]``, ``2, 1, 3``, ``Response 2``) and bounded: a reply
with no usable ranking is asked again at most ``max_retries`` times with a new seed,
then the input order is kept and the trace says so. No blind paid loops.

``parse: archon`` reads a reply as Archon's ranker does (ScalingIntelligence/Archon
``Ranker.py``): only its first line, only bracketed identifiers ``[i]``. In both modes an
identifier named twice counts where it first appears, out-of-range ones are ignored, and
candidates the reply leaves out follow the ranked ones in their input order: Archon's
tie-breaking, so equal (unranked) candidates keep the order they came in.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from archon import prompts
from archon.cost import CallCost, CostInputs, Flow
from archon.data import Candidate
from archon.scoring import OptionalScorerField, order_by_score
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams, first_text
from archon.techniques.score import score_candidates

_ID = re.compile(r"\[(\d+)\]|(?:response|candidate)\s*#?(\d+)|\b(\d+)\b", re.IGNORECASE)


class RankParams(TechniqueParams):
    top_k: int = Field(3, ge=1, description="how many candidates to keep")
    use_critiques: bool = Field(True, description="show critiques attached by an earlier critique node")
    max_retries: int = Field(2, ge=0, le=5, description="re-asks when no ranking can be parsed")
    scorer: OptionalScorerField = Field(None, description="rank by this scorer's scores instead of one listwise "
                                                          "LLM prompt (e.g. {type: pairwise} or a reward model)")
    parse: Literal["lenient", "archon"] = Field(
        "lenient", description="lenient: identifiers anywhere in the reply; archon: bracketed ones on its first line")


def parse_ranking(text: str, count: int, mode: str = "lenient") -> list[int]:
    """Zero-based candidate indices in the order the text ranks them (distinct, in range)."""
    if mode == "archon":
        raw = re.findall(r"\[(\d+)\]", text.partition("\n")[0])
    else:
        bracketed = re.findall(r"\[(\d+)\]", text)
        raw = bracketed if bracketed else [next(g for g in m.groups() if g) for m in _ID.finditer(text)]
    seen: list[int] = []
    for token in raw:
        idx = int(token) - 1
        if 0 <= idx < count and idx not in seen:
            seen.append(idx)
    return seen


class Rank(Technique):
    name = "rank"
    Params = RankParams
    description = "listwise LLM ranking, keep top-k"
    params: RankParams

    def models(self, defaults: Defaults) -> list[str]:
        if self.params.scorer is None:
            return super().models(defaults)
        return list(self.params.scorer.models(self.params.model or defaults.model))

    def output_count(self, inputs: int) -> int:
        return min(self.params.top_k, inputs)

    def estimate(self, c: CostInputs) -> tuple[list[CallCost], Flow]:
        n = c.inputs.count
        out = Flow(min(float(self.params.top_k), n), c.inputs.length)
        if self.params.scorer is not None:
            return (self.params.scorer.estimate(c) if n > 1 else []), out
        if n <= 1:
            return [], out
        prompt = c.question + prompts.template_tokens("rank.j2") + n * c.inputs.length
        return [CallCost(c.model, prompt, float(self.params.max_tokens or 64), 1)], out

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if self.params.scorer is not None and len(inputs) > 1:
            key = self.params.scorer.key
            scored = yield from score_candidates(self, ctx, inputs, self.params.scorer, key)
            order = order_by_score([c.scores.get(key) for c in scored])
            return self._ranked(scored, order)
        if len(inputs) <= 1:
            return [c.derive(scores={**c.scores, "rank_score": 1.0}) for c in inputs]
        shown = inputs if self.params.use_critiques else [c.derive(critique=None) for c in inputs]
        prompt = prompts.render("rank.j2", self.params.prompt_template,
                                question=ctx.query.question_text(), candidates=shown)
        order: list[int] = []
        for attempt in range(self.params.max_retries + 1):
            temperature = None if attempt == 0 else max(0.7, self.params.temperature or 0.0)
            (result,) = yield [self.request(ctx, prompt, seed_offset=attempt, temperature=temperature,
                                            max_tokens=self.params.max_tokens or 64)]
            text = first_text(result)
            if text is None:
                ctx.note("ranking skipped (budget)")
                break
            order = parse_ranking(text, len(inputs), self.params.parse)
            if order:
                break
            ctx.note(f"attempt {attempt + 1}: no ranking in reply {text[:80]!r}")
        if not order:
            ctx.note("no parsable ranking; kept the input order")
        order += [i for i in range(len(inputs)) if i not in order]
        return self._ranked(inputs, order)

    def _ranked(self, inputs: list[Candidate], order: list[int]) -> list[Candidate]:
        n = len(inputs)
        ranked = [inputs[i].derive(scores={**inputs[i].scores, "rank_score": (n - pos) / n},
                                   metadata={**inputs[i].metadata, "score_key": "rank_score"})
                  for pos, i in enumerate(order)]
        return ranked[: self.params.top_k]
