"""Any reward server over HTTP, with a configurable request body and response path.

For reward models behind something other than vLLM (a TGI / Triton / custom FastAPI
scorer): ``POST base_url`` with ``reward_body`` (the strings ``"{text}"``, ``"{messages}"``
and ``"{model}"`` replaced by the request's text, its chat messages and ``api_model``),
and the reward read at ``reward_path`` in the JSON answer (``rewards.0``,
``data.0.data``...): a number, a vector, or one row per step. Connection errors and 5xx
answers are retried ``max_retries`` times with backoff; a 4xx answer is a ``BackendError``.
The bearer token comes from ``api_key_env`` and is never logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from archon.backends.registry import ModelSpec
from archon.backends.types import GenerationRequest, GenerationResult, RewardRequest, RewardResult, ScoreRequest, Usage
from archon.errors import BackendError

DEFAULT_BODY: dict[str, Any] = {"model": "{model}", "input": "{text}"}


def fill(template: Any, values: dict[str, Any]) -> Any:
    """The template with every string equal to a placeholder replaced by its value."""
    if isinstance(template, str):
        return values.get(template, template)
    if isinstance(template, list):
        return [fill(x, values) for x in template]
    if isinstance(template, dict):
        return {k: fill(v, values) for k, v in template.items()}
    return template


def pick(data: Any, path: str) -> Any:
    """``data`` at a dotted path (numbers index lists)."""
    for part in [p for p in path.split(".") if p]:
        if isinstance(data, list) and part.lstrip("-").isdigit():
            data = data[int(part)]
        elif isinstance(data, dict) and part in data:
            data = data[part]
        else:
            raise KeyError(part)
    return data


def rows_of(value: Any) -> list[list[float]]:
    if isinstance(value, (int, float)):
        return [[float(value)]]
    if value and all(isinstance(x, (int, float)) for x in value):
        return [[float(x)] for x in value]  # one score per step
    return [[float(v) for v in row] for row in value]


class HTTPRewardBackend:
    """A ``Backend`` that only scores with a reward model (``task: reward``)."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        urls = spec.base_urls()
        if len(urls) != 1:
            raise BackendError(f"model {name!r}: backend `http_reward` needs one `base_url:` (the endpoint URL)")
        self.name, self.spec, self.url = name, spec, urls[0]
        self._headers: dict[str, str] = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise BackendError(f"model {name!r}: environment variable {spec.api_key_env} is not set")
            self._headers["Authorization"] = f"Bearer {key}"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        raise BackendError(f"model {self.name!r} is an http_reward model: it scores (scorer: reward_model), "
                           "it does not generate")

    def score(self, requests: Sequence[ScoreRequest]) -> list[Any]:
        raise BackendError(f"model {self.name!r} is an http_reward model: use it with scorer type reward_model")

    def reward(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        if not requests:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(self.spec.max_concurrency, len(requests)))) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: RewardRequest) -> RewardResult:
        import httpx

        messages = [{"role": m.role, "content": m.content} for m in request.messages or ()]
        text = request.prompt if request.prompt is not None else "\n\n".join(m["content"] for m in messages)
        body = fill(self.spec.reward_body or DEFAULT_BODY,
                    {"{text}": text, "{messages}": messages, "{model}": self.spec.api_model or self.name})
        last = ""
        started = time.perf_counter()
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                time.sleep(min(0.2 * 2 ** (attempt - 1), 4.0))
            try:
                resp = httpx.post(self.url, json=body, headers=self._headers, timeout=self.spec.timeout_s)
            except httpx.HTTPError as exc:
                last = f"connection failed ({exc})"
                continue
            if resp.status_code >= 500:
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                continue
            if resp.status_code >= 400:
                raise BackendError(f"model {self.name!r}: HTTP {resp.status_code} from {self.url}: {resp.text[:300]}")
            data = resp.json()
            try:
                rows = rows_of(pick(data, self.spec.reward_path))
            except (KeyError, IndexError, TypeError, ValueError):
                raise BackendError(f"model {self.name!r}: no reward at `reward_path: {self.spec.reward_path}` in "
                                   f"the answer from {self.url}: {resp.text[:200]}") from None
            usage = data.get("usage") if isinstance(data, dict) else None
            prompt_tokens = int(usage.get("prompt_tokens") or 0) if isinstance(usage, dict) else 0
            return RewardResult(rows, Usage(prompt_tokens=prompt_tokens, calls=1,
                                            latency_s=time.perf_counter() - started))
        raise BackendError(f"model {self.name!r}: no answer from {self.url} after {self.spec.max_retries + 1} "
                           f"attempts; last error: {last}")

    def close(self) -> None:
        pass
