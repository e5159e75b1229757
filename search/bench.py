"""The bridge to the evaluation layer (``archon.benchmarks``).

``load_benchmark`` turns a benchmark spec (``arith``, ``gsm8k``, ``jsonl:PATH``, ...) into
search items; ``BenchmarkEvaluator`` runs a trial's pipeline on items exactly as
``archon eval`` does (``run_items``: multi-turn chats too) and grades them with the
benchmark's own grader; ``evaluate_winner`` writes the winner's ``archon eval`` run
directory on the held-out questions, so ``archon leaderboard`` shows it.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archon.backends.types import Usage
from archon.config import PipelineConfig, parse_config
from archon.errors import ConfigError

from .evaluation import EvalOutcome, Grader, SearchItem
from .metering import MeteredRouter, usage_from_dict


@dataclass
class BenchmarkData:
    name: str
    items: list[SearchItem]
    grade: Grader  # one result at a time (``PipelineEvaluator``); ``BenchmarkEvaluator`` grades in batches
    benchmark: Any  # archon.benchmarks.registry.Benchmark


def load_benchmark(name: str, *, data_dir: Path | None = None, limit: int | None = None,
                   split: str | None = None) -> BenchmarkData:
    from archon.benchmarks.registry import get_benchmark

    bench = get_benchmark(name, data_dir)
    items = bench.load(split, limit)
    if len(items) < 2:
        raise ConfigError(f"benchmark {name!r} gave {len(items)} question(s); a search needs at least 2",
                          hint="raise --limit")
    search_items = [SearchItem(id=it.id, query=it.query, gold=it.gold, record=it) for it in items]

    def grade(item: SearchItem, result: Any) -> float:
        (g,) = bench.grader.grade_runs([item.record], [[result]], [[]])
        return float(g.score or 0.0)

    return BenchmarkData(bench.label, search_items, grade, bench)


class BenchmarkEvaluator:
    """A trial's pipeline on some items, run and graded the way ``archon eval`` does it."""

    def __init__(self, router: MeteredRouter, data: BenchmarkData, *, batch_size: int = 32) -> None:
        self.router = router
        self.data = data
        self.batch_size = max(1, batch_size)

    def __call__(self, config: PipelineConfig, items: Sequence[SearchItem]) -> EvalOutcome:
        from archon.benchmarks.evaluate import pool_texts, root_nodes, run_items
        from archon.pipeline import Pipeline

        pipe = Pipeline.from_config(config, router=self.router)  # the study's router: never closed here
        roots = root_nodes(pipe)
        scores: list[float] = []
        usage: list[Usage] = []
        saved: list[Usage] = []
        errors = 0
        for start in range(0, len(items), self.batch_size):
            chunk = list(items[start:start + self.batch_size])
            self.router.reset_saved()
            runs = run_items(pipe, [it.record for it in chunk])
            pools = [pool_texts(r[-1], roots) for r in runs]
            grades = self.data.benchmark.grader.grade_runs([it.record for it in chunk], runs, pools,
                                                           router=self.router)
            for results, g in zip(runs, grades, strict=True):
                failed = any(r.error for r in results)
                errors += failed
                scores.append(0.0 if failed else float(g.score or 0.0))
                usage.append(sum((usage_from_dict(r.usage) for r in results), Usage()))
                saved.append(sum((self.router.saved_by_query.get(r.id, Usage()) for r in results), Usage()))
        return EvalOutcome(scores, usage, saved, errors)


def evaluate_winner(config: dict[str, Any], name: str, router: MeteredRouter, data: BenchmarkData,
                    items: Sequence[SearchItem], out_dir: Path, meta: dict[str, Any] | None = None
                    ) -> dict[str, Any]:
    """The winner on the held-out items, as an ``archon eval`` run directory."""
    from archon.benchmarks.evaluate import evaluate
    from archon.pipeline import Pipeline

    pipe = Pipeline.from_config(parse_config({**config, "name": name}), router=router)
    records = [it.record for it in items]
    try:
        summary = evaluate(pipe, data.benchmark, out_dir, items=records, pipeline_meta=meta or {})
    except ConfigError as exc:
        if "different" not in exc.message:
            raise
        shutil.rmtree(out_dir)  # an earlier winner's run: this one replaces it
        summary = evaluate(pipe, data.benchmark, out_dir, items=records, pipeline_meta=meta or {})
    return {"accuracy": summary.accuracy or 0.0, "questions": summary.n, "ci": [summary.ci_low, summary.ci_high],
            "tokens_per_query": summary.tokens_per_query, "calls_per_query": summary.calls_per_query,
            "coverage": summary.coverage, "run_dir": str(out_dir)}
