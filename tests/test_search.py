"""`archon search`: the space file, trials, budgets, resume, Pareto front, reuse.

Control flow runs on the scripted backend (arithmetic answers whose correctness depends on
the sample index, so more samples + a vote really is better); one slow test runs the CLI
end to end on the embedded model.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import FrozenTrial, TrialState
from scripted import scripted_router

from archon.backends.cache import CallCache
from archon.config import build_graph, parse_config
from archon.data import Query
from archon.errors import ConfigError
from archon.search.build import FixedSuggester, InvalidPipeline, build_config, enumerate_space, space_size
from archon.search.cost import estimate_cost
from archon.search.evaluation import PipelineEvaluator, SearchItem, split_items
from archon.search.metering import MeteredRouter
from archon.search.report import write_outputs
from archon.search.runner import Budgets, Search, SearchSettings, best_trial, fidelity_steps, pareto_front
from archon.search.space import load_space, parse_space

REPO = Path(__file__).resolve().parent.parent
SPACES = REPO / "configs" / "search"

_Q = re.compile(r"What is (\d+) \+ (\d+)\?")
_BOX = re.compile(r"\\boxed\{(-?\d+)\}")


def _truth(text: str) -> int:
    a, b = _Q.search(text).groups()  # type: ignore[union-attr]
    return int(a) + int(b)


def arith_responder(request, index: int) -> str:
    """Sample i is right unless i % 4 == 0: one sample is wrong, a 4-sample vote is right."""
    text = request.messages[-1].content
    if "Combine them" in text:  # a fuser: the majority of the boxed answers it was shown
        answers = _BOX.findall(text.split("Question:", 1)[1])
        best = max(set(answers), key=answers.count) if answers else "0"
        return f"Fused. \\boxed{{{best}}}"
    if "Ranking:" in text:
        return "[2] > [1] > [3]"
    if "Strengths" in text:
        return "Strengths: short. Weaknesses: none."
    if "Verdict" in text or "verdict" in text:
        shown = _BOX.findall(text)
        return "Verdict: yes" if shown and int(shown[-1]) == _truth(text) else "Verdict: no"
    if "Score:" in text:
        return "Score: 7"
    truth = _truth(text)
    return f"The answer is \\boxed{{{truth if index % 4 else truth + 1}}}"


def items(n: int) -> list[SearchItem]:
    out = []
    for i in range(n):
        a, b = 3 * i + 1, 2 * i + 5
        out.append(SearchItem(id=f"q{i}", query=Query(id=f"q{i}", prompt=f"What is {a} + {b}?"), gold=a + b))
    return out


def grade(item: SearchItem, result) -> float:
    return float(result.final_answer is not None and result.final_answer.strip() == str(item.gold))


TINY = {
    "name": "unit",
    "base": {"defaults": {"model": "embedded", "max_tokens": 8}},
    "generate": {"models": {"embedded": [1, 2, 4]}, "temperature": [0.2, 0.8]},
    "layers": {"count": [0, 1], "fusers": 1},
    "final": {"selector": ["vote", "first"]},
}


def make_search(tmp_path, space=None, *, n=8, storage=False, cache=None, **settings):
    router, backends = scripted_router(arith_responder, cache=cache or CallCache(tmp_path / "calls.sqlite"))
    metered = MeteredRouter.wrap(router)
    dev, hold = split_items(items(n), 0.25, seed=0)
    defaults = {"trials": 6, "sampler": "random", "pruner": "none", "seed": 0, "study_name": "unit",
                "storage": f"sqlite:///{tmp_path / 'study.sqlite3'}" if storage else None}
    defaults.update(settings)
    search = Search(space or parse_space(TINY), PipelineEvaluator(metered, grade), dev, SearchSettings(**defaults),
                    holdout=hold, parameters=lambda m: 1e6)
    return search, backends


def enqueue(search: Search, *params: dict) -> None:
    for p in params:
        search.study.enqueue_trial(p, skip_if_exists=False)


X1 = {"gen.embedded.samples": 1, "gen.temperature": 0.8, "layers.count": 0, "final.selector": "vote"}
X4 = {"gen.embedded.samples": 4, "gen.temperature": 0.8, "layers.count": 0, "final.selector": "vote"}


# -- the space file ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny_space.yaml", "archon_space.yaml", "reasoning_space.yaml"])
def test_shipped_spaces_parse_and_build_valid_pipelines(name):
    space = load_space(SPACES / name)
    sampler = optuna.samplers.RandomSampler(seed=1)
    study = optuna.create_study(sampler=sampler)
    built = 0
    for _ in range(30):
        trial = study.ask()
        from archon.search.build import OptunaSuggester

        try:
            config = build_config(space, OptunaSuggester(trial))
        except InvalidPipeline:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            continue
        build_graph(parse_config(config))  # the pipeline layer accepts every built config
        built += 1
        study.tell(trial, 0.0)
    assert built > 0


def test_space_errors_name_file_line_field_and_fix(tmp_path):
    bad = tmp_path / "space.yaml"
    bad.write_text("name: x\ngenerate:\n  models: {embedded: [1, 2]}\n  temprature: [0.2]\n")
    with pytest.raises(ConfigError) as exc:
        load_space(bad)
    text = str(exc.value)
    assert f"{bad}:4" in text and "generate.temprature" in text and "temperature" in text

    bad.write_text("generate:\n  models: {embedded: [1, -2]}\n")
    with pytest.raises(ConfigError, match=r"generate\.models.*below the minimum 0"):
        load_space(bad)

    bad.write_text("generate:\n  models: {gpt9: [1]}\n")
    with pytest.raises(ConfigError) as exc:
        load_space(bad)
    assert "unknown model 'gpt9'" in str(exc.value) and "base.models" in str(exc.value)

    bad.write_text("final:\n  selector: [vote, majority]\n")
    with pytest.raises(ConfigError, match="unknown selector 'majority'"):
        load_space(bad)

    bad.write_text("base:\n  nodes: []\n")
    with pytest.raises(ConfigError, match="unknown key 'nodes'"):
        load_space(bad)

    bad.write_text("step:\n  methods: [null, refine]\n  refine: {max_roundz: [1, 2]}\n")
    with pytest.raises(ConfigError) as exc:
        load_space(bad)
    assert "step.refine.max_roundz" in str(exc.value) and "max_rounds" in str(exc.value)


def test_step_methods_that_are_not_installed_are_dropped_with_a_note():
    with pytest.warns(UserWarning, match="not an installed technique"):
        space = parse_space({"step": {"methods": [None, "no_such_technique"]}})
    assert space.step.methods == [None] and space.notes


def test_enumeration_and_invalid_combinations():
    space = parse_space(TINY)
    points = list(enumerate_space(space))
    valid = [c for _, c, _ in points if c is not None]
    invalid = [why for _, c, why in points if c is None]
    assert space_size(space) == (len(valid), len(invalid))
    assert any("`first` needs exactly one candidate" in w for w in invalid)
    for config in valid:
        build_graph(parse_config(config))
    with pytest.raises(InvalidPipeline, match="0 samples"):
        build_config(parse_space({"generate": {"models": {"embedded": [0]}}}), FixedSuggester({}))


def test_estimate_grows_with_the_pipeline_shape():
    space = parse_space(TINY)
    small = estimate_cost(build_config(space, FixedSuggester(X1)))
    big = estimate_cost(build_config(space, FixedSuggester(X4)))
    fused = estimate_cost(build_config(space, FixedSuggester({**X4, "layers.count": 1})))
    assert small.calls == big.calls == 1 and fused.calls == 2
    assert big.completion_tokens == 4 * small.completion_tokens == 32
    assert fused.tokens > big.tokens


# -- trials ------------------------------------------------------------------------------

def test_invalid_combinations_are_pruned_not_crashing(tmp_path):
    search, _ = make_search(tmp_path, trials=4)
    bad = {**X4, "final.selector": "first"}  # four candidates, "first" needs one
    enqueue(search, bad, X1)
    search.optimize()
    trials = search.study.trials
    assert len(trials) == 4 and not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert trials[0].state == optuna.trial.TrialState.PRUNED
    assert trials[0].user_attrs["status"] == "invalid" and "needs exactly one" in trials[0].user_attrs["reason"]
    assert trials[1].state == optuna.trial.TrialState.COMPLETE


def test_budget_constraints_mark_over_budget_trials_infeasible(tmp_path):
    # X1 costs 7 tokens/query, X4 28.5 on the scripted backend: a budget of 20 splits them
    search, _ = make_search(tmp_path, trials=2, budget=Budgets(tokens=20), skip_margin=100.0)
    enqueue(search, X4, X1)
    search.optimize()
    t4, t1 = search.study.trials
    assert t4.user_attrs["status"] == "evaluated" and t4.user_attrs["feasible"] is False
    assert t4.constraints["tokens_per_query"] > 0 and t4.value == 1.0  # the value stays the real accuracy
    assert t1.user_attrs["feasible"] is True and t1.constraints["tokens_per_query"] <= 0
    assert best_trial(search.study.trials, len(search.dev)).number == t1.number
    assert search.study.best_trial.number == t1.number  # Optuna agrees: constraints, not a magic value


def test_clearly_over_budget_trials_are_skipped_before_any_call(tmp_path):
    search, backends = make_search(tmp_path, trials=1, budget=Budgets(tokens=10))
    enqueue(search, {**X4, "layers.count": 1})
    search.optimize()
    (t,) = search.study.trials
    assert t.user_attrs["status"] == "skipped" and "estimated tokens" in t.user_attrs["reason"]
    assert t.constraints["tokens_per_query"] > 0 and t.user_attrs["feasible"] is False
    assert backends["embedded"].batches == []  # nothing was spent


def test_calls_budget_is_counted_from_the_shape(tmp_path):
    search, backends = make_search(tmp_path, trials=1, budget=Budgets(calls=1))
    enqueue(search, {**X4, "layers.count": 1})  # generate + fuse = 2 calls per query
    search.optimize()
    (t,) = search.study.trials
    assert t.user_attrs["status"] == "skipped" and "calls" in t.user_attrs["reason"]
    assert backends["embedded"].batches == []


def test_multi_fidelity_reports_rungs_and_prunes_bad_trials(tmp_path):
    search, _ = make_search(tmp_path, n=10, trials=4, pruner="median", rungs=(0.25, 0.5, 1.0))
    assert search.steps == fidelity_steps(8, (0.25, 0.5, 1.0)) == [2, 4, 8]
    enqueue(search, X4, {**X4, "gen.temperature": 0.2}, X1, {**X4, "layers.count": 1})
    search.optimize()
    t = search.study.trials
    assert t[0].intermediate_values == {2: 1.0, 4: 1.0} and t[0].value == 1.0
    assert t[2].state == optuna.trial.TrialState.PRUNED and t[2].user_attrs["status"] == "pruned"
    assert t[2].user_attrs["n_queries"] == 2  # stopped after the first rung: 2 of 8 questions paid


def test_resume_after_a_kill_completes_the_target_total(tmp_path):
    first, _ = make_search(tmp_path, trials=2, sampler="tpe", storage=True)
    first.optimize()
    kept = [(t.number, t.params) for t in first.study.trials]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first.study.ask()  # a worker killed mid-trial leaves a RUNNING trial behind
    del first
    again, _ = make_search(tmp_path, trials=4, sampler="tpe", storage=True)  # a new process, same command
    assert again.remaining() == 2
    again.optimize()
    assert len(again.finished()) == 4  # the target total; the killed trial is not counted
    assert [(t.number, t.params) for t in again.study.trials][:2] == kept
    assert again.remaining() == 0
    again.optimize()  # rerunning a finished study does nothing
    assert len(again.finished()) == 4


def test_resume_refuses_a_different_budget(tmp_path):
    first, _ = make_search(tmp_path, trials=1, budget=Budgets(tokens=100), storage=True)
    first.optimize()
    other, _ = make_search(tmp_path, trials=2, budget=Budgets(tokens=50), storage=True)
    with pytest.raises(ConfigError, match="budget"):
        other.optimize()


def test_multi_objective_returns_the_pareto_front(tmp_path):
    search, _ = make_search(tmp_path, trials=6, multi_objective=True, sampler="tpe", pruner="median")
    enqueue(search, X1, X4, {**X4, "layers.count": 1}, {**X1, "gen.embedded.samples": 2})
    search.optimize()
    front = pareto_front(search.study.trials, len(search.dev))
    assert front
    points = {(t.user_attrs["accuracy"], t.user_attrs["cost"]["tokens"]) for t in front}
    optuna_points = {tuple(t.values) for t in search.study.best_trials}
    assert points == optuna_points
    costs = [t.user_attrs["cost"]["tokens"] for t in front]
    accs = [t.user_attrs["accuracy"] for t in front]
    assert costs == sorted(costs) and accs == sorted(accs)  # cheaper is worse along the front
    assert any("prunes single-objective" in n for n in search.notes)


def test_reuse_second_identical_trial_costs_no_new_tokens(tmp_path):
    search, backends = make_search(tmp_path, trials=3)
    enqueue(search, X4, X4, X1)
    search.optimize()
    a, b, c = search.study.trials
    ra, rb, rc = (t.user_attrs["reuse"] for t in (a, b, c))
    assert ra["new_tokens"] > 0 and ra["saved_tokens"] == 0
    assert rb["new_tokens"] == 0 and rb["saved_tokens"] == ra["new_tokens"] and rb["new_calls"] == 0
    assert b.user_attrs["cost"] == a.user_attrs["cost"]  # the price of the pipeline, not of this run
    assert rc["new_tokens"] == 0  # sample 0 of X4 is X1's only sample
    assert len(backends["embedded"].batches) == 1


def test_outputs_best_yaml_pareto_and_report(tmp_path):
    search, _ = make_search(tmp_path, trials=4, budget=Budgets(tokens=1000))
    enqueue(search, X4, X1, X4)
    search.optimize()
    out = tmp_path / "out"
    report = write_outputs(search, out, holdout={"accuracy": 1.0, "questions": 2}, plots=False)
    from archon.pipeline import Pipeline

    best = Pipeline.from_yaml(out / "best.yaml", cache=False)
    assert best.name == "unit-best" and report["best"]["dev_accuracy"] == 1.0
    assert list((out / "pareto").glob("*.yaml")) and "Pareto" in (out / "pareto.md").read_text()
    data = json.loads((out / "report.json").read_text())
    assert data["reuse"]["tokens_saved_by_cache"] > 0
    assert data["reuse"]["tokens_without_reuse"] == data["reuse"]["tokens_generated"] + \
        data["reuse"]["tokens_saved_by_cache"]
    assert data["trials"]["finished"] == 4 and "held-out accuracy" in (out / "report.md").read_text()


def test_split_is_deterministic_and_disjoint():
    a_dev, a_hold = split_items(items(12), 0.25, seed=3)
    b_dev, _ = split_items(list(reversed(items(12))), 0.25, seed=3)
    assert [i.id for i in a_dev] == [i.id for i in b_dev] and len(a_hold) == 3
    assert not {i.id for i in a_dev} & {i.id for i in a_hold}


@pytest.mark.slow
def test_cli_end_to_end_on_the_embedded_model(tmp_path):
    import subprocess

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "archon", "search", str(SPACES / "tiny_space.yaml"), "--benchmark", "arith",
           "--limit", "6", "--trials", "4", "--budget-tokens", "400", "--out", str(out),
           "--cache", str(tmp_path / "calls.sqlite"), "--study", "e2e"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["trials"]["finished"] == 4
    assert (out / "best.yaml").exists() and (out / "pareto.md").exists() and (out / "report.md").exists()
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["nodes"] and report["holdout"]["questions"] == 2
    assert (out / "winner_eval").is_dir()
    # rerunning the same command resumes: the study is already complete
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "report.json").read_text())["trials"]["finished"] == 4


def test_benchmark_bridge_grades_like_archon_eval_and_writes_the_winner_run(tmp_path):
    from archon.benchmarks.evaluate import load_summary
    from archon.search.bench import BenchmarkEvaluator, evaluate_winner, load_benchmark

    def respond(request, index):  # the few-shot arith prompt: the last line is "a+b="
        text = request.messages[-1].content if request.messages else request.prompt
        a, b = text.strip().splitlines()[-1].rstrip("=").split("+")
        return str(int(a) + int(b) + (index % 2))  # sample 0 right, sample 1 wrong

    data = load_benchmark("arith", limit=8)
    router, _ = scripted_router(respond, cache=CallCache(tmp_path / "calls.sqlite"))
    metered = MeteredRouter.wrap(router)
    dev, held = split_items(data.items, 0.25, seed=0)
    search = Search(parse_space(TINY), BenchmarkEvaluator(metered, data), dev,
                    SearchSettings(trials=2, sampler="random", pruner="none"), holdout=held)
    enqueue(search, X1, {**X1, "gen.embedded.samples": 2, "final.selector": "vote"})
    search.optimize()
    one, two = search.study.trials
    assert one.value == 1.0 and one.user_attrs["n_queries"] == len(dev) == 6
    assert two.user_attrs["reuse"]["saved_tokens"] > 0  # sample 0 came from trial 0
    best = best_trial(search.study.trials, len(dev))
    result = evaluate_winner(best.user_attrs["config"], "unit-best", metered, data, held, tmp_path / "winner",
                             {"search": {"trial": best.number}})
    assert result["questions"] == 2 and result["accuracy"] == 1.0
    summary = load_summary(tmp_path / "winner")  # what `archon leaderboard` reads
    assert summary.n == 2 and summary.pipeline["name"] == "unit-best" and summary.pipeline["search"]["trial"] == 0


@pytest.mark.parametrize("sampler,multi", [("tpe", False), ("random", False), ("gp", False), ("nsga2", True),
                                           ("cmaes", False), ("grid", False), ("tpe", True)])
def test_every_sampler_runs_a_study(tmp_path, sampler, multi):
    search, _ = make_search(tmp_path, trials=4, sampler=sampler, multi_objective=multi, budget=Budgets(tokens=60),
                            n_startup_trials=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search.optimize()
    assert len(search.finished()) == 4
    assert not [t for t in search.study.trials if t.state == optuna.trial.TrialState.FAIL]


def test_cmaes_is_single_objective_only(tmp_path):
    search, _ = make_search(tmp_path, sampler="cmaes", multi_objective=True)
    with pytest.raises(ConfigError, match="single-objective"):
        search.optimize()


@pytest.mark.reliability
def test_a_dead_workers_trial_is_failed_on_start_even_when_the_target_is_reached(tmp_path):
    first, _ = make_search(tmp_path, trials=2, storage=True, heartbeat_s=1)
    first.optimize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        killed = first.study.ask()  # a worker killed mid-trial: RUNNING, its heartbeat stops
        first.study._storage.record_heartbeat(killed._trial_id)
    time.sleep(4.5)  # past the grace period (3 heartbeats; SQLite timestamps have 1 s resolution)
    again, _ = make_search(tmp_path, trials=2, storage=True, heartbeat_s=1)
    assert again.remaining() == 0
    again.optimize()
    states = {t.number: t.state for t in again.study.get_trials(deepcopy=False)}
    assert states[killed.number] == TrialState.FAIL


@pytest.mark.reliability
def test_two_workers_never_exceed_the_target(tmp_path):
    a, _ = make_search(tmp_path, trials=3, storage=True)
    a.settings.trials = 2
    a.optimize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_flight = a.study.ask()  # worker A is running the 3rd trial right now
    a.settings.trials = 3
    assert a._admit(in_flight)
    b, _ = make_search(tmp_path, trials=3, storage=True)  # worker B starts meanwhile
    assert b.remaining() == 1
    b.optimize()
    assert len(b.finished()) == 2  # B saw A's trial and ran none
    surplus = [t for t in b.study.get_trials(deepcopy=False) if t.user_attrs.get("status") == "surplus"]
    assert len(surplus) == 1 and surplus[0].state == TrialState.FAIL
    a.study.tell(in_flight, 0.5)
    assert len(a.finished()) == 3  # exactly the target


@pytest.mark.reliability
def test_two_real_worker_processes_finish_exactly_the_target(tmp_path):
    import subprocess

    worker = (
        "import sys\n"
        f"sys.path[:0] = [{str(Path(__file__).parent)!r}]\n"
        "from pathlib import Path\n"
        "from test_search import make_search\n"
        f"search, _ = make_search(Path({str(tmp_path)!r}), trials=6, storage=True)\n"
        "search.optimize()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", worker], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
    done, _ = make_search(tmp_path, trials=6, storage=True)
    assert len(done.finished()) == 6
    assert all(t.state != TrialState.RUNNING for t in done.study.get_trials(deepcopy=False))


@pytest.mark.reliability
def test_a_search_space_imports_no_module_it_does_not_list(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "space_mod.py").write_text(f"open({str(marker)!r}, 'w').write('side effect')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="plugins"):
        parse_space({**TINY, "generate": {**TINY["generate"], "technique": "space_mod:Gen"}})
    assert not marker.exists()


# -- many workers on one PostgreSQL study (docs/scale_out.md) ------------------------------

@pytest.fixture(scope="module")
def postgres_server():
    pytest.importorskip("psycopg2", reason="needs psycopg2-binary (the `postgres` or `dev` extra)")
    from postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresServer() as server:
        yield server


def _study_trials(url: str, name: str) -> list[FrozenTrial]:
    import optuna

    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


@pytest.mark.postgres
@pytest.mark.slow
def test_three_workers_on_one_postgres_study_finish_exactly_the_target(tmp_path, postgres_server):
    """The README's scale-out recipe: the same command on every machine, one study in PostgreSQL.

    Three real `archon search` processes on the embedded model; one is killed with SIGKILL
    mid-trial; the other two finish. Then the killed worker's command is simply run again,
    as a user would. The study ends with exactly the target, nothing RUNNING, and the
    winner evaluated on the held-out set once.
    """
    import signal
    import subprocess

    url, study, target = postgres_server.url, "pg-workers", 5

    def command(i: int) -> list[str]:
        return [sys.executable, "-m", "archon", "search", str(SPACES / "tiny_space.yaml"), "--benchmark", "arith",
                "--limit", "24", "--trials", str(target), "--budget-tokens", "400", "--storage", url,
                "--study", study, "--out", str(tmp_path / f"worker{i}"), "--cache", str(tmp_path / f"calls{i}.sqlite"),
                "--sampler", "random", "--no-plots"]

    logs = [(tmp_path / f"worker{i}.log").open("w") for i in range(3)]
    procs = [subprocess.Popen(command(i), cwd=REPO, stdout=subprocess.DEVNULL, stderr=logs[i]) for i in range(3)]
    try:
        deadline = time.monotonic() + 600
        killed = False
        # kill worker 0 while it runs a trial (18 dev questions keep a trial busy for a while)
        while time.monotonic() < deadline and not killed and procs[0].poll() is None:
            time.sleep(0.2)
            with contextlib.suppress(Exception):
                if any(t.state == TrialState.RUNNING for t in _study_trials(url, study)):
                    time.sleep(1.0)  # well inside the trial, not at its admission
                    procs[0].send_signal(signal.SIGKILL)
                    killed = True
        assert killed, "no trial was ever seen running"
        for i, p in enumerate(procs[1:], start=1):
            p.wait(timeout=900)
            assert p.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
        procs[0].wait(timeout=30)
        time.sleep(31)  # the killed trial's heartbeat goes stale after 3 x 10 s
        again = subprocess.run(command(0), cwd=REPO, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    trials = _study_trials(url, study)
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == target
    report = json.loads((tmp_path / "worker0" / "report.json").read_text())
    assert report["trials"]["finished"] == target and report["best"] is not None
    winner_runs = [i for i in range(3) if (tmp_path / f"worker{i}" / "winner_eval").is_dir()]
    assert len(winner_runs) == 1, f"the winner was evaluated by workers {winner_runs}"
    # the one evaluated is the study's final winner, and the rerun reports its held-out result
    evaluator = json.loads((tmp_path / f"worker{winner_runs[0]}" / "report.json").read_text())
    assert evaluator["best"]["trial"] == report["best"]["trial"]
    assert report["holdout"] is not None and report["holdout"]["questions"] == evaluator["holdout"]["questions"]
