"""Answer extraction, normalisation for voting, and math grading against gold (no model)."""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import pytest

from archon.verifiers import GRADER_VERSION, MathGrade, _symbolic, extract_final_answer, grade_math, normalize_answer
from archon.verifiers.math_grader import _pool, gold_answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so the result is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{x^{2^{3}}} with nested braces", "x^{2^{3}}"),
        ("first \\boxed{1}, then corrected: \\boxed{2}", "2"),
        ("\\fbox{7}", "7"),
        ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
        ("The final answer is $\\boxed{5}$. I hope it is correct.", "5"),
        ("She pays 1234 dollars.\n#### 1,234", "1,234"),
        ("#### 3\nsome chatter\n#### 4", "4"),
        ("The answer is 42.", "42"),
        ("so the answer is 3.5", "3.5"),
        ("The final answer is: 18", "18"),
        ("**Answer:** 7", "7"),
        ("Answer: (B) because the others are wrong", "(B)"),
        ("The answer is $18.00$. Done.", "$18.00$"),
        ("the answer is 1. Then the answer is 2.", "2"),
    ],
)
def test_extract_final_answer(text: str, expected: str) -> None:
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize("text", ["", "I am not sure.", "\\boxed{unclosed", "\\boxed{}", "#### "])
def test_extract_final_answer_none(text: str) -> None:
    assert extract_final_answer(text) is None


def test_extraction_is_linear_on_degenerate_output() -> None:
    started = time.perf_counter()
    assert extract_final_answer("\\boxed{" * 20000) is None
    assert extract_final_answer("\\boxed{1} " + "\\boxed{ {" * 20000) == "1"
    assert time.perf_counter() - started < 1.0


def test_boxed_beats_phrases_and_hashes() -> None:
    assert extract_final_answer("#### 3\nThe answer is 4. Actually \\boxed{5}") == "5"
    assert extract_final_answer("The answer is 4.\n#### 3") == "3"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("$18$", "18"),
        ("\\boxed{18}", "18"),
        ("1,000", "1000"),
        ("1{,}000", "1000"),
        ("\\$1,234.50", "1234.5"),
        ("2.50", "2.5"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("007", "7"),
        (".5", "0.5"),
        ("-3", "-3"),
        ("+5", "5"),
        ("3.", "3"),
        ("\\dfrac12", "\\frac{1}{2}"),
        ("\\tfrac{3}{4}", "\\frac{3}{4}"),
        ("\\frac12", "\\frac{1}{2}"),
        ("\\frac1{2}", "\\frac{1}{2}"),
        ("1/2", "\\frac{1}{2}"),
        ("-3/4", "-\\frac{3}{4}"),
        ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt{3}}{2}"),
        ("\\sqrt2", "\\sqrt{2}"),
        ("90^\\circ", "90"),
        ("90^{\\circ}", "90"),
        ("90 degrees", "90"),
        ("10\\%", "10"),
        ("18 apples", "18"),
        ("5 \\text{ cm}", "5"),
        ("\\text{(B)}", "B"),
        ("(B)", "B"),
        ("\\textbf{Yes}", "yes"),
        ("x = 5", "5"),
        ("\\left( 1, 2 \\right)", "(1,2)"),
        ("(0, 1]", "(0,1]"),
        ("x^2 + 1", "x^2+1"),
        ("1,2", "1,2"),  # a pair, not one thousand and two
        ("2 pi", "2pi"),  # pi is not a unit
        ("3 million", "3million"),
    ],
)
def test_normalize_answer(answer: str, expected: str) -> None:
    assert normalize_answer(answer) == expected


def test_normalize_groups_equivalent_spellings_for_voting() -> None:
    assert len({normalize_answer(a) for a in ["1000", "1,000", "$1000$", "\\boxed{1{,}000}", "1000."]}) == 1
    assert len({normalize_answer(a) for a in ["\\frac12", "\\dfrac{1}{2}", "1/2", "\\tfrac1{2}"]}) == 1
    assert normalize_answer("(1,2)") != normalize_answer("(2,1)")


def test_normalize_is_fast() -> None:
    answers = ["\\dfrac{3}{4}", "1,234", "90^\\circ", "x = \\left(1, 2\\right)", "\\text{(C)}"] * 200
    started = time.perf_counter()
    for a in answers:
        normalize_answer(a)
    assert (time.perf_counter() - started) / len(answers) < 1e-3


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("18", "18"),
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("so the area is $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("(1,2)", "(1,2)"),
    ],
)
def test_gold_answer(gold: str, expected: str) -> None:
    assert gold_answer(gold) == expected


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("The answer is 0.5", "\\frac12"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{1}{2}}", "1/2"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{90}", "90^\\circ"),
        ("\\boxed{5 \\text{ cm}}", "5"),
        ("\\boxed{(0,1]}", "(0,1]"),
        ("\\boxed{(1,2)}", "(1,2)"),
        ("\\boxed{\\text{(B)}}", "B"),
        ("The answer is (B).", "\\text{(B)}"),
        ("#### 1,234", "1234"),
        ("\\boxed{1{,}000}", "1000"),
        ("\\boxed{-3}", "-3"),
        ("\\boxed{-\\frac{3}{4}}", "-0.75"),
        ("\\boxed{x^2+2x+1}", "(x+1)^2"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{1}{\\sqrt{2}}"),
        ("\\boxed{\\{2, 1\\}}", "\\{1, 2\\}"),
        ("\\boxed{Yes}", "yes"),
        ("She earns 18 dollars a day.\n#### 18", "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\n#### 18"),
    ],
)
def test_grade_math_equivalent(prediction: str, gold: str) -> None:
    grade = grade_math(prediction, gold)
    assert grade.correct, grade


