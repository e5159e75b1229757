"""The call cache: repeated calls are free, samples stay distinct, processes can share it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from scripted import scripted_router

from archon.backends.cache import CallCache
from archon.backends.types import GenerationRequest


def req(n=4, temperature=0.9, seed=0, prompt="p"):
    return GenerationRequest(model="embedded", prompt=prompt, n=n, temperature=temperature, seed=seed)


def test_repeated_call_costs_nothing_and_is_reported_as_hits(tmp_cache):
    router, backends = scripted_router(cache=tmp_cache)
    first = router.generate([req()])[0]
    again = router.generate([req()])[0]
    assert first.texts == again.texts
    assert again.usage.total_tokens == 0 and again.usage.cache_hits == 4
    assert len(backends["embedded"].batches) == 1
    assert first.usage.cache_hits == 0 and first.usage.completion_tokens == 20


def test_samples_are_distinct_by_index_and_partial_hits_fetch_only_the_rest(tmp_cache):
    router, backends = scripted_router(cache=tmp_cache)
    two = router.generate([req(n=2)])[0]
    assert two.texts[0] != two.texts[1]
    six = router.generate([req(n=6)])[0]
    assert six.texts[:2] == two.texts and six.usage.cache_hits == 2
    sent = backends["embedded"].batches[-1][0]
    assert (sent.n, sent.sample_offset) == (4, 2)


def test_key_covers_sampling_parameters(tmp_cache):
    router, backends = scripted_router(cache=tmp_cache)
    router.generate([req()])
    router.generate([req(temperature=0.1)])
    router.generate([req(seed=1)])
    router.generate([req(prompt="other")])
    assert len(backends["embedded"].batches) == 4


def test_two_processes_share_one_cache(tmp_path):
    path = tmp_path / "shared.sqlite"
    script = textwrap.dedent(f"""
        import sys
        from archon.backends.cache import CallCache
        from archon.backends.types import Sample
        cache = CallCache({str(path)!r})
        tag = sys.argv[1]
        for i in range(200):
            cache.put_many([(f"{{tag}}-{{i}}", Sample(text=tag))])
        """)
    procs = [subprocess.Popen([sys.executable, "-c", script, t]) for t in ("a", "b")]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    cache = CallCache(path)
    assert len(cache) == 400
    assert cache.get_many(["a-5"])["a-5"].text == "a"
    cache.close()


@pytest.mark.reliability
def test_garbage_cache_file_is_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "calls.sqlite"
    path.write_bytes(b"this is not a database\n" * 200)
    with caplog.at_level("WARNING"):
        cache = CallCache(path)
    router, _ = scripted_router(cache=cache)
    assert router.generate([req(n=2)])[0].texts  # works on the fresh cache
    aside = list(tmp_path.glob("calls.sqlite.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    assert str(path) in caplog.text and "damaged" in caplog.text and str(aside[0]) in caplog.text
    assert len(cache) == 2


@pytest.mark.reliability
def test_truncated_cache_file_is_moved_aside_and_replaced(tmp_path, caplog):
    path = tmp_path / "calls.sqlite"
    router, _ = scripted_router(cache=CallCache(path))
    for i in range(300):
        router.generate([req(n=4, prompt=f"prompt {i} " + "x" * 200)])
    router.close()
    data = path.read_bytes()
    assert len(data) > 100_000
    path.write_bytes(data[: len(data) // 3])
    for side in tmp_path.glob("calls.sqlite-*"):
        side.unlink()
    with caplog.at_level("WARNING"):
        router, _ = scripted_router(cache=CallCache(path))
        for i in range(300):  # reads that reach the missing pages find the damage
            router.generate([req(n=4, prompt=f"prompt {i} " + "x" * 200)])
    assert list(tmp_path.glob("calls.sqlite.corrupt-*")) and "damaged" in caplog.text
    again = router.generate([req(n=4, prompt="prompt 299 " + "x" * 200)])[0]
    assert again.usage.cache_hits == 4  # the fresh cache works
