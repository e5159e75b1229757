"""How many trials do TPE, random search and GP need to find the best pipeline?

1. A space small enough to enumerate (~30 pipelines: samples x temperature x vote-or-fuse) on
   the synthetic ``arith`` set with the embedded model. Every pipeline is evaluated once on the
   dev questions through ONE shared call cache (so the exhaustive sweep itself is cheap), with
   every generation request's sample keys and token costs recorded.
2. Studies are then replayed against those numbers (a lookup evaluator behind the real
   ``archon.search`` loop: same space, builder, estimate-skip, constraints, pruner), for each
   sampler and 5 seeds, until the study has evaluated the best pipeline (the cheapest of the
   most accurate pipelines within the token budget: what the search reports as its winner) or
   ``MAX_TRIALS`` trials have run. The first trial reaching the best accuracy is noted too.
3. For each study, the tokens its trials would generate without reuse (each trial pays its
   pipeline's full price) and with the shared cache (each distinct sample paid once), replayed
   from the recorded sample keys.

Writes benchmarks/results/search.{md,json}. Run: ``python benchmarks/perf_search.py``
(``--cache PATH`` keeps the sweep's call cache for reruns). A few minutes on 2 CPU cores,
most of it the exhaustive sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from archon.backends.cache import CallCache
from archon.backends.registry import ModelRegistry
from archon.backends.types import Usage
from archon.benchmarks.graders import arith_answer
from archon.config import PipelineConfig, parse_config
from archon.data import Candidate
from archon.search.bench import load_benchmark
from archon.search.build import enumerate_space
from archon.search.evaluation import EvalOutcome, PipelineEvaluator, SearchItem, split_items
from archon.search.metering import MeteredRouter
from archon.search.runner import Budgets, Search, SearchSettings
from archon.search.space import parse_space
from archon.techniques.base import NodeContext, Program
from archon.techniques.generate import Generate

RESULTS = Path(__file__).resolve().parent / "results"
GENERATOR = "archon.benchmarks.perf_search:CompletionGenerate"
N_QUESTIONS = 6          # dev questions every pipeline is evaluated on
SEEDS = (0, 1, 2, 3, 4)
SAMPLERS = ("tpe", "random", "gp", "grid")
MAX_TRIALS = 60
STARTUP_TRIALS = 5       # random trials before TPE / GP model the space (what `--trials 20` gives)

SPACE = {
    "name": "perf",
    "base": {"defaults": {"model": "embedded", "max_tokens": 6, "seed": 0}},
    "generate": {"models": {"embedded": [1, 2, 4, 6, 8]}, "temperature": [0.3, 0.7, 1.0],
                 "technique": GENERATOR},
    "layers": {"count": 0},
    "final": {"selector": ["vote", "fuse"], "max_tokens": 4},
}


class CompletionGenerate(Generate):
    """``generate`` that sends a completion-format query (``arith``: few-shot ``a+b=`` lines,
    ``metadata["format"] == "completion"``) as the raw prompt with its stop strings, the way a
    base model must see it; other queries go through ``generate`` unchanged."""

    name = "completion_generate"

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        query = ctx.query
        if query.metadata.get("format") != "completion" or query.prompt is None:
            return (yield from super().run(ctx, inputs))
        stop = tuple(query.metadata.get("stop") or self.params.stop)
        requests = [dataclasses.replace(self.request(ctx, query.prompt, model=m, n=self.params.samples),
                                        messages=None, prompt=query.prompt, stop=stop)
                    for m in self.models(ctx.defaults)]
        results = yield list(requests)
        out = []
        for req, res in zip(requests, results, strict=True):
            for sample in res.samples:  # type: ignore[union-attr]
                text = sample.text.strip()
                out.append(Candidate(text=text, answer=arith_answer(text), node=ctx.node_id, model=req.model))
        return out


def _label(config: dict[str, Any]) -> str:
    gen, last = config["nodes"][0], config["nodes"][-1]
    return f"{gen['samples']} samples, t={gen['temperature']}, " + ("fuse" if last["technique"] == "fuse" else "vote")


def _key(config: dict[str, Any]) -> str:
    nodes = [{k: v for k, v in n.items()} for n in config["nodes"]]
    return json.dumps(nodes, sort_keys=True)


class Sweep:
    """Every pipeline of the space, evaluated once: per question score, usage and requests."""

    def __init__(self, items: Sequence[SearchItem], grade: Any, router: MeteredRouter) -> None:
        self.items = list(items)
        self.router = router
        self.evaluator = PipelineEvaluator(router, grade)
        self.table: dict[str, dict[str, Any]] = {}

    def run(self, space: Any) -> None:
        points = list(enumerate_space(space))
        valid = [c for _, c, _ in points if c is not None]
        print(f"space: {len(points)} points, {len(valid)} valid pipelines; {len(self.items)} questions")
        for i, config in enumerate(valid):
            self.router.recorder = []
            t0 = time.perf_counter()
            out = self.evaluator(parse_config(config), self.items)
            records = self.router.recorder
            self.router.recorder = None
            full = [u + s for u, s in zip(out.usage, out.saved, strict=True)]
            self.table[_key(config)] = {
                "config": config, "scores": out.scores, "usage": full, "records": records,
                "accuracy": statistics.fmean(out.scores),
                "tokens_per_query": sum(u.total_tokens for u in full) / len(full),
                "new_tokens": sum(u.total_tokens for u in out.usage),
            }
            row = self.table[_key(config)]
            print(f"  [{i + 1:2d}/{len(valid)}] acc {row['accuracy']:.3f}  {row['tokens_per_query']:6.1f} tok/q  "
                  f"new {row['new_tokens']:5d}  {time.perf_counter() - t0:5.1f}s  {_label(config)}")

    def evaluate(self, config: PipelineConfig, items: Sequence[SearchItem]) -> EvalOutcome:
        """The lookup evaluator: the recorded per-question outcome, charged in full (no reuse)."""
        row = self.table[_key(self._as_dict(config))]
        index = {it.id: i for i, it in enumerate(self.items)}
        picks = [index[it.id] for it in items]
        return EvalOutcome([row["scores"][i] for i in picks], [row["usage"][i] for i in picks],
                           [Usage() for _ in picks])

    @staticmethod
    def _as_dict(config: PipelineConfig) -> dict[str, Any]:
        nodes = []
        for n in config.nodes or []:
            nodes.append({"id": n.id, "technique": n.technique, "inputs": n.inputs, **n.params()})
        return {"nodes": nodes}


def replay_tokens(trials: Sequence[optuna.trial.FrozenTrial], sweep: Sweep) -> tuple[int, int]:
    """(tokens with the shared cache, tokens without reuse) for a study's evaluated trials."""
    seen: set[str] = set()
    with_reuse = without = 0
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("status") not in ("evaluated", "pruned", "over_budget"):
            continue  # invalid or skipped on the estimate: nothing was run
        row = sweep.table[_key(t.user_attrs["config"])]
        asked = {it.id for it in sweep.items[: t.user_attrs["n_queries"]]}  # rungs are dev prefixes
        for rec in row["records"]:
            if rec.query not in asked:
                continue
            per = rec.prompt_tokens_per_sample
            for key, completion in rec.samples:
                without += round(per) + completion
                if key not in seen:
                    seen.add(key)
                    with_reuse += round(per) + completion
    return with_reuse, without


