"""Append-only JSONL results and archon's JSON files when they are damaged (issue 14)."""

from __future__ import annotations

import json

import pytest

from archon.errors import ConfigError
from archon.results_io import append_jsonl, finished_ids, read_json_file, read_jsonl


@pytest.mark.reliability
def test_garbage_lines_are_reported_and_kept_aside(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, [{"id": "a"}, {"id": "b"}])
    with path.open("a") as fh:
        fh.write("GARBAGE {not json\n[1, 2]\n")
    append_jsonl(path, [{"id": "c"}])
    with path.open("a") as fh:
        fh.write('{"id": "torn')  # a killed writer's partial last line: expected, not reported
    with caplog.at_level("WARNING"):
        rows = list(read_jsonl(path))
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert "2 line(s)" in caplog.text and "line 3, 4" in caplog.text
    aside = tmp_path / "results.jsonl.bad-lines"
    assert aside.read_text() == "3\tGARBAGE {not json\n4\t[1, 2]\n"
    assert finished_ids(path) == {"a", "b", "c"}
    append_jsonl(path, [{"id": "d"}])  # the torn line is repaired, every good row stays
    assert [r["id"] for r in read_jsonl(path)] == ["a", "b", "c", "d"]


@pytest.mark.reliability
def test_garbage_run_json_names_the_file(tmp_path):
    from archon.benchmarks.evaluate import summarize

    (tmp_path / "run.json").write_text('{"benchmark": "gsm8k", oops')
    (tmp_path / "results.jsonl").write_text(json.dumps({"id": "a"}) + "\n")
    with pytest.raises(ConfigError) as info:
        summarize(tmp_path)
    assert str(tmp_path / "run.json") in str(info.value) and "not valid JSON" in str(info.value)
    with pytest.raises(ConfigError):
        read_json_file(tmp_path / "run.json", what="run.json")
