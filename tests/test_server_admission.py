"""The micro-batcher on a scripted backend: control flow only (batching, cancel, close).

The real evidence that concurrent clients are batched is tests/test_server.py, against
the embedded model behind a real `archon serve`.
"""

from __future__ import annotations

import asyncio
import threading

from scripted import scripted_router

from archon.data import Query
from archon.pipeline import Pipeline
from archon.server.admission import CANCELLED, MicroBatcher
from archon.techniques import Fuse, Generate


def _pipeline(router) -> Pipeline:  # type: ignore[no-untyped-def]
    return Pipeline({"sample": Generate(samples=2), "fuse": Fuse()}, {"fuse": ["sample"]}, router=router,
                    cache=False)


def test_concurrent_submits_share_one_backend_request_per_level():
    router, backends = scripted_router()
    batcher = MicroBatcher(_pipeline(router))

    async def main():  # type: ignore[no-untyped-def]
        results = await asyncio.gather(*(batcher.submit(Query(id=f"q{i}", prompt=f"{i}+1=")) for i in range(8)))
        await batcher.aclose()
        return results

    results = asyncio.run(main())
    assert [r.id for r in results] == [f"q{i}" for i in range(8)]
    assert all(r.error is None and r.answer for r in results)
    assert batcher.batches == [8]
    assert len(backends["embedded"].batches) == 2  # two levels, one request each, for all 8 queries
    assert [len(b) for b in backends["embedded"].batches] == [8, 8]


def test_arrivals_during_a_batch_form_the_next_batch_and_cancel_drops_queued_queries():
    gate = threading.Event()
    router, backends = scripted_router()
    backend = backends["embedded"]
    original = backend.generate

    def slow_generate(requests):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return original(requests)

    backend.generate = slow_generate  # type: ignore[method-assign]
    batcher = MicroBatcher(_pipeline(router))

    async def main():  # type: ignore[no-untyped-def]
        first = asyncio.create_task(batcher.submit(Query(id="a", prompt="1+1=")))
        await asyncio.sleep(0.2)  # "a" is running, blocked in the backend
        later = [asyncio.create_task(batcher.submit(Query(id=f"b{i}", prompt="2+2="))) for i in range(3)]
        gone = asyncio.create_task(batcher.submit(Query(id="c", prompt="3+3=")))
        await asyncio.sleep(0.05)
        gone.cancel()  # a client that went away before its query started
        gate.set()
        out = await asyncio.gather(first, *later)
        await batcher.aclose()
        return out, gone

    results, gone = asyncio.run(main())
    assert gone.cancelled()
    assert [r.id for r in results] == ["a", "b0", "b1", "b2"]
    assert batcher.batches == [1, 3]  # "c" never ran
    assert all("3+3=" not in r.prefix_text() for b in backend.batches for r in b)


def test_cancel_during_a_batch_skips_the_remaining_levels():
    gate = threading.Event()
    router, backends = scripted_router()
    backend = backends["embedded"]
    original = backend.generate

    def slow_generate(requests):  # type: ignore[no-untyped-def]
        gate.wait(5)
        return original(requests)

    backend.generate = slow_generate  # type: ignore[method-assign]
    batcher = MicroBatcher(_pipeline(router))
    seen = {}

    async def main():  # type: ignore[no-untyped-def]
        keep = asyncio.create_task(batcher.submit(Query(id="keep", prompt="1+1=")))
        drop = asyncio.create_task(batcher.submit(Query(id="drop", prompt="2+2=")))
        await asyncio.sleep(0.2)  # both in level 1
        drop.cancel()
        await asyncio.sleep(0.05)
        gate.set()
        seen["keep"] = await keep
        await batcher.aclose()
        return drop

    drop = asyncio.run(main())
    assert drop.cancelled()
    assert seen["keep"].error is None
    level2 = backend.batches[1]
    assert len(backend.batches) == 2 and len(level2) == 1  # only "keep" reached the fuse level
    assert CANCELLED.startswith("cancelled")


def test_a_backend_failure_fails_every_query_of_the_batch():
    router, backends = scripted_router()

    def broken(requests):  # type: ignore[no-untyped-def]
        from archon.errors import BackendError

        raise BackendError("server down")

    backends["embedded"].generate = broken  # type: ignore[method-assign]
    batcher = MicroBatcher(_pipeline(router))

    async def main():  # type: ignore[no-untyped-def]
        out = await asyncio.gather(*(batcher.submit(Query(id=f"q{i}", prompt="x")) for i in range(3)),
                                   return_exceptions=True)
        await batcher.aclose()
        return out

    out = asyncio.run(main())
    assert all(type(e).__name__ == "BackendError" and "server down" in str(e) for e in out)
