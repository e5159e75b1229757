"""Scorers: one interface for everything that turns candidates into numbers.

Best-of-N, weighted voting, beam search and particle steering all need "a number per
candidate". A scorer provides it without making model calls itself: like a technique,
``score`` is a **generator** that yields lists of model requests (``GenerationRequest``
or ``ScoreRequest``), receives their results from the engine (same order), and finally
returns one float per candidate::

    def score(self, question, candidates, ctx=None) -> Generator[list[ModelRequest], list[ModelResult], list[float]]

so a technique simply writes ``scores = yield from scorer.score(question, texts, sctx)``
and the engine batches the scorer's requests with every other query's. A score that
could not be computed (skipped call, unparsable reply) is ``nan``; callers rank ``nan``
last and ``ctx.note`` says why.

Implementations (``make_scorer({"type": ...})`` builds them from YAML):

=================  ==========================  ==============================================
type               class                       what it does
=================  ==========================  ==============================================
``judge``          ``LLMJudgeScorer``          pointwise 1-10 rating by an LLM (optionally the
                                               expected score under the digit distribution)
``pairwise``       ``PairwiseJudgeScorer``     pairwise preferences, aggregated to a win rate
``grm``            ``GenerativeRewardScorer``  DeepSeek-GRM: k sampled principles + critiques
                                               + scores, aggregated by voting
``logprob``        ``LogprobScorer``           mean token log-probability under a model
``reward_model``   ``RewardModelScorer``       an outcome/process reward model behind vLLM's
                                               ``/score``, ``/classify`` or ``/pooling`` API
=================  ==========================  ==============================================
"""

from __future__ import annotations

import importlib
import math
import os
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, field_serializer, field_validator

from archon import prompts
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    Message,
    Sample,
    ScoreRequest,
    ScoreResult,
)
from archon.errors import BackendError

ModelRequest = GenerationRequest | ScoreRequest
ModelResult = GenerationResult | ScoreResult
ScoreProgram = Generator[list[ModelRequest], list[ModelResult], list[float]]

NAN = float("nan")


def _ignore(_: str) -> None:
    return None


@dataclass
class ScoreContext:
    """What a scorer may use besides its own settings: the fallback model, seed, token
    limit and system prompt of the node that runs it, and where to write notes."""

    model: str = "embedded"
    seed: int = 0
    max_tokens: int = 256
    system: str | None = None
    note: Callable[[str], None] = field(default=_ignore)

    @classmethod
    def for_node(cls, ctx: Any, params: Any | None = None) -> ScoreContext:
        """From a technique's ``NodeContext`` (and its params, for model / max_tokens / system)."""
        d = ctx.defaults
        model = getattr(params, "model", None) or d.model
        max_tokens = getattr(params, "max_tokens", None) or d.max_tokens
        system = getattr(params, "system", None)
        return cls(model=model, seed=d.seed, max_tokens=max_tokens,
                   system=system if system is not None else d.system, note=ctx.note)


@runtime_checkable
class Scorer(Protocol):
    """Anything with a default score ``key``, the ``models`` it calls, and ``score``."""

    key: ClassVar[str]

    def models(self, default: str) -> list[str]: ...

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram: ...


def is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def order_by_score(scores: Sequence[float]) -> list[int]:
    """Indices best first; ``nan`` last; ties keep the input order."""
    def key(i: int) -> tuple[bool, float, int]:
        missing = is_missing(scores[i])
        return missing, 0.0 if missing else -scores[i], i

    return sorted(range(len(scores)), key=key)


# -- the base class for LLM-backed scorers ---------------------------------------------------

class ScorerBase(BaseModel, ABC):
    """Settings shared by scorers that call a model through the engine."""

    model_config = ConfigDict(extra="forbid")

    key: ClassVar[str] = "score"

    type: str = Field(description="the registry name, e.g. judge")
    model: str | None = Field(None, description="judge model (default: the node's model)")
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="judge sampling temperature")
    max_tokens: int | None = Field(None, ge=1, description="judge reply length (default: the node's)")
    system: str | None = Field(None, description="system prompt for judge calls (default: the node's)")
    prompt_template: str | None = Field(None, description="jinja2 file overriding the packaged judge prompt")

    def models(self, default: str) -> list[str]:
        return [self.model or default]

    @abstractmethod
    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        """Yield request lists, receive results, return one float per candidate (nan = none)."""

    def _request(self, ctx: ScoreContext, user: str, *, n: int = 1, temperature: float | None = None,
                 seed_offset: int = 0, logprobs: bool = False, top_logprobs: int = 0) -> GenerationRequest:
        system = self.system if self.system is not None else ctx.system
        messages = ((Message("system", system),) if system else ()) + (Message("user", user),)
        return GenerationRequest(
            model=self.model or ctx.model, messages=messages, n=n,
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens or ctx.max_tokens, seed=ctx.seed + seed_offset,
            logprobs=logprobs, top_logprobs=top_logprobs,
        )


