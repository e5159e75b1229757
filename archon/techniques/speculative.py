"""SpecReason: speculative reasoning with a small drafter and a large judge (Pan et al. 2025,
"SpecReason: Fast and Accurate Inference-Time Compute via Speculative Reasoning"; reference
code ruipeterpan/specreason ``spec_reason.py``).

Reasoning is a sequence of steps (``archon.techniques.steps``), ended by ``"\\n\\n"``. For
each step:

1. the small ``drafter`` writes the next step, continuing the trace (temperature 0.6,
   top_p 0.95, at most 512 tokens: the reference's sampling);
2. the large ``model`` judges the drafted step. As in the reference, the judge reads the
   trace *including the draft* as its own earlier assistant turn, so an engine with a prefix
   cache reuses the trace's KV cache (the source of the paper's latency gain); then a user
   turn (``specreason_judge.j2``) asks it to score the last step 0-9 solely on factual
   correctness and logical validity, and its answer continues "I think the quality score
   is: " for ONE token, greedy, with the top 10 log-probs;
3. ``score_mode: greedy`` (the reference's default) takes that token: a digit is the score,
   anything else scores 0 (a rejection). ``weighted`` (the reference's ``average``) is the
   probability-weighted mean over the digit tokens among the top 10, renormalised;
4. a score >= ``threshold`` (7) keeps the draft; otherwise the large model writes the step
   itself from the same prefix.

A trace ends at a final answer, when its kept steps reach ``max_total_tokens`` (8192 in the
reference, counting each kept step's tokens once), when the last two of three or more steps
are identical (the reference's repetition guard), or at ``max_steps`` (no cap by default).

Departures, all parameters (defaults are the reference's unless said): ``first_n_large``
(the first n steps written by the large model, default 0 as in the reference);
``think_prefix`` (the reference prepends ``<think>`` to the assistant turn for its R1/QwQ
models; default "" because it is model-specific); a draft that comes back empty (the drafter
wants to stop) goes to the large model without a judgement (the reference judges it); a
judgement skipped for the budget keeps the draft (noted).

Every round holds one request per query, so the engine sends one backend request per model
per round for the whole batch. Per query the output candidate's ``metadata`` records steps
drafted, accepted, rewritten, written first by the large model, completion tokens by each
model, and every judge score.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from typing import Literal

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationRequest, Message, Sample
from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program
from archon.techniques.steps import StepParams, StepTechnique, Trace, first_sample
from archon.verifiers.answers import extract_final_answer

SCORE_PREFIX = "I think the quality score is: "


class SpecReasonParams(StepParams):
    drafter: str | None = Field(None, description="the small model that drafts steps (default: the node's model)")
    threshold: float = Field(7.0, ge=0.0, le=9.0, description="a draft scored >= threshold (0-9) is kept")
    score_mode: Literal["greedy", "weighted", "average"] = Field(
        "greedy", description="greedy: the judge's token (a non-digit scores 0); weighted (alias average): "
                              "probability-weighted mean over the digit tokens among the top 10")
    first_n_large: int = Field(0, ge=0, description="the first n steps are written by the large model")
    think_prefix: str = Field("", description="text opening every assistant turn (the reference uses '<think>' "
                                              "for R1-style models)")
    stop_on_repeat: bool = Field(True, description="end the trace when its last two (of 3+) steps are identical")
    judge_template: str | None = Field(None, description="jinja2 file overriding specreason_judge.j2 "
                                                         "(variables: question, previous, step)")
    # the reference's sampling and budget
    temperature: float | None = Field(0.6, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    max_tokens: int | None = Field(512, ge=1, description="most tokens in one step")
    max_steps: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="most steps in one trace (null: no cap)")
    max_total_tokens: int | None = Field(8192, ge=1, description="most completion tokens in one trace")


def judge_score(sample: Sample | None, mode: str) -> float | None:
    """The reference's reading of the one-token judgement; None when there is no judgement.

    ``greedy``: the chosen token if it is a digit, else 0. ``weighted``/``average``: the
    digit tokens among the top log-probs, renormalised, their probability-weighted mean
    (0 when none is a digit: the draft is rejected, as greedy does).
    """
    if sample is None:
        return None
    if not sample.logprobs:
        token = sample.text.strip()
        return float(token) if len(token) == 1 and token.isdigit() else 0.0
    first = sample.logprobs[0]
    if mode == "greedy":
        token = first.token.strip()
        return float(token) if len(token) == 1 and token.isdigit() else 0.0
    top = dict(first.top)
    top.setdefault(first.token, first.logprob)
    probs: dict[int, float] = {}
    for piece, lp in top.items():
        s = piece.strip()
        if len(s) == 1 and s.isdigit():
            probs[int(s)] = probs.get(int(s), 0.0) + math.exp(lp)
    total = sum(probs.values())
    return sum(d * p for d, p in probs.items()) / total if total > 0 else 0.0


class SpecReason(StepTechnique):
    name = "specreason"
    Params = SpecReasonParams
    description = "speculative reasoning: a small model drafts each step, a large model judges or rewrites it"
    params: SpecReasonParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.drafter(defaults), self.large(defaults)]))

    def drafter(self, defaults: Defaults) -> str:
        return self.params.drafter or self.params.model or defaults.model

    def large(self, defaults: Defaults) -> str:
        return self.params.model or defaults.model

    def new_trace(self) -> Trace:
        return Trace(delimiter=self.params.delimiter)

    def extend(self, trace: Trace, sample: Sample | None) -> Trace:
        new = trace.extend(sample, self.params.max_steps or sys.maxsize, self.params.max_total_tokens)
        repeated = len(new) > 2 and new.steps[-1].strip() == new.steps[-2].strip()
        if self.params.stop_on_repeat and not new.done and repeated:
            new = new.stopped("repeated")
        return new

    def step_request(self, ctx: NodeContext, trace: Trace, *, user: str | None = None, model: str | None = None,
                     n: int = 1, seed_offset: int = 0, logprobs: bool = False,
                     temperature: float | None = None) -> GenerationRequest:
        request = super().step_request(ctx, trace, user=user, model=model, n=n, seed_offset=seed_offset,
                                       logprobs=logprobs, temperature=temperature)
        if not self.params.think_prefix:
            return request
        return replace(request, assistant_prefix=self.params.think_prefix + request.assistant_prefix)

    def judge_request(self, ctx: NodeContext, trace: Trace, draft: Sample, model: str) -> GenerationRequest:
        """The trace with the draft as the judge's own assistant turn, then the scoring question."""
        p = self.params
        question = ctx.query.question_text()
        reasoning = p.think_prefix + trace.prefix + draft.text + p.delimiter
        instruction = prompts.render("specreason_judge.j2", p.judge_template, question=question,
                                     previous=trace.text, step=draft.text.strip())
        history = (*self.messages(ctx, self.solve_prompt(ctx)), Message("assistant", reasoning),
                   Message("user", instruction))
        return self.request(ctx, "", model=model, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=10,
                            assistant_prefix=p.think_prefix + SCORE_PREFIX, history=history)

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        drafter, large = self.drafter(ctx.defaults), self.large(ctx.defaults)
        if drafter == large:
            ctx.note(f"specreason: drafter and large model are both {large!r}")
        stats = {"steps_drafted": 0, "steps_accepted": 0, "steps_rewritten": 0, "steps_large_first": 0,
                 "tokens_drafter": 0, "tokens_large": 0, "tokens_judge": 0}
        judge_scores: list[float | None] = []
        trace = self.new_trace()
        while not trace.done:
            step_no = len(trace)
            if step_no < p.first_n_large:
                (res,) = yield [self.step_request(ctx, trace, model=large, seed_offset=step_no)]
                sample = first_sample(res)
                stats["tokens_large"] += sample.completion_tokens if sample else 0
                stats["steps_large_first"] += sample is not None
                trace = self.extend(trace, sample)
                continue
            (res,) = yield [self.step_request(ctx, trace, model=drafter, seed_offset=step_no)]
            draft = first_sample(res)
            if draft is None:
                trace = trace.stopped("budget")
                break
            stats["steps_drafted"] += 1
            stats["tokens_drafter"] += draft.completion_tokens
            accept = False
            if draft.text.strip():
                (judged,) = yield [self.judge_request(ctx, trace, draft, large)]
                verdict = first_sample(judged)
                if verdict is None:
                    ctx.note(f"step {step_no + 1}: judgement skipped (budget); kept the draft")
                    accept = True
                    judge_scores.append(None)
                else:
                    stats["tokens_judge"] += verdict.completion_tokens
                    score = judge_score(verdict, p.score_mode)
                    judge_scores.append(score)
                    accept = score is not None and score >= p.threshold
            if accept:
                stats["steps_accepted"] += 1
                trace = self.extend(trace, draft)
                continue
            (res,) = yield [self.step_request(ctx, trace, model=large, seed_offset=step_no)]
            rewrite = first_sample(res)
            if rewrite is None:
                ctx.note(f"step {step_no + 1}: rewrite skipped (budget); kept the draft")
                trace = self.extend(trace, draft)
                if not trace.done:
                    trace = trace.stopped("budget")
                continue
            stats["steps_rewritten"] += 1
            stats["tokens_large"] += rewrite.completion_tokens
            trace = self.extend(trace, rewrite)
        judged_steps = stats["steps_accepted"] + stats["steps_rewritten"]
        large_total = stats["tokens_large"] + stats["tokens_judge"]
        total_tokens = stats["tokens_drafter"] + large_total
        metadata = {
            **stats,
            "steps": len(trace),
            "finish": trace.finish,
            "acceptance_rate": stats["steps_accepted"] / judged_steps if judged_steps else None,
            "large_token_share": large_total / total_tokens if total_tokens else None,
            "judge_scores": judge_scores,
        }
        ctx.note(f"specreason: {len(trace)} steps ({trace.finish}); drafted {stats['steps_drafted']}, "
                 f"accepted {stats['steps_accepted']}, rewritten {stats['steps_rewritten']}, "
                 f"large-first {stats['steps_large_first']}; tokens drafter {stats['tokens_drafter']}, "
                 f"large {stats['tokens_large']} + judge {stats['tokens_judge']}")
        if not trace.steps:
            ctx.note("specreason: no step was written")
            return []
        text = trace.text
        return [Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=large,
                          metadata=metadata)]


__all__ = ["SCORE_PREFIX", "SpecReason", "SpecReasonParams", "judge_score"]
