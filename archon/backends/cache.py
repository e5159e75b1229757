"""Persistent call cache: one row per generated sample.

Keys are built from backend-independent content (model name, prompt, sampling
parameters, seed, sample index), so a cached sample is reused whichever engine
produced it, and ``n`` samples at temperature > 0 stay distinct. SQLite in WAL mode
lets several processes (parallel search workers) share one file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from archon.backends.types import GenerationRequest, RewardRequest, Sample, ScoreRequest, TokenLogprob

_log = logging.getLogger("archon.cache")
_SCHEMA = "CREATE TABLE IF NOT EXISTS samples (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
_RESULTS = "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


def sample_key(request: GenerationRequest, index: int, identity: dict[str, str | None] | None = None) -> str:
    """``identity`` (``ModelSpec.identity``) keys on what answers, so pointing a model name at
    other weights (``api_model``, ``path``) never serves the old model's samples."""
    payload = {
        "model": request.model,
        "identity": identity,
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


def result_key(request: ScoreRequest | RewardRequest) -> str:
    """Scoring and reward calls are deterministic: their content is the whole key."""
    payload = {
        "kind": type(request).__name__,
        "model": request.model,
        "prompt": request.prompt,
        "messages": [[m.role, m.content] for m in request.messages] if request.messages else None,
        "prefix": request.assistant_prefix,
        "continuations": list(request.continuations) if isinstance(request, ScoreRequest) else None,
        "step_tag": getattr(request, "step_tag", None),
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
    """The cache file; a damaged one is moved aside (``calls.sqlite.corrupt-<time>``) with a
    warning and replaced by a fresh cache, since a cache only saves work and a run must not
    die of it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc):
                raise
            self._conn = self._replace_corrupt(exc)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
        # Switching to WAL takes an exclusive lock that SQLite's busy timeout does not
        # wait for; workers opening one cache at the same moment must retry it.
        try:
            for attempt in range(100):
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.execute("PRAGMA synchronous=NORMAL")
                    conn.execute(_SCHEMA)
                    conn.execute(_RESULTS)
                    conn.execute("SELECT key, value FROM samples LIMIT 1").fetchall()
                    conn.commit()
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 99:
                        raise
                    time.sleep(0.05 + random.random() * 0.1)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def _replace_corrupt(self, exc: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Move the damaged file (and its WAL/SHM side files) aside and open a fresh cache."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                with contextlib.suppress(OSError):
                    os.replace(src, Path(str(aside) + suffix))
        _log.warning("call cache %s is damaged (%s); moved it to %s and started a fresh cache",
                     self.path, exc, aside)
        self.moved_to = aside
        return self._open()

    def _recover(self, exc: sqlite3.DatabaseError) -> None:
        """Damage found after opening (e.g. a truncated file): swap in a fresh cache."""
        if isinstance(exc, sqlite3.OperationalError):
            raise exc
        with contextlib.suppress(sqlite3.Error):
            self._conn.close()
        self._conn = self._replace_corrupt(exc)

    def get_many(self, keys: list[str]) -> dict[str, Sample]:
        found: dict[str, Sample] = {}
        with self._lock:
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self._conn.execute(f"SELECT key, value FROM samples WHERE key IN ({marks})", chunk)
                    found.update({k: _decode(v) for k, v in rows})
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                return {}
        return found

    def put_many(self, items: list[tuple[str, Sample]]) -> None:
        if not items:
            return
        rows = [(k, _encode(s)) for k, s in items]
        with self._lock:
            try:
                self._conn.executemany("INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)", rows)
                self._conn.commit()
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                self._conn.executemany("INSERT OR REPLACE INTO samples (key, value) VALUES (?, ?)", rows)
                self._conn.commit()

    def get_results(self, keys: list[str]) -> dict[str, dict]:  # type: ignore[type-arg]
        """Cached scoring / reward results (plain JSON) by ``result_key``."""
        found: dict[str, dict] = {}  # type: ignore[type-arg]
        with self._lock:
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start:start + 500]
                    marks = ",".join("?" * len(chunk))
                    rows = self._conn.execute(f"SELECT key, value FROM results WHERE key IN ({marks})", chunk)
                    found.update({k: json.loads(v) for k, v in rows})
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                return {}
        return found

    def put_results(self, items: list[tuple[str, dict]]) -> None:  # type: ignore[type-arg]
        if not items:
            return
        rows = [(k, json.dumps(v)) for k, v in items]
        with self._lock:
            try:
                self._conn.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
                self._conn.commit()
            except sqlite3.DatabaseError as exc:
                self._recover(exc)
                self._conn.executemany("INSERT OR REPLACE INTO results (key, value) VALUES (?, ?)", rows)
                self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
