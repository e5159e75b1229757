"""`archon leaderboard`: compare evaluation runs (accuracy vs compute, Pareto front).

Registered in ``archon.cli`` as ``app.command("leaderboard")(leaderboard_command)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from archon.commands.console import print_error
from archon.errors import ArchonError, ConfigError

err = Console(stderr=True)
out = Console()


def leaderboard_command(
    runs: Annotated[list[Path], typer.Argument(help="run directories written by `archon eval --out`")],
    sort: Annotated[str, typer.Option("--sort", "-s", help="accuracy, coverage, tokens, calls, latency, flops "
                                      "or name")] = "accuracy",
    format: Annotated[str, typer.Option("--format", "-f", help="table, markdown, csv, json or html")] = "table",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the table here instead of "
                                                "stdout")] = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="PNG: accuracy vs tokens/query, Pareto front "
                                              "marked (needs matplotlib)")] = None,
    html_file: Annotated[Path | None, typer.Option("--html", help="a static HTML page: tables and the "
                                                   "embedded plot")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="refuse runs on different benchmarks, subsets "
                                         "or graders instead of grouping them")] = False,
) -> None:
    """Rank evaluation runs: score ± 95% CI, coverage, tokens, calls, latency, FLOPs per query."""
    from archon.benchmarks import leaderboard as lb

    try:
        if format not in lb.FORMATS:
            raise ConfigError(f"unknown format {format!r}", hint=f"one of: {', '.join(lb.FORMATS)}")
        groups = lb.load_groups(runs, sort=sort, strict=strict)
        png = lb.plot_png(groups) if (plot or html_file or format == "html") else None
        if plot and png is not None:
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot.write_bytes(png)
            err.print(f"[dim]wrote {plot}[/]")
        if html_file:
            html_file.parent.mkdir(parents=True, exist_ok=True)
            html_file.write_text(lb.render_html(groups, png))
            err.print(f"[dim]wrote {html_file}[/]")
    except ArchonError as exc:
        print_error(exc)
        raise typer.Exit(2) from None
    if format == "table" and output is None:
        for table in lb.rich_tables(groups):
            out.print(table)
        return
    text = {"table": lb.render_markdown, "markdown": lb.render_markdown, "csv": lb.render_csv,
            "json": lb.render_json}.get(format, lambda g: lb.render_html(g, png))(groups)
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n")
        err.print(f"[dim]wrote {output}[/]")
    else:
        print(text)
