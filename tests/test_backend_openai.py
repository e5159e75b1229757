"""The OpenAI-compatible backend against a real llama.cpp server on loopback.

Facts about llama-cpp-python's server these tests pin down (0.3.36): it returns one
choice whatever ``n`` is, honours ``seed``, supports ``echo`` with prompt logprobs, serves
any model name with its one model, and ignores ``continue_final_message``. Behaviour it
lacks (404 for an unknown model, 5xx) is checked against a tiny stub server as well.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from servers import LlamaServer, free_port

from archon.backends.accounting import CallTag
from archon.backends.chat_format import render_gemma
from archon.backends.openai_compat import OpenAIBackend
from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import GenerationRequest, Message, ScoreRequest
from archon.errors import BackendError

pytestmark = pytest.mark.server

ALIAS = "gemma"
FEW_SHOT = "2+2=4\n3+5=8\n1+6=7\n4+3="


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (the `embedded` extra)")
    with LlamaServer(alias=ALIAS) as srv:
        yield srv


@pytest.fixture
def live(server: LlamaServer) -> LlamaServer:
    """The module server, restarted if an earlier test left it down."""
    return server.start()


def backend(urls: str | list[str], name: str = ALIAS, **kw) -> OpenAIBackend:  # type: ignore[no-untyped-def]
    return OpenAIBackend(name, ModelSpec(backend="openai", base_url=urls, **kw))


def req(**kw) -> GenerationRequest:  # type: ignore[no-untyped-def]
    kw.setdefault("model", ALIAS)
    kw.setdefault("max_tokens", 3)
    return GenerationRequest(**kw)


def test_completion_text_usage_and_logprobs(live):
    b = backend(live.base_url)
    try:
        plain, withlp = b.generate([
            req(prompt=FEW_SHOT, temperature=0.0),
            req(prompt=FEW_SHOT, temperature=0.0, max_tokens=2, logprobs=True, top_logprobs=2),
        ])
    finally:
        b.close()
    s = plain.samples[0]
    assert s.text.strip() and s.text[0].isdigit()
    u = plain.usage
    assert u.prompt_tokens > 10 and u.completion_tokens == s.completion_tokens > 0
    assert u.calls == 1 and u.latency_s > 0
    lp = withlp.samples[0].logprobs
    assert lp is not None and len(lp) == withlp.samples[0].completion_tokens == 2
    assert "".join(t.token for t in lp) == withlp.samples[0].text
    assert all(t.logprob <= 0 and 1 <= len(t.top) <= 2 for t in lp)
    assert withlp.samples[0].text == plain.samples[0].text[: len(withlp.samples[0].text)]  # greedy both times


def test_chat_uses_the_server_gemma_template(live):
    msgs = (Message("user", "Name a color."),)
    b = backend(live.base_url)
    try:
        chat, raw = b.generate([req(messages=msgs, temperature=0.0), req(prompt=render_gemma(msgs), temperature=0.0)])
        # A chat with an assistant prefix sends continue_final_message; llama.cpp ignores it
        # (accepted, but the turn is closed and a new one started: more prompt tokens).
        prefixed = b.generate([req(messages=msgs, assistant_prefix="Blue", temperature=0.0, max_tokens=1)])[0]
    finally:
        b.close()
    assert chat.usage.prompt_tokens == raw.usage.prompt_tokens  # same Gemma turn format
    assert chat.texts == raw.texts
    assert prefixed.usage.prompt_tokens > chat.usage.prompt_tokens + 1


def test_n_emulation_and_seeds(live):
    b = backend(live.base_url)
    try:
        first = b.generate([req(prompt="Once upon a time", n=3, temperature=1.0, seed=7)])[0]
        assert len(first.samples) == 3 and first.usage.calls == 3  # the server answers n=3 with one choice
        assert b._n_cap == 1
        assert first.usage.completion_tokens == sum(s.completion_tokens for s in first.samples)
        # The server honours seeds, and sample i is seeded seed + i: a request for samples
        # 1..2 alone reproduces them (what the call cache relies on).
        tail = b.generate([req(prompt="Once upon a time", n=2, temperature=1.0, seed=7, sample_offset=1)])[0]
        assert tail.texts == first.texts[1:]
        assert tail.usage.calls == 2  # the learned cap: no wasted n=2 request
        other = b.generate([req(prompt="Once upon a time", n=2, temperature=1.0, seed=1007)])[0]
        assert other.texts != first.texts[:2]
    finally:
        b.close()


def test_stop_strings(live):
    b = backend(live.base_url)
    try:
        s = b.generate([req(prompt="1\n2\n3\n", stop=("6",), temperature=0.0, max_tokens=12)])[0].samples[0]
    finally:
        b.close()
    assert "6" not in s.text and s.text.startswith("4") and s.finish_reason == "stop"


def test_unknown_model_is_served_by_llama_cpp(live):
    """llama.cpp's server maps any model name to its one model (no 404): not an error here."""
    b = backend(live.base_url, name="srv", api_model="no-such-model")
    try:
        assert b.generate([req(model="srv", prompt=FEW_SHOT, max_tokens=1)])[0].usage.calls == 1
    finally:
        b.close()


