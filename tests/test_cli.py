"""The CLI as a user meets it, on the real embedded model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def archon(*args: str, cwd: Path = REPO, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "archon", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_validate_and_show():
    ok = archon("validate", "configs/quickstart.yaml")
    assert ok.returncode == 0 and "4 nodes" in ok.stdout
    text = archon("show", "configs/ensemble_dag.yaml")
    assert "fuse [fuse]  <- sample_a, critique_b" in text.stdout
    mermaid = archon("show", "configs/quickstart.yaml", "--format", "mermaid")
    assert "n0 --> n1" in mermaid.stdout and 'n0["sample<br/>generate<br/>samples: 4"]' in mermaid.stdout


def test_mermaid_quotes_keyword_ids_and_labels_tell_ensembles_apart(tmp_path):
    cfg = tmp_path / "dag.yaml"
    cfg.write_text("name: d\nnodes:\n"
                   "  - {id: end, technique: generate, samples: 4}\n"
                   "  - {id: graph, technique: generate, samples: 2, inputs: [], models: [embedded]}\n"
                   "  - {id: fuse, technique: fuse, inputs: [end, graph]}\n")
    out = archon("show", str(cfg), "--format", "mermaid").stdout
    lines = out.splitlines()
    # mermaid keywords (`end`, `graph`) never appear as bare node ids
    assert not any(line.strip().startswith(("end", "graph ", "graph[")) for line in lines[1:])
    assert 'n0["end<br/>generate<br/>samples: 4"]' in out
    assert 'n1["graph<br/>generate<br/>models: embedded<br/>samples: 2"]' in out
    assert "n0 --> n2" in out and "n1 --> n2" in out


def test_models_convert_help_names_the_extra():
    res = archon("models", "convert", "--help")
    assert 'archon[cpu]' in " ".join(res.stdout.split())


def test_broken_config_gives_a_precise_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("nodes:\n  - id: s\n    technique: generate\n    sampels: 3\n")
    res = archon("validate", str(bad))
    assert res.returncode == 2
    assert f"{bad}:4" in res.stderr and "nodes[0].sampels" in res.stderr and "samples" in res.stderr


@pytest.mark.slow
def test_quickstart_answers_with_usage_per_node(tmp_path):
    res = archon("run", "configs/quickstart.yaml", "--input", "What is 17 + 25?", "--json",
                 "--cache", str(tmp_path / "c.sqlite"))
    assert res.returncode == 0, res.stderr
    assert "llama_" not in res.stderr  # the C library's load-time lines stay out of the output
    data = json.loads(res.stdout)
    assert data["answer"].strip()
    assert set(data["usage_by_node"]) == {"sample", "critique", "rank", "fuse"}
    for usage in data["usage_by_node"].values():
        assert usage["completion_tokens"] > 0 and usage["calls"] >= 1
    assert [t["node"] for t in data["trace"]] == ["sample", "critique", "rank", "fuse"]
    assert data["usage"]["total_tokens"] <= 6000  # the config's budget


@pytest.mark.slow
def test_killed_batch_run_resumes_without_loss_or_repeats(tmp_path):
    pipe = tmp_path / "p.yaml"
    pipe.write_text("defaults: {max_tokens: 12, temperature: 0.0}\nnodes:\n  - {technique: generate}\n")
    queries = tmp_path / "q.jsonl"
    queries.write_text("".join(json.dumps({"id": f"q{i}", "question": f"{i}+{i}="}) + "\n" for i in range(12)))
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "archon", "run", str(pipe), "--input-file", str(queries), "--output", str(out),
           "--batch-size", "2", "--no-cache"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:
        if out.exists() and len(out.read_text().splitlines()) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_text().splitlines()
    assert 4 <= len(before) < 12
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert f"resuming: {len(before)} of 12" in res.stderr
    after = out.read_text().splitlines()
    assert after[: len(before)] == before  # finished rows untouched
    ids = [json.loads(line)["id"] for line in after]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12)) and len(ids) == 12


def test_unreachable_server_error_is_clear(tmp_path):
    cfg = tmp_path / "remote.yaml"
    cfg.write_text("models:\n  remote: {backend: openai, base_url: 'http://127.0.0.1:9/v1', max_retries: 1}\n"
                   "defaults: {model: remote}\nnodes:\n  - {technique: generate}\n")
    env = {**os.environ, "OPENAI_API_KEY": "sk-secret-should-not-leak"}
    res = archon("run", str(cfg), "--input", "hi", "--no-cache", env=env, timeout=120)
    assert res.returncode == 3
    assert "127.0.0.1:9" in res.stderr and "remote" in res.stderr
    assert "sk-secret" not in res.stderr + res.stdout


def test_serve_refuses_bad_configs_and_a_missing_key_clearly(tmp_path):
    missing = archon("serve", str(tmp_path / "nope.yaml"), "--port", "9")
    assert missing.returncode == 2 and "config not found" in missing.stderr and "Traceback" not in missing.stderr
    (tmp_path / "a.yaml").write_text("name: same\nnodes:\n  - id: s\n    technique: generate\n")
    (tmp_path / "b.yaml").write_text("name: same\nnodes:\n  - id: s\n    technique: generate\n")
    dup = archon("serve", str(tmp_path), "--port", "9")
    assert dup.returncode == 2 and "both named 'same'" in dup.stderr
    env = {k: v for k, v in os.environ.items() if k != "ARCHON_NO_SUCH_KEY"}
    nokey = archon("serve", str(tmp_path / "a.yaml"), "--api-key-env", "ARCHON_NO_SUCH_KEY", env=env)
    assert nokey.returncode == 2 and "ARCHON_NO_SUCH_KEY" in nokey.stderr


@pytest.mark.reliability
@pytest.mark.parametrize("command", ["validate", "show", "run"])
def test_rich_markup_in_a_config_is_printed_verbatim(tmp_path, command):
    from typer.testing import CliRunner

    from archon.cli import app

    path = tmp_path / "markup.yaml"
    path.write_text('nodes:\n  - {id: s, technique: "[/oops]"}\n')
    args = [command, str(path)] + (["--input", "hi", "--no-cache"] if command == "run" else [])
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    assert "unknown technique '[/oops]'" in res.output and "Traceback" not in res.output


@pytest.mark.reliability
def test_error_hints_keep_their_brackets(tmp_path):
    from typer.testing import CliRunner

    from archon.cli import app

    path = tmp_path / "syntax.yaml"
    path.write_text("nodes:\n  - {id: s, technique: generate\n  bad: [\n")
    res = CliRunner().invoke(app, ["validate", str(path)])
    assert res.exit_code == 2 and "[a, b]" in res.output, res.output


def test_running_an_archon_json_prints_what_differs():
    res = archon("validate", "configs/archon/unit_tests_then_verify.json")
    assert res.returncode == 0, res.stderr
    text = " ".join(res.stderr.split())
    assert "converted from Archon JSON with 1 behaviour difference(s)" in text and "nl_unit_tests" in text
