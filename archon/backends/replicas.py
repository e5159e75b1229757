"""Which replica of a model serves a request: prefix-aware, with a load-balancing fallback.

Several servers behind one model name each keep their own prefix (KV) cache. archon's
pipelines send many requests that share a long prefix (a question's samples, then its
critiques, rankings and fusions), so sending them to the replica that already holds that
prefix skips its prefill; spreading them round-robin makes every replica compute it again.

The policy is the one cache-aware routers use (SGLang's router, its gateway SMG): each
replica has an approximate mirror of what it has cached (here: chained hashes of fixed-size
character blocks of the prompts sent to it, least recently used evicted), and

1. if the load is imbalanced -- the busiest replica has more than ``balance_abs_threshold``
   requests in flight beyond the idlest *and* more than ``balance_rel_threshold`` times as
   many -- the request goes to the least-loaded replica;
2. otherwise, if some replica's cached prefix covers at least ``cache_threshold`` of the
   prompt, the request goes to the replica with the longest match (ties: least loaded);
3. otherwise to the replica with the smallest mirror (the most cache room), ties least loaded.

Defaults are SMG's documented ``cache_aware`` defaults (0.3 and 1.5) except the absolute
imbalance threshold: 4, not 64. SMG's 64 assumes replicas that batch hundreds of sequences;
a pipeline's burst over servers that run one request at a time (llama.cpp) never reaches it,
and all requests sharing a prompt template piled on one replica (measured with
``benchmarks/perf_replica_routing.py``: 43 vs 20 requests, slower than round-robin). With many
requests in flight the relative threshold governs, as in SMG. The mirror is
approximate: archon does not see the server's tokens or evictions, so it counts characters,
not tokens, and caps each mirror at ``max_blocks``. ``policy: round_robin`` restores plain
rotation. Whatever the policy, a replica that fails is skipped: the returned order lists
every replica, the chosen one first.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ReplicaRouting(BaseModel):
    """How requests for one model are spread over its ``base_url`` replicas."""

    model_config = ConfigDict(extra="forbid")

    policy: Literal["prefix", "round_robin"] = Field(
        "prefix", description="prefix: cache-aware with a load fallback; round_robin: rotate")
    cache_threshold: float = Field(0.3, ge=0.0, le=1.0,
                                   description="share of the prompt a replica must hold to win it")
    balance_abs_threshold: int = Field(4, ge=0, description="in-flight gap that counts as imbalance (SMG: 64)")
    balance_rel_threshold: float = Field(1.5, ge=1.0, description="in-flight ratio that counts as imbalance")
    block_chars: int = Field(64, ge=1, description="granularity of the cache mirror, in characters")
    max_blocks: int = Field(200_000, ge=1, description="blocks remembered per replica (LRU)")
    down_cooldown_s: float = Field(5.0, ge=0.0, description="a replica that failed to answer is avoided this long")


def block_hashes(text: str, block_chars: int) -> list[bytes]:
    """Chained digests of the prompt's complete leading blocks: digest ``i`` names text[: (i+1)*block]."""
    out: list[bytes] = []
    prev = b""
    for start in range(0, len(text) - block_chars + 1, block_chars):
        prev = hashlib.blake2b(prev + text[start:start + block_chars].encode(), digest_size=12).digest()
        out.append(prev)
    return out


@dataclass
class _Mirror:
    """What archon believes one replica has cached, as an LRU set of chained block digests."""

    capacity: int
    blocks: OrderedDict[bytes, None] = field(default_factory=OrderedDict)

    def match(self, hashes: list[bytes]) -> int:
        """Number of leading blocks present (a chained digest implies all blocks before it)."""
        lo, hi = 0, len(hashes)
        while lo < hi:  # presence is monotone along the chain, up to eviction: binary search
            mid = (lo + hi + 1) // 2
            if hashes[mid - 1] in self.blocks:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def insert(self, hashes: list[bytes]) -> None:
        # Deepest block first, so the leading blocks are the most recent and evicted last:
        # presence then stays monotone along the chain, as in an engine's own LRU block cache.
        for h in reversed(hashes):
            self.blocks[h] = None
            self.blocks.move_to_end(h)
        while len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