def test_load_balancing_and_failover(live):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    alias = live.base_url.replace("127.0.0.1", "localhost")  # same server, second URL
    b = backend([dead, live.base_url, alias], max_retries=0, routing={"policy": "round_robin"})
    try:
        results = b.generate([req(prompt=f"{i}+1=", max_tokens=1, temperature=0.0) for i in range(4)])
    finally:
        b.close()
    assert all(r.usage.calls == 1 for r in results)
    assert b.served[dead] == 0 and b.served[live.base_url] + b.served[alias] == 4
    assert b.served[live.base_url] >= 1 and b.served[alias] >= 1  # round-robin, dead one skipped


def test_threads_and_reuse_after_close(live):
    b = backend(live.base_url, max_concurrency=2)
    out: list[str] = []
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            out.extend(b.generate([req(prompt=f"{i}+2=", max_tokens=1, temperature=0.0)])[0].texts)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(out) == 3
    b.close()
    assert b.generate([req(prompt="5+2=", max_tokens=1)])[0].usage.calls == 1  # a fresh loop after close
    b.close()


def test_score_with_echo(live):
    b = backend(live.base_url)
    try:
        res = b.score([ScoreRequest(model=ALIAS, prompt="Paris is in", continuations=(" France", " Peru"))])[0]
        with pytest.raises(BackendError, match="needs a `prompt`"):
            b.score([ScoreRequest(model=ALIAS, messages=(Message("user", "hi"),), continuations=("x",))])
    finally:
        b.close()
    assert all(math.isfinite(x) and x < 0 for x in res.logprobs)
    assert res.logprobs[0] > res.logprobs[1]
    assert [len(t) for t in res.token_logprobs] == [1, 1]
    assert res.usage.calls == 2 and res.usage.prompt_tokens > 0


def test_router_batch_records_usage(live):
    registry = ModelRegistry({"srv": ModelSpec(backend="openai", base_url=live.base_url, api_model=ALIAS,
                                               parameters=268_098_176)})
    router = ModelRouter(registry=registry)
    try:
        rs = [GenerationRequest(model="srv", prompt=FEW_SHOT, max_tokens=2, temperature=0.0),
              GenerationRequest(model="srv", prompt="Once upon a time", n=2, max_tokens=2, seed=3)]
        out = router.generate(rs, tags=[CallTag(node="a", query="q"), CallTag(node="b", query="q")])
    finally:
        router.close()
    assert [len(r.samples) for r in out] == [1, 2]
    total = router.ledger.by_model()["srv"]
    assert total.calls == 3 and total.prompt_tokens > 0 and total.completion_tokens > 0 and total.flops > 0
    assert router.ledger.for_query_node("q", "b").calls == 2


