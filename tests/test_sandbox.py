"""The code sandbox (limits, isolation, no network), unit-test runs and pass@k (no model)."""

from __future__ import annotations

import ast
import contextlib
import gzip
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from archon.verifiers import SandboxResult, pass_at_k, run_python, run_tests
from archon.verifiers.sandbox import MEMORY_EXIT_CODE

HUMANEVAL = Path("/work/shared/data/humaneval/HumanEval.jsonl.gz")


def test_normal_output_and_stdin() -> None:
    res = run_python("import sys\nprint('hello')\nprint(sys.stdin.read().upper(), file=sys.stderr)", stdin="abc")
    assert isinstance(res, SandboxResult)
    assert res.ok and res.returncode == 0 and not res.timed_out and not res.memory_exceeded
    assert res.stdout == "hello\n" and res.stderr == "ABC\n"
    assert 0 < res.duration_s < 5


def test_exit_code_and_exception() -> None:
    assert run_python("import sys; sys.exit(3)").returncode == 3
    assert run_python("exit(4)").returncode == 4  # the site builtins exist despite -S
    res = run_python("raise ValueError('boom')")
    assert res.returncode == 1 and "ValueError: boom" in res.stderr and not res.ok


def test_timeout_kills_infinite_loop_quickly() -> None:
    res = run_python("print('started')\nwhile True:\n    pass", timeout_s=1.0)
    assert res.timed_out and not res.ok
    assert res.duration_s < 3.0
    assert res.stdout == "started\n"  # output before the kill is kept (unbuffered)


def test_timeout_kills_sleeping_program() -> None:
    res = run_python("import time\ntime.sleep(60)", timeout_s=0.5)
    assert res.timed_out and res.duration_s < 3.0


def test_memory_limit_stops_huge_allocation() -> None:
    res = run_python("x = bytearray(2 * 1024 ** 3)\nprint('allocated')", memory_mb=256)
    assert res.memory_exceeded and res.returncode == MEMORY_EXIT_CODE
    assert "allocated" not in res.stdout and "MemoryError" in res.stderr


def test_file_size_limit() -> None:
    res = run_python("open('big.bin', 'wb').write(b'x' * (4 * 1024 * 1024))\nprint('wrote')", files_mb=1)
    assert res.returncode != 0 and "File too large" in res.stderr and "wrote" not in res.stdout


def test_output_is_capped() -> None:
    res = run_python("while True:\n    print('x' * 1000)", timeout_s=5.0, max_output_bytes=1000, files_mb=1)
    assert res.output_truncated and len(res.stdout) == 1000
    assert not res.timed_out  # the 1 MiB file limit ended the flood, not the clock


def test_environment_has_no_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("HF_TOKEN", "hf_should_not_leak")
    res = run_python("import os, json\nprint(json.dumps(dict(os.environ)))")
    env = json.loads(res.stdout)
    assert "OPENAI_API_KEY" not in env and "HF_TOKEN" not in env
    assert "should_not_leak" not in res.stdout and "should-not-leak" not in res.stdout
    assert set(env) <= {"PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "PYTHONHASHSEED", "PYTHONUNBUFFERED",
                        "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONPATH", "PWD"}


