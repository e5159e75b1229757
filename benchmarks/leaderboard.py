"""Leaderboards of evaluation runs: groups, the accuracy/compute Pareto front, renderers.

Runs are only ranked together when they answered the same questions and were graded the
same way: same benchmark (name, parameters, file hash), same subset (split, limit,
seed, ids) and same grader name and version. Other runs go into separate groups, each
saying how it differs from the first group (``strict=True`` refuses instead).

The Pareto front of a group is the set of runs no other run beats on both accuracy
(higher) and tokens per query (lower).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.benchmarks.evaluate import EvalSummary, load_summary
from archon.errors import ConfigError

SORT_KEYS = {
    # name: (attribute, descending)
    "accuracy": ("accuracy", True),
    "coverage": ("coverage", True),
    "tokens": ("tokens_per_query", False),
    "calls": ("calls_per_query", False),
    "latency": ("latency_per_query_s", False),
    "flops": ("flops_per_query", False),
    "name": ("label", False),
}
FORMATS = ("table", "markdown", "csv", "json", "html")


@dataclass
class Entry:
    summary: EvalSummary
    label: str
    pareto: bool = False

    @property
    def accuracy(self) -> float | None:
        return self.summary.accuracy

    def value(self, attr: str) -> Any:
        return self.label if attr == "label" else getattr(self.summary, attr)


@dataclass
class Group:
    key: tuple[str, str, str]
    title: str
    reason: str = ""  # how it differs from the first group
    entries: list[Entry] = field(default_factory=list)

    @property
    def metric(self) -> str:
        return self.entries[0].summary.metric if self.entries else "accuracy"


def _subset_key(s: EvalSummary) -> dict[str, Any]:
    return {k: s.subset.get(k) for k in ("split", "limit", "seed", "ids_sha")}


def group_key(s: EvalSummary) -> tuple[str, str, str]:
    return (json.dumps(s.benchmark_spec, sort_keys=True), json.dumps(_subset_key(s), sort_keys=True),
            json.dumps([s.grader.get("name"), s.grader.get("version")]))


def _subset_text(s: EvalSummary) -> str:
    sub = s.subset
    parts = [f"split {sub.get('split')}", f"n={sub.get('n')}"]
    if sub.get("limit") is not None:
        parts.append(f"limit {sub.get('limit')}")
    if sub.get("seed") is not None:
        parts.append(f"seed {sub.get('seed')}")
    return ", ".join(parts)


def _title(s: EvalSummary) -> str:
    return (f"{s.benchmark} ({_subset_text(s)}) · grader {s.grader.get('name')} "
            f"{s.grader.get('version')} · {s.metric}")


def _difference(a: EvalSummary, b: EvalSummary) -> str:
    why = []
    if a.benchmark_spec != b.benchmark_spec:
        why.append(f"benchmark {b.benchmark} vs {a.benchmark}")
    if _subset_key(a) != _subset_key(b):
        why.append(f"subset ({_subset_text(b)}) vs ({_subset_text(a)})")
    if (a.grader.get("name"), a.grader.get("version")) != (b.grader.get("name"), b.grader.get("version")):
        why.append(f"grader {b.grader.get('name')} {b.grader.get('version')} vs "
                   f"{a.grader.get('name')} {a.grader.get('version')}")
    return "different " + "; ".join(why) if why else ""


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """``points`` are ``(cost, accuracy)``; True where no other point is at least as good on
    both and strictly better on one. NaN points are never on the front."""
    flags = []
    for i, (c, a) in enumerate(points):
        if math.isnan(c) or math.isnan(a):
            flags.append(False)
            continue
        dominated = any(
            j != i and not (math.isnan(c2) or math.isnan(a2)) and c2 <= c and a2 >= a and (c2 < c or a2 > a)
            for j, (c2, a2) in enumerate(points))
        flags.append(not dominated)
    return flags


def build_groups(summaries: Sequence[EvalSummary], sort: str = "accuracy", strict: bool = False) -> list[Group]:
    if sort not in SORT_KEYS:
        raise ConfigError(f"unknown sort key {sort!r}", hint=f"one of: {', '.join(SORT_KEYS)}")
    groups: dict[tuple[str, str, str], Group] = {}
    for s in summaries:
        k = group_key(s)
        if k not in groups:
            groups[k] = Group(k, _title(s))
        groups[k].entries.append(Entry(s, s.name))
    ordered = list(groups.values())
    if ordered:
        first = ordered[0].entries[0].summary
        for g in ordered[1:]:
            g.reason = _difference(first, g.entries[0].summary)
    if strict and len(ordered) > 1:
        reasons = "; ".join(f"{g.entries[0].summary.run_dir}: {g.reason}" for g in ordered[1:])
        raise ConfigError(f"runs are not comparable: {reasons}",
                          hint="drop --strict to show them in separate groups")
    attr, descending = SORT_KEYS[sort]
    for g in ordered:
        names = [e.label for e in g.entries]
        for e in g.entries:  # same pipeline name twice: tell them apart by directory
            if names.count(e.label) > 1:
                e.label = f"{e.label} ({Path(e.summary.run_dir).name})"
        pts = [(e.summary.tokens_per_query, e.accuracy if e.accuracy is not None else math.nan) for e in g.entries]
        for e, flag in zip(g.entries, pareto_front(pts), strict=True):
            e.pareto = flag

        def sort_key(e: Entry, attr: str = attr, descending: bool = descending) -> tuple[int, Any]:
            v = e.value(attr)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                return (1, 0)
            return (0, -v if descending and not isinstance(v, str) else v)

        g.entries.sort(key=sort_key)
    return ordered


def load_groups(run_dirs: Sequence[str | Path], sort: str = "accuracy", strict: bool = False) -> list[Group]:
    return build_groups([load_summary(d) for d in run_dirs], sort=sort, strict=strict)


# -- cells -------------------------------------------------------------------------------------

def fmt_score(s: EvalSummary) -> str:
    if s.accuracy is None:
        return "-"
    if s.metric == "judge_score":
        return f"{s.accuracy:.2f} [{s.ci_low:.2f}, {s.ci_high:.2f}]"
    return f"{100 * s.accuracy:.1f}% [{100 * (s.ci_low or 0):.1f}, {100 * (s.ci_high or 0):.1f}]"


def _fmt_num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e6:
        return f"{x:.3g}"
    return f"{x:,.1f}" if abs(x) < 100 else f"{x:,.0f}"


COLUMNS = ("pipeline", "score [95% CI]", "coverage", "tokens/q", "calls/q", "latency/q", "FLOPs/q", "n", "pareto")


def cells(e: Entry) -> list[str]:
    s = e.summary
    n = f"{s.n}/{s.n_total}" if not s.complete else str(s.n)
    return [
        e.label,
        fmt_score(s),
        f"{100 * s.coverage:.1f}%" if s.coverage is not None else "-",
        _fmt_num(s.tokens_per_query),
        _fmt_num(s.calls_per_query),
        f"{s.latency_per_query_s:.2f}s",
        f"{s.flops_per_query:.3g}",
        n + (f" ({s.errors} err)" if s.errors else ""),
        "*" if e.pareto else "",
    ]


def record(e: Entry, g: Group) -> dict[str, Any]:
    s = e.summary
    return {
        "group": g.title, "pipeline": e.label, "run_dir": s.run_dir, "benchmark": s.benchmark,
        "metric": s.metric, "accuracy": s.accuracy, "ci_low": s.ci_low, "ci_high": s.ci_high,
        "coverage": s.coverage, "pass_at_k": s.pass_at_k, "tokens_per_query": s.tokens_per_query,
        "calls_per_query": s.calls_per_query, "latency_per_query_s": s.latency_per_query_s,
        "flops_per_query": s.flops_per_query, "n": s.n, "n_total": s.n_total, "errors": s.errors,
        "pareto": e.pareto, "config_hash": s.pipeline.get("config_hash"),
        "grader": f"{s.grader.get('name')} {s.grader.get('version')}",
    }


# -- renderers ----------------------------------------------------------------------------------

def render_markdown(groups: Sequence[Group]) -> str:
    out = []
    for g in groups:
        out.append(f"### {g.title}\n")
        if g.reason:
            out.append(f"_Separate group: {g.reason}._\n")
        out.append("| " + " | ".join(COLUMNS) + " |")
        out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(COLUMNS))) + "|")
        for e in g.entries:
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells(e)) + " |")
        out.append("")
    return "\n".join(out)


def render_csv(groups: Sequence[Group]) -> str:
    buf = io.StringIO()
    rows = [record(e, g) for g in groups for e in g.entries]
    fields = list(rows[0]) if rows else ["group", "pipeline"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, dict) else v for k, v in r.items()})
    return buf.getvalue()


def render_json(groups: Sequence[Group]) -> str:
    data = [{"group": g.title, "reason": g.reason, "metric": g.metric,
             "runs": [{**record(e, g), "summary": e.summary.model_dump(mode="json")} for e in g.entries]}
            for g in groups]
    return json.dumps(data, indent=2, default=str)


def rich_tables(groups: Sequence[Group]) -> list[Any]:
    from rich.markup import escape
    from rich.table import Table

    tables = []
    for g in groups:  # names come from configs: escaped, or Rich would read them as markup
        table = Table(*COLUMNS, title=escape(g.title),
                      caption=escape(f"separate group: {g.reason}") if g.reason else None, title_justify="left")
        for e in g.entries:
            table.add_row(*(escape(str(c)) for c in cells(e)), style="bold" if e.pareto else None)
        tables.append(table)
    return tables


def plot_png(groups: Sequence[Group]) -> bytes:
    """Accuracy against tokens per query, one panel per group, the Pareto front marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("plotting needs matplotlib", hint="pip install 'archon[plot]'") from None
    groups = [g for g in groups if any(e.accuracy is not None for e in g.entries)] or list(groups)
    fig, axes = plt.subplots(1, max(1, len(groups)), figsize=(6.5 * max(1, len(groups)), 4.8), squeeze=False)
    for ax, g in zip(axes[0], groups, strict=False):
        judge = g.metric == "judge_score"
        scale = 1.0 if judge else 100.0
        pts = [e for e in g.entries if e.accuracy is not None]
        for e in pts:
            s = e.summary
            y = s.accuracy * scale  # type: ignore[operator]
            lo = s.ci_low if s.ci_low is not None else s.accuracy
            hi = s.ci_high if s.ci_high is not None else s.accuracy
            yerr = [[max(0.0, y - lo * scale)], [max(0.0, hi * scale - y)]]  # type: ignore[operator]
            ax.errorbar([max(s.tokens_per_query, 1e-9)], [y], yerr=yerr, fmt="o", capsize=3,
                        color="tab:red" if e.pareto else "tab:blue", alpha=0.9)
            ax.annotate(e.label, (max(s.tokens_per_query, 1e-9), y), textcoords="offset points", xytext=(5, 5),
                        fontsize=8)
        front = sorted((e for e in pts if e.pareto), key=lambda e: e.summary.tokens_per_query)
        if front:
            ax.step([e.summary.tokens_per_query for e in front], [e.accuracy * scale for e in front],  # type: ignore[operator]
                    where="post", color="tab:red", linestyle="--", linewidth=1, marker="o",
                    label="Pareto front (red)")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_ylim((0.5, 10.5) if judge else (-3, 103))
        xs = [e.summary.tokens_per_query for e in pts if e.summary.tokens_per_query > 0]
        if xs and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel("tokens per query")
        ax.set_ylabel("mean judge rating (1-10)" if judge else "accuracy (%)")
        ax.set_title("\n".join(textwrap.wrap(g.title, 70)), fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}
