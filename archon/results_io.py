"""Append-only JSONL results: finished work is on disk at once, and a rerun resumes."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_log = logging.getLogger("archon.results")


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a killed writer) is ignored, not fatal.

    Any other line that is not a JSON object is skipped, but never silently: see
    :func:`_set_aside_bad_lines`. Good rows around it are all kept.
    """
    p = Path(path)
    if not p.exists():
        return
    bad: list[tuple[int, str]] = []
    with p.open(encoding="utf-8", errors="replace") as fh:
        for number, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict):
                yield row
            elif raw.endswith("\n"):  # a complete line that is garbage; a torn tail has no newline
                bad.append((number, raw))
    if bad:
        _set_aside_bad_lines(p, bad)


def _set_aside_bad_lines(p: Path, bad: list[tuple[int, str]]) -> None:
    """Warn with the count and line numbers, and copy the lines to ``<file>.bad-lines``.

    The results file itself is left as it is (rewriting it could lose rows); the copy is
    rewritten whole each time, so repeated reads do not grow it.
    """
    aside = p.with_name(p.name + ".bad-lines")
    with contextlib.suppress(OSError):
        aside.write_text("".join(f"{n}\t{text}" for n, text in bad), encoding="utf-8")
    numbers = ", ".join(str(n) for n, _ in bad[:20]) + (", ..." if len(bad) > 20 else "")
    _log.warning("%s: skipped %d line(s) that are not JSON objects (line %s); copies kept in %s",
                 p, len(bad), numbers, aside)


LOCK_FILE = ".archon.lock"


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path, lock_name: str = LOCK_FILE) -> Iterator[Path]:
    """Hold the run directory's writer lock (``filelock``) or refuse at once.

    Two writers on one directory would answer every question twice and duplicate every
    row. The lock is an OS file lock, so a killed writer releases it and a rerun resumes.
    """
    from filelock import FileLock, Timeout

    from archon.errors import ConfigError

    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(d / lock_name), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{d} is being written by another archon process (it holds {d / lock_name})",
                          hint="wait for that run to finish (then rerun to resume), or give another --out"
                          ) from None
    try:
        yield d
    finally:
        lock.release()


def read_json_file(path: str | Path, *, what: str) -> Any:
    """A JSON file archon wrote; garbage is a ``ConfigError`` naming the file, not a traceback."""
    from archon.errors import ConfigError

    p = Path(path)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" (line {exc.lineno}, column {exc.colno}: {exc.msg})" if isinstance(exc, json.JSONDecodeError) else ""
        raise ConfigError(f"{what} is not valid JSON{where}", file=str(p),
                          hint="it was damaged outside archon; restore it, or start over in a new --out directory"
                          ) from None


def finished_ids(path: str | Path) -> set[str]:
    return {str(row["id"]) for row in read_jsonl(path) if "id" in row}


def append_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Appends and fsyncs, so a kill after this returns loses none of these rows."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _repair_tail(p)
    with p.open("a") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _repair_tail(p: Path) -> None:
    """Drop a partial last line left by a killed writer, so the next row starts clean."""
    if not p.exists() or p.stat().st_size == 0:
        return
    with p.open("rb+") as fh:
        fh.seek(-1, os.SEEK_END)
        if fh.read(1) == b"\n":
            return
        data = p.read_bytes()
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)
