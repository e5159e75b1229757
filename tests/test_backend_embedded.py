"""The embedded llama.cpp backend on the real Gemma 3 270M."""

from __future__ import annotations

import math

import pytest

from archon.backends.types import GenerationRequest, Message, ScoreRequest

pytestmark = pytest.mark.slow

FEW_SHOT = "2+2=4\n3+5=8\n1+6=7\n4+3="


def test_sampling_usage_and_seeds(embedded_router):
    r = GenerationRequest(model="embedded", prompt=FEW_SHOT, n=4, temperature=1.0, max_tokens=6, seed=11)
    first = embedded_router.generate([r])[0]
    assert len(first.samples) == 4
    u = first.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0 and u.calls == 1 and u.flops > 0
    # the loop reuses the prompt's KV state: samples 2..4 find the prefix cached
    assert u.cached_prompt_tokens >= 3 * (u.prompt_tokens // 4 - 1)
    again = embedded_router.generate([r])[0]
    assert again.texts == first.texts  # same seed, same samples
    other = embedded_router.generate([GenerationRequest(model="embedded", prompt=FEW_SHOT, n=4, temperature=1.0,
                                                        max_tokens=6, seed=12)])[0]
    assert other.texts != first.texts


def test_stop_strings_and_greedy(embedded_router):
    r = GenerationRequest(model="embedded", prompt=FEW_SHOT, temperature=0.0, max_tokens=20, stop=("\n",))
    out = embedded_router.generate([r])[0].samples[0]
    assert "\n" not in out.text and out.finish_reason == "stop"


def test_chat_logprobs_and_assistant_prefix(embedded_router):
    chat = (Message("user", "Name the capital of France."),)
    r = GenerationRequest(model="embedded", messages=chat, temperature=0.0, max_tokens=8, logprobs=True,
                          top_logprobs=3)
    sample = embedded_router.generate([r])[0].samples[0]
    assert sample.logprobs and all(t.logprob <= 0 for t in sample.logprobs)
    assert len(sample.logprobs[0].top) == 3
    assert max(sample.logprobs[0].top.values()) >= sample.logprobs[0].logprob - 1e-6
    cont = GenerationRequest(model="embedded", prompt="The capital of France is", assistant_prefix=" Paris,",
                             temperature=0.0, max_tokens=8)
    text = embedded_router.generate([cont])[0].samples[0].text
    assert not text.startswith(" Paris,")  # continued after the prefix, not restarted


def test_score_continuations(embedded_router):
    res = embedded_router.score([ScoreRequest(model="embedded", prompt="The capital of France is",
                                              continuations=(" Paris", " banana republic"))])[0]
    assert all(math.isfinite(x) and x < 0 for x in res.logprobs)
    assert res.logprobs[0] > res.logprobs[1]
    assert len(res.token_logprobs[1]) >= 2
