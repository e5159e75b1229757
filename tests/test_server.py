"""`archon serve` for real: a subprocess on loopback, the embedded model, real clients.

Clients: the openai SDK, raw httpx (for what SDKs hide: SSE keep-alives, malformed JSON,
headers) and lm-eval-harness. Pipelines are tiny (a few tokens per call) to keep it quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from servers import ArchonServe, LlamaServer, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent
KEY = "test-key-0123456789"
KEY_ENV = "ARCHON_SERVE_TEST_KEY"

DUO = """
name: duo
defaults: {model: embedded, temperature: 0.7, max_tokens: 6}
nodes:
  - id: sample
    technique: generate
    samples: 2
  - id: fuse
    technique: fuse
"""
SINGLE = """
defaults: {model: embedded, temperature: 0.7, max_tokens: 4}
nodes:
  - id: sample
    technique: generate
"""
BROKEN = """
name: broken
defaults: {model: embedded, max_tokens: 3}
nodes:
  - id: sample
    technique: generate
  - id: fuse
    technique: fuse
    prompt_template: TEMPLATE
"""
REMOTE = """
name: remote
models:
  gemma:
    backend: openai
    base_url: http://127.0.0.1:{port}/v1
    max_retries: 0
    timeout_s: 30
defaults: {{model: gemma, max_tokens: 3}}
nodes:
  - id: sample
    technique: generate
