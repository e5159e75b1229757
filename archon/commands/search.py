"""`archon search`: Optuna architecture search under a per-query compute budget.

Registered in ``archon.cli`` as ``app.command("search")(search_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from archon.commands.console import fail
from archon.errors import ArchonError, ConfigError

err = Console(stderr=True)
out = Console()


class RichReporter:
    """Trial counter, best so far, tokens spent and reused, on one live line."""

    def __init__(self, progress: Progress, study: Any, target: int, n_dev: int) -> None:
        self.progress = progress
        self.n_dev = n_dev
        self.task = progress.add_task("search", total=target, best="", spent="", now="")
        self.refresh(study)

    def trial_started(self, number: int) -> None:
        self.progress.update(self.task, now=f"trial {number} running")

    def trial_rung(self, number: int, n_done: int, accuracy: float) -> None:
        self.progress.update(self.task, now=f"trial {number}: {accuracy:.2f} on {n_done}/{self.n_dev}")

    def trial_finished(self, study: Any, trial: Any) -> None:
        from optuna.trial import TrialState

        status = trial.user_attrs.get("status", trial.state.name.lower())
        if trial.state == TrialState.COMPLETE and status == "evaluated":
            status = f"{trial.user_attrs.get('accuracy', 0):.3f}"
        self.refresh(study, now=escape(f"trial {trial.number}: {status}"))

    def refresh(self, study: Any, now: str = "") -> None:
        from archon.search.runner import FINISHED, best_trial

        trials = study.get_trials(deepcopy=False)
        best = best_trial(trials, self.n_dev)
        new = sum(int((t.user_attrs.get("reuse") or {}).get("new_tokens", 0)) for t in trials)
        saved = sum(int((t.user_attrs.get("reuse") or {}).get("saved_tokens", 0)) for t in trials)
        best_text = "best -" if best is None else (
            f"best {best.user_attrs['accuracy']:.3f} (#{best.number}, {best.user_attrs['cost']['tokens']:,.0f} tok/q)")
        self.progress.update(self.task, completed=sum(1 for t in trials if t.state in FINISHED), best=best_text,
                             spent=f"{new:,} tok generated, {saved:,} reused", now=now)


def search_command(
    space: Annotated[Path, typer.Argument(help="search-space YAML (see configs/search/)")],
    benchmark: Annotated[str, typer.Option("--benchmark", "-b", help="benchmark name (arith, gsm8k, jsonl:PATH, ...)")],
    trials: Annotated[int, typer.Option("--trials", "-n", min=1,
                                        help="the study's target total of trials; rerun to resume")] = 20,
    budget_tokens: Annotated[float | None, typer.Option("--budget-tokens",
                                                        help="tokens per query (prompt + completion)")] = None,
    budget_calls: Annotated[float | None, typer.Option("--budget-calls", help="backend calls per query")] = None,
    budget_flops: Annotated[float | None, typer.Option("--budget-flops", help="FLOPs per query")] = None,
    multi_objective: Annotated[bool, typer.Option("--multi-objective",
                                                  help="accuracy vs tokens per query: a Pareto front")] = False,
    sampler: Annotated[str, typer.Option(help="tpe, random, gp, nsga2, cmaes or grid")] = "tpe",
    pruner: Annotated[str, typer.Option(help="median, halving, hyperband or none (single-objective only)")
                      ] = "median",
    rungs: Annotated[str, typer.Option(help="fidelity rungs: shares of the dev set, cumulative")] = "0.25,0.5,1",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", help="benchmark files (default: the shared data)")
                        ] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=2, help="use the first N questions")] = None,
    holdout: Annotated[float, typer.Option(min=0.0, max=0.9, help="share of questions held out for the winner")
                       ] = 0.25,
    seed: Annotated[int, typer.Option(help="seed of the sampler and of the dev/held-out split")] = 0,
    storage: Annotated[str | None, typer.Option("--storage", help="Optuna RDB URL (default: sqlite in --out)")
                       ] = None,
    study: Annotated[str | None, typer.Option("--study", help="study name (default: the space's name)")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", help="output folder")] = None,
    cache: Annotated[Path | None, typer.Option("--cache", help="call cache file shared by all trials")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="no call cache (every trial pays in full)")] = False,
    skip_margin: Annotated[float, typer.Option(help="skip a trial whose calibrated estimate exceeds the budget "
                                                    "by more than this share")] = 0.25,
    timeout: Annotated[float | None, typer.Option(help="stop starting trials after this many seconds")] = None,
    winner_eval: Annotated[bool, typer.Option("--winner-eval/--no-winner-eval",
                                              help="evaluate the winner on the held-out questions")] = True,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="write Optuna's plots (needs plotly)")] = True,
) -> None:
    """Search a space of pipelines for the most accurate one under a compute budget."""
    try:
        _search(space=space, benchmark=benchmark, trials=trials, budget_tokens=budget_tokens,
                budget_calls=budget_calls, budget_flops=budget_flops, multi_objective=multi_objective,
                sampler=sampler, pruner=pruner, rungs=rungs, data_dir=data_dir, limit=limit, holdout=holdout,
                seed=seed, storage=storage, study=study, out_dir=out_dir, cache=cache, no_cache=no_cache,
                skip_margin=skip_margin, timeout=timeout, winner_eval=winner_eval, plots=plots)
    except ArchonError as exc:
        raise fail(exc) from None


def _parse_rungs(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"--rungs {text!r}: give shares of the dev set, e.g. 0.25,0.5,1") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise ConfigError(f"--rungs {text!r}: every share must be in (0, 1]", hint="e.g. 0.25,0.5,1")
    return values


def _search(*, space: Path, benchmark: str, trials: int, budget_tokens: float | None, budget_calls: float | None,
            budget_flops: float | None, multi_objective: bool, sampler: str, pruner: str, rungs: str,
            data_dir: Path | None, limit: int | None, holdout: float, seed: int, storage: str | None,
            study: str | None, out_dir: Path | None, cache: Path | None, no_cache: bool, skip_margin: float,
            timeout: float | None, winner_eval: bool, plots: bool) -> None:
    import optuna

    from archon.backends.cache import CallCache
    from archon.backends.registry import ModelRegistry
    from archon.pipeline import default_cache_path
    from archon.search.bench import BenchmarkEvaluator, evaluate_winner, load_benchmark
    from archon.search.evaluation import split_items
    from archon.search.metering import MeteredRouter
    from archon.search.report import write_outputs
    from archon.search.runner import Budgets, Search, SearchSettings, best_trial
    from archon.search.space import load_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the progress line says it all
    search_space = load_space(space)
    for note in search_space.notes:
        err.print(f"[yellow]note:[/] {escape(note)}")
    study_name = study or search_space.name
    out_path = out_dir or Path("runs") / "search" / study_name
    out_path.mkdir(parents=True, exist_ok=True)
    storage_url = storage or f"sqlite:///{(out_path / 'study.sqlite3').resolve()}"
    data = load_benchmark(benchmark, data_dir=data_dir, limit=limit)
    dev, held = split_items(data.items, holdout, seed)
    registry = ModelRegistry(search_space.model_specs())
    call_cache = None if no_cache else CallCache(cache or default_cache_path())
    router = MeteredRouter(registry=registry, cache=call_cache)
    settings = SearchSettings(trials=trials, budget=Budgets(budget_tokens, budget_calls, budget_flops),
                              multi_objective=multi_objective, sampler=sampler, pruner=pruner,
                              rungs=_parse_rungs(rungs), seed=seed, study_name=study_name, storage=storage_url,
                              skip_margin=skip_margin, timeout_s=timeout)
    search = Search(search_space, BenchmarkEvaluator(router, data), dev, settings, holdout=held,
                    parameters=lambda m: registry.get(m).parameters)
    interrupted = False
    try:
        done = len(search.finished())
        err.print(f"study [bold]{escape(study_name)}[/] in {escape(storage_url)}: {done} of {trials} trials done; "
                  f"{len(dev)} dev / {len(held)} held-out questions of {escape(data.name)}")
        columns = (TextColumn("trials"), MofNCompleteColumn(), BarColumn(bar_width=12),
                   TextColumn("{task.fields[best]}"), TextColumn("[dim]{task.fields[spent]}[/]"),
                   TextColumn("{task.fields[now]}"), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=False) as progress:
            search.reporter = RichReporter(progress, search.study, trials, len(dev))
            try:
                search.optimize()
            except KeyboardInterrupt:
                interrupted = True
        holdout_result = None
        best = best_trial(search.study.get_trials(deepcopy=False), len(dev))
        if interrupted:
            err.print("[yellow]interrupted:[/] finished trials are saved; rerun the same command to resume")
        elif best is not None and held and winner_eval:
            claim = search.claim_winner_eval(best.number)
            if claim == "mine":
                err.print(f"evaluating the winner (trial {best.number}) on {len(held)} held-out questions ...")
                meta = {"search": {"study": study_name, "storage": storage_url, "trial": best.number,
                                   "dev_accuracy": best.user_attrs["accuracy"], "dev_questions": len(dev)}}
                holdout_result = evaluate_winner(best.user_attrs["config"], f"{search_space.name}-best", router,
                                                 data, held, out_path / "winner_eval", meta)
                search.store_winner_eval(best.number, holdout_result)
            elif claim == "running":  # several workers on one study: the last one to finish evaluates
                err.print("other workers are still running trials of this study: the last one to finish "
                          "evaluates the winner on the held-out set")
            else:  # the winner is evaluated once, by whoever claimed it
                holdout_result = search.stored_winner_eval(best.number)
                err.print(f"the winner (trial {best.number}) is evaluated on the held-out set by another worker"
                          + ("" if holdout_result is None else "; its result is in the report"))
        report = write_outputs(search, out_path, holdout=holdout_result, plots=plots)
    finally:
        router.close()
    _print_summary(report, out_path)
    if interrupted:
        raise typer.Exit(130)


def _print_summary(report: dict[str, Any], out_path: Path) -> None:
    t = report["trials"]
    table = Table("trials", "evaluated", "feasible", "infeasible", "pruned", "invalid", title="archon search")
    table.add_row(f"{t['finished']}/{t['target']}", str(t["evaluated"]), str(t["feasible"]), str(t["infeasible"]),
                  str(t["pruned_by_pruner"]), str(t["invalid"]))
    out.print(table)
    best = report["best"]
    if best is None:
        out.print("[yellow]no feasible pipeline yet[/]: raise the budget or the number of trials")
    else:
        cost = best["cost_per_query"]
        line = (f"[green]best[/] trial {best['trial']}: {escape(best['pipeline'] or '')}\n"
                f"  dev accuracy {best['dev_accuracy']:.3f}, {cost['tokens']:,.0f} tokens/query, "
                f"{cost['calls']:.1f} calls/query")
        h = report.get("holdout")
        if h:
            line += f"\n  held-out accuracy {h['accuracy']:.3f} on {h['questions']} questions"
        out.print(line)
    u = report["reuse"]
    out.print(f"tokens generated {u['tokens_generated']:,}; without the shared cache {u['tokens_without_reuse']:,} "
              f"({u['saving']:.0%} saved)")
    out.print(f"wrote {out_path}/best.yaml, pareto.md, report.md" + (", plots/" if report.get("plots") else ""))
