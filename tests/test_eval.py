"""Evaluation and leaderboard: benchmarks, graders, `archon eval` resume, summaries, CI math,
leaderboard groups and formats. Fast tests use the scripted backend; loaders read the real
files in ../shared/data (skipped when absent); one slow test runs the real embedded model."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest
import typer
from conftest import REPO, SHARED_DATA
from scripted import scripted_router
from typer.testing import CliRunner

from archon.backends.types import GenerationRequest
from archon.benchmarks import datasets as ds
from archon.benchmarks import leaderboard as lb
from archon.benchmarks.evaluate import (
    RESULTS_FILE,
    Shard,
    apply_overrides,
    evaluate,
    load_summary,
    summarize,
)
from archon.benchmarks.graders import (
    ArithGrader,
    JudgeGrader,
    arith_answer,
    build_program,
    mean_interval,
    parse_rating,
    wilson_interval,
)
from archon.benchmarks.registry import get_benchmark, parse_spec
from archon.commands.evaluate import eval_command
from archon.commands.leaderboard import leaderboard_command
from archon.data import QueryResult
from archon.errors import ConfigError
from archon.pipeline import Pipeline
from archon.results_io import read_jsonl
from archon.techniques import Generate, Select, Vote

needs_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"benchmark data not found at {SHARED_DATA}")

ARITH = "arith?n=12&seed=3"


def _expr_value(request: GenerationRequest) -> int:
    text = request.messages[-1].content if request.messages else (request.prompt or "")
    expr = text.strip().splitlines()[-1].rstrip("=")
    return int(eval(expr, {"__builtins__": {}}, {}))


def arith_responder(request: GenerationRequest, index: int) -> str:
    """Even questions: every sample right. Odd ones: samples 0-2 agree on a wrong answer, sample 3 is right
    (so the vote is wrong but a candidate is right: accuracy 50%, coverage 100%)."""
    value = _expr_value(request)
    odd = value % 2 == 1
    return str(value + 1) if odd and index < 3 else str(value)


def vote_pipeline(respond=arith_responder, samples: int = 4):
    router, backends = scripted_router(respond)
    pipe = Pipeline({"sample": Generate(samples=samples, temperature=0.8), "vote": Vote(),
                     "select": Select(method="first")}, {"vote": ["sample"], "select": ["vote"]},
                    router=router, name="vote4")
    return pipe, backends["embedded"]


def asked_ids(backend) -> list[int]:
    """The arith questions (by value) a scripted backend was asked, in order."""
    return [_expr_value(r) for batch in backend.batches for r in batch]


# -- statistics --------------------------------------------------------------------------------

def test_wilson_interval_matches_reference_values():
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.7225, abs=1e-4) and hi == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(81, 100)
    assert lo < 0.81 < hi and hi - lo < 0.16


def test_mean_interval():
    mean, lo, hi = mean_interval([6.0, 8.0, 7.0, 7.0])
    assert mean == 7.0 and lo == pytest.approx(7 - 1.96 * math.sqrt(2 / 3) / 2, abs=1e-3) and hi > 7
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)


def test_pareto_front():
    pts = [(10, 0.5), (20, 0.7), (15, 0.4), (40, 0.7), (5, 0.1), (30, 0.9), (float("nan"), 1.0)]
    assert lb.pareto_front(pts) == [True, True, False, False, True, True, False]


# -- benchmarks --------------------------------------------------------------------------------

def test_arith_is_reproducible_from_its_seed():
    a = get_benchmark("arith?n=20&digits=2&operands=3&ops=+-&seed=7").load()
    b = get_benchmark("arith?n=20&digits=2&operands=3&ops=+-&seed=7").load()
    c = get_benchmark("arith?n=20&digits=2&operands=3&ops=+-&seed=8").load()
    assert [(i.id, i.query.prompt, i.gold) for i in a] == [(i.id, i.query.prompt, i.gold) for i in b]
    assert [i.query.prompt for i in a] != [i.query.prompt for i in c]
    for item in a:
        lines = item.query.prompt.splitlines()
        expr = lines[-1]
        assert expr.endswith("=") and re.fullmatch(r"\d\d[+-]\d\d[+-]\d\d=", expr)
        assert int(eval(expr[:-1])) == int(item.gold)  # gold is right ...
        assert len(lines) == 6 and all(int(eval(ln.split("=")[0])) == int(ln.split("=")[1]) for ln in lines[:-1])
        assert item.gold not in item.query.metadata.values()  # ... and not in the query
        assert item.query.metadata["format"] == "completion" and item.query.metadata["stop"] == ["\n"]
    shots = a[0].query.prompt.splitlines()[:-1]
    assert all(s.split("=")[0] not in {i.record["expression"] for i in a} for s in shots)
    # splits differ; min/max override digits
    assert get_benchmark("arith?n=5").load("train")[0].query.prompt != get_benchmark("arith?n=5").load()[0].query.prompt
    wide = get_benchmark("arith?n=50&min=10&max=49&ops=add,mul").load()
    nums = [int(x) for it in wide for x in re.split(r"[+*]", it.record["expression"])]
    assert min(nums) >= 10 and max(nums) <= 49
    assert {"+", "*"} >= {ch for it in wide for ch in it.record["expression"] if not ch.isdigit()}


def test_subset_limit_seed_and_spec_errors():
    bench = get_benchmark("arith?n=30")
    first = bench.load(limit=5)
    assert [i.id for i in first] == [f"arith/test/{k}" for k in range(5)]
    drawn = bench.load(limit=5, seed=1)
    assert drawn == bench.load(limit=5, seed=1) and [i.id for i in drawn] != [i.id for i in first]
    assert [i.id for i in drawn] == sorted((i.id for i in drawn), key=lambda s: int(s.rsplit("/", 1)[1]))
    assert parse_spec("jsonl:a/b.jsonl?question=q&answer=a") == ("jsonl", "a/b.jsonl", {"question": "q", "answer": "a"})
    assert parse_spec("arith?ops=+-") == ("arith", None, {"ops": "+-"})
    with pytest.raises(ConfigError, match="gsm8k"):
        get_benchmark("gsm8kk")
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_benchmark("arith?digit=2")
    with pytest.raises(ConfigError, match="split"):
        get_benchmark("arith").load("dev")


def test_jsonl_benchmark_with_field_names(tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"qid": f"x{i}", "q": f"What is {i}+1?", "a": str(i + 1)}) + "\n"
                         for i in range(4)))
    bench = get_benchmark(f"jsonl:{f}?question=q&answer=a&id=qid&grader=exact")
    items = bench.load()
    assert [i.id for i in items] == ["x0", "x1", "x2", "x3"] and items[2].gold == "3"
    assert items[0].query.prompt == "What is 0+1?" and "a" not in items[0].query.metadata
    assert bench.spec()["sha256"] and "path" not in bench.spec()["params"]
    with pytest.raises(ConfigError, match="no field 'question'"):
        get_benchmark(f"jsonl:{f}").load()


def test_hf_benchmark_from_a_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = [{"uid": f"u{i}", "prompt": f"What is {i}+2?", "target": str(i + 2)} for i in range(5)]
    datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "set"))
    bench = get_benchmark(f"hf:{tmp_path / 'set'}?split=validation&question=prompt&answer=target&id=uid&grader=exact")
    items = bench.load("validation")
    assert [i.id for i in items] == [f"u{i}" for i in range(5)] and items[3].gold == "5"
    assert items[0].query.prompt == "What is 0+2?" and "target" not in items[0].query.metadata
    with pytest.raises(ConfigError, match="no split 'test'"):
        get_benchmark(f"hf:{tmp_path / 'set'}?question=prompt&answer=target").load("test")
    with pytest.raises(ConfigError, match="unknown parameter"):
        get_benchmark(f"hf:{tmp_path / 'set'}?questoin=prompt")


def test_hf_hub_name_offline_names_the_local_alternatives(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        get_benchmark("hf:no-such-org/no-such-set?split=test").load("test")
    assert "hf:no-such-org/no-such-set" in err.value.message and "save_to_disk" in err.value.render()


def test_eval_refuses_limit_zero_and_writes_nothing(tmp_path):
    app = typer.Typer()
    app.command()(eval_command)
    res = CliRunner().invoke(app, [str(REPO / "configs" / "single_sample.yaml"), "--benchmark", "arith",
                                   "--limit", "0", "--out", str(tmp_path / "run")])
    assert res.exit_code == 2 and not (tmp_path / "run").exists()


def test_jsonl_benchmark_on_a_folder_says_it_is_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder"):
        get_benchmark(f"jsonl:{tmp_path}")


@needs_data
def test_math_loaders_parse_gold():
    gsm = get_benchmark("gsm8k").load()
    assert len(gsm) == 1319 and gsm[0].gold == "18" and all("####" not in i.gold and "," not in i.gold for i in gsm)
    assert len(get_benchmark("gsm8k").load("train")) == 7473
    m5 = get_benchmark("math500").load()
    assert len(m5) == 500 and m5[0].gold == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert m5[0].id.startswith("math500/test/") and "level" in m5[0].query.metadata
    aime = get_benchmark("aime24").load()
    assert len(aime) == 30 and aime[0].gold == "204" and "25" in {i.gold for i in aime}  # "025" -> "25"
    amc = get_benchmark("amc23").load()
    assert len(amc) == 40 and amc[0].gold == "27" and "-1" in {i.gold for i in amc}
    for items in (gsm[:50], m5[:50], aime, amc):
        for it in items:
            assert "\\boxed{}" in it.query.prompt and it.query.metadata["task"] == "math"
            assert it.gold not in it.query.metadata.values() and "gold" not in it.query.metadata


@needs_data
def test_humaneval_and_mt_bench_loaders():
    he = get_benchmark("humaneval").load()
    assert len(he) == 164 and he[0].id == "HumanEval/0"
    meta = he[0].query.metadata
    assert meta["entry_point"] == "has_close_elements" and meta["task"] == "code"
    assert meta["tests"] and all(t.startswith("assert (has_close_elements(") for t in meta["tests"])
    for it in he:  # the hidden tests never reach the pipeline
        assert "def check(" not in it.query.prompt and "def check(" not in json.dumps(it.query.metadata)
        assert it.record["test"] and it.record["prompt"] in it.query.prompt
    mt = get_benchmark("mt_bench").load()
    assert len(mt) == 80 and all(len(i.followups) == 1 for i in mt)
    math_q = next(i for i in mt if i.record["category"] == "math")
    assert math_q.record["reference"] and len(math_q.record["reference"]) == 2
    assert math_q.query.metadata["category"] == "math" and "reference" not in math_q.query.metadata
    grader = get_benchmark("mt_bench").grader
    name, msgs = grader.judge_messages(math_q, ["A1", "A2"], 1)
    assert name == "single-math-v1-multi-turn" and "A2" in msgs[1].content
    assert math_q.record["reference"][1] in msgs[1].content
    name, _ = grader.judge_messages(mt[0], ["A1"], 0)
    assert name == "single-v1"


# -- graders -----------------------------------------------------------------------------------

def test_arith_answer_extraction():
    assert arith_answer("17") == "17" and arith_answer(" 17\n3+4=7") == "17"
    assert arith_answer("4+13=17") == "17" and arith_answer("The answer is 1,024.") == "1024"
    assert arith_answer("\\boxed{-3}") == "-3" and arith_answer("") is None and arith_answer("no") is None
    item = ds.Item("x", None, "17")  # type: ignore[arg-type]
    assert ArithGrader().grade_text(item, "17").correct and not ArithGrader().grade_text(item, "71").correct


def test_parse_rating():
    assert parse_rating("Fine. Rating: [[7]]") == 7.0 and parse_rating("[[8.5]]") == 8.5
    assert parse_rating("score [6]") == 6.0 and parse_rating("Rating: [[11]]") is None
    assert parse_rating("no verdict") is None and parse_rating("[[3]] then [[9]]") == 9.0


def test_build_program_body_or_whole_function():
    prompt = "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    \"\"\"Sum.\"\"\"\n"
    body = build_program(prompt, "    return sum(xs)\n", "f")
    assert body == prompt + "    return sum(xs)\n"
    whole = build_program(prompt, "Here:\n```python\ndef f(xs):\n    return sum(xs)\n```\nDone.", "f")
    ns: dict = {}
    exec(whole, ns)
    assert ns["f"]([1, 2]) == 3 and "from typing import List" in whole


@needs_data
def test_humaneval_canonical_solutions_pass_and_empty_bodies_fail():
    bench = get_benchmark("humaneval")
    items = bench.load()
    for completion, expected in ((lambda it: it.record["canonical_solution"], 164), (lambda it: "", 0)):
        runs = [[QueryResult(id=it.id, answer=completion(it))] for it in items]
        grades = bench.grader.grade_runs(items, runs, [[] for _ in items])
        assert sum(bool(g.correct) for g in grades) == expected


@needs_data
def test_code_pass_at_k_over_the_pool():
    bench = get_benchmark("humaneval")
    item = bench.load(limit=1)[0]
    good, bad = item.record["canonical_solution"], "    return None\n"
    runs = [[QueryResult(id=item.id, answer=bad)]]
    (g,) = bench.grader.grade_runs([item], runs, [[good, bad, bad, good]])
    assert g.correct is False and g.coverage is True
    assert [c["correct"] for c in g.candidates] == [True, False, False, True]
    assert g.pass_at_k == {"1": pytest.approx(0.5), "2": pytest.approx(1 - 1 / 6)}


def test_judge_retries_are_bounded():
    prompts = {n: {"system_prompt": "sys", "prompt_template": "[Instruction] {question} {answer}"
                   if "multi" not in n else "[Instruction] {question_1} {answer_1} {question_2} {answer_2}"}
               for n in ("single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn")}

    def judge(request: GenerationRequest, index: int) -> str:
        text = request.messages[-1].content
        if "never" in text:
            return "I cannot decide."
        return "Rating: [[6]]" if request.temperature > 0 else "Looks fine."

    router, backends = scripted_router(judge)
    grader = JudgeGrader(prompts, "embedded", max_tokens=32, retries=2)
    items = [ds.Item(f"q{i}", None, None, {"turns": [t, "second"], "category": "writing", "reference": None})  # type: ignore[arg-type]
             for i, t in enumerate(["fine", "never"])]
    runs = [[QueryResult(id="a", answer="x"), QueryResult(id="b", answer="y")] for _ in items]
    grades = grader.grade_runs(items, runs, [[], []], router=router)
    assert grades[0].score == 6.0 and grades[0].details["tries"] == [2, 2]
    assert grades[1].score is None and grades[1].details["tries"] == [3, 3]
    assert "no [[rating]]" in grades[1].details["error"]
    assert len(backends["embedded"].batches) == 3  # one batch per round, never more than 1 + retries
    assert grades[0].grader_usage["calls"] == 4


# -- evaluate: summary, resume, refusal --------------------------------------------------------

def test_evaluate_writes_rows_and_summary(tmp_path):
    pipe, backend = vote_pipeline()
    s = evaluate(pipe, ARITH, tmp_path / "run", batch_size=5)
    rows = list(read_jsonl(tmp_path / "run" / RESULTS_FILE))
    assert len(rows) == 12 and len(backend.batches) == 3  # 12 questions in batches of 5
    row = rows[0]
    for key in ("id", "output", "extracted", "gold", "correct", "score", "coverage", "candidates", "usage",
                "usage_by_node", "latency_s", "error"):
        assert key in row
    assert len(row["candidates"]) == 4 and set(row["candidates"][0]) == {"answer", "correct"}
    assert set(row["usage_by_node"]) == {"sample"} and row["usage"]["calls"] == 1
    odd = [r for r in rows if int(r["gold"]) % 2]
    assert odd and all(not r["correct"] and r["coverage"] for r in odd)
    assert all(r["correct"] and r["coverage"] for r in rows if int(r["gold"]) % 2 == 0)
    assert s.n == s.n_total == 12 and s.complete and s.errors == 0
    assert s.accuracy == pytest.approx(1 - len(odd) / 12) and s.coverage == 1.0
    assert (s.ci_low, s.ci_high) == pytest.approx(wilson_interval(12 - len(odd), 12))
    assert s.tokens_per_query > 0 and s.calls_per_query == 1 and s.flops_per_query > 0
    assert s.completion_tokens_per_query == 20  # 4 samples x 5 scripted tokens
    assert s.grader == {"name": "arith", "version": "arith-exact-1", "metric": "accuracy"}
    assert s.pipeline["config_hash"] and s.pipeline["name"] == "vote4" and s.models == ["embedded"]
    assert s.benchmark_spec["name"] == "arith" and s.subset["n"] == 12 and s.subset["split"] == "test"
    assert s.coverage_source == "root nodes: sample" and s.wall_time_s > 0
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["accuracy"] == s.accuracy and "git_revision" in on_disk
    assert summarize(tmp_path / "run").accuracy == s.accuracy


def test_resume_after_a_kill_skips_finished_questions(tmp_path):
    full, _ = vote_pipeline()
    evaluate(full, ARITH, tmp_path / "full")
    lines = (tmp_path / "full" / RESULTS_FILE).read_text().splitlines()
    run = tmp_path / "run"
    # a run killed after 5 questions, mid-way through writing the 6th line
    run.mkdir()
    (run / "run.json").write_text((tmp_path / "full" / "run.json").read_text())
    (run / RESULTS_FILE).write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    pipe, backend = vote_pipeline()
    seen = []
    s = evaluate(pipe, ARITH, run, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (5, 12) and seen[-1] == (12, 12)
    done_ids = {json.loads(line)["id"] for line in lines[:5]}
    asked = {e.tag.query for e in pipe.router.ledger.entries}
    assert len(asked_ids(backend)) == 7 and len(asked) == 7 and not done_ids & asked
    rows = list(read_jsonl(run / RESULTS_FILE))
    assert sorted(r["id"] for r in rows) == sorted(json.loads(line)["id"] for line in lines)
    assert s.n == 12 and s.complete and len(json.loads((run / "run.json").read_text())["sessions"]) == 2
    # a finished run does nothing
    pipe, backend = vote_pipeline()
    evaluate(pipe, ARITH, run)
    assert backend.batches == []


def test_shards_split_one_run_and_the_summary_is_their_union(tmp_path):
    whole = evaluate(vote_pipeline()[0], ARITH, tmp_path / "whole")
    run = tmp_path / "sharded"
    first = evaluate(vote_pipeline()[0], ARITH, run, shard=Shard(1, 2))
    assert not first.complete and first.shards == {"n": 2, "started": [1], "missing": [2]}
    assert 0 < first.n < 12 and first.n_total == 12
    second = evaluate(vote_pipeline()[0], ARITH, run, shard=Shard(2, 2))
    one = [r["id"] for r in read_jsonl(run / "results.shard-1-of-2.jsonl")]
    two = [r["id"] for r in read_jsonl(run / "results.shard-2-of-2.jsonl")]
    assert not set(one) & set(two) and len(one) + len(two) == 12  # each question answered once
    assert all(Shard(1, 2).holds(i) for i in one) and all(Shard(2, 2).holds(i) for i in two)
    assert second.complete and second.shards["missing"] == []
    for key in ("n", "accuracy", "coverage", "tokens_per_query", "calls_per_query"):
        assert getattr(second, key) == pytest.approx(getattr(whole, key)), key
    assert summarize(run).accuracy == whole.accuracy
    # a shard rerun has nothing left to do; layouts never mix
    pipe, backend = vote_pipeline()
    evaluate(pipe, ARITH, run, shard=Shard(1, 2))
    assert backend.batches == []
    with pytest.raises(ConfigError, match="sharded 2 ways"):
        evaluate(vote_pipeline()[0], ARITH, run)
    with pytest.raises(ConfigError, match="not 3"):
        evaluate(vote_pipeline()[0], ARITH, run, shard=Shard(1, 3))
    with pytest.raises(ConfigError, match="unsharded run"):
        evaluate(vote_pipeline()[0], ARITH, tmp_path / "whole", shard=Shard(1, 2))
    with pytest.raises(ConfigError, match="K/N"):
        Shard.parse("2-4")


@pytest.mark.slow
def test_two_shard_processes_one_killed_and_rerun_answer_each_question_once(tmp_path):
    import signal
    import subprocess
    import sys

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "archon", "eval", str(REPO / "configs" / "single_sample.yaml"),
                "--benchmark", "arith?n=8&seed=5", "--out", str(out), "--no-cache", "--set", "defaults.max_tokens=4",
                *extra]

    run = tmp_path / "sharded"
    procs = [subprocess.Popen(cmd(run, "--shard", f"{k}/2"), cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for k in (1, 2)]
    killed_file = run / "results.shard-1-of-2.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and procs[0].poll() is None:
        if killed_file.is_file() and killed_file.read_text().count("\n") >= 1:
            procs[0].send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    procs[0].wait(timeout=60)
    assert procs[1].wait(timeout=900) == 0
    again = subprocess.run(cmd(run, "--shard", "1/2"), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    whole = subprocess.run(cmd(tmp_path / "whole"), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert whole.returncode == 0, whole.stderr[-2000:]
    ids = [r["id"] for f in ("results.shard-1-of-2.jsonl", "results.shard-2-of-2.jsonl")
           for r in read_jsonl(run / f)]
    assert len(ids) == len(set(ids)) == 8
    sharded, unsharded = summarize(run, ids=sorted(ids)), summarize(tmp_path / "whole")
    assert sharded.complete and sharded.accuracy == unsharded.accuracy and sharded.n == unsharded.n == 8
    by_id = {r["id"]: r["extracted"] for f in ("results.shard-1-of-2.jsonl", "results.shard-2-of-2.jsonl")
             for r in read_jsonl(run / f)}
    assert by_id == {r["id"]: r["extracted"] for r in read_jsonl(tmp_path / "whole" / RESULTS_FILE)}


def test_resume_refuses_a_different_config_benchmark_or_subset(tmp_path):
    run = tmp_path / "run"
    evaluate(vote_pipeline()[0], ARITH, run, limit=4)
    with pytest.raises(ConfigError, match="different pipeline config"):
        evaluate(vote_pipeline(samples=2)[0], ARITH, run, limit=4)
    with pytest.raises(ConfigError, match="different benchmark"):
        evaluate(vote_pipeline()[0], "arith?n=12&seed=4", run, limit=4)
    with pytest.raises(ConfigError, match="different subset"):
        evaluate(vote_pipeline()[0], ARITH, run, limit=5)
    with pytest.raises(ConfigError, match="different subset"):
        evaluate(vote_pipeline()[0], ARITH, run, limit=4, seed=1)
    evaluate(vote_pipeline()[0], ARITH, run, limit=4)  # the same run is fine


def test_multi_turn_chat_runs_the_follow_up_with_the_first_answer(tmp_path):
    prompts = tmp_path / "data" / "mt_bench"
    prompts.mkdir(parents=True)
    tpl = {"single-v1": "[Instruction] {question} {answer}",
           "single-math-v1": "[Instruction] {question} {ref_answer_1} {answer}",
           "single-v1-multi-turn": "[Instruction] {question_1} {answer_1} {question_2} {answer_2}",
           "single-math-v1-multi-turn": "[Instruction] {question_1} {ref_answer_1} {answer_1} {question_2} "
                                        "{ref_answer_2} {answer_2}"}
    (prompts / "judge_prompts.jsonl").write_text("".join(
        json.dumps({"name": k, "type": "single", "system_prompt": "judge", "prompt_template": v}) + "\n"
        for k, v in tpl.items()))
    (prompts / "question.jsonl").write_text("".join(
        json.dumps({"question_id": i, "category": c, "turns": [f"first {i}", f"second {i}"]}) + "\n"
        for i, c in ((1, "writing"), (2, "math"))))
    (prompts / "reference_answer_gpt-4.jsonl").write_text(
        json.dumps({"question_id": 2, "choices": [{"turns": ["ref one", "ref two"]}]}) + "\n")

    def respond(request: GenerationRequest, index: int) -> str:
        text = request.messages[-1].content
        if text.startswith("[Instruction]"):
            return "Rating: [[9]]" if "ref two" in text or "ref one" in text else "Rating: [[5]]"
        return f"reply to {text} after {len(request.messages)} messages"

    router, _ = scripted_router(respond)
    pipe = Pipeline({"g": Generate()}, router=router, name="chat")
    s = evaluate(pipe, "mt_bench", tmp_path / "run", data_dir=tmp_path / "data")
    rows = {r["id"]: r for r in read_jsonl(tmp_path / "run" / RESULTS_FILE)}
    assert rows["mt_bench/1"]["turn_outputs"] == ["reply to first 1 after 1 messages",
                                                  "reply to second 1 after 3 messages"]
    assert rows["mt_bench/1"]["score"] == 5.0 and rows["mt_bench/2"]["score"] == 9.0
    assert rows["mt_bench/2"]["grade"]["prompts"] == ["single-math-v1", "single-math-v1-multi-turn"]
    assert rows["mt_bench/1"]["usage"]["calls"] == 2  # both turns; the judge is counted apart
    assert s.metric == "judge_score" and s.accuracy == 7.0 and s.ci_method == "normal"
    assert s.grader_usage["calls"] == 4 and s.coverage is None


# -- leaderboard -------------------------------------------------------------------------------

@pytest.fixture
def three_runs(tmp_path):
    single, _ = vote_pipeline(samples=1)
    single.name = "single"
    evaluate(single, ARITH, tmp_path / "single")
    evaluate(vote_pipeline()[0], ARITH, tmp_path / "vote")
    evaluate(vote_pipeline()[0], ARITH, tmp_path / "vote_first6", limit=6)
    return [tmp_path / "single", tmp_path / "vote", tmp_path / "vote_first6"]


def test_leaderboard_groups_sorts_and_refuses(three_runs):
    groups = lb.load_groups(three_runs)
    assert [len(g.entries) for g in groups] == [2, 1]
    assert "subset" in groups[1].reason and "limit 6" in groups[1].reason and not groups[0].reason
    by_tokens = lb.load_groups(three_runs[:2], sort="tokens")[0]
    assert [e.label for e in by_tokens.entries] == ["single", "vote4"]
    # sample 0 is what the vote picks too: same accuracy, fewer tokens, so only `single` is on the front
    assert [e.pareto for e in by_tokens.entries] == [True, False]
    with pytest.raises(ConfigError, match="not comparable"):
        lb.load_groups(three_runs, strict=True)
    lb.load_groups(three_runs[:2], strict=True)


def test_leaderboard_formats_plot_and_html(three_runs, tmp_path):
    groups = lb.load_groups(three_runs)
    md = lb.render_markdown(groups)
    assert md.count("| vote4 |") == 2 and "Separate group" in md and "score [95% CI]" in md
    csv_text = lb.render_csv(groups)
    assert csv_text.splitlines()[0].startswith("group,pipeline,") and len(csv_text.splitlines()) == 4
    data = json.loads(lb.render_json(groups))
    assert len(data) == 2 and data[0]["runs"][0]["summary"]["grader"]["name"] == "arith"
    pytest.importorskip("matplotlib")
    runner = CliRunner()
    app = typer.Typer()
    app.command("leaderboard")(leaderboard_command)
    app.command("eval")(eval_command)
    png, page = tmp_path / "p.png", tmp_path / "board.html"
    res = runner.invoke(app, ["leaderboard", *map(str, three_runs), "--format", "markdown", "--sort", "tokens",
                              "--plot", str(png), "--html", str(page)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = page.read_text()
    assert "data:image/png;base64," in text and "vote4" in text and "Separate group" in text
    res = runner.invoke(app, ["leaderboard", *map(str, three_runs), "--strict"])
    assert res.exit_code == 2 and "not comparable" in res.output
    res = runner.invoke(app, ["leaderboard", *map(str, three_runs), "--format", "csv"])
    assert res.exit_code == 0 and res.output.startswith("group,pipeline")
    res = runner.invoke(app, ["eval", "configs/single_sample.yaml", "-b", "nope", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "unknown benchmark" in res.output


def test_summary_is_recomputed_when_results_are_newer(three_runs):
    run = three_runs[0]
    summary = json.loads((run / "summary.json").read_text())
    time.sleep(0.02)
    rows = list(read_jsonl(run / RESULTS_FILE))
    (run / RESULTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows[:3]))
    assert load_summary(run).n == 3 and summary["n"] == 12


def test_set_overrides():
    data = {"defaults": {"max_tokens": 64}, "nodes": [{"id": "sample", "technique": "generate"}, {"technique": "vote"}]}
    apply_overrides(data, ["defaults.max_tokens=4", "nodes.sample.samples=3", "nodes.1.method=majority",
                           "defaults.stop=['\\n']"])
    assert data["defaults"]["max_tokens"] == 4 and data["nodes"][0]["samples"] == 3
    assert data["nodes"][1]["method"] == "majority"
    with pytest.raises(ConfigError, match="no node with id"):
        apply_overrides(data, ["nodes.nope.samples=2"])


# -- the real model, end to end ----------------------------------------------------------------

@pytest.mark.slow
def test_eval_and_leaderboard_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    from archon import cli

    app = cli.app
    if not {c.name for c in app.registered_commands} >= {"eval", "leaderboard"}:
        app = typer.Typer()
        app.command("eval")(eval_command)
        app.command("leaderboard")(leaderboard_command)
    runner = CliRunner()
    cache = str(tmp_path / "calls.sqlite")
    bench = "arith?n=30&seed=0"
    single, vote = tmp_path / "single", tmp_path / "vote"
    res = runner.invoke(app, ["eval", str(REPO / "configs/single_sample.yaml"), "--benchmark", bench, "--limit", "8",
                              "--out", str(single), "--cache", cache, "--set", "defaults.max_tokens=4"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["eval", str(REPO / "configs/sample_vote.yaml"), "--benchmark", bench, "--limit", "8",
                              "--out", str(vote), "--cache", cache, "--set", "defaults.max_tokens=4",
                              "--set", "nodes.sample.samples=4"])
    assert res.exit_code == 0, res.output
    for run, samples in ((single, 1), (vote, 4)):
        s = load_summary(run)
        assert s.n == 8 and s.errors == 0 and s.accuracy is not None and s.coverage is not None
        assert s.coverage >= s.accuracy and s.calls_per_query == 1
        assert 0 < s.completion_tokens_per_query <= 4 * samples and s.flops_per_query > 0
        rows = list(read_jsonl(run / RESULTS_FILE))
        assert all(len(r["candidates"]) == samples for r in rows)
    assert load_summary(vote).pipeline["overrides"] == ["defaults.max_tokens=4", "nodes.sample.samples=4"]
    png, page = tmp_path / "board.png", tmp_path / "board.html"
    res = runner.invoke(app, ["leaderboard", str(single), str(vote), "--format", "markdown", "--plot", str(png),
                              "--html", str(page)])
    assert res.exit_code == 0, res.output
    assert "| single-sample |" in res.output and "| sample16-vote |" in res.output
    assert png.stat().st_size > 1000 and "sample16-vote" in page.read_text()


def test_a_cached_rerun_reports_the_pipelines_full_cost(tmp_path, tmp_cache):
    from archon.search.metering import MeteredRouter

    def pipe_on_cache():
        router, backends = scripted_router(arith_responder, cache=tmp_cache)
        return Pipeline({"sample": Generate(samples=4, temperature=0.8), "vote": Vote()}, {"vote": ["sample"]},
                        router=MeteredRouter.wrap(router), name="v"), backends["embedded"]

    pipe, _ = pipe_on_cache()
    first = evaluate(pipe, ARITH, tmp_path / "first")
    pipe, backend = pipe_on_cache()
    again = evaluate(pipe, ARITH, tmp_path / "again")
    assert backend.batches == [] and again.cache_hits == 48 and first.cache_hits == 0
    assert again.spent["total_tokens"] == 0 and again.cache_saved["completion_tokens"] == 240
    assert again.completion_tokens_per_query == first.completion_tokens_per_query == 20
    assert again.calls_per_query == first.calls_per_query == 1
    # cached prompts are estimated per sample (as the embedded engine counts them); the scripted engine counts
    # the prompt once per request, so only the order of magnitude is comparable here
    assert first.tokens_per_query < again.tokens_per_query < 4 * first.tokens_per_query
    assert again.accuracy == first.accuracy


@pytest.mark.reliability
def test_a_second_writer_on_one_run_directory_is_refused(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom archon.results_io import lock_run_dir\n"
         f"with lock_run_dir({str(run)!r}):\n    print('locked', flush=True)\n    time.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        pipe, backend = vote_pipeline()
        with pytest.raises(ConfigError, match="being written by another archon process"):
            evaluate(pipe, ARITH, run)
        assert backend.batches == [] and not (run / RESULTS_FILE).exists()
    finally:
        holder.kill()  # like kill -9: the OS releases the lock
        holder.wait()
    s = evaluate(vote_pipeline()[0], ARITH, run)
    assert s.n == 12 and len(list(read_jsonl(run / RESULTS_FILE))) == 12