def test_retries_through_a_restart(live):
    b = backend(live.base_url, max_retries=8)
    live.kill()
    restarter = threading.Thread(target=lambda: (time.sleep(2), live.start()))
    began = time.monotonic()
    restarter.start()
    try:
        res = b.generate([req(prompt=FEW_SHOT, max_tokens=1)])[0]
    finally:
        restarter.join(timeout=120)
        b.close()
    assert time.monotonic() - began > 2 and res.usage.calls == 1 and live.running()


def test_clear_error_when_nothing_listens(monkeypatch):
    secret = "sk-archon-test-secret-1234"
    monkeypatch.setenv("ARCHON_TEST_KEY", secret)
    url = f"http://127.0.0.1:{free_port()}/v1"
    b = backend(url, name="srv", api_model="served-name", api_key_env="ARCHON_TEST_KEY", max_retries=1)
    try:
        with pytest.raises(BackendError) as info:
            b.generate([req(model="srv", prompt="x")])
    finally:
        b.close()
    msg = str(info.value)
    assert url in msg and "'srv'" in msg and "served-name" in msg and "connection failed" in msg
    assert "2 attempts" in msg and secret not in msg and secret not in repr(info.value)


def test_missing_api_key_env_is_reported(monkeypatch):
    monkeypatch.delenv("ARCHON_TEST_KEY", raising=False)
    with pytest.raises(BackendError, match="ARCHON_TEST_KEY"):
        backend("http://127.0.0.1:1/v1", api_key_env="ARCHON_TEST_KEY")


# -- behaviour llama.cpp's server lacks, against a stub that answers every POST alike ------