def test_cwd_is_a_private_tmpfs_gone_afterwards(tmp_path: Path) -> None:
    code = "import os\nopen('note.txt', 'w').write('x')\nos.mkdir('d')\nos.chmod('d', 0)\nprint(os.getcwd())"
    res = run_python(code)
    assert res.ok, res.stderr
    assert res.stdout.strip() == "/tmp"  # the sandbox's own /tmp, not the host's
    again = run_python("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert "note.txt" not in again.stdout and again.stdout.split()[1] == "['main.py']"


def test_network_connect_is_refused() -> None:
    with socket.socket() as server:  # a real listener, so only the sandbox can refuse
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        res = run_python(f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\nprint('connected')")
    assert res.returncode != 0 and "connected" not in res.stdout
    assert "PermissionError" in res.stderr and "socket.connect" in res.stderr


@pytest.mark.parametrize(
    "code",
    [
        "import socket\nsocket.getaddrinfo('example.com', 80)",
        "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)",
        "import subprocess\nsubprocess.run(['curl', 'http://example.com'])",
        "import os\nos.system('echo escaped')",
        "import os\nos.fork()",
    ],
)
def test_network_and_process_escapes_are_blocked(code: str) -> None:
    res = run_python(code)
    assert res.returncode != 0 and "sandbox:" in res.stderr
    assert "escaped" not in res.stdout


def test_signals_to_other_processes_are_blocked() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        res = run_python(f"import os, signal\nos.kill({victim.pid}, signal.SIGKILL)")
        assert res.returncode != 0 and "sandbox:" in res.stderr
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


def test_threads_and_stdlib_still_work() -> None:
    code = (
        "import asyncio, threading, pickle\n"
        "class A:\n    pass\n"
        "t = [threading.Thread(target=lambda: None) for _ in range(8)]\n"
        "[x.start() for x in t]; [x.join() for x in t]\n"
        "async def f():\n    return 3\n"
        "print(asyncio.run(f()), len(pickle.dumps(A())) > 0)"
    )
    res = run_python(code)
    assert res.ok, res.stderr
    assert res.stdout == "3 True\n"


def test_run_tests_humaneval_style() -> None:
    program = "def add(a, b):\n    return a + b\n"
    tests = "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"
    ok = run_tests(program, tests, "add", timeout_s=10)
    assert ok.passed and ok.error is None and not ok.timed_out
    bad = run_tests("def add(a, b):\n    return a - b\n", tests, "add", timeout_s=10)
    assert not bad.passed and bad.error == "AssertionError"
    slow = run_tests("def add(a, b):\n    while True:\n        pass\n", tests, "add", timeout_s=1)
    assert not slow.passed and slow.timed_out and slow.error == "timeout"
    missing = run_tests("", tests, "add", timeout_s=10)
    assert not missing.passed and "NameError" in (missing.error or "")


def test_run_tests_without_entry_point() -> None:
    assert run_tests("def sq(x):\n    return x * x\n", "assert sq(3) == 9\n", None).passed
    assert not run_tests("def sq(x):\n    return x + x\n", "assert sq(3) == 9\n", None).passed


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [(10, 1, 1, 0.1), (10, 0, 5, 0.0), (10, 8, 3, 1.0), (5, 5, 1, 1.0), (2, 1, 1, 0.5), (4, 2, 2, 1 - 1 / 6)],
)
def test_pass_at_k_known_values(n: int, c: int, k: int, expected: float) -> None:
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_combinatorial_definition() -> None:
    for n, c, k in [(200, 13, 10), (100, 50, 1), (20, 3, 7), (1000, 1, 100)]:
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-9)
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the plain success rate


@pytest.mark.parametrize(("n", "c", "k"), [(10, 11, 1), (10, -1, 1), (10, 1, 0), (10, 1, 11)])
def test_pass_at_k_rejects_invalid(n: int, c: int, k: int) -> None:
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def _humaneval() -> list[dict[str, str]]:
    if not HUMANEVAL.exists():
        pytest.skip(f"HumanEval data not found at {HUMANEVAL} (shared data, not part of the repo)")
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _run_all(programs: list[tuple[str, str]], problems: dict[str, dict[str, str]]) -> dict[str, bool]:
    def one(item: tuple[str, str]) -> tuple[str, bool]:
        task_id, program = item
        p = problems[task_id]
        return task_id, run_tests(program, p["test"], p["entry_point"], timeout_s=15).passed

    with ThreadPoolExecutor(2) as ex:
        return dict(ex.map(one, programs))


def test_humaneval_canonical_solutions_pass() -> None:
    problems = {p["task_id"]: p for p in _humaneval()}
    assert len(problems) == 164
    passed = _run_all([(t, p["prompt"] + p["canonical_solution"]) for t, p in problems.items()], problems)
    assert [t for t, ok in passed.items() if not ok] == []