def _samples(result: ModelResult) -> list[Sample]:
    return list(result.samples) if isinstance(result, GenerationResult) else []


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else NAN


# -- pointwise judge ------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"(?:score|rating|grade)\s*(?:\([^)\n]*\))?\s*(?:is|of)?\s*[:=\-]?\s*[*_\s]*\[*\s*" + _NUM,
               re.IGNORECASE),
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),
    re.compile(_NUM + r"\s*/\s*\d+"),
    re.compile(_NUM + r"\s+out\s+of\s+\d+", re.IGNORECASE),
    re.compile(r"^\s*[*_]*" + _NUM + r"[*_.]*\s*$"),
)


def parse_score(text: str, low: float = 1, high: float = 10) -> tuple[float, int] | None:
    """The judge's score and where its digits start in ``text``; None when absent.

    Accepts ``Score: 7``, ``**Rating:** 8/10``, ``[[6]]``, ``7/10``, ``7 out of 10`` or
    a bare number; the last in-range match of the most explicit form wins.
    """
    for pattern in _SCORE_PATTERNS:
        found = [(float(m.group(1)), m.start(1)) for m in pattern.finditer(text)
                 if low <= float(m.group(1)) <= high]
        if found:
            return found[-1]
    return None


def expected_digit_score(sample: Sample, low: int, high: int) -> float | None:
    """Expected score under the top-logprob distribution of the token where the score starts.

    The score is located in the concatenated token texts (so offsets match the tokens).
    Exact when every score value is a single token (Gemma splits numbers into digits, so a
    1-9 scale is exact; a reply of ``10`` falls back to the parsed value). None when the
    sample carries no log-probabilities or the score is not one token.
    """
    if not sample.logprobs:
        return None
    joined = "".join(t.token for t in sample.logprobs)
    parsed = parse_score(joined, low, high)
    if parsed is None:
        return None
    start = parsed[1]
    number = re.match(r"\d+", joined[start:])
    pos = 0
    for tok in sample.logprobs:
        end = pos + len(tok.token)
        if end > start:
            if number is None or tok.token.strip() != number.group(0):
                return None
            mass: dict[int, float] = {}
            for piece, lp in (dict(tok.top) or {tok.token: tok.logprob}).items():
                s = piece.strip()
                if s.isdigit() and low <= int(s) <= high:
                    mass[int(s)] = mass.get(int(s), 0.0) + math.exp(lp)
            total = sum(mass.values())
            if total <= 0:
                return None
            return sum(v * p for v, p in mass.items()) / total
        pos = end
    return None


class LLMJudgeScorer(ScorerBase):
    """Pointwise LLM-as-a-judge (Zheng et al. 2023): each candidate rated 1-``scale_max``.

    With ``use_logprobs`` the score is the expectation under the judge's distribution
    over score tokens (G-Eval, Liu et al. 2023), which breaks ties between candidates.
    """

    key: ClassVar[str] = "judge"
    type: Literal["judge"] = "judge"
    scale_max: int = Field(10, ge=2, le=100, description="ratings run from 1 to scale_max")
    samples: int = Field(1, ge=1, le=32, description="judgments per candidate, averaged")
    use_logprobs: bool = Field(False, description="expected score under the top-logprob digit distribution")
    top_logprobs: int = Field(10, ge=1, le=20, description="alternatives read per token (use_logprobs)")

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        ctx = ctx or ScoreContext()
        if not candidates:
            return []
        requests = [self._request(ctx, prompts.render("judge_pointwise.j2", self.prompt_template,
                                                      question=question, candidate=c, scale_max=self.scale_max),
                                  n=self.samples, logprobs=self.use_logprobs,
                                  top_logprobs=self.top_logprobs if self.use_logprobs else 0)
                    for c in candidates]
        results = yield list(requests)
        out: list[float] = []
        for i, res in enumerate(results):
            samples = _samples(res)
            if not samples:
                ctx.note(f"judge: candidate {i + 1} not scored (call skipped)")
                out.append(NAN)
                continue
            values = []
            for s in samples:
                parsed = parse_score(s.text, 1, self.scale_max)
                if parsed is None:
                    continue
                value = parsed[0]
                if self.use_logprobs:
                    expected = expected_digit_score(s, 1, self.scale_max)
                    value = expected if expected is not None else value
                values.append(value)
            if not values:
                ctx.note(f"judge: no score in reply for candidate {i + 1}: {samples[0].text[:80]!r}")
            out.append(_mean(values))
        return out


