"""Evaluating one pipeline config on some questions: the search's only contact with models.

The search core takes an ``EvaluateFn``: ``(config, items) -> EvalOutcome`` (a score per
question, the real usage per question, and what the call cache saved per question).
``PipelineEvaluator`` is the real one: it builds the pipeline on the study's one shared
``MeteredRouter`` (so every trial reads and fills the same call cache) and grades each
answer with the benchmark's grader. Tests inject scripted backends through it, or replace
it altogether.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from archon.backends.types import Usage
from archon.config import PipelineConfig
from archon.data import Query, QueryResult

from .metering import MeteredRouter, usage_from_dict


@dataclass
class SearchItem:
    """One question of the search's data: what the pipeline sees, and what grades it."""

    id: str
    query: Query
    gold: Any = None
    record: Any = None  # the benchmark's own item, for its grader


Grader = Callable[[SearchItem, QueryResult], float]


@dataclass
class EvalOutcome:
    scores: list[float]
    usage: list[Usage]  # real spending per question
    saved: list[Usage] = field(default_factory=list)  # what the call cache saved per question
    errors: int = 0

    def __post_init__(self) -> None:
        if not self.saved:
            self.saved = [Usage() for _ in self.scores]


class EvaluateFn(Protocol):
    def __call__(self, config: PipelineConfig, items: Sequence[SearchItem]) -> EvalOutcome: ...


class PipelineEvaluator:
    """Runs a config on items with the shared router and grades every answer."""

    def __init__(self, router: MeteredRouter, grade: Grader, *, batch_size: int = 32) -> None:
        self.router = router
        self.grade = grade
        self.batch_size = max(1, batch_size)

    def __call__(self, config: PipelineConfig, items: Sequence[SearchItem]) -> EvalOutcome:
        from archon.pipeline import Pipeline

        pipe = Pipeline.from_config(config, router=self.router)  # never closed: the router is the study's
        scores: list[float] = []
        usage: list[Usage] = []
        saved: list[Usage] = []
        errors = 0
        for start in range(0, len(items), self.batch_size):
            chunk = list(items[start:start + self.batch_size])
            self.router.reset_saved()
            results = pipe.run_batch([it.query for it in chunk])
            for item, result in zip(chunk, results, strict=True):
                if result.error:
                    errors += 1
                scores.append(float(self.grade(item, result)) if not result.error else 0.0)
                usage.append(usage_from_dict(result.usage))
                saved.append(self.router.saved_by_query.get(item.query.id, Usage()))
        return EvalOutcome(scores, usage, saved, errors)


def split_items(items: Sequence[SearchItem], holdout: float, seed: int) -> tuple[list[SearchItem], list[SearchItem]]:
    """Deterministic dev / held-out split: shuffle by ``seed``, the last ``holdout`` share is held out.

    The dev list is in shuffled order, so its first quarter (the first fidelity rung) is a
    random quarter. At least one item stays on each side when there are two or more.
    """
    order = sorted(items, key=lambda it: it.id)
    random.Random(seed).shuffle(order)
    if holdout <= 0 or len(order) < 2:
        return order, []
    n_hold = max(1, round(len(order) * holdout))
    n_hold = min(n_hold, len(order) - 1)
    return order[:-n_hold], order[-n_hold:]
