"""Append-only JSONL results: finished work is on disk at once, and a rerun resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line (a killed writer) is ignored, not fatal."""
    p = Path(path)
    if not p.exists():
        return
    with p.open() as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


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
