"""In-process llama.cpp engine (llama-cpp-python): the embedded default.

llama.cpp has no ``n``: samples are drawn in a loop on the same ``Llama`` object, which
keeps the prompt's KV state, so the shared prefix is evaluated once per request and the
next request that shares it reuses it too. Requests are ordered by prefix upstream.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

from archon.backends.chat_format import GEMMA_STOPS, render_gemma
from archon.backends.registry import ModelSpec
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    Usage,
)
from archon.errors import BackendError


class LlamaCppBackend:
    def __init__(self, name: str, spec: ModelSpec) -> None:
        if not spec.path or not os.path.exists(spec.path):
            raise BackendError(
                f"model {name!r}: GGUF file not found at {spec.path!r}; set `path:` to an existing .gguf file")
        self.name = name
        self.spec = spec
        self._plain: Any = None
        self._with_logits: Any = None
        self._lock = threading.Lock()

    def _load(self, logits_all: bool) -> Any:
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise BackendError(
                "llama-cpp-python is not installed; run: "
                'CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir llama-cpp-python') from exc
        with _quiet_native_stderr():
            return Llama(
                model_path=self.spec.path,
                n_ctx=self.spec.n_ctx,
                n_threads=self.spec.n_threads or max(1, os.cpu_count() or 1),
                logits_all=logits_all,
                verbose=False,
            )

    def _engine(self, logits_all: bool) -> Any:
        # Logprobs need logits for every position, which slows prefill ~3x; keep a
        # separate engine for those calls so plain sampling stays fast.
        if logits_all:
            if self._with_logits is None:
                self._with_logits = self._load(True)
            return self._with_logits
        if self._plain is None:
            self._plain = self._load(False)
        return self._plain

    def render(self, request: GenerationRequest | ScoreRequest) -> str:
        if request.prompt is not None:
            return request.prompt + request.assistant_prefix
        assert request.messages is not None
        return render_gemma(request.messages, request.assistant_prefix)

    def _stops(self, request: GenerationRequest) -> list[str]:
        stops = list(request.stop)
        if request.messages is not None:
            stops += [s for s in GEMMA_STOPS if s not in stops]
        return stops

    @staticmethod
    def _cached_prefix(llm: Any, tokens: list[int]) -> int:
        have = list(llm._input_ids[: llm.n_tokens])
        n = 0
        for a, b in zip(have, tokens, strict=False):
            if a != b:
                break
            n += 1
        return min(n, len(tokens) - 1)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        with self._lock:
            return [self._generate_one(r) for r in requests]

    def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        llm = self._engine(request.logprobs)
        text = self.render(request)
        tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
        if len(tokens) + request.max_tokens > self.spec.n_ctx:
            raise BackendError(
                f"model {self.name!r}: prompt of {len(tokens)} tokens + max_tokens {request.max_tokens} "
                f"exceeds n_ctx {self.spec.n_ctx}; raise `n_ctx` or shorten the prompt")
        usage = Usage(calls=1)
        samples: list[Sample] = []
        start = time.perf_counter()
        for i in range(request.n):
            cached = self._cached_prefix(llm, tokens)
            seed = (request.seed + request.sample_offset + i) if request.seed is not None \
                else random.randrange(2**31)
            out = llm.create_completion(
                prompt=tokens,
                max_tokens=request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                stop=self._stops(request) or None,
                seed=seed,
            )
            choice = out["choices"][0]
            completion_tokens = int(out["usage"]["completion_tokens"])
            usage.prompt_tokens += len(tokens)
            usage.cached_prompt_tokens += cached
            usage.completion_tokens += completion_tokens
            logprobs = None
            if request.logprobs:
                # llama-cpp-python's own logprobs sort the whole 262k vocabulary in Python
                # for every token (~0.7 s/token here); re-reading the logits of the
                # completion with numpy costs one cached forward pass instead.
                cont = llm.tokenize(choice["text"].encode(), add_bos=False, special=True)
                logprobs = self._token_logprobs(llm, tokens, cont, request.top_logprobs)
            samples.append(Sample(
                text=choice["text"],
                finish_reason=choice.get("finish_reason") or "stop",
                logprobs=logprobs,
                completion_tokens=completion_tokens,
            ))
        usage.latency_s = time.perf_counter() - start
        return GenerationResult(samples, usage)

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        with self._lock:
            return [self._score_one(r) for r in requests]

    def _token_logprobs(self, llm: Any, prompt: list[int], cont: list[int], top: int) -> list[TokenLogprob]:
        """Log-probabilities of ``cont`` after ``prompt``, reusing the cached prefix."""
        import numpy as np

        if not cont:
            return []
        full = prompt + cont
        cached = self._cached_prefix(llm, full)
        llm.n_tokens = cached
        llm.eval(full[cached:])
        logits = np.asarray(llm.scores[len(prompt) - 1: len(full) - 1], dtype=np.float64)
        peak = logits.max(axis=1, keepdims=True)
        logp = logits - (np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)) + peak)
        out = []
        for k, tok in enumerate(cont):
            alternatives: dict[str, float] = {}
            if top > 0:
                best = np.argpartition(-logp[k], top)[:top]
                for t in best[np.argsort(-logp[k][best])]:
                    alternatives[self._piece(llm, int(t))] = float(logp[k, t])
            out.append(TokenLogprob(self._piece(llm, tok), float(logp[k, tok]), alternatives))
        return out

    @staticmethod
    def _piece(llm: Any, token: int) -> str:
        return llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _score_one(self, request: ScoreRequest) -> ScoreResult:
        llm = self._engine(True)
        start = time.perf_counter()
        prompt_tokens = llm.tokenize(self.render(request).encode(), add_bos=True, special=True)
        usage = Usage(calls=1)
        sums: list[float] = []
        per_token: list[list[float]] = []
        for continuation in request.continuations:
            cont = llm.tokenize(continuation.encode(), add_bos=False, special=False)
            cached = self._cached_prefix(llm, prompt_tokens + cont)
            values = [t.logprob for t in self._token_logprobs(llm, prompt_tokens, cont, 0)]
            usage.prompt_tokens += len(prompt_tokens) + len(cont)
            usage.cached_prompt_tokens += cached
            sums.append(sum(values))
            per_token.append(values)
        usage.latency_s = time.perf_counter() - start
        return ScoreResult(sums, per_token, usage)

    def close(self) -> None:
        for llm in (self._plain, self._with_logits):
            if llm is not None and hasattr(llm, "close"):
                llm.close()
        self._plain = self._with_logits = None


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence what llama.cpp's C code prints while a model loads.

    ``verbose=False`` stops llama-cpp-python's own messages, but the C library still writes
    lines such as ``llama_kv_cache_iswa: using full-size SWA cache`` straight to file
    descriptor 2, into every command's output. ``ARCHON_ENGINE_LOGS=1`` keeps them.
    """
    if os.environ.get("ARCHON_ENGINE_LOGS") == "1":
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
