"""Reasoning steps: the shared unit of SpecReason, particle steering, beam search and
solve-detect-verify.

A **step** is the text a model writes, continuing the partial trace (sent as
``GenerationRequest.assistant_prefix``), until the step ``delimiter`` (default a blank
line, ``"\\n\\n"``), which is passed as a stop string. A trace ends when

- a step holds a final answer (a closed ``\\boxed{...}``, a line ``Answer: ...`` /
  ``Final answer: ...``, or ``#### ...``): ``finish = "answer"``;
- the model ends: see the rule below: ``"ended"``;
- ``max_steps`` steps are written (``"max_steps"``) or the trace's completion tokens reach
  ``max_total_tokens`` (``"max_total_tokens"``);
- the engine skipped the step's call for the budget: ``"budget"``.

**The end-of-generation rule.** llama.cpp (and the OpenAI API) report ``finish_reason
"stop"`` both for a stop string and for the end-of-turn token, and strip the stop string, so
a ``"stop"`` alone cannot tell "the step ended at the delimiter" from "the model finished".
archon's rule, which needs nothing beyond ``text`` and ``finish_reason``:

1. ``finish_reason == "length"``: the step hit its ``max_tokens``; it is kept, and the next
   step continues it with **no** delimiter in between (the trace text stays exactly what the
   model wrote).
2. ``"stop"`` with non-empty text: the delimiter was hit (the stripped delimiter is put
   back when the trace is continued). If the model had in fact finished, the next
   continuation comes back empty, which is rule 3: one short extra call, never a wrong trace.
3. ``"stop"`` with empty (whitespace-only) text: the model has nothing to add: ``"ended"``.
4. a backend that does tell end-of-sequence apart (``finish_reason`` ``"eos"``,
   ``"end_of_turn"``, ``"eos_token"``) ends the trace at once, keeping the text.

**Step rewards** are computed by yielding requests, like a technique: ``step_rewards`` is a
sub-generator ``(ctx, question, partials, samples) -> list[float]`` (``nan`` = no signal,
e.g. a skipped call). Built in (``reward:`` parameter):

- ``self_logprob``: the generator's own mean token log-probability of the new step (the
  generation requests carry ``logprobs=True``; no extra call). Values are <= 0.
- ``judge``: an LLM rates the partial solution 0-9 with ONE constrained token
  (``max_tokens=1, logprobs=True, top_logprobs=10``); the reward is the probability-weighted
  mean digit over the digit tokens among the top 10 (``judge_mode: weighted``) or the
  greedy digit (``greedy``), divided by 9 (so in [0, 1]).
- ``score``: a ``ScoreRequest`` for ``" Yes"`` vs ``" No"`` after "Is this partial solution
  correct so far?": the reward is P(Yes) / (P(Yes) + P(No)).
- ``scorer``: any ``archon.verifiers.scorers`` scorer (``scorer: {type: reward_model, ...}``
  for a process reward model served by vLLM, ``{type: judge}``, ...) run on the partials.

Register more with ``STEP_REWARDS["name"] = fn`` (same signature as the built-ins).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field, field_serializer, field_validator

from archon import prompts
from archon.backends.types import GenerationRequest, GenerationResult, Message, Sample, ScoreRequest, ScoreResult
from archon.techniques.base import (
    Defaults,
    ModelRequest,
    ModelResult,
    NodeContext,
    Technique,
    TechniqueParams,
)

NAN = float("nan")
RewardProgram = Generator[list[ModelRequest], list[ModelResult], list[float]]

_ANSWER_LINE = re.compile(r"(?im)^[\s>*#_]*(?:final\s+)?answer\s*[*_]*\s*[:：]\s*[*_]*\s*\S")
_GSM8K = re.compile(r"####\s*\S")
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
ENDED_REASONS = frozenset({"eos", "end_of_turn", "eos_token", "end"})


def has_final_answer(text: str) -> bool:
    """A closed ``\\boxed{...}``, an ``Answer: x`` line, or ``#### x``."""
    if _ANSWER_LINE.search(text) or _GSM8K.search(text):
        return True
    for m in _BOX.finditer(text):
        depth = 0
        for j in range(m.end() - 1, len(text)):
            if text[j] == "{" and text[j - 1] != "\\":
                depth += 1
            elif text[j] == "}" and text[j - 1] != "\\":
                depth -= 1
                if depth == 0:
                    return True
    return False


def close_braces(text: str) -> str:
    """``text`` cut where its braces balance, or with the missing ``}`` added (answer completions)."""
    depth = 0
    for j, ch in enumerate(text):
        if ch == "{" and (j == 0 or text[j - 1] != "\\"):
            depth += 1
        elif ch == "}" and (j == 0 or text[j - 1] != "\\"):
            depth -= 1
            if depth < 0:  # the box's own closing brace
                return text[: j + 1]
    return text.rstrip() + "}" * (depth + 1)


