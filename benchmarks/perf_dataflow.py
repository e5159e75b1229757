"""The dataflow scheduler against ``scheduler: levels``, side by side in one run.

Part 1 (the main figure), a controlled-delay server: ``SimServer`` behaves like a
continuous-batching engine behind an OpenAI endpoint. A request first spends ``frontend_s``
in the server's front end (HTTP, parsing, tokenizing: the engine does not see it yet), then
each sample is one sequence that decodes one token per engine step; a step takes
``step_s + per_seq_s x running``; at most ``max_seqs`` sequences run, the rest queue. How
many tokens a sample takes is drawn from its request (prompt, seed, sample index) so both
schedulers see the same work: answers mix short and long (``max_tokens`` 256: 70% of samples
16-48 tokens, 30% 150-256). The backend offers
``generate`` (the level executor's batch call: all requests at once, back when the last one
is done) and ``agenerate`` (the dataflow executor's streamed path), like ``OpenAIBackend``.
Workloads over GSM8K test questions (``../shared/data``):

- particle steering, 8 particles, judge step rewards, up to 4 steps of <= 64 tokens;
- sample-4 -> critique -> rank -> fuse.

Per run: wall time, busy fraction (share of wall time with at least one sequence running,
the "engine had no request running" measure), slot occupancy (mean running sequences /
``max_seqs``), time to the first finished query, backend requests (HTTP-like requests the
server received) and router batches.

Part 2 (small, real): the embedded model (llama.cpp, in process: the tick path) on
sample-2 -> critique -> rank -> fuse over a few GSM8K questions with ``max_tokens`` 16;
busy is the share of wall time inside the engine's ``generate``. Both schedulers run off the
main thread (``_off_main_thread``: llama.cpp is far slower on the main thread here).

    python -m archon.benchmarks.perf_dataflow [--questions 16] [--embedded-questions 6] [--skip-embedded]

Writes ``benchmarks/results/dataflow.json`` and ``dataflow.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter, default_backend_factory
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    Usage,
)
from archon.benchmarks.datasets import repo_root
from archon.data import QueryResult
from archon.pipeline import Pipeline
from archon.techniques import Critique, Fuse, Generate, ParticleSteering, Rank, Select
from archon.techniques.base import Defaults

RESULTS = Path(__file__).parent / "results"


def _unit(*parts: Any) -> float:
    """A deterministic draw in [0, 1) from the request, so both schedulers get the same work."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64


# -- the simulated server ------------------------------------------------------------------

@dataclass
class _Seq:
    left: int
    done: asyncio.Future[None]


class SimServer:
    """A continuous-batching engine on a private event loop (see the module docstring)."""

    def __init__(self, max_seqs: int = 32, step_s: float = 0.01, per_seq_s: float = 0.0002,
                 frontend_s: float = 0.03) -> None:
        self.max_seqs, self.step_s, self.per_seq_s, self.frontend_s = max_seqs, step_s, per_seq_s, frontend_s
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="sim-server")
        self._thread.start()
        self._waiting: list[_Seq] = []
        self._running: list[_Seq] = []
        self._wake = asyncio.run_coroutine_threadsafe(self._make_event(), self.loop).result()
        self.busy_s = 0.0
        self.slot_s = 0.0
        self.requests = 0
        self.sequences = 0
        self.tokens = 0
        self._task = asyncio.run_coroutine_threadsafe(self._engine(), self.loop)

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    def reset(self) -> None:
        self.busy_s = self.slot_s = 0.0
        self.requests = self.sequences = self.tokens = 0

    async def decode(self, tokens: int) -> None:
        seq = _Seq(max(1, tokens), self.loop.create_future())
        self.sequences += 1
        self.tokens += seq.left
        self._waiting.append(seq)
        self._wake.set()
        await seq.done

    async def _engine(self) -> None:
        while True:
            while self._waiting and len(self._running) < self.max_seqs:
                self._running.append(self._waiting.pop(0))
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            n = len(self._running)
            start = time.perf_counter()
            await asyncio.sleep(self.step_s + self.per_seq_s * n)
            spent = time.perf_counter() - start
            self.busy_s += spent
            self.slot_s += spent * n
            still = []
            for seq in self._running:
                seq.left -= 1
                if seq.left <= 0:
                    seq.done.set_result(None)
                else:
                    still.append(seq)
            self._running = still

    def close(self) -> None:
        self._task.cancel()
        time.sleep(0.05)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


