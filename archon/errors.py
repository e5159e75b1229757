"""Errors a user can act on. Each names what is wrong, where, and how to fix it."""

from __future__ import annotations


class ArchonError(Exception):
    """Base of every error archon raises on purpose."""


class ConfigError(ArchonError):
    """A pipeline or model configuration is invalid.

    ``file`` and ``path`` (a YAML path such as ``nodes[2].top_k``) locate the field;
    ``hint`` says what to write instead.
    """

    def __init__(self, message: str, *, file: str | None = None, path: str | None = None,
                 line: int | None = None, hint: str | None = None) -> None:
        self.message = message
        self.file = file
        self.path = path
        self.line = line
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        """One message; every part is cut to a bounded length (a value quoted from a hostile
        file must not turn into megabytes of error text)."""
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "")
        if self.path:
            where = f"{where} at `{self.path}`" if where else f"at `{self.path}`"
        text = f"{where}: {_cut(self.message)}" if where else _cut(self.message)
        if self.hint:
            text += f"\n  hint: {_cut(self.hint)}"
        return text


def _cut(text: str, limit: int = 1000) -> str:
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit:,} more characters)"


class BackendError(ArchonError):
    """A model call failed for a reason retries cannot fix (server down, unknown model)."""


class BudgetError(ArchonError):
    """A compute budget is too small for the pipeline to produce any answer."""
