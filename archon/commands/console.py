"""The one place every command prints an error: consoles and :func:`fail`.

Everything an error quotes comes from the user's files (a node id, a value, a path), so it
is escaped before Rich sees it: a value such as ``[/oops]`` must neither crash the printer
(``MarkupError``) nor vanish (``[a, b]`` parsed as a style tag).
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from archon.errors import ArchonError, BackendError, BudgetError, ConfigError

err = Console(stderr=True)
out = Console()


def error_kind(exc: ArchonError) -> str:
    if isinstance(exc, ConfigError):
        return "config error"
    if isinstance(exc, BackendError):
        return "backend error"
    if isinstance(exc, BudgetError):
        return "budget error"
    return "error"


def print_error(exc: ArchonError | str, kind: str | None = None) -> None:
    """``kind: message`` on stderr, the message escaped and printed verbatim."""
    label = kind or (error_kind(exc) if isinstance(exc, ArchonError) else "error")
    err.print(f"[bold red]{escape(label)}:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)


def fail(exc: ArchonError) -> typer.Exit:
    """Print ``exc`` and return the exit to raise: 2 for bad input (config, budget), 3 otherwise."""
    print_error(exc)
    return typer.Exit(2 if isinstance(exc, ConfigError | BudgetError) else 3)
