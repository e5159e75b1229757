"""Run untrusted Python (model-written code, unit tests) isolated at the OS level.

Generated code is hostile by assumption. Each run executes inside bubblewrap (``bwrap``,
Debian package ``bubblewrap``) with:

* **namespaces**: its own PID, network, mount, IPC and UTS namespaces. A caller that is not
  root also gets its own user namespace (the code runs as uid/gid 65534 inside it); a root
  caller runs bwrap privileged and the trusted bootstrap drops to host uid/gid 65534
  (``nobody``, no supplementary groups, no capabilities) before any user code runs, so
  the code is never root on the host.
* **filesystem**: an empty read-only root with only ``/usr`` (and the ``/bin``, ``/lib``...
  links), the dynamic-linker files of ``/etc``, the Python installation and its
  site-packages, all read-only; a fresh ``/proc`` for the new PID namespace and a minimal
  ``/dev``. The project directory, the home directory, the call cache and the rest of the
  host are not there. The only writable place is ``/tmp`` (cwd, ``HOME``, ``TMPDIR``): a
  private tmpfs capped at ``disk_mb`` in total, gone when the run ends.
* **limits** (set by a trusted bootstrap before the user code): processes (``RLIMIT_NPROC``,
  ``max_processes``), address space per process (``memory_mb``), CPU seconds, size of any
  file (``files_mb``; stdout/stderr are files too, so a print loop cannot fill the parent's
  memory), open files, no core dumps; and the wall clock (``timeout_s``).
* **lifetime**: the whole process tree dies at the end of the run, success or not: bwrap's
  init is PID 1 of the namespace (``--die-with-parent``), and when it dies the kernel
  kills every process in it, including ``setsid()``-ed or double-forked ones.
* **environment**: built from scratch (no API keys or tokens). ``/proc/<pid>/environ`` of
  anything outside is unreachable (other PID namespace).
* **network**: none (only a down loopback in the new network namespace): no TCP/UDP to the
  host or the internet, no Unix sockets of the host (they are not in the filesystem view).
* **signals**: no host process is visible, so none can be signalled; PID 1 ignores them.

An audit hook (``sys.addaudithook``) additionally refuses Python-level fork/exec/spawn,
sockets and signals to others, so ordinary code gets a clear ``PermissionError`` rather
than an obscure OS failure; it is a courtesy, not the boundary (``ctypes`` bypasses it).

**Not contained**: total memory is only bounded by ``max_processes × memory_mb`` (no
cgroup); CPU use of up to ``max_processes`` processes until the wall timeout; reading the
world-readable files that are mounted (system libraries, Python packages); kernel exploits
(the kernel is shared: this is not a VM). For a root caller the process cap counts every
process of host uid 65534, so parallel runs share it. Timing side channels are not closed.

If bwrap is missing or cannot create namespaces here, :func:`run_python` refuses to run
code (:class:`SandboxUnavailable`) unless the environment variable
``ARCHON_UNSAFE_NO_SANDBOX=1`` is set; then it runs the code with the process limits and
audit hook only (no namespaces) and logs a warning on every run.

The interpreter runs as ``python -S -P`` rather than ``-I``: ``-I`` implies ``-E``, which
would ignore the ``PYTHONHASHSEED=0`` (reproducible runs) and ``PYTHONPATH`` we set, and
the environment is ours entirely, so ``-E`` protects nothing. ``-S`` skips ``site``
(faster start-up, no ``.pth`` hooks); ``PYTHONPATH`` names the parent's site-packages
instead, so installed packages (numpy etc.) still import. ``-P`` keeps cwd off ``sys.path``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
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

from archon.errors import ArchonError

__all__ = ["SandboxResult", "SandboxUnavailable", "TestOutcome", "isolation_problem", "pass_at_k", "run_python",
           "run_tests"]

MEMORY_EXIT_CODE = 86  # the bootstrap exits with this when the user code hits MemoryError
_PATH = "/usr/local/bin:/usr/bin:/bin"
_KILL_GRACE_S = 5.0
_WORKDIR = "/tmp"  # inside the sandbox: the private, size-capped tmpfs
UNSAFE_ENV = "ARCHON_UNSAFE_NO_SANDBOX"  # "1": run code without OS isolation (explicit opt-in)
_log = logging.getLogger(__name__)

# Runs first in the child, as ``python -c``: drop to nobody (root callers), limits, audit
# hook, then the user's file. argv: drop uid (0/1), limits (AS bytes, CPU s, FSIZE bytes,
# NOFILE, NPROC), the MemoryError exit code, the user file.
_BOOTSTRAP = r"""
import sys, os, resource, builtins
if not hasattr(builtins, "exit"):  # normally added by site, which -S skips
    builtins.exit = builtins.quit = sys.exit
