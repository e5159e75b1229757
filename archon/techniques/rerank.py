"""REBEL: multi-criteria reranking (LeVine & Varjavand 2025, "Relevance Isn't All You
Need: Scaling RAG Systems With Inference-Time Compute Via Multi-Criteria Reranking";
reference code microsoft/REBEL and its ``REBELRerank`` postprocessor for llama_index).

``preset: rebel`` (the default) is the paper's method. The candidates are the "documents":
they are shown to the LLM listwise, ``batch_size`` (10) at a time, as ``Document i:`` blocks
followed by the question, and the LLM answers one line per kept document,
``Doc: i, Relevance: s`` where ``s`` is the document's *final* score.

- ``mode: one_turn``: a fixed prompt (``rebel_one_turn.j2``) scores relevance 0-10, discards
  documents with relevance < 3, scores five secondary properties 0-5 (depth, diversity,
  clarity, authoritativeness, recency) and ranks by
  ``final = relevance + 0.5 * (depth + diversity + clarity + authoritativeness + recency)``.
- ``mode: two_turn`` (the reference's default): the LLM first writes the reranking prompt
  itself from the query alone (``rebel_meta.j2``): query-specific properties, rubric and
  weights; that prompt, with ``{context_str}`` / ``{query_str}`` filled in, then scores each
  batch. A generated prompt without ``{context_str}`` falls back to the one-turn prompt (noted).

All batches' lines are pooled and sorted by final score, highest first (ties keep the reply
order, as Python's stable sort does in the reference), and the ``top_k`` best are kept
(``scores["rebel"]``). A document the reply leaves out is discarded (the relevance filter).

Departures, each a parameter whose default is the reference's behaviour unless said:
``report: properties`` makes the one-turn prompt report relevance and every property, and
archon applies the discard rule and the formula itself (exact arithmetic; the components are
kept as ``scores["rebel.<name>"]``); ``keep_unranked`` (default on, unlike the reference)
keeps a batch whose reply names no document at all, after the ranked ones and unscored, so a
small model's unreadable reply does not empty the pipeline; the meta prompt carries one worked
example instead of the reference's five.

``preset: answer_quality`` is archon's earlier answer-grading variant: each candidate
separately, chain of thought, named criteria scored 0-10 and combined as a weighted mean
``scores["criteria"]`` in [0, 1]; its ``two_turn`` asks the LLM for criteria and weights first.
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


REBEL_PROPERTIES = [
    Criterion(name="Depth", weight=0.5, description="depth of content: thorough detail and comprehensive coverage; "
                                                    "5 is exceptionally in-depth, 0 very superficial"),
    Criterion(name="Diversity", weight=0.5, description="diversity of perspectives: several viewpoints or angles; "
                                                        "5 engages many perspectives, 0 is one-sided"),
    Criterion(name="Clarity", weight=0.5, description="clarity and specificity: clear, precise, unambiguous detail; "
                                                      "5 is highly specific, 0 vague or overly general"),
    Criterion(name="Authoritativeness", weight=0.5, description="reputable sources, expert authorship, recognised "
                                                                "credibility; 5 an official or much-cited source, "
                                                                "0 unknown or dubious"),
    Criterion(name="Recency", weight=0.5, description="refers to recent studies, data or developments; "
                                                      "5 very current, 0 outdated or timeless"),
]

DEFAULT_CRITERIA = [
    Criterion(name="relevance", weight=1.0, description="addresses exactly what the question asks"),
    Criterion(name="correctness", weight=2.0, description="facts, reasoning and the final answer are right"),
    Criterion(name="completeness", weight=1.0, description="covers every part of the question"),
    Criterion(name="clarity", weight=0.5, description="easy to follow, no padding"),
]


class RerankParams(TechniqueParams):
    preset: Literal["rebel", "answer_quality"] = Field(
        "rebel", description="rebel: the paper's listwise relevance + secondary-property reranking; "
                             "answer_quality: per-candidate weighted criteria")
    mode: Literal["one_turn", "two_turn"] | None = Field(
        None, description="two_turn: the LLM first writes the reranking prompt (rebel) or proposes criteria "
                          "(answer_quality); default: two_turn for rebel (the reference's), one_turn otherwise")
    top_k: int | None = Field(3, ge=1, description="how many candidates to keep (null: all, reordered)")
    # preset: rebel
    batch_size: int = Field(10, ge=1, description="documents per listwise reranking call (rebel)")
    properties: list[Criterion] = Field(default_factory=lambda: [c.model_copy() for c in REBEL_PROPERTIES],
                                        description="secondary properties scored 0-5 and their weights (rebel)")
    min_relevance: float = Field(3.0, ge=0.0, le=10.0, description="documents below this relevance are discarded")
    report: Literal["final", "properties"] = Field(
        "final", description="final: the LLM reports each document's final score (the reference); properties: "
                             "it reports relevance and each property and archon computes the formula (one_turn)")
    keep_unranked: bool = Field(True, description="a batch whose reply names no document is kept, unscored, after "
                                                  "the ranked ones (the reference drops it)")
    meta_max_tokens: int | None = Field(None, ge=1, description="tokens for the generated reranking prompt "
                                                                "(two_turn rebel; default: max_tokens)")
    meta_template: str | None = Field(None, description="jinja2 file overriding rebel_meta.j2")
    # preset: answer_quality
    criteria: list[Criterion] = Field(default_factory=lambda: [c.model_copy() for c in DEFAULT_CRITERIA],
                                      min_length=1, description="named criteria with weights (answer_quality)")
    max_criteria: int = Field(5, ge=1, le=10, description="most criteria accepted from the proposal "
                                                          "(answer_quality two_turn)")
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


# -- preset: rebel ----------------------------------------------------------------------------

_NUMBER = r"\[?\s*(-?\d+(?:\.\d+)?)\s*\]?"
_DOC_LINE = re.compile(r"Doc(?:ument)?\s*:?\s*\[?\s*(\d+)\s*\]?\s*,\s*Relevance\s*:\s*" + _NUMBER, re.IGNORECASE)


def format_documents(texts: list[str]) -> str:
    """The reference's batch layout: ``Document i:`` then the text, blank lines between."""
    return "\n\n".join(f"Document {i}:\n{t}" for i, t in enumerate(texts, 1))


