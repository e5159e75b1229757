"""The dataflow executor: no level barriers, continuous admission, per-query results.

Control flow runs on the scripted backend (tick-batched, like an in-process engine) and on a
scripted *server* with per-request delays (``DelayedBackend``: the async path). The real
engines are covered by the slow/server tests at the end: the embedded model through the tick
path and `archon run` killed with SIGKILL, and a llama.cpp server on loopback through the
streamed path.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from scripted import delayed_router, scripted_router

from archon import Budget, Defaults, Pipeline
from archon.backends.types import GenerationRequest
from archon.data import Query
from archon.engine.dataflow import DataflowExecutor
from archon.results_io import read_jsonl
from archon.techniques import Critique, Fuse, Generate, ParticleSteering, Rank, Select, Verify, Vote

REPO = Path(__file__).resolve().parent.parent


def six_nodes() -> tuple[dict, dict]:
    nodes = {"sample": Generate(samples=3), "critique": Critique(), "rank": Rank(top_k=2), "fuse": Fuse(samples=2),
             "verify": Verify(), "select": Select(method="first")}
    inputs = {"critique": ["sample"], "rank": ["critique"], "fuse": ["rank"], "verify": ["fuse"],
              "select": ["verify"]}
    return nodes, inputs


def comparable(results) -> list[dict]:  # type: ignore[no-untyped-def]
    """Results without what differs by construction: candidate ids (a global counter) and
    wall-clock times."""
    def strip(o):  # type: ignore[no-untyped-def]
        if isinstance(o, str):
            return re.sub(r"\bc\d+\b", "c#", o)  # notes name candidates by id
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k not in ("id", "inputs", "parents", "latency_s")}
        if isinstance(o, list):
            return [strip(x) for x in o]
        return o
    return [{"query": r.id, **strip(r.model_dump())} for r in results]


def run_both(make, queries, **kw):  # type: ignore[no-untyped-def]
    out = {}
    for scheduler in ("levels", "dataflow"):
        router, backends = make()
        nodes, inputs = six_nodes()
        pipe = Pipeline(nodes, inputs, router=router, scheduler=scheduler, **kw)
        out[scheduler] = (pipe.run_batch(queries), router, backends)
    return out


# -- same results as the level executor --------------------------------------------------------

def test_traces_and_usage_match_the_level_executor():
    out = run_both(scripted_router, [f"question {i}" for i in range(7)])
    levels, dataflow = comparable(out["levels"][0]), comparable(out["dataflow"][0])
    assert levels == dataflow
    assert [t["node"] for t in dataflow[0]["trace"]] == ["sample", "critique", "rank", "fuse", "verify", "select"]
    assert dataflow[0]["usage"]["calls"] == 1 + 3 + 1 + 1 + 2


def test_budget_cuts_match_the_level_executor():
    out = run_both(scripted_router, ["a question", "another question"], budget=Budget(max_tokens=900))
    levels, dataflow = comparable(out["levels"][0]), comparable(out["dataflow"][0])
    notes = [n for t in dataflow[0]["trace"] for n in t["notes"]]
    assert any("budget" in n for n in notes)  # the budget did bite
    assert levels == dataflow


def test_backend_calls_within_one_of_the_level_executor_on_an_instant_backend():
    out = run_both(scripted_router, [f"q{i}" for i in range(12)])
    assert abs(len(out["dataflow"][1].calls) - len(out["levels"][1].calls)) <= 1
    # particle steering: rounds depend on each query's particles, so ticks mix steps
    counts = {}
    for scheduler in ("levels", "dataflow"):
        router, _ = scripted_router(lambda r, i: f"step {i}\n\n" if i % 3 else "The answer is \\boxed{4}")
        pipe = Pipeline({"p": ParticleSteering(particles=4, scorer={"type": "logprob"}, max_steps=3, max_tokens=8),
                         "s": Select(method="first")}, {"s": ["p"]}, router=router, scheduler=scheduler)
        results = pipe.run_batch([f"q{i}" for i in range(5)])
        assert all(r.error is None for r in results)
        counts[scheduler] = len(router.calls)
    assert counts["dataflow"] <= counts["levels"] + 1


# -- no barriers --------------------------------------------------------------------------------

def test_a_fast_query_reaches_its_output_before_a_slow_one_finishes_its_first_level():
    def delay(r: GenerationRequest) -> float:
        text = r.messages[-1].content if r.messages else ""
        return 1.0 if "slow" in text and "Fuse" not in text else 0.02

    router, backend = delayed_router(delay=delay)
    pipe = Pipeline({"sample": Generate(samples=2), "fuse": Fuse()}, {"fuse": ["sample"]}, router=router)
    finished: dict[str, float] = {}
    results = pipe.run_batch([Query(id="slow", prompt="slow question"), Query(id="fast", prompt="fast question")],
                             on_result=lambda r: finished.setdefault(r.id, time.perf_counter()))
    assert [r.id for r in results] == ["slow", "fast"]  # returned in input order
    assert list(finished) == ["fast", "slow"]  # emitted in completion order
    slow_first_level = max(t for t, r in backend.done if "slow question" in r.messages[-1].content  # type: ignore[index]
                           and len(r.messages) == 1 and r.n == 2)
    assert finished["fast"] < slow_first_level
    assert results[1].latency_s < 0.5 < results[0].latency_s


def test_window_bounds_queries_in_flight_and_refills_as_they_finish():
    router, backends = scripted_router()
    nodes, inputs = six_nodes()
    pipe = Pipeline(nodes, inputs, router=router, window=3)
    pipe.run_batch([f"q{i}" for i in range(7)])
    batches = backends["embedded"].batches
    assert len(batches[0]) == 3  # the first tick: 3 queries' samples
    assert max(len(b) for b in batches) <= 3 * 3  # never more than 3 queries' critiques (3 each)


def test_rows_arrive_in_completion_order_in_the_eval_results_file(tmp_path):
    from archon.benchmarks.evaluate import evaluate
    from archon.benchmarks.registry import get_benchmark

    bench = get_benchmark("arith?n=6&seed=1")
    items = bench.load("test", None, None)
    texts = [it.query.question_text() for it in items]
    unique = [it for it, t in zip(items, texts, strict=True) if texts.count(t) == 1]
    slow = {it.id for it in unique[:2]}  # early in the input, the last two to finish
    slow_texts = [it.query.question_text() for it in unique[:2]]

    def delay(r: GenerationRequest) -> float:
        text = r.messages[-1].content if r.messages else ""
        return 0.6 if any(t in text for t in slow_texts) else 0.01

    router, _ = delayed_router(delay=delay)
    pipe = Pipeline({"sample": Generate(samples=2), "fuse": Fuse()}, {"fuse": ["sample"]}, router=router, name="sf")
    finish_order: list[str] = []
    evaluate(pipe, bench, tmp_path / "run", on_row=lambda row: finish_order.append(row["id"]))
    rows = [r["id"] for r in read_jsonl(tmp_path / "run" / "results.jsonl")]
    assert rows == finish_order
    assert set(rows[-2:]) == slow and set(rows) == {it.id for it in items}


# -- the asyncio interface (archon serve) ---------------------------------------------------------

def test_concurrent_submits_share_one_backend_call_per_tick():
    router, backends = scripted_router()
    nodes, inputs = six_nodes()
    pipe = Pipeline(nodes, inputs, router=router)

    async def main() -> list:
        ex = pipe.executor(window=16)
        try:
            return list(await asyncio.gather(*(ex.submit(Query(id=f"q{i}", prompt=f"question {i}"))
                                               for i in range(6))))
        finally:
            await ex.aclose()

    results = asyncio.run(main())
    assert [r.id for r in results] == [f"q{i}" for i in range(6)] and all(r.answer for r in results)
    assert [len(b) for b in backends["embedded"].batches] == [6, 18, 6, 6, 12]


def test_cancel_drops_the_remaining_work_of_a_query():
    def delay(r: GenerationRequest) -> float:
        return 0.3 if "doomed" in (r.messages[-1].content if r.messages else "") else 0.01

    router, backend = delayed_router(delay=delay)
    pipe = Pipeline({"sample": Generate(samples=2), "fuse": Fuse()}, {"fuse": ["sample"]}, router=router)

    async def main() -> tuple:
        ex = pipe.executor(window=1)
        doomed = asyncio.ensure_future(ex.submit(Query(id="doomed", prompt="doomed question")))
        kept = asyncio.ensure_future(ex.submit(Query(id="kept", prompt="kept question")))
        await asyncio.sleep(0.1)
        assert ex.in_flight == 1 and ex.queued == 1  # window 1: "kept" waits
        ex.cancel("doomed")
        result = await kept
        await ex.aclose()
        return doomed, result

    doomed, result = asyncio.run(main())
    assert doomed.cancelled() and result.id == "kept" and result.error is None
    asked = [r.messages[-1].content for _, r in backend.done if r.messages]
    assert not any("doomed" in t and "Fuse" in t for t in asked)  # its second level never ran
    assert not any(e.tag.node == "fuse" and e.tag.query == "doomed" for e in router.ledger.entries)


def test_submit_rejects_an_id_already_running():
    router, _ = delayed_router(delay=lambda r: 0.2)
    pipe = Pipeline({"g": Generate()}, router=router)

    async def main() -> None:
        ex = DataflowExecutor(pipe.graph, pipe.router, pipe.defaults, pipe.budget, window=4)
        first = asyncio.ensure_future(ex.submit(Query(id="x", prompt="p")))
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="already running"):
            await ex.submit(Query(id="x", prompt="p"))
        await first
        await ex.aclose()

    asyncio.run(main())


def test_scheduler_comes_from_the_config(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("name: p\nscheduler: levels\nwindow: 3\nnodes:\n  - id: g\n    technique: generate\n")
    pipe = Pipeline.from_yaml(cfg, cache=False)
    assert pipe.scheduler == "levels" and pipe.window == 3
    cfg.write_text("name: p\nscheduler: lockstep\nnodes:\n  - id: g\n    technique: generate\n")
    from archon.errors import ConfigError

    with pytest.raises(ConfigError, match="scheduler"):
        Pipeline.from_yaml(cfg, cache=False)


# -- kill and resume ------------------------------------------------------------------------------

KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from scripted import delayed_router
from archon import Pipeline
from archon.techniques import Generate, Vote
from archon.benchmarks.evaluate import evaluate

router, _ = delayed_router(delay=lambda r: 0.4)
pipe = Pipeline({{"sample": Generate(samples=2), "vote": Vote()}}, {{"vote": ["sample"]}}, router=router, name="v",
                window=1)
evaluate(pipe, "arith?n=8&seed=2", {out!r}, on_row=lambda row: print("row", row["id"], flush=True))
"""


