"""Framework overhead and level batching (issue: pipelines).

Part 1, an instant backend: time per query per node for a 6-node pipeline over 1,000
queries (target < 0.5 ms), and backend calls per level.
Part 2, the embedded model: pipeline wall time vs the sum of its backend calls
(target: overhead < 5%), and level-batched execution vs queries one at a time.

    python -m archon.benchmarks.perf_overhead [--queries 1000] [--real-queries 6]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import GenerationRequest, GenerationResult, Sample, ScoreRequest, ScoreResult, Usage
from archon.pipeline import Pipeline
from archon.techniques import Critique, Fuse, Generate, Rank, Select, Verify

RESULTS = Path(__file__).parent / "results"


class InstantBackend:
    """Answers at once, so what is timed is archon itself."""

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            text = "[1] > [2]" if r.max_tokens == 24 else ("Verdict: yes" if r.max_tokens == 23 else "x \\boxed{1}")
            out.append(GenerationResult([Sample(text, completion_tokens=3) for _ in range(r.n)],
                                        Usage(prompt_tokens=10, completion_tokens=3 * r.n, calls=1)))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [ScoreResult([0.0] * len(r.continuations), [[0.0]] * len(r.continuations)) for r in requests]

    def close(self) -> None:
        pass


def six_nodes(samples: int = 3, max_tokens: int | None = None) -> tuple[dict, dict]:
    nodes = {
        "sample": Generate(samples=samples, max_tokens=max_tokens),
        "critique": Critique(max_tokens=max_tokens),
        "rank": Rank(top_k=2, max_tokens=24),
        "fuse": Fuse(max_tokens=max_tokens),
        "verify": Verify(max_tokens=23),
        "select": Select(method="first"),
    }
    inputs = {"critique": ["sample"], "rank": ["critique"], "fuse": ["rank"], "verify": ["fuse"], "select": ["verify"]}
    return nodes, inputs


def overhead_instant(queries: int) -> dict:
    registry = ModelRegistry({"instant": ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1")})
    router = ModelRouter(registry=registry, factory=lambda name, spec: InstantBackend())
    nodes, inputs = six_nodes()
    pipe = Pipeline(nodes, inputs, router=router)
    pipe.defaults.model = "instant"
    batch = [f"question {i}" for i in range(queries)]
    pipe.run_batch(batch[:10])  # warm up imports and templates
    router.calls.clear()
    start = time.perf_counter()
    pipe.run_batch(batch)
    elapsed = time.perf_counter() - start
    return {
        "queries": queries,
        "nodes": len(nodes),
        "wall_s": round(elapsed, 3),
        "ms_per_query_per_node": round(1000 * elapsed / queries / len(nodes), 4),
        "backend_calls": len(router.calls),
        "requests_per_backend_call": [c.requests for c in router.calls],
    }


def real_engine(queries: int) -> dict:
    questions = [f"What is {a} + {b}?" for a, b in zip(range(3, 3 + queries), range(20, 20 + queries), strict=False)]
    nodes, inputs = six_nodes(samples=2, max_tokens=24)
    batched = Pipeline(nodes, inputs, cache=False)
    start = time.perf_counter()
    batched.run_batch(questions)
    wall_batched = time.perf_counter() - start
    backend_s = sum(e.usage.latency_s for e in batched.router.ledger.entries)
    calls_batched = len(batched.router.calls)
    one_by_one = Pipeline(*six_nodes(samples=2, max_tokens=24), router=batched.router)
    batched.router.calls.clear()
    start = time.perf_counter()
    for q in questions:
        one_by_one.run(q)
    wall_serial = time.perf_counter() - start
    calls_serial = len(batched.router.calls)
    batched.close()
    return {
        "engine": "embedded llama.cpp (Gemma 3 270M), 2 CPU cores",
        "queries": queries,
        "pipeline_wall_s": round(wall_batched, 2),
        "sum_of_backend_call_s": round(backend_s, 2),
        "overhead_pct": round(100 * (wall_batched - backend_s) / wall_batched, 2),
        "level_batched_wall_s": round(wall_batched, 2),
        "one_by_one_wall_s": round(wall_serial, 2),
        "one_by_one_over_batched": round(wall_serial / wall_batched, 2),
        "backend_calls_batched": calls_batched,
        "backend_calls_one_by_one": calls_serial,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--real-queries", type=int, default=6, help="0 skips the embedded-model part")
    args = parser.parse_args()
    report = {"instant_backend": overhead_instant(args.queries)}
    if args.real_queries:
        report["embedded_model"] = real_engine(args.real_queries)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "overhead.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