# -- pairwise judge -------------------------------------------------------------------------

_WINNER = re.compile(r"(?:winner|better(?:\s+response)?|preferred|verdict)\s*(?:is)?\s*[:\-]?\s*[*_\s\[]*"
                     r"(?:response\s+)?\b(A|B|tie)\b", re.IGNORECASE)
_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_RESPONSE_BETTER = re.compile(r"response\s+(A|B)\s+is\s+(?:better|preferred|superior)", re.IGNORECASE)


def parse_preference(text: str) -> Literal["A", "B", "tie"] | None:
    """``A``, ``B`` or ``tie`` from "Winner: A", "[[B]]" (MT-Bench; ``[[C]]`` = tie) or
    "Response A is better"; the last explicit verdict wins; None when absent."""
    for pattern in (_WINNER, _BRACKET, _RESPONSE_BETTER):
        found = pattern.findall(text)
        if found:
            v = found[-1].upper()
            return "tie" if v in ("TIE", "C") else v  # type: ignore[return-value]
    return None


class PairwiseJudgeScorer(ScorerBase):
    """Pairwise preferences (MT-Bench's pairwise judge, Zheng et al. 2023) turned into
    scores: each candidate's win rate (a tie counts half) over its comparisons.

    ``round_robin`` compares every pair; ``vs_first`` compares each candidate with the
    first (the reference, which scores 0.5). ``both_orders`` asks each pair twice with
    the positions swapped, cancelling the judge's position bias.
    """

    key: ClassVar[str] = "pairwise"
    type: Literal["pairwise"] = "pairwise"
    mode: Literal["round_robin", "vs_first"] = Field("round_robin", description="which pairs are compared")
    both_orders: bool = Field(True, description="judge each pair in both orders (position-bias control)")

    def pairs(self, count: int) -> list[tuple[int, int]]:
        base = ([(i, j) for i in range(count) for j in range(i + 1, count)] if self.mode == "round_robin"
                else [(0, j) for j in range(1, count)])
        return [p for i, j in base for p in ([(i, j), (j, i)] if self.both_orders else [(i, j)])]

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        ctx = ctx or ScoreContext()
        if len(candidates) <= 1:
            return [0.5] * len(candidates)
        pairs = self.pairs(len(candidates))
        requests = [self._request(ctx, prompts.render("judge_pairwise.j2", self.prompt_template, question=question,
                                                      response_a=candidates[a], response_b=candidates[b]))
                    for a, b in pairs]
        results = yield list(requests)
        wins = [0.0] * len(candidates)
        games = [0] * len(candidates)
        unparsed = skipped = 0
        for (a, b), res in zip(pairs, results, strict=True):
            samples = _samples(res)
            if not samples:
                skipped += 1
                continue
            pref = parse_preference(samples[0].text)
            if pref is None:
                unparsed += 1
                continue
            games[a] += 1
            games[b] += 1
            if pref == "tie":
                wins[a] += 0.5
                wins[b] += 0.5
            else:
                wins[a if pref == "A" else b] += 1.0
        if skipped:
            ctx.note(f"pairwise: {skipped} of {len(pairs)} comparisons skipped (budget)")
        if unparsed:
            ctx.note(f"pairwise: {unparsed} of {len(pairs)} comparisons had no verdict")
        out = [wins[i] / games[i] if games[i] else NAN for i in range(len(candidates))]
        if self.mode == "vs_first" and games[0]:
            out[0] = 0.5
        return out


