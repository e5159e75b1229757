"""Usage ledger: every call's cost, tagged so it rolls up per node, query, model and run.

Budgets, traces, leaderboards and the search all read from here; nothing else counts tokens.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from archon.backends.runtime_profile import ProfileLookup, accelerators
from archon.backends.types import Usage


@dataclass(frozen=True)
class CallTag:
    """Who asked for a call. Empty fields mean "outside a pipeline" (a direct SDK call)."""

    node: str = ""
    query: str = ""


@dataclass
class LedgerEntry:
    tag: CallTag
    model: str
    usage: Usage


def flops_for(parameters: float | None, tokens: int) -> float:
    """Forward-pass FLOPs, the usual 2 x N x tokens estimate; 0 when N is unknown."""
    return 2.0 * parameters * tokens if parameters else 0.0


def add_idealized(usage: Usage, lookup: ProfileLookup, spec: object) -> None:
    """Fill one backend request's idealized runtime and cost from its token counts.

    A request is costed as one query in isolation, as the paper does: its uncached prompt
    tokens are encoded once, the output tokens of all its samples are generated after it,
    whatever batching the engine really did. Unknown cached tokens (``None``, servers that
    do not report them) count as 0 cached: every prompt token is encoded.
    """
    profile = lookup.profile
    if profile is None:
        usage.idealized_unknown_calls += 1
        return
    cached = usage.cached_prompt_tokens or 0
    seconds = profile.predict(max(usage.prompt_tokens - cached, 0), cached, usage.completion_tokens)
    cost = seconds * accelerators(spec)
    price = getattr(spec, "price_per_accelerator_hour", None)
    usage.idealized_runtime_s += seconds
    usage.idealized_cost += cost
    usage.idealized_price += cost / 3600.0 * price if price else 0.0


@dataclass
class UsageLedger:
    entries: list[LedgerEntry] = field(default_factory=list)
    _per_query: dict[str, Usage] = field(default_factory=lambda: defaultdict(Usage), repr=False)
    _per_query_node: dict[tuple[str, str], Usage] = field(default_factory=lambda: defaultdict(Usage), repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, tag: CallTag, model: str, usage: Usage) -> None:
        with self._lock:
            self.entries.append(LedgerEntry(tag, model, usage))
            self._per_query[tag.query] = self._per_query[tag.query] + usage
            key = (tag.query, tag.node)
            self._per_query_node[key] = self._per_query_node[key] + usage

    def total(self) -> Usage:
        return sum((e.usage for e in self.entries), Usage())

    def _rollup(self, key) -> dict[str, Usage]:  # type: ignore[no-untyped-def]
        out: dict[str, Usage] = defaultdict(Usage)
        for e in self.entries:
            out[key(e)] = out[key(e)] + e.usage
        return dict(out)

    def by_node(self) -> dict[str, Usage]:
        return self._rollup(lambda e: e.tag.node)

    def by_query(self) -> dict[str, Usage]:
        return self._rollup(lambda e: e.tag.query)

    def by_model(self) -> dict[str, Usage]:
        return self._rollup(lambda e: e.model)

    def for_query(self, query: str) -> Usage:
        return self._per_query.get(query, Usage())

    def for_query_node(self, query: str, node: str) -> Usage:
        return self._per_query_node.get((query, node), Usage())