@pytest.mark.parametrize(
    ("prediction", "gold"),
    [
        ("\\boxed{5}", "6"),
        ("The answer is 42.", "#### 24"),
        ("\\boxed{(1,2)}", "(2,1)"),  # ordered pairs: order matters
        ("\\boxed{(0,1)}", "(0,1]"),  # open vs half-open
        ("\\boxed{-3}", "3"),
        ("\\boxed{0.5001}", "\\frac{1}{2}"),
        ("\\boxed{1,000}", "100"),
        ("\\boxed{\\text{(A)}}", "B"),
        ("I could not solve it.", "18"),
    ],
)
def test_grade_math_wrong(prediction: str, gold: str) -> None:
    grade = grade_math(prediction, gold)
    assert not grade.correct, grade


def test_grade_math_reports_what_it_compared() -> None:
    grade = grade_math("Thus \\boxed{\\dfrac12}.", "0.5")
    assert grade == MathGrade(
        correct=True, extracted="\\dfrac12", normalized_pred="\\frac{1}{2}", normalized_gold="0.5",
        method="math_verify", timed_out=False, error=None,
    )


def test_grade_math_without_extractable_answer_asks_math_verify() -> None:
    grade = grade_math("So in total she has 18 apples", "18")
    assert grade.extracted is None and grade.normalized_pred is None
    assert grade.correct and grade.method == "math_verify"


def test_grade_math_string_fallback_when_unparseable(monkeypatch: pytest.MonkeyPatch) -> None:
    """When math-verify cannot parse a side, normalised strings decide."""
    monkeypatch.setattr(_symbolic, "symbolic_equal", lambda pred, gold, pred_is_answer=True: None)
    grade = grade_math("\\boxed{1,000}", "1000", isolate=False)
    assert grade.correct and grade.method == "string"
    grade = grade_math("\\boxed{0.5}", "\\frac12", isolate=False)
    assert not grade.correct and grade.method == "string"


def test_grader_version_names_math_verify() -> None:
    assert f"math-verify-{version('math-verify')}" in GRADER_VERSION


def test_grade_math_times_out_on_pathological_answers() -> None:
    started = time.monotonic()
    grade = grade_math("\\boxed{2^{10^{10}}}", "5", timeout_s=0.5)
    elapsed = time.monotonic() - started
    assert grade.timed_out and not grade.correct and grade.method == "string"
    assert elapsed < 0.5 + 1.0 + 3.0  # timeout + kill grace + (possibly) a worker start


def test_grade_math_in_process_on_main_thread_times_out_and_keeps_outer_timer() -> None:
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        signal.setitimer(signal.ITIMER_REAL, 30.0)
        started = time.monotonic()
        grade = grade_math("\\boxed{9^{9^{9^{9}}}}", "5", timeout_s=0.3, isolate=False)
        assert time.monotonic() - started < 2.0
        assert grade.timed_out and not grade.correct
        left, _ = signal.getitimer(signal.ITIMER_REAL)
        assert 25.0 < left <= 30.0  # the caller's alarm (pytest-timeout uses one) is still set
        assert signal.getsignal(signal.SIGALRM) is not _symbolic.DeadlineExceeded
        assert grade_math("\\boxed{3}", "3", isolate=False).correct
        assert not fired
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_grade_math_from_worker_threads() -> None:
    cases = [("\\boxed{\\frac{1}{2}}", "0.5", True), ("#### 18", "#### 18", True), ("\\boxed{5}", "6", False)] * 4
    with ThreadPoolExecutor(2) as ex:
        grades = list(ex.map(lambda c: grade_math(c[0], c[1]), cases))
    assert [g.correct for g in grades] == [c[2] for c in cases]
    # isolate=False off the main thread quietly uses the workers instead of signals
    out: list[MathGrade] = []
    t = threading.Thread(target=lambda: out.append(grade_math("\\boxed{1/2}", "0.5", isolate=False)))
    t.start()
    t.join(60)
    assert out and out[0].correct


def test_stuck_worker_is_killed_and_replaced() -> None:
    """A worker stuck in C code ignores its own timer; the caller must kill it."""
    assert grade_math("\\boxed{1}", "1").correct  # at least one idle worker exists
    pool = _pool()
    with pool._lock:
        others, pool._idle = pool._idle, []
    victim = others.pop()
    pool._idle.append(victim)
    os.kill(victim.proc.pid, signal.SIGSTOP)  # as unresponsive as a long C call
    try:
        grade = grade_math("\\boxed{1}", "1", timeout_s=0.2)
        assert grade.timed_out and grade.error and "killed" in grade.error
        assert grade.correct and grade.method == "string"  # the strings still agree
        assert victim.proc.poll() is not None
        fresh = grade_math("\\boxed{1/2}", "0.5")  # a new worker takes over
        assert fresh.correct and fresh.method == "math_verify" and not fresh.timed_out
    finally:
        if victim.proc.poll() is None:
            os.kill(victim.proc.pid, signal.SIGCONT)
        with pool._lock:
            pool._idle.extend(others)
