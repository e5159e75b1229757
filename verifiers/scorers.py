"""Moved: gold-free scorers live in ``archon.scoring`` (graders stay in this package).

This module re-exports the scoring layer's public names for code written against the old
path; new code imports ``archon.scoring``. It loads no grader.
"""

from __future__ import annotations

from archon.scoring import (
    SCORERS,
    GenerativeRewardScorer,
    LLMJudgeScorer,
    LLMScorer,
    LogprobScorer,
    PairwiseJudgeScorer,
    RewardModelScorer,
    ScoreContext,
    ScoreProgram,
    Scorer,
    ScorerField,
    TokenProbPRM,
    is_missing,
    make_scorer,
    order_by_score,
    run_program,
    scorer_spec,
)
from archon.scoring.parsing import expected_digit_score, parse_preference, parse_score, parse_score_list

ScorerBase = LLMScorer

__all__ = [
    "SCORERS", "GenerativeRewardScorer", "LLMJudgeScorer", "LogprobScorer", "PairwiseJudgeScorer",
    "RewardModelScorer", "ScoreContext", "ScoreProgram", "Scorer", "ScorerBase", "ScorerField", "TokenProbPRM",
    "expected_digit_score", "is_missing", "make_scorer", "order_by_score", "parse_preference", "parse_score",
    "parse_score_list", "run_program", "scorer_spec",
]
