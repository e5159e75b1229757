"""What the call cache saved: a router that also meters reuse.

The router records real spending in its ledger; a sample served from the call cache costs
nothing and is counted only in ``Usage.cache_hits``. A search needs both numbers: what the
trial *would* cost (its pipeline's price, which the budget is about) and what it actually
cost (what reuse across trials saved). ``MeteredRouter`` adds, per query, the usage the
cache saved:

* completion tokens: the cached samples' own ``completion_tokens`` (stored in the cache);
* prompt tokens: per cached sample, the prompt tokens per sample that request cost when it
  was generated in this process (the embedded engine counts the prompt once per sample),
  else the 4-characters-a-token estimate;
* calls: one per request that was served from the cache entirely;
* FLOPs: 2 x parameters x those tokens.

It can also record every generation request's sample keys and costs (``recorder``) so a
benchmark can replay "what would N trials cost with / without reuse" exactly.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from archon.backends.accounting import CallTag, flops_for
from archon.backends.cache import sample_key
from archon.backends.router import ModelRouter
from archon.backends.types import GenerationRequest, GenerationResult, Usage
from archon.engine.budget import estimate_prompt_tokens


@dataclass
class RequestRecord:
    """One generation request as a pipeline made it: its samples' keys and their cost."""

    model: str
    query: str
    prompt_tokens_per_sample: float
    samples: list[tuple[str, int]]  # (cache key, completion tokens)


@dataclass
class MeteredRouter(ModelRouter):
    saved_by_query: dict[str, Usage] = field(default_factory=lambda: defaultdict(Usage))
    saved_total: Usage = field(default_factory=Usage)
    recorder: list[RequestRecord] | None = None
    _prompt_memo: dict[str, float] = field(default_factory=dict, repr=False)
    _meter_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def wrap(cls, router: ModelRouter) -> MeteredRouter:
        """The same registry, cache, ledger and engines, metered."""
        return cls(registry=router.registry, cache=router.cache, ledger=router.ledger, factory=router.factory,
                   calls=router.calls, _backends=router._backends)

    def reset_saved(self) -> None:
        with self._meter_lock:
            self.saved_by_query = defaultdict(Usage)

    def generate(self, requests: Sequence[GenerationRequest],
                 tags: Sequence[CallTag] | None = None) -> list[GenerationResult]:
        results = super().generate(requests, tags)
        tag_list = list(tags) if tags is not None else [CallTag()] * len(requests)
        for request, tag, result in zip(requests, tag_list, results, strict=True):
            self._meter(request, tag, result)
        return results

    async def agenerate(self, requests: Sequence[GenerationRequest],
                        tags: Sequence[CallTag] | None = None) -> list[GenerationResult]:
        results = await super().agenerate(requests, tags)
        tag_list = list(tags) if tags is not None else [CallTag()] * len(requests)
        for request, tag, result in zip(requests, tag_list, results, strict=True):
            self._meter(request, tag, result)
        return results

    def _meter(self, request: GenerationRequest, tag: CallTag, result: GenerationResult) -> None:
        cached = [s for s in result.samples if s.cached]
        fresh = len(result.samples) - len(cached)
        prompt_key = sample_key(request, -1)
        with self._meter_lock:
            if fresh and result.usage.prompt_tokens:
                self._prompt_memo.setdefault(prompt_key, result.usage.prompt_tokens / fresh)
            per_sample = self._prompt_memo.get(prompt_key)
        if per_sample is None:
            per_sample = float(estimate_prompt_tokens(request))
        if self.recorder is not None:
            keys = [sample_key(request, request.sample_offset + i) for i in range(len(result.samples))]
            self.recorder.append(RequestRecord(request.model, tag.query, per_sample,
                                               [(k, s.completion_tokens) for k, s in zip(keys, result.samples,
                                                                                         strict=True)]))
        if not cached:
            return
        prompt = round(per_sample * len(cached))
        completion = sum(s.completion_tokens for s in cached)
        spec = self.registry.get(request.model)
        saved = Usage(prompt_tokens=prompt, completion_tokens=completion, calls=0 if fresh else 1,
                      flops=flops_for(spec.parameters, prompt + completion))
        with self._meter_lock:
            self.saved_by_query[tag.query] = self.saved_by_query[tag.query] + saved
            self.saved_total = self.saved_total + saved


def usage_from_dict(data: dict[str, int | float]) -> Usage:
    return Usage(prompt_tokens=int(data.get("prompt_tokens", 0)),
                 cached_prompt_tokens=int(data.get("cached_prompt_tokens", 0)),
                 completion_tokens=int(data.get("completion_tokens", 0)), calls=int(data.get("calls", 0)),
                 latency_s=float(data.get("latency_s", 0.0)), flops=float(data.get("flops", 0.0)),
                 cache_hits=int(data.get("cache_hits", 0)))
