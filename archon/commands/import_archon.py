"""`archon import-archon`: Archon JSON architectures -> archon pipeline YAML.

Registered in ``archon.cli`` as ``app.command("import-archon")(import_archon_command)``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from archon.commands.console import fail
from archon.errors import ConfigError


@dataclass
class FileOutcome:
    source: Path
    status: str  # "converted", "with notes", "failed"
    differs: int = 0
    info: int = 0
    dest: str = ""
    error: str = ""
    notes: list[str] = field(default_factory=list)


def _destination(json_path: Path, root: Path, output: Path | None, single: bool) -> Path | None:
    """Where one file's YAML goes; None means stdout."""
    if output is None:
        return None if single else json_path.with_suffix(".yaml")
    if single and output.suffix.lower() in (".yaml", ".yml"):
        return output
    relative = json_path.relative_to(root) if not single else Path(json_path.name)
    return output / relative.with_suffix(".yaml")


def convert_file(json_path: Path, model_map: dict[str, str]) -> tuple[str, FileOutcome]:
    """(YAML text, outcome) for one file; the outcome says ``failed`` with the error instead."""
    from archon.importers.archon_json import convert_archon

    try:
        result = convert_archon(json_path, model_map=model_map)
    except ConfigError as exc:
        return "", FileOutcome(json_path, "failed", error=str(exc))
    try:
        result.validate()
    except ConfigError as exc:
        return "", FileOutcome(json_path, "failed",
                               error=f"{json_path}: the converted pipeline does not validate: {exc.message}"
                                     + (f" (at `{exc.path}`)" if exc.path else "")
                                     + (f"\n  hint: {exc.hint}" if exc.hint else ""))
    differs = len(result.differs)
    outcome = FileOutcome(json_path, "with notes" if differs else "converted", differs=differs,
                          info=len(result.notes) - differs,
                          notes=[f"{n.where()}: {n.message}" for n in result.differs])
    return result.to_yaml(), outcome


def import_archon_command(
    source: Annotated[Path, typer.Argument(help="an Archon JSON file, or a folder searched for *.json")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="folder for the YAML files (or a .yaml path for one file); default: stdout for one file, "
             "next to each JSON for a folder")] = None,
    model_map: Annotated[list[str] | None, typer.Option(
        "--model-map", metavar="SRC=DEST",
        help="rename a model (repeatable); '*=embedded' runs every component on the embedded model")] = None,
) -> None:
    """Convert Archon JSON architectures into archon pipeline YAML, with notes on what differs."""
    from archon.importers.archon_json import parse_model_map

    err = Console(stderr=True)
    try:
        mapping = parse_model_map(model_map or [])
    except ConfigError as exc:
        raise fail(exc) from None
    if source.is_dir():
        files = sorted(p for p in source.rglob("*.json") if p.is_file())
        if not files:
            err.print(f"[red]no .json files under {escape(str(source))}[/]")
            raise typer.Exit(2)
        single = False
    elif source.is_file():
        files = [source]
        single = True
    else:
        err.print(f"[bold red]error:[/] {escape(str(source))}: no such file or folder")
        raise typer.Exit(2)
    root = source if source.is_dir() else source.parent

    outcomes: list[FileOutcome] = []
    for path in files:
        text, outcome = convert_file(path, mapping)
        if outcome.status != "failed":
            dest = _destination(path, root, output, single)
            if dest is None:
                sys.stdout.write(text)
                sys.stdout.flush()
                outcome.dest = "stdout"
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text, encoding="utf-8")
                outcome.dest = str(dest)
        else:
            err.print(f"[bold red]error:[/] {escape(outcome.error)}", highlight=False, soft_wrap=True)
        if single and outcome.notes:
            err.print(f"[yellow]{len(outcome.notes)} behaviour difference(s) from Archon[/] (also in the YAML header):")
            for line in outcome.notes:
                err.print(f"  - {escape(line)}", highlight=False, soft_wrap=True)
        outcomes.append(outcome)

    table = Table(title="archon import-archon")
    for column in ("file", "status", "notes", "written to"):
        table.add_column(column, overflow="fold")
    style = {"converted": "green", "with notes": "yellow", "failed": "red"}
    for o in outcomes:
        label = o.source.relative_to(root) if o.source.is_relative_to(root) else o.source
        notes = "-" if o.status == "failed" else f"{o.differs} differ, {o.info} info"
        table.add_row(escape(str(label)), f"[{style[o.status]}]{o.status}[/]", notes, escape(o.dest or "-"))
    err.print(table)
    counts = {k: sum(o.status == k for o in outcomes) for k in style}
    err.print(f"{len(outcomes)} file{'s' if len(outcomes) != 1 else ''}: {counts['converted']} converted, "
              f"{counts['with notes']} converted with notes, {counts['failed']} failed", highlight=False)
    if counts["failed"]:
        raise typer.Exit(2)
