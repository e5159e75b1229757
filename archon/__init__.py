"""archon: inference-time scaling as a DAG of techniques, under a compute budget."""

from archon.backends.registry import ModelSpec
from archon.backends.types import GenerationRequest, GenerationResult, Message, ScoreRequest, Usage
from archon.data import Candidate, Query, QueryResult
from archon.engine.budget import Budget
from archon.errors import ArchonError, BackendError, BudgetError, ConfigError
from archon.pipeline import Pipeline
from archon.techniques.base import Defaults

__version__ = "0.1.0"

__all__ = [
    "ArchonError", "BackendError", "Budget", "BudgetError", "Candidate", "ConfigError", "Defaults",
    "GenerationRequest", "GenerationResult", "Message", "ModelSpec", "Pipeline", "Query", "QueryResult",
    "ScoreRequest", "Usage", "__version__",
]
