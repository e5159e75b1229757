"""Run untrusted Python (model-written code, unit tests) in a constrained subprocess.

Each run gets a fresh temporary directory as cwd, HOME and TMPDIR (removed afterwards), an
environment built from scratch (no inherited API keys or tokens), its own session and
process group (killed as a whole on timeout), and limits set by a trusted bootstrap before
the user code starts: address space (``RLIMIT_AS``), CPU seconds, size of any file written
(``RLIMIT_FSIZE``, which also caps stdout/stderr: they go to files, so a print loop
cannot fill the parent's memory), open files, no core dumps.

Limits are set in the child's bootstrap rather than a ``preexec_fn`` because
``preexec_fn`` is unsafe when the parent has threads (graders run in thread pools); the
bootstrap runs before any user code, and lowering limits needs no privilege.
``RLIMIT_NPROC`` is not used: it counts every process of the user (not just this run's)
and root ignores it. Instead an audit hook (``sys.addaudithook``, which cannot be removed)
refuses new processes (fork, exec, spawn, ``subprocess``, ``os.system``), signals to
other processes, and network use: ``socket.connect``/``bind``/``sendto``/``sendmsg`` and
name resolution, for every address family (so also local Unix sockets).

The interpreter runs as ``python -S -P`` rather than ``-I``: ``-I`` implies ``-E``, which
would ignore the ``PYTHONHASHSEED=0`` (reproducible runs) and ``PYTHONPATH`` we set, and
the environment is ours entirely, so ``-E`` protects nothing. ``-S`` skips ``site``,
whose ``.pth`` processing (editable installs) doubled start-up here (0.15 s -> 0.06 s);
``PYTHONPATH`` names the parent's site-packages instead, so installed packages (numpy
etc.) still import, except ones that need a ``.pth`` hook. The bootstrap restores the
``exit``/``quit`` builtins that ``site`` would add. ``-P`` keeps cwd off ``sys.path``.

This is a best-effort guard against accidents by model-written code, not a security
boundary: code can still reach the C level (``ctypes``) and do what the user running
archon can do. Run adversarial code inside a container or VM without network.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import select
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from typing import IO

__all__ = ["SandboxResult", "TestOutcome", "pass_at_k", "run_python", "run_tests"]

MEMORY_EXIT_CODE = 86  # the bootstrap exits with this when the user code hits MemoryError
_PATH = "/usr/local/bin:/usr/bin:/bin"
_KILL_GRACE_S = 5.0

# Runs first in the child, as ``python -c``: limits, audit hook, then the user's file.
# argv: limits (AS bytes, CPU s, FSIZE bytes, NOFILE), the MemoryError exit code, the user file.
_BOOTSTRAP = r"""
import sys, resource, builtins
if not hasattr(builtins, "exit"):  # normally added by site, which -S skips
    builtins.exit = builtins.quit = sys.exit
def _limit(res, value, slack=0):
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
        resource.setrlimit(res, (value, hard))
    else:
        resource.setrlimit(res, (value, value + slack))
_as, _cpu, _fsize, _nofile, _memory_exit, _path = sys.argv[1:7]
_limit(resource.RLIMIT_AS, int(_as))
_limit(resource.RLIMIT_CPU, int(_cpu), 1)  # SIGXCPU, then SIGKILL a second later
_limit(resource.RLIMIT_FSIZE, int(_fsize))
_limit(resource.RLIMIT_NOFILE, int(_nofile))
_limit(resource.RLIMIT_CORE, 0)
_BLOCKED = frozenset((
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
    "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp",
    "pty.spawn", "os.killpg",
))
def _audit(event, args, _blocked=_BLOCKED, _pid=__import__("os").getpid()):
    if event in _blocked or event.startswith(("os.exec", "os.spawn")):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "os.kill" and args[0] not in (0, _pid):
        raise PermissionError("sandbox: signals to other processes are not allowed")
sys.addaudithook(_audit)
del _limit, _as, _cpu, _fsize, _nofile, _BLOCKED, _audit
sys.argv = [_path]
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
import types
_main = types.ModuleType("__main__")
_main.__file__ = _path
sys.modules["__main__"] = _main  # the user code's globals are the real __main__ (pickle etc.)
try:
    exec(_code, _main.__dict__)
except MemoryError:
    import traceback, os
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(int(_memory_exit))
"""


@dataclass(frozen=True)
class SandboxResult:
    """What the program did. ``stdout``/``stderr`` are cut at ``max_output_bytes`` each."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    memory_exceeded: bool
    duration_s: float
    output_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


@dataclass(frozen=True)
class TestOutcome:
    """A unit-test run: ``passed`` iff the program plus its tests exited 0 in time."""

    __test__ = False  # not a pytest class, despite the name

    passed: bool
    timed_out: bool
    error: str | None
    result: SandboxResult


@functools.lru_cache(maxsize=1)
def _site_packages() -> str:
    """The parent's site-packages directories, for the child's ``PYTHONPATH``."""
    try:
        paths = site.getsitepackages()
    except AttributeError:  # pragma: no cover - some old virtualenvs lack it
        paths = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    return os.pathsep.join(dict.fromkeys(p for p in paths if os.path.isdir(p)))


