"""Solve-Detect-Verify with a flexible verifier (FlexiVe): Zhong et al. 2025, "Solve-Detect-
Verify: Inference-Time Scaling with Flexible Generative Verifier".

**Solve.** The solver writes its solution step by step (``archon.techniques.steps``).
**Detect.** When a step contains a hesitation marker (``wait``, ``hmm``, ``alternatively``,
``let me check``; configurable, matched as whole words, any case), the solution written
before the marker is checked for completeness: "Has this solution already reached its final
answer?" answered by comparing the probabilities of a one-word Yes/No (a ``ScoreRequest`` on
``" Yes"``/``" No"``, or the top log-probs of one generated token, ``detect_mode``). If
P(Yes) >= ``detect_threshold`` the solver stops there (the hesitation is dropped) and writes
its final answer, continuing ``Final answer: \\boxed{`` (``answer_prefix``). A trace that
ends without an answer (caps, end) is closed the same way.
**Verify.** The solution is split into numbered paragraphs (at the step delimiter) and a
verifier names the earliest wrong paragraph (``-1``: none). Fast mode first: ``fast_checks``
samples with ``fast_max_tokens`` tokens, the answer forced right after ``\\boxed{``. If the
most common verdict has at least ``agreement`` of the samples it stands; otherwise slow
mode: ``slow_checks`` samples that may reason for ``slow_max_tokens`` tokens, majority verdict.
On an error the solver is re-prompted with the feedback (which paragraph is wrong), at most
``max_rounds`` times.

Every round holds one request per query, so the engine batches all queries' steps, checks
and verifications into one backend request per model per round. Output: every attempt,
verified ones first (latest first), with ``verified`` (1/0; absent when undecided) and
``verify_agreement`` scores; the metadata records detection checks, early stops and verdicts.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Literal

from pydantic import Field

from archon import prompts
from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program
from archon.techniques.steps import (
    StepParams,
    StepTechnique,
    Trace,
    close_braces,
    first_sample,
    has_final_answer,
    samples_of,
    yes_probability,
)
from archon.verifiers.answers import extract_final_answer, find_boxed


class SolveDetectVerifyParams(StepParams):
    hesitation_markers: list[str] = Field(["wait", "hmm", "alternatively", "let me check"],
                                          description="words that trigger the completeness check")
    detect: bool = Field(True, description="check completeness at hesitation markers")
    detect_mode: Literal["score", "top_logprobs"] = Field(
        "score", description="Yes/No by a ScoreRequest on ' Yes'/' No', or by one token's top log-probs")
    detect_threshold: float = Field(0.5, ge=0.0, le=1.0, description="stop when P(Yes) >= this")
    answer_prefix: str = Field("Final answer: \\boxed{", description="text the final answer continues")
    answer_max_tokens: int = Field(24, ge=1, description="tokens for the final answer")
    verify: bool = Field(True, description="run the verifier (off: solve-detect only)")
    verifier_model: str | None = Field(None, description="the verifier (default: the node's model)")
    fast_checks: int = Field(4, ge=1, le=64, description="fast verifications (k quick samples)")
    fast_max_tokens: int = Field(6, ge=1, description="tokens per fast verification")
    agreement: float = Field(0.75, gt=0.0, le=1.0, description="fast verdict stands when this share agrees")
    slow_checks: int = Field(4, ge=1, le=64, description="slow verifications when the fast ones disagree")
    slow_max_tokens: int = Field(256, ge=1, description="tokens per slow verification")
    verify_temperature: float = Field(0.7, ge=0.0, le=2.0, description="verifier sampling temperature")
    max_rounds: int = Field(2, ge=0, le=10, description="re-prompts after a failed verification")
    detect_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_detect.j2")
    verify_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_verify.j2")
    revise_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_revise.j2")


def paragraphs(text: str, delimiter: str = "\n\n") -> list[str]:
    return [p.strip() for p in text.split(delimiter) if p.strip()]


def parse_paragraph_index(text: str, count: int, forced: bool = False) -> int | None:
    """The verifier's earliest wrong paragraph (1-based) or -1; None when absent or out of range.

    ``forced``: the reply continues ``\\boxed{``, so the number comes first.
    """
    if forced:
        m = re.match(r"\s*(-?\d+)", text)
        raw = m.group(1) if m else None
    else:
        boxed = [b for b in find_boxed(text) if re.fullmatch(r"\s*-?\d+\s*", b)]
        if boxed:
            raw = boxed[-1].strip()
        else:
            nums = re.findall(r"-?\d+", text)
            raw = nums[-1] if nums else None
    if raw is None:
        return None
    value = int(raw)
    return value if value == -1 or 1 <= value <= count else None


def majority(verdicts: list[int | None]) -> tuple[int | None, float]:
    """The most common parsed verdict (first seen on ties) and its share of all replies."""
    valid = [v for v in verdicts if v is not None]
    if not valid:
        return None, 0.0
    counts = Counter(valid)
    best = max(counts, key=lambda v: (counts[v], -valid.index(v)))
    return best, counts[best] / len(verdicts)


class SolveDetectVerify(StepTechnique):
    name = "solve_detect_verify"
    Params = SolveDetectVerifyParams
    description = "solve step by step, stop early at hesitations when already done, verify paragraphs, retry"
    params: SolveDetectVerifyParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.solver(defaults), *([self.verifier(defaults)] if self.params.verify else [])]))

    def solver(self, defaults: Defaults) -> str:
        return self.params.model or defaults.model

    def verifier(self, defaults: Defaults) -> str:
        return self.params.verifier_model or self.params.model or defaults.model

    def marker_position(self, step: str) -> int | None:
        words = [re.escape(w) for w in self.params.hesitation_markers if w.strip()]
        if not words:
            return None
        m = re.search(r"(?i)(?<![A-Za-z])(?:" + "|".join(words) + r")(?![A-Za-z])", step)
        return m.start() if m else None

    # -- solve + detect ----------------------------------------------------------------------

    def solve(self, ctx: NodeContext, user: str, round_no: int, info: dict[str, Any]) -> Program:
        p = self.params
        solver = self.solver(ctx.defaults)
        question = ctx.query.question_text()
        trace = self.new_trace()
        info.update(detect_checks=0, detect_p_yes=[], early_stop=False)
        while not trace.done:
            (res,) = yield [self.step_request(ctx, trace, user=user, model=solver,
                                              seed_offset=1000 * round_no + len(trace))]
            sample = first_sample(res)
            pos = self.marker_position(sample.text) if (sample is not None and p.detect) else None
            if sample is not None and pos is not None:
                before = sample.text[:pos].rstrip()
                partial = (trace.prefix + before).strip()
                if partial:
                    prompt = prompts.render("solve_detect_verify_detect.j2", p.detect_template, question=question,
                                            partial=partial)
                    request = (self.yes_no_request(ctx, prompt, solver) if p.detect_mode == "score" else
                               self.request(ctx, prompt, model=solver, temperature=0.0, max_tokens=1, logprobs=True,
                                            top_logprobs=10, assistant_prefix="Answer:"))
                    (checked,) = yield [request]
                    p_yes = yes_probability(checked)
                    info["detect_checks"] += 1
                    info["detect_p_yes"].append(p_yes)
                    if p_yes is not None and p_yes >= p.detect_threshold:
                        if before.strip():
                            trace = trace.with_step(before, tokens=sample.completion_tokens)
                        trace = trace.stopped("detected")
                        info["early_stop"] = True
                        break
            trace = self.extend(trace, sample)
        info["steps"] = len(trace)
        info["finish"] = trace.finish
        text = trace.text
        if text and not has_final_answer(text):
            text = yield from self.force_answer(ctx, trace, user, solver)
        return text

    def force_answer(self, ctx: NodeContext, trace: Trace, user: str, solver: str) -> Program:
        p = self.params
        prefix = trace.prefix if trace.prefix.endswith(p.delimiter) else trace.prefix.rstrip() + p.delimiter
        (res,) = yield [self.request(ctx, user, model=solver, temperature=0.0, max_tokens=p.answer_max_tokens,
                                     stop=["\n"], assistant_prefix=prefix + p.answer_prefix)]
        sample = first_sample(res)
        if sample is None:
            ctx.note("final-answer call skipped (budget)")
            return trace.text
        tail = close_braces(sample.text) if p.answer_prefix.rstrip().endswith("{") else sample.text.strip()
        return (prefix + p.answer_prefix + tail).strip()

    # -- verify --------------------------------------------------------------------------------

    def verify_text(self, ctx: NodeContext, text: str, info: dict[str, Any]) -> Program:
        """The earliest wrong paragraph (or -1), None when undecided."""
        p = self.params
        paras = paragraphs(text, p.delimiter)
        prompt = prompts.render("solve_detect_verify_verify.j2", p.verify_template,
                                question=ctx.query.question_text(), paragraphs=paras)
        verifier = self.verifier(ctx.defaults)
        (fast,) = yield [self.request(ctx, prompt, model=verifier, n=p.fast_checks, max_tokens=p.fast_max_tokens,
                                      temperature=p.verify_temperature, assistant_prefix="\\boxed{")]
        fast_verdicts = [parse_paragraph_index(s.text, len(paras), forced=True) for s in samples_of(fast)]
        verdict, share = majority(fast_verdicts)
        info.update(paragraphs=len(paras), fast_verdicts=fast_verdicts, verify_mode="fast", agreement=share)
        if not fast_verdicts:
            ctx.note("fast verification skipped (budget)")
        if verdict is not None and share >= p.agreement:
            return verdict
        (slow,) = yield [self.request(ctx, prompt, model=verifier, n=p.slow_checks, max_tokens=p.slow_max_tokens,
                                      temperature=p.verify_temperature)]
        slow_verdicts = [parse_paragraph_index(s.text, len(paras)) for s in samples_of(slow)]
        verdict, share = majority(slow_verdicts)
        info.update(slow_verdicts=slow_verdicts, verify_mode="slow", agreement=share)
        if not slow_verdicts:
            ctx.note("slow verification skipped (budget)")
        return verdict

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        question = ctx.query.question_text()
        user = self.solve_prompt(ctx)
        attempts: list[Candidate] = []
        for round_no in range(p.max_rounds + 1):
            info: dict[str, Any] = {"round": round_no}
            text = yield from self.solve(ctx, user, round_no, info)
            if not text:
                ctx.note(f"round {round_no + 1}: no solution written")
                break
            verdict = None
            if p.verify:
                verdict = yield from self.verify_text(ctx, text, info)
            info["verdict"] = verdict
            scores: dict[str, float] = {}
            if verdict is not None:
                scores["verified"] = 1.0 if verdict == -1 else 0.0
                scores["verify_agreement"] = info.get("agreement", 0.0)
            attempts.append(Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id,
                                      model=self.solver(ctx.defaults), scores=scores, metadata=info))
            ctx.note(f"round {round_no + 1}: {info['steps']} steps ({info['finish']}), "
                     f"{info['detect_checks']} completeness checks, early stop: {info['early_stop']}, "
                     f"verdict: {verdict} ({info.get('verify_mode', 'off')}, agreement {info.get('agreement', 0):.2f})")
            if verdict is None or verdict == -1:
                break
            if round_no == p.max_rounds:
                ctx.note(f"verification still fails after {p.max_rounds} re-prompts")
                break
            paras = paragraphs(text, p.delimiter)
            feedback = f"Paragraph {verdict} contains an error: \"{paras[verdict - 1][:300]}\""
            user = prompts.render("solve_detect_verify_revise.j2", p.revise_template, question=question,
                                  paragraphs=paras, feedback=feedback)
        rank = {1.0: 0, None: 1, 0.0: 2}
        order = sorted(range(len(attempts)), key=lambda i: (rank[attempts[i].scores.get("verified")], -i))
        return [attempts[i] for i in order]


__all__ = ["SolveDetectVerify", "SolveDetectVerifyParams", "majority", "paragraphs", "parse_paragraph_index"]
