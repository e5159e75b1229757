"""Cost estimates before anything is spent: the shapes techniques and scorers report.

Each technique estimates its own calls (``Technique.estimate``), each scorer its own
(``Scorer.estimate``); the search's cost model (``archon.search.cost``) only adds them up
along the DAG. Tokens are per query; a candidate is assumed as long as its node's
``max_tokens``; prompt tokens are counted per sample, as the embedded engine reports them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Flow:
    """Candidates reaching (or leaving) a node for one query: how many, and tokens each."""

    count: float = 0.0
    length: float = 0.0


@dataclass(frozen=True)
class CallCost:
    """Estimated calls to one model: prompt and completion tokens, backend requests."""

    model: str
    prompt: float
    completion: float
    calls: float


@dataclass(frozen=True)
class CostInputs:
    """What an estimate may use: the question's tokens, the inputs, the node's model and
    token limit (its own or the pipeline's)."""

    question: float
    inputs: Flow
    model: str
    max_tokens: float


__all__ = ["CallCost", "CostInputs", "Flow"]
