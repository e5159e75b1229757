"""The scorer interface: a number per candidate (outcome) or per step (process), without gold.

A scorer makes no model calls itself. Like a technique, ``score`` is a generator that
yields lists of model requests (``GenerationRequest``, ``ScoreRequest``, ``RewardRequest``),
receives their results from the engine in the same order, and returns::

    scores = yield from scorer.score(question, candidates, ctx)              # [float] per candidate
    per_step = yield from scorer.score(question, candidates, ctx, steps=st)  # [[float] per step] per candidate

so the engine batches a scorer's calls with every other query's, and the router caches
and accounts them like any call. A score that could not be computed (a skipped call, an
unparsable reply) is ``nan``; ``ctx.note`` says why. ``reduce_steps`` turns per-step scores
into one (``last``, ``min``, ``prod``, ``mean``).

Kinds (``make_scorer({"type": ...})`` builds them from YAML; ``SCORERS.register`` adds yours):
``judge`` (pointwise 1-10, one-token digit, verdict, yes/no), ``pairwise``, ``grm``,
``logprob`` (the generator's own or another model's log-probability), ``token_prm``
(Math-Shepherd style token-probability PRM on any causal LM) and ``reward_model`` (a
reward / pooling model such as Qwen2.5-Math-PRM, served by vLLM in process or over HTTP).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    Message,
    RewardRequest,
    RewardResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    chat,
)
from archon.cost import CallCost, CostInputs
from archon.errors import ConfigError
from archon.prompts import template_tokens
from archon.registry import Registry
from archon.scoring.values import NAN, Aggregation, aggregate, is_missing

ModelRequest = GenerationRequest | ScoreRequest | RewardRequest
ModelResult = GenerationResult | ScoreResult | RewardResult
ScoreProgram = Generator[list[ModelRequest], list[ModelResult], Any]


def _ignore(_: str) -> None:
    return None


@dataclass(frozen=True)
class ScoreContext:
    """What a scorer may use besides its own settings, built by the technique that runs it.

    ``model``, ``seed``, ``max_tokens``, ``system``: the node's fallbacks. ``samples``: the
    generations the candidates came from (their log-probabilities feed the ``logprob``
    scorer without another call). ``prior``: per candidate, step scores already known for
    its first steps (step searches pass their parents'), so scorers that score prefix by
    prefix only ask about new steps. ``note`` writes to the node's trace.
    """

    model: str = "embedded"
    seed: int = 0
    max_tokens: int = 256
    system: str | None = None
    samples: Sequence[Sample | None] | None = None
    prior: Sequence[Sequence[float]] | None = None
    note: Callable[[str], None] = field(default=_ignore)


def samples_of(result: ModelResult | None) -> list[Sample]:
    return list(result.samples) if isinstance(result, GenerationResult) else []


class Scorer(BaseModel, ABC):
    """Base of every scorer: its settings are a pydantic model (the YAML schema), its
    work is ``score_outcomes`` (and, for process scorers, ``score_steps``)."""

    model_config = ConfigDict(extra="forbid")

    key: ClassVar[str] = "score"
    """The score name written on candidates (``select`` and ``vote`` read it)."""
    process: ClassVar[bool] = False
    """True when one call scores every step (a PRM); False: steps are scored prefix by prefix."""

    type: str = Field(description="the registry name, e.g. judge")
    model: str | None = Field(None, description="model the scorer calls (default: the node's model)")
    aggregation: Aggregation = Field("last", description="per-step scores -> one: last | min | prod | mean")
    step_separator: str = Field("\n\n", description="joins steps when a prefix is scored as text")

    # -- what a technique asks of a scorer ---------------------------------------------------

    def models(self, default: str) -> list[str]:
        """Models this scorer calls (``default``: the node's model)."""
        return [self.model or default]

    def uses_generation_logprobs(self) -> bool:
        """Whether the candidates' own generation log-probabilities are read (``ctx.samples``)."""
        return False

    def reduce_steps(self, step_scores: Sequence[float]) -> float:
        """One score from per-step scores, by ``aggregation``."""
        return aggregate(step_scores, self.aggregation)

    def split_steps(self, text: str) -> list[str]:
        """A finished candidate's steps (for process scoring of whole answers, e.g. best-of-N
        with a PRM): the text split at ``step_separator``, whitespace trimmed."""
        return [s.strip() for s in text.split(self.step_separator) if s.strip()] or [text.strip()]

    template: ClassVar[str | None] = None
    """The packaged prompt a scorer renders (its fixed text counts in cost estimates)."""

    def estimate(self, c: CostInputs) -> list[CallCost]:
        """Estimated calls to score ``c.inputs`` (default: one per candidate showing the
        question, the template and the candidate; ``completion_tokens`` each)."""
        n = c.inputs.count
        if n <= 0:
            return []
        prompt = c.question + template_tokens(self.template) + c.inputs.length
        return [CallCost(self.model or c.model, n * prompt, n * self.completion_tokens(c), n)]

    def completion_tokens(self, c: CostInputs) -> float:
        return 0.0

    def score(self, question: str, candidates: Sequence[str], ctx: ScoreContext | None = None, *,
              steps: Sequence[Sequence[str]] | None = None) -> ScoreProgram:
        """One float per candidate, or (``steps`` given) one list of per-step floats per candidate."""
        ctx = ctx or ScoreContext()
        candidates = list(candidates)
        if not candidates:
            return []
        if steps is None:
            values = yield from self.score_outcomes(question, candidates, ctx)
        else:
            if len(steps) != len(candidates):
                raise ValueError(f"{self.type}: {len(steps)} step lists for {len(candidates)} candidates")
            values = yield from self.score_steps(question, candidates, [list(s) for s in steps], ctx)
        if len(values) != len(candidates):
            raise ValueError(f"scorer {self.type} returned {len(values)} scores for {len(candidates)} candidates")
        return values

    @abstractmethod
    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        """Yield request lists, receive results, return one float per candidate (nan = none)."""

    def score_steps(self, question: str, candidates: list[str], steps: list[list[str]],
                    ctx: ScoreContext) -> ScoreProgram:
        """Per-step scores. The default scores every prefix ``steps[:i+1]`` as an outcome (in
        one round), skipping the steps ``ctx.prior`` already knows; process scorers override it."""
        jobs: list[tuple[int, int]] = []
        texts: list[str] = []
        out: list[list[float]] = []
        for c, st in enumerate(steps):
            known = list(ctx.prior[c]) if ctx.prior is not None else []
            row = [*known[: len(st)], *[NAN] * max(0, len(st) - len(known))]
            out.append(row)
            for i in range(len(known), len(st)):
                jobs.append((c, i))
                texts.append(candidates[c] if i == len(st) - 1 else self.step_separator.join(st[: i + 1]))
        if texts:
            values = yield from self.score_outcomes(question, texts, ctx)
            for (c, i), v in zip(jobs, values, strict=True):
                out[c][i] = v
        return out

    # -- helpers for LLM-backed scorers ---------------------------------------------------------

    def target(self, ctx: ScoreContext) -> str:
        return self.model or ctx.model

    def messages(self, ctx: ScoreContext, user: str, system: str | None = None) -> tuple[Message, ...]:
        return chat(system if system is not None else ctx.system, user)


# -- the registry, and scorers as technique parameters ---------------------------------------------

def _is_scorer_type(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Scorer)


SCORERS: Registry[type[Scorer]] = Registry("scorer", _is_scorer_type)
"""Scorer kinds by YAML ``type``. Extend with ``SCORERS.register("mine", MyScorer)``."""


def make_scorer(spec: Any) -> Scorer:
    """A scorer from a YAML mapping (``{type: judge, model: embedded, ...}``), a type name,
    ``package.module:Class``, or an existing scorer (returned as is). ``type`` defaults to
    ``judge``; unknown keys are errors."""
    if isinstance(spec, Scorer):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"a scorer is a mapping such as {{type: judge}}, got {type(spec).__name__}")
    spec = dict(spec)
    kind = str(spec.pop("type", "judge"))
    try:
        cls = SCORERS.resolve(kind)
    except ConfigError as exc:
        raise ValueError(exc.message + (f"; {exc.hint}" if exc.hint else "")) from None
    if not _is_scorer_type(cls):
        raise ValueError(f"{kind} is not a scorer (subclass archon.scoring.Scorer)")
    if "type" in cls.model_fields:
        spec["type"] = cls.model_fields["type"].default
    scorer = cls.model_validate(spec)
    if not isinstance(scorer, Scorer):
        raise ValueError(f"{kind}: {type(scorer).__name__} is not a scorer (subclass archon.scoring.Scorer)")
    return scorer


def scorer_spec(scorer: Any) -> dict[str, Any]:
    """The YAML mapping that rebuilds ``scorer``."""
    if isinstance(scorer, BaseModel):
        return scorer.model_dump(exclude_defaults=True) | {"type": getattr(scorer, "type", type(scorer).__name__)}
    return {"type": f"{type(scorer).__module__}:{type(scorer).__qualname__}"}


ScorerField = Annotated[Any, BeforeValidator(make_scorer), PlainSerializer(scorer_spec, return_type=dict)]
"""A technique parameter holding a scorer: YAML gives a mapping, the technique gets a Scorer."""


def optional_scorer(value: Any) -> Any:
    return None if value is None else make_scorer(value)


def optional_spec(value: Any) -> Any:
    return None if value is None else scorer_spec(value)


OptionalScorerField = Annotated[Any, BeforeValidator(optional_scorer), PlainSerializer(optional_spec)]


def score_key(scorer: Any, override: str | None = None) -> str:
    return override or getattr(scorer, "key", "score")


# -- running a scorer (or any program) outside a pipeline -------------------------------------------

def run_program(program: Generator[list[ModelRequest], list[ModelResult], Any], router: Any) -> Any:
    """Drive a scorer's (or technique's) generator against a ``ModelRouter`` directly: each
    round's requests go to ``router.generate`` / ``score`` / ``reward`` by kind. Returns what
    the generator returns."""
    try:
        requests = program.send(None)
        while True:
            results: list[ModelResult | None] = [None] * len(requests)
            for kind, method in ((GenerationRequest, "generate"), (ScoreRequest, "score"), (RewardRequest, "reward")):
                picked = [(i, r) for i, r in enumerate(requests) if isinstance(r, kind)]
                if picked:
                    answers = getattr(router, method)([r for _, r in picked])
                    for (i, _), res in zip(picked, answers, strict=True):
                        results[i] = res
            requests = program.send([r for r in results if r is not None])
    except StopIteration as stop:
        return stop.value


__all__ = [
    "SCORERS", "ModelRequest", "ModelResult", "OptionalScorerField", "ScoreContext", "ScoreProgram", "Scorer",
    "ScorerField", "is_missing", "make_scorer", "run_program", "samples_of", "score_key", "scorer_spec",
]
