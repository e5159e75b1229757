"""What a model spec may pass through to vLLM: ``engine_args`` and ``extra_sampling``.

archon models the settings every backend shares (``dtype``, ``max_model_len``,
``temperature``, ``seed``...). Everything else vLLM offers reaches it verbatim from a
model spec: ``engine_args`` (any ``vllm.EngineArgs`` field: ``max_num_batched_tokens``,
``enable_chunked_prefill``, ``max_num_seqs``, ``kv_cache_dtype``, ``quantization``...)
and ``extra_sampling`` (``SamplingParams`` fields archon does not
model: ``top_k``, ``min_p``, ``repetition_penalty``...).

Names are checked against vLLM's own classes when vLLM is installed, so a typo fails at
``archon validate`` with a did-you-mean instead of at engine start a minute later, and
a new vLLM release's arguments work without a change here. Without vLLM (a config
validated on a laptop for a GPU box) only the fixed rules below apply.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from archon.registry import suggest

ArgKind = Literal["engine_args", "extra_sampling"]

# Engine arguments a ModelSpec field already sets: one place per setting, so a config
# cannot say max_model_len twice with two values.
SPEC_ENGINE_FIELDS: dict[str, str] = {
    "model": "path",
    "dtype": "dtype",
    "max_model_len": "max_model_len",
    "tensor_parallel_size": "tensor_parallel_size",
    "pipeline_parallel_size": "pipeline_parallel_size",
    "data_parallel_size": "data_parallel_size",
    "distributed_executor_backend": "distributed_executor_backend",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "enforce_eager": "enforce_eager",
}
# Sampling settings archon sets per request (they are part of the call cache key).
REQUEST_SAMPLING_FIELDS = frozenset({
    "n", "best_of", "temperature", "top_p", "max_tokens", "stop", "seed", "logprobs", "prompt_logprobs",
})


@dataclass(frozen=True)
class ArgProblem:
    """One bad key: where (``engine_args``/``extra_sampling`` and the key), what, how to fix."""

    kind: ArgKind
    key: str
    message: str
    hint: str | None = None


def _field_names(cls: Any) -> frozenset[str]:
    """Public field names (a leading underscore marks vLLM's internal ones)."""
    if dataclasses.is_dataclass(cls):
        names = [f.name for f in dataclasses.fields(cls)]
    elif getattr(cls, "__struct_fields__", None):  # SamplingParams is a msgspec.Struct
        names = list(cls.__struct_fields__)
    else:
        params = inspect.signature(cls).parameters
        names = [n for n, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    return frozenset(n for n in names if not n.startswith("_"))


@cache
def vllm_names(kind: ArgKind) -> frozenset[str] | None:
    """Field names of ``vllm.EngineArgs`` or ``vllm.SamplingParams``; None without vLLM."""
    if importlib.util.find_spec("vllm") is None:
        return None
    if kind == "engine_args":
        from vllm.engine.arg_utils import EngineArgs

        return _field_names(EngineArgs)
    from vllm import SamplingParams

    return _field_names(SamplingParams)


def check(kind: ArgKind, given: Mapping[str, Any] | None, *, known: frozenset[str] | None = None
          ) -> list[ArgProblem]:
    """Problems with ``given``; ``known`` defaults to vLLM's names (None: vLLM absent, names unchecked)."""
    if not given:
        return []
    if known is None:
        known = vllm_names(kind)
    problems = []
    for key in given:
        if kind == "engine_args" and key in SPEC_ENGINE_FIELDS:
            field = SPEC_ENGINE_FIELDS[key]
            problems.append(ArgProblem(kind, key, f"{key!r} is a model spec field, not an engine argument here",
                                       f"set `{field}:` on the model instead"))
        elif kind == "extra_sampling" and key in REQUEST_SAMPLING_FIELDS:
            problems.append(ArgProblem(kind, key, f"{key!r} is set by archon for every request",
                                       "set it on the node or under `defaults:` (temperature, max_tokens, seed...)"))
        elif known is not None and key not in known:
            what = "vllm.EngineArgs" if kind == "engine_args" else "vllm.SamplingParams"
            problems.append(ArgProblem(kind, key, f"unknown {kind} key {key!r}: not a {what} field",
                                       suggest(key, sorted(known))))
    return problems
