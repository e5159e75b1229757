"""Architecture search over pipelines with Optuna, under a measured per-query compute budget.

Example::

    from archon.backends.cache import CallCache
    from archon.search import Budgets, Search, SearchSettings, load_space
    from archon.search.bench import BenchmarkEvaluator, load_benchmark
    from archon.search.evaluation import split_items
    from archon.search.metering import MeteredRouter

    space = load_space("configs/search/tiny_space.yaml")
    data = load_benchmark("arith", limit=12)
    dev, held = split_items(data.items, holdout=0.25, seed=0)
    search = Search(space, BenchmarkEvaluator(MeteredRouter(cache=CallCache("calls.sqlite")), data), dev,
                    SearchSettings(trials=8, budget=Budgets(tokens=400)), holdout=held)
    study = search.optimize()

See docs/search.md; the CLI is ``archon search``.
"""

from .build import InvalidPipeline, build_config, describe, enumerate_space
from .cost import CostEstimate, estimate_cost
from .evaluation import EvalOutcome, PipelineEvaluator, SearchItem, split_items
from .metering import MeteredRouter
from .runner import Budgets, Search, SearchSettings, best_trial, pareto_front
from .space import SearchSpace, load_space, parse_space

__all__ = [
    "Budgets", "CostEstimate", "EvalOutcome", "InvalidPipeline", "MeteredRouter", "PipelineEvaluator", "Search",
    "SearchItem", "SearchSettings", "SearchSpace", "best_trial", "build_config", "describe", "enumerate_space",
    "estimate_cost", "load_space", "pareto_front", "parse_space", "split_items",
]
