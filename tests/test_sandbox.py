"""The code sandbox (limits, isolation, no network), unit-test runs and pass@k (no model)."""

from __future__ import annotations

import gzip
import json
import math
import socket
import subprocess
import sys
import tempfile
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
                        "PYTHONDONTWRITEBYTECODE", "PYTHONIOENCODING", "PYTHONPATH"}


def test_cwd_is_a_fresh_temp_dir_removed_afterwards(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    (outside / "keep.txt").write_text("x")
    code = (
        "import os\nopen('note.txt', 'w').write('x')\n"
        f"os.symlink({str(outside)!r}, 'link')\n"  # cleanup must not follow it
        "os.mkdir('d')\nos.chmod('d', 0)\nprint(os.getcwd())"
    )
    res = run_python(code)
    cwd = Path(res.stdout.strip())
    assert res.ok and cwd.name.startswith("archon-sandbox-")
    assert cwd != Path.cwd() and not cwd.exists()
    assert (outside / "keep.txt").exists() and outside.stat().st_mode & 0o777 == 0o755
    again = run_python("import os\nprint(os.getcwd(), os.listdir('.'))")
    assert str(cwd) not in again.stdout and "note.txt" not in again.stdout


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