def test_sigkill_after_k_rows_leaves_exactly_k_and_a_rerun_completes_the_rest(tmp_path):
    from archon.benchmarks.evaluate import evaluate

    out = tmp_path / "run"
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT.format(tests=str(REPO / "tests"), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    k = 3
    printed = []
    assert proc.stdout is not None
    while len(printed) < k:
        line = proc.stdout.readline()
        assert line, "the run ended before writing k rows"
        if line.startswith("row "):
            printed.append(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    rows = [r["id"] for r in read_jsonl(out / "results.jsonl")]
    assert rows == printed  # every announced row is on disk, nothing more
    router, _ = delayed_router()
    pipe = Pipeline({"sample": Generate(samples=2), "vote": Vote()},
                    {"vote": ["sample"]}, router=router, name="v", window=1)
    summary = evaluate(pipe, "arith?n=8&seed=2", out)
    rows = [r["id"] for r in read_jsonl(out / "results.jsonl")]
    assert len(rows) == len(set(rows)) == 8 and summary.complete
    assert {e.tag.query for e in router.ledger.entries} == set(rows) - set(printed)


# -- real engines ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_model_gives_the_same_results_with_both_schedulers(tmp_path):
    from archon.backends.router import ModelRouter

    got = {}
    for scheduler in ("levels", "dataflow"):
        router = ModelRouter()
        try:
            pipe = Pipeline({"sample": Generate(samples=2, max_tokens=8), "fuse": Fuse(max_tokens=8)},
                            {"fuse": ["sample"]}, router=router, scheduler=scheduler)
            got[scheduler] = comparable(pipe.run_batch(["What is 2+3?", "Name a color."]))
        finally:
            router.close()
    assert got["levels"] == got["dataflow"]
    assert got["dataflow"][0]["usage"]["completion_tokens"] > 0


@pytest.mark.slow
def test_archon_run_killed_with_sigkill_keeps_finished_rows_and_resumes(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text(textwrap.dedent("""\
        name: tiny
        defaults: {max_tokens: 6, temperature: 0.0}
        nodes:
          - {id: g, technique: generate}
        """))
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Count to {i}:"}) + "\n" for i in range(8)))
    out = tmp_path / "out.jsonl"
    archon = [sys.executable, "-m", "archon", "run", str(cfg), "--input-file", str(inputs), "-o", str(out),
              "--no-cache", "--window", "1"]
    proc = subprocess.Popen(archon, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(read_jsonl(out))) < 2:
        assert proc.poll() is None and time.monotonic() < deadline, "no rows from archon run"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    lines = out.read_text().splitlines()
    kept = [json.loads(line)["id"] for line in lines]  # every line is a whole row
    assert 2 <= len(kept) < 8
    done = subprocess.run(archon, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {len(kept)} of 8" in done.stderr
    ids = [r["id"] for r in read_jsonl(out)]
    assert ids[:len(kept)] == kept and sorted(ids) == sorted(f"q{i}" for i in range(8))


@pytest.mark.server
def test_streamed_requests_to_a_llama_cpp_server_match_the_level_executor():
    from servers import LlamaServer

    from archon.backends.registry import ModelSpec

    with LlamaServer(alias="gemma") as server:
        got, calls = {}, {}
        for scheduler in ("levels", "dataflow"):
            pipe = Pipeline({"sample": Generate(samples=2, max_tokens=6, temperature=0.0), "fuse": Fuse(max_tokens=6)},
                            {"fuse": ["sample"]}, scheduler=scheduler, cache=False,
                            models={"gemma": ModelSpec(backend="openai", base_url=server.base_url)},
                            defaults=Defaults(model="gemma", temperature=0.0))
            with pipe:
                got[scheduler] = comparable(pipe.run_batch(["What is 2+3?", "Name a color.", "Say hi."]))
                calls[scheduler] = len(pipe.router.calls)
    assert got["levels"] == got["dataflow"]
    assert calls["levels"] == 2 and calls["dataflow"] == 6  # one request per program round: streamed


@pytest.mark.vllm
def test_vllm_in_process_ticks_match_the_level_executor():
    pytest.importorskip("vllm")
    from archon.backends.convert import ensure_embedded_hf
    from archon.backends.registry import EMBEDDED_PARAMETERS, ModelRegistry, ModelSpec
    from archon.backends.router import ModelRouter

    spec = ModelSpec(backend="vllm", path=str(ensure_embedded_hf()), parameters=EMBEDDED_PARAMETERS)
    router = ModelRouter(registry=ModelRegistry({"gemma-vllm": spec}))  # one engine for both (a minute to start)
    got, batches = {}, {}
    try:
        for scheduler in ("levels", "dataflow"):
            pipe = Pipeline({"sample": Generate(samples=2, max_tokens=6), "fuse": Fuse(max_tokens=6)},
                            {"fuse": ["sample"]}, scheduler=scheduler, router=router,
                            defaults=Defaults(model="gemma-vllm", temperature=0.7, seed=3))
            before = len(router.calls)
            got[scheduler] = comparable(pipe.run_batch(["What is 2+3?", "Name a color.", "Say hi."]))
            batches[scheduler] = len(router.calls) - before
    finally:
        router.close()
    assert got["levels"] == got["dataflow"]
    assert batches == {"levels": 2, "dataflow": 2}  # one engine call per tick: every query's level at once


def test_many_queries_without_model_calls_do_not_nest_frames():
    from archon.techniques.base import Technique

    class Echo(Technique):
        name = "echo"
        consumes = "query"

        def run(self, ctx, inputs):  # type: ignore[no-untyped-def]
            from archon.data import Candidate

            return [Candidate(text=ctx.query.prompt or "")]
            yield []  # a generator with no rounds

    router, backends = scripted_router()
    pipe = Pipeline({"e": Echo(), "s": Select(method="first")}, {"s": ["e"]}, router=router, window=2)
    results = pipe.run_batch([f"q{i}" for i in range(3000)])
    assert [r.answer for r in results[:2]] == ["q0", "q1"] and backends["embedded"].batches == []