def _minimal_env(home: str) -> dict[str, str]:
    env = {
        "PATH": _PATH,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        "TMPDIR": home,
        "PYTHONHASHSEED": "0",
        "PYTHONUNBUFFERED": "1",  # output written before a kill is kept
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONIOENCODING": "utf-8",
    }
    if _site_packages():
        env["PYTHONPATH"] = _site_packages()
    return env


def _read_capped(f: IO[bytes], limit: int) -> tuple[str, bool]:
    f.seek(0)
    data = f.read(limit + 1)
    return data[:limit].decode("utf-8", errors="replace"), len(data) > limit


def _wait_exit(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for ``proc`` to exit, at most ``timeout_s``; True if it did.

    ``Popen.wait(timeout)`` polls with sleeps of up to 50 ms, which doubled the latency of
    a short run; a pidfd (Linux >= 5.3) wakes us the moment the process exits.
    """
    pidfd = -1
    with contextlib.suppress(AttributeError, OSError):
        pidfd = os.pidfd_open(proc.pid)
    if pidfd < 0:
        try:
            proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        readable, _, _ = select.select([pidfd], [], [], max(timeout_s, 0.0))
    finally:
        os.close(pidfd)
    if readable:
        proc.wait()
        return True
    return proc.poll() is not None


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def run_python(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 64 * 1024,
    files_mb: int = 16,
    max_open_files: int = 64,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox and wait at most ``timeout_s`` (wall).

    ``memory_mb`` bounds the address space, ``files_mb`` every file written, stdout and
    stderr included. Safe to call from several threads at once.
    """
    cpu_s = max(1, math.ceil(timeout_s)) + 1  # a backstop; the wall clock usually ends it first
    workdir = tempfile.mkdtemp(prefix="archon-sandbox-")
    with (
        tempfile.TemporaryFile() as out_f,
        tempfile.TemporaryFile() as err_f,
        tempfile.TemporaryFile() as in_f,
    ):
        try:
            path = os.path.join(workdir, "main.py")
            with open(path, "w", encoding="utf-8") as f:
                f.write(code)
            in_f.write(stdin.encode("utf-8"))
            in_f.seek(0)
            cmd = [sys.executable, "-S"]
            if sys.version_info >= (3, 11):
                cmd.append("-P")
            cmd += [
                "-c", _BOOTSTRAP,
                str(memory_mb * 1024 * 1024), str(cpu_s), str(files_mb * 1024 * 1024), str(max_open_files),
                str(MEMORY_EXIT_CODE), "main.py",
            ]
            started = time.monotonic()
            proc = subprocess.Popen(
                cmd, cwd=workdir, env=_minimal_env(workdir), stdin=in_f, stdout=out_f, stderr=err_f,
                close_fds=True, start_new_session=True,
            )
            try:
                timed_out = not _wait_exit(proc, timeout_s)
            finally:
                # Also on success: nothing the program left behind may outlive the run.
                _kill_group(proc)
                with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored
                    proc.wait(timeout=_KILL_GRACE_S)
            duration = time.monotonic() - started
            rc = proc.returncode if proc.returncode is not None else -signal.SIGKILL
            timed_out = timed_out or rc == -signal.SIGXCPU  # the CPU-seconds backstop
            stdout, cut_out = _read_capped(out_f, max_output_bytes)
            stderr, cut_err = _read_capped(err_f, max_output_bytes)
        finally:
            _remove_tree(workdir)
    return SandboxResult(
        returncode=rc,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        memory_exceeded=rc == MEMORY_EXIT_CODE,
        duration_s=duration,
        output_truncated=cut_out or cut_err,
    )


def _remove_tree(workdir: str) -> None:
    """Delete the sandbox directory, undoing ``chmod`` tricks that would block a non-root user.

    Runs after the whole process group is dead, so nothing changes under us; symlinks are
    never followed (a link to ``/etc`` must not be chmod-ed).
    """
    with contextlib.suppress(OSError):
        os.chmod(workdir, 0o700)
    for root, dirs, _files in os.walk(workdir):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    shutil.rmtree(workdir, ignore_errors=True)


def _last_error(stderr: str) -> str | None:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return lines[-1].strip()[:500] if lines else None


def run_tests(program: str, test_code: str, entry_point: str | None = None, timeout_s: float = 10.0) -> TestOutcome:
    """Run ``program``, then ``test_code``, then ``check(entry_point)`` if given.

    The HumanEval layout: ``test_code`` defines ``check(candidate)`` with asserts. Without
    an ``entry_point`` the test code runs on its own (MBPP-style top-level asserts).
    """
    source = program.rstrip() + "\n\n\n" + test_code.rstrip() + "\n"
    if entry_point:
        source += f"\n\ncheck({entry_point})\n"
    res = run_python(source, timeout_s=timeout_s)
    passed = res.ok
    error = None
    if not passed:
        error = "timeout" if res.timed_out else _last_error(res.stderr) or f"exit code {res.returncode}"
    return TestOutcome(passed=passed, timed_out=res.timed_out, error=error, result=res)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` passed (Chen et al. 2021).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that
    large ``n`` neither overflows nor loses precision.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n (got n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod
