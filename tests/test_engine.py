"""Engine control flow on a scripted backend: batching, budgets, validation, state."""

from __future__ import annotations

import pytest
from scripted import scripted_router

from archon import Budget, Pipeline
from archon.data import Query
from archon.errors import ConfigError
from archon.techniques import Critique, Fuse, Generate, Rank, Select, Verify, Vote
from archon.techniques.rank import parse_ranking
from archon.techniques.verify import parse_verdict


def six_node_pipeline(router, **kw) -> Pipeline:
    nodes = {
        "sample": Generate(samples=3),
        "critique": Critique(),
        "rank": Rank(top_k=2),
        "fuse": Fuse(samples=2),
        "verify": Verify(),
        "select": Select(method="first"),
    }
    inputs = {"critique": ["sample"], "rank": ["critique"], "fuse": ["rank"], "verify": ["fuse"],
              "select": ["verify"]}
    return Pipeline(nodes, inputs, router=router, **kw)


def test_one_backend_call_per_level_and_model_for_any_number_of_queries():
    router, backends = scripted_router()
    pipe = six_node_pipeline(router)
    results = pipe.run_batch([f"question {i}" for i in range(10)])
    assert len(results) == 10 and all(r.answer for r in results)
    # 5 levels make model calls (select makes none): one batch each, whatever the query count
    batches = backends["embedded"].batches
    assert len(batches) == 5
    assert [len(b) for b in batches] == [10, 30, 10, 10, 20]  # generate, critique x3, rank, fuse, verify x2
    assert router.calls[0].samples == 30


def test_independent_branches_share_the_level_batch_and_models_split():
    router, backends = scripted_router(models=("a", "b"))
    nodes = {"ga": Generate(model="a", samples=2), "gb": Generate(model="b", samples=1),
             "fuse": Fuse(model="a"), "out": Select(method="first")}
    pipe = Pipeline(nodes, {"fuse": ["ga", "gb"], "out": ["fuse"]}, router=router)
    pipe.run_batch(["x", "y", "z"])
    assert len(backends["a"].batches) == 2  # level 0 (ga for 3 queries), level 1 (fuse)
    assert len(backends["b"].batches) == 1
    assert len(backends["a"].batches[0]) == 3


def test_critiques_stay_with_their_candidate_after_ranking():
    def respond(req, i):
        text = req.messages[-1].content
        if "Ranking:" in text:
            return "[3] > [1] > [2]"
        if "Strengths" in text:
            # the critique quotes the candidate it is about
            body = text.split("Response:\n", 1)[1].split("\n\nWrite", 1)[0]
            return f"critique of <{body}>"
        return f"candidate-{i}"

    router, _ = scripted_router(respond)
    pipe = Pipeline({"s": Generate(samples=3), "c": Critique(), "r": Rank(top_k=3)},
                    {"c": ["s"], "r": ["c"]}, router=router)
    result = pipe.run("q")
    assert [c.text for c in result.candidates] == ["candidate-2", "candidate-0", "candidate-1"]
    for cand in result.candidates:
        assert cand.critique == f"critique of <{cand.text}>"


def test_rank_retries_are_bounded_and_fall_back_to_input_order():
    calls = []

    def respond(req, i):
        calls.append(req.seed)
        return "I cannot decide" if "Ranking:" in req.messages[-1].content else f"c{i}"

    router, _ = scripted_router(respond)
    pipe = Pipeline({"s": Generate(samples=3), "r": Rank(top_k=2, max_retries=2)}, {"r": ["s"]}, router=router)
    result = pipe.run("q")
    rank_trace = next(t for t in result.trace if t.node == "r")
    assert len(rank_trace.calls) == 3  # first try + 2 retries, no more
    assert len({c.prompt for c in rank_trace.calls}) == 1
    assert any("kept the input order" in n for n in rank_trace.notes)
    assert [c.text for c in result.candidates] == ["c0", "c1"]


def test_parse_ranking_and_verdict():
    assert parse_ranking("[2] > [1] > [3]", 3) == [1, 0, 2]
    assert parse_ranking("Response 3 is best, then 1", 3) == [2, 0]
    assert parse_ranking("[9] > [2]", 3) == [1]
    assert parse_ranking("nothing", 3) == []
    assert parse_verdict("reasoning... Verdict: no") is False
    assert parse_verdict("Verdict: yes. Actually, Verdict: no") is False
    assert parse_verdict("**Verdict:** yes") is True
    assert parse_verdict("no idea") is False
    assert parse_verdict("") is None


def test_verify_fallback_and_vote_and_select_are_deterministic():
    def respond(req, i):
        text = req.messages[-1].content
        if "Verdict" in text:
            return "Verdict: no"
        return ["\\boxed{7}", "\\boxed{3}", "\\boxed{7}", "\\boxed{3}", "\\boxed{3}"][i]

    router, _ = scripted_router(respond)
    for fallback, expected in (("all", 5), ("first", 1), ("none", 0)):
        pipe = Pipeline({"s": Generate(samples=5), "v": Verify(fallback=fallback)}, {"v": ["s"]}, router=router)
        assert len(pipe.run("q").candidates) == expected
    pipe = Pipeline({"s": Generate(samples=5), "vote": Vote(), "out": Select(method="first")},
                    {"vote": ["s"], "out": ["vote"]}, router=router)
    result = pipe.run("q")
    assert result.final_answer == "3"
    assert result.candidates[0].scores["votes"] == pytest.approx(0.6)


def test_budget_cuts_samples_and_skips_calls_and_says_so():
    router, _ = scripted_router()
    pipe = Pipeline({"s": Generate(samples=8, max_tokens=100), "f": Fuse(max_tokens=400)}, {"f": ["s"]},
                    router=router, budget=Budget(max_tokens=450))
    result = pipe.run("short question")
    sample_trace = next(t for t in result.trace if t.node == "s")
    assert sample_trace.calls[0].n < 8
    assert any("cut n from 8" in n for n in sample_trace.notes)
    fuse_trace = next(t for t in result.trace if t.node == "f")
    assert fuse_trace.calls == [] and any("skipped" in n for n in fuse_trace.notes)
    # fusion skipped: the samples pass through, so there is still an answer
    assert result.answer
    assert result.usage["total_tokens"] <= 450


def test_budget_on_calls():
    router, _ = scripted_router()
    pipe = six_node_pipeline(router, budget=Budget(max_calls=4))
    result = pipe.run("q")
    assert result.usage["calls"] <= 4


def test_gold_answer_cannot_reach_techniques():
    with pytest.raises(ValueError):
        Query(id="1", prompt="q", gold="42")  # type: ignore[call-arg]


def test_graph_validation_errors_name_the_node():
    router, _ = scripted_router()
    with pytest.raises(ConfigError, match="cycle"):
        Pipeline({"a": Fuse(), "b": Fuse(), "g": Generate()}, {"a": ["b", "g"], "b": ["a"]}, router=router)
    with pytest.raises(ConfigError, match=r"'f'.*needs candidates"):
        Pipeline({"g": Generate(), "f": Fuse()}, {}, router=router)
    with pytest.raises(ConfigError, match="not a node"):
        Pipeline({"g": Generate(), "f": Fuse()}, {"f": ["nope"]}, router=router)
    with pytest.raises(ConfigError, match="exactly one output"):
        Pipeline({"g": Generate(), "h": Generate()}, {}, router=router)
    with pytest.raises(ConfigError, match="takes no inputs"):
        Pipeline({"g": Generate(), "h": Generate()}, {"h": ["g"]}, router=router)


def test_technique_error_marks_the_query_not_the_batch():
    def respond(req, i):
        return "fine"

    class Boom(Select):
        name = "boom"

        def run(self, ctx, inputs):
            if ctx.query.id == "q1":
                raise RuntimeError("kaput")
            return (yield from super().run(ctx, inputs))

    router, _ = scripted_router(respond)
    pipe = Pipeline({"s": Generate(), "b": Boom()}, {"b": ["s"]}, router=router)
    ok, bad = pipe.run_batch(["a", "b"])
    assert ok.error is None and ok.answer == "fine"
    assert bad.error and "kaput" in bad.error and bad.answer == ""


def test_unseeded_pipeline_sends_no_seed_and_the_cache_keys_samples_by_index(tmp_cache, tmp_path):
    """``seed: null``: requests go out unseeded (samples differ run to run on a real engine);
    the call cache still keys them by sample index, so a rerun with the cache on reuses them."""
    from archon.config import load_yaml, parse_config
    from archon.engine.executor import _rng_for

    cfg = tmp_path / "c.yaml"
    cfg.write_text("defaults: {seed: null}\nnodes:\n  - {id: sample, technique: generate, samples: 4}\n"
                   "  - {id: vote, technique: vote}\n")
    data, root = load_yaml(cfg)
    config = parse_config(data, file=str(cfg), root=root)
    assert config.defaults.seed is None
    router, backends = scripted_router(cache=tmp_cache)
    pipe = Pipeline.from_config(config, router=router)
    first = pipe.run("What is 2+2?")
    (batch,) = backends["embedded"].batches
    assert [r.seed for r in batch] == [None] and batch[0].n == 4
    again = pipe.run("What is 2+2?")
    assert len(backends["embedded"].batches) == 1 and again.usage["cache_hits"] == 4
    assert again.answer == first.answer
    # the node's own random stream (resampling, ties) is unseeded too; seeded ones repeat
    assert _rng_for(None, "n", "q").random() != _rng_for(None, "n", "q").random()
    assert _rng_for(0, "n", "q").random() == _rng_for(0, "n", "q").random()
