"""Grade a response's final answer against a gold answer: math-verify, then string equality.

``grade_math`` extracts the prediction's answer (``extract_final_answer``) and the gold's
(a bare answer, a ``#### n`` GSM8K solution or a ``\\boxed{}`` MATH solution), asks
math-verify whether they are equivalent (symbolic and numeric: ``0.5`` = ``\\frac12`` =
``1/2``, intervals, sets, tuples in order) and falls back to ``normalize_answer`` string
equality when math-verify cannot parse one side or times out. If math-verify says no but
the normalised strings agree, the strings win: they only drop presentation, and sympy
misreads some text answers.

Timeouts (measured on the 2-core dev machine; see ``_symbolic`` for the mechanics):
math-verify's own timeout is ``signal.alarm``, which raises off the main thread (and with
its timeouts off, ``2^{10^{10}}`` ran for over 30 s in a thread), and no signal can
interrupt a long C-level computation. So by default the symbolic check runs in a small
pool of long-lived worker processes (at most one per CPU, started lazily, ~1-1.5 s each,
once): each guards its own main thread with a sub-second timer, and the caller kills a
worker that has still not answered ``timeout_s + 1`` s later. A trivial check costs the
same ~0.65 ms through the pipe as in-process (math-verify itself takes 1-100 ms), it
works from any thread, grading threads run in parallel, and a pathological answer can
neither hang nor exhaust the caller. ``isolate=False`` grades in-process instead (main
thread only; other threads still use the workers), for one-off calls where starting a
worker is not worth it.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from archon.verifiers import _symbolic
from archon.verifiers.answers import extract_final_answer, find_boxed, normalize_answer

__all__ = ["GRADER_VERSION", "MathGrade", "gold_answer", "grade_math", "shutdown_workers"]


def _dist_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - math-verify is a hard dependency
        return "missing"


# Bump the first part whenever extraction, normalisation or the decision rule changes, so
# stored grades from another grader are not compared with new ones.
GRADER_VERSION = (
    f"archon-math-1+math-verify-{_dist_version('math-verify')}"
    f"+latex2sympy2_extended-{_dist_version('latex2sympy2_extended')}"
)

_GRACE_S = 1.0  # how long past timeout_s a worker may take before it is killed
_START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class MathGrade:
    """The verdict and what it was based on.

    ``method``: "math_verify" when math-verify decided; "string" when normalised string
    equality did (a side did not parse, math-verify timed out, or only the strings agree).
    """

    correct: bool
    extracted: str | None
    normalized_pred: str | None
    normalized_gold: str
    method: Literal["math_verify", "string"]
    timed_out: bool = False
    error: str | None = None


def gold_answer(gold: str) -> str:
    """The answer part of a gold label: after GSM8K's last ``####``, else the last
    ``\\boxed{}`` (a MATH solution), else the whole label."""
    if "####" in gold:
        return gold.rsplit("####", 1)[1].strip()
    boxed = find_boxed(gold)
    if boxed:
        return boxed[-1]
    return gold.strip()


def grade_math(prediction_text: str, gold: str, timeout_s: float = 5.0, *, isolate: bool = True) -> MathGrade:
    """Is the final answer in ``prediction_text`` equivalent to ``gold``?

    A response with no extractable answer is handed whole to math-verify, which looks for
    the last expression in it; its ``extracted`` stays None. Thread-safe.
    """
    extracted = extract_final_answer(prediction_text)
    gold_ans = gold_answer(gold)
    norm_gold = normalize_answer(gold_ans)
    norm_pred = normalize_answer(extracted) if extracted is not None else None
    string_eq = norm_pred is not None and norm_pred == norm_gold and norm_gold != ""

    pred_src = extracted if extracted is not None else prediction_text
    if isolate or not _symbolic.can_use_signals():
        out = _pool().check(pred_src, gold_ans, extracted is not None, timeout_s)
    else:
        out = _symbolic.check(pred_src, gold_ans, extracted is not None, timeout_s)
    result, timed_out, error = out["result"], bool(out["timed_out"]), out["error"]

    if result is True:
        return MathGrade(True, extracted, norm_pred, norm_gold, "math_verify", timed_out, error)
    if result is False and not string_eq:
        return MathGrade(False, extracted, norm_pred, norm_gold, "math_verify", timed_out, error)
    return MathGrade(string_eq, extracted, norm_pred, norm_gold, "string", timed_out, error)


# --- worker processes ----------------------------------------------------------------------


class _WorkerLost(Exception):
    """The worker exited or sent garbage; it is discarded and the check counts as failed."""


class _Worker:
    """One ``python _symbolic.py`` process speaking JSON lines over its stdin/stdout."""

    def __init__(self) -> None:
        cmd = [sys.executable]
        if sys.version_info >= (3, 11):
            cmd.append("-P")  # keep verifiers/ off sys.path: the worker imports only math-verify
        cmd.append(str(Path(_symbolic.__file__)))
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,  # a Ctrl-C in the terminal is the parent's to handle
        )
        self._buf = b""
        try:
            ready = self._read_line(_START_TIMEOUT_S)
        except (TimeoutError, _WorkerLost) as e:
            self.kill()
            raise RuntimeError(f"the math grading worker did not start ({e}); is math-verify installed?") from e
        if not ready.get("ready"):
            self.kill()
            raise RuntimeError(f"the math grading worker sent {ready!r} instead of ready")

    def _read_line(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply in {timeout_s:.1f} s")
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                raise _WorkerLost(f"worker exited (code {self.proc.poll()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            reply: dict[str, Any] = json.loads(line)
        except ValueError as e:
            raise _WorkerLost(f"bad reply {line[:200]!r}") from e
        return reply

    def request(self, req: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as e:
            raise _WorkerLost(f"worker gone ({e})") from e
        return self._read_line(timeout_s)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                with contextlib.suppress(OSError):
                    f.close()

    def close(self) -> None:
        """Ask politely (EOF on stdin), then kill."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=2)
        self.kill()


class _WorkerPool:
    """At most ``size`` workers, started on demand, each serving one request at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pid = os.getpid()
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []

    def check(self, pred: str, gold: str, pred_is_answer: bool, timeout_s: float) -> dict[str, Any]:
        req = {"pred": pred, "gold": gold, "pred_is_answer": pred_is_answer, "timeout_s": timeout_s}
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker()
            try:
                out = worker.request(req, timeout_s + _GRACE_S)
            except TimeoutError:
                worker.kill()  # stuck in C code past its own timer: only a kill stops it
                return {"result": None, "timed_out": True, "error": "worker killed after the timeout"}
            except _WorkerLost as e:
                worker.kill()
                return {"result": None, "timed_out": False, "error": str(e)}
            except BaseException:  # e.g. KeyboardInterrupt: a reply may still be in flight
                worker.kill()
                raise
            with self._lock:
                self._idle.append(worker)
            return out

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()


_pool_lock = threading.Lock()
_the_pool: _WorkerPool | None = None


def _pool() -> _WorkerPool:
    """This process's pool (a forked child starts its own rather than share pipes)."""
    global _the_pool
    with _pool_lock:
        if _the_pool is None or _the_pool.pid != os.getpid():
            _the_pool = _WorkerPool(max(1, min(os.cpu_count() or 1, 8)))
        return _the_pool


def shutdown_workers() -> None:
    """Stop the idle grading workers (also done at exit); the next grade starts new ones."""
    global _the_pool
    with _pool_lock:
        pool, _the_pool = _the_pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.close()


atexit.register(shutdown_workers)
