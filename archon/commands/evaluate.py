"""`archon eval`: run a pipeline over a benchmark, grade it, write results and a summary.

Registered in ``archon.cli`` as ``app.command("eval")(eval_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from archon.commands.console import fail
from archon.errors import ArchonError, ConfigError

err = Console(stderr=True)
out = Console()


def _fail(exc: ArchonError) -> typer.Exit:
    return fail(exc)


def load_pipeline(config: Path, *, model: str | None, no_cache: bool, cache: Path | None,
                  sets: list[str]):  # type: ignore[no-untyped-def]
    from archon.benchmarks.evaluate import load_pipeline as load

    return load(config, model=model, cache=False if no_cache else (cache or True), sets=sets)


def summary_table(s: Any) -> Table:
    from archon.benchmarks.leaderboard import fmt_score

    table = Table(show_header=False, title=escape(f"{s.name} on {s.benchmark}"), title_justify="left")
    table.add_row(s.metric, fmt_score(s) + f"  ({s.graded}/{s.n} graded" + (f", {s.errors} errors" if s.errors else "")
                  + ("" if s.complete else f", {s.n}/{s.n_total} done") + ")")
    if s.coverage is not None:
        table.add_row("coverage", escape(f"{100 * s.coverage:.1f}%  ({s.coverage_source})"))
    if s.pass_at_k:
        table.add_row("pass@k", ", ".join(f"@{k} {100 * v:.1f}%" for k, v in s.pass_at_k.items()))
    table.add_row("tokens / query", f"{s.tokens_per_query:,.1f}  ({s.prompt_tokens_per_query:,.1f} prompt, "
                                    f"{s.completion_tokens_per_query:,.1f} completion)")
    table.add_row("calls / query", f"{s.calls_per_query:.2f}")
    table.add_row("FLOPs / query", f"{s.flops_per_query:.3g}")
    spent = s.spent.get("total_tokens", 0.0)
    table.add_row("cache hits", f"{s.cache_hits}" + (f"  (tokens above include what the cache served; this run "
                                                      f"spent {spent:,.0f} tokens)" if s.cache_hits else ""))
    table.add_row("latency / query", f"{s.latency_per_query_s:.2f}s")
    table.add_row("wall time", f"{s.wall_time_s:.1f}s")
    table.add_row("grader", f"{s.grader.get('name')} {s.grader.get('version')}")
    table.add_row("config hash", str(s.pipeline.get("config_hash")))
    if s.shards:
        missing = s.shards["missing"]
        table.add_row("shards", f"{s.shards['n']}: " + (f"not started yet: {', '.join(map(str, missing))}"
                                                        if missing else "all started"))
    return table


def set_scheduler(pipe: Any, scheduler: str | None) -> None:
    """``--scheduler`` overrides the config's ``scheduler:``."""
    if scheduler is None:
        return
    if scheduler not in ("dataflow", "levels"):
        raise ConfigError(f"--scheduler {scheduler!r}: unknown scheduler", hint="use dataflow or levels")
    pipe.scheduler = scheduler


class RunningStats:
    """What the progress bar shows besides the count: running accuracy (or judge score) and
    tokens, from the rows written this session."""

    def __init__(self) -> None:
        self.rows = 0
        self.scored = 0
        self.score = 0.0
        self.tokens = 0.0

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        if row.get("score") is not None:
            self.scored += 1
            self.score += float(row["score"])
        self.tokens += float((row.get("usage") or {}).get("total_tokens", 0))

    def text(self) -> str:
        if not self.rows:
            return ""
        parts = []
        if self.scored:
            mean = self.score / self.scored
            parts.append(f"acc {100 * mean:.1f}%" if mean <= 1.0 else f"score {mean:.2f}")
        parts.append(f"{self.tokens / 1000:,.1f}k tok")
        return " ".join(parts)


def eval_command(
    config: Annotated[Path, typer.Argument(help="pipeline YAML")],
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="gsm8k, math500, aime24, amc23, humaneval, "
                                           "mt_bench, arith[?digits=2&...], jsonl:PATH[?question=q&answer=a]")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="run directory (results.jsonl, summary.json); "
                                          "rerunning resumes")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="benchmark files NAME/split.jsonl "
                                                  "(default: ../shared/data, else the Hugging Face hub)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="evaluate this many questions")] = None,
    split: Annotated[str | None, typer.Option("--split", help="benchmark split (default: test)")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="with --limit: draw the questions at random "
                                             "with this seed (default: the first N)")] = None,
    model: Annotated[str | None, typer.Option("--model", help="send every node's calls to this model")] = None,
    window: Annotated[int | None, typer.Option("--window", "-w", help="questions in flight at once "
                                               "(default: chosen by the backend; with scheduler levels: "
                                               "the chunk size, 8)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", hidden=True,
                                                   help="old name of --window")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="dataflow or levels "
                                                  "(default: the config's, else dataflow)")] = None,
    judge_model: Annotated[str | None, typer.Option("--judge-model", help="judge for mt_bench "
                                                    "(any archon model name; default: embedded)")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="override a config value, e.g. "
                                                   "defaults.max_tokens=8 or nodes.sample.samples=4")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not read or write the call cache")] = False,
    cache: Annotated[Path | None, typer.Option("--cache", help="call cache file (default: ~/.cache/archon)")] = None,
    shard: Annotated[str | None, typer.Option("--shard", help="K/N: answer only shard K of N (by question id) "
                                              "into the same --out; run all N, anywhere, to complete the run")
                     ] = None,
) -> None:
    """Evaluate a pipeline on a benchmark: accuracy with a 95% CI, coverage, tokens, calls, FLOPs."""
    from archon.benchmarks.evaluate import Shard, evaluate
    from archon.benchmarks.registry import get_benchmark

    try:
        part = Shard.parse(shard) if shard else None
        bench = get_benchmark(benchmark, data_dir, judge_model=judge_model)
        pipe = load_pipeline(config, model=model, no_cache=no_cache, cache=cache, sets=list(sets or []))
        set_scheduler(pipe, scheduler)
        meta = {"overrides": list(sets or []), "model_override": model}
        with pipe, Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"),
                            TimeRemainingColumn(), console=err) as progress:
            task = progress.add_task(f"{escape(pipe.name)} on {escape(bench.label)}", total=None, stats="")
            first = [True]
            seen = RunningStats()

            def on_progress(done: int, total: int) -> None:
                if first[0] and done:
                    err.print(f"resuming: {done} of {total} already in {out_dir / 'results.jsonl'}")
                first[0] = False
                progress.update(task, completed=done, total=total, stats=seen.text())

            summary = evaluate(pipe, bench, out_dir, limit=limit, split=split, seed=seed,
                               window=window or batch_size, progress=on_progress, pipeline_meta=meta,
                               on_row=seen.add, shard=part)
    except ArchonError as exc:
        raise _fail(exc) from None
    out.print(summary_table(summary))
    written = f"results.shard-{shard.replace('/', '-of-')}.jsonl" if shard else "results.jsonl"
    err.print(f"[dim]wrote {out_dir}/{written} and {out_dir}/summary.json[/]")
