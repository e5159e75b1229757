"""How queries from many HTTP clients reach one executor: the admission protocol.

The server only needs three things from an engine: ``submit`` a query and await its
result, ``cancel`` a query whose client went away, and ``aclose``. ``open_admission`` is
the single place that picks the implementation, so replacing the micro-batcher below with
a continuously admitting executor is a one-line change there.

``MicroBatcher`` implements the protocol over the level executor: queries that arrive
within ``window_s`` of each other, or while a batch is running, are run together as one
``Executor.run`` in a worker thread, so every level of every client's pipeline goes to
the backend as one request per model (per round) instead of one per client. A batch that
has started cannot take newcomers; they form the next batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from archon.data import Query, QueryResult
from archon.engine.executor import Executor, _QueryState, _Task

if TYPE_CHECKING:
    from archon.pipeline import Pipeline

CANCELLED = "cancelled: the client went away"


class Admission(Protocol):
    """Queries in, results out; many callers at once, one engine underneath."""

    async def submit(self, query: Query) -> QueryResult:
        """Run ``query`` with everything else admitted; cancelling the awaiting task cancels the query."""
        ...

    def cancel(self, query_id: str) -> None:
        """Stop spending compute on ``query_id``; its result, if any, is dropped."""
        ...

    async def aclose(self) -> None:
        """Finish or fail what is admitted and release the worker."""
        ...


def open_admission(pipeline: Pipeline, *, worker: ThreadPoolExecutor | None = None) -> Admission:
    """The admission the server uses for ``pipeline``: the one line to change when the engine does.

    ``worker`` is the thread the micro-batcher runs executor batches on; the server passes
    one shared single thread so that batches of different pipelines never race on a backend.
    """
    del worker  # the dataflow executor runs its own engine thread and ticks
    return pipeline.executor()


@dataclass
class _CancellableExecutor(Executor):
    """The level executor, skipping the remaining levels of queries cancelled meanwhile."""

    cancelled: Callable[[str], bool] = field(default=lambda _qid: False)

    def _drive(self, tasks: list[_Task], states: dict[str, _QueryState]) -> None:
        keep = []
        for task in tasks:
            if self.cancelled(task.query.id):
                states[task.query.id].error = CANCELLED
                task.done = True
            else:
                keep.append(task)
        super()._drive(keep, states)


@dataclass
class _Entry:
    query: Query
    future: asyncio.Future[QueryResult]


class MicroBatcher:
    """Admission by micro-batches over ``Executor.run`` (see the module docstring).

    Cancelling a query that has not started removes it from the queue; cancelling one in
    a running batch skips its remaining DAG levels and drops its result.
    ``batches`` records the size of every batch run (observability, tests, benchmarks).
    """

    def __init__(self, pipeline: Pipeline, *, window_s: float = 0.02, max_batch: int = 256,
                 worker: ThreadPoolExecutor | None = None) -> None:
        self.pipeline = pipeline
        self.worker = worker
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches: list[int] = []
        self._pending: list[_Entry] = []
        self._running: set[str] = set()
        self._cancelled: set[str] = set()
        self._lock = threading.Lock()
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def submit(self, query: Query) -> QueryResult:
        if self._closed:
            raise RuntimeError("admission is closed")
        loop = asyncio.get_running_loop()
        entry = _Entry(query, loop.create_future())
        self._pending.append(entry)
        if self._worker is None:
            self._wake = asyncio.Event()
            self._worker = loop.create_task(self._loop(), name=f"archon-batcher-{self.pipeline.name}")
        assert self._wake is not None
        self._wake.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            self.cancel(query.id)
            raise

    def cancel(self, query_id: str) -> None:
        for e in self._pending:
            if e.query.id == query_id:
                e.future.cancel()  # not started: the worker drops it when it forms the next batch
        with self._lock:
            if query_id in self._running:
                self._cancelled.add(query_id)

    def _is_cancelled(self, query_id: str) -> bool:
        with self._lock:
            return query_id in self._cancelled

    async def _loop(self) -> None:
        assert self._wake is not None
        while not self._closed:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            await asyncio.sleep(self.window_s)  # let requests sent together arrive together
            batch = [e for e in self._pending if not e.future.done()][: self.max_batch]
            taken = {id(e) for e in batch}
            self._pending = [e for e in self._pending if id(e) not in taken and not e.future.done()]
            if batch:
                await self._run(batch)

    async def _run(self, batch: Sequence[_Entry]) -> None:
        self.batches.append(len(batch))
        with self._lock:
            self._running = {e.query.id for e in batch}
        executor = _CancellableExecutor(self.pipeline.graph, self.pipeline.router, self.pipeline.defaults,
                                        self.pipeline.budget, cancelled=self._is_cancelled)
        try:
            queries = [e.query for e in batch]
            results = await asyncio.get_running_loop().run_in_executor(self.worker, executor.run, queries)
        except Exception as exc:  # a backend failure fails the whole batch: every query sees it
            for e in batch:
                if not e.future.done():
                    e.future.set_exception(exc)
        else:
            for e, result in zip(batch, results, strict=True):
                if not e.future.done():
                    e.future.set_result(result)
        finally:
            with self._lock:
                self._running = set()
                self._cancelled.clear()

    async def aclose(self) -> None:
        """Drop the queue, skip the remaining levels of the running batch, wait for it to stop."""
        self._closed = True
        for e in self._pending:
            e.future.cancel()
        self._pending = []
        with self._lock:
            self._cancelled |= self._running
        if self._worker is not None:
            if self._wake is not None:
                self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None