Respond = Callable[[GenerationRequest, int], str]
Length = Callable[[GenerationRequest, int], int]


@dataclass
class SimBackend:
    """An OpenAI-style backend on a ``SimServer``: one request per ``GenerationRequest``."""

    server: SimServer
    respond: Respond
    length: Length

    async def _one(self, r: GenerationRequest) -> GenerationResult:
        self.server.requests += 1
        indices = [r.sample_offset + i for i in range(r.n)]
        lengths = [self.length(r, i) for i in indices]
        await asyncio.sleep(self.server.frontend_s)  # HTTP, parsing, tokenizing: the engine does not see it yet
        await asyncio.gather(*(self.server.decode(k) for k in lengths))
        samples = []
        for i, k in zip(indices, lengths, strict=True):
            text = self.respond(r, i)
            lp = [TokenLogprob(text[:1] or " ", -0.2, {text[:1] or " ": -0.2, "5": -2.0})] if r.logprobs else None
            finish = "length" if k >= r.max_tokens else "stop"
            samples.append(Sample(text, finish, lp, completion_tokens=k))
        prompt = len(r.prefix_text()) // 4 + 1
        return GenerationResult(samples, Usage(prompt_tokens=prompt, completion_tokens=sum(lengths), calls=1))

    async def _batch(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return asyncio.run_coroutine_threadsafe(self._batch(requests), self.server.loop).result()

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._batch(requests), self.server.loop))

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise NotImplementedError("the workloads here do not score")

    def close(self) -> None:
        pass


# -- workloads ----------------------------------------------------------------------------

def gsm8k_questions(n: int) -> list[str]:
    path = repo_root().parent / "shared" / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise SystemExit(f"GSM8K not found at {path}")
    out = []
    with path.open() as fh:
        for line in fh:
            out.append(json.loads(line)["question"])
            if len(out) == n:
                break
    return out


def answer_length(r: GenerationRequest, index: int) -> int:
    """Mixed answers: 70% short (16-48 tokens), 30% long (150-256), capped by max_tokens."""
    u = _unit(r.prefix_text(), r.seed, index)
    k = 16 + int(32 * u / 0.7) if u < 0.7 else 150 + int(106 * (u - 0.7) / 0.3)
    return min(r.max_tokens, k)


def respond(r: GenerationRequest, index: int) -> str:
    text = r.messages[-1].content if r.messages else (r.prompt or "")
    if r.max_tokens == 1:  # a step judge reads one digit
        return str(3 + int(6 * _unit(r.prefix_text(), index)))
    if "\n\n" in r.stop:  # a reasoning step (the step delimiter is its stop string)
        steps = r.assistant_prefix.count("Step ")
        target = 1 + int(4 * _unit(text, r.seed, index))  # particles finish after 1-4 steps
        return "The answer is \\boxed{18}" if steps + 1 >= target else f"Step {steps + 1}: compute a part."
    if "Ranking:" in text:
        return "[2] > [1] > [3] > [4]"
    if "Strengths" in text:
        return "Strengths: clear. Weaknesses: none."
    return f"The answer is \\boxed{{{index % 3 + 17}}}"


def particle_pipeline(router: ModelRouter, scheduler: str, window: int) -> Pipeline:
    return Pipeline({"particles": ParticleSteering(particles=8, max_steps=4, max_tokens=64),
                     "select": Select(method="first")}, {"select": ["particles"]}, router=router,
                    scheduler=scheduler, window=window, defaults=Defaults(model="sim", temperature=0.8))


