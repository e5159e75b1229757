"""The scoring layer: the contract every registered scorer and technique keeps, aggregation,
per-step scoring in step searches, the registry, and the import direction (no cycle, no
grader reachable from a scorer or technique).

Control flow runs on the scripted backends; the real embedded model runs as a
token-probability PRM inside beam search and particle filtering (slow).
"""

from __future__ import annotations

import ast
import math
import subprocess
import sys
from pathlib import Path

import pytest
from scripted import scripted_router
from scripted_steps import digit, is_judge, steps_router

from archon import Budget, Pipeline
from archon.backends.types import GenerationResult, RewardResult, ScoreResult, TokenLogprob
from archon.data import Candidate
from archon.errors import ConfigError
from archon.registry import Registry
from archon.scoring import SCORERS, RewardModelScorer, ScoreContext, TokenProbPRM, aggregate, make_scorer, run_program
from archon.techniques import TECHNIQUES, BestOfN
from archon.techniques.base import NodeContext, Program, Technique
from archon.techniques.beam import BeamSearch
from archon.techniques.particles import ParticleSteering

REPO = Path(__file__).resolve().parent.parent


def drive_skipping(program):
    """Answer every round with skipped calls, as the engine does when the budget is spent."""
    try:
        requests = program.send(None)
        while True:
            requests = program.send([GenerationResult([]) if hasattr(r, "n") else
                                     RewardResult([]) if hasattr(r, "step_tag") else ScoreResult([], [])
                                     for r in requests])
    except StopIteration as stop:
        return stop.value


# -- aggregation ---------------------------------------------------------------------------------

def test_aggregations_follow_their_definitions():
    steps = [0.9, 0.2, 0.8, float("nan")]
    assert aggregate(steps, "last") == 0.8  # the newest known step
    assert aggregate(steps, "min") == 0.2
    assert aggregate(steps, "prod") == pytest.approx(0.9 * 0.2 * 0.8)
    assert aggregate(steps, "mean") == pytest.approx((0.9 + 0.2 + 0.8) / 3)
    assert math.isnan(aggregate([], "min"))
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([1.0], "max")


# -- the registry ----------------------------------------------------------------------------------

def test_registry_register_resolve_module_attr_and_did_you_mean():
    reg: Registry[int] = Registry("thing")
    reg.register("alpha", 1, "a")
    assert reg.resolve("a") == 1 and "a" in reg and list(reg) == ["alpha"]
    assert reg.resolve("archon.scoring.values:NAN") != reg.resolve("archon.scoring.values:NAN")  # nan
    with pytest.raises(ConfigError, match="unknown thing 'alpah'") as err:
        reg.resolve("alpah")
    assert "did you mean `alpha`" in str(err.value)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha", 2)
    with pytest.raises(ConfigError, match="no attribute"):
        reg.resolve("archon.scoring.values:nope")
    assert TECHNIQUES.resolve("best_of_n") is BestOfN
    with pytest.raises(ConfigError, match="did you mean `beam_search`"):
        TECHNIQUES.resolve("beam_serch")
    assert SCORERS.resolve("math_shepherd") is TokenProbPRM


# -- the contract: every registered scorer --------------------------------------------------------

SCORER_SPECS = {
    "judge": [{"type": "judge"}, {"type": "judge", "mode": "digit"}, {"type": "judge", "mode": "verdict"},
              {"type": "judge", "mode": "yes_no"}],
    "pairwise": [{"type": "pairwise"}],
    "grm": [{"type": "grm", "samples": 2}],
    "logprob": [{"type": "logprob", "model": "embedded"}],
    "token_prm": [{"type": "token_prm"}, {"type": "token_prm", "format": "raw", "good": "+", "bad": "-"}],
    "reward_model": [{"type": "reward_model", "model": "embedded"}],
}


def test_every_registered_scorer_has_a_contract_case():
    assert set(SCORERS) == set(SCORER_SPECS), "add the new scorer to SCORER_SPECS"


@pytest.mark.parametrize("spec", [s for specs in SCORER_SPECS.values() for s in specs],
                         ids=lambda s: "-".join(str(v) for v in s.values()))
