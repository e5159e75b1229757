"""OpenAI-compatible HTTP servers: vLLM, SGLang, llama.cpp's server, hosted APIs.

The router calls backends synchronously from worker threads, but a batch wants many
requests in flight at once. So the backend owns a private event loop on a daemon thread
and drives ``AsyncOpenAI`` clients there; ``generate``/``score`` submit one coroutine per
batch and block on it, which works from any thread, repeatedly and concurrently.

Everything a server may do differently is absorbed here: fewer choices than ``n``
(llama.cpp's server returns one), several replicas behind one model name, transient
429/5xx/connection failures. The openai client's own retries are off so that this is
the only retry loop and every retry is visible in one place.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from archon.backends.registry import ModelSpec
from archon.backends.replicas import ReplicaPicker
from archon.backends.router import missing_runs
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

T = TypeVar("T")


class _Transient(Exception):
    """One attempt failed in a way a retry may fix; the message says how (which timeout...)."""


# Worth retrying: the server may recover. Other 4xx (unknown model, bad request, auth)
# will fail the same way again, so they raise at once.
_RETRY_STATUS = frozenset({408, 409, 429})


class OpenAIBackend:
    """A model behind one or more OpenAI-compatible base URLs.

    - Requests with ``prompt`` use ``/completions`` (prompt + assistant_prefix); requests
      with ``messages`` use ``/chat/completions``. A non-empty ``assistant_prefix`` on a
      chat becomes a final assistant message sent with extra_body
      ``{"continue_final_message": True, "add_generation_prompt": False}`` (vLLM and SGLang
      continue that message). Servers without that extension, llama.cpp's included, close
      the assistant turn and start a new one, so the prefix is not continued there.
    - Sample ``i`` of a request (index ``sample_offset + i``) is seeded ``seed + offset + i``
      when a seed is set, matching the call cache's per-index keys. When a server returns
      fewer choices than asked, the cap it showed is remembered and the missing samples
      are requested again (concurrently, each chunk seeded by its first index).
    - Usage: tokens as the server reports them, ``calls`` counts answered HTTP requests
      (failed attempts compute nothing and are not counted), ``latency_s`` is wall time
      per request. Per-choice token counts are rarely reported: a single choice gets the
      response's count, several get their logprob count or an even split of the total.
    - ``served`` counts answered requests per URL (load-balancing observability).
    """

    backoff_base_s = 0.5
    backoff_cap_s = 5.0

    def __init__(self, name: str, spec: ModelSpec) -> None:
        urls = [u.rstrip("/") for u in spec.base_urls()]
        if not urls:
            raise BackendError(
                f"model {name!r}: backend `openai` needs `base_url:` (e.g. http://127.0.0.1:8000/v1)")
        key = "EMPTY"  # local servers accept any key; the client insists on one
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env, "")
            if not key:
                raise BackendError(
                    f"model {name!r}: environment variable {spec.api_key_env} (named by `api_key_env:`) is not set")
        self.name = name
        self.spec = spec
        self.model = spec.api_model or name
        self.urls = urls
        self.served: Counter[str] = Counter()
        self._api_key = key
        self._n_cap: int | None = None
        self.replicas = ReplicaPicker(urls, spec.routing)
        self._replica_usage: dict[str, Usage] = {}
        self._clients: dict[str, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sem: asyncio.Semaphore | None = None
        self._start_lock = threading.Lock()

    # -- the private event loop ---------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=f"archon-openai-{self.name}", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
                self._sem = asyncio.Semaphore(max(1, self.spec.max_concurrency))
            return self._loop

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()).result()

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Awaits ``coro`` on the private loop from another event loop; cancelling the
        caller cancels the requests (the dataflow executor drops a disconnected query)."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._ensure_loop()))

    def close(self) -> None:
        with self._start_lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = self._sem = None
        if loop is None or thread is None:
            return
        clients = list(self._clients.values())
        self._clients.clear()

        async def shutdown() -> None:
            for client in clients:
                await client.close()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def _client(self, url: str) -> Any:
        if url not in self._clients:
            import httpx
            from openai import AsyncOpenAI

            self._clients[url] = AsyncOpenAI(
                base_url=url, api_key=self._api_key, max_retries=0,
                timeout=httpx.Timeout(self.spec.timeout_s, connect=self.spec.connect_timeout_s))
        return self._clients[url]

    @staticmethod
    async def _gather(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
        """All or nothing: the first failure cancels the siblings instead of leaving them running."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    # -- one HTTP request: retries, backoff, failover -----------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key not in ("", "EMPTY") else text

    def _who(self) -> str:
        sent = f" (server model {self.model!r})" if self.model != self.name else ""
        return f"model {self.name!r}{sent}"

    async def _call(self, endpoint: str, hint: str = "", route_key: str = "", **kwargs: Any) -> tuple[Any, str, int]:
        """Send one request to the replica the routing policy picks for ``route_key`` (the
        prompt: see ``replicas.py``); returns (response, url that answered, retry rounds it took)."""
        order = self.replicas.order(route_key)
        try:
            return await self._send(order, endpoint, hint, **kwargs)
        finally:
            self.replicas.finished(order[0])

    async def _send(self, order: list[str], endpoint: str, hint: str, **kwargs: Any) -> tuple[Any, str, int]:
        """Each round tries every URL once in ``order``, so a dead replica costs one refused
        connection; only after a whole round fails does it back
        off (exponential, jittered) and try again, for up to ``retry_window_s`` after the
        first failure (and at most ``max_retries`` rounds when that is set), so a server
        that restarts within the window is waited for.
        """
        import openai

        assert self._sem is not None
        last = ""
        rounds = 0
        first_failure: float | None = None
        while True:
            for url in order:
                try:
                    async with self._sem:
                        response = await self._attempt(url, endpoint, kwargs)
                except _Transient as exc:
                    last = str(exc)
                    self.replicas.failed(url)
                    continue
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    if status in _RETRY_STATUS or status >= 500:
                        last = f"{url}: HTTP {status} ({exc.message[:200]})"
                        continue
                    raise BackendError(self._scrub(self._status_message(url, status, exc.message, hint))) from None
                self.served[url] += 1
                return response, url, rounds
            rounds += 1
            now = time.monotonic()
            first_failure = now if first_failure is None else first_failure
            left = first_failure + self.spec.retry_window_s - now
            limit = self.spec.max_retries
            if left <= 0 or (limit is not None and rounds > limit):
                break
            delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (rounds - 1)) * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(delay, left))
        waited = time.monotonic() - first_failure
        raise BackendError(self._scrub(
            f"{self._who()}: no answer from {', '.join(self.urls)} after {rounds} "
            f"attempt{'s' if rounds > 1 else ''}{' per URL' if len(self.urls) > 1 else ''} over {waited:.1f}s "
            f"(retry_window_s={self.spec.retry_window_s:g}); last error: {last}. Is the server running at that URL?"))

    async def _attempt(self, url: str, endpoint: str, kwargs: dict[str, Any]) -> Any:
        """One HTTP request, with the three timeouts told apart.

        connect: ``connect_timeout_s`` (httpx). First byte: a non-streaming answer only
        arrives when generation is done, so after ``first_byte_timeout_s`` without one the
        server is asked ``GET /models``; no reply to that either means it is hung, and the
        request is abandoned. Generation: the whole answer within ``timeout_s`` (httpx read).
        Transient failures raise :class:`_Transient` saying which one happened.
        """
        import httpx
        import openai

        client = self._client(url)
        if endpoint == "chat":
            create = client.chat.completions.create
        elif endpoint == "completions":
            create = client.completions.create
        else:  # a vLLM route outside the OpenAI API, e.g. /pooling (served at the root, not /v1)
            create = functools.partial(self._post, client, f"{_root(url)}/{endpoint}")
        task = asyncio.ensure_future(create(model=self.model, **kwargs))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.spec.first_byte_timeout_s)
            if not done and not await self._alive(client):
                raise _Transient(f"{url}: first-byte timeout: nothing within first_byte_timeout_s="
                                 f"{self.spec.first_byte_timeout_s:g}, and GET /models got no reply (a hung server?)")
            return await task
        except openai.APITimeoutError as exc:
            if isinstance(exc.__cause__, httpx.ConnectTimeout):
                raise _Transient(f"{url}: connect timeout: no TCP connection within connect_timeout_s="
                                 f"{self.spec.connect_timeout_s:g}") from None
            raise _Transient(f"{url}: generation timeout: no complete answer within timeout_s="
                             f"{self.spec.timeout_s:g}") from None
        except openai.APIConnectionError as exc:
            raise _Transient(f"{url}: connection failed ({exc.__cause__ or exc})") from None
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def _alive(self, client: Any) -> bool:
        """Does the server answer a cheap request while ours is pending? (any HTTP status counts)"""
        import openai

        try:
            await client.with_options(timeout=min(10.0, self.spec.first_byte_timeout_s)).models.list()
        except openai.APIStatusError:
            return True
        except (openai.APIConnectionError, openai.APITimeoutError):
            return False
        return True

    def _status_message(self, url: str, status: int, message: str, hint: str) -> str:
        text = f"{self._who()}: HTTP {status} from {url}: {message[:300]}"
        if status == 404:
            text += (f". The server does not know model {self.model!r} (set `api_model:` to a name listed at "
                     f"{url}/models) or the URL lacks the API path (it usually ends in /v1)")
        elif status in (401, 403):
            env = self.spec.api_key_env
            text += f". Check the API key in ${env}" if env else ". The server wants an API key: set `api_key_env:`"
        if hint:
            text += f". {hint}"
        return text

    # -- generation ----------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        return self._run(self._gather([self._generate_one(r) for r in requests]))

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """The same from an event loop: the dataflow scheduler sends each program's requests as
        they become ready, and ``max_concurrency`` bounds what is in flight."""
        return await self._arun(self._gather([self._generate_one(r) for r in requests]))

    async def _generate_one(self, request: GenerationRequest) -> GenerationResult:
        started = time.perf_counter()
        usage = Usage()
        got: dict[int, Sample] = {}
        while len(got) < request.n:
            chunks = [
                (first, min(self._n_cap or count, start + count - first))
                for start, count in missing_runs(request.n, got)
                for first in range(start, start + count, self._n_cap or count)
            ]
            results = await self._gather([self._sample_chunk(request, first, size) for first, size in chunks])
            progress = False
            for (first, size), (samples, chunk_usage) in zip(chunks, results, strict=True):
                usage = usage + chunk_usage
                if 0 < len(samples) < size:
                    self._n_cap = min(self._n_cap or size, len(samples))
                for j, sample in enumerate(samples[:size]):
                    got[first + j] = sample
                progress = progress or bool(samples)
            if not progress:
                raise BackendError(f"{self._who()}: the server returned no choices")
        usage.latency_s = time.perf_counter() - started
        return GenerationResult([got[i] for i in range(request.n)], usage)

    async def _sample_chunk(self, r: GenerationRequest, first: int, size: int) -> tuple[list[Sample], Usage]:
        kwargs: dict[str, Any] = {"temperature": r.temperature, "top_p": r.top_p, "max_tokens": r.max_tokens}
        if not self.spec.sampling:  # e.g. o1 models reject these (Archon sends neither)
            kwargs = {}
        if size > 1:
            kwargs["n"] = size  # omitted for one: some servers reject `n` altogether
        if r.stop:
            kwargs["stop"] = list(r.stop)
        if r.seed is not None:
            kwargs["seed"] = r.seed + r.sample_offset + first
        parsed: list[tuple[str, str, list[TokenLogprob] | None]] = []
        if r.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in r.messages]
            if r.assistant_prefix:
                messages.append({"role": "assistant", "content": r.assistant_prefix})
                kwargs["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
            if r.logprobs:
                kwargs.update(logprobs=True, top_logprobs=r.top_logprobs)
            response, url, retries = await self._call("chat", route_key=r.prefix_text(), messages=messages, **kwargs)
            for c in sorted(response.choices, key=lambda c: c.index):
                lp = _chat_logprobs(c.logprobs, r.top_logprobs) if r.logprobs else None
                parsed.append((c.message.content or "", c.finish_reason or "stop", lp))
        else:
            if r.logprobs:
                kwargs["logprobs"] = r.top_logprobs
            response, url, retries = await self._call(
                "completions", route_key=r.prefix_text(), prompt=r.prompt + r.assistant_prefix, **kwargs)
            for c in sorted(response.choices, key=lambda c: c.index):
                lp = _completion_logprobs(c.logprobs, r.top_logprobs) if r.logprobs else None
                parsed.append((c.text, c.finish_reason or "stop", lp))
        usage = self._count(url, _usage(response))
        usage.retries = retries
        counts = _split_tokens(usage.completion_tokens, [lp for _, _, lp in parsed])
        samples = [Sample(text=text, finish_reason=finish, logprobs=lp, completion_tokens=k)
                   for (text, finish, lp), k in zip(parsed, counts, strict=True)]
        return samples, usage

    # -- scoring -------------------------------------------------------------------------

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return self._run(self._gather([self._score_one(r) for r in requests]))

    async def ascore(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return await self._arun(self._gather([self._score_one(r) for r in requests]))

    async def _score_one(self, request: ScoreRequest) -> ScoreResult:
        """Prompt-token logprobs via ``echo=True`` on /completions, one request per continuation.

        ``max_tokens`` is 1, not 0: llama.cpp's server reads 0 as "until the context is full".
        """
        if request.prompt is None:
            raise BackendError(
                f"{self._who()}: scoring over HTTP needs a `prompt`, not `messages`: the chat template is "
                "applied on the server, so where the continuation starts cannot be located")
        started = time.perf_counter()
        prompt = request.prompt + request.assistant_prefix
        results = await self._gather([self._score_continuation(prompt, c) for c in request.continuations])
        usage = sum((u for _, u in results), Usage())
        usage.latency_s = time.perf_counter() - started
        per_token = [values for values, _ in results]
        return ScoreResult([sum(v) for v in per_token], per_token, usage)

    async def _score_continuation(self, prompt: str, continuation: str) -> tuple[list[float], Usage]:
        text = prompt + continuation
        hint = "Scoring sends echo=True, logprobs=1 to /completions; this server may not support echo"
        response, url, retries = await self._call(
            "completions", hint=hint, route_key=text, prompt=text, max_tokens=1, temperature=0.0, echo=True,
            logprobs=1)
        choice = response.choices[0] if response.choices else None
        lp = choice.logprobs if choice is not None else None
        if choice is None or lp is None or not lp.tokens or not lp.token_logprobs or not choice.text.startswith(text):
            raise BackendError(
                f"{self._who()}: {url} did not echo the prompt with logprobs, which scoring needs "
                "(vLLM and llama.cpp's server do); score with a llama_cpp or vllm backend instead")
        values = [
            value for start, end, value in _token_spans(text, lp.tokens, lp.text_offset, lp.token_logprobs)
            if start < len(text) and end > len(prompt) and value is not None  # first token has none
        ]
        usage = self._count(url, _usage(response))
        usage.retries = retries
        return values, usage

    # -- per-replica observability -------------------------------------------------------

    def _count(self, url: str, usage: Usage) -> Usage:
        self._replica_usage[url] = self._replica_usage.get(url, Usage()) + usage
        return usage

    def stats(self) -> dict[str, dict[str, float | None]]:
        """Per replica URL: answered requests, tokens, and the prefix-cache hit rate the server
        reported (``None`` where it reports no cached tokens), beside the router's own estimate."""
        routed = self.replicas.stats()
        out: dict[str, dict[str, float | None]] = {}
        for url in self.urls:
            u = self._replica_usage.get(url, Usage())
            reported = u.cached_prompt_tokens / u.prompt_tokens if u.prompt_tokens and u.cached_prompt_tokens else None
            out[url] = {"requests": self.served[url], "prompt_tokens": u.prompt_tokens,
                        "cached_prompt_tokens": u.cached_prompt_tokens, "server_hit_rate": reported,
                        **routed[url]}
        return out

    # -- reward / pooling models ------------------------------------------------------------

    @staticmethod
    async def _post(client: Any, url: str, **body: Any) -> Any:
        return await client.post(url, cast_to=object, body=body)

    def reward(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        """A vLLM server's ``/pooling`` endpoint (``vllm serve MODEL --runner pooling``), one
        HTTP request per text, all concurrent; chat messages are templated by the server."""
        return self._run(self._gather([self._reward_one(r) for r in requests]))

    async def _reward_one(self, request: RewardRequest) -> RewardResult:
        started = time.perf_counter()
        hint = "Reward models are read from vLLM's /pooling endpoint (start the server with --runner pooling)"
        if request.messages is not None:
            body: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in request.messages],
                                    "add_generation_prompt": request.messages[-1].role != "assistant"}
        else:
            body = {"input": request.prompt}
        response, url, _ = await self._call("pooling", hint=hint, route_key=request.prefix_text(), **body)
        items = response.get("data") if isinstance(response, dict) else None
        if not isinstance(items, list) or not items:
            raise BackendError(f"{self._who()}: {url} answered /pooling without `data`; is it a pooling model?")
        usage = _usage(response)
        usage.latency_s = time.perf_counter() - started
        return RewardResult(_pooled_rows(items[0].get("data")), usage)


def _pooled_rows(data: Any) -> list[list[float]]:
    """vLLM's pooling ``data``: a scalar, a vector, or one row per pooled position."""
    if isinstance(data, (int, float)):
        return [[float(data)]]
    if data and all(isinstance(x, (int, float)) for x in data):
        return [[float(x) for x in data]]
    return [[float(v) for v in (row if isinstance(row, list) else [row])] for row in data]


def _root(url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port`` (vLLM serves its pooling routes at the root)."""
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _usage(response: Any) -> Usage:
    u = response.get("usage") if isinstance(response, dict) else getattr(response, "usage", None)
    if isinstance(u, dict):
        return Usage(calls=1, prompt_tokens=int(u.get("prompt_tokens") or 0),
                     completion_tokens=int(u.get("completion_tokens") or 0))
    usage = Usage(calls=1)
    if u is not None:
        usage.prompt_tokens = u.prompt_tokens or 0
        usage.completion_tokens = u.completion_tokens or 0
        details = getattr(u, "prompt_tokens_details", None)
        usage.cached_prompt_tokens = (getattr(details, "cached_tokens", None) or 0) if details else 0
    return usage


def _split_tokens(total: int, logprobs: list[list[TokenLogprob] | None]) -> list[int]:
    if len(logprobs) == 1:
        return [total]
    if logprobs and all(lp is not None for lp in logprobs):
        return [len(lp or ()) for lp in logprobs]
    base, extra = divmod(total, max(1, len(logprobs)))
    return [base + (1 if i < extra else 0) for i in range(len(logprobs))]


def _best(top: dict[str, float], k: int) -> dict[str, float]:
    return dict(sorted(top.items(), key=lambda kv: -kv[1])[:k])


def _completion_logprobs(lp: Any, k: int) -> list[TokenLogprob] | None:
    if lp is None or lp.tokens is None:
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    return [TokenLogprob(tok, float(value) if value is not None else 0.0, _best(dict(top or {}), k))
            for tok, value, top in zip(lp.tokens, lp.token_logprobs or [], tops, strict=False)]


def _chat_logprobs(lp: Any, k: int) -> list[TokenLogprob] | None:
    if lp is None or lp.content is None:
        return None
    return [TokenLogprob(t.token, float(t.logprob), _best({a.token: float(a.logprob) for a in t.top_logprobs or ()}, k))
            for t in lp.content]


def _token_spans(text: str, tokens: list[str], offsets: list[int] | None,
                 values: list[float | None]) -> list[tuple[int, int, float | None]]:
    """Character span of each echoed token.

    The token strings themselves are trusted when they spell out the text (they do on vLLM
    and llama.cpp); ``text_offset`` is the fallback, since servers disagree on whether it
    counts characters or bytes. A token straddling the prompt/continuation boundary counts
    for the continuation.
    """
    starts: list[int] = []
    pos = 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
    if not "".join(tokens).startswith(text) and offsets and len(offsets) == len(tokens):
        starts = list(offsets)
    ends = [*starts[1:], starts[-1] + len(tokens[-1])] if tokens else []
    return list(zip(starts, ends, values, strict=False))
