"""Dataflow execution: every (node, query) program runs as soon as its inputs exist.

The level executor (``archon.engine.executor``) runs a batch level by level and round by
round in lockstep, so a level's tail runs with a shrinking batch while finished queries
wait, and no query's result exists before the whole batch is done. Here there are no
barriers:

- A query is *admitted* into a window of ``window`` queries in flight; the window is
  refilled as queries finish (continuous admission), from ``run``'s list or from
  ``submit`` calls (a server adds queries while others run).
- A program starts the moment its query's parents are done; its requests are admitted
  against the query's budget (``BudgetTracker``) and handed to its model's *lane*.
- A lane sends requests the way its engine wants them. In-process engines (llama.cpp,
  vLLM offline; any backend without ``agenerate``) get one batch per scheduling tick:
  everything pending from every live program (any level, any round, any query) goes out
  as one ``router.generate`` (plus one ``router.score``), ordered by prefix as before;
  what becomes ready meanwhile waits for the next tick. Server backends (``agenerate``:
  the OpenAI-compatible client) get each program's requests as soon as they exist,
  through the router's async path; the backend's ``max_concurrency`` bounds what is in
  flight, so the server's own continuous batching sees a steady stream.
- A query's result is emitted the moment its output node finishes.

Techniques do not change (the generator protocol stays). The call cache and budget checks
apply per request as before; the traces and usage of a query are those the level executor
gives for the same seeds (node traces are listed in level order, usage is summed in that
order). Where a DAG has parallel branches of different depth, a budget admission may see
a sibling branch's estimate where the level executor saw its real usage.

Everything runs on one asyncio event loop: ``run`` makes its own, ``submit`` uses the
caller's (``cancel`` and ``aclose`` must be called on that loop). Tick batches run in a
daemon thread, so the loop stays free and Ctrl-C is not held up by an engine call; results
already emitted are kept, unfinished queries are lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from archon.backends.accounting import CallTag
from archon.backends.router import ModelRouter
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    RewardRequest,
    RewardResult,
    ScoreResult,
    Usage,
)
from archon.data import NodeTrace, Query, QueryResult
from archon.engine.budget import Budget, BudgetTracker, Decision
from archon.engine.executor import _is_backend_failure, _QueryState, _rng_for, _skipped, _starved, call_record
from archon.engine.graph import PipelineGraph
from archon.techniques.base import Defaults, ModelRequest, ModelResult, NodeContext, Program

T = TypeVar("T")

# Default windows by backend kind: an in-process vLLM engine batches hundreds of sequences;
# llama.cpp serves one request at a time, so a small window gives first results sooner at
# no cost in throughput; a server gets enough queries to keep its concurrency full.
WINDOW_VLLM = 256
WINDOW_LLAMA_CPP = 4
WINDOW_PER_SERVER_SLOT = 2
DEFAULT_SERVER_SLOTS = 16  # a server backend that cannot say how many requests it takes at once


def default_window(router: ModelRouter, models: Iterable[str]) -> int:
    """The smallest window any of ``models``' backends asks for."""
    sizes = []
    for name in models:
        spec = router.registry.get(name)
        if spec.backend == "vllm":
            sizes.append(WINDOW_VLLM)
        elif spec.backend == "llama_cpp":
            sizes.append(WINDOW_LLAMA_CPP)
        else:
            # unset max_concurrency: the backend picks it from the server kind (one GET /models)
            limit = getattr(router.backend(name), "concurrency_limit", None)
            slots = spec.max_concurrency or (limit() if callable(limit) else DEFAULT_SERVER_SLOTS)
            sizes.append(max(1, slots) * WINDOW_PER_SERVER_SLOT)
    return min(sizes) if sizes else WINDOW_LLAMA_CPP


@dataclass
class _Program:
    run: _Run
    node: str
    program: Program
    ctx: NodeContext
    trace: NodeTrace
    pending: list[ModelRequest] = field(default_factory=list)


@dataclass
class _Round:
    """One yield of a program: its requests after budget admission, answered piecemeal."""

    program: _Program
    requests: list[ModelRequest | None]  # None: skipped by the budget
    decisions: list[Decision | None]
    answers: list[ModelResult | None]
    left: int