# -- traces ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Trace:
    """A partial solution: its steps, each with the separator that followed it.

    Immutable: ``extend`` returns a new trace, so beams and particles can share parents.
    """

    delimiter: str = "\n\n"
    steps: tuple[str, ...] = ()
    seps: tuple[str, ...] = ()
    tokens: int = 0
    done: bool = False
    finish: str = ""

    @property
    def prefix(self) -> str:
        """What the next step continues (sent as the assistant prefix)."""
        return "".join(s + sep for s, sep in zip(self.steps, self.seps, strict=True))

    @property
    def text(self) -> str:
        return self.prefix.strip()

    def __len__(self) -> int:
        return len(self.steps)

    def stopped(self, finish: str) -> Trace:
        return replace(self, done=True, finish=finish)

    def with_step(self, text: str, sep: str | None = None, tokens: int = 0) -> Trace:
        return replace(self, steps=(*self.steps, text), seps=(*self.seps, self.delimiter if sep is None else sep),
                       tokens=self.tokens + tokens)

    def extend(self, sample: Sample | None, max_steps: int, max_total_tokens: int | None) -> Trace:
        """The trace after ``sample`` (``None``: the call was skipped for the budget)."""
        if sample is None:
            return self.stopped("budget")
        text, reason = sample.text, (sample.finish_reason or "stop").lower()
        tokens = sample.completion_tokens
        if reason == "length":
            new = self.with_step(text, "", tokens)
            finish = "answer" if has_final_answer(text) else ""
        elif reason in ENDED_REASONS:
            new = self.with_step(text, "", tokens) if text.strip() else replace(self, tokens=self.tokens + tokens)
            finish = "answer" if has_final_answer(text) else "ended"
        elif not text.strip():
            return replace(self, tokens=self.tokens + tokens, done=True, finish="ended")
        else:
            final = has_final_answer(text)
            new = self.with_step(text, "" if final else None, tokens)
            finish = "answer" if final else ""
        if not finish and len(new) >= max_steps:
            finish = "max_steps"
        if not finish and max_total_tokens is not None and new.tokens >= max_total_tokens:
            finish = "max_total_tokens"
        return new.stopped(finish) if finish else new


def first_sample(result: ModelResult | None) -> Sample | None:
    if isinstance(result, GenerationResult) and result.samples:
        return result.samples[0]
    return None


def samples_of(result: ModelResult | None) -> list[Sample]:
    return list(result.samples) if isinstance(result, GenerationResult) else []


# -- reading one-token judgements -------------------------------------------------------------

def _top_of(sample: Sample) -> dict[str, float]:
    if not sample.logprobs:
        return {}
    first = sample.logprobs[0]
    top = dict(first.top)
    top.setdefault(first.token, first.logprob)
    return top


def digit_score(sample: Sample | None, mode: str = "weighted") -> float | None:
    """A 0-9 score from the first token: the probability-weighted mean digit over the digit
    tokens among the top log-probs (``weighted``) or the greedy digit (``greedy``).

    Without log-probabilities the first digit of the text is used. None: no digit at all.
    """
    if sample is None:
        return None
    digits: dict[int, float] = {}
    for piece, lp in _top_of(sample).items():
        s = piece.strip()
        if len(s) == 1 and s.isdigit():
            digits[int(s)] = digits.get(int(s), 0.0) + math.exp(lp)
    if not digits:
        m = re.search(r"\d", sample.text)
        return float(m.group(0)) if m else None
    if mode == "greedy":
        chosen = sample.logprobs[0].token.strip() if sample.logprobs else ""
        if len(chosen) == 1 and chosen.isdigit():
            return float(chosen)
        return float(max(digits, key=lambda d: (digits[d], -d)))
    total = sum(digits.values())
    return sum(d * p for d, p in digits.items()) / total


def yes_probability(result: ModelResult | None, yes: str = "yes", no: str = "no") -> float | None:
    """P(yes) / (P(yes) + P(no)) from a ``ScoreRequest`` on (" Yes", " No") or from the top
    log-probs of a one-token generation. None when the call was skipped or neither appears."""
    if isinstance(result, ScoreResult):
        if len(result.logprobs) < 2:
            return None
        a, b = result.logprobs[0], result.logprobs[1]
        m = max(a, b)
        pa, pb = math.exp(a - m), math.exp(b - m)
        return pa / (pa + pb)
    sample = first_sample(result)
    if sample is None:
        return None
    p_yes = p_no = 0.0
    for piece, lp in _top_of(sample).items():
        s = piece.strip().lower()
        if s == yes:
            p_yes += math.exp(lp)
        elif s == no:
            p_no += math.exp(lp)
    if p_yes + p_no == 0.0:
        s = sample.text.strip().lower()
        return 1.0 if s.startswith(yes) else 0.0 if s.startswith(no) else None
    return p_yes / (p_yes + p_no)