class ReplicaPicker:
    """Chooses a replica per request and keeps the per-replica counts it is judged by.

    Thread-safe: one backend drives it from its event loop, tests and stats readers from others.
    """

    def __init__(self, urls: list[str], routing: ReplicaRouting | None = None) -> None:
        if not urls:
            raise ValueError("ReplicaPicker needs at least one URL")
        self.urls = list(urls)
        self.routing = routing or ReplicaRouting()
        self.in_flight: Counter[str] = Counter()
        self.routed: Counter[str] = Counter()
        self.matched_chars: Counter[str] = Counter()
        self.prompt_chars: Counter[str] = Counter()
        self._mirrors = {u: _Mirror(self.routing.max_blocks) for u in self.urls}
        self._down_until: dict[str, float] = {}
        self._next = 0
        self._lock = threading.Lock()

    def order(self, prompt: str) -> list[str]:
        """Every replica, the chosen one first, then the rest in rotation (failover order).

        The chosen replica's load grows by one until ``finished(order[0])`` is called.
        """
        with self._lock:
            if len(self.urls) == 1:
                first = self.urls[0]
                hashes: list[bytes] = []
                matched = 0
            elif self.routing.policy == "round_robin":
                first = self.urls[self._next]
                self._next = (self._next + 1) % len(self.urls)
                hashes = []
                matched = 0
            else:
                hashes = block_hashes(prompt, self.routing.block_chars)
                first, matched = self._choose(prompt, hashes)
            self.routed[first] += 1
            # Load counts from routing, not from the HTTP send: requests queued behind the
            # client's concurrency bound are the backlog that imbalance is about.
            self.in_flight[first] += 1
            self.prompt_chars[first] += len(prompt)
            self.matched_chars[first] += matched * self.routing.block_chars
            if hashes:
                self._mirrors[first].insert(hashes)  # at dispatch: the next same-prefix request follows
            i = self.urls.index(first)
            return self.urls[i:] + self.urls[:i]

    def _choose(self, prompt: str, hashes: list[bytes]) -> tuple[str, int]:
        r = self.routing
        now = time.monotonic()
        urls = [u for u in self.urls if self._down_until.get(u, 0.0) <= now] or self.urls
        loads = {u: self.in_flight[u] for u in urls}
        least = min(urls, key=lambda u: (loads[u], self.urls.index(u)))
        hi, lo = max(loads.values()), min(loads.values())
        if hi - lo > r.balance_abs_threshold and hi > r.balance_rel_threshold * lo:
            return least, self._mirrors[least].match(hashes)
        matches = {u: self._mirrors[u].match(hashes) for u in urls}
        best = max(urls, key=lambda u: (matches[u], -loads[u], -self.urls.index(u)))
        if prompt and matches[best] * r.block_chars >= r.cache_threshold * len(prompt):
            return best, matches[best]
        roomiest = min(urls, key=lambda u: (len(self._mirrors[u].blocks), loads[u], self.urls.index(u)))
        return roomiest, matches[roomiest]

    def failed(self, url: str) -> None:
        """The replica did not answer: route around it for ``down_cooldown_s``."""
        with self._lock:
            self._down_until[url] = time.monotonic() + self.routing.down_cooldown_s

    def finished(self, url: str) -> None:
        """The request routed to ``url`` by ``order`` is done (answered or failed over)."""
        with self._lock:
            self.in_flight[url] -= 1

    def stats(self) -> dict[str, dict[str, float]]:
        """Per replica: requests routed to it and the share of prompt characters its mirror held."""
        with self._lock:
            return {
                u: {"routed": self.routed[u],
                    "mirror_hit_rate": (self.matched_chars[u] / self.prompt_chars[u]) if self.prompt_chars[u] else 0.0}
                for u in self.urls
            }
