"""The ASGI app: OpenAI's chat and text completion endpoints in front of archon pipelines.

Every request becomes one query per run (``n``) and prompt; queries are handed to the
pipeline's ``Admission`` (see ``admission.py``), which runs concurrent clients' queries
together so that each DAG level reaches the backend as one batch per model. The app only
translates: wire format in and out, auth, the queue limit, timeouts, client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from archon.data import Query, QueryResult
from archon.errors import ArchonError, BackendError
from archon.pipeline import Pipeline
from archon.server.admission import Admission, open_admission
from archon.server.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    Kind,
    RequestError,
    chunk_object,
    completion_object,
    cut_at_stop,
    error_body,
    run_extension,
    usage_of,
)

log = logging.getLogger("archon.server")

_NODE = re.compile(r"^node '([^']+)'")
_PIECE = re.compile(r"\S+\s*|\s+")


class _Refusal(Exception):
    """An error response decided before any work starts."""

    def __init__(self, status: int, message: str, kind: str, *, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = error_body(message, kind, code=code, param=param, **extra)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.status, headers=self.headers)


@dataclass
class _Counters:
    requests: int = 0
    rejected_queue_full: int = 0
    disconnects: int = 0
    timeouts: int = 0
    pipeline_errors: int = 0
    backend_errors: int = 0
    queries_submitted: int = 0
    queries_finished: int = 0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=32))


class ArchonServer:
    """State behind the app: the pipelines, their admissions, the queue count."""

    def __init__(self, pipelines: Mapping[str, Pipeline], *, api_key: str | None = None, max_queue: int = 256,
                 timeout_s: float | None = None, keepalive_s: float = 5.0) -> None:
        if not pipelines:
            raise ValueError("create_app needs at least one pipeline")
        if max_queue < 1:
            raise ValueError("max_queue must be at least 1")
        if api_key is not None and not api_key:
            raise ValueError("api_key is empty: pass None to serve without a key")
        self.pipelines = dict(pipelines)
        self._api_key = api_key
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.keepalive_s = keepalive_s
        self.in_flight = 0
        self.counters = _Counters()
        self.admissions: dict[tuple[str, tuple[tuple[str, Any], ...]], Admission] = {}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archon-engine")

    # -- plumbing ---------------------------------------------------------------------

    def _admission(self, model: str, overrides: dict[str, Any]) -> Admission:
        """One admission per (pipeline, changed defaults): queries that share one are batched together."""
        key = (model, tuple(sorted(overrides.items())))
        if key not in self.admissions:
            base = self.pipelines[model]
            self.admissions[key] = open_admission(base.with_defaults(**overrides) if overrides else base,
                                                  worker=self._worker)
        return self.admissions[key]

    def _check_auth(self, request: Request) -> None:
        if self._api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Refusal(401, "missing API key: send `Authorization: Bearer <key>`", "invalid_request_error",
                           code="missing_api_key")
        if not hmac.compare_digest(token.strip().encode(), self._api_key.encode()):
            raise _Refusal(401, "invalid API key", "invalid_request_error", code="invalid_api_key")

    def _retry_after(self) -> str:
        lat = self.counters.latencies
        return str(max(1, round(sum(lat) / len(lat)))) if lat else "1"

    def _finished(self, task: asyncio.Task[QueryResult], started: float) -> None:
        self.in_flight -= 1
        self.counters.queries_finished += 1
        if not task.cancelled() and task.exception() is None:
            self.counters.latencies.append(time.monotonic() - started)

    def _launch(self, model: str, runs: list[tuple[Query, dict[str, Any]]]) -> list[asyncio.Task[QueryResult]]:
        if len(runs) > self.max_queue:
            raise _Refusal(400, f"this request asks for {len(runs)} pipeline runs (n x prompts); the server "
                           f"admits at most {self.max_queue} at once (--max-queue)", "invalid_request_error",
                           code="too_many_runs", param="n")
        if self.in_flight + len(runs) > self.max_queue:
            self.counters.rejected_queue_full += 1
            raise _Refusal(429, f"the server is busy: {self.in_flight} pipeline runs in flight, at most "
                           f"{self.max_queue} (--max-queue); retry later", "rate_limit_exceeded",
                           code="queue_full", headers={"Retry-After": self._retry_after()})
        tasks = []
        started = time.monotonic()
        for query, overrides in runs:
            task = asyncio.create_task(self._admission(model, overrides).submit(query))
            self.in_flight += 1
            self.counters.queries_submitted += 1
            task.add_done_callback(lambda t: self._finished(t, started))
            tasks.append(task)
        return tasks

    def _failure(self, model: str, rid: str, exc: BaseException | None, result: QueryResult | None) -> _Refusal:
        """The error response for a failed run: 500 naming the node, 502 for the backend."""
        if result is not None and result.error is not None:
            self.counters.pipeline_errors += 1
            match = _NODE.match(result.error)
            log.warning("%s: pipeline %r failed: %s", rid, model, result.error)
            return _Refusal(500, f"pipeline {model!r} failed at {result.error}", "pipeline_error",
                            code="pipeline_error", node=match.group(1) if match else None)
        if isinstance(exc, BackendError):
            self.counters.backend_errors += 1
            log.warning("%s: backend failure: %s", rid, exc)
            return _Refusal(502, f"pipeline {model!r}: a model backend failed: {exc}", "backend_error",
                            code="backend_unavailable")
        if isinstance(exc, ArchonError):
            self.counters.pipeline_errors += 1
            log.warning("%s: pipeline %r error: %s", rid, model, exc)
            return _Refusal(500, f"pipeline {model!r}: {exc}", "pipeline_error", code="pipeline_error")
        log.error("%s: internal error", rid, exc_info=exc)
        return _Refusal(500, f"internal error: {type(exc).__name__}: {exc}", "server_error", code="internal_error")

    # -- endpoints --------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self.pipelines), "in_flight": self.in_flight,
                             "max_queue": self.max_queue})

    async def models(self, request: Request) -> Response:
        self._check_auth(request)
        data = []
        for name, pipe in sorted(self.pipelines.items()):
            data.append({"id": name, "object": "model", "created": 0, "owned_by": "archon",
                         "archon": {"nodes": list(pipe.graph.nodes), "levels": pipe.graph.levels(),
                                    "output": pipe.graph.output, "models": pipe.models()}})
        return JSONResponse({"object": "list", "data": data})

    async def metrics(self, request: Request) -> Response:
        """Counters, batch sizes, and the routers' backend call log: what batching actually did."""
        self._check_auth(request)
        routers = {id(p.router): p.router for p in self.pipelines.values()}
        by_model: dict[str, dict[str, int]] = {}
        for router in routers.values():
            for call in list(router.calls):
                entry = by_model.setdefault(call.model, {"requests": 0, "samples": 0, "prompts": 0})
                entry["requests"] += 1
                entry["samples"] += call.samples
                entry["prompts"] += call.requests
        batches = [size for a in self.admissions.values() for size in getattr(a, "batches", [])]
        c = self.counters
        return JSONResponse({
            "in_flight": self.in_flight, "max_queue": self.max_queue,
            "requests": {"total": c.requests, "rejected_queue_full": c.rejected_queue_full,
                         "disconnects": c.disconnects, "timeouts": c.timeouts,
                         "pipeline_errors": c.pipeline_errors, "backend_errors": c.backend_errors},
            "queries": {"submitted": c.queries_submitted, "finished": c.queries_finished},
            "batches": {"count": len(batches), "sizes": batches},
            "backend": {"requests": sum(m["requests"] for m in by_model.values()),
                        "samples": sum(m["samples"] for m in by_model.values()), "by_model": by_model},
        })

    async def chat_completions(self, request: Request) -> Response:
        return await self._complete(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self._complete(request, "text")

    async def _complete(self, request: Request, kind: Kind) -> Response:
        self.counters.requests += 1
        self._check_auth(request)
        req = await _parse(request, ChatCompletionRequest if kind == "chat" else CompletionRequest)
        try:
            req.refuse_unsupported()
            if isinstance(req, ChatCompletionRequest):
                inputs: list[dict[str, Any]] = [{"messages": req.chat()}]
            else:
                assert isinstance(req, CompletionRequest)
                inputs = [{"prompt": p, "metadata": {"format": "completion"}} for p in req.prompts()]
        except RequestError as exc:
            raise _Refusal(400, str(exc), "invalid_request_error", param=exc.param) from None
        if req.model not in self.pipelines:
            raise _Refusal(404, f"model {req.model!r} not found; this server serves: "
                           f"{', '.join(sorted(self.pipelines))}", "invalid_request_error",
                           code="model_not_found", param="model")
        pipe = self.pipelines[req.model]
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        overrides = req.defaults_overrides()
        base_seed = overrides.get("seed", pipe.defaults.seed)
        runs = []
        for p, item in enumerate(inputs):
            metadata = dict(item.pop("metadata", {}))
            if req.stops():
                metadata["stop"] = req.stops()
            for i in range(req.n):
                # Independent runs: run i is seeded seed + i, so its samples differ (and cache apart).
                run_overrides = {**overrides, "seed": base_seed + i} if i else overrides
                runs.append((Query(id=f"{rid}-{p}-{i}", metadata=metadata, **item), run_overrides))
        tasks = self._launch(req.model, runs)
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(
                self._stream(kind, rid, req.model, tasks, req.stops(), req.archon_trace, include_usage),
                media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        results = await self._collect(request, rid, req.model, tasks)
        answers = [cut_at_stop(r.answer, req.stops()) for r in results]
        return JSONResponse(completion_object(kind, rid, req.model,
                                              [(text, "stop") for text, _ in answers], results,
                                              trace=req.archon_trace))

    async def _collect(self, request: Request, rid: str, model: str,
                       tasks: list[asyncio.Task[QueryResult]]) -> list[QueryResult]:
        """Wait for every run, watching for a client disconnect and the timeout."""
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        watcher = asyncio.create_task(_client_gone(request))
        pending: set[asyncio.Future[Any]] = set(tasks)
        try:
            while pending:
                wait_s = None if deadline is None else max(0.0, deadline - loop.time())
                done, pending = await asyncio.wait(pending | {watcher}, timeout=wait_s,
                                                   return_when=asyncio.FIRST_COMPLETED)
                pending.discard(watcher)
                if watcher in done:
                    self.counters.disconnects += 1
                    log.info("%s: client went away; cancelling its %d run(s)", rid, len(tasks))
                    raise _Refusal(499, "client closed the request", "client_closed")
                if not done:
                    self.counters.timeouts += 1
                    raise _Refusal(504, f"pipeline {model!r} did not finish within {self.timeout_s:g}s (--timeout)",
                                   "timeout", code="timeout")
                for task in done:
                    exc, result = _outcome(task)
                    if exc is not None or (result is not None and result.error is not None):
                        raise self._failure(model, rid, exc, result)
            return [t.result() for t in tasks]
        finally:
            watcher.cancel()
            for task in tasks:
                if not task.done():
                    task.cancel()

    async def _stream(self, kind: Kind, rid: str, model: str, tasks: list[asyncio.Task[QueryResult]],
                      stops: list[str], trace: bool, include_usage: bool) -> AsyncIterator[str]:
        """SSE: role chunks at once, keep-alive comments while the pipeline runs, then each
        choice's answer in word-sized chunks as soon as its run's output node is done."""
        created = int(time.time())
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s
        index = {task: i for i, task in enumerate(tasks)}
        results: list[QueryResult] = []
        ended = False  # False in `finally` means the client went away mid-stream
        try:
            if kind == "chat":
                yield _sse(chunk_object(kind, rid, model, created, [
                    {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                     "logprobs": None} for i in range(len(tasks))]))
            pending: set[asyncio.Task[QueryResult]] = set(tasks)
            while pending:
                wait_s = self.keepalive_s
                if deadline is not None:
                    wait_s = min(wait_s, max(0.0, deadline - loop.time()))
                done, pending = await asyncio.wait(pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    if deadline is not None and loop.time() >= deadline:
                        self.counters.timeouts += 1
                        ended = True
                        yield _sse(error_body(f"pipeline {model!r} did not finish within {self.timeout_s:g}s "
                                              "(--timeout)", "timeout", code="timeout"))
                        return
                    yield ": keep-alive\n\n"
                    continue
                for task in sorted(done, key=index.__getitem__):
                    exc, result = _outcome(task)
                    if result is None or result.error is not None:
                        ended = True
                        yield _sse(self._failure(model, rid, exc, result).body)
                        return
                    results.append(result)
                    i = index[task]
                    text, _ = cut_at_stop(result.answer, stops)
                    for piece in _PIECE.findall(text):
                        delta = {"delta": {"content": piece}} if kind == "chat" else {"text": piece}
                        yield _sse(chunk_object(kind, rid, model, created,
                                                [{"index": i, **delta, "finish_reason": None, "logprobs": None}]))
                    end = {"delta": {}} if kind == "chat" else {"text": ""}
                    yield _sse(chunk_object(kind, rid, model, created,
                                            [{"index": i, **end, "finish_reason": "stop", "logprobs": None}],
                                            archon={"pipeline": model, "index": i,
                                                    **run_extension(result, trace=trace)}))
            if include_usage:
                yield _sse(chunk_object(kind, rid, model, created, [], usage=usage_of(results)))
            ended = True
            yield "data: [DONE]\n\n"
        finally:
            if not ended:
                self.counters.disconnects += 1
                log.info("%s: stream ended early; cancelling its remaining run(s)", rid)
            for task in tasks:
                if not task.done():
                    task.cancel()

    async def aclose(self) -> None:
        for admission in self.admissions.values():
            await admission.aclose()
        self.admissions.clear()
        self._worker.shutdown(wait=False)


def _outcome(task: asyncio.Task[QueryResult]) -> tuple[BaseException | None, QueryResult | None]:
    if task.cancelled():  # the admission dropped it: the server is shutting down
        return BackendError("the server is shutting down; the run was cancelled"), None
    exc = task.exception()
    return (exc, None) if exc is not None else (None, task.result())


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _parse(request: Request, model: type[ChatCompletionRequest] | type[CompletionRequest]
                 ) -> ChatCompletionRequest | CompletionRequest:
    body = await request.body()
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _Refusal(400, f"the request body is not valid JSON: {exc}", "invalid_request_error",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise _Refusal(400, "the request body must be a JSON object", "invalid_request_error", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        raise _Refusal(400, f"`{where}`: {first['msg']}" if where else first["msg"], "invalid_request_error",
                       param=where, code="invalid_value") from None


def create_app(pipelines: Mapping[str, Pipeline] | Sequence[Pipeline], *, api_key: str | None = None,
               max_queue: int = 256, timeout_s: float | None = None, keepalive_s: float = 5.0) -> Starlette:
    """An ASGI app serving ``pipelines`` (by name) behind OpenAI's API; mount it anywhere.

    Example::

        import uvicorn
        from archon import Pipeline
        from archon.server import create_app

        app = create_app([Pipeline.from_yaml("configs/quickstart.yaml")])
        uvicorn.run(app, host="127.0.0.1", port=8000)
    """
    named = dict(pipelines) if isinstance(pipelines, Mapping) else {p.name: p for p in pipelines}
    server = ArchonServer(named, api_key=api_key, max_queue=max_queue, timeout_s=timeout_s,
                          keepalive_s=keepalive_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await server.aclose()

    async def refusal(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refusal)
        return exc.response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(error_body(f"{request.method} {request.url.path}: {exc.detail}",
                                       "invalid_request_error", code=str(exc.status_code)),
                            status_code=exc.status_code)

    app = Starlette(
        routes=[
            Route("/health", server.health, methods=["GET"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
            Route("/v1/completions", server.completions, methods=["POST"]),
            Route("/debug/metrics", server.metrics, methods=["GET"]),
        ],
        exception_handlers={_Refusal: refusal, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.archon = server
    return app
