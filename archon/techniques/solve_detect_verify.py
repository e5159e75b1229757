"""Solve-Detect-Verify with a flexible verifier (FlexiVe): Zhong et al. 2025, "Solve-Detect-
Verify: Inference-Time Scaling with Flexible Generative Verifier"; reference code
JianyuanZhong/flexive ``solve_detect_verify.py``.

**Solve.** The solver writes its solution step by step (``archon.techniques.steps``).

**Detect.** When a step contains one of the ten hesitation keywords (``wait``,
``double-check``, ``alternatively``, ``hmm``, ``let me check``, ``let me double-check``,
``make sure``, ``another way``, ``let me verify``, ``to confirm``; matched as whole words,
any case), the solution written before it is checked for completeness: Yes/No log-probs
(a ``ScoreRequest`` on ``" Yes"``/``" No"``, or one token's top log-probs, ``detect_mode``);
P(Yes) >= ``detect_threshold`` (0.5, i.e. Yes more likely than No, the reference's test)
stops the solver there, and it writes its final answer (continuing ``answer_prefix``). A
trace that ends without an answer is closed the same way.

**Verify.** The solution is split into paragraphs *at the hesitation keywords* (a keyword at
the start of the text, of a line or of a sentence opens a new paragraph and stays with it),
tagged ``<paragraph_i>`` from 0, and FlexiVe's critique prompt asks for the earliest wrong
paragraph in ``\\boxed{}`` (-1: none). The verdict is the last ``\\boxed{...}`` of a reply,
read as an integer, exactly as the reference reads a FlexiVe checkpoint's answer.

- fast pass: ``fast_checks`` (k = 4) samples with the thinking block already closed (the
  reply continues ``fast_prefix``, "Okay, I think I have finished thinking.\\n</think>");
- among the readable verdicts, the most common one (first seen on ties) stands if its share
  is >= ``agreement`` (0.9); no readable verdict at all leaves the solution undecided;
- otherwise the slow pass: ceil(k/4) samples that think freely with ``slow_max_tokens``
  (32768, the reference's budget), majority verdict.

**Revise.** On an error the solver gets a multi-turn exchange: its problem prompt, its own
solution as the assistant turn, and a user turn carrying the verifier's critique text (the
reply that gave the verdict, its ``\\boxed{}`` removed, and only its thinking part when it has
a ``</think>``). ``revisions`` (4) solutions are sampled from there and a majority vote over
their final answers picks the output (the first solution with the winning answer). As in the
reference the voted solution is not verified again (``max_rounds: 1``; more rounds verify
and revise the voted solution again, an archon extension; 0 disables revision).

Every round holds one request per query (the revisions: one request per revision), so the
engine batches all queries into one backend request per model per round. Output: the chosen
solution first, then the other revisions; scores ``verified`` (1/0, only on a solution the
verifier judged), ``verify_agreement`` and ``votes``; metadata records detection checks,
verdicts, the verify mode and the critique.

Departures (parameters): ``fast_max_tokens`` is 1024 (the reference uses its 32768 budget for
every call; a closed-thinking verdict is short, and archon's budget reserves ``max_tokens``);
detection asks with a single user turn and the final answer continues ``answer_prefix``
(the reference continues the trace after ``</think>``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Generator, Sequence
from typing import Any, Literal

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationRequest, Message
from archon.data import Candidate
from archon.techniques.base import Defaults, ModelRequest, ModelResult, NodeContext, Program
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
from archon.techniques.vote import tally
from archon.verifiers.answers import extract_final_answer

HESITATION_KEYWORDS = ["wait", "double-check", "alternatively", "hmm", "let me check", "let me double-check",
                       "make sure", "another way", "let me verify", "to confirm"]
THINKING_CLOSED = "Okay, I think I have finished thinking.\n</think>\n\n"


class SolveDetectVerifyParams(StepParams):
    hesitation_markers: list[str] = Field(default_factory=lambda: list(HESITATION_KEYWORDS),
                                          description="keywords that trigger the completeness check and split "
                                                      "the verifier's paragraphs")
    detect: bool = Field(True, description="check completeness at hesitation markers")
    detect_mode: Literal["score", "top_logprobs"] = Field(
        "score", description="Yes/No by a ScoreRequest on ' Yes'/' No', or by one token's top log-probs")
    detect_threshold: float = Field(0.5, ge=0.0, le=1.0, description="stop when P(Yes) >= this")
    answer_prefix: str = Field("Final answer: \\boxed{", description="text the final answer continues")
    answer_max_tokens: int = Field(24, ge=1, description="tokens for the final answer")
    verify: bool = Field(True, description="run the verifier (off: solve-detect only)")
    verifier_model: str | None = Field(None, description="the verifier (default: the node's model)")
    fast_checks: int = Field(4, ge=1, le=64, description="k: fast verifications with the thinking block closed")
    fast_prefix: str = Field(THINKING_CLOSED, description="text a fast verification continues (closes thinking)")
    fast_max_tokens: int = Field(1024, ge=1, description="tokens per fast verification")
    agreement: float = Field(0.9, gt=0.0, le=1.0, description="the fast verdict stands when this share of the "
                                                              "readable verdicts agrees")
    slow_checks: int | None = Field(None, ge=1, le=64, description="slow verifications (default ceil(k/4))")
    slow_max_tokens: int = Field(32768, ge=1, description="tokens per slow verification (full thinking)")
    verify_temperature: float = Field(0.6, ge=0.0, le=2.0, description="verifier sampling temperature")
    revisions: int = Field(4, ge=1, le=64, description="solutions sampled after a failed verification "
                                                       "(best-of-n with a majority vote)")
    max_rounds: int = Field(1, ge=0, le=10, description="revision rounds; after the first the voted solution "
                                                        "is verified again (archon extension)")
    detect_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_detect.j2")
    verify_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_verify.j2")
    revise_template: str | None = Field(None, description="jinja2 file overriding solve_detect_verify_revise.j2")


def split_at_hesitations(text: str, keywords: Sequence[str] = HESITATION_KEYWORDS) -> list[str]:
    """The verifier's paragraphs: a keyword at the start of the text, after a newline or after
    ". " opens a new paragraph and stays with the text that follows it; empty pieces and a
    trailing keyword-only piece are dropped (the reference's rule)."""
    words = [w for w in keywords if w.strip()]
    if not words:
        return [text.strip()] if text.strip() else []
    pattern = re.compile(r"(?:^|(?<=\.\s)|(?<=\n))(?=(?:" + "|".join(re.escape(w) for w in words) + r"))",
                         re.IGNORECASE)
    starts = sorted({0, *(m.start() for m in pattern.finditer(text))})
    pieces = [text[a:b].strip() for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    pieces = [p for p in pieces if p]
    lowered = {w.lower() for w in words}
    if pieces and pieces[-1].lower() in lowered:
        pieces = pieces[:-1]
    return pieces


def tag_paragraphs(paragraphs: Sequence[str]) -> str:
    return "\n\n".join(f"<paragraph_{i}>\n{p}\n</paragraph_{i}>" for i, p in enumerate(paragraphs))


_BOXED = re.compile(r"\\boxed\{([^}]*)\}")


def parse_verdict(text: str) -> int | None:
    """FlexiVe's answer: the last ``\\boxed{n}``; n >= 0 is the earliest wrong paragraph, -1 none.
    None when there is no readable integer (or it is below -1)."""
    found = _BOXED.findall(text)
    if not found:
        return None
    try:
        value = int(found[-1].strip())
    except ValueError:
        return None
    return value if value >= -1 else None


def majority(verdicts: Sequence[int | None]) -> tuple[int | None, float]:
    """The most common readable verdict (first seen on ties) and its share of the readable ones."""
    valid = [v for v in verdicts if v is not None]
    if not valid:
        return None, 0.0
    counts = Counter(valid)
    best = max(counts, key=lambda v: (counts[v], -valid.index(v)))
    return best, counts[best] / len(valid)


def critique_text(reply: str) -> str:
    """The reference's feedback: the reply without its ``\\boxed{}``; only the thinking part
    when it has a ``</think>``."""
    cleaned = _BOXED.sub("", reply)
    if "</think>" in cleaned:
        cleaned = cleaned.split("</think>", 1)[0].replace("<think>", "")
    return cleaned.strip()


Sub = Generator[list[ModelRequest], list[ModelResult], Any]


def lockstep(programs: Sequence[Sub]) -> Generator[list[ModelRequest], list[ModelResult], list[Any]]:
    """Run sub-programs side by side: each round sends every live program's requests in one
    list, so the engine batches them; returns their return values in order."""
    out: list[Any] = [None] * len(programs)
    pending: dict[int, list[ModelRequest]] = {}
    for i, prog in enumerate(programs):
        try:
            pending[i] = next(prog)
        except StopIteration as stop:
            out[i] = stop.value
    while pending:
        order = list(pending)
        merged = [r for i in order for r in pending[i]]
        results = yield merged
        pos = 0
        nxt: dict[int, list[ModelRequest]] = {}
        for i in order:
            k = len(pending[i])
            try:
                nxt[i] = programs[i].send(list(results[pos:pos + k]))
            except StopIteration as stop:
                out[i] = stop.value
            pos += k
        pending = nxt
    return out


class SolveDetectVerify(StepTechnique):
    name = "solve_detect_verify"
    Params = SolveDetectVerifyParams
    description = "solve step by step, stop early at hesitations, verify paragraphs fast/slow, revise best-of-n"
    params: SolveDetectVerifyParams

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.solver(defaults), *([self.verifier(defaults)] if self.params.verify else [])]))

    def solver(self, defaults: Defaults) -> str:
        return self.params.model or defaults.model

    def verifier(self, defaults: Defaults) -> str:
        return self.params.verifier_model or self.params.model or defaults.model

    def slow_count(self) -> int:
        return self.params.slow_checks or math.ceil(self.params.fast_checks / 4)

    def marker_position(self, step: str) -> int | None:
        words = [re.escape(w) for w in self.params.hesitation_markers if w.strip()]
        if not words:
            return None
        m = re.search(r"(?i)(?<![A-Za-z])(?:" + "|".join(words) + r")(?![A-Za-z])", step)
        return m.start() if m else None

    # -- solve + detect ----------------------------------------------------------------------

    def solver_request(self, ctx: NodeContext, history: tuple[Message, ...], prefix: str, *, seed_offset: int,
                       **kw: Any) -> GenerationRequest:
        return self.request(ctx, "", model=self.solver(ctx.defaults), history=history, assistant_prefix=prefix,
                            seed_offset=seed_offset, **kw)

    def solve(self, ctx: NodeContext, history: tuple[Message, ...], seed: int, info: dict[str, Any]) -> Program:
        p = self.params
        solver = self.solver(ctx.defaults)
        question = ctx.query.question_text()
        trace = self.new_trace()
        info.update(detect_checks=0, detect_p_yes=[], early_stop=False)
        while not trace.done:
            (res,) = yield [self.solver_request(ctx, history, trace.prefix, seed_offset=seed + len(trace),
                                                stop=[p.delimiter], max_tokens=self.step_max_tokens(ctx, trace))]
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
            text = yield from self.force_answer(ctx, trace, history, seed)
        return text

    def force_answer(self, ctx: NodeContext, trace: Trace, history: tuple[Message, ...], seed: int) -> Program:
        p = self.params
        prefix = trace.prefix if trace.prefix.endswith(p.delimiter) else trace.prefix.rstrip() + p.delimiter
        (res,) = yield [self.solver_request(ctx, history, prefix + p.answer_prefix, seed_offset=seed,
                                            temperature=0.0, max_tokens=p.answer_max_tokens, stop=["\n"])]
        sample = first_sample(res)
        if sample is None:
            ctx.note("final-answer call skipped (budget)")
            return trace.text
        tail = close_braces(sample.text) if p.answer_prefix.rstrip().endswith("{") else sample.text.strip()
        return (prefix + p.answer_prefix + tail).strip()

    # -- verify --------------------------------------------------------------------------------

    def verify_text(self, ctx: NodeContext, text: str, info: dict[str, Any]) -> Program:
        """The earliest wrong paragraph (0-based) or -1, None when undecided; sets info["critique"]."""
        p = self.params
        paras = split_at_hesitations(text, p.hesitation_markers)
        prompt = prompts.render("solve_detect_verify_verify.j2", p.verify_template,
                                question=ctx.query.question_text(), tagged=tag_paragraphs(paras), paragraphs=paras)
        verifier = self.verifier(ctx.defaults)
        (fast,) = yield [self.request(ctx, prompt, model=verifier, n=p.fast_checks, max_tokens=p.fast_max_tokens,
                                      temperature=p.verify_temperature, assistant_prefix=p.fast_prefix)]
        replies = [s.text for s in samples_of(fast)]
        fast_verdicts = [parse_verdict(t) for t in replies]
        verdict, share = majority(fast_verdicts)
        info.update(paragraphs=len(paras), fast_verdicts=fast_verdicts, verify_mode="fast", agreement=share)
        if not replies:
            ctx.note("fast verification skipped (budget)")
        if verdict is None or share >= p.agreement:
            info["critique"] = self.pick_critique(replies, fast_verdicts, verdict)
            return verdict
        (slow,) = yield [self.request(ctx, prompt, model=verifier, n=self.slow_count(), max_tokens=p.slow_max_tokens,
                                      temperature=p.verify_temperature)]
        replies = [s.text for s in samples_of(slow)]
        slow_verdicts = [parse_verdict(t) for t in replies]
        verdict, share = majority(slow_verdicts)
        info.update(slow_verdicts=slow_verdicts, verify_mode="slow", agreement=share)
        if not replies:
            ctx.note("slow verification skipped (budget)")
        info["critique"] = self.pick_critique(replies, slow_verdicts, verdict)
        return verdict

    @staticmethod
    def pick_critique(replies: list[str], verdicts: list[int | None], verdict: int | None) -> str:
        for reply, v in zip(replies, verdicts, strict=True):
            if verdict is not None and v == verdict:
                return critique_text(reply)
        return ""

    # -- the whole method ------------------------------------------------------------------------

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        solver = self.solver(ctx.defaults)
        base = self.messages(ctx, self.solve_prompt(ctx))
        info: dict[str, Any] = {"round": 0}
        text = yield from self.solve(ctx, base, 0, info)
        if not text:
            ctx.note("no solution written")
            return []
        current = Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=solver,
                            metadata=info)
        others: list[Candidate] = []
        for round_no in range(p.max_rounds + 1):
            verify_now = p.verify and (round_no == 0 or round_no < p.max_rounds)
            if not verify_now:
                break
            info = dict(current.metadata)
            verdict = yield from self.verify_text(ctx, current.text, info)
            info["verdict"] = verdict
            scores = dict(current.scores)
            if verdict is not None:
                scores["verified"] = 1.0 if verdict == -1 else 0.0
                scores["verify_agreement"] = info.get("agreement", 0.0)
            current = current.derive(scores=scores, metadata=info)
            ctx.note(f"round {round_no + 1}: {info.get('steps')} steps ({info.get('finish')}), "
                     f"{info.get('detect_checks', 0)} completeness checks, early stop: {info.get('early_stop')}, "
                     f"verdict: {verdict} ({info.get('verify_mode', 'off')}, agreement {info.get('agreement', 0):.2f})")
            if verdict is None or verdict == -1:
                break
            if round_no == p.max_rounds:
                ctx.note(f"verification still fails after {p.max_rounds} revision round(s)")
                break
            feedback = prompts.render("solve_detect_verify_revise.j2", p.revise_template,
                                      feedback=info.get("critique", ""), markers=p.hesitation_markers,
                                      question=ctx.query.question_text(), verdict=verdict)
            history = (*base, Message("assistant", current.text), Message("user", feedback))
            infos = [{"round": round_no + 1, "revision": j} for j in range(p.revisions)]
            texts = yield from lockstep([self.solve(ctx, history, 1000 * (round_no + 1) + 100 * j, infos[j])
                                         for j in range(p.revisions)])
            revised = [Candidate(text=t, answer=extract_final_answer(t), node=ctx.node_id, model=solver,
                                 parents=[current.id], metadata={**infos[j], "revised_after": verdict})
                       for j, t in enumerate(texts) if t]
            if not revised:
                ctx.note(f"round {round_no + 1}: no revision written; kept the failed solution")
                break
            voted = tally(revised)
            ctx.note(f"round {round_no + 1}: {len(revised)} revisions, voted answer {voted[0].answer!r} "
                     f"({voted[0].scores['votes']:.2f})")
            current, others = voted[0], voted[1:]
        return [current, *others]


__all__ = ["HESITATION_KEYWORDS", "SolveDetectVerify", "SolveDetectVerifyParams", "critique_text", "lockstep",
           "majority", "parse_verdict", "split_at_hesitations", "tag_paragraphs"]