# -- parameters and the base class -------------------------------------------------------------

class StepParams(TechniqueParams):
    """Step settings shared by the step-level techniques. ``max_tokens`` caps ONE step."""

    delimiter: str = Field("\n\n", min_length=1, description="text that ends a step (a stop string)")
    max_steps: int = Field(12, ge=1, le=512, description="most steps in one trace")
    max_total_tokens: int | None = Field(1024, ge=1, description="most completion tokens in one trace")
    solve_template: str | None = Field(None, description="jinja2 file overriding the step-by-step solve prompt "
                                                         "(variables: question, delimiter)")


def _check_reward(value: str) -> str:
    if value not in STEP_REWARDS and ":" not in value:
        raise ValueError(f"unknown step reward {value!r}; use one of {sorted(STEP_REWARDS)} or package.module:function")
    return value


class RewardStepParams(StepParams):
    reward: str = Field("judge", description="step reward: judge | score | self_logprob | scorer | module:function")
    judge: str | None = Field(None, description="model computing judge/score rewards (default: the node's model)")
    judge_mode: str = Field("weighted", pattern="^(weighted|greedy)$",
                            description="judge reward: probability-weighted digit mean or the greedy digit")
    judge_template: str | None = Field(None, description="jinja2 file overriding the step judge prompt "
                                                         "(variables: question, partial)")
    scorer: Any = Field(None, description="reward: scorer: an archon.verifiers.scorers spec, e.g. "
                                           "{type: reward_model, base_url: ...}")

    @field_validator("reward")
    @classmethod
    def _known_reward(cls, value: str) -> str:
        return _check_reward(value)

    @field_validator("scorer", mode="before")
    @classmethod
    def _make_scorer(cls, value: Any) -> Any:
        if value is None:
            return None
        from archon.verifiers.scorers import make_scorer

        return make_scorer(value)

    @field_serializer("scorer")
    def _dump_scorer(self, value: Any) -> Any:
        if value is None:
            return None
        from archon.verifiers.scorers import scorer_spec

        return scorer_spec(value)


class StepTechnique(Technique):
    """Helpers for techniques that build solutions step by step (no ``run`` of its own)."""

    consumes = "query"
    params: StepParams

    # -- requests ----------------------------------------------------------------------------

    def solve_prompt(self, ctx: NodeContext) -> str:
        return prompts.render("steps_solve.j2", self.params.solve_template,
                              question=ctx.query.question_text(), delimiter=self.params.delimiter)

    def step_max_tokens(self, ctx: NodeContext, trace: Trace) -> int:
        cap = self.params.max_tokens or ctx.defaults.max_tokens
        if self.params.max_total_tokens is not None:
            cap = min(cap, max(1, self.params.max_total_tokens - trace.tokens))
        return cap

    def step_request(self, ctx: NodeContext, trace: Trace, *, user: str | None = None, model: str | None = None,
                     n: int = 1, seed_offset: int = 0, logprobs: bool = False,
                     temperature: float | None = None, to_end: bool = False) -> GenerationRequest:
        """The request for the next step of ``trace``; ``to_end``: no delimiter stop, so the model
        writes until it ends or hits the step's token cap (search-and-learn's last iteration)."""
        return self.request(ctx, user if user is not None else self.solve_prompt(ctx), model=model, n=n,
                            stop=[] if to_end else [self.params.delimiter],
                            max_tokens=self.step_max_tokens(ctx, trace),
                            assistant_prefix=trace.prefix, seed_offset=seed_offset, logprobs=logprobs,
                            temperature=temperature)

    def extend(self, trace: Trace, sample: Sample | None) -> Trace:
        return trace.extend(sample, self.params.max_steps, self.params.max_total_tokens)

    def new_trace(self) -> Trace:
        return Trace(delimiter=self.params.delimiter)

    def messages(self, ctx: NodeContext, user: str) -> tuple[Message, ...]:
        system = self.params.system if self.params.system is not None else ctx.defaults.system
        return ((Message("system", system),) if system else ()) + (Message("user", user),)

    def judge_digit_request(self, ctx: NodeContext, user: str, model: str,
                            prefix: str = "Score (0-9): ") -> GenerationRequest:
        """One constrained token: greedy, with the top 10 log-probs."""
        return self.request(ctx, user, model=model, temperature=0.0, max_tokens=1, logprobs=True,
                            top_logprobs=10, assistant_prefix=prefix)

    def yes_no_request(self, ctx: NodeContext, user: str, model: str, prefix: str = "Answer:") -> ScoreRequest:
        return ScoreRequest(model=model, continuations=(" Yes", " No"), messages=self.messages(ctx, user),
                                  assistant_prefix=prefix)

    def effective_temperature(self, ctx: NodeContext) -> float:
        t = self.params.temperature
        return t if t is not None else ctx.defaults.temperature

    # -- step rewards --------------------------------------------------------------------------

    def reward_model(self, defaults: Defaults) -> str:
        p = self.params
        return getattr(p, "judge", None) or p.model or defaults.model

    def reward_models(self, defaults: Defaults) -> list[str]:
        """Models the reward calls (empty for self_logprob)."""
        reward = getattr(self.params, "reward", "self_logprob")
        if reward in ("judge", "score"):
            return [self.reward_model(defaults)]
        if reward == "scorer" and getattr(self.params, "scorer", None) is not None:
            return list(self.params.scorer.models(self.params.model or defaults.model))  # type: ignore[attr-defined]
        return []

    def wants_logprobs(self) -> bool:
        return getattr(self.params, "reward", "") == "self_logprob"

    def step_rewards(self, ctx: NodeContext, question: str, partials: Sequence[str],
                     samples: Sequence[Sample | None] | None = None) -> RewardProgram:
        """One reward per partial solution (``nan``: no signal), in at most one round."""
        name = getattr(self.params, "reward", "self_logprob")
        fn = STEP_REWARDS.get(name) or _load_reward(name)
        samples = list(samples) if samples is not None else [None] * len(partials)
        return (yield from fn(self, ctx, question, list(partials), samples))