class _Stub:
    def __init__(self, status: int, body: dict, *, port: int = 0, delay_s: float = 0.0) -> None:
        self.hits = 0
        self.auth: list[str] = []
        self.bodies: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                stub.hits += 1
                stub.auth.append(self.headers.get("Authorization", ""))
                stub.bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}"))
                time.sleep(delay_s)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # /models: the server is alive
                data = json.dumps({"object": "list", "data": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.handle_error = lambda *args: None  # type: ignore[method-assign]  # clients that gave up
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_unknown_model_404_is_not_retried(monkeypatch):
    monkeypatch.setenv("ARCHON_TEST_KEY", "sk-stub-secret")
    stub = _Stub(404, {"error": {"message": "The model `nope` does not exist.", "type": "NotFoundError",
                                 "code": 404}})
    b = backend(stub.url, name="nope", max_retries=3, api_key_env="ARCHON_TEST_KEY")
    try:
        with pytest.raises(BackendError) as info:
            b.generate([req(model="nope", prompt="x")])
    finally:
        b.close()
        stub.close()
    msg = str(info.value)
    assert stub.hits == 1 and "HTTP 404" in msg and stub.url in msg and "'nope'" in msg and "api_model" in msg
    assert stub.auth == ["Bearer sk-stub-secret"] and "sk-stub-secret" not in msg


def test_server_errors_are_retried_then_reported():
    stub = _Stub(503, {"error": {"message": "overloaded"}})
    b = backend(stub.url, max_retries=2)
    b.backoff_base_s = 0.05
    try:
        with pytest.raises(BackendError, match="HTTP 503") as info:
            b.generate([req(prompt="x")])
    finally:
        b.close()
        stub.close()
    assert stub.hits == 3 and "3 attempts" in str(info.value) and stub.auth == ["Bearer EMPTY"] * 3


# -- server faults (issue 14) --------------------------------------------------------------------

OK_BODY = {"id": "x", "object": "text_completion", "created": 0, "model": "m",
           "choices": [{"index": 0, "text": "4", "finish_reason": "stop", "logprobs": None}],
           "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


@pytest.mark.reliability
def test_default_retry_window_outlasts_a_server_restart():
    port = free_port()
    first = _Stub(200, OK_BODY, port=port)
    b = backend(first.url)  # defaults only: the retry window is a duration
    try:
        assert b.generate([req(prompt="x")])[0].usage.retries == 0
        first.close()  # the server goes down ...
        restart = threading.Timer(9.0, lambda: holder.append(_Stub(200, OK_BODY, port=port)))  # ... back in 9 s
        holder: list[_Stub] = []
        restart.start()
        began = time.monotonic()
        res = b.generate([req(prompt="y")])[0]
    finally:
        b.close()
        restart.join()
        for stub in holder:
            stub.close()
    assert time.monotonic() - began > 8.5 and res.texts == ["4"]
    assert res.usage.retries >= 3 and res.usage.to_dict()["retries"] == res.usage.retries  # reported in the trace


@pytest.mark.reliability
def test_a_hung_server_is_a_first_byte_timeout():
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)  # accepts connections (the kernel does), never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    b = backend(url, first_byte_timeout_s=1.0, timeout_s=120, retry_window_s=0)
    began = time.monotonic()
    try:
        with pytest.raises(BackendError) as info:
            b.generate([req(prompt="x")])
    finally:
        b.close()
        listener.close()
    assert time.monotonic() - began < 10
    assert "first-byte timeout" in str(info.value) and "first_byte_timeout_s=1" in str(info.value)


@pytest.mark.reliability
def test_a_live_but_slow_server_is_a_generation_timeout():
    stub = _Stub(200, OK_BODY, delay_s=4.0)
    b = backend(stub.url, first_byte_timeout_s=0.5, timeout_s=2.0, retry_window_s=0)
    try:
        with pytest.raises(BackendError) as info:
            b.generate([req(prompt="x")])
    finally:
        b.close()
        stub.close()
    assert "generation timeout" in str(info.value) and "timeout_s=2" in str(info.value)
    assert "first-byte" not in str(info.value)  # GET /models answered: it was alive, just slow


@pytest.mark.reliability
def test_cache_key_follows_the_model_identity_not_the_url(tmp_path):
    from scripted import ScriptedBackend

    from archon.backends.cache import CallCache

    def router_for(**spec):  # type: ignore[no-untyped-def]
        registry = ModelRegistry({"m": ModelSpec(backend="openai", **spec)})
        scripted = ScriptedBackend()
        return ModelRouter(registry=registry, cache=CallCache(tmp_path / "calls.sqlite"),
                           factory=lambda name, s: scripted), scripted

    request = GenerationRequest(model="m", prompt="p", n=2, temperature=0.7, seed=1)
    first, _ = router_for(base_url="http://a:1/v1", api_model="small")
    first.generate([request])
    first.close()
    moved, _ = router_for(base_url=["http://b:2/v1", "http://c:3/v1"], api_model="small")
    assert moved.generate([request])[0].usage.cache_hits == 2  # same weights elsewhere: reused
    moved.close()
    other, backend_b = router_for(base_url="http://a:1/v1", api_model="large")
    assert other.generate([request])[0].usage.cache_hits == 0 and backend_b.batches  # other weights: asked
    other.close()


CHAT_REPLY = {"id": "x", "object": "chat.completion", "created": 0, "model": "o1-mini",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
              "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}


@pytest.mark.parametrize("sampling", [True, False])
def test_sampling_off_sends_no_temperature_top_p_or_max_tokens(sampling):
    """o1 models reject these; Archon sends neither (`sampling: false` in the model spec)."""
    stub = _Stub(200, CHAT_REPLY)
    b = backend(stub.url, name="o1-mini", sampling=sampling)
    try:
        (result,) = b.generate([req(model="o1-mini", messages=(Message("user", "hi"),), temperature=0.3)])
    finally:
        b.close()
        stub.close()
    assert result.samples[0].text == "hi"
    sent = stub.bodies[0]
    assert ({"temperature", "top_p", "max_tokens"} <= set(sent)) is sampling
    assert not ({"temperature", "top_p", "max_tokens"} & set(sent)) or sampling
