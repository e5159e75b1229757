"""Plain numbers: a missing score, ordering by score, and step aggregation.

A score that could not be computed (a skipped call, an unparsable reply) is ``nan``;
it sorts last and aggregation skips it. These are the only copies of these helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

NAN = float("nan")

Aggregation = Literal["last", "min", "prod", "mean"]
AGGREGATIONS: tuple[str, ...] = ("last", "min", "prod", "mean")


def is_missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def order_by_score(scores: Sequence[float | None]) -> list[int]:
    """Indices best first; missing last; ties keep the input order."""
    def key(i: int) -> tuple[bool, float, int]:
        v = scores[i]
        missing = is_missing(v)
        return missing, 0.0 if missing else -float(v), i  # type: ignore[arg-type]

    return sorted(range(len(scores)), key=key)


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else NAN


def aggregate(step_scores: Sequence[float | None], how: str) -> float:
    """One score from per-step scores (missing steps skipped; nan when none is known).

    ``last``: the newest step's score (Snell et al. 2024's PRM "last" for beam search);
    ``min``: the weakest step (Lightman et al. 2023); ``prod``: the product, the
    probability that every step is right if steps were independent (Lightman et al.'s
    solution score; search-and-learn's ``prod``); ``mean``: the average.
    """
    values = [float(v) for v in step_scores if not is_missing(v)]  # type: ignore[arg-type]
    if not values:
        return NAN
    if how == "last":
        return values[-1]
    if how == "min":
        return min(values)
    if how == "prod":
        return math.prod(values)
    if how == "mean":
        return mean(values)
    raise ValueError(f"unknown aggregation {how!r} (use one of {', '.join(AGGREGATIONS)})")


def two_way(logp_a: float, logp_b: float) -> float:
    """P(a) / (P(a) + P(b)) from two log-probabilities, computed stably."""
    m = max(logp_a, logp_b)
    pa, pb = math.exp(logp_a - m), math.exp(logp_b - m)
    return pa / (pa + pb)


__all__ = ["AGGREGATIONS", "NAN", "Aggregation", "aggregate", "is_missing", "mean", "order_by_score", "two_way"]
