"""Prefix-aware replica routing: the policy on its own, then over two real llama.cpp servers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest
from servers import LlamaServer

from archon.backends.openai_compat import OpenAIBackend
from archon.backends.registry import ModelSpec
from archon.backends.replicas import ReplicaPicker, ReplicaRouting, block_hashes
from archon.backends.types import GenerationRequest

A, B, C = "http://a/v1", "http://b/v1", "http://c/v1"


def question(i: int) -> str:
    return f"Question {i}: " + " ".join(f"word{i}-{k}" for k in range(40)) + "\nAnswer:"


def test_block_hashes_are_chained_over_complete_blocks():
    text = "x" * 130
    hashes = block_hashes(text, 64)
    assert len(hashes) == 2  # the 2-character tail is not a complete block
    first = hashlib.blake2b(("x" * 64).encode(), digest_size=12).digest()
    assert hashes[0] == first
    assert hashes[1] == hashlib.blake2b(first + ("x" * 64).encode(), digest_size=12).digest()
    assert block_hashes("y" + text[1:], 64)[1] != hashes[1]  # a change early on changes every later digest


def test_same_prefix_same_replica_new_prefix_goes_to_the_emptiest():
    picker = ReplicaPicker([A, B])
    first = [picker.order(question(i))[0] for i in range(4)]
    assert first == [A, B, A, B]  # no match anywhere: the replica with the smallest mirror
    for i in range(4):  # every later request of a question follows its first one
        assert picker.order(question(i) + " more text")[0] == first[i]
    stats = picker.stats()
    assert stats[A]["routed"] == stats[B]["routed"] == 4
    assert 0.4 < stats[A]["mirror_hit_rate"] < 0.6  # half the requests were repeats


def test_a_short_match_below_the_threshold_does_not_bind():
    picker = ReplicaPicker([A, B], ReplicaRouting(cache_threshold=0.9))
    shared = "s" * 128
    assert picker.order(shared + "a" * 1000)[0] == A
    # only 128 of 1,128 characters are held by A: below 0.9, so the emptier replica wins
    assert picker.order(shared + "b" * 1000)[0] == B


def test_imbalance_sends_to_the_least_loaded_replica():
    picker = ReplicaPicker([A, B], ReplicaRouting(balance_abs_threshold=2, balance_rel_threshold=1.5))
    routed = [picker.order(question(0))[0] for _ in range(3)]
    assert routed == [A, A, A]  # loads 0-0, 1-0, 2-0: no gap above 2, so the prefix holder wins
    assert picker.in_flight == {A: 3}  # load counts from routing until finished()
    # 3 - 0 > 2 and 3 > 1.5 * 0: imbalance, so the least loaded replica gets it
    assert picker.order(question(0))[0] == B
    # 3 - 1 is no imbalance; both now hold the prefix, so the tie goes to the less loaded
    assert picker.order(question(0))[0] == B
    for _ in range(3):
        picker.finished(A)
    for _ in range(2):
        picker.finished(B)
    assert picker.order(question(1))[0] == A  # a new question: A and B equally full and idle


def test_round_robin_rotates_and_orders_failover():
    picker = ReplicaPicker([A, B, C], ReplicaRouting(policy="round_robin"))
    assert [picker.order(question(0)) for _ in range(3)] == [[A, B, C], [B, C, A], [C, A, B]]


def test_a_failed_replica_is_avoided_for_the_cooldown():
    picker = ReplicaPicker([A, B], ReplicaRouting(down_cooldown_s=60))
    assert picker.order(question(0))[0] == A
    picker.finished(A)
    picker.failed(A)
    assert picker.order(question(0)) == [B, A]  # A stays in the failover order
    picker2 = ReplicaPicker([A, B], ReplicaRouting(down_cooldown_s=0))
    picker2.order(question(0))
    picker2.failed(A)
    assert picker2.order(question(0))[0] == A  # cooldown over at once


def test_lru_eviction_keeps_leading_blocks_longest():
    picker = ReplicaPicker([A], ReplicaRouting(max_blocks=3, block_chars=4))
    mirror = picker._mirrors[A]
    text = "aaaabbbbccccdddd"
    hashes = block_hashes(text, 4)
    mirror.insert(hashes)  # 4 blocks into room for 3: the deepest one goes
    assert mirror.match(hashes) == 3


# -- two real servers ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_servers() -> Iterator[tuple[LlamaServer, LlamaServer]]:
    pytest.importorskip("llama_cpp", reason="needs llama-cpp-python[server] (the `embedded` extra)")
    with LlamaServer(alias="gemma", n_threads=1) as one, LlamaServer(alias="gemma", n_threads=1) as two:
        yield one, two


@pytest.mark.server
def test_all_samples_of_a_question_land_on_one_server(two_servers):
    one, two = two_servers
    b = OpenAIBackend("gemma", ModelSpec(backend="openai", base_url=[one.base_url, two.base_url]))
    try:
        for i in range(6):  # llama.cpp returns one choice: n=3 becomes 3 requests
            before = dict(b.served)
            [res] = b.generate([GenerationRequest(model="gemma", prompt=question(i), n=3, max_tokens=2, seed=i)])
            assert len(res.samples) == 3
            grew = {u for u in (one.base_url, two.base_url) if b.served[u] > before.get(u, 0)}
            assert len(grew) == 1, f"question {i} was spread over {grew}"
        # then all six at once, concurrently: still balanced, and every repeat is a mirror hit
        b.generate([GenerationRequest(model="gemma", prompt=question(i) + " again", max_tokens=2, seed=i)
                    for i in range(6)])
    finally:
        b.close()
    counts = [b.served[one.base_url], b.served[two.base_url]]
    assert sum(counts) == 24 and max(counts) <= 2 * min(counts)
    stats = b.stats()
    assert all(s["mirror_hit_rate"] > 0.5 for s in stats.values())
    assert {s["requests"] for s in stats.values()} == set(counts)