@dataclass
class _Run:
    """One admitted query."""

    query: Query
    seq: int
    state: _QueryState
    tracker: BudgetTracker
    future: asyncio.Future[QueryResult]
    waiting: dict[str, int]  # node -> parents not finished yet
    started: float
    live: int = 0  # programs running
    dropped: bool = False
    sends: set[asyncio.Task[None]] = field(default_factory=set)


@dataclass
class _Lane:
    """Where one model's requests wait for their engine."""

    model: str
    streams: bool | None = None  # None until the backend is known
    queue: list[tuple[_Round, int, ModelRequest]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


class DataflowExecutor:
    """Runs a pipeline graph over queries without level barriers (see the module docstring).

    ``run(queries, on_result)`` is the batch entry point (sync); ``submit``/``cancel``/``aclose``
    let an asyncio server add and drop queries while others run. ``window`` is the number of
    queries in flight (default: ``default_window`` for the pipeline's models).
    """

    def __init__(self, graph: PipelineGraph, router: ModelRouter, defaults: Defaults | None = None,
                 budget: Budget | None = None, window: int | None = None) -> None:
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.graph = graph
        self.router = router
        self.defaults = defaults or Defaults()
        self.budget = budget or Budget()
        models = sorted({m for t in graph.nodes.values() for m in t.models(self.defaults)})
        self.window = window or default_window(router, models)
        self._order = {node: i for i, node in enumerate(n for level in graph.levels() for n in level)}
        self._children: dict[str, list[str]] = {n: [] for n in graph.nodes}
        for node in graph.nodes:
            for parent in graph.parents(node):
                self._children[parent].append(node)
        self._roots = [n for n in graph.nodes if not graph.parents(n)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: deque[tuple[Query, asyncio.Future[QueryResult]]] = deque()
        self._runs: dict[str, _Run] = {}
        self._lanes: dict[str, _Lane] = {}
        self._seq = 0
        self._admitting = False
        self._parameters: dict[str, float | None] | None = None

    # -- entry points ---------------------------------------------------------------------

    def run(self, queries: Iterable[Query], on_result: Callable[[QueryResult], None] | None = None
            ) -> list[QueryResult]:
        """All ``queries``, ``on_result`` called as each finishes (completion order); the
        returned list is in input order. A backend failure raises after cancelling the rest."""
        batch = list(queries)
        ids = [q.id for q in batch]
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be unique within a batch")
        if not batch:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._run_all(batch, on_result))
        # Called from inside an event loop (a notebook): run on a loop of our own elsewhere.
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["out"] = asyncio.run(self._run_all(batch, on_result))
            except BaseException as exc:
                box["exc"] = exc

        thread = threading.Thread(target=work, name="archon-dataflow")
        thread.start()
        thread.join()
        if "exc" in box:
            raise box["exc"]
        return box["out"]  # type: ignore[no-any-return]

    async def submit(self, query: Query, *, first: bool = False) -> QueryResult:
        """Adds ``query`` to the running scheduler and waits for its result. Queries submitted
        together (concurrent tasks) share ticks; beyond the window they wait their turn
        (``first``: at the head of the line, e.g. a conversation's next turn).
        Cancelling the awaiting task drops the query's remaining work."""
        return await self._enqueue(query, first=first)

    def cancel(self, query_id: str) -> None:
        """Drops a query (a client went away): queued requests are not sent, in-flight server
        requests are cancelled, a running tick's answers are ignored. Unknown ids are ignored."""
        for i, (query, fut) in enumerate(self._waiting):
            if query.id == query_id:
                del self._waiting[i]
                fut.cancel()
                return
        run = self._runs.get(query_id)
        if run is None:
            return
        self._drop(run)
        run.future.cancel()
        self._admit()

    async def aclose(self) -> None:
        """Cancels every query and waits for the lanes to stop (not for a running engine call)."""
        while self._waiting:
            self._waiting.popleft()[1].cancel()
        for run in list(self._runs.values()):
            self._drop(run)
            run.future.cancel()
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()

    @property
    def in_flight(self) -> int:
        """Queries admitted and not finished."""
        return len(self._runs)

    @property
    def queued(self) -> int:
        """Queries waiting for a window slot."""
        return len(self._waiting)

    # -- admission ------------------------------------------------------------------------

    async def _run_all(self, batch: Sequence[Query], on_result: Callable[[QueryResult], None] | None
                       ) -> list[QueryResult]:
        done: asyncio.Queue[asyncio.Future[QueryResult]] = asyncio.Queue()
        results: dict[str, QueryResult] = {}
        try:
            for query in batch:
                self._enqueue(query).add_done_callback(done.put_nowait)
            for _ in batch:
                fut = await done.get()
                result = fut.result()
                results[result.id] = result
                if on_result is not None:
                    on_result(result)
        finally:
            await self.aclose()
            self._loop = None
        return [results[q.id] for q in batch]

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._runs or self._waiting:
                raise RuntimeError("this DataflowExecutor is running on another event loop")
            self._loop = loop
            self._lanes.clear()
        return loop

    def _enqueue(self, query: Query, first: bool = False) -> asyncio.Future[QueryResult]:
        loop = self._bind()
        if query.id in self._runs or any(q.id == query.id for q, _ in self._waiting):
            raise ValueError(f"query id {query.id!r} is already running")
        fut: asyncio.Future[QueryResult] = loop.create_future()
        qid = query.id
        fut.add_done_callback(lambda f: self.cancel(qid) if f.cancelled() else None)
        if first:
            self._waiting.appendleft((query, fut))
        else:
            self._waiting.append((query, fut))
        self._admit()
        return fut

    def _admit(self) -> None:
        # Not re-entrant: a query that finishes while being started (no model calls) frees its
        # slot inside this loop, which then goes on; recursing would nest one frame per query.
        if self._admitting:
            return
        self._admitting = True
        try:
            self._admit_waiting()
        finally:
            self._admitting = False

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._runs) < self.window:
            query, fut = self._waiting.popleft()
            if fut.done():
                continue
            if self._parameters is None:
                self._parameters = {n: self.router.registry.get(n).parameters for n in self.router.registry.names()}
            state = _QueryState(query)
            run = _Run(query, self._seq, state, BudgetTracker(self.budget, self._parameters, Usage()), fut,
                       {n: len(self.graph.parents(n)) for n in self.graph.nodes}, time.perf_counter())
            self._seq += 1
            self._runs[query.id] = run
            for node in self._roots:
                self._start(run, node)

    # -- programs -------------------------------------------------------------------------

    def _start(self, run: _Run, node: str) -> None:
        state = run.state
        inputs = [c for parent in self.graph.parents(node) for c in state.outputs.get(parent, [])]
        technique = self.graph.nodes[node]
        ctx = NodeContext(node, run.query, self.defaults,
                          _rng_for(self.defaults.seed, node, run.query.id))
        trace = NodeTrace(node=node, technique=technique.name, inputs=[c.id for c in inputs])
        state.traces.append(trace)
        prog = _Program(run, node, technique.run(ctx, inputs), ctx, trace)
        run.live += 1
        self._advance(prog, None)

    def _advance(self, prog: _Program, results: list[ModelResult] | None) -> None:
        """Sends the answers in, then dispatches the next round or finishes the program.
        Rounds the budget skips entirely are answered at once, in this loop."""
        run = prog.run
        while True:
            try:
                prog.pending = list(prog.program.send(results))  # type: ignore[arg-type]
                while not prog.pending:  # a round with no requests needs no backend
                    prog.pending = list(prog.program.send([]))
            except StopIteration as stop:
                output = list(stop.value or [])
                run.state.outputs[prog.node] = output
                prog.trace.outputs = output
                prog.trace.notes = prog.ctx.notes
                self._finished(prog)
                return
            except Exception as exc:  # a technique bug or bad model output must not sink the batch
                if _is_backend_failure(exc):
                    self._fail(run, exc)
                    return
                run.state.error = f"node {prog.node!r}: {type(exc).__name__}: {exc}"
                prog.trace.notes = [*prog.ctx.notes, run.state.error]
                self._finished(prog)
                return
            results = self._dispatch(prog)
            if results is None:
                return

    def _dispatch(self, prog: _Program) -> list[ModelResult] | None:
        """Admits the round's requests and queues them; returns the answers at once when
        the budget skipped every request."""
        requests, prog.pending = prog.pending, []
        rnd = _Round(prog, [], [], [], 0)
        for request in requests:
            decision = prog.run.tracker.admit(request)
            if decision.note:
                prog.ctx.note(decision.note)
            rnd.requests.append(decision.request)
            rnd.decisions.append(decision if decision.request is not None else None)
            if decision.request is None:
                prog.run.state.budget_skips.append(decision.note or "call skipped: budget spent")
                rnd.answers.append(_skipped(request))
            else:
                rnd.answers.append(None)
                rnd.left += 1
        if rnd.left == 0:
            return [a for a in rnd.answers if a is not None]
        by_model: dict[str, list[tuple[_Round, int, ModelRequest]]] = {}
        for i, request in enumerate(rnd.requests):
            if request is not None:
                by_model.setdefault(request.model, []).append((rnd, i, request))
        for model, items in by_model.items():
            self._queue(model, items)
        return None

    def _finished(self, prog: _Program) -> None:
        run = prog.run
        run.live -= 1
        if run.state.error is None:
            for child in self._children[prog.node]:
                run.waiting[child] -= 1
                if run.waiting[child] == 0:
                    self._start(run, child)
        done = prog.node == self.graph.output or (run.state.error is not None and run.live == 0)
        if done and not run.dropped and self._runs.get(run.query.id) is run:
            del self._runs[run.query.id]
            if not run.future.done():
                run.future.set_result(self._result(run))
            self._admit()

    def _fail(self, run: _Run, exc: BaseException) -> None:
        if run.dropped:
            return
        self._drop(run)
        if not run.future.done():
            run.future.set_exception(exc)
        self._admit()

    def _drop(self, run: _Run) -> None:
        run.dropped = True
        self._runs.pop(run.query.id, None)
        for task in list(run.sends):
            task.cancel()
        for lane in self._lanes.values():
            lane.queue = [item for item in lane.queue if item[0].program.run is not run]

    # -- answers --------------------------------------------------------------------------

    def _answered(self, rounds: list[_Round]) -> None:
        """Records finished rounds, releases their budget estimates, then resumes their
        programs in (query, level) order, so the next admissions see real usage."""
        rounds = sorted((r for r in rounds if not r.program.run.dropped),
                        key=lambda r: (r.program.run.seq, self._order[r.program.node]))
        for rnd in rounds:
            self._record(rnd)
        for rnd in rounds:
            if not rnd.program.run.dropped:
                self._advance(rnd.program, [a for a in rnd.answers if a is not None])

    def _record(self, rnd: _Round) -> None:
        prog = rnd.program
        state = prog.run.state
        answered = [(req, res) for req, res in zip(rnd.requests, rnd.answers, strict=True)
                    if req is not None and res is not None]
        # the level executor's order: generations, then scores, then rewards
        answered.sort(key=lambda pair: _kind_order(pair[0]))
        for req, res in answered:
            per_node = state.usage_by_node
            per_node[prog.node] = per_node.get(prog.node, Usage()) + res.usage
            prog.trace.usage = per_node[prog.node].to_dict()
            prog.trace.calls.append(call_record(req, res))
        spent = state.usage()
        for decision in rnd.decisions:
            if decision is not None:
                prog.run.tracker.release(decision, spent)

    def _result(self, run: _Run) -> QueryResult:
        state = run.state
        state.traces.sort(key=lambda t: self._order[t.node])
        state.usage_by_node = dict(sorted(state.usage_by_node.items(), key=lambda kv: self._order[kv[0]]))
        final = state.outputs.get(self.graph.output or "", [])
        best = final[0] if final else None
        return QueryResult(
            id=run.query.id,
            answer=best.text if best else "",
            final_answer=best.answer if best else None,
            candidates=final,
            usage=state.usage().to_dict(),
            usage_by_node={n: u.to_dict() for n, u in state.usage_by_node.items()},
            latency_s=time.perf_counter() - run.started,
            trace=state.traces,
            error=state.error or _starved(best is None, state.budget_skips),
        )

    # -- lanes ----------------------------------------------------------------------------

    def _queue(self, model: str, items: list[tuple[_Round, int, ModelRequest]]) -> None:
        lane = self._lanes.get(model)
        if lane is None:
            lane = self._lanes[model] = _Lane(model)
        if lane.streams:
            self._send(items)
            return
        lane.queue.extend(items)
        if lane.task is None or lane.task.done():
            assert self._loop is not None
            lane.task = self._loop.create_task(self._tick_loop(lane))

    async def _tick_loop(self, lane: _Lane) -> None:
        if lane.streams is None:
            try:
                backend = await run_in_daemon_thread(self.router.backend, lane.model)
            except Exception as exc:  # the engine cannot start: every query waiting on it fails
                items, lane.queue = lane.queue, []
                for run in {id(it[0].program.run): it[0].program.run for it in items}.values():
                    self._fail(run, exc)
                return
            lane.streams = hasattr(backend, "agenerate")
        if lane.streams:
            items, lane.queue = lane.queue, []
            by_round: dict[int, list[tuple[_Round, int, ModelRequest]]] = {}
            for item in items:
                by_round.setdefault(id(item[0]), []).append(item)
            for group in by_round.values():
                self._send(group)
            return
        while lane.queue:
            await asyncio.sleep(0)  # let programs resumed in this loop turn (and new submits) join the tick
            items, lane.queue = lane.queue, []
            await self._tick(items)

    async def _tick(self, items: list[tuple[_Round, int, ModelRequest]]) -> None:
        gens, scores, rewards = _by_kind(items)

        def work() -> tuple[list[GenerationResult], list[ScoreResult], list[RewardResult]]:
            g = self.router.generate([req for _, _, req in gens], _tags(gens)) if gens else []  # type: ignore[misc]
            s = self.router.score([req for _, _, req in scores], _tags(scores)) if scores else []  # type: ignore[misc]
            w = self.router.reward([req for _, _, req in rewards], _tags(rewards)) if rewards else []  # type: ignore[misc]
            return g, s, w

        try:
            g, s, w = await run_in_daemon_thread(work)
        except Exception as exc:
            for run in {id(it[0].program.run): it[0].program.run for it in items}.values():
                self._fail(run, exc)
            return
        self._deliver(list(zip(gens, g, strict=True)) + list(zip(scores, s, strict=True))
                      + list(zip(rewards, w, strict=True)))

    def _send(self, items: list[tuple[_Round, int, ModelRequest]]) -> None:
        """Stream mode: one program round's requests for one model, sent now."""
        run = items[0][0].program.run
        assert self._loop is not None
        task = self._loop.create_task(self._stream(items))
        run.sends.add(task)
        task.add_done_callback(run.sends.discard)

    async def _stream(self, items: list[tuple[_Round, int, ModelRequest]]) -> None:
        gens, scores, rewards = _by_kind(items)
        try:
            g = await self.router.agenerate([req for _, _, req in gens], _tags(gens)) if gens else []  # type: ignore[misc]
            s = await self.router.ascore([req for _, _, req in scores], _tags(scores)) if scores else []  # type: ignore[misc]
            w = (await run_in_daemon_thread(self.router.reward, [req for _, _, req in rewards], _tags(rewards))
                 if rewards else [])
        except asyncio.CancelledError:
            return
        except Exception as exc:
            self._fail(items[0][0].program.run, exc)
            return
        self._deliver(list(zip(gens, g, strict=True)) + list(zip(scores, s, strict=True))
                      + list(zip(rewards, w, strict=True)))

    def _deliver(self, answered: Sequence[tuple[tuple[_Round, int, ModelRequest], ModelResult]]) -> None:
        complete: dict[int, _Round] = {}
        for (rnd, i, _), res in answered:
            if rnd.program.run.dropped:
                continue
            rnd.answers[i] = res
            rnd.left -= 1
            if rnd.left == 0:
                complete[id(rnd)] = rnd
        if complete:
            self._answered(list(complete.values()))


def _by_kind(items: list[tuple[_Round, int, ModelRequest]]) -> tuple[list[Any], list[Any], list[Any]]:
    """Generation, score and reward requests apart: each kind has its own router call."""
    gens = [it for it in items if isinstance(it[2], GenerationRequest)]
    rewards = [it for it in items if isinstance(it[2], RewardRequest)]
    scores = [it for it in items if not isinstance(it[2], GenerationRequest | RewardRequest)]
    return gens, scores, rewards


def _kind_order(request: ModelRequest) -> int:
    return 0 if isinstance(request, GenerationRequest) else 2 if isinstance(request, RewardRequest) else 1


def _tags(batch: list[tuple[_Round, int, ModelRequest]]) -> list[CallTag]:
    return [CallTag(r.program.node, r.program.run.query.id) for r, _, _ in batch]


async def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` in a daemon thread: unlike the default executor, nothing waits for it at
    exit, so Ctrl-C during a long engine call ends the process at once."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, exc: BaseException | None) -> None:
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)

    def work() -> None:
        try:
            value, exc = fn(*args), None
        except BaseException as e:
            value, exc = None, e
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, value, exc)

    threading.Thread(target=work, name="archon-tick", daemon=True).start()
    return await fut
