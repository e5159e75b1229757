"""DeepSeek-GRM's inference-time voting (Liu et al. 2025, "Inference-Time Scaling for
Generalist Reward Modeling"), as plain functions so the scoring layer can host it anywhere.

A GRM judgment is one sampled generation holding principles, a critique and a pointwise
score (1-10) for every response it was shown. With ``k`` judgments the paper's vote is the
**sum** of each response's scores over the samples, which widens the reward range k-fold and
breaks ties a single sample cannot. **Meta-RM guided voting** first scores every judgment with
a meta reward model and keeps only the ``k_meta`` best before summing.

Comparability: a judgment whose score list is incomplete cannot vote. When responses are
judged in several groups (prompts too long for all of them at once), groups may keep different
numbers of judgments, and raw sums would not compare across groups. Each group's sum is
therefore put on the scale of a common ``nominal`` count (the most judgments any group kept):
``total = nominal / kept * sum``, which *is* the paper's sum for a single group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from archon.scoring.values import NAN


@dataclass(frozen=True)
class Judgment:
    """One sampled GRM generation: its text and its scores (None: no complete score list)."""

    text: str
    scores: tuple[float, ...] | None


def keep_by_meta(judgments: Sequence[Judgment], meta: Sequence[float] | None, k_meta: int | None) -> list[int]:
    """Indices of the judgments that vote: every readable one, or with meta rewards the
    ``k_meta`` readable ones with the highest meta reward (earlier first on ties, ``nan`` last)."""
    readable = [i for i, j in enumerate(judgments) if j.scores is not None]
    if meta is None or k_meta is None:
        return readable

    def key(i: int) -> tuple[bool, float, int]:
        m = meta[i]
        missing = m is None or math.isnan(m)
        return missing, 0.0 if missing else -m, i

    return sorted(sorted(readable, key=key)[:k_meta])


def vote(judgments: Sequence[Judgment], count: int, nominal: int, keep: Sequence[int] | None = None,
         aggregate: str = "sum") -> list[float]:
    """Per response (``count`` of them): ``sum`` (the paper: the kept judgments' scores summed,
    on the scale of ``nominal`` judgments), ``mean``, or ``majority`` (share of kept judgments
    giving the response the top score). All ``nan`` when no judgment is kept."""
    kept = [judgments[i].scores for i in (keep if keep is not None else range(len(judgments)))]
    lists = [s for s in kept if s is not None and len(s) == count]
    if not lists:
        return [NAN] * count
    if aggregate == "mean":
        return [sum(s[r] for s in lists) / len(lists) for r in range(count)]
    if aggregate == "majority":
        return [sum(1.0 for s in lists if s[r] == max(s)) / len(lists) for r in range(count)]
    return [sum(s[r] for s in lists) * nominal / len(lists) for r in range(count)]


__all__ = ["Judgment", "keep_by_meta", "vote"]
