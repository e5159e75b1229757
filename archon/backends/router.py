"""Sends batches to the right backend, through the call cache, into the ledger.

This is the only place that owns engines, caching and accounting, so techniques just
ask for generations (the DSPy habit) and the engine stays a pure scheduler.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from archon.backends.accounting import CallTag, UsageLedger, flops_for
from archon.backends.base import Backend
from archon.backends.cache import CallCache, result_key, sample_key
from archon.backends.registry import EMBEDDED_NAME, ModelRegistry, ModelSpec, resolve_embedded_path
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    RewardRequest,
    RewardResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    Usage,
)
from archon.errors import BackendError

BackendFactory = Callable[[str, ModelSpec], Backend]


def default_backend_factory(name: str, spec: ModelSpec) -> Backend:
    """Build the engine for a spec; heavy engines are imported only when used."""
    if spec.backend == "llama_cpp":
        from archon.backends.llama_cpp import LlamaCppBackend

        path = spec.path or (str(resolve_embedded_path()) if name == EMBEDDED_NAME else None)
        return LlamaCppBackend(name, spec.model_copy(update={"path": path}))
    if spec.backend == "vllm":
        from archon.backends.vllm_offline import VLLMBackend

        return VLLMBackend(name, spec)
    if spec.backend == "openai":
        from archon.backends.openai_compat import OpenAIBackend

        return OpenAIBackend(name, spec)
    if spec.backend == "http_reward":
        from archon.backends.http_reward import HTTPRewardBackend

        return HTTPRewardBackend(name, spec)
    raise ValueError(f"unknown backend kind {spec.backend!r}")


@dataclass
class BackendCall:
    """One real request to a backend: what benchmarks and tests count."""

    model: str
    kind: str
    requests: int
    samples: int


@dataclass
class ModelRouter:
    registry: ModelRegistry = field(default_factory=ModelRegistry)
    cache: CallCache | None = None
    ledger: UsageLedger = field(default_factory=UsageLedger)
    factory: BackendFactory = default_backend_factory
    calls: list[BackendCall] = field(default_factory=list)
    _backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, model: str) -> Backend:
        if model not in self._backends:
            self._backends[model] = self.factory(model, self.registry.get(model))
        return self._backends[model]

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
        if self.cache is not None:
            self.cache.close()

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest],
                 tags: Sequence[CallTag] | None = None) -> list[GenerationResult]:
        plan = self._plan_generate(requests, tags)

        def run_model(model: str) -> list[tuple[int, int, GenerationResult]]:
            batch = plan.batch(model)
            results = self.backend(model).generate([sub for _, _, sub in batch])
            return plan.answered(self, model, batch, results)

        return plan.finish(self, self._fan_out(list(plan.pending), run_model))

    async def agenerate(self, requests: Sequence[GenerationRequest],
                        tags: Sequence[CallTag] | None = None) -> list[GenerationResult]:
        """``generate`` for an event loop: cache and accounting as above, and backends with an
        ``agenerate`` (HTTP servers) are awaited natively, so many small batches can be in
        flight at once; others run in a worker thread."""
        plan = self._plan_generate(requests, tags)

        async def run_model(model: str) -> list[tuple[int, int, GenerationResult]]:
            batch = plan.batch(model)
            subs = [sub for _, _, sub in batch]
            backend = self.backend(model)
            agen = getattr(backend, "agenerate", None)
            results = await (agen(subs) if agen is not None else asyncio.to_thread(backend.generate, subs))
            return plan.answered(self, model, batch, results)

        chunks = await asyncio.gather(*(run_model(m) for m in plan.pending))
        return plan.finish(self, [item for chunk in chunks for item in chunk])

    def _plan_generate(self, requests: Sequence[GenerationRequest],
                       tags: Sequence[CallTag] | None) -> _GenerationPlan:
        tags = list(tags) if tags is not None else [CallTag()] * len(requests)
        if len(tags) != len(requests):
            raise ValueError("generate: one tag per request")
        for r in requests:
            self.registry.get(r.model)  # fail before any call on an unknown model
        plan = _GenerationPlan(list(requests), tags)
        identities = {m: self.registry.get(m).identity(m) for m in {r.model for r in requests}}
        plan.keys = [[sample_key(r, r.sample_offset + i, identities[r.model]) for i in range(r.n)] for r in requests]
        plan.samples = [{} for _ in requests]
        hits = [0] * len(requests)
        if self.cache is not None:
            found = self.cache.get_many([k for ks in plan.keys for k in ks])
            for idx, ks in enumerate(plan.keys):
                for j, k in enumerate(ks):
                    if k in found:
                        plan.samples[idx][j] = found[k]
                        hits[idx] += 1
        # What is still missing, as contiguous runs of sample indices.
        for idx, r in enumerate(requests):
            for start, count in missing_runs(r.n, plan.samples[idx]):
                plan.pending[r.model].append((idx, start, r.with_samples(count, r.sample_offset + start)))
        plan.usages = [Usage(cache_hits=h) for h in hits]
        return plan

    def score(self, requests: Sequence[ScoreRequest],
              tags: Sequence[CallTag] | None = None) -> list[ScoreResult]:
        """Log-probabilities of continuations: batched per model, call-cached, in the ledger."""
        return self._deterministic(requests, tags, "score",
                                   lambda r: {"logprobs": r.logprobs, "token_logprobs": r.token_logprobs},
                                   lambda d: ScoreResult(d["logprobs"], d["token_logprobs"]),
                                   lambda r: len(r.continuations))

    def reward(self, requests: Sequence[RewardRequest],
               tags: Sequence[CallTag] | None = None) -> list[RewardResult]:
        """Reward / pooling model outputs: batched per model, call-cached, in the ledger."""
        for r in requests:
            backend = self.backend(r.model)
            if not hasattr(backend, "reward"):
                raise BackendError(f"model {r.model!r} ({self.registry.get(r.model).backend}) cannot run a reward "
                                   "model; serve it with `backend: vllm` and `task: reward`, or an OpenAI-compatible "
                                   "vLLM server (`backend: openai`)")
        return self._deterministic(requests, tags, "reward", lambda r: {"rows": r.rows},
                                   lambda d: RewardResult(d["rows"]), lambda r: 1)

    def _deterministic(self, requests, tags, kind, encode, decode, count):  # type: ignore[no-untyped-def]
        """Score and reward calls: the same content always gives the same result, so the
        cache key is the request itself; hits cost nothing and are counted as hits."""
        tags = list(tags) if tags is not None else [CallTag()] * len(requests)
        if len(tags) != len(requests):
            raise ValueError(f"{kind}: one tag per request")
        out: list[Any] = [None] * len(requests)
        keys = [result_key(r) for r in requests]
        found = self.cache.get_results(keys) if self.cache is not None else {}
        by_model: dict[str, list[int]] = defaultdict(list)
        for idx, r in enumerate(requests):
            self.registry.get(r.model)
            if keys[idx] in found:
                out[idx] = decode(found[keys[idx]])
                out[idx].usage = Usage(cache_hits=1)
            else:
                by_model[r.model].append(idx)

        def run_model(model: str) -> list[tuple[int, Any]]:
            idxs = by_model[model]
            results = getattr(self.backend(model), kind)([requests[i] for i in idxs])
            self.calls.append(BackendCall(model, kind, len(idxs), sum(count(requests[i]) for i in idxs)))
            return list(zip(idxs, results, strict=True))

        fresh: list[tuple[str, Any]] = []
        for idx, res in self._fan_out(list(by_model), run_model):
            spec = self.registry.get(requests[idx].model)
            u = res.usage
            u.flops = flops_for(spec.parameters, u.prompt_tokens - u.cached_prompt_tokens + u.completion_tokens)
            out[idx] = res
            fresh.append((keys[idx], encode(res)))
        if self.cache is not None:
            self.cache.put_results(fresh)
        for idx, r in enumerate(requests):
            self.ledger.record(tags[idx], r.model, out[idx].usage)
        return out

    async def ascore(self, requests: Sequence[ScoreRequest],
                     tags: Sequence[CallTag] | None = None) -> list[ScoreResult]:
        """``score`` for an event loop (the dataflow executor's streamed path), in a worker thread."""
        return await asyncio.to_thread(self.score, requests, tags)

    @staticmethod
    def _fan_out(models: list[str], fn):  # type: ignore[no-untyped-def]
        """One backend request per model; different models run side by side."""
        if len(models) <= 1:
            return [item for m in models for item in fn(m)]
        with ThreadPoolExecutor(max_workers=len(models)) as pool:
            return [item for chunk in pool.map(fn, models) for item in chunk]


def missing_runs(n: int, have: dict[int, Sample]) -> list[tuple[int, int]]:
    """Contiguous ``(start, count)`` runs of sample indices below ``n`` not in ``have``."""
    runs: list[tuple[int, int]] = []
    j = 0
    while j < n:
        if j in have:
            j += 1
            continue
        start = j
        while j < n and j not in have:
            j += 1
        runs.append((start, j - start))
    return runs



@dataclass
class _GenerationPlan:
    """One ``generate`` call between its cache lookup and its bookkeeping, so the sync and
    the async paths share everything but how the backend is called."""

    requests: list[GenerationRequest]
    tags: list[CallTag]
    keys: list[list[str]] = field(default_factory=list)
    samples: list[dict[int, Sample]] = field(default_factory=list)
    usages: list[Usage] = field(default_factory=list)
    pending: dict[str, list[tuple[int, int, GenerationRequest]]] = field(default_factory=lambda: defaultdict(list))

    def batch(self, model: str) -> list[tuple[int, int, GenerationRequest]]:
        """The model's missing samples, ordered so shared prefixes are adjacent."""
        return sorted(self.pending[model], key=lambda item: item[2].prefix_text())

    @staticmethod
    def answered(router: ModelRouter, model: str, batch: list[tuple[int, int, GenerationRequest]],
                 results: list[GenerationResult]) -> list[tuple[int, int, GenerationResult]]:
        router.calls.append(BackendCall(model, "generate", len(batch), sum(s.n for _, _, s in batch)))
        return [(idx, start, res) for (idx, start, _), res in zip(batch, results, strict=True)]

    def finish(self, router: ModelRouter, answers: list[tuple[int, int, GenerationResult]]) -> list[GenerationResult]:
        to_cache: list[tuple[str, Sample]] = []
        for idx, start, res in answers:
            spec = router.registry.get(self.requests[idx].model)
            for j, sample in enumerate(res.samples):
                self.samples[idx][start + j] = sample
                to_cache.append((self.keys[idx][start + j], sample))
            u = res.usage
            u.flops = flops_for(spec.parameters, u.prompt_tokens - u.cached_prompt_tokens + u.completion_tokens)
            self.usages[idx] = self.usages[idx] + u
        if router.cache is not None:
            router.cache.put_many(to_cache)
        out = []
        for idx, r in enumerate(self.requests):
            router.ledger.record(self.tags[idx], r.model, self.usages[idx])
            out.append(GenerationResult([self.samples[idx][j] for j in range(r.n)], self.usages[idx]))
        return out
