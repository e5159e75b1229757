"""SpecReason: speculative reasoning with a small drafter and a large judge (Pan et al. 2025,
"SpecReason: Fast and Accurate Inference-Time Compute via Speculative Reasoning").

Reasoning is a sequence of steps (``archon.techniques.steps``). For each step:

1. the small ``drafter`` writes the next step, continuing the trace;
2. the large ``model`` rates the drafted step 0-9 from ONE constrained token (greedy digit
   or probability-weighted mean digit over the top-10 log-probs, ``score_mode``), prompt
   ``specreason_judge.j2``;
3. a score >= ``threshold`` keeps the draft; otherwise the large model writes the step
   itself from the same prefix.

The first ``first_n_large`` steps are written by the large model directly (no draft, no
judgement). A draft that comes back empty (the drafter wants to stop) is handed to the large
model without a judgement. A judgement skipped for the budget keeps the draft (noted); an
unreadable one (no digit among the top tokens) counts as a rejection.

Every round holds one request per query, so the engine sends one backend request per model
per round for the whole batch (drafts of all queries together, then all judgements, then all
rewrites). Per query the output candidate's ``metadata`` records steps drafted, accepted,
rewritten, written first by the large model, and completion tokens by each model.
"""

from __future__ import annotations

from pydantic import Field

from archon import prompts
from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program
from archon.techniques.steps import StepParams, StepTechnique, Trace, digit_score, first_sample
from archon.verifiers.answers import extract_final_answer


class SpecReasonParams(StepParams):
    drafter: str | None = Field(None, description="the small model that drafts steps (default: the node's model)")
    threshold: int = Field(7, ge=0, le=9, description="a draft scored >= threshold (0-9) by the large model is kept")
    score_mode: str = Field("greedy", pattern="^(greedy|weighted)$",
                            description="greedy digit, or probability-weighted mean over digit tokens")
    first_n_large: int = Field(0, ge=0, description="the first n steps are written by the large model")
    judge_template: str | None = Field(None, description="jinja2 file overriding specreason_judge.j2 "
                                                         "(variables: question, previous, step)")


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

    def judge_prompt(self, ctx: NodeContext, trace: Trace, step: str) -> str:
        return prompts.render("specreason_judge.j2", self.params.judge_template, question=ctx.query.question_text(),
                              previous=trace.text, step=step.strip())

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
                (judged,) = yield [self.judge_digit_request(ctx, self.judge_prompt(ctx, trace, draft.text), large)]
                verdict = first_sample(judged)
                if verdict is None:
                    ctx.note(f"step {step_no + 1}: judgement skipped (budget); kept the draft")
                    accept = True
                    judge_scores.append(None)
                else:
                    stats["tokens_judge"] += verdict.completion_tokens
                    score = digit_score(verdict, p.score_mode)
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


__all__ = ["SpecReason", "SpecReasonParams"]