def parse_doc_lines(text: str, count: int) -> list[tuple[int, float]]:
    """``(document index 0-based, score)`` per ``Doc: i, Relevance: s`` line, in reply order.

    Indices outside 1..count are skipped (as the reference's parser does); a document named
    twice keeps its first line.
    """
    out: list[tuple[int, float]] = []
    seen: set[int] = set()
    for line in text.splitlines():
        m = _DOC_LINE.search(line)
        if not m:
            continue
        idx = int(m.group(1)) - 1
        if 0 <= idx < count and idx not in seen:
            seen.add(idx)
            out.append((idx, float(m.group(2))))
    return out


def parse_property_lines(text: str, count: int, names: list[str]) -> list[tuple[int, float, dict[str, float]]]:
    """``(index, relevance, {property: score})`` per ``Doc: i, Relevance: r, Name: s, ...`` line."""
    out: list[tuple[int, float, dict[str, float]]] = []
    seen: set[int] = set()
    for line in text.splitlines():
        m = _DOC_LINE.search(line)
        if not m:
            continue
        idx = int(m.group(1)) - 1
        if not (0 <= idx < count) or idx in seen:
            continue
        seen.add(idx)
        rest = line[m.end():]
        props = {}
        for name in names:
            pm = re.search(re.escape(name) + r"\s*:\s*" + _NUMBER, rest, re.IGNORECASE)
            if pm:
                props[name] = float(pm.group(1))
        out.append((idx, float(m.group(2)), props))
    return out


def rebel_final(relevance: float, props: dict[str, float], properties: list[Criterion]) -> float:
    """The paper's composite: relevance + sum of weight x property score (a missing property counts 0)."""
    return relevance + sum(p.weight * props.get(p.name, 0.0) for p in properties)


