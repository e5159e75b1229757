"""``engine_args`` / ``extra_sampling`` on a model spec: the rules, and vLLM's own names.

The rules are checked with explicit name sets; the did-you-mean against the installed
vLLM's ``EngineArgs`` and ``SamplingParams`` runs where vLLM is installed (it imports
vLLM, a few seconds, but starts no engine).
"""

from __future__ import annotations

import pytest

from archon.backends.registry import ModelSpec
from archon.backends.vllm_args import check, vllm_names
from archon.config import load_yaml, parse_config
from archon.errors import ConfigError

KNOWN = frozenset({"max_num_batched_tokens", "enable_chunked_prefill", "max_num_seqs", "dtype", "model"})


def test_typos_get_a_did_you_mean_and_spec_fields_point_at_the_spec():
    problems = check("engine_args", {"max_num_batched_token": 512, "max_num_seqs": 8, "dtype": "float32"},
                     known=KNOWN)
    assert [(p.key, p.hint) for p in problems] == [
        ("max_num_batched_token", "did you mean `max_num_batched_tokens`?"),
        ("dtype", "set `dtype:` on the model instead"),
    ]
    assert "not a vllm.EngineArgs field" in problems[0].message
    (seed,) = check("extra_sampling", {"seed": 3, "top_k": 5}, known=frozenset({"top_k", "seed"}))
    assert seed.key == "seed" and "set by archon" in seed.message
    assert check("engine_args", None) == [] and check("extra_sampling", {}) == []


def test_pass_through_only_where_it_means_something(tmp_path):
    with pytest.raises(ValueError, match="applies to backend vllm only"):
        ModelSpec(backend="openai", base_url="http://127.0.0.1:1/v1", engine_args={"max_num_seqs": 4})
    with pytest.raises(ValueError, match="not llama_cpp"):
        ModelSpec(backend="llama_cpp", path="m.gguf", extra_sampling={"top_k": 4})
    # a remote server may not be vLLM: its sampling extras are sent as given, not checked by name
    remote = ModelSpec(backend="openai", base_url="http://127.0.0.1:1/v1", extra_sampling={"top_kk": 4})
    assert remote.pass_through_problems() == []
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  m:\n    backend: llama_cpp\n    path: m.gguf\n    engine_args: {max_num_seqs: 4}\n"
                   "nodes:\n  - technique: generate\n    model: m\n")
    data, root = load_yaml(cfg)
    with pytest.raises(ConfigError) as info:
        parse_config(data, file=str(cfg), root=root)
    assert "c.yaml:2 at `models.m`" in str(info.value) and "vllm only" in str(info.value)


def test_checked_against_the_installed_vllm(tmp_path):
    pytest.importorskip("vllm")
    engine, sampling = vllm_names("engine_args"), vllm_names("extra_sampling")
    assert engine is not None and {"max_num_batched_tokens", "enable_chunked_prefill", "kv_cache_dtype",
                                    "max_num_seqs", "quantization"} <= engine and "_api_process_rank" not in engine
    assert sampling is not None and {"top_k", "min_p", "repetition_penalty"} <= sampling
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "models:\n"
        "  m:\n"
        "    backend: vllm\n"
        "    path: org/model\n"
        "    engine_args:\n"
        "      enable_chunked_prefill: false\n"
        "      max_num_batched_token: 8192\n"
        "    extra_sampling: {min_p: 0.05}\n"
        "nodes:\n  - technique: generate\n    model: m\n")
    data, root = load_yaml(cfg)
    with pytest.raises(ConfigError) as info:
        parse_config(data, file=str(cfg), root=root)
    text = str(info.value)
    assert "c.yaml:7" in text and "models.m.engine_args.max_num_batched_token" in text
    assert "did you mean `max_num_batched_tokens`?" in text
    data["models"]["m"]["engine_args"]["max_num_batched_tokens"] = data["models"]["m"]["engine_args"].pop(
        "max_num_batched_token")
    data["models"]["m"]["extra_sampling"] = {"min_pp": 0.05}
    with pytest.raises(ConfigError, match="did you mean `min_p`"):
        parse_config(data, file=str(cfg), root=root)
    data["models"]["m"]["extra_sampling"] = {"min_p": 0.05}
    spec = parse_config(data, file=str(cfg), root=root).models["m"]
    assert spec.engine_args == {"enable_chunked_prefill": False, "max_num_batched_tokens": 8192}