"""


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (the `embedded` extra)")
    with LlamaServer(alias="gemma", port=free_port()) as srv:
        yield srv


@pytest.fixture(scope="module")
def served(tmp_path_factory, llama) -> Iterator[ArchonServe]:
    pytest.importorskip("starlette")
    folder = tmp_path_factory.mktemp("served")
    (folder / "duo.yaml").write_text(DUO)
    (folder / "single.yaml").write_text(SINGLE)  # no `name:`: served as its file stem
    boom = folder / "boom.j2"  # next to its config (templates elsewhere are refused); not a config itself
    boom.write_text("{{ 1 // 0 }}")
    (folder / "broken.yaml").write_text(BROKEN.replace("TEMPLATE", str(boom)))
    remote = tmp_path_factory.mktemp("remote") / "remote.yaml"
    remote.write_text(REMOTE.format(port=llama.port))
    cache = tmp_path_factory.mktemp("cache")
    with ArchonServe([str(folder), str(remote)], "--api-key-env", KEY_ENV, "--max-queue", "20",
                     "--keepalive", "0.3", "--cache", str(cache / "calls.sqlite"), "--log-level", "warning",
                     env={KEY_ENV: KEY}) as srv:
        yield srv


@pytest.fixture
def client(served):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    with OpenAI(base_url=served.base_url, api_key=KEY, max_retries=0, timeout=900) as c:
        yield c


def metrics(served: ArchonServe) -> dict:
    r = httpx.get(f"{served.root_url}/debug/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def post(served: ArchonServe, path: str, body: object, *, key: str | None = KEY, **kw) -> httpx.Response:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(f"{served.base_url}{path}", content=content, headers={**headers,
                      "Content-Type": "application/json"}, timeout=kw.pop("timeout", 900), **kw)


# -- the openai SDK -----------------------------------------------------------------------

def test_models_and_health(served, client):
    ids = sorted(m.id for m in client.models.list().data)
    assert ids == ["broken", "duo", "remote", "single"]
    health = httpx.get(f"{served.root_url}/health", timeout=10).json()
    assert health["status"] == "ok" and health["models"] == ids


def test_chat_multi_turn_usage_and_extension(client):
    resp = client.chat.completions.create(
        model="duo",
        messages=[{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": "What is 2+2?"},
                  {"role": "assistant", "content": "4"},
                  {"role": "user", "content": "And 3+3?"}],
    )
    assert resp.object == "chat.completion" and resp.model == "duo"
    assert len(resp.choices) == 1 and isinstance(resp.choices[0].message.content, str)
    assert resp.usage.prompt_tokens > 0 and resp.usage.completion_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    run = resp.model_extra["archon"]["runs"][0]
    assert set(run["usage_by_node"]) == {"sample", "fuse"}
    assert run["calls"] >= 2  # at least one call per level
    by_node = sum(u["completion_tokens"] for u in run["usage_by_node"].values())
    assert by_node == resp.usage.completion_tokens
    assert "trace" not in run


def test_trace_on_request_and_max_tokens_override(client):
    resp = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "Name a fruit."}],
                                          max_tokens=1, extra_body={"archon_trace": True})
    run = resp.model_extra["archon"]["runs"][0]
    assert [t["node"] for t in run["trace"]] == ["sample", "fuse"]
    sample_calls = run["trace"][0]["calls"]
    assert sample_calls and sample_calls[0]["n"] == 2
    # max_tokens=1 overrides the pipeline's 6: two samples of one token, one fused token.
    assert run["usage_by_node"]["sample"]["completion_tokens"] <= 2
    assert run["usage_by_node"]["fuse"]["completion_tokens"] <= 1


def test_text_completion_n_and_stop(client):
    resp = client.completions.create(model="single", prompt="1+1=2\n2+2=4\n3+3=", max_tokens=4, n=2)
    assert resp.object == "text_completion" and len(resp.choices) == 2
    assert [c.index for c in resp.choices] == [0, 1]
    assert resp.usage.completion_tokens > 0
    assert len(resp.model_extra["archon"]["runs"]) == 2
    stopped = client.completions.create(model="single", prompt="Count: one two three", max_tokens=8, stop=["e"])
    assert "e" not in stopped.choices[0].text


def test_streaming_matches_the_whole_answer(client):
    messages = [{"role": "user", "content": "Say hello."}]
    stream = client.chat.completions.create(model="duo", messages=messages, seed=7, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason == "stop"]
    assert len(finals) == 1 and finals[0].model_extra["archon"]["usage_by_node"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    # The same request again is answered from the call cache: same answer, no compute.
    whole = client.chat.completions.create(model="duo", messages=messages, seed=7)
    assert text == whole.choices[0].message.content
    run = whole.model_extra["archon"]["runs"][0]
    assert run["cache_hits"] >= 3 and whole.usage.completion_tokens == 0


def test_stream_sends_keepalives_while_the_pipeline_runs(served):
    body = {"model": "duo", "messages": [{"role": "user", "content": "Tell me about rivers."}],
            "max_tokens": 12, "stream": True, "seed": 11}
    with httpx.stream("POST", f"{served.base_url}/chat/completions", json=body, timeout=300,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert any(line.startswith(": keep-alive") for line in lines)
    assert lines[-1] == "data: [DONE]"
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data == 0  # the role chunk goes out before any keep-alive


# -- concurrency --------------------------------------------------------------------------

def test_sixteen_concurrent_clients_are_batched(served, client):
    before = metrics(served)
    questions = [f"What is {i} + {i + 1}?" for i in range(16)]

    def ask(q: str):  # type: ignore[no-untyped-def]
        return client.chat.completions.create(model="duo", messages=[{"role": "user", "content": q}], seed=1234,
                                              max_tokens=2)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, questions))
    after = metrics(served)
    assert len(answers) == 16
    assert all(a.usage.completion_tokens > 0 and a.choices[0].message.content is not None for a in answers)
    backend_requests = after["backend"]["requests"] - before["backend"]["requests"]
    levels = 2
    assert backend_requests < 16 * levels, after
    prompts = sum(m["prompts"] for m in after["backend"]["by_model"].values()) - sum(
        m["prompts"] for m in before["backend"]["by_model"].values())
    assert prompts >= 16 and prompts > backend_requests  # backend calls carried several clients' prompts


# -- faults -------------------------------------------------------------------------------

def test_bad_requests_are_400_in_openai_error_json(served):
    r = post(served, "/chat/completions", "{not json")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "JSON" in err["message"]
    r = post(served, "/chat/completions", {"model": "duo", "messages": [{"role": "user", "content": "x"}],
                                           "temperature": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    r = post(served, "/completions", {"model": "single", "prompt": "x", "logprobs": 2})
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"
    r = post(served, "/chat/completions", {"model": "duo", "messages": [{"role": "tool", "content": "x"}]})
    assert r.status_code == 400 and "role" in r.json()["error"]["message"]


def test_unknown_model_is_404(client):
    import openai

    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "nope" in str(info.value) and "duo" in str(info.value)


def test_missing_or_wrong_key_is_401(served):
    import openai

    body = {"model": "duo", "messages": [{"role": "user", "content": "x"}]}
    assert post(served, "/chat/completions", body, key=None).status_code == 401
    assert httpx.get(f"{served.base_url}/models", timeout=10).status_code == 401
    with openai.OpenAI(base_url=served.base_url, api_key="wrong", max_retries=0) as bad, \
            pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert KEY not in served.log_tail(100_000)


def test_pipeline_error_is_500_naming_the_node(served):
    r = post(served, "/chat/completions", {"model": "broken", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["node"] == "fuse" and "ZeroDivisionError" in err["message"]


def test_full_queue_is_429_with_retry_after(served, llama):
    # The backend is paused (SIGSTOP), so the first request's 16 runs stay admitted until resumed:
    # no race between the first request finishing and the second arriving.
    big = {"model": "remote", "prompt": "Once upon a time in a queue", "n": 16, "max_tokens": 3}
    llama.start()
    first: dict = {}
    with llama.paused():
        thread = threading.Thread(target=lambda: first.setdefault("r", post(served, "/completions", big)))
        thread.start()
        deadline = time.monotonic() + 60
        while metrics(served)["in_flight"] < 16 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics(served)["in_flight"] == 16
        r = post(served, "/completions", {**big, "n": 8})
    thread.join(300)
    assert r.status_code == 429, r.text
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["error"]["code"] == "queue_full"
    assert first["r"].status_code == 200, first["r"].text
    assert len(first["r"].json()["choices"]) == 16
    too_many = post(served, "/completions", {**big, "prompt": ["a", "b"], "n": 16})
    assert too_many.status_code == 400  # can never fit: not a 429


def test_client_disconnect_cancels_and_the_server_stays_healthy(served, client):
    before = metrics(served)["requests"]["disconnects"]
    body = {"model": "duo", "messages": [{"role": "user", "content": "Write a long story about ships."}],
            "max_tokens": 24, "seed": 99}
    with pytest.raises(httpx.ReadTimeout):
        post(served, "/chat/completions", body, timeout=1.0)
    deadline = time.monotonic() + 60
    while metrics(served)["requests"]["disconnects"] <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metrics(served)["requests"]["disconnects"] > before
    assert httpx.get(f"{served.root_url}/health", timeout=10).json()["status"] == "ok"
    ok = client.chat.completions.create(model="duo", messages=[{"role": "user", "content": "Hi"}])
    assert ok.usage.completion_tokens > 0


def test_backend_death_is_502_and_recovery_follows(served, client, llama):
    import openai

    messages = [{"role": "user", "content": "Name a color."}]
    llama.start()
    assert client.chat.completions.create(model="remote", messages=messages, seed=1).usage.completion_tokens > 0
    llama.kill()
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="remote", messages=messages, seed=2)
    assert info.value.status_code == 502
    assert "backend" in info.value.message and str(llama.port) in info.value.message
    assert httpx.get(f"{served.root_url}/health", timeout=10).status_code == 200
    llama.start()
    again = client.chat.completions.create(model="remote", messages=messages, seed=3)
    assert again.usage.completion_tokens > 0


# -- lm-eval-harness as a client ------------------------------------------------------------

def test_lm_eval_harness_runs_a_gsm8k_task(served, tmp_path):
    pytest.importorskip("lm_eval", reason="needs lm-eval (pip install lm-eval)")
    data = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
    if not data.is_file():
        pytest.skip(f"needs {data}")
    out = tmp_path / "lm_eval_out"
    env = {**os.environ, "OPENAI_API_KEY": KEY, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "local-chat-completions",
           "--model_args", f"model=duo,base_url={served.base_url}/chat/completions,num_concurrent=5,"
                           "max_retries=1,tokenized_requests=False",
           "--tasks", "archon_gsm8k_local", "--include_path", str(REPO / "tests" / "lm_eval_tasks"),
           "--limit", "5", "--apply_chat_template", "--output_path", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = list(out.rglob("results*.json"))
    assert results, proc.stdout[-2000:]
    data = json.loads(results[0].read_text())
    assert "archon_gsm8k_local" in data["results"]
    assert data["n-samples"]["archon_gsm8k_local"]["effective"] == 5
