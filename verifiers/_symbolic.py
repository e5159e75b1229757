"""math-verify equivalence under a deadline, and the grading worker process that runs it.

math-verify's own timeout is ``signal.alarm``: whole seconds, main thread only, and it
cancels any alarm the caller had set. We call it with its timeouts off and guard
parse+verify ourselves: ``run_with_deadline`` arms ``ITIMER_REAL`` (sub-second, restores
the caller's timer and handler) and raises a ``BaseException`` so math-verify's and
sympy's ``except Exception`` blocks cannot swallow it; the timer re-fires every 50 ms in
case a bare ``except:`` does.

A signal only interrupts Python bytecode, not a long C call (a huge integer power), and it
cannot be used off the main thread at all. ``archon.verifiers.math_grader`` therefore
runs this module as a script in worker processes that are killed when they overrun.
This file imports only the standard library and math-verify, so the worker starts without
importing archon.

Protocol (one JSON object per line): the worker prints ``{"ready": true}`` once warm,
then answers each ``{"pred", "gold", "pred_is_answer", "timeout_s"}`` request with
``{"result": true|false|null, "timed_out": bool, "error": str|null}``; ``null`` means one
side did not parse.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_REFIRE_S = 0.05
_WORKER_MEMORY_MB = 2048


class DeadlineExceeded(BaseException):
    """Raised from SIGALRM; a BaseException so ``except Exception`` cannot swallow it."""


class _QuietTimeoutWarning(logging.Filter):
    """Drops math-verify's one-off "Timeout is disabled" warning: we guard it ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


_filter_installed = False


def _install_log_filter() -> None:
    global _filter_installed
    if not _filter_installed:
        for name in ("math_verify.parser", "math_verify.grader"):
            logging.getLogger(name).addFilter(_QuietTimeoutWarning())
        _filter_installed = True


def can_use_signals() -> bool:
    """True where ``run_with_deadline`` works: the main thread of a POSIX process."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


def run_with_deadline(fn: Callable[[], T], timeout_s: float) -> T:
    """``fn()``, or ``DeadlineExceeded`` once ``timeout_s`` has passed (main thread only)."""
    if not can_use_signals():
        raise RuntimeError("run_with_deadline needs the main thread of a POSIX process")
    armed = True

    def on_alarm(signum: int, frame: object) -> None:
        if armed:
            raise DeadlineExceeded

    old_handler = signal.signal(signal.SIGALRM, on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, max(timeout_s, 1e-3), _REFIRE_S)
    started = time.monotonic()
    try:
        return fn()
    finally:
        # The alarm may fire inside this block; retry until disarmed so cleanup always runs.
        while True:
            try:
                armed = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                break
            except DeadlineExceeded:
                continue
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:  # give the caller's timer back, less the time we used
            left = max(old_delay - (time.monotonic() - started), 1e-3)
            signal.setitimer(signal.ITIMER_REAL, left, old_interval)


def _as_latex(answer: str) -> str:
    """An extracted answer as a math-mode string math-verify reads as one expression."""
    return "$" + answer.strip().strip("$").strip() + "$"


def symbolic_equal(pred: str, gold: str, *, pred_is_answer: bool = True) -> bool | None:
    """math-verify's verdict, or None when gold or prediction does not parse. No timeout.

    ``pred_is_answer``: ``pred`` is an extracted answer (read as one expression); if False it
    is a whole response and math-verify finds the answer in it.
    """
    from math_verify import parse, verify

    _install_log_filter()
    gold_parsed = parse(_as_latex(gold), parsing_timeout=None)
    if not gold_parsed:
        return None
    pred_parsed = parse(_as_latex(pred) if pred_is_answer else pred, parsing_timeout=None)
    if not pred_parsed:
        return None
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def check(pred: str, gold: str, pred_is_answer: bool, timeout_s: float) -> dict[str, Any]:
    """One request: ``{"result", "timed_out", "error"}``, guarded by ``run_with_deadline``."""
    try:
        result = run_with_deadline(lambda: symbolic_equal(pred, gold, pred_is_answer=pred_is_answer), timeout_s)
        return {"result": result, "timed_out": False, "error": None}
    except DeadlineExceeded:
        return {"result": None, "timed_out": True, "error": None}
    except MemoryError:
        return {"result": None, "timed_out": False, "error": "MemoryError"}
    except Exception as e:  # math-verify with raise_on_error=False rarely raises; never kill the worker
        return {"result": None, "timed_out": False, "error": f"{type(e).__name__}: {e}"[:500]}


def _limit_memory(mb: int) -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        want = mb * 1024 * 1024
        if hard != resource.RLIM_INFINITY:
            want = min(want, hard)
        if soft == resource.RLIM_INFINITY or soft > want:
            resource.setrlimit(resource.RLIMIT_AS, (want, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - best effort
        pass


def serve() -> None:
    """The worker's main loop: requests on stdin, replies on the original stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # anything else printing to stdout must not corrupt the protocol
    sys.stdout = sys.stderr
    _limit_memory(_WORKER_MEMORY_MB)
    check("1", "1", True, 30.0)  # import math-verify and sympy before announcing readiness
    reply.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            req = json.loads(line)
            out = check(str(req["pred"]), str(req["gold"]), bool(req["pred_is_answer"]), float(req["timeout_s"]))
        except (ValueError, KeyError, TypeError) as e:
            out = {"result": None, "timed_out": False, "error": f"bad request: {e}"}
        reply.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    serve()