@pytest.mark.parametrize("body", ["pass", "bare prompt"])
def test_humaneval_empty_bodies_fail(body: str) -> None:
    problems = {p["task_id"]: p for p in _humaneval()}
    suffix = "    pass\n" if body == "pass" else ""
    passed = _run_all([(t, p["prompt"] + suffix) for t, p in problems.items()], problems)
    assert len(passed) == 164
    assert [t for t, ok in passed.items() if ok] == []


def test_no_sandbox_dirs_left_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert run_python("open('f', 'w').write('x')").ok
    assert run_python("while True:\n    pass", timeout_s=0.3).timed_out
    assert list(tmp_path.iterdir()) == []


# -- OS-level isolation: each probe escaped the process-level sandbox of before (issue 14) --

PROJECT = Path(__file__).resolve().parents[1]


def _comm_pids(name: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if (proc / "comm").read_text().strip() == name:
                    pids.append(int(proc.name))
    return pids


@pytest.mark.reliability
def test_parent_environment_is_unreadable_through_proc() -> None:
    # /proc/<pid>/environ shows a process's environment at start, so the secret must be
    # there from the start: a parent process launched with it runs the sandbox.
    code = (
        "import os, glob\n"
        "paths = ['/proc/%d/environ' % os.getppid(), *glob.glob('/proc/*/environ')]\n"
        "for p in paths:\n"
        "    try:\n        print(p, open(p, 'rb').read())\n"
        "    except OSError as e:\n        print(p, 'denied', e)\n"
    )
    parent = f"from archon.verifiers.sandbox import run_python\nr = run_python({code!r})\nprint(r.stdout, r.stderr)"
    env = {**os.environ, "ARCHON_PROBE_SECRET": "sk-probe-parent-secret"}
    res = subprocess.run([sys.executable, "-c", parent], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "environ" in res.stdout, res.stderr
    assert "sk-probe-parent-secret" not in res.stdout


@pytest.mark.reliability
def test_ctypes_fork_setsid_child_dies_with_the_run() -> None:
    name = f"probe{os.getpid() % 100000}"
    code = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "pid = libc.fork()\n"
        "if pid == 0:\n"
        "    libc.setsid()\n"
        f"    libc.prctl(15, ctypes.c_char_p({name.encode()!r}), 0, 0, 0)\n"
        "    for _ in range(300):\n        print('still here', flush=True)\n        time.sleep(0.1)\n"
        "    os._exit(0)\n"
        "print('parent done', pid > 0)\n"
    )
    res = run_python(code, timeout_s=5)
    try:
        assert "parent done True" in res.stdout  # the fork itself worked: the run must clean up
        time.sleep(0.5)
        assert _comm_pids(name) == []
    finally:
        for pid in _comm_pids(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.reliability
def test_ctypes_process_creation_is_capped() -> None:
    code = (
        "import ctypes, os, time\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "made = 0\n"
        "for _ in range(200):\n"
        "    pid = libc.fork()\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    if pid < 0:\n        break\n"
        "    made += 1\n"
        "print('forked', made)\n"
    )
    res = run_python(code, timeout_s=10, max_processes=16)
    assert res.stdout.startswith("forked"), res.stderr
    assert int(res.stdout.split()[1]) < 16


@pytest.mark.reliability
def test_ctypes_tcp_connection_to_the_host_fails() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        code = (
            "import ctypes, struct, socket\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "fd = libc.socket(2, 1, 0)\n"
            f"addr = struct.pack('!HH4s8x', 0, {port}, socket.inet_aton('127.0.0.1'))\n"
            "addr = struct.pack('=H', 2) + addr[2:]\n"
            "rc = libc.connect(fd, addr, len(addr))\n"
            "print('connect', rc, ctypes.get_errno())\n"
        )
        res = run_python(code)
        with pytest.raises(TimeoutError):
            server.accept()
    assert res.stdout.startswith("connect -1"), res.stdout + res.stderr


@pytest.mark.reliability
def test_ctypes_kill_cannot_reach_host_processes() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        code = (
            "import ctypes, os\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            f"print('victim', libc.kill({victim.pid}, 9))\n"
            f"print('caller', libc.kill({os.getpid()}, 0))\n"
        )
        res = run_python(code)
        assert "victim -1" in res.stdout and "caller -1" in res.stdout, res.stdout + res.stderr
        time.sleep(0.2)
        assert victim.poll() is None
    finally:
        victim.kill()
        victim.wait()


@pytest.mark.reliability
def test_writes_outside_the_private_tmp_fail(tmp_path: Path) -> None:
    name = f"archon-escaped-{os.getpid()}.txt"
    targets = [str(tmp_path / name), str(PROJECT / name), str(Path.home() / name), f"/{name}", f"/dev/shm/{name}"]
    code = (
        f"for p in {targets!r}:\n"
        "    try:\n        open(p, 'w').write('x')\n        print('WROTE', p)\n"
        "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
    )
    res = run_python(code)
    try:
        assert "WROTE" not in res.stdout and res.stdout.count("refused") == len(targets), res.stdout + res.stderr
        assert not any(Path(t).exists() for t in targets)
    finally:
        for t in targets:
            with contextlib.suppress(OSError):
                Path(t).unlink(missing_ok=True)


@pytest.mark.reliability
def test_total_disk_use_is_capped() -> None:
    code = (
        "written = 0\n"
        "try:\n"
        "    for i in range(20):\n"
        "        with open('f%d' % i, 'wb') as f:\n            f.write(b'x' * (1024 * 1024))\n"
        "        written += 1\n"
        "except OSError as e:\n    print('stopped', e.errno)\n"
        "print('files', written)\n"
    )
    res = run_python(code, files_mb=2, disk_mb=8)
    assert "files" in res.stdout, res.stderr
    assert int(res.stdout.split("files")[1].split()[0]) <= 8
    assert "stopped 28" in res.stdout  # ENOSPC: the tmpfs is full


@pytest.mark.reliability
def test_project_home_and_call_cache_are_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from archon.verifiers import sandbox

    cache = tmp_path / "calls.sqlite"
    cache.write_text("cached answers")
    monkeypatch.setenv("ARCHON_CACHE_DIR", str(tmp_path))
    targets = [str(PROJECT / "pyproject.toml"), str(cache), str(Path.home() / ".bashrc")]
    code = (
        "import os\n"
        f"for p in {targets!r}:\n"
        "    try:\n        print('READ', p, len(open(p).read()))\n"
        "    except OSError as e:\n        print('refused', p, type(e).__name__)\n"
        f"for d in [{str(PROJECT)!r}, {str(Path.home())!r}, {str(tmp_path)!r}]:\n"
        "    try:\n        print('LISTED', d, os.listdir(d))\n"
        "    except OSError as e:\n        print('refused', d, type(e).__name__)\n"
    )
    res = run_python(code)
    assert "READ" not in res.stdout, res.stdout + res.stderr
    # A listing may only show the way to what is mounted on purpose (the interpreter, its packages).
    mounted = [os.path.realpath(sys.base_prefix), *sandbox._site_packages().split(os.pathsep)]
    for line in res.stdout.splitlines():
        if line.startswith("LISTED"):
            _, d, listing = line.split(" ", 2)
            allowed = {Path(m).relative_to(d).parts[0] for m in mounted if m.startswith(d + os.sep)}
            assert set(ast.literal_eval(listing)) <= allowed, line


@pytest.mark.reliability
def test_missing_bubblewrap_refuses_unless_opted_in(monkeypatch: pytest.MonkeyPatch) -> None:
    from archon.verifiers import sandbox

    monkeypatch.setattr(sandbox, "_PATH", "/nonexistent")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(sandbox.UNSAFE_ENV, raising=False)
    with pytest.raises(sandbox.SandboxUnavailable, match=r"bwrap.*not installed.*ARCHON_UNSAFE_NO_SANDBOX=1"):
        run_python("print('ran')")
    monkeypatch.setenv(sandbox.UNSAFE_ENV, "1")
    res = run_python("print('ran')")
    assert res.ok and res.stdout == "ran\n"