# -- generative reward model (DeepSeek-GRM) ---------------------------------------------------

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SCORES_LINE = re.compile(r"scores?\s*[:=]\s*\[?([\d.,\s]+)\]?", re.IGNORECASE)
_PER_RESPONSE = re.compile(r"(?:response|candidate)\s*#?\s*(\d+)\s*(?:score)?\s*[:=\-]\s*\**\s*(\d+(?:\.\d+)?)",
                           re.IGNORECASE)


def parse_score_list(text: str, count: int, low: float = 1, high: float = 10) -> list[float] | None:
    """``count`` scores from a GRM reply: ``\\boxed{7, 3}``, ``Scores: [7, 3]`` or
    ``Response 1: 7`` lines; the last complete list wins; None if none is complete."""
    def valid(values: list[float]) -> bool:
        return len(values) == count and all(low <= v <= high for v in values)

    for pattern in (_BOXED, _SCORES_LINE):
        for m in reversed(list(pattern.finditer(text))):
            values = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", m.group(1))]
            if valid(values):
                return values
    per: dict[int, float] = {}
    for idx, value in _PER_RESPONSE.findall(text):
        per[int(idx)] = float(value)
    values = [per[i] for i in range(1, count + 1) if i in per]
    return values if valid(values) else None


class GenerativeRewardScorer(ScorerBase):
    """DeepSeek-GRM (Liu et al. 2025, "Inference-Time Scaling for Generalist Reward
    Modeling"): the judge writes principles, critiques the responses against them and
    scores each 1-10, all in one generation; ``samples`` (k) such judgments are drawn in
    parallel and voted on (``archon.verifiers.grm``): ``sum`` is the paper's (scores summed
    over the judgments), ``mean`` averages, ``majority`` counts top scores.

    All responses are judged together in one prompt, as in the paper (``group_size``: at most
    that many per prompt; each group's sum is then put on the scale of k judgments so totals
    compare across groups). ``meta_rm`` (any scorer, e.g. a reward model or an LLM judge) rates
    each judgment, shown with the question and responses, and only the ``k_meta`` best vote:
    the paper's meta-RM guided voting. A judgment without a complete score list is discarded.
    """

    key: ClassVar[str] = "grm"
    type: Literal["grm"] = "grm"
    temperature: float = Field(0.7, ge=0.0, le=2.0, description="sampling temperature of the k judgments")
    samples: int = Field(4, ge=1, le=64, description="k: parallel judgments (inference-time scaling of the RM)")
    aggregate: Literal["sum", "mean", "majority"] = Field("sum", description="how the k judgments combine")
    principles: list[str] | None = Field(None, description="fixed principles (default: the judge writes its own)")
    group_size: int | None = Field(None, ge=1, le=64, description="most responses per prompt (default: all)")
    scale_max: int = Field(10, ge=2, le=100, description="each judgment scores 1 to scale_max")
    meta_rm: Any = Field(None, description="a scorer rating each judgment (meta-RM guided voting)")
    k_meta: int | None = Field(None, ge=1, description="judgments kept by the meta-RM (default: half of k)")
    meta_template: str | None = Field(None, description="jinja2 file overriding judge_grm_meta.j2")

    @field_validator("meta_rm", mode="before")
    @classmethod
    def _make_meta(cls, value: Any) -> Any:
        return None if value is None else make_scorer(value)

    @field_serializer("meta_rm")
    def _dump_meta(self, value: Any) -> Any:
        return None if value is None else scorer_spec(value)

    def models(self, default: str) -> list[str]:
        own = [self.model or default]
        return list(dict.fromkeys(own + (list(self.meta_rm.models(default)) if self.meta_rm is not None else [])))

    def kept_count(self) -> int:
        return self.k_meta or max(1, math.ceil(self.samples / 2))

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        from archon.verifiers.grm import Judgment, keep_by_meta, vote

        ctx = ctx or ScoreContext()
        if not candidates:
            return []
        size = self.group_size or len(candidates)
        groups = [list(range(s, min(s + size, len(candidates)))) for s in range(0, len(candidates), size)]
        requests = [self._request(ctx, prompts.render("judge_grm.j2", self.prompt_template, question=question,
                                                      responses=[candidates[i] for i in g],
                                                      principles=self.principles, scale_max=self.scale_max),
                                  n=self.samples)
                    for g in groups]
        results = yield list(requests)
        judged: list[list[Judgment]] = []
        for g, res in zip(groups, results, strict=True):
            samples = _samples(res)
            if not samples:
                ctx.note(f"grm: candidates {g[0] + 1}-{g[-1] + 1} not scored (call skipped)")
            judgments = []
            for s in samples:
                values = parse_score_list(s.text, len(g), 1, self.scale_max)
                judgments.append(Judgment(s.text, tuple(values) if values is not None else None))
            bad = sum(j.scores is None for j in judgments)
            if bad:
                ctx.note(f"grm: {bad} of {len(judgments)} judgments had no complete score list")
            judged.append(judgments)
        metas: list[list[float] | None] = [None] * len(groups)
        if self.meta_rm is not None:
            texts, where = [], []
            for gi, (g, judgments) in enumerate(zip(groups, judged, strict=True)):
                for ji, j in enumerate(judgments):
                    if j.scores is not None:
                        texts.append(prompts.render("judge_grm_meta.j2", self.meta_template, question=question,
                                                    responses=[candidates[i] for i in g], judgment=j.text))
                        where.append((gi, ji))
            meta_values = (yield from self.meta_rm.score(question, texts, ctx)) if texts else []
            for gi, judgments in enumerate(judged):
                metas[gi] = [NAN] * len(judgments)
            for (gi, ji), value in zip(where, meta_values, strict=True):
                metas[gi][ji] = value  # type: ignore[index]
        k_meta = self.kept_count() if self.meta_rm is not None else None
        keeps = [keep_by_meta(judgments, metas[gi], k_meta) for gi, judgments in enumerate(judged)]
        nominal = max((len(k) for k in keeps), default=0)  # one group: the plain sum
        out = [NAN] * len(candidates)
        for g, judgments, keep in zip(groups, judged, keeps, strict=True):
            for pos, value in enumerate(vote(judgments, len(g), nominal, keep, self.aggregate)):
                out[g[pos]] = value
        return out


