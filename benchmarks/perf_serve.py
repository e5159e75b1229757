"""`archon serve` under concurrent clients vs the same questions run one by one.

32 clients each send one question at once to ``archon serve`` (a subprocess on
loopback), against the same 32 questions as 32 sequential ``Pipeline.run`` calls in this
process; same pipeline (sample 4 -> critique -> rank -> fuse), same embedded model, no
call cache, a warm-up call on each side first so that model loading is not timed.
Reports wall time for each and their ratio, backend requests in all and per level
(the server's count comes from its ``/debug/metrics`` router log), and the prompts each
backend call carried on average (several clients' prompts share a call).

    python -m archon.benchmarks.perf_serve [--clients 32] [--max-tokens 8]

Writes benchmarks/results/serve.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from archon.pipeline import Pipeline

RESULTS = Path(__file__).parent / "results"
LEVELS = 4
CONFIG = """
name: scaled
defaults: {{model: embedded, temperature: 0.7, max_tokens: {max_tokens}}}
nodes:
  - id: sample
    technique: generate
    samples: 4
  - id: critique
    technique: critique
  - id: rank
    technique: rank
    top_k: 2
  - id: fuse
    technique: fuse
"""


def questions(count: int) -> list[str]:
    return [f"What is {11 + 3 * i} + {7 + 5 * i}?" for i in range(count)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def archon_serve(config: Path, port: int):  # type: ignore[no-untyped-def]
    """`archon serve` in its own process group, stopped by PID."""
    log = tempfile.NamedTemporaryFile(prefix="archon-serve-bench-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "archon", "serve", str(config), "--port", str(port),
                             "--no-cache", "--log-level", "warning"], stdout=log, stderr=log,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"archon serve did not start:\n{Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.25)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.unlink(log.name)


def _ask(root: str, question: str) -> dict:
    r = httpx.post(f"{root}/v1/chat/completions", timeout=3600,
                   json={"model": "scaled", "messages": [{"role": "user", "content": question}]})
    r.raise_for_status()
    return r.json()


def served(config: Path, qs: list[str]) -> dict:
    with archon_serve(config, _free_port()) as root:
        _ask(root, "What is 1 + 1?")  # warm-up: loads the model
        before = httpx.get(f"{root}/debug/metrics", timeout=30).json()
        start = time.perf_counter()
        with ThreadPoolExecutor(len(qs)) as pool:
            answers = list(pool.map(lambda q: _ask(root, q), qs))
        wall = time.perf_counter() - start
        after = httpx.get(f"{root}/debug/metrics", timeout=30).json()
    requests = after["backend"]["requests"] - before["backend"]["requests"]
    return {
        "wall_s": round(wall, 2),
        "backend_requests": requests,
        "backend_requests_per_level": round(requests / LEVELS, 2),
        "prompts_per_backend_call": round(
            (sum(m["prompts"] for m in after["backend"]["by_model"].values())
             - sum(m["prompts"] for m in before["backend"]["by_model"].values())) / max(1, requests), 2),
        "completion_tokens": sum(a["usage"]["completion_tokens"] for a in answers),
        "answered": sum(1 for a in answers if a["choices"]),
    }


def sequential(config: Path, qs: list[str]) -> dict:
    with Pipeline.from_yaml(config, cache=False) as pipe:
        pipe.run("What is 1 + 1?")  # warm-up: loads the model
        calls_before = len(pipe.router.calls)
        start = time.perf_counter()
        results = [pipe.run(q) for q in qs]
        wall = time.perf_counter() - start
        requests = len(pipe.router.calls) - calls_before
    return {
        "wall_s": round(wall, 2),
        "backend_requests": requests,
        "backend_requests_per_level": round(requests / LEVELS, 2),
        "completion_tokens": sum(int(r.usage["completion_tokens"]) for r in results),
        "answered": sum(1 for r in results if r.error is None),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args(argv)
    qs = questions(args.clients)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "scaled.yaml"
        config.write_text(CONFIG.format(max_tokens=args.max_tokens))
        server = served(config, qs)
        seq = sequential(config, qs)
    report = {
        "pipeline": "generate(samples=4) -> critique -> rank(top_k=2) -> fuse, embedded Gemma 3 270M",
        "clients": args.clients, "max_tokens": args.max_tokens, "levels": LEVELS,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "served_concurrently": server,
        "sequential_pipeline_run": seq,
        "wall_time_ratio_sequential_over_served": round(seq["wall_s"] / server["wall_s"], 2),
        "backend_request_ratio_sequential_over_served": round(seq["backend_requests"] / server["backend_requests"], 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "serve.json").write_text(json.dumps(report, indent=2) + "\n")
    md = "\n".join([
        f"# archon serve: {args.clients} concurrent clients vs {args.clients} sequential Pipeline.run",
        "", f"Pipeline: {report['pipeline']}; max_tokens {args.max_tokens}; no call cache; {report['machine']}.", "",
        "| | wall s | backend requests | per level | completion tokens |",
        "|---|---|---|---|---|",
        f"| archon serve, {args.clients} concurrent clients | {server['wall_s']} | {server['backend_requests']} | "
        f"{server['backend_requests_per_level']} | {server['completion_tokens']} |",
        f"| {args.clients} sequential `Pipeline.run` | {seq['wall_s']} | {seq['backend_requests']} | "
        f"{seq['backend_requests_per_level']} | {seq['completion_tokens']} |",
        "", f"Wall-time ratio (sequential / served): **{report['wall_time_ratio_sequential_over_served']}x**; "
        f"backend requests: **{report['backend_request_ratio_sequential_over_served']}x** fewer. "
        f"Prompts per backend call through the server: {server['prompts_per_backend_call']}.", ""])
    (RESULTS / "serve.md").write_text(md)
    print(md)
    return report


if __name__ == "__main__":
    main()