def test_scorer_contract(spec):
    scorer = make_scorer(spec)
    question, cands, steps = "What is 2 + 2?", ["a\n\nb \\boxed{4}", "c \\boxed{5}"], [["a", "b \\boxed{4}"], ["c"]]
    # an empty candidate list needs no call
    assert run_program(scorer.score(question, [], ScoreContext()), None) == []
    # a skipped call (budget) gives nan and a note, never an exception
    notes: list[str] = []
    values = drive_skipping(scorer.score(question, list(cands), ScoreContext(note=notes.append)))
    assert len(values) == 2 and all(math.isnan(v) for v in values)
    assert notes
    per_step = drive_skipping(scorer.score(question, list(cands), ScoreContext(note=notes.append), steps=steps))
    assert [len(r) for r in per_step] == [2, 1] and all(math.isnan(v) for r in per_step for v in r)
    # inputs are not mutated, and the same seed gives the same scores
    before = (list(cands), [list(s) for s in steps])
    outs = []
    for _ in range(2):
        router, _ = scripted_router(lambda req, i: "Score: 7. Verdict: yes. Winner: A \\boxed{7, 3}")
        outs.append((run_program(scorer.score(question, cands, ScoreContext(seed=5)), router),
                     run_program(scorer.score(question, cands, ScoreContext(seed=5), steps=steps), router)))
    assert (cands, steps) == before
    assert repr(outs[0]) == repr(outs[1])
    assert len(outs[0][0]) == 2 and [len(r) for r in outs[0][1]] == [2, 1]


@pytest.mark.parametrize("spec", [s for specs in SCORER_SPECS.values() for s in specs],
                         ids=lambda s: "-".join(str(v) for v in s.values()))
def test_scorer_cost_estimate_counts_the_requests_it_makes(spec):
    """The search's cost model reads the scorer's own estimate, so it cannot drift from what
    the scorer sends (pairwise both orders, GRM's k samples...)."""
    from archon.cost import CostInputs, Flow

    scorer = make_scorer(spec)
    router, backends = scripted_router(lambda req, i: "Score: 7. Verdict: yes. Winner: A \\boxed{7, 3, 5, 1}")
    run_program(scorer.score("q", ["a", "b", "c", "d"], ScoreContext()), router)
    b = backends["embedded"]
    sent = sum(len(x) for x in (*b.batches, *b.score_batches, *b.reward_batches))
    samples = sum(r.n for x in b.batches for r in x)
    estimate = scorer.estimate(CostInputs(10.0, Flow(4, 20.0), "embedded", 64.0))
    assert sum(c.calls for c in estimate) == sent
    if samples:
        completion = sum(c.completion for c in estimate)
        per_sample = 1.0 if spec.get("mode") == "digit" else 64.0
        assert completion == pytest.approx(samples * per_sample)


# -- the contract: every registered technique -----------------------------------------------------

class Fixed(Technique):
    """Hands out the same candidates every time (an upstream node for candidate consumers)."""

    name = "fixed_for_tests"
    consumes = "query"

    def models(self, defaults):
        return []

    def __init__(self, texts=("x \\boxed{1}", "y \\boxed{2}", "x \\boxed{1}")):
        super().__init__()
        self.made = [Candidate(id=f"f{i}", text=t, answer=None, scores={"prior": float(i)}) for i, t in
                     enumerate(texts)]

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        return self.made
        yield []


TECHNIQUE_PARAMS = {"particle_steering": {"particles": 2, "max_steps": 2}, "beam_search": {"beam_width": 2,
                    "expand": 1, "max_steps": 2}, "specreason": {"max_steps": 2}, "solve_detect_verify":
                    {"max_steps": 2, "max_rounds": 0}, "generate": {"samples": 2}}


def _contract_run(name: str, budget: Budget | None = None, inputs: bool = True):
    cls = TECHNIQUES[name]
    fixed = Fixed() if inputs else Fixed(texts=())
    node = cls(TECHNIQUE_PARAMS.get(name, {}))
    router, _, _ = steps_router(lambda req, i: digit(6) if is_judge(req) else f"s{req.seed % 3} \\boxed{{{i % 2}}}")
    if cls.consumes == "query":
        pipe = Pipeline({"t": node}, {}, router=router, budget=budget)
    else:
        pipe = Pipeline({"f": fixed, "t": node}, {"t": ["f"]}, router=router, budget=budget)
    return pipe.run("What is 1 + 1?"), fixed


@pytest.mark.parametrize("name", list(TECHNIQUES))
def test_technique_contract(name):
    snapshot = [c.model_dump() for c in Fixed().made]
    first, fixed = _contract_run(name)
    assert first.error is None, first.error
    assert [c.model_dump() for c in fixed.made] == snapshot  # inputs not mutated
    again, _ = _contract_run(name)
    assert [(c.text, c.scores) for c in again.candidates] == [(c.text, c.scores) for c in first.candidates]
    if TECHNIQUES[name].consumes == "candidates":
        empty, _ = _contract_run(name, inputs=False)
        assert empty.error is None, empty.error
    tight, _ = _contract_run(name, budget=Budget(max_calls=1))
    assert tight.error is None, tight.error
    assert tight.usage.get("calls", 0) <= 1