_drop, _as, _cpu, _fsize, _nofile, _nproc, _memory_exit, _path = sys.argv[1:9]
if _drop == "1":  # bwrap ran privileged (root caller): become nobody before any user code
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    if os.getuid() == 0 or os.geteuid() == 0:
        os._exit(70)
def _limit(res, value, slack=0):
    soft, hard = resource.getrlimit(res)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
        resource.setrlimit(res, (value, hard))
    else:
        resource.setrlimit(res, (value, value + slack))
_limit(resource.RLIMIT_AS, int(_as))
_limit(resource.RLIMIT_CPU, int(_cpu), 1)  # SIGXCPU, then SIGKILL a second later
_limit(resource.RLIMIT_FSIZE, int(_fsize))
_limit(resource.RLIMIT_NOFILE, int(_nofile))
_limit(resource.RLIMIT_CORE, 0)
if int(_nproc) > 0:
    _limit(resource.RLIMIT_NPROC, int(_nproc))
_BLOCKED = frozenset((
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo",
    "subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.posix_spawnp",
    "pty.spawn", "os.killpg",
))
def _audit(event, args, _blocked=_BLOCKED, _pid=os.getpid()):
    if event in _blocked or event.startswith(("os.exec", "os.spawn")):
        raise PermissionError("sandbox: " + event + " is not allowed")
    if event == "os.kill" and args[0] not in (0, _pid):
        raise PermissionError("sandbox: signals to other processes are not allowed")
sys.addaudithook(_audit)
del _limit, _as, _cpu, _fsize, _nofile, _nproc, _drop, _BLOCKED, _audit
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
    import traceback
    traceback.print_exc()
    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(int(_memory_exit))