def _sweep_tokens(rows: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(tokens with the shared cache, without reuse) of evaluating every pipeline once, replayed
    from the recorded sample keys (so a warm ``--cache`` reports the same figures)."""
    seen: set[str] = set()
    with_reuse = without = 0
    for row in rows:
        for rec in row["records"]:
            for key, completion in rec.samples:
                cost = round(rec.prompt_tokens_per_sample) + completion
                without += cost
                if key not in seen:
                    seen.add(key)
                    with_reuse += cost
    return with_reuse, without


def run_study(space: Any, sweep: Sweep, sampler: str, seed: int, budget: float, target: float, best_key: str,
              pruner: str = "none") -> dict[str, Any]:
    """One study until it has evaluated THE best pipeline (the cheapest of the most accurate
    feasible ones, which is what the search reports as best), or ``MAX_TRIALS`` trials."""
    settings = SearchSettings(trials=MAX_TRIALS, budget=Budgets(tokens=budget), sampler=sampler, pruner=pruner,
                              seed=seed, study_name=f"{sampler}-{seed}", storage=None,
                              n_startup_trials=STARTUP_TRIALS)
    search = Search(space, sweep.evaluate, sweep.items, settings)
    reached_accuracy: int | None = None
    reached_best: int | None = None

    def watch(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal reached_accuracy, reached_best
        a = trial.user_attrs
        if a.get("status") != "evaluated" or not a.get("feasible"):
            return
        if reached_accuracy is None and abs(a["accuracy"] - target) < 1e-9:
            reached_accuracy = trial.number + 1
        if _key(a["config"]) == best_key:
            reached_best = trial.number + 1
            study.stop()

    t0 = time.perf_counter()
    study = search.study
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study.optimize(search.objective, n_trials=MAX_TRIALS, callbacks=[watch])
    trials = study.get_trials(deepcopy=False)
    with_reuse, without = replay_tokens(trials, sweep)
    distinct = len({_key(t.user_attrs["config"]) for t in trials if t.user_attrs.get("status") == "evaluated"})
    return {"sampler": sampler, "pruner": pruner, "seed": seed, "trials_to_best_accuracy": reached_accuracy,
            "trials_to_best_pipeline": reached_best, "trials_run": len(trials), "distinct_evaluated": distinct,
            "tokens_with_reuse": with_reuse, "tokens_without_reuse": without,
            "skipped": sum(1 for t in trials if t.user_attrs.get("status") == "skipped"),
            "invalid": sum(1 for t in trials if t.user_attrs.get("status") == "invalid"),
            "pruned": sum(1 for t in trials if t.user_attrs.get("status") == "pruned"),
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=None,
                        help="call cache for the sweep (default: a fresh temporary one, so the sweep is measured)")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    t_start = time.perf_counter()
    space = parse_space(SPACE)
    data = load_benchmark("arith", limit=N_QUESTIONS * 2)
    dev, _ = split_items(data.items, 0.5, seed=0)
    dev = dev[:N_QUESTIONS]
    with tempfile.TemporaryDirectory() as tmp:
        router = MeteredRouter(registry=ModelRegistry(), cache=CallCache(args.cache or Path(tmp) / "calls.sqlite"))
        sweep = Sweep(dev, data.grade, router)
        t0 = time.perf_counter()
        sweep.run(space)
        sweep_s = time.perf_counter() - t0
        router.close()
    rows = list(sweep.table.values())
    costs = sorted(r["tokens_per_query"] for r in rows)
    budget = costs[int(len(costs) * 0.7)]  # ~30% of the pipelines are over budget
    feasible = [r for r in rows if r["tokens_per_query"] <= budget]
    target = max(r["accuracy"] for r in feasible)
    tied = [r for r in feasible if abs(r["accuracy"] - target) < 1e-9]
    best = min(tied, key=lambda r: r["tokens_per_query"])
    best_key = _key(best["config"])
    sweep_distinct, sweep_full = _sweep_tokens(rows)
    sweep_measured = sum(r["new_tokens"] for r in rows) if args.cache is None else None
    print(f"sweep {sweep_s:.0f}s: budget {budget:.1f} tok/q, {len(feasible)} feasible, best accuracy "
          f"{target:.3f} ({len(tied)} pipelines), the best pipeline: {_label(best['config'])}")

    runs = []
    plan = [(s, "none") for s in SAMPLERS] + [("tpe", "median")]  # + the CLI default: TPE with median pruning
    for sampler, pruner in plan:
        for seed in SEEDS:
            r = run_study(space, sweep, sampler, seed, budget, target, best_key, pruner)
            runs.append(r)
            print(f"  {sampler:6s} {pruner:6s} seed {seed}: best accuracy after {r['trials_to_best_accuracy']}, "
                  f"best pipeline after {r['trials_to_best_pipeline']} trials ({r['seconds']}s); tokens "
                  f"{r['tokens_with_reuse']:,} with reuse / {r['tokens_without_reuse']:,} without")
    result = {
        "machine": f"{platform.machine()}, Python {platform.python_version()}, optuna {optuna.__version__}",
        "space": SPACE, "questions": N_QUESTIONS, "pipelines": len(rows), "budget_tokens_per_query": budget,
        "feasible_pipelines": len(feasible), "best_accuracy": target, "best_accuracy_pipelines": len(tied),
        "best_pipeline": _label(best["config"]), "max_trials": MAX_TRIALS, "seeds": list(SEEDS),
        "startup_trials": STARTUP_TRIALS,
        "sweep": {"seconds": round(sweep_s, 1), "tokens_generated": sweep_measured,
                  "tokens_distinct_samples": sweep_distinct, "tokens_without_reuse": sweep_full,
                  "fresh_cache": args.cache is None},
        "pipelines_table": sorted(({"pipeline": _label(r["config"]),
                                    "accuracy": r["accuracy"], "tokens_per_query": round(r["tokens_per_query"], 1)}
                                   for r in rows), key=lambda r: r["tokens_per_query"]),
        "summary": _summarize(runs), "runs": runs, "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "search.md").write_text(_markdown(result))
    print((RESULTS / "search.md").read_text())


def _summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(r["sampler"], r["pruner"])].append(r)
    out = []
    for (sampler, pruner), rs in groups.items():
        row: dict[str, Any] = {"sampler": sampler, "pruner": pruner}
        for what in ("best_accuracy", "best_pipeline"):
            got = [r[f"trials_to_{what}"] for r in rs]
            # a seed that never got there counts as MAX_TRIALS (a lower bound on its true count)
            censored = [g if g is not None else MAX_TRIALS for g in got]
            row[what] = {"reached": f"{sum(g is not None for g in got)}/{len(rs)}",
                         "mean": round(statistics.fmean(censored), 1), "median": statistics.median(censored),
                         "per_seed": got}
        row["mean_tokens_with_reuse"] = round(statistics.fmean(r["tokens_with_reuse"] for r in rs))
        row["mean_tokens_without_reuse"] = round(statistics.fmean(r["tokens_without_reuse"] for r in rs))
        row["mean_seconds"] = round(statistics.fmean(r["seconds"] for r in rs), 2)
        out.append(row)
    return out


def _markdown(r: dict[str, Any]) -> str:
    s = r["sweep"]
    generated = s["tokens_generated"] if s["tokens_generated"] is not None else s["tokens_distinct_samples"]
    saved = 1 - generated / max(1, s["tokens_without_reuse"])
    lines = [
        "# Search: trials to the best pipeline, and tokens saved by reuse", "",
        f"`python benchmarks/perf_search.py` ({r['machine']}; the embedded Gemma 3 270M on llama.cpp, "
        "2 shared CPU cores).", "",
        f"**Space**: samples {{1,2,4,6,8}} x temperature {{0.3,0.7,1.0}} x final {{vote, fuse}}: "
        f"{r['pipelines']} valid pipelines (3 more points are invalid, a fuse over one sample), completions stop "
        f"at the newline (max 6 tokens), on {r['questions']} dev questions of `arith` (few-shot one-digit sums, "
        f"sent as raw completion prompts). **Budget** {r['budget_tokens_per_query']:.0f} tokens/query (the 70th "
        f"percentile of the pipelines' costs): {r['feasible_pipelines']} pipelines are feasible; the best dev "
        f"accuracy among them, {r['best_accuracy']:.3f}, is reached by {r['best_accuracy_pipelines']}; "
        f"**the best pipeline** (the cheapest of those, what the search reports): {r['best_pipeline']}.", "",
        f"**Exhaustive sweep**, every pipeline once through one shared call cache: {s['seconds']:.0f} s"
        f"{'' if s['fresh_cache'] else ' (its call cache was warm from an earlier run)'}, "
        f"{generated:,} tokens generated; without reuse the same sweep costs {s['tokens_without_reuse']:,} tokens "
        f"({saved:.0%} saved). Distinct samples alone come to {s['tokens_distinct_samples']:,} tokens: identical "
        "requests inside one batch (the dev set repeats questions) are each generated, the cache only serves "
        "later batches.", "",
        f"**Studies**: the real `archon.search` loop (space, builder, estimate-skip, constraints, pruner) on the "
        f"recorded outcomes, TPE and GP with {r['startup_trials']} random startup trials (what `--trials 20` "
        f"gives), stopped once the best "
        f"pipeline has been evaluated or after {r['max_trials']} trials. Invalid, skipped (estimated over budget) "
        f"and repeated trials count. Seeds {r['seeds']}.", "",
        "| sampler | pruner | trials to the best accuracy: mean (median) | per seed | trials to the best "
        "pipeline: mean (median) | found | per seed | tokens with reuse | without reuse | sampler time/study |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["summary"]:
        a, b = x["best_accuracy"], x["best_pipeline"]
        lines.append(f"| {x['sampler']} | {x['pruner']} | {a['mean']} ({a['median']}) | {a['per_seed']} | "
                     f"{b['mean']} ({b['median']}) | {b['reached']} | {b['per_seed']} | "
                     f"{x['mean_tokens_with_reuse']:,} | {x['mean_tokens_without_reuse']:,} | {x['mean_seconds']} s |")
    lines += ["", f"`None`: not within {r['max_trials']} trials (counted as {r['max_trials']} in the means, a lower "
              "bound). Tokens are per study (every trial until it stopped), replayed from the sweep's recorded "
              "sample keys: *with reuse* pays each distinct sample once (the shared call cache), *without* pays "
              "every trial's pipeline in full. `grid` is Optuna's BruteForceSampler (no repeats), for reference.",
              "", "## The pipelines", "", "| pipeline | dev accuracy | tokens/query |", "|---|---|---|"]
    for p in r["pipelines_table"]:
        lines.append(f"| {p['pipeline']} | {p['accuracy']:.3f} | {p['tokens_per_query']} |")
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in r["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