def test_model_override_reaches_scorers_and_the_techniques_model_params():
    from archon.config import build_graph, parse_config

    config = parse_config({"models": {"big": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                                      "o": {"backend": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                           "nodes": [{"technique": "generate", "models": ["big", "big"]},
                                     {"technique": "best_of_n", "scorer": {
                                         "type": "grm", "model": "big", "meta_rm": {"type": "judge", "model": "big"}}},
                                     {"id": "b", "technique": "beam_search", "inputs": [],
                                      "scorer": {"type": "token_prm", "model": "big"}},
                                     {"technique": "select", "inputs": ["best_of_n_1", "b"]}]})
    graph = build_graph(config, model_override="o")
    assert graph.nodes["generate_0"].params.models == ["o", "o"]
    grm = graph.nodes["best_of_n_1"].params.scorer
    assert grm.model == "o" and grm.meta_rm.model == "o"
    assert graph.nodes["b"].params.scorer.model == "o"
    assert graph.nodes["b"].output_count(0) == 4 and graph.nodes["best_of_n_1"].output_count(8) == 1


# -- per-step scores in step searches --------------------------------------------------------------

def test_step_search_passes_steps_and_prior_so_old_steps_are_not_rescored():
    prm = TokenProbPRM()
    asked: list[str] = []

    def score_fn(req):
        asked.append(req.messages[-1].content)
        return [math.log(0.8), math.log(0.2)]

    router, _, log = steps_router(lambda req, i: f"step{req.seed}-{i}" if req.assistant_prefix.count("\n\n") < 2
                                  else "\\boxed{1}", score_fn=score_fn)
    pipe = Pipeline({"b": BeamSearch(beam_width=2, expand=2, max_steps=3, scorer=prm)}, {}, router=router)
    result = pipe.run("q")
    assert result.error is None
    for c in result.candidates:
        assert len(c.metadata["step_scores"]) == c.metadata["steps"]
        assert c.metadata["step_scores"] == pytest.approx([0.8] * c.metadata["steps"])
    # one score request per NEW step: each round scores only the expansions' last steps
    rounds = [n for _, kind, n in log if kind == "score"]
    assert rounds == [4, 4, 4]


def test_best_of_n_with_a_process_scorer_ranks_by_its_aggregation():
    values = {"a": 0.9, "b": 0.5, "c": 0.6, "d": 0.95}

    def score_fn(req):
        last = req.messages[-1].content.split("Partial solution:\n", 1)[1].split("\n\n")[-2].strip()
        p = values[last[0]]
        return [math.log(p), math.log(1 - p)]

    texts = ("a\n\nb", "c\n\nc", "d")  # per-step scores: [0.9, 0.5], [0.6, 0.6], [0.95]
    expected: dict[str, list[str]] = {}
    for how in ("last", "min", "prod", "mean"):
        router, _, _ = steps_router(lambda req, i: "unused", score_fn=score_fn)
        pipe = Pipeline({"f": Fixed(texts), "b": BestOfN(top_k=3, scorer={"type": "token_prm", "aggregation": how})},
                        {"b": ["f"]}, router=router)
        result = pipe.run("q")
        steps = [c.metadata["step_scores"] for c in result.candidates]
        got = [c.text for c in result.candidates]
        by_definition = sorted(texts, key=lambda t: -aggregate(
            {"a\n\nb": [0.9, 0.5], "c\n\nc": [0.6, 0.6], "d": [0.95]}[t], how))
        assert got == by_definition, how
        assert all(c.scores["prm"] == pytest.approx(aggregate(s, how)) for c, s in zip(result.candidates, steps,
                                                                                        strict=True))
        expected[how] = got
    assert expected["last"] == ["d", "c\n\nc", "a\n\nb"]
    assert expected["min"] == ["d", "c\n\nc", "a\n\nb"]
    assert expected["prod"] == ["d", "a\n\nb", "c\n\nc"]  # 0.45 > 0.36: prod and min disagree


def test_reward_model_scores_every_step_in_one_request_per_candidate():
    router, backends = scripted_router()
    prm = RewardModelScorer(model="embedded", aggregation="min")
    per_step = run_program(prm.score("q", ["a\n\nb", "c"], steps=[["a", "b"], ["c"]]), router)
    assert [len(r) for r in per_step] == [2, 1] and all(0 <= v <= 1 for r in per_step for v in r)
    (batch,) = backends["embedded"].reward_batches
    assert len(batch) == 2 and batch[0].messages[-1].content == "a<extra_0>b<extra_0>"
    assert batch[0].messages[0].content.startswith("Please reason step by step")


def test_logprob_scorer_reads_the_generation_and_asks_nothing():
    def respond(req, i):
        assert req.logprobs
        return __import__("archon.backends.types", fromlist=["Sample"]).Sample(
            f"s{i}", completion_tokens=2, logprobs=[TokenLogprob("s", -0.5 * (i + 1))])

    router, _, log = steps_router(respond)
    pipe = Pipeline({"p": ParticleSteering(particles=2, max_steps=2, scorer="self_logprob")}, {}, router=router)
    result = pipe.run("q")
    assert {k for _, k, _ in log} == {"step"}
    assert all(c.metadata["step_scores"][-1] <= 0 for c in result.candidates)


# -- import direction --------------------------------------------------------------------------------

LAYERS = {  # a module may import only from its own layer and the ones listed
    "archon/scoring": ("archon.backends.types", "archon.cost", "archon.errors", "archon.prompts", "archon.registry",
                       "archon.scoring"),
    "archon/techniques": ("archon.backends.types", "archon.cost", "archon.data", "archon.errors", "archon.prompts",
                          "archon.registry", "archon.scoring", "archon.techniques", "archon.verifiers.answers",
                          "archon.verifiers.sandbox"),
}
GRADERS = ("archon.benchmarks", "archon.verifiers.math_grader", "archon.search")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "archon":
            out += [f"archon.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append(node.module)
    return [m for m in out if m == "archon" or m.startswith("archon.")]


@pytest.mark.parametrize("layer", list(LAYERS))
def test_layers_import_downward_only(layer):
    allowed = LAYERS[layer]
    for path in sorted((REPO / layer).glob("*.py")):
        for module in _imports(path):
            assert module.startswith(allowed), f"{path.relative_to(REPO)} imports {module} (not below its layer)"
            assert not module.startswith(GRADERS), f"{path.relative_to(REPO)} imports the grader {module}"


def test_fresh_interpreter_imports_scoring_without_cycle_or_graders():
    modules = sorted(f"archon.scoring.{p.stem}" for p in (REPO / "archon/scoring").glob("*.py")
                     if p.stem != "__init__")
    modules += sorted(f"archon.techniques.{p.stem}" for p in (REPO / "archon/techniques").glob("*.py")
                      if p.stem != "__init__")
    code = ("import sys, importlib\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            f"bad = [m for m in sys.modules if m.startswith({GRADERS!r})]\n"
            "assert not bad, bad\nprint('ok')")
    for first in ("archon.scoring", "archon.scoring.base", "archon.techniques", "archon.verifiers.sandbox",
                  "archon.verifiers.scorers"):
        out = subprocess.run([sys.executable, "-c", f"import {first}\n" + code], capture_output=True, text=True,
                             cwd=REPO, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", (first, out.stderr[-2000:])


# -- the real embedded model as a token-probability PRM (slow; shape and definitions, not accuracy) --

@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda prm: BeamSearch(beam_width=2, expand=1, max_steps=2, max_tokens=12, scorer=prm),
    lambda prm: ParticleSteering(particles=2, max_steps=2, max_tokens=12, lam=1.0, scorer=prm),
], ids=["beam", "particles"])
def test_embedded_model_as_token_prm_in_step_searches(make, tmp_path):
    from archon.backends.cache import CallCache
    from archon.backends.router import ModelRouter

    # one call cache for the three runs: the generations and step scores they share are paid once
    router = ModelRouter(cache=CallCache(tmp_path / "calls.sqlite"))
    try:
        for how in ("last", "min", "prod"):
            tech = make({"type": "token_prm", "aggregation": how})
            result = Pipeline({"n": tech}, {}, router=router).run("What is 3 + 4?")
            assert result.error is None and result.candidates
            rewards = []
            for c in result.candidates:
                scores = c.metadata["step_scores"]
                assert len(scores) == c.metadata["steps"] >= 1  # a score for every step
                assert all(0.0 < s < 1.0 for s in scores)  # P(" Yes") / (P(" Yes") + P(" No"))
                assert c.scores["reward"] == pytest.approx(aggregate(scores, how))
                rewards.append(aggregate(scores, how))
            assert rewards == sorted(rewards, reverse=True), how  # ranked by the aggregation's definition
            calls = [call for t in result.trace for call in t.calls]
            assert any(call.n == 2 for call in calls)  # the (" Yes", " No") score requests are in the trace
            assert result.usage_by_node["n"]["prompt_tokens"] + result.usage_by_node["n"]["cache_hits"] > 0
    finally:
        router.close()
