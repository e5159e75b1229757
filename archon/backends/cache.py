"""Persistent call cache: one row per generated sample.

Keys are built from backend-independent content (model name, prompt, sampling
parameters, seed, sample index), so a cached sample is reused whichever engine
produced it, and ``n`` samples at temperature > 0 stay distinct. SQLite in WAL mode
lets several processes (parallel search workers) share one file.

Unseeded requests (``seed: null``) are cached too, keyed by sample index with a null
seed. So with the cache on, a rerun returns the first run's samples (``--no-cache``, or
another cache path, draws fresh ones). That is the choice on purpose: an unseeded sample
is still a fair draw from the same distribution, and the cache is what makes ``archon
eval`` resumable and a search affordable; runs that must differ should not share a cache.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from archon.backends.types import GenerationRequest, Sample, TokenLogprob

_SCHEMA = "CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def sample_key(request: GenerationRequest, index: int) -> str:
    payload = {
        "model": request.model,
        "prompt": request.prompt,
        "messages": [[m.role, m.content] for m in request.messages] if request.messages else None,
        "prefix": request.assistant_prefix,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "max_tokens": request.max_tokens,
        "stop": list(request.stop),
        "seed": request.seed,
        "logprobs": request.logprobs,
        "top_logprobs": request.top_logprobs,
        "index": index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _encode(sample: Sample) -> str:
    return json.dumps(asdict(sample))


def _decode(value: str) -> Sample:
    data = json.loads(value)
    logprobs = data.get("logprobs")
    data["logprobs"] = [TokenLogprob(**t) for t in logprobs] if logprobs is not None else None
    data["cached"] = True
    return Sample(**data)


class CallCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        # Switching to WAL takes an exclusive lock that SQLite's busy timeout does not
        # wait for; workers opening one cache at the same moment must retry it.
        for attempt in range(100):
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute(_SCHEMA)
                self._conn.commit()
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.05 + random.random() * 0.1)

    def get_many(self, keys: list[str]) -> dict[str, Sample]:
        found: dict[str, Sample] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT key, value FROM samples WHERE key IN ({marks})", chunk)
                found.update({k: _decode(v) for k, v in rows})
        return found

    def put_many(self, items: list[tuple[str, Sample]]) -> None:
        if not items:
            return
        with self._lock:
            self._conn.executemany(
                "INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)",
                [(k, _encode(s)) for k, s in items],
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
