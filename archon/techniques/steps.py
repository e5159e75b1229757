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

**Step rewards** come from a scorer (``archon.scoring``), the ``scorer:`` parameter. Each
round the search hands it every new partial solution with its steps; the scorer returns
per-step scores (``nan`` = no signal, e.g. a skipped call) and its ``aggregation`` (``last``,
``min``, ``prod``, ``mean``) makes the partial's reward. Scores of steps already scored are
remembered per query and passed as ``prior``, so prefix-by-prefix scorers only ask about new
steps. Common choices:

- ``{type: judge, mode: digit}`` (default): an LLM rates the partial solution 0-9 with ONE
  constrained token; the probability-weighted mean digit / 9.
- ``{type: judge, mode: yes_no}``: P(" Yes") / (P(" Yes") + P(" No")) after "Is this
  partial solution correct so far?".
- ``{type: logprob}``: the generator's own mean token log-probability of the new step (the
  generation requests carry ``logprobs=True``; no extra call). Values are <= 0.
- ``{type: token_prm, ...}``: a Math-Shepherd style token-probability PRM on any causal LM.
- ``{type: reward_model, model: prm}``: a process reward model such as Qwen2.5-Math-PRM
  served by vLLM (``models: {prm: {backend: vllm, task: reward, path: ...}}``).
"""

from __future__ import annotations

import re
from collections.abc import Generator, Sequence
from dataclasses import dataclass, replace

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationRequest, GenerationResult, Message, Sample, ScoreRequest, chat
from archon.scoring import NAN, Scorer, ScorerField, is_missing, make_scorer
from archon.scoring.parsing import digit_score, yes_probability
from archon.techniques.base import (
    Defaults,
    ModelRequest,
    ModelResult,
    NodeContext,
    Technique,
    TechniqueParams,
)

RewardProgram = Generator[list[ModelRequest], list[ModelResult], list[float]]
is_nan = is_missing  # the name the step searches use

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


# -- parameters and the base class -------------------------------------------------------------

class StepParams(TechniqueParams):
    """Step settings shared by the step-level techniques. ``max_tokens`` caps ONE step."""

    delimiter: str = Field("\n\n", min_length=1, description="text that ends a step (a stop string)")
    max_steps: int = Field(12, ge=1, le=512, description="most steps in one trace")
    max_total_tokens: int | None = Field(1024, ge=1, description="most completion tokens in one trace")
    solve_template: str | None = Field(None, description="jinja2 file overriding the step-by-step solve prompt "
                                                         "(variables: question, delimiter)")


def _default_step_scorer() -> Scorer:
    return make_scorer({"type": "judge", "mode": "digit"})


class RewardStepParams(StepParams):
    scorer: ScorerField = Field(default_factory=_default_step_scorer,
                                description="the step reward: any archon.scoring scorer, e.g. {type: judge, "
                                            "mode: digit} (default), {type: logprob}, {type: token_prm}, "
                                            "{type: reward_model, model: prm}")


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
                     temperature: float | None = None) -> GenerationRequest:
        return self.request(ctx, user if user is not None else self.solve_prompt(ctx), model=model, n=n,
                            stop=[self.params.delimiter], max_tokens=self.step_max_tokens(ctx, trace),
                            assistant_prefix=trace.prefix, seed_offset=seed_offset, logprobs=logprobs,
                            temperature=temperature)

    def extend(self, trace: Trace, sample: Sample | None) -> Trace:
        return trace.extend(sample, self.params.max_steps, self.params.max_total_tokens)

    def new_trace(self) -> Trace:
        return Trace(delimiter=self.params.delimiter)

    def messages(self, ctx: NodeContext, user: str) -> tuple[Message, ...]:
        return chat(self.params.system if self.params.system is not None else ctx.defaults.system, user)

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

    # -- step rewards ------------------------------------------------------------------------

    @property
    def scorer(self) -> Scorer:
        return getattr(self.params, "scorer", None) or _default_step_scorer()

    def reward_models(self, defaults: Defaults) -> list[str]:
        """Models the step scorer calls (empty when it reads the generation's log-probs)."""
        scorer = self.scorer
        if scorer.uses_generation_logprobs():
            return []
        return list(scorer.models(self.params.model or defaults.model))

    def wants_logprobs(self) -> bool:
        return self.scorer.uses_generation_logprobs()

    def trace_steps(self, partial: Trace | str) -> list[str]:
        """The steps of a partial solution as a scorer sees them (whitespace trimmed)."""
        raw = partial.steps if isinstance(partial, Trace) else partial.split(self.params.delimiter)
        return [s.strip() for s in raw if s.strip()]

    def step_scores(self, ctx: NodeContext, partial: Trace | str) -> list[float]:
        """The per-step scores known for ``partial`` (``nan`` where none was computed)."""
        steps = self.trace_steps(partial)
        return [ctx.step_scores.get(tuple(steps[: i + 1]), NAN) for i in range(len(steps))]

    def step_rewards(self, ctx: NodeContext, question: str, partials: Sequence[Trace | str],
                     samples: Sequence[Sample | None] | None = None) -> RewardProgram:
        """One reward per partial solution (``nan``: no signal), in at most one round: the
        scorer's per-step scores, aggregated by its ``aggregation``."""
        if not partials:
            return []
        scorer = self.scorer
        steps = [self.trace_steps(p) for p in partials]
        texts = [p.text if isinstance(p, Trace) else p.strip() for p in partials]
        prior = []
        for st in steps:
            known: list[float] = []
            while len(known) < len(st) and tuple(st[: len(known) + 1]) in ctx.step_scores:
                known.append(ctx.step_scores[tuple(st[: len(known) + 1])])
            prior.append(known)
        sctx = self.score_context(ctx, samples=list(samples) if samples is not None else None, prior=prior)
        per_step = yield from scorer.score(question, texts, sctx, steps=steps)
        for st, row in zip(steps, per_step, strict=True):
            for i, value in enumerate(row):
                if not is_missing(value):
                    ctx.step_scores[tuple(st[: i + 1])] = float(value)
        return [scorer.reduce_steps(row) for row in per_step]


__all__ = [
    "NAN", "RewardStepParams", "StepParams", "StepTechnique", "Trace", "close_braces", "digit_score",
    "has_final_answer", "is_nan", "yes_probability",
]
