"""What a search leaves behind: the winner as a runnable YAML, the Pareto front, plots, a report.

``out/``
    ``best.yaml``            the best feasible pipeline (``archon run out/best.yaml ...``)
    ``pareto/*.yaml``        every pipeline on the accuracy / tokens-per-query front
    ``pareto.md``            the front as a table
    ``trials.md``            every trial: choices, status, accuracy, cost
    ``plots/*.html``         Optuna's history, parameter importances, Pareto front (needs plotly)
    ``report.md``            the summary; ``report.json`` the same as data
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from optuna.trial import FrozenTrial, TrialState

from .runner import Search, best_trial, feasible_trials, full_fidelity, pareto_front


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.{digits}f}"
    return str(value)


class _Dumper(yaml.SafeDumper):
    """Short strings with newlines (stop strings) as "\\n" rather than folded blocks."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = '"' if "\n" in data and len(data) <= 40 else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def pipeline_yaml(trial: FrozenTrial, name: str, n_dev: int, note: str = "") -> str:
    config = dict(trial.user_attrs["config"])
    config["name"] = name
    acc = trial.user_attrs.get("accuracy")
    cost = trial.user_attrs.get("cost") or {}
    config["description"] = (f"found by archon search (trial {trial.number}): dev accuracy {acc:.3f} on {n_dev} "
                             f"questions, {cost.get('tokens', 0):,.0f} tokens/query, "
                             f"{cost.get('calls', 0):.1f} calls/query")
    header = f"# {trial.user_attrs.get('label', '')}\n" + (f"# {note}\n" if note else "")
    return header + yaml.dump(config, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def trial_row(t: FrozenTrial) -> dict[str, Any]:
    a = t.user_attrs
    cost = a.get("cost") or {}
    return {
        "number": t.number,
        "state": t.state.name.lower(),
        "status": a.get("status", "failed" if t.state == TrialState.FAIL else "running"),
        "pipeline": a.get("label", ""),
        "params": t.params,
        "accuracy": a.get("accuracy"),
        "questions": a.get("n_queries", 0),
        "tokens_per_query": cost.get("tokens"),
        "prompt_tokens_per_query": cost.get("prompt_tokens"),
        "cached_prompt_tokens_per_query": cost.get("cached_prompt_tokens"),
        "completion_tokens_per_query": cost.get("completion_tokens"),
        "calls_per_query": cost.get("calls"),
        "flops_per_query": cost.get("flops"),
        "idealized_runtime_per_query_s": cost.get("runtime"),
        "estimated_idealized_runtime_per_query_s": (a.get("estimate") or {}).get("runtime"),
        "estimated_tokens_per_query": (a.get("estimate") or {}).get("tokens"),
        "feasible": a.get("feasible"),
        "constraints": dict(t.constraints),
        "new_tokens": (a.get("reuse") or {}).get("new_tokens", 0),
        "saved_tokens": (a.get("reuse") or {}).get("saved_tokens", 0),
        "reason": a.get("reason"),
    }


def summarize(search: Search, *, holdout: dict[str, Any] | None = None) -> dict[str, Any]:
    study = search.study
    trials = study.get_trials(deepcopy=False)
    n_dev = len(search.dev)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    status = [t.user_attrs.get("status") for t in finished]
    best = best_trial(trials, n_dev)
    front = pareto_front(trials, n_dev)
    new = sum(int((t.user_attrs.get("reuse") or {}).get("new_tokens", 0)) for t in trials)
    saved = sum(int((t.user_attrs.get("reuse") or {}).get("saved_tokens", 0)) for t in trials)
    return {
        "study": study.study_name,
        "space": search.space.name,
        "multi_objective": search.settings.multi_objective,
        "sampler": search.settings.sampler,
        "pruner": "none" if search.settings.multi_objective else search.settings.pruner,
        "budget_per_query": search.settings.budget.limits(),
        "dev_questions": n_dev,
        "holdout_questions": len(search.holdout),
        "fidelity_steps": search.steps,
        "trials": {
            "target": search.settings.trials,
            "finished": len(finished),
            "evaluated": status.count("evaluated"),
            "feasible": len(feasible_trials(trials, n_dev)),
            "infeasible": sum(1 for t in finished if t.user_attrs.get("feasible") is False),
            "skipped_by_estimate": status.count("skipped"),
            "stopped_over_budget": status.count("over_budget"),
            "pruned_by_pruner": status.count("pruned"),
            "invalid": status.count("invalid"),
            "failed": sum(1 for t in trials if t.state == TrialState.FAIL),
        },
        "best": None if best is None else {
            "trial": best.number, "pipeline": best.user_attrs.get("label"), "params": best.params,
            "dev_accuracy": best.user_attrs["accuracy"], "cost_per_query": best.user_attrs["cost"],
            "config": best.user_attrs["config"],
        },
        "holdout": holdout,
        "pareto": [{"trial": t.number, "pipeline": t.user_attrs.get("label"), "accuracy": t.user_attrs["accuracy"],
                    "tokens_per_query": t.user_attrs["cost"]["tokens"],
                    "calls_per_query": t.user_attrs["cost"]["calls"],
                    "idealized_runtime_per_query_s": t.user_attrs["cost"].get("runtime")} for t in front],
        "reuse": {
            "tokens_generated": new,
            "tokens_saved_by_cache": saved,
            "tokens_without_reuse": new + saved,
            "saving": (saved / (new + saved)) if new + saved else 0.0,
        },
        "notes": list(dict.fromkeys(search.notes)),
    }


def write_outputs(search: Search, out: Path, *, holdout: dict[str, Any] | None = None,
                  plots: bool = True, extra_notes: Sequence[str] = ()) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report = summarize(search, holdout=holdout)
    report["notes"] += list(extra_notes)
    trials = search.study.get_trials(deepcopy=False)
    n_dev = len(search.dev)
    by_number = {t.number: t for t in trials}

    best_path = out / "best.yaml"
    if report["best"] is not None:
        best = by_number[report["best"]["trial"]]
        best_path.write_text(pipeline_yaml(best, f"{search.space.name}-best", n_dev,
                                           note=f"run it: archon run {best_path} --input 'your question'"))
        report["best"]["yaml"] = str(best_path)
    elif best_path.exists():
        best_path.unlink()

    pareto_dir = out / "pareto"
    pareto_dir.mkdir(exist_ok=True)
    for old in pareto_dir.glob("*.yaml"):
        old.unlink()
    for i, item in enumerate(report["pareto"]):
        t = by_number[item["trial"]]
        path = pareto_dir / f"{i:02d}_trial{t.number}.yaml"
        path.write_text(pipeline_yaml(t, f"{search.space.name}-pareto-{i}", n_dev))
        item["yaml"] = str(path)
    (out / "pareto.md").write_text(_pareto_md(report))
    (out / "trials.md").write_text(_trials_md([trial_row(t) for t in trials]))
    report["plots"] = write_plots(search, out / "plots", report["notes"]) if plots else {}
    (out / "report.json").write_text(json.dumps({**report, "trials_detail": [trial_row(t) for t in trials]},
                                                indent=2, default=str))
    (out / "report.md").write_text(_report_md(report))
    return report


def _pareto_md(report: dict[str, Any]) -> str:
    lines = ["# Pareto front: dev accuracy vs tokens per query", "",
             "Feasible trials evaluated on every dev question that no other such trial beats on both.", "",
             "| # | trial | accuracy | tokens/query | calls/query | idealized s/query | pipeline | file |",
             "|---|---|---|---|---|---|---|---|"]
    for i, p in enumerate(report["pareto"]):
        lines.append(f"| {i} | {p['trial']} | {p['accuracy']:.3f} | {p['tokens_per_query']:,.0f} | "
                     f"{p['calls_per_query']:.1f} | {_fmt(p.get('idealized_runtime_per_query_s'), 2)} | "
                     f"{p['pipeline']} | {Path(p.get('yaml', '')).name} |")
    if not report["pareto"]:
        lines.append("| - | no feasible trial evaluated on the whole dev set yet | | | | | | |")
    return "\n".join(lines) + "\n"


def _trials_md(rows: list[dict[str, Any]]) -> str:
    lines = ["# Trials", "", "| trial | status | accuracy | questions | tokens/query (est.) | calls/query | "
             "idealized s/query (est.) | new tokens | reused tokens | pipeline | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['number']} | {r['status']} | {_fmt(r['accuracy'], 3)} | {r['questions']} | "
                     f"{_fmt(r['tokens_per_query'], 0)} ({_fmt(r['estimated_tokens_per_query'], 0)}) | "
                     f"{_fmt(r['calls_per_query'])} | {_fmt(r['idealized_runtime_per_query_s'], 2)} "
                     f"({_fmt(r['estimated_idealized_runtime_per_query_s'], 2)}) | {r['new_tokens']:,} | "
                     f"{r['saved_tokens']:,} | "
                     f"{r['pipeline']} | {(r['reason'] or '').replace('|', '/')[:120]} |")
    return "\n".join(lines) + "\n"


def _report_md(r: dict[str, Any]) -> str:
    t = r["trials"]
    budget = ", ".join(f"{k} {v:,.0f}" for k, v in r["budget_per_query"].items()) or "none"
    objective = "multi-objective (accuracy vs tokens/query)" if r["multi_objective"] else "single objective (accuracy)"
    lines = [f"# archon search: {r['study']}", "",
             f"- space `{r['space']}`, {objective}, sampler `{r['sampler']}`, pruner `{r['pruner']}`",
             f"- budget per query: {budget}",
             f"- questions: {r['dev_questions']} dev (fidelity steps {r['fidelity_steps']}), "
             f"{r['holdout_questions']} held out", "",
             "## Trials", "",
             f"{t['finished']} finished of {t['target']} targeted: {t['evaluated']} evaluated, "
             f"{t['feasible']} feasible on the whole dev set, {t['infeasible']} infeasible "
             f"({t['skipped_by_estimate']} skipped on the estimate, "
             f"{t['stopped_over_budget']} stopped over budget), {t['pruned_by_pruner']} pruned by the pruner, "
             f"{t['invalid']} invalid combinations pruned, {t['failed']} failed.", ""]
    b = r["best"]
    lines += ["## Best pipeline", ""]
    if b is None:
        lines.append("No feasible trial yet: raise the budget or the number of trials.")
    else:
        c = b["cost_per_query"]
        lines += [f"Trial {b['trial']}: `{b['pipeline']}`", "",
                  f"- dev accuracy: **{b['dev_accuracy']:.3f}**",
                  f"- per query: {c['tokens']:,.0f} tokens ({c['prompt_tokens']:,.0f} prompt, of which "
                  f"{c['cached_prompt_tokens']:,.0f} prefix-cached; {c['completion_tokens']:,.0f} completion), "
                  f"{c['calls']:.1f} calls, {c['flops']:.3g} FLOPs",
                  f"- config: `{b.get('yaml', 'best.yaml')}`"]
        h = r.get("holdout")
        if h:
            lines.append(f"- held-out accuracy: **{h['accuracy']:.3f}** on {h['questions']} questions it never saw"
                         + (f" ({h['tokens_per_query']:,.0f} tokens/query)" if h.get("tokens_per_query") else "")
                         + (f"; run directory `{h['run_dir']}`" if h.get("run_dir") else ""))
    u = r["reuse"]
    lines += ["", "## Reuse", "",
              f"Trials share one call cache. Tokens generated: **{u['tokens_generated']:,}**; without reuse the "
              f"same trials would have cost {u['tokens_without_reuse']:,} ({u['tokens_saved_by_cache']:,} saved, "
              f"{u['saving']:.0%}).", "",
              "## Pareto front", "", "See `pareto.md` (and `pareto/*.yaml`).", ""]
    if r.get("plots"):
        lines += ["## Plots", ""] + [f"- {k}: `{v}`" for k, v in r["plots"].items()] + [""]
    if r["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in r["notes"]] + [""]
    return "\n".join(lines)


def write_plots(search: Search, folder: Path, notes: list[str]) -> dict[str, str]:
    """Optuna's plots as HTML; skipped with a note when plotly is missing."""
    try:
        import plotly  # noqa: F401
        from optuna import visualization as vis
    except ImportError:
        notes.append("plots skipped: optuna.visualization needs plotly (pip install plotly)")
        return {}
    study = search.study
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    multi = search.settings.multi_objective
    jobs: list[tuple[str, Callable[[], Any]]] = []
    if multi:
        jobs.append(("history", lambda: vis.plot_optimization_history(study, target=lambda t: t.values[0],
                                                                      target_name="accuracy")))
        jobs.append(("pareto_front", lambda: vis.plot_pareto_front(study, target_names=["accuracy", "tokens/query"])))
        jobs.append(("param_importances", lambda: vis.plot_param_importances(
            study, target=lambda t: t.values[0], target_name="accuracy")))
    else:
        jobs.append(("history", lambda: vis.plot_optimization_history(study, target_name="accuracy")))
        jobs.append(("param_importances", lambda: vis.plot_param_importances(study, target_name="accuracy")))
        if len(search.steps) > 1:
            jobs.append(("intermediate_values", lambda: vis.plot_intermediate_values(study)))
        jobs.append(("pareto_front", lambda: _pareto_scatter(search)))
    for name, make in jobs:
        if name == "param_importances" and len(complete) < 2:
            notes.append("param importances need at least 2 completed trials; plot skipped")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make()
        except Exception as exc:  # plots are a convenience; never fail a finished search on them
            notes.append(f"plot {name} skipped: {type(exc).__name__}: {exc}")
            continue
        path = folder / f"{name}.html"
        fig.write_html(str(path), include_plotlyjs="cdn")
        made[name] = str(path)
    return made


def _pareto_scatter(search: Search) -> Any:
    import plotly.graph_objects as go

    trials = search.study.get_trials(deepcopy=False)
    n_dev = len(search.dev)
    evaluated = [t for t in trials if full_fidelity(t, n_dev)]
    front = {t.number for t in pareto_front(trials, n_dev)}
    fig = go.Figure()
    for label, pick in (("feasible", lambda t: t.user_attrs.get("feasible", True) and t.number not in front),
                        ("infeasible", lambda t: t.user_attrs.get("feasible") is False),
                        ("Pareto front", lambda t: t.number in front)):
        pts = [t for t in evaluated if pick(t)]
        fig.add_trace(go.Scatter(x=[t.user_attrs["cost"]["tokens"] for t in pts],
                                 y=[t.user_attrs["accuracy"] for t in pts], mode="markers", name=label,
                                 text=[f"trial {t.number}: {t.user_attrs.get('label', '')}" for t in pts]))
    for limit in [search.settings.budget.tokens] if search.settings.budget.tokens else []:
        fig.add_vline(x=limit, line_dash="dash", annotation_text="token budget")
    fig.update_layout(title="Dev accuracy vs tokens per query", xaxis_title="tokens per query",
                      yaxis_title="dev accuracy")
    return fig
