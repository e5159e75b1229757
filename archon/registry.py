"""One registry type for everything YAML names: techniques, scorers, benchmarks.

A registry maps names (and aliases) to objects, resolves ``package.module:attr`` for
your own, and answers an unknown name with a ``ConfigError`` that suggests the closest
known one. It is a read-only ``Mapping`` to everyone but ``register``, so nobody edits a
module-level dict by hand: extensions call ``REGISTRY.register(name, obj)`` once.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from archon.errors import ConfigError

T = TypeVar("T")


def suggest(word: str, options: list[str]) -> str | None:
    """``did you mean `x`?`` for the closest option, or None."""
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean `{close[0]}`?" if close else None


def load_attr(path: str) -> object:
    """``package.module:attr`` -> the object; a ConfigError names what is missing."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{path!r} is not of the form package.module:attr")
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"cannot import {module!r} for {path!r}: {exc}",
                          hint="check the module is on PYTHONPATH (run from the folder holding it)") from None
    try:
        obj: object = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError:
        raise ConfigError(f"module {module!r} has no attribute {attr!r}") from None
    return obj


class Registry(Mapping[str, T], Generic[T]):
    """Names -> objects of one ``kind`` (e.g. "technique"), with aliases and ``module:attr``."""

    def __init__(self, kind: str, check: Callable[[object], bool] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._aliases: dict[str, str] = {}
        self._check = check

    # -- Mapping (read-only view of the canonical names) -------------------------------

    def __getitem__(self, name: str) -> T:
        return self._items[self._aliases.get(name, name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._aliases.get(name, name) in self._items

    # -- writing -----------------------------------------------------------------------

    def register(self, name: str, obj: T, *aliases: str, replace: bool = False) -> T:
        """Add ``obj`` under ``name`` (and ``aliases``); a clash is an error unless ``replace``."""
        if self._check is not None and not self._check(obj):
            raise TypeError(f"{obj!r} cannot be registered as a {self.kind}")
        for key in (name, *aliases):
            taken = key in self._items or key in self._aliases
            if taken and not replace and self._items.get(self._aliases.get(key, key)) is not obj:
                raise ValueError(f"{self.kind} {key!r} is already registered")
        self._items[name] = obj
        for alias in aliases:
            self._aliases[alias] = name
        return obj

    # -- reading -----------------------------------------------------------------------

    def names(self, *, aliases: bool = False) -> list[str]:
        return sorted({*self._items, *(self._aliases if aliases else ())})

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def resolve(self, name: str) -> T:
        """A registered name or alias, or ``package.module:attr``; else a did-you-mean ConfigError."""
        if name in self:
            return self[name]
        if ":" in name:
            obj = load_attr(name)
            if self._check is not None and not self._check(obj):
                raise ConfigError(f"{name} is not a {self.kind}")
            return obj  # type: ignore[return-value]
        known = self.names(aliases=True)
        raise ConfigError(f"unknown {self.kind} {name!r}",
                          hint=suggest(name, known) or f"known: {', '.join(known)}, or package.module:attr")


__all__ = ["Registry", "load_attr", "suggest"]