def fill_generated_prompt(template: str, documents: str, question: str) -> str:
    """The two-turn prompt with the batch put in (plain replacement: the prompt may hold other braces)."""
    return template.replace("{context_str}", documents).replace("{query_str}", question)


class Rerank(Technique):
    name = "rerank"
    Params = RerankParams
    description = "REBEL reranking: listwise relevance + secondary properties (or weighted criteria), keep top-k"
    params: RerankParams

    def mode(self) -> str:
        return self.params.mode or ("two_turn" if self.params.preset == "rebel" else "one_turn")

    def output_count(self, inputs: int) -> int:
        return inputs if self.params.top_k is None else min(self.params.top_k, inputs)

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
        if self.params.preset == "rebel":
            return (yield from self.run_rebel(ctx, inputs))
        return (yield from self.run_answer_quality(ctx, inputs))

    def run_rebel(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        question = ctx.query.question_text()
        generated: str | None = None
        if self.mode() == "two_turn":
            meta = prompts.render("rebel_meta.j2", p.meta_template, question=question)
            (res,) = yield [self.request(ctx, meta, max_tokens=p.meta_max_tokens, seed_offset=1)]
            text = first_text(res)
            if text is not None and "{context_str}" in text:
                generated = text.strip()
                ctx.note(f"rebel: reranking prompt written for this query ({len(generated)} chars)")
            else:
                ctx.note("rebel: generated reranking prompt " + ("skipped (budget)" if text is None else
                                                                 "lacks {context_str}") + "; used the one-turn prompt")
        computed = p.report == "properties" and generated is None
        batches = [inputs[i:i + p.batch_size] for i in range(0, len(inputs), p.batch_size)]
        requests = []
        for batch in batches:
            documents = format_documents([c.text for c in batch])
            if generated is not None:
                prompt = fill_generated_prompt(generated, documents, question)
            else:
                prompt = prompts.render("rebel_one_turn.j2", p.prompt_template, question=question,
                                        documents=documents, properties=p.properties,
                                        min_relevance=f"{p.min_relevance:g}", report=p.report)
            requests.append(self.request(ctx, prompt))
        results = yield requests
        ranked: list[tuple[float, Candidate]] = []
        unranked: list[Candidate] = []
        names = [c.name for c in p.properties]
        for b, (batch, res) in enumerate(zip(batches, results, strict=True)):
            text = first_text(res)
            if text is None:
                ctx.note(f"rebel: batch {b + 1} skipped (budget)")
                unranked.extend(batch)
                continue
            if computed:
                rows = parse_property_lines(text, len(batch), names)
                for idx, relevance, props in rows:
                    if relevance < p.min_relevance:
                        continue
                    final = rebel_final(relevance, props, p.properties)
                    extra = {f"rebel.{n.lower()}": v for n, v in props.items()}
                    ranked.append((final, batch[idx].derive(scores={**batch[idx].scores, **extra,
                                                                   "rebel.relevance": relevance, "rebel": final},
                                                             metadata={**batch[idx].metadata, "score_key": "rebel"})))
                found = len(rows)
            else:
                pairs = parse_doc_lines(text, len(batch))
                ranked.extend((score, batch[idx].derive(scores={**batch[idx].scores, "rebel": score},
                                                         metadata={**batch[idx].metadata, "score_key": "rebel"}))
                              for idx, score in pairs)
                found = len(pairs)
            if not found:
                ctx.note(f"rebel: batch {b + 1}: no document ranked in {text[:80]!r}"
                         + ("; kept unscored" if p.keep_unranked else ""))
                if p.keep_unranked:
                    unranked.extend(batch)
        ordered = [c for _, c in sorted(ranked, key=lambda pair: -pair[0])]
        dropped = len(inputs) - len(ordered) - len(unranked)
        if dropped:
            ctx.note(f"rebel: {dropped} candidate(s) discarded (not ranked: relevance below {p.min_relevance:g})")
        out = ordered + unranked
        return out if p.top_k is None else out[: p.top_k]

    # -- preset: answer_quality ---------------------------------------------------------------

    def run_answer_quality(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        question = ctx.query.question_text()
        criteria = list(self.params.criteria)
        if self.mode() == "two_turn":
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
