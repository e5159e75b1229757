"""REBEL: multi-criteria reranking (LeVine & Varjavand 2025, "Relevance Isn't All You
Need: Scaling RAG Systems With Inference-Time Compute Via Multi-Criteria Reranking").

An LLM reasons about each candidate (chain of thought) and scores it 0-10 on several
named criteria, relevance plus secondary ones; the scores combine into one weighted
score ``scores["criteria"]`` (the weighted mean divided by 10, so in [0, 1]; each
criterion is also kept as ``scores["criteria.<name>"]``), and the top k are kept.

``mode: one_turn`` uses the configured criteria and weights (REBEL's fixed one-turn
prompt). ``mode: two_turn`` first asks the LLM which criteria and weights matter for
this query (REBEL's dynamic two-turn variant), then scores with those; if no usable
criteria come back, the configured ones are used and the trace says so.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from archon import prompts
from archon.data import Candidate
from archon.scoring import NAN, OptionalScorerField, order_by_score
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams, first_text
from archon.techniques.score import score_candidates


class Criterion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a short name the judge repeats in its answer, e.g. correctness")
    weight: float = Field(1.0, ge=0.0, description="relative weight in the combined score")
    description: str = Field("", description="what the criterion means, shown to the judge")

    @field_validator("name")
    @classmethod
    def _clean(cls, v: str) -> str:
        v = " ".join(v.strip().split())
        if not re.fullmatch(r"[A-Za-z][\w \-]{0,40}", v):
            raise ValueError("criterion names are short words (letters, digits, spaces, - and _)")
        return v


DEFAULT_CRITERIA = [
    Criterion(name="relevance", weight=1.0, description="addresses exactly what the question asks"),
    Criterion(name="correctness", weight=2.0, description="facts, reasoning and the final answer are right"),
    Criterion(name="completeness", weight=1.0, description="covers every part of the question"),
    Criterion(name="clarity", weight=0.5, description="easy to follow, no padding"),
]


class RerankParams(TechniqueParams):
    criteria: list[Criterion] = Field(default_factory=lambda: [c.model_copy() for c in DEFAULT_CRITERIA],
                                      min_length=1, description="named criteria with weights and descriptions")
    mode: Literal["one_turn", "two_turn"] = Field(
        "one_turn", description="one_turn: the configured criteria; two_turn: the LLM first proposes "
                                "query-specific criteria and weights")
    max_criteria: int = Field(5, ge=1, le=10, description="most criteria accepted from the proposal (two_turn)")
    top_k: int | None = Field(3, ge=1, description="how many candidates to keep (null: all, reordered)")
    scorer: OptionalScorerField = Field(None, description="rerank by this scorer instead of the criteria prompt "
                                                          "(e.g. a reward model)")


def _pattern(name: str) -> re.Pattern[str]:
    words = r"[\s_\-]+".join(re.escape(w) for w in re.split(r"[\s_\-]+", name))
    return re.compile(r"\b" + words + r"\b\s*(?:score)?\s*\**\s*[:=\-]\s*\**\s*(\d+(?:\.\d+)?)(?:\s*/\s*10)?",
                      re.IGNORECASE)


def parse_criteria_scores(text: str, names: list[str], high: float = 10) -> dict[str, float]:
    """``{name: score}`` for every criterion the text scores as ``name: N`` (last one wins)."""
    out: dict[str, float] = {}
    for name in names:
        found = [float(m) for m in _pattern(name).findall(text) if 0 <= float(m) <= high]
        if found:
            out[name] = found[-1]
    return out


_PROPOSAL = re.compile(r"^\s*(?:[-*\d.)]+\s*)?\**([A-Za-z][\w \-]{0,40}?)\**\s*\(\s*(?:weight\s*[:=]?\s*)?"
                       r"(\d+(?:\.\d+)?)\s*\)\s*[:\-]\s*(.*)$", re.IGNORECASE | re.MULTILINE)


def parse_proposed_criteria(text: str, limit: int) -> list[Criterion]:
    """Criteria from lines like ``- correctness (3): the answer is right``."""
    out: list[Criterion] = []
    seen: set[str] = set()
    for name, weight, desc in _PROPOSAL.findall(text):
        name = " ".join(name.split()).lower()
        if name in seen or float(weight) <= 0:
            continue
        seen.add(name)
        out.append(Criterion(name=name, weight=float(weight), description=desc.strip()))
        if len(out) == limit:
            break
    return out


def combine(scores: dict[str, float], criteria: list[Criterion], high: float = 10) -> float:
    """Weighted mean of the parsed criteria scores, scaled to [0, 1]; nan when none parsed."""
    total = sum(c.weight for c in criteria if c.name in scores)
    if not scores or total <= 0:
        return NAN
    return sum(c.weight * scores[c.name] for c in criteria if c.name in scores) / total / high


class Rerank(Technique):
    name = "rerank"
    Params = RerankParams
    description = "REBEL multi-criteria reranking: weighted per-criterion LLM scores, keep top-k"
    params: RerankParams

    def models(self, defaults: Defaults) -> list[str]:
        if self.params.scorer is None:
            return super().models(defaults)
        return list(self.params.scorer.models(self.params.model or defaults.model))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidates to rerank")
            return []
        if self.params.scorer is not None:
            key = self.params.scorer.key
            scored = yield from score_candidates(self, ctx, inputs, self.params.scorer, key)
            ranked = [scored[i] for i in order_by_score([c.scores.get(key) for c in scored])]
            return ranked if self.params.top_k is None else ranked[: self.params.top_k]
        question = ctx.query.question_text()
        criteria = list(self.params.criteria)
        if self.params.mode == "two_turn":
            proposal = prompts.render("rerank_propose.j2", None, question=question, criteria=criteria,
                                      max_criteria=self.params.max_criteria)
            (result,) = yield [self.request(ctx, proposal, seed_offset=1)]
            text = first_text(result)
            proposed = parse_proposed_criteria(text, self.params.max_criteria) if text is not None else []
            if proposed:
                criteria = proposed
                ctx.note("criteria for this query: " + ", ".join(f"{c.name} ({c.weight:g})" for c in criteria))
            else:
                ctx.note("criteria proposal " + ("skipped (budget)" if text is None else "unparsable")
                         + "; used the configured criteria")
        requests = [self.request(ctx, prompts.render("rerank_criteria.j2", self.params.prompt_template,
                                                     question=question, criteria=criteria, candidate=c.text))
                    for c in inputs]
        results = yield list(requests)
        names = [c.name for c in criteria]
        scored: list[Candidate] = []
        values: list[float] = []
        for i, (cand, res) in enumerate(zip(inputs, results, strict=True)):
            text = first_text(res)
            if text is None:
                ctx.note(f"candidate {i + 1}: scoring skipped (budget)")
                scored.append(cand)
                values.append(NAN)
                continue
            parsed = parse_criteria_scores(text, names)
            missing = [n for n in names if n not in parsed]
            if missing:
                ctx.note(f"candidate {i + 1}: no score for {', '.join(missing)}"
                         + ("" if parsed else f" in {text[:80]!r}"))
            value = combine(parsed, criteria)
            values.append(value)
            if parsed:
                extra = {f"criteria.{n.replace(' ', '_')}": v for n, v in parsed.items()}
                scored.append(cand.derive(scores={**cand.scores, **extra, "criteria": value},
                                          metadata={**cand.metadata, "score_key": "criteria"}))
            else:
                scored.append(cand)
        ranked = [scored[i] for i in order_by_score(values)]
        return ranked if self.params.top_k is None else ranked[: self.params.top_k]