"""


class SandboxUnavailable(ArchonError):
    """bubblewrap is missing or cannot isolate here, and the user did not opt out of isolation."""


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


def _allow_unsandboxed() -> bool:
    return os.environ.get(UNSAFE_ENV, "").strip().lower() in ("1", "true", "yes")


def _root_mode() -> bool:
    """Root runs bwrap privileged and drops to nobody; others get a user namespace."""
    return os.geteuid() == 0


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


@functools.lru_cache(maxsize=1)
def _fs_args() -> tuple[str, ...]:
    """The read-only filesystem view: system files, the interpreter, its packages; nothing else."""
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives",
                "/etc/localtime"):
        args += ["--ro-bind-try", etc, etc]
    bound = ["/usr"]
    created: set[str] = set()
    prefix = os.path.realpath(sys.base_prefix)
    for path in [prefix, os.path.dirname(_interpreter()), *_site_packages().split(os.pathsep)]:
        if path and not any(path == b or path.startswith(b + os.sep) for b in bound):
            # bwrap copies the modes of the host's parents (/root is 0700): open them up, or
            # the dropped-to-nobody code could not reach the interpreter.
            parents = [p for p in _ancestors(path) if p not in created]
            for parent in parents:
                args += ["--perms", "0755", "--dir", parent]
            created.update(parents)
            args += ["--ro-bind-try", path, path]
            bound.append(path)
    return tuple(args)


def _ancestors(path: str) -> list[str]:
    """``/a/b/c`` -> ``["/a", "/a/b"]``."""
    parts = path.strip(os.sep).split(os.sep)[:-1]
    return [os.sep + os.sep.join(parts[: i + 1]) for i in range(len(parts))]


def _bwrap_cmd(bwrap: str, disk_mb: int, code_fd: int) -> list[str]:
    cmd = [bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net", "--unshare-ipc",
           "--unshare-uts", "--unshare-cgroup-try", "--hostname", "sandbox"]
    if _root_mode():
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        cmd += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    cmd += [*_fs_args(), "--proc", "/proc", "--dev", "/dev",
            "--perms", "1777", "--size", str(disk_mb * 1024 * 1024), "--tmpfs", _WORKDIR,
            "--perms", "0644", "--file", str(code_fd), f"{_WORKDIR}/main.py",
            "--remount-ro", "/", "--chdir", _WORKDIR]
    return cmd


@functools.lru_cache(maxsize=4)
def _probe(bwrap: str) -> str | None:
    """None if bwrap can build our sandbox here, else why not (its stderr)."""
    with tempfile.TemporaryFile() as code:
        code.write(b"pass\n")
        code.seek(0)
        cmd = [*_bwrap_cmd(bwrap, 1, code.fileno()), _interpreter(), "-S", "-c", "import os; os.getpid()"]
        try:
            res = subprocess.run(cmd, pass_fds=[code.fileno()], env=_minimal_env(_WORKDIR), capture_output=True,
                                 timeout=30, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
    if res.returncode != 0:
        return res.stderr.decode("utf-8", "replace").strip()[-500:] or f"exit code {res.returncode}"
    return None


def isolation_problem() -> str | None:
    """Why OS-level isolation is unavailable here, or None when it works."""
    bwrap = shutil.which("bwrap", path=os.environ.get("PATH", _PATH) + os.pathsep + _PATH)
    if bwrap is None:
        return "bubblewrap (`bwrap`) is not installed"
    problem = _probe(bwrap)
    return f"bubblewrap cannot create a sandbox here: {problem}" if problem else None


def _bwrap_or_refuse() -> str | None:
    """The bwrap path, or None when the user opted into running without isolation."""
    problem = isolation_problem()
    if problem is None:
        return shutil.which("bwrap", path=os.environ.get("PATH", _PATH) + os.pathsep + _PATH)
    if _allow_unsandboxed():
        _log.warning("SANDBOX DISABLED: %s; running model-written code with process limits only because "
                     "%s=1. It can read your files and use the network.", problem, UNSAFE_ENV)
        return None
    raise SandboxUnavailable(
        f"{problem}: refusing to run model-written code without OS-level isolation. Install it "
        f"(Debian/Ubuntu: `apt-get install bubblewrap`), or set {UNSAFE_ENV}=1 to run it anyway "
        "with process limits only (unsafe: the code can read your files and reach the network)."
    )


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
    disk_mb: int = 64,
    max_processes: int = 16,
) -> SandboxResult:
    """Run ``code`` as ``__main__`` in a fresh sandbox and wait at most ``timeout_s`` (wall).

    ``memory_mb`` bounds each process's address space, ``files_mb`` every file written
    (stdout and stderr included), ``disk_mb`` all files together, ``max_processes`` the
    processes alive at once. Safe to call from several threads at once. Raises
    :class:`SandboxUnavailable` when isolation is impossible and the user did not opt out.
    """
    bwrap = _bwrap_or_refuse()
    cpu_s = max(1, math.ceil(timeout_s)) + 1  # a backstop; the wall clock usually ends it first
    limits = [str(memory_mb * 1024 * 1024), str(cpu_s), str(files_mb * 1024 * 1024), str(max_open_files)]
    workdir = None if bwrap else tempfile.mkdtemp(prefix="archon-sandbox-")
    with (
        tempfile.TemporaryFile() as out_f,
        tempfile.TemporaryFile() as err_f,
        tempfile.TemporaryFile() as in_f,
        tempfile.TemporaryFile() as code_f,
    ):
        try:
            in_f.write(stdin.encode("utf-8"))
            in_f.seek(0)
            py = [_interpreter(), "-S"]
            if sys.version_info >= (3, 11):
                py.append("-P")
            if bwrap:
                code_f.write(code.encode("utf-8"))
                code_f.seek(0)
                cmd = [*_bwrap_cmd(bwrap, disk_mb, code_f.fileno()), *py, "-c", _BOOTSTRAP,
                       "1" if _root_mode() else "0", *limits, str(max_processes)]
                cwd, home, fds = "/", _WORKDIR, [code_f.fileno()]
            else:  # the user opted out of isolation: process limits and audit hook only
                assert workdir is not None
                with open(os.path.join(workdir, "main.py"), "w", encoding="utf-8") as f:
                    f.write(code)
                cmd = [*py, "-c", _BOOTSTRAP, "0", *limits, "0"]  # RLIMIT_NPROC would count all the user's
                cwd, home, fds = workdir, workdir, []
            cmd += [str(MEMORY_EXIT_CODE), "main.py"]
            started = time.monotonic()
            proc = subprocess.Popen(
                cmd, cwd=cwd, env=_minimal_env(home), stdin=in_f, stdout=out_f, stderr=err_f,
                close_fds=True, pass_fds=fds, start_new_session=True,
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
            if bwrap and 128 < rc < 128 + 65:  # bwrap's init reports a signal death as 128 + signal
                rc = -(rc - 128)
            timed_out = timed_out or rc == -signal.SIGXCPU  # the CPU-seconds backstop
            stdout, cut_out = _read_capped(out_f, max_output_bytes)
            stderr, cut_err = _read_capped(err_f, max_output_bytes)
        finally:
            if workdir:
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