tr.pareto td{font-weight:600;background:#fff4f0}.reason{color:#a33}.meta{color:#666;font-size:90%}"""


def render_html(groups: Sequence[Group], plot: bytes | None = None, title: str = "archon leaderboard") -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for g in groups:
        parts.append(f"<h2>{html.escape(g.title)}</h2>")
        if g.reason:
            parts.append(f"<p class='reason'>Separate group: {html.escape(g.reason)}</p>")
        parts.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in COLUMNS) + "</tr>")
        for e in g.entries:
            cls = " class='pareto'" if e.pareto else ""
            parts.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells(e)) + "</tr>")
        parts.append("</table>")
        metas = sorted({(e.summary.git_revision or "-", e.summary.archon_version or "-") for e in g.entries})
        parts.append("<p class='meta'>" + "; ".join(f"git {html.escape(r)}, archon {html.escape(v)}"
                                                   for r, v in metas) + "</p>")
    if plot:
        data = base64.b64encode(plot).decode()
        parts.append(f"<h2>Accuracy vs tokens per query</h2><img alt='accuracy vs tokens per query' "
                     f"src='data:image/png;base64,{data}'>")
    parts.append("<p class='meta'>Pareto front (bold, red): no other run is both more accurate and cheaper. "
                 "CI: 95% Wilson interval (judge scores: normal approximation).</p></body></html>")
    return "\n".join(parts)
