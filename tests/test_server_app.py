"""`create_app` embedded in a real uvicorn server on loopback, over a scripted backend.

Control flow that needs no real model: the timeout (504) and the API-key check through
the Python entry point. The real-model evidence is tests/test_server.py.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from scripted import scripted_router
from servers import free_port

from archon.pipeline import Pipeline
from archon.techniques import Generate

uvicorn = pytest.importorskip("uvicorn")


@contextlib.contextmanager
def running(app) -> Iterator[str]:  # type: ignore[no-untyped-def]
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


def slow_pipeline(delay_s: float) -> Pipeline:
    router, backends = scripted_router()
    backend = backends["embedded"]
    original = backend.generate

    def slow(requests):  # type: ignore[no-untyped-def]
        time.sleep(delay_s)
        return original(requests)

    backend.generate = slow  # type: ignore[method-assign]
    return Pipeline({"sample": Generate(samples=2)}, name="slow", router=router, cache=False)


def test_timeout_is_504_and_the_key_is_checked():
    from archon.server import create_app

    app = create_app([slow_pipeline(1.5)], api_key="k", timeout_s=0.5)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    with running(app) as root:
        assert httpx.post(f"{root}/v1/chat/completions", json=body, timeout=30).status_code == 401
        r = httpx.post(f"{root}/v1/chat/completions", json=body, headers={"Authorization": "Bearer k"}, timeout=30)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        time.sleep(1.5)  # the cancelled run's batch drains
        health = httpx.get(f"{root}/health", timeout=10).json()
        assert health["in_flight"] == 0


def test_answers_through_create_app():
    from archon.server import create_app

    app = create_app({"fast": slow_pipeline(0.0)})
    with running(app) as root:
        r = httpx.post(f"{root}/v1/completions", json={"model": "fast", "prompt": ["a", "b"], "n": 2}, timeout=30)
    assert r.status_code == 200
    data = r.json()
    assert [c["index"] for c in data["choices"]] == [0, 1, 2, 3]
    assert data["usage"]["completion_tokens"] == 4 * 10  # scripted: 5 tokens per sample, 2 samples per run
    assert all(c["text"].startswith("answer") for c in data["choices"])
