"""Prompt templates: one jinja2 file per technique, overridable per node.

Templates put what is shared first (instructions, the question) and what varies last
(candidates), so consecutive requests share a long prefix and the prefix cache hits.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from archon.errors import ConfigError

_PACKAGE_DIR = Path(__file__).parent / "prompts"


@lru_cache(maxsize=1)
def _package_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_PACKAGE_DIR)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


@lru_cache(maxsize=64)
def _file_template(path: str) -> jinja2.Template:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"prompt template file not found: {path}",
                          hint="give a path to a jinja2 file, relative to the working directory")
    return jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True).from_string(p.read_text())


def render(name: str, override: str | None = None, **variables: Any) -> str:
    """Render the packaged template ``name`` (e.g. ``fuse.j2``) or the user's override file."""
    template = _file_template(override) if override else _package_env().get_template(name)
    try:
        return template.render(**variables).strip()
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"prompt template {override or name}: {exc.message}",
                          hint=f"variables available: {', '.join(sorted(variables))}") from None


@lru_cache(maxsize=64)
def template_tokens(name: str | None) -> int:
    """Rough token count of a packaged template's fixed text (4 characters a token), for cost
    estimates; 0 for no template."""
    if not name:
        return 0
    try:
        return len((_PACKAGE_DIR / name).read_text()) // 4
    except OSError:
        return 60


def available() -> list[str]:
    return sorted(p.name for p in _PACKAGE_DIR.glob("*.j2"))
