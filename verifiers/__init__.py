"""Scoring final answers and running code: what tells a candidate is right.

``answers`` (extraction and normalisation, used by voting; never sees gold), ``math_grader``
(math-verify equivalence against gold), ``sandbox`` (run Python and unit tests, pass@k).
Importing this package is cheap: math-verify and sympy load on the first grade.
"""

from archon.verifiers.answers import extract_final_answer, normalize_answer
from archon.verifiers.math_grader import GRADER_VERSION, MathGrade, grade_math
from archon.verifiers.sandbox import SandboxResult, SandboxUnavailable, TestOutcome, pass_at_k, run_python, run_tests
from archon.verifiers.scorers import (
    SCORERS,
    GenerativeRewardScorer,
    LLMJudgeScorer,
    LogprobScorer,
    PairwiseJudgeScorer,
    RewardModelScorer,
    ScoreContext,
    Scorer,
    ScorerBase,
    make_scorer,
    register_scorer,
    run_program,
)

__all__ = [
    "GRADER_VERSION",
    "SCORERS",
    "GenerativeRewardScorer",
    "LLMJudgeScorer",
    "LogprobScorer",
    "MathGrade",
    "PairwiseJudgeScorer",
    "RewardModelScorer",
    "SandboxResult",
    "SandboxUnavailable",
    "ScoreContext",
    "Scorer",
    "ScorerBase",
    "TestOutcome",
    "extract_final_answer",
    "grade_math",
    "make_scorer",
    "normalize_answer",
    "pass_at_k",
    "register_scorer",
    "run_program",
    "run_python",
    "run_tests",
]