StepRewardFn = Callable[[StepTechnique, NodeContext, str, list[str], list[Sample | None]], RewardProgram]


def _self_logprob(tech: StepTechnique, ctx: NodeContext, question: str, partials: list[str],
                  samples: list[Sample | None]) -> RewardProgram:
    out = []
    for s in samples:
        mean = s.mean_logprob() if s is not None else None
        out.append(mean if mean is not None else NAN)
    return out
    yield []  # pragma: no cover


def _judge(tech: StepTechnique, ctx: NodeContext, question: str, partials: list[str],
           samples: list[Sample | None]) -> RewardProgram:
    if not partials:
        return []
    p = tech.params
    model = tech.reward_model(ctx.defaults)
    requests: list[ModelRequest] = [
        tech.judge_digit_request(ctx, prompts.render("steps_judge.j2", getattr(p, "judge_template", None),
                                                     question=question, partial=partial), model)
        for partial in partials]
    results = yield requests
    mode = getattr(p, "judge_mode", "weighted")
    out = []
    for res in results:
        d = digit_score(first_sample(res), mode)
        out.append(d / 9.0 if d is not None else NAN)
    return out


def _score(tech: StepTechnique, ctx: NodeContext, question: str, partials: list[str],
           samples: list[Sample | None]) -> RewardProgram:
    if not partials:
        return []
    model = tech.reward_model(ctx.defaults)
    requests: list[ModelRequest] = [
        tech.yes_no_request(ctx, prompts.render("steps_score.j2", None, question=question, partial=partial), model)
        for partial in partials]
    results = yield requests
    return [v if (v := yes_probability(r)) is not None else NAN for r in results]


def _scorer(tech: StepTechnique, ctx: NodeContext, question: str, partials: list[str],
            samples: list[Sample | None]) -> RewardProgram:
    scorer = getattr(tech.params, "scorer", None)
    if scorer is None:
        raise ValueError("reward: scorer needs a `scorer:` setting")
    if not partials:
        return []
    from archon.verifiers.scorers import ScoreContext

    values = yield from scorer.score(question, partials, ScoreContext.for_node(ctx, tech.params))
    return [float(v) if v is not None else NAN for v in values]


def _load_reward(path: str) -> StepRewardFn:
    import importlib

    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]


STEP_REWARDS: dict[str, StepRewardFn] = {
    "self_logprob": _self_logprob,
    "judge": _judge,
    "score": _score,
    "scorer": _scorer,
}


def is_nan(x: float | None) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def aggregate_rewards(values: Sequence[float], how: str) -> float:
    """A partial solution's reward from its step rewards r_1..r_t (``nan`` ones skipped):
    ``last`` r_t, ``min``, ``prod`` (search-and-learn's ``agg_strategy``; reward_hub's
    aggregation in its_hub) or ``mean`` (archon's addition). ``nan`` when there are none."""
    kept = [v for v in values if not is_nan(v)]
    if not kept:
        return NAN
    if how == "last":
        return kept[-1]
    if how == "min":
        return min(kept)
    if how == "prod":
        return math.prod(kept)
    if how == "mean":
        return sum(kept) / len(kept)
    raise ValueError(f"unknown aggregation {how!r}; use last, min, prod or mean")


__all__ = [
    "STEP_REWARDS",
    "RewardStepParams",
    "StepParams",
    "StepTechnique",
    "Trace",
    "aggregate_rewards",
    "close_braces",
    "digit_score",
    "has_final_answer",
    "yes_probability",
]