# -- log-probability ------------------------------------------------------------------------

class LogprobScorer(ScorerBase):
    """Mean (or summed) token log-probability of each candidate as the answer to the
    question under ``model``, via one ``ScoreRequest`` holding every candidate. A
    cheap likelihood signal (e.g. a stronger model's perplexity of a weaker one's answers)."""

    key: ClassVar[str] = "logprob"
    type: Literal["logprob"] = "logprob"
    reduce: Literal["mean", "sum"] = Field("mean", description="mean per token (length-neutral) or total")

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        ctx = ctx or ScoreContext()
        if not candidates:
            return []
        user = prompts.render("judge_logprob.j2", self.prompt_template, question=question)
        system = self.system if self.system is not None else ctx.system
        messages = ((Message("system", system),) if system else ()) + (Message("user", user),)
        (result,) = yield [ScoreRequest(model=self.model or ctx.model, messages=messages,
                                        continuations=tuple(c if c else " " for c in candidates))]
        if not isinstance(result, ScoreResult) or not result.logprobs:
            ctx.note("logprob: scoring skipped (budget)")
            return [NAN] * len(candidates)
        out = []
        for total, per_token in zip(result.logprobs, result.token_logprobs, strict=True):
            if self.reduce == "sum":
                out.append(float(total))
            else:
                out.append(_mean(per_token) if per_token else NAN)
        return out


# -- reward model over HTTP (vLLM) ----------------------------------------------------------

