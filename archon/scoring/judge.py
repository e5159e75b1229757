"""Pointwise LLM judges: one number per candidate from one prompt.

Modes (``mode:``):

- ``pointwise``: a 1-``scale_max`` rating in a written reply (MT-Bench single-answer
  grading, Zheng et al. 2023); with ``use_logprobs`` the expectation under the judge's
  distribution over the score token (G-Eval, Liu et al. 2023). Score in [1, scale_max].
- ``digit``: ONE constrained token 0-9 (``max_tokens=1``, top-10 log-probs); the
  probability-weighted mean digit (``digit_mode: weighted``) or the greedy digit, / 9.
  Cheap enough to score every step of a search. Score in [0, 1].
- ``verdict``: a short reasoned reply ending "Verdict: yes/no" (``verify``'s check); 1 or 0.
- ``yes_no``: P(" Yes") / (P(" Yes") + P(" No")) after the question, from one
  ``ScoreRequest`` (no sampling). Score in [0, 1].
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from archon.backends.types import ScoreRequest
from archon.cost import CallCost, CostInputs
from archon.prompts import render, template_tokens
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram, samples_of
from archon.scoring.llm import LLMScorer
from archon.scoring.parsing import digit_score, expected_digit_score, parse_score, parse_verdict, yes_probability
from archon.scoring.values import NAN, mean

TEMPLATES = {"pointwise": "judge_pointwise.j2", "digit": "steps_judge.j2", "verdict": "verify.j2",
             "yes_no": "steps_score.j2"}


class LLMJudgeScorer(LLMScorer):
    """An LLM rates each candidate (see the module docstring for the modes)."""

    key: ClassVar[str] = "judge"
    type: Literal["judge"] = "judge"
    mode: Literal["pointwise", "digit", "verdict", "yes_no"] = Field("pointwise", description="how the judge answers")
    scale_max: int = Field(10, ge=2, le=100, description="pointwise: ratings run from 1 to scale_max")
    samples: int = Field(1, ge=1, le=32, description="pointwise/verdict: judgments per candidate, averaged")
    use_logprobs: bool = Field(False, description="pointwise: expected score under the top-logprob digit distribution")
    top_logprobs: int = Field(10, ge=1, le=20, description="alternatives read per token (use_logprobs, digit)")
    digit_mode: Literal["weighted", "greedy"] = Field("weighted", description="digit: weighted mean or greedy digit")
    digit_prefix: str = Field("Score (0-9): ", description="digit: the assistant text the digit follows")
    yes: str = Field(" Yes", description="yes_no: the continuation meaning correct")
    no: str = Field(" No", description="yes_no: the continuation meaning wrong")
    answer_prefix: str = Field("Answer:", description="yes_no: the assistant text the answer follows")

    def estimate(self, c: CostInputs) -> list[CallCost]:
        n = c.inputs.count
        if n <= 0:
            return []
        prompt = c.question + template_tokens(TEMPLATES[self.mode]) + c.inputs.length
        if self.mode == "yes_no":  # one prompt scored with two continuations
            return [CallCost(self.model or c.model, 2 * n * prompt, 0.0, n)]
        per = 1.0 if self.mode == "digit" else self.samples * self.completion_tokens(c)
        return [CallCost(self.model or c.model, n * prompt * (1 if self.mode == "digit" else self.samples),
                         n * per, n)]

    def prompt(self, question: str, candidate: str) -> str:
        return render(TEMPLATES[self.mode], self.prompt_template, question=question, candidate=candidate,
                      partial=candidate, scale_max=self.scale_max)

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        users = [self.prompt(question, c) for c in candidates]
        if self.mode == "yes_no":
            results = yield [ScoreRequest(model=self.target(ctx), continuations=(self.yes, self.no),
                                          messages=self.messages(ctx, u, self.system),
                                          assistant_prefix=self.answer_prefix) for u in users]
            out = [yes_probability(r) for r in results]
            self._note_missing(ctx, out)
            return [NAN if v is None else v for v in out]
        if self.mode == "digit":
            results = yield [self.request(ctx, u, temperature=0.0, max_tokens=1, logprobs=True,
                                          top_logprobs=self.top_logprobs, assistant_prefix=self.digit_prefix)
                             for u in users]
            out = []
            for r in results:
                got = samples_of(r)
                d = digit_score(got[0], self.digit_mode) if got else None
                out.append(None if d is None else d / 9.0)
            self._note_missing(ctx, out)
            return [NAN if v is None else v for v in out]
        use_lp = self.use_logprobs and self.mode == "pointwise"
        results = yield [self.request(ctx, u, n=self.samples, logprobs=use_lp,
                                      top_logprobs=self.top_logprobs if use_lp else 0) for u in users]
        scores: list[float] = []
        for i, res in enumerate(results):
            got = samples_of(res)
            if not got:
                ctx.note(f"judge: candidate {i + 1} not scored (call skipped)")
                scores.append(NAN)
                continue
            values = [v for v in (self._read(s) for s in got) if v is not None]
            if not values:
                ctx.note(f"judge: no {'verdict' if self.mode == 'verdict' else 'score'} in reply for candidate "
                         f"{i + 1}: {got[0].text[:80]!r}")
            scores.append(mean(values))
        return scores

    def _read(self, sample) -> float | None:  # type: ignore[no-untyped-def]
        if self.mode == "verdict":
            verdict = parse_verdict(sample.text)
            return None if verdict is None else float(verdict)
        parsed = parse_score(sample.text, 1, self.scale_max)
        if parsed is None:
            return None
        if self.use_logprobs:
            expected = expected_digit_score(sample, 1, self.scale_max)
            return expected if expected is not None else parsed[0]
        return parsed[0]

    def _note_missing(self, ctx: ScoreContext, values: list[float | None]) -> None:
        missing = sum(v is None for v in values)
        if missing:
            ctx.note(f"judge ({self.mode}): {missing} of {len(values)} candidates not scored "
                     "(call skipped or no answer token)")


SCORERS.register("judge", LLMJudgeScorer, "pointwise", "llm_judge")
