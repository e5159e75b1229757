"""The Python SDK: build or load a pipeline, run it on one query or a batch."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from archon.backends.cache import CallCache
from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.config import PipelineConfig, build_graph, check_runtime_profiles
from archon.data import ChatMessage, Query, QueryResult
from archon.engine.budget import Budget
from archon.engine.dataflow import DataflowExecutor
from archon.engine.executor import Executor
from archon.engine.graph import PipelineGraph
from archon.techniques.base import Defaults, Technique


def default_cache_path() -> Path:
    base = os.environ.get("ARCHON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "archon")
    return Path(base) / "calls.sqlite"


def make_router(registry: ModelRegistry, *, cache: bool | str | Path = True) -> ModelRouter:
    """A router with the call cache on (default path), off (``False``) or at a given path."""
    if cache is False:
        return ModelRouter(registry=registry)
    path = default_cache_path() if cache is True else Path(cache)
    return ModelRouter(registry=registry, cache=CallCache(path))


def as_query(item: str | Query | dict[str, Any], index: int = 0) -> Query:
    """Accepts a string, a Query, or a JSON object with ``id`` and ``prompt``/``question``/``messages``."""
    if isinstance(item, Query):
        return item
    if isinstance(item, str):
        return Query(id=f"q{index}", prompt=item)
    data = dict(item)
    qid = str(data.pop("id", f"q{index}"))
    prompt = data.pop("prompt", None) or data.pop("question", None)
    messages = data.pop("messages", None)
    if prompt is None and messages is None:
        raise ValueError(f"query {qid}: needs `prompt` (or `question`) or `messages`")
    msgs = [ChatMessage(**m) for m in messages] if messages else None
    return Query(id=qid, prompt=prompt, messages=msgs, metadata=data.pop("metadata", {}))


Scheduler = Literal["dataflow", "levels"]


class Pipeline:
    """A DAG of techniques plus the models, defaults and budget it runs with.

    Example::

        pipe = Pipeline.from_yaml("configs/quickstart.yaml")
        result = pipe.run("What is 17 + 25?")
        print(result.answer, result.usage["total_tokens"])

    or without YAML::

        from archon.techniques import Generate, Vote
        pipe = Pipeline({"sample": Generate(samples=8), "vote": Vote()}, {"vote": ["sample"]})
    """

    def __init__(self, nodes: dict[str, Technique], inputs: dict[str, list[str]] | None = None, *,
                 output: str | None = None, models: dict[str, ModelSpec] | None = None,
                 defaults: Defaults | None = None, budget: Budget | None = None, name: str = "pipeline",
                 router: ModelRouter | None = None, cache: bool | str | Path = True,
                 config: PipelineConfig | None = None, source: str | None = None,
                 scheduler: Scheduler = "dataflow", window: int | None = None) -> None:
        if scheduler not in ("dataflow", "levels"):
            raise ValueError(f"scheduler must be 'dataflow' or 'levels', got {scheduler!r}")
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.name = name
        self.scheduler: Scheduler = scheduler
        self.window = window
        self.graph = nodes if isinstance(nodes, PipelineGraph) else PipelineGraph(
            dict(nodes), {k: list(v) for k, v in (inputs or {}).items()}, output=output, source=source)
        self.registry = ModelRegistry(models or {})
        self.defaults = defaults or Defaults()
        self.budget = budget or Budget()
        self.config = config
        self._router = router
        self._cache = cache

    @classmethod
    def from_config(cls, config: PipelineConfig, *, source: str | None = None, root: Any = None,
                    model: str | None = None, **kwargs: Any) -> Pipeline:
        graph = build_graph(config, file=source, root=root, model_override=model)
        check_runtime_profiles(config, source)
        defaults = config.defaults.to_defaults()
        if model:
            defaults.model = model
        kwargs.setdefault("scheduler", config.scheduler)
        kwargs.setdefault("window", config.window)
        return cls(graph, models=config.models, defaults=defaults, budget=config.budget,  # type: ignore[arg-type]
                   name=config.name, config=config, source=source, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | Path, *, model: str | None = None, runtime_profiles: Sequence[str] = (),
                  **kwargs: Any) -> Pipeline:
        """Load and validate a YAML (or Archon JSON) config; nothing is called yet.

        ``runtime_profiles``: ``NAME=PATH`` items pointing models at runtime profile files."""
        from archon.config import apply_runtime_profiles
        from archon.importers import read_pipeline_config

        config, root = read_pipeline_config(path)  # .yaml as is; Archon .json converted on the fly
        if runtime_profiles:
            config = apply_runtime_profiles(config, list(runtime_profiles))
        return cls.from_config(config, source=str(path), root=root, model=model, **kwargs)

    @property
    def router(self) -> ModelRouter:
        if self._router is None:
            self._router = make_router(self.registry, cache=self._cache)
        return self._router

    def with_defaults(self, **changes: Any) -> Pipeline:
        """The same graph, budget and router with some defaults changed (a server's per-request
        ``max_tokens``/``temperature``/``seed``); nodes that set their own values keep them."""
        variant = Pipeline(self.graph, defaults=replace(self.defaults, **changes), budget=self.budget,
                           name=self.name, router=self.router, config=self.config)
        variant.registry = self.registry
        return variant

    def serve(self, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
              max_queue: int = 256, timeout_s: float | None = None) -> None:
        """Serve this pipeline behind an OpenAI-compatible API (blocks; see docs/serve.md)."""
        from archon.server import serve

        serve({self.name: self}, host=host, port=port, api_key=api_key, max_queue=max_queue, timeout_s=timeout_s)

    def models(self) -> list[str]:
        return sorted({m for t in self.graph.nodes.values() for m in t.models(self.defaults)})

    def run(self, query: str | Query | dict[str, Any]) -> QueryResult:
        return self.run_batch([query])[0]

    def run_batch(self, queries: Iterable[str | Query | dict[str, Any]], *,
                  on_result: Callable[[QueryResult], None] | None = None,
                  window: int | None = None) -> list[QueryResult]:
        """Runs all queries; ``on_result`` gets each result as soon as it exists.

        With ``scheduler="dataflow"`` (default) each query moves through the DAG on its own
        and ``window`` queries are in flight at once (default: the pipeline's ``window``, else
        chosen by the backend). With ``scheduler="levels"`` queries run level by level in
        chunks of ``window`` (default: all at once), one backend request per model per round.
        """
        batch = [as_query(q, i) for i, q in enumerate(queries)]
        if not batch:
            return []
        window = window or self.window
        if self.scheduler == "levels":
            executor = Executor(self.graph, self.router, self.defaults, self.budget)
            size = window or len(batch)
            out: list[QueryResult] = []
            for start in range(0, len(batch), size):
                out.extend(executor.run(batch[start:start + size], on_result=on_result))
            return out
        return self.executor(window=window).run(batch, on_result=on_result)

    def executor(self, *, window: int | None = None) -> DataflowExecutor:
        """A dataflow executor on this pipeline's graph, router, defaults and budget.

        For servers: ``ex = pipe.executor()`` then, on the event loop, ``await ex.submit(query)``
        per request (concurrent submits share backend batches), ``ex.cancel(query.id)`` when a
        client goes away and ``await ex.aclose()`` at shutdown.
        """
        return DataflowExecutor(self.graph, self.router, self.defaults, self.budget, window=window or self.window)

    async def arun(self, query: str | Query | dict[str, Any]) -> QueryResult:
        return (await self.arun_batch([query]))[0]

    async def arun_batch(self, queries: Sequence[str | Query | dict[str, Any]]) -> list[QueryResult]:
        """For async servers: runs the batch in a worker thread, leaving the event loop free."""
        return await asyncio.to_thread(self.run_batch, list(queries))

    def close(self) -> None:
        if self._router is not None:
            self._router.close()
            self._router = None

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
