"""Idealized runtime (Narayanan et al. 2023): the profile's fit, its file, the profiler's sweep,
per-call usage and its roll-ups, eval summaries, the leaderboard and search axes.

Expected values are computed here from the paper's formula, runtime = F(p) + g * (o - 1)
with F piecewise linear in the prompt length (plus archon's c * cached), independently of
the code under test. The profiler runs against a fake engine whose latency *is* such a
formula (control flow), and once against the real embedded model (slow).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import typer
from scripted import scripted_router
from typer.testing import CliRunner

from archon.backends.accounting import CallTag
from archon.backends.profiling import ProfileSettings, measure_profile
from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.runtime_profile import (
    RuntimeCoefficients,
    RuntimeProfile,
    Timing,
    bundled_profile_path,
    fit_coefficients,
    resolve_profile,
)
from archon.backends.types import GenerationRequest, GenerationResult, Sample, Usage
from archon.errors import ConfigError
from archon.pipeline import Pipeline
from archon.techniques import Generate, Vote

KNOTS = [8.0, 64.0, 256.0, 1024.0]
F_AT_KNOTS = [0.030, 0.060, 0.200, 0.900]
G = 0.025
C = 0.0002


def truth_f(p: float) -> float:
    """The reference F: straight lines between the knots, the end segments extended."""
    k, f = KNOTS, F_AT_KNOTS
    i = 0
    while i < len(k) - 2 and p > k[i + 1]:
        i += 1
    return max(0.0, f[i] + (f[i + 1] - f[i]) * (p - k[i]) / (k[i + 1] - k[i]))


def truth(u: float, c: float, o: float) -> float:
    return truth_f(u) + C * c + G * max(o - 1, 0)


def make_profile(model: str = "m") -> RuntimeProfile:
    return RuntimeProfile(model=model, engine={"backend": "test"}, hardware={"cpu": "test cpu"},
                          coefficients=RuntimeCoefficients(prompt_knots=KNOTS, prompt_runtime_s=F_AT_KNOTS,
                                                           per_output_token_s=G, per_cached_token_s=C))


# -- the cost model and its fit ------------------------------------------------------------------

def test_predict_follows_the_papers_decomposition():
    p = make_profile()
    # F(36) lies halfway between F(8) and F(64); the first output token comes with the prompt pass
    assert p.predict(36, 0, 1) == pytest.approx((0.030 + 0.060) / 2)
    assert p.predict(36, 0, 11) == pytest.approx(0.045 + 10 * G)
    assert p.predict(36, 500, 11) == pytest.approx(0.045 + 500 * C + 10 * G)
    assert p.predict(2048, 0, 0) == pytest.approx(0.9 + (0.9 - 0.2) * (2048 - 1024) / 768)  # last segment extended
    assert p.predict(0, 0, 0) >= 0.0
    for u, c, o in [(8, 0, 1), (100, 30, 7), (700, 0, 64), (3000, 1000, 200)]:
        assert p.predict(u, c, o) == pytest.approx(truth(u, c, o))


def test_fit_recovers_known_coefficients_from_synthetic_timings():
    rng = random.Random(7)
    exact, noisy = [], []
    for u in [*KNOTS, 30.0, 150.0, 600.0]:
        for o in (1, 8, 32, 128):
            for c in (0.0, 512.0):
                t = truth(u, c, o)
                exact.append(Timing(u, c, o, t))
                noisy.append(Timing(u, c, o, t * (1 + rng.uniform(-0.01, 0.01))))
    coeffs, stats = fit_coefficients(exact, KNOTS)
    assert coeffs.prompt_knots == KNOTS
    assert coeffs.prompt_runtime_s == pytest.approx(F_AT_KNOTS, abs=1e-9)
    assert coeffs.per_output_token_s == pytest.approx(G, abs=1e-9)
    assert coeffs.per_cached_token_s == pytest.approx(C, abs=1e-9)
    assert stats["r2"] == pytest.approx(1.0) and stats["rmse_s"] < 1e-9
    coeffs, stats = fit_coefficients(noisy, KNOTS)  # 1% noise: still within a few percent
    assert coeffs.prompt_runtime_s == pytest.approx(F_AT_KNOTS, abs=0.01)  # noise of a few 10 ms on 3 s calls
    assert coeffs.per_output_token_s == pytest.approx(G, rel=0.02)
    assert coeffs.per_cached_token_s == pytest.approx(C, rel=0.1)
    assert stats["r2"] > 0.99
    without_cached = [t for t in exact if t.cached == 0]
    assert fit_coefficients(without_cached, KNOTS)[0].per_cached_token_s == 0.0
    with pytest.raises(ValueError, match="two distinct"):
        fit_coefficients(exact, [8])


def test_a_profile_round_trips_through_its_file(tmp_path):
    p = make_profile()
    p.measurements = []
    path = p.save(tmp_path / "sub" / "m.json")
    again = RuntimeProfile.load(path)
    assert again == p and again.predict(100, 10, 5) == p.predict(100, 10, 5)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as exc:
        RuntimeProfile.load(bad, field="models.m.runtime_profile")
    assert "bad.json" in str(exc.value) and "models.m.runtime_profile" in str(exc.value)
    data = json.loads(path.read_text())
    data["coefficients"]["per_output_token_s"] = -1
    bad.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"coefficients\.per_output_token_s") as exc:
        RuntimeProfile.load(bad)
    assert "archon models profile" in str(exc.value)
    with pytest.raises(ConfigError, match="not found"):
        RuntimeProfile.load(tmp_path / "missing.json")


def test_the_bundled_embedded_profile_is_shipped_and_used():
    path = bundled_profile_path()
    assert path is not None, "archon/profiles/embedded.json is missing"
    profile = RuntimeProfile.load(path)
    assert profile.model == "embedded" and profile.engine["backend"] == "llama_cpp"
    assert profile.engine.get("version") and profile.hardware.get("cpu") and profile.versions.get("python")
    assert profile.method["statistic"] == "median" and profile.method["repeats"] >= 3
    assert profile.coefficients.per_output_token_s > 0 and profile.fit["r2"] > 0.9
    lookup = resolve_profile("embedded", ModelRegistry().get("embedded"))
    assert lookup.profile == profile and lookup.source.startswith("bundled:")
    other = resolve_profile("x", ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1"))
    assert other.profile is None and "archon models profile x" in other.reason


# -- the profiler, against a fake engine whose latency is the reference formula ------------------

@dataclass
class FormulaBackend:
    """One word = one token, plus BOS; keeps a KV prefix like llama.cpp; 'takes' truth() seconds."""

    kv: list[str] = field(default_factory=list)
    calls: list[tuple[int, int, int]] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        out = []
        for r in requests:
            words = ["<bos>", *(r.prompt or "").split()]
            cached = 0
            for a, b in zip(self.kv, words, strict=False):
                if a != b:
                    break
                cached += 1
            cached = min(cached, len(words) - 1)
            gen = [f"w{i}" for i in range(r.max_tokens)]
            self.kv = words + gen
            uncached = len(words) - cached
            self.calls.append((uncached, cached, r.max_tokens))
            usage = Usage(prompt_tokens=len(words), cached_prompt_tokens=cached, completion_tokens=r.max_tokens,
                          calls=1, latency_s=truth(uncached, cached, r.max_tokens))
            out.append(GenerationResult([Sample(" ".join(gen), completion_tokens=r.max_tokens)], usage))
        return out

    def score(self, requests):  # pragma: no cover - not used
        raise NotImplementedError

    def close(self) -> None:
        pass


def test_the_profiler_sweeps_defeats_the_prefix_cache_and_fits():
    backend = FormulaBackend()
    spec = ModelSpec(backend="llama_cpp", path="/nowhere.gguf", n_threads=2)
    settings = ProfileSettings(prompt_lengths=(8, 64, 256), output_lengths=(1, 8, 32), cached_lengths=(256,),
                               cached_suffix=16, cached_outputs=(1, 8), repeats=3, warmup=2)
    seen: list[str] = []
    profile = measure_profile("fake", spec, backend, settings, progress=seen.append)
    plain = [m for m in profile.measurements if m.cached_prompt_tokens <= 1]
    assert len(plain) == 9 and all(len(m.repeats_s) == 3 for m in profile.measurements)
    assert all(m.cached_prompt_tokens == 1 for m in plain)  # only the BOS: no prompt hit the prefix cache
    lengths = sorted({m.uncached_prompt_tokens for m in plain})
    assert lengths == pytest.approx([8, 64, 256], abs=2)  # prompts of about the sweep's lengths
    primed = [m for m in profile.measurements if m.cached_prompt_tokens > 1]
    assert len(primed) == 2 and all(m.cached_prompt_tokens >= 250 for m in primed)
    c = profile.coefficients
    assert c.prompt_knots == lengths  # F's knots are the measured prompt lengths
    assert c.prompt_runtime_s == pytest.approx([truth_f(k) for k in lengths], abs=1e-6)
    assert c.per_output_token_s == pytest.approx(G, abs=1e-6) and c.per_cached_token_s == pytest.approx(C, rel=1e-3)
    assert profile.method["warmup"] == 2 and profile.method["statistic"] == "median"
    assert profile.engine["backend"] == "llama_cpp" and profile.engine["n_threads"] == 2
    assert profile.hardware["cores"] and profile.versions["python"] and seen[0] == "warm-up"


# -- usage: per call, rolled up ------------------------------------------------------------------

def profiled_router(tmp_path, *, tp: int = 2, price: float | None = 3.6, cache=None):
    router, backends = scripted_router(cache=cache)
    path = make_profile("embedded").save(tmp_path / "embedded.json")
    spec = router.registry.get("embedded").model_copy(update={
        "runtime_profile": str(path), "tensor_parallel_size": tp, "price_per_accelerator_hour": price})
    router.registry = ModelRegistry({"embedded": spec})
    return router, backends


def test_every_call_gets_its_idealized_runtime_and_the_rollups_add_up(tmp_path):
    router, _ = profiled_router(tmp_path)
    pipe = Pipeline({"sample": Generate(samples=3), "vote": Vote()}, {"vote": ["sample"]}, router=router)
    results = pipe.run_batch(["What is 2+2?", "What is 10+15? Think briefly."])
    entries = router.ledger.entries
    assert entries and all(e.usage.calls == 1 for e in entries)
    for e in entries:
        u = e.usage
        expected = truth(u.prompt_tokens - u.cached_prompt_tokens, u.cached_prompt_tokens, u.completion_tokens)
        assert u.idealized_runtime_s == pytest.approx(expected)
        assert u.idealized_cost == pytest.approx(2 * expected)  # tensor_parallel_size 2
        assert u.idealized_price == pytest.approx(2 * expected / 3600 * 3.6)
        assert u.idealized_unknown_calls == 0
    total = router.ledger.total()
    assert total.idealized_runtime_s == pytest.approx(sum(e.usage.idealized_runtime_s for e in entries))
    for rollup in (router.ledger.by_node(), router.ledger.by_query(), router.ledger.by_model()):
        assert sum(u.idealized_runtime_s for u in rollup.values()) == pytest.approx(total.idealized_runtime_s)
        assert sum(u.idealized_cost for u in rollup.values()) == pytest.approx(total.idealized_cost)
    assert sum(r.usage["idealized_runtime_s"] for r in results) == pytest.approx(total.idealized_runtime_s)
    for r in results:
        assert sum(u["idealized_runtime_s"] for u in r.usage_by_node.values()) == pytest.approx(
            r.usage["idealized_runtime_s"])
        assert r.usage["latency_s"] >= 0  # measured latency stays beside it


def test_without_a_profile_the_figure_is_absent_not_zero():
    router, _ = scripted_router()  # `embedded` on an HTTP spec: no bundled profile applies
    router.generate([GenerationRequest(model="embedded", prompt="hi", n=2)], [CallTag("n", "q")])
    u = router.ledger.total()
    assert u.idealized_unknown_calls == 1 and not u.idealized_known and u.idealized_runtime_s == 0
    assert "no runtime profile" in router.runtime_profile("embedded").reason
    # accelerators: the explicit field wins over TP x PP
    from archon.backends.runtime_profile import accelerators

    assert accelerators(ModelSpec(backend="vllm", tensor_parallel_size=2, pipeline_parallel_size=2)) == 4
    assert accelerators(ModelSpec(backend="vllm", tensor_parallel_size=2, accelerators=8)) == 8


def test_cache_hits_cost_nothing_but_the_eval_reports_the_full_idealized_cost(tmp_path, tmp_cache):
    from archon.benchmarks.evaluate import evaluate
    from archon.search.metering import MeteredRouter

    def pipe_on_cache():
        router, backends = profiled_router(tmp_path, cache=tmp_cache)
        return Pipeline({"sample": Generate(samples=2, temperature=0.8), "vote": Vote()}, {"vote": ["sample"]},
                        router=MeteredRouter.wrap(router), name="v"), backends["embedded"]

    pipe, _ = pipe_on_cache()
    first = evaluate(pipe, "arith?n=6&seed=1", tmp_path / "first")
    assert first.idealized_runtime_per_query_s and first.idealized_runtime_per_query_s > 0
    assert first.idealized_cost_per_query == pytest.approx(2 * first.idealized_runtime_per_query_s, rel=1e-5)
    assert first.idealized_price_per_query == pytest.approx(first.idealized_cost_per_query / 3600 * 3.6, rel=1e-5)
    assert first.runtime_profiles["embedded"]["accelerators"] == 2
    assert first.runtime_profiles["embedded"]["hardware"] == "test cpu"
    pipe, backend = pipe_on_cache()
    again = evaluate(pipe, "arith?n=6&seed=1", tmp_path / "again")
    assert backend.batches == [] and again.spent["idealized_runtime_s"] == 0
    assert again.idealized_runtime_per_query_s == pytest.approx(first.idealized_runtime_per_query_s, rel=0.35)


def test_eval_summary_says_why_the_idealized_runtime_is_absent(tmp_path):
    from archon.benchmarks.evaluate import evaluate

    router, _ = scripted_router()
    pipe = Pipeline({"sample": Generate(samples=1)}, router=router, name="s")
    s = evaluate(pipe, "arith?n=3&seed=1", tmp_path / "run")
    assert s.idealized_runtime_per_query_s is None and s.idealized_cost_per_query is None
    assert "no runtime profile" in (s.idealized_note or "") and "archon models profile" in s.idealized_note
    assert s.latency_per_query_s >= 0


def test_config_and_cli_point_models_at_profile_files(tmp_path):
    from archon.config import apply_runtime_profiles, parse_config

    path = make_profile("embedded").save(tmp_path / "p.json")
    config = parse_config({"nodes": [{"technique": "generate"}]})
    updated = apply_runtime_profiles(config, [f"embedded={path}"])
    assert updated.models["embedded"].runtime_profile == str(path) and updated.models["embedded"].backend == "llama_cpp"
    with pytest.raises(ConfigError, match="NAME=PATH"):
        apply_runtime_profiles(config, ["embedded"])
    with pytest.raises(ConfigError, match=r"unknown model 'nope'"):
        apply_runtime_profiles(config, [f"nope={path}"])
    with pytest.raises(ConfigError, match="not found"):
        apply_runtime_profiles(config, [f"embedded={tmp_path / 'missing.json'}"])
    yaml_file = tmp_path / "p.yaml"
    yaml_file.write_text("models:\n  m:\n    backend: openai\n    base_url: http://127.0.0.1:9/v1\n"
                         f"    runtime_profile: {tmp_path / 'missing.json'}\n"
                         "defaults: {model: m}\nnodes:\n  - technique: generate\n")
    with pytest.raises(ConfigError, match=r"models\.m\.runtime_profile") as exc:
        Pipeline.from_yaml(yaml_file, cache=False)
    assert "p.yaml" in str(exc.value)


# -- leaderboard and search ----------------------------------------------------------------------

def test_leaderboard_ranks_and_plots_by_idealized_runtime(tmp_path):
    from archon.benchmarks import leaderboard as lb
    from archon.benchmarks.evaluate import evaluate
    from archon.commands.leaderboard import leaderboard_command

    runs = []
    for samples in (1, 3):
        router, _ = profiled_router(tmp_path)
        pipe = Pipeline({"sample": Generate(samples=samples), "vote": Vote()}, {"vote": ["sample"]}, router=router,
                        name=f"vote{samples}")
        evaluate(pipe, "arith?n=4&seed=2", tmp_path / f"v{samples}")
        runs.append(tmp_path / f"v{samples}")
    router, _ = scripted_router()
    evaluate(Pipeline({"sample": Generate(samples=1)}, router=router, name="unprofiled"), "arith?n=4&seed=2",
             tmp_path / "u")
    runs.append(tmp_path / "u")
    (g,) = lb.load_groups(runs, sort="idealized_runtime", cost="idealized_runtime")
    assert [e.label for e in g.entries] == ["vote1", "vote3", "unprofiled"]  # no figure: last, never on the front
    assert g.entries[2].pareto is False and g.cost == "idealized_runtime"
    ideal = [e.summary.idealized_runtime_per_query_s for e in g.entries[:2]]
    assert ideal[0] < ideal[1]
    md = lb.render_markdown([g])
    assert "idealized/q" in md and f"{ideal[0]:.2f}s" in md
    with pytest.raises(ConfigError, match="unknown cost axis"):
        lb.load_groups(runs, cost="dollars")
    app = typer.Typer()
    app.command("leaderboard")(leaderboard_command)
    app.command("noop")(lambda: None)
    args = ["leaderboard", *map(str, runs), "--sort", "idealized_runtime", "--cost", "idealized_runtime",
            "--format", "csv"]
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    res = CliRunner().invoke(app, [*args, "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert "idealized_runtime_per_query_s" in res.output and png.stat().st_size > 1000
    res = CliRunner().invoke(app, ["leaderboard", *map(str, runs), "--cost", "nope"])
    assert res.exit_code == 2 and "unknown cost axis" in res.output


def test_search_budget_in_idealized_seconds(tmp_path):
    from test_search import TINY, X1, X4, arith_responder, enqueue, grade, items

    from archon.backends.cache import CallCache
    from archon.commands.search import profile_runtime, require_runtime_profiles
    from archon.search.evaluation import PipelineEvaluator, split_items
    from archon.search.metering import MeteredRouter
    from archon.search.runner import Budgets, Search, SearchSettings, best_trial
    from archon.search.space import parse_space

    router, _ = scripted_router(arith_responder, cache=CallCache(tmp_path / "calls.sqlite"))
    path = make_profile("embedded").save(tmp_path / "embedded.json")
    router.registry = ModelRegistry({"embedded": router.registry.get("embedded").model_copy(
        update={"runtime_profile": str(path)})})
    metered = MeteredRouter.wrap(router)
    require_runtime_profiles(metered, ["embedded"])
    dev, hold = split_items(items(8), 0.25, seed=0)
    # one sample costs ~truth_f(prompt) per query; four samples add 4 x 5 output tokens of 25 ms
    one = truth(60, 0, 5)
    settings = SearchSettings(trials=2, sampler="random", pruner="none", seed=0, study_name="rt", skip_margin=100.0,
                              budget=Budgets(runtime=one * 1.5))
    search = Search(parse_space(TINY), PipelineEvaluator(metered, grade), dev, settings, holdout=hold,
                    parameters=lambda m: 1e6, runtime=profile_runtime(metered))
    enqueue(search, X4, X1)
    search.optimize()
    t4, t1 = search.study.trials
    assert t4.user_attrs["cost"]["runtime"] > t1.user_attrs["cost"]["runtime"] > 0
    assert t4.user_attrs["estimate"]["runtime"] > t1.user_attrs["estimate"]["runtime"] > 0
    assert t1.user_attrs["feasible"] is True and t4.user_attrs["feasible"] is False
    assert t4.constraints["runtime_per_query"] > 0 >= t1.constraints["runtime_per_query"]
    assert best_trial(search.study.trials, len(search.dev)).number == t1.number
    bare, _ = scripted_router()
    with pytest.raises(ConfigError, match="--budget-runtime needs a runtime profile"):
        require_runtime_profiles(bare, ["embedded"])


# -- the real engine -----------------------------------------------------------------------------

@pytest.mark.slow
def test_archon_models_profile_on_the_embedded_model(tmp_path):
    pytest.importorskip("llama_cpp")
    from archon.cli import app

    out = tmp_path / "emb.json"
    res = CliRunner().invoke(app, ["models", "profile", "embedded", "--out", str(out), "--prompt-lengths", "8,48",
                                   "--output-lengths", "1,6", "--cached-lengths", "48", "--repeats", "1",
                                   "--warmup", "1"])
    assert res.exit_code == 0, res.output
    profile = RuntimeProfile.load(out)
    assert profile.model == "embedded" and profile.engine["backend"] == "llama_cpp" and profile.engine["version"]
    assert profile.hardware["cores"] and profile.versions["archon"]
    assert len(profile.measurements) == 6 and all(m.generated_tokens >= 1 for m in profile.measurements)
    assert any(m.cached_prompt_tokens > 40 for m in profile.measurements)  # the primed points hit the cache
    assert profile.coefficients.per_output_token_s > 0 and len(profile.coefficients.prompt_knots) == 2


def test_models_profile_cli_errors_name_the_fix(tmp_path):
    from archon.cli import app

    res = CliRunner().invoke(app, ["models", "profile", "nope", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 2 and "unknown model 'nope'" in res.output
    res = CliRunner().invoke(app, ["models", "profile", "embedded", "--prompt-lengths", "8"])
    assert res.exit_code == 2 and "at least two prompt lengths" in res.output
    res = CliRunner().invoke(app, ["models", "profile", "embedded", "--output-lengths", "1,x"])
    assert res.exit_code == 2 and "--output-lengths" in res.output
    res = CliRunner().invoke(app, ["models", "list"])
    assert res.exit_code == 0 and "runtime profile" in res.output