def critique_pipeline(router: ModelRouter, scheduler: str, window: int, model: str = "sim",
                      max_tokens: int = 256, samples: int = 4) -> Pipeline:
    nodes = {"sample": Generate(samples=samples, max_tokens=max_tokens), "critique": Critique(max_tokens=max_tokens),
             "rank": Rank(top_k=2, max_tokens=max(16, max_tokens // 4)), "fuse": Fuse(max_tokens=max_tokens)}
    return Pipeline(nodes, {"critique": ["sample"], "rank": ["critique"], "fuse": ["rank"]}, router=router,
                    scheduler=scheduler, window=window, defaults=Defaults(model=model, temperature=0.8))


WORKLOADS: dict[str, Callable[..., Pipeline]] = {
    "particle steering (8 particles, judge)": particle_pipeline,
    "sample-4 -> critique -> rank -> fuse": critique_pipeline,
}


@dataclass
class Timed:
    finished: list[float] = field(default_factory=list)

    def __call__(self, result: QueryResult) -> None:
        self.finished.append(time.perf_counter())


def run_sim(questions: list[str], server: SimServer) -> list[dict[str, Any]]:
    rows = []
    for workload, make in WORKLOADS.items():
        for scheduler in ("levels", "dataflow"):
            server.reset()
            backend = SimBackend(server, respond, answer_length)
            registry = ModelRegistry({"sim": ModelSpec(backend="openai", base_url="http://sim/v1", parameters=1e9)})
            router = ModelRouter(registry=registry, factory=lambda name, spec, b=backend: b)
            pipe = make(router, scheduler, len(questions))
            timed = Timed()
            start = time.perf_counter()
            results = pipe.run_batch(questions, on_result=timed)
            wall = time.perf_counter() - start
            errors = [r.error for r in results if r.error]
            rows.append({
                "backend": f"simulated server ({server.max_seqs} slots)", "workload": workload,
                "scheduler": scheduler, "questions": len(questions), "wall_s": round(wall, 3),
                "busy": round(server.busy_s / wall, 4), "occupancy": round(server.slot_s / (server.max_seqs * wall), 4),
                "first_s": round(timed.finished[0] - start, 3), "requests": server.requests,
                "router_batches": len(router.calls), "tokens": server.tokens, "errors": len(errors),
            })
            print(json.dumps(rows[-1]), flush=True)
    return rows


# -- the embedded model ---------------------------------------------------------------------

@dataclass
class BusyBackend:
    """Times the engine's calls (the tick path: one generate per tick)."""

    inner: Any
    busy_s: float = 0.0
    calls: int = 0
    requests: int = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        start = time.perf_counter()
        try:
            return list(self.inner.generate(requests))
        finally:
            self.busy_s += time.perf_counter() - start
            self.calls += 1
            self.requests += len(requests)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        start = time.perf_counter()
        try:
            return list(self.inner.score(requests))
        finally:
            self.busy_s += time.perf_counter() - start

    def close(self) -> None:
        self.inner.close()


def _off_main_thread(fn: Callable[[], list[QueryResult]]) -> list[QueryResult]:
    """Runs ``fn`` in a worker thread. On this machine llama.cpp decodes 25-40x slower when
    called from the process's main thread than from any other thread (measured: the same
    3 requests 180-230 s vs 4-7 s), which the level executor does and the dataflow executor
    (ticks in daemon threads) does not; both run off the main thread here so that the
    figure compares schedules, not threads."""
    box: dict[str, Any] = {}

    def work() -> None:
        box["out"] = fn()

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    return box["out"]  # type: ignore[no-any-return]


def run_embedded(questions: list[str], max_tokens: int = 16, repeats: int = 2) -> list[dict[str, Any]]:
    """Alternates the schedulers (levels, dataflow, dataflow, levels, ...) so that a shared
    machine's load drifting over time hits both alike."""
    rows = []
    registry = ModelRegistry()
    engine = default_backend_factory("embedded", registry.get("embedded"))
    order = [s for i in range(repeats) for s in (("levels", "dataflow") if i % 2 == 0 else ("dataflow", "levels"))]
    try:
        engine.generate([GenerationRequest(model="embedded", prompt="Hello", max_tokens=1)])  # load it untimed
        for scheduler in order:
            backend = BusyBackend(engine)
            router = ModelRouter(registry=registry, factory=lambda name, spec, b=backend: b)
            pipe = critique_pipeline(router, scheduler, None, model="embedded", max_tokens=max_tokens,  # type: ignore[arg-type]
                                     samples=2)
            timed = Timed()
            start = time.perf_counter()
            results = _off_main_thread(lambda p=pipe, t=timed: p.run_batch(questions, on_result=t))
            wall = time.perf_counter() - start
            rows.append({
                "backend": "embedded llama.cpp (in process)", "workload": "sample-2 -> critique -> rank -> fuse",
                "scheduler": scheduler, "questions": len(questions), "window": pipe.executor().window
                if scheduler == "dataflow" else len(questions), "wall_s": round(wall, 3),
                "busy": round(backend.busy_s / wall, 4), "first_s": round(timed.finished[0] - start, 3),
                "requests": backend.requests, "router_batches": backend.calls,
                "errors": sum(1 for r in results if r.error),
            })
            print(json.dumps(rows[-1]), flush=True)
    finally:
        engine.close()
    return rows


def markdown(rows: list[dict[str, Any]], setup: str) -> str:
    lines = [setup, "", "| backend | workload | scheduler | questions | wall s | busy | slot occupancy "
             "| first result s | backend requests | router batches |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        occ = f"{100 * r['occupancy']:.1f}%" if "occupancy" in r else "-"
        lines.append(f"| {r['backend']} | {r['workload']} | {r['scheduler']} | {r['questions']} | {r['wall_s']:.2f} | "
                     f"{100 * r['busy']:.1f}% | {occ} | {r['first_s']:.2f} | {r['requests']} | "
                     f"{r['router_batches']} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--embedded-questions", type=int, default=6)
    ap.add_argument("--embedded-max-tokens", type=int, default=16)
    ap.add_argument("--max-seqs", type=int, default=32)
    ap.add_argument("--step-ms", type=float, default=10.0)
    ap.add_argument("--frontend-ms", type=float, default=30.0)
    ap.add_argument("--embedded-repeats", type=int, default=2)
    ap.add_argument("--skip-embedded", action="store_true")
    ap.add_argument("--only-embedded", action="store_true", help="keep the simulated rows already in --out")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.only_embedded:
        old = json.loads((args.out / "dataflow.json").read_text())["rows"]
        rows = [r for r in old if not r["backend"].startswith("embedded")]
    else:
        server = SimServer(max_seqs=args.max_seqs, step_s=args.step_ms / 1000, frontend_s=args.frontend_ms / 1000)
        try:
            rows = run_sim(gsm8k_questions(args.questions), server)
        finally:
            server.close()
    if not args.skip_embedded:
        rows += run_embedded(gsm8k_questions(args.embedded_questions), args.embedded_max_tokens,
                             args.embedded_repeats)
    setup = (f"Simulated server: {args.max_seqs} slots, a decode step {args.step_ms:g} ms + 0.2 ms per running "
             f"sequence, {args.frontend_ms:g} ms front end per request, {args.questions} GSM8K questions, all "
             f"admitted at once (levels: one batch; dataflow: window {args.questions}). Embedded: Gemma 3 270M "
             f"Q4_K_M in llama.cpp, {args.embedded_questions} questions, max_tokens {args.embedded_max_tokens}, "
             "dataflow window chosen by the backend (4), "
             f"{args.embedded_repeats} runs of each, alternating.")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dataflow.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=2) + "\n")
    (args.out / "dataflow.md").write_text(markdown(rows, setup))
    print(markdown(rows, setup))


if __name__ == "__main__":
    main()