class RewardModelScorer(BaseModel):
    """An outcome or process reward model served by **vLLM's** pooling APIs.

    ``endpoint`` picks the route on ``base_url`` (the server root, e.g.
    ``http://127.0.0.1:8000``):

    - ``score`` -> ``POST /score`` with ``{"model", "text_1": question, "text_2": [candidates]}``;
      reads ``data[i].score`` (cross-encoders and reward models with one label,
      ``vllm serve ... --task score``/``--runner pooling``).
    - ``classify`` -> ``POST /classify`` with ``{"model", "input": [texts]}``; reads
      ``data[i].probs[label]`` (sequence classifiers used as ORMs).
    - ``pooling`` -> ``POST /pooling`` with ``{"model", "input": [texts]}``; reads
      ``data[i].data``: a scalar, a list of per-token/step rewards, or a list of
      ``[p_bad, p_good]`` pairs (PRMs such as Qwen2.5-Math-PRM); reduced by ``reduce``.

    Texts are ``input_format`` filled with ``{question}`` and ``{candidate}``. The call
    is made directly over HTTP (httpx), one request per ``batch_size`` candidates, with
    retries on connection errors and 5xx; it is not routed through the engine, so its
    tokens appear in notes, not in the usage ledger.
    """

    model_config = ConfigDict(extra="forbid")

    key: ClassVar[str] = "reward"
    type: Literal["reward_model"] = "reward_model"
    base_url: str = Field(description="vLLM server root, e.g. http://127.0.0.1:8000")
    endpoint: Literal["score", "classify", "pooling"] = Field("score", description="which vLLM API to call")
    api_model: str | None = Field(None, description="model name sent in the request (vLLM's --served-model-name)")
    api_key_env: str | None = Field(None, description="environment variable holding a bearer token")
    input_format: str = Field("{question}\n\n{candidate}", description="text sent per candidate (classify/pooling)")
    label: int = Field(-1, description="which class probability is the reward (classify)")
    reduce: Literal["last", "mean", "min", "max"] = Field(
        "last", description="how per-step rewards combine (pooling; min/last are usual for PRMs)")
    batch_size: int = Field(32, ge=1, description="candidates per HTTP request")
    timeout_s: float = Field(60.0, gt=0, description="per HTTP request")
    max_retries: int = Field(2, ge=0, le=10, description="retries on connection errors and 5xx answers")

    def models(self, default: str) -> list[str]:
        return []  # not an engine model: reached over HTTP

    def score(self, question: str, candidates: list[str], ctx: ScoreContext | None = None) -> ScoreProgram:
        ctx = ctx or ScoreContext()
        out: list[float] = []
        tokens = 0
        for start in range(0, len(candidates), self.batch_size):
            chunk = candidates[start: start + self.batch_size]
            values, used = self.call(question, chunk)
            out.extend(values)
            tokens += used
        if candidates:
            ctx.note(f"reward_model: {len(candidates)} candidates scored via {self.url()}"
                     + (f" ({tokens} prompt tokens)" if tokens else ""))
        return out
        yield []  # pragma: no cover - a generator that needs no engine round

    def url(self) -> str:
        return f"{self.base_url.rstrip('/')}/{self.endpoint}"

    def payload(self, question: str, candidates: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if self.api_model:
            body["model"] = self.api_model
        if self.endpoint == "score":
            body.update(text_1=question, text_2=list(candidates))
        else:
            body["input"] = [self.input_format.format(question=question, candidate=c) for c in candidates]
        return body

    def call(self, question: str, candidates: list[str]) -> tuple[list[float], int]:
        """One HTTP request; returns the rewards (in candidate order) and prompt tokens used."""
        import httpx

        headers = {}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise BackendError(f"reward_model: environment variable {self.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        body = self.payload(question, candidates)
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                resp = httpx.post(self.url(), json=body, headers=headers, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                last = exc
            else:
                if resp.status_code < 500:
                    if resp.status_code >= 400:
                        raise BackendError(f"reward_model: {self.url()} answered {resp.status_code}: "
                                           f"{resp.text[:200]}")
                    return self.parse(resp.json(), len(candidates))
                last = BackendError(f"{resp.status_code}: {resp.text[:200]}")
            if attempt < self.max_retries:
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise BackendError(f"reward_model: {self.url()} failed after {self.max_retries + 1} tries: {last}")

    def parse(self, data: dict[str, Any], count: int) -> tuple[list[float], int]:
        items = data.get("data")
        if not isinstance(items, list) or len(items) != count:
            raise BackendError(f"reward_model: expected {count} items in `data` from {self.url()}, got "
                               f"{type(items).__name__ if not isinstance(items, list) else len(items)}")
        out = [NAN] * count
        for pos, item in enumerate(items):
            idx = int(item.get("index", pos))
            if self.endpoint == "score":
                value = float(item["score"])
            elif self.endpoint == "classify":
                value = float(item["probs"][self.label])
            else:
                value = self._reduce(item["data"])
            out[idx] = value
        usage = data.get("usage") or {}
        return out, int(usage.get("prompt_tokens") or 0)

    def _reduce(self, data: Any) -> float:
        if isinstance(data, (int, float)):
            return float(data)
        values = [float(x[-1]) if isinstance(x, list) else float(x) for x in data]  # [p_bad, p_good] -> p_good
        if not values:
            return NAN
        if self.reduce == "last":
            return values[-1]
        if self.reduce == "min":
            return min(values)
        if self.reduce == "max":
            return max(values)
        return sum(values) / len(values)


# -- registry -------------------------------------------------------------------------------

SCORERS: dict[str, type] = {
    "judge": LLMJudgeScorer,
    "pairwise": PairwiseJudgeScorer,
    "grm": GenerativeRewardScorer,
    "logprob": LogprobScorer,
    "reward_model": RewardModelScorer,
}
ALIASES: dict[str, str] = {
    "pointwise": "judge", "llm_judge": "judge", "generative_reward": "grm", "deepseek_grm": "grm",
    "reward": "reward_model", "orm": "reward_model", "prm": "reward_model",
}


def register_scorer(name: str, cls: type, *aliases: str) -> None:
    """Make ``cls`` available as ``scorer: {type: name}`` in YAML."""
    SCORERS[name] = cls
    for alias in aliases:
        ALIASES[alias] = name


def make_scorer(spec: Any) -> Scorer:
    """A scorer from a YAML mapping (``{type: judge, model: embedded, ...}``), a type name,
    ``package.module:Class``, or an existing scorer (returned as is). ``type`` defaults to
    ``judge``; unknown keys are errors."""
    if isinstance(spec, Scorer) and not isinstance(spec, (dict, str)):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"a scorer is a mapping such as {{type: judge}}, got {type(spec).__name__}")
    spec = dict(spec)
    kind = str(spec.pop("type", "judge"))
    name = ALIASES.get(kind, kind)
    if name in SCORERS:
        cls = SCORERS[name]
    elif ":" in kind:
        module, _, attr = kind.partition(":")
        cls = getattr(importlib.import_module(module), attr)
    else:
        known = ", ".join(sorted({*SCORERS, *ALIASES}))
        raise ValueError(f"unknown scorer type {kind!r} (known: {known}, or package.module:Class)")
    if isinstance(cls, type) and issubclass(cls, BaseModel):
        if "type" in cls.model_fields:
            spec["type"] = cls.model_fields["type"].default
        scorer = cls.model_validate(spec)
    else:
        scorer = cls(**spec)
    if not isinstance(scorer, Scorer):
        raise ValueError(f"{kind}: {type(scorer).__name__} does not implement the Scorer protocol")
    return scorer


def scorer_spec(scorer: Any) -> dict[str, Any]:
    """The YAML mapping that rebuilds ``scorer``."""
    if isinstance(scorer, BaseModel):
        return scorer.model_dump(exclude_defaults=True) | {"type": getattr(scorer, "type", type(scorer).__name__)}
    return {"type": f"{type(scorer).__module__}:{type(scorer).__qualname__}"}


ScorerField = Annotated[Any, BeforeValidator(make_scorer), PlainSerializer(scorer_spec, return_type=dict)]
"""A technique parameter holding a scorer: YAML gives a mapping, the technique gets a Scorer."""


# -- running a scorer (or any program) outside a pipeline -----------------------------------

def run_program(program: Generator[list[ModelRequest], list[ModelResult], Any], router: Any) -> Any:
    """Drive a scorer's (or technique's) generator against a ``ModelRouter`` directly:
    each round's generation requests go in one ``router.generate`` call and its score
    requests in one ``router.score`` call. Returns what the generator returns."""
    try:
        requests = program.send(None)
        while True:
            results: list[ModelResult | None] = [None] * len(requests)
            gen = [(i, r) for i, r in enumerate(requests) if isinstance(r, GenerationRequest)]
            sco = [(i, r) for i, r in enumerate(requests) if isinstance(r, ScoreRequest)]
            if gen:
                for (i, _), res in zip(gen, router.generate([r for _, r in gen]), strict=True):
                    results[i] = res
            if sco:
                for (i, _), res in zip(sco, router.score([r for _, r in sco]), strict=True):
                    results[i] = res
            requests = program.send([r for r in results if r is not None])
    except StopIteration as stop:
        return stop.value


__all__ = [
    "ALIASES", "SCORERS", "GenerativeRewardScorer", "LLMJudgeScorer", "LogprobScorer", "PairwiseJudgeScorer",
    "RewardModelScorer", "ScoreContext", "ScoreProgram", "Scorer", "ScorerBase", "ScorerField", "expected_digit_score",
    "is_missing", "make_scorer", "order_by_score", "parse_preference", "parse_score", "parse_score_list",
    "register_scorer", "run_program", "scorer_spec",
]
