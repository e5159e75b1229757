"""Gold-free scoring: one ``Scorer`` interface for judges, reward models and likelihoods.

Graders (gold-aware: math equivalence, hidden tests, MT-Bench grading) live in
``archon.benchmarks`` / ``archon.verifiers`` and are never imported from here; a test
enforces it. See ``archon.scoring.base`` for the interface.
"""

from archon.scoring.base import (
    SCORERS,
    ModelRequest,
    ModelResult,
    OptionalScorerField,
    ScoreContext,
    ScoreProgram,
    Scorer,
    ScorerField,
    make_scorer,
    run_program,
    samples_of,
    score_key,
    scorer_spec,
)
from archon.scoring.grm import GenerativeRewardScorer
from archon.scoring.judge import LLMJudgeScorer
from archon.scoring.llm import LLMScorer
from archon.scoring.logprob import LogprobScorer
from archon.scoring.pairwise import PairwiseJudgeScorer
from archon.scoring.reward_model import RewardModelScorer
from archon.scoring.token_prm import TokenProbPRM
from archon.scoring.values import NAN, aggregate, is_missing, order_by_score

__all__ = [
    "NAN", "SCORERS", "GenerativeRewardScorer", "LLMJudgeScorer", "LLMScorer", "LogprobScorer", "ModelRequest",
    "ModelResult", "OptionalScorerField", "PairwiseJudgeScorer", "RewardModelScorer", "ScoreContext",
    "ScoreProgram", "Scorer", "ScorerField", "TokenProbPRM", "aggregate", "is_missing", "make_scorer",
    "order_by_score", "run_program", "samples_of", "score_key", "scorer_spec",
]
