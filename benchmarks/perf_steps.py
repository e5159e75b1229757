"""Step-level techniques on the embedded model: batching across particles/beams, and SpecReason.

Part 1, particle steering and beam search over 8 queries x 8 particles (beam: width 4 x
expand 2 = 8 expansions per query per step): backend requests per step and model, and wall
time, for archon's batched execution (one backend request per model per round) side by side
with a per-particle loop: the same algorithm whose router talks to a backend wrapper that
splits every batch into one request per particle. The step reward is a zero-call heuristic
(``length_reward``, plugged in as ``reward: archon.benchmarks.perf_steps:length_reward``) so
that what is timed is the generation schedule; judge rewards add one batched round per step.
Part 2, SpecReason with the embedded model as drafter and judge: acceptance rate and the
share of completion tokens written by the large model.

    python -m archon.benchmarks.perf_steps [--queries 8] [--particles 8] [--steps 2] [--max-tokens 2]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.backends.base import Backend
from archon.backends.registry import ModelRegistry
from archon.backends.router import ModelRouter, default_backend_factory
from archon.backends.types import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult
from archon.pipeline import Pipeline
from archon.scoring import ScoreContext, Scorer
from archon.techniques.beam import BeamSearch
from archon.techniques.particles import ParticleSteering
from archon.techniques.speculative import SpecReason

RESULTS = Path(__file__).parent / "results"
class LengthScorer(Scorer):
    """A step reward without model calls (prefers longer partials, bounded to [0, 1])."""

    type: str = "length"

    def models(self, default: str) -> list[str]:
        return []

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> Any:
        return [min(1.0, len(p) / 400) for p in candidates]
        yield []  # pragma: no cover - a generator, like every scorer


REWARD = {"type": "archon.benchmarks.perf_steps:LengthScorer", "aggregation": "last"}


@dataclass
class Counting:
    """Counts the real backend requests; ``split`` sends them one request at a time."""

    inner: Backend
    split: bool = False
    generate_calls: list[int] = field(default_factory=list)
    score_calls: list[int] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        if not self.split:
            self.generate_calls.append(len(requests))
            return self.inner.generate(requests)
        out = []
        for r in requests:
            self.generate_calls.append(1)
            out.extend(self.inner.generate([r]))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        if not self.split:
            self.score_calls.append(len(requests))
            return self.inner.score(requests)
        out = []
        for r in requests:
            self.score_calls.append(1)
            out.extend(self.inner.score([r]))
        return out

    def close(self) -> None:
        pass


def questions(n: int) -> list[str]:
    return [f"What is {3 * i + 4} + {2 * i + 5}?" for i in range(n)]


def run_variant(make, inner: Backend, queries: list[str], split: bool) -> dict:  # type: ignore[no-untyped-def]
    counting = Counting(inner, split)
    router = ModelRouter(registry=ModelRegistry(), factory=lambda name, spec: counting)
    pipe = Pipeline({"n": make()}, {}, router=router)
    start = time.perf_counter()
    results = pipe.run_batch(queries)
    wall = time.perf_counter() - start
    rounds = len(router.calls)  # router-level rounds (one per model per round)
    samples = sum(c.samples for c in router.calls)
    return {
        "wall_s": round(wall, 2),
        "steps": rounds,
        "backend_requests": len(counting.generate_calls) + len(counting.score_calls),
        "backend_requests_per_step": round((len(counting.generate_calls) + len(counting.score_calls)) / max(1, rounds),
                                           2),
        "requests_per_backend_call": counting.generate_calls if not split else f"1 x {len(counting.generate_calls)}",
        "samples": samples,
        "completion_tokens": sum(int(r.usage.get("completion_tokens", 0)) for r in results),
        "errors": sum(1 for r in results if r.error),
    }


def batching(inner: Backend, args: argparse.Namespace) -> dict:
    queries = questions(args.queries)
    k = args.particles
    makers = {
        "particle_steering": lambda: ParticleSteering(particles=k, max_steps=args.steps, max_tokens=args.max_tokens,
                                                      scorer=REWARD, method="fk", resample="always",
                                                      temperature=0.8),
        "beam_search": lambda: BeamSearch(beam_width=max(1, k // 2), expand=2, max_steps=args.steps,
                                          max_tokens=args.max_tokens, scorer=REWARD, temperature=0.8),
    }
    out = {}
    for name, make in makers.items():
        out[name] = {"batched": run_variant(make, inner, queries, split=False),
                     "per_particle": run_variant(make, inner, queries, split=True)}
    return out


def specreason(inner: Backend, args: argparse.Namespace) -> dict:
    queries = questions(args.spec_queries)
    router = ModelRouter(registry=ModelRegistry(), factory=lambda name, spec: inner)
    pipe = Pipeline({"n": SpecReason(max_steps=args.steps, max_tokens=args.spec_max_tokens, threshold=args.threshold)},
                    {}, router=router)
    start = time.perf_counter()
    results = pipe.run_batch(queries)
    wall = time.perf_counter() - start
    md = [r.candidates[0].metadata for r in results if r.candidates]
    drafted = sum(m["steps_drafted"] for m in md)
    accepted = sum(m["steps_accepted"] for m in md)
    large = sum(m["tokens_large"] + m["tokens_judge"] for m in md)
    total = large + sum(m["tokens_drafter"] for m in md)
    return {
        "queries": len(queries), "threshold": args.threshold, "wall_s": round(wall, 2),
        "steps_drafted": drafted, "steps_accepted": accepted,
        "steps_rewritten": sum(m["steps_rewritten"] for m in md),
        "acceptance_rate": round(accepted / drafted, 3) if drafted else None,
        "large_token_share": round(large / total, 3) if total else None,
        "judge_scores": [s for m in md for s in m["judge_scores"]],
        "backend_requests_per_round": [c.requests for c in router.calls],
    }


def table(report: dict) -> str:
    lines = [f"{'technique':<18} {'variant':<13} {'steps':>5} {'backend req':>11} {'req/step':>8} {'wall s':>8}"]
    for name, variants in report["batching"].items():
        for variant, row in variants.items():
            lines.append(f"{name:<18} {variant:<13} {row['steps']:>5} {row['backend_requests']:>11} "
                         f"{row['backend_requests_per_step']:>8} {row['wall_s']:>8}")
    s = report["specreason"]
    lines.append(f"specreason: {s['queries']} queries, drafted {s['steps_drafted']}, accepted {s['steps_accepted']} "
                 f"(rate {s['acceptance_rate']}), large-model token share {s['large_token_share']}, {s['wall_s']} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=8)
    parser.add_argument("--particles", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=2, help="tokens per step (batching part)")
    parser.add_argument("--spec-queries", type=int, default=4)
    parser.add_argument("--spec-max-tokens", type=int, default=8)
    parser.add_argument("--threshold", type=int, default=7)
    args = parser.parse_args()
    registry = ModelRegistry()
    inner = default_backend_factory("embedded", registry.get("embedded"))
    inner.generate([GenerationRequest(model="embedded", prompt="Hello", max_tokens=1)])  # load the engine
    start = time.perf_counter()
    report = {"settings": vars(args), "model": "embedded (Gemma 3 270M, llama.cpp)",
              "batching": batching(inner, args), "specreason": specreason(inner, args)}
    report["total_s"] = round(time.perf_counter() - start, 1)
    inner.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "steps.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"total {report['total_s']} s; written to {RESULTS / 'steps.json'}")


if __name__ == "__main__":
    main()
