"""score / best_of_n, REBEL rerank, unit tests (executed and natural-language), refine:
the exact calls on a scripted backend, parsing, weights, early stopping, budgets, real
sandbox execution of real programs; and a small end-to-end run of each on the embedded
model (``slow``) that checks shapes, not correctness."""

from __future__ import annotations

import math
import re
import time

import pytest
from scripted import scripted_router

from archon import Budget, Pipeline
from archon.data import Query
from archon.techniques import TECHNIQUES, BestOfN, Generate, NLUnitTests, Refine, Rerank, Score, Select, UnitTests
from archon.techniques.rerank import Criterion, combine, parse_criteria_scores, parse_proposed_criteria
from archon.techniques.unit_tests import (
    extract_code,
    load_task_tests,
    parse_nl_tests,
    parse_test_verdicts,
    parse_tests,
    run_program_tests,
)


def user_text(req) -> str:
    return req.messages[-1].content


def candidate_of(text: str, head: str = "Response:\n") -> str:
    return text.rsplit(head, 1)[1].split("\n\n", 1)[0].strip()


def trace(result, node):
    return next(t for t in result.trace if t.node == node)


def test_all_registered():
    for name in ("score", "best_of_n", "rerank", "unit_tests", "nl_unit_tests", "refine"):
        assert name in TECHNIQUES
        for field in TECHNIQUES[name].Params.model_fields.values():
            assert field.description or field.annotation is not None


# -- score / best_of_n ----------------------------------------------------------------------

JUDGED = {"ans A": 4, "ans B": 9, "ans C": 6}


def judge_respond(req, i):
    text = user_text(req)
    if "impartial judge" in text:
        return f"Reasoning. Score: {JUDGED[candidate_of(text)]}"
    return ["ans A", "ans B", "ans C"][i]


def test_best_of_n_keeps_top_k_by_judge_in_one_batch_per_level():
    router, backends = scripted_router(judge_respond)
    pipe = Pipeline({"g": Generate(samples=3), "b": BestOfN(top_k=2, scorer={"type": "judge"})}, {"b": ["g"]},
                    router=router)
    results = pipe.run_batch(["q1", "q2"])
    for r in results:
        assert [c.text for c in r.candidates] == ["ans B", "ans C"]
        assert [c.scores["judge"] for c in r.candidates] == [9.0, 6.0]
    assert [len(b) for b in backends["embedded"].batches] == [2, 6]


def test_score_keeps_order_and_feeds_weighted_vote_and_select():
    router, _ = scripted_router(judge_respond)
    pipe = Pipeline({"g": Generate(samples=3), "s": Score(key="quality"), "out": Select(score="quality")},
                    {"s": ["g"], "out": ["s"]}, router=router)
    result = pipe.run("q")
    s = trace(result, "s")
    assert [c.text for c in s.outputs] == ["ans A", "ans B", "ans C"]
    assert [c.scores["quality"] for c in s.outputs] == [4.0, 9.0, 6.0]
    assert result.answer == "ans B"


def test_best_of_n_with_skipped_scoring_keeps_input_order_and_says_so():
    router, _ = scripted_router(judge_respond)
    pipe = Pipeline({"g": Generate(samples=3, max_tokens=20), "b": BestOfN(top_k=1, max_tokens=500)}, {"b": ["g"]},
                    router=router, budget=Budget(max_tokens=300))
    result = pipe.run("q")
    notes = trace(result, "b").notes
    assert result.answer == "ans A"
    assert any("skipped" in n for n in notes) and any("kept the input order" in n for n in notes)


# -- rerank, preset answer_quality (REBEL itself: tests/test_rerank.py) ------------------

def test_parse_criteria_and_combine():
    text = "Reasoning...\nRelevance: 8\n**Correctness**: 3/10\ncompleteness = 5\nClarity: 11"
    parsed = parse_criteria_scores(text, ["relevance", "correctness", "completeness", "clarity"])
    assert parsed == {"relevance": 8, "correctness": 3, "completeness": 5}  # 11 is out of range
    crit = [Criterion(name="relevance", weight=1), Criterion(name="correctness", weight=3)]
    assert combine({"relevance": 8, "correctness": 4}, crit) == pytest.approx((8 + 12) / 4 / 10)
    assert combine({"relevance": 8}, crit) == pytest.approx(0.8)  # renormalised over what was parsed
    assert math.isnan(combine({}, crit))
    proposed = parse_proposed_criteria("- Relevance (3): on topic\n2. numerical accuracy (5): exact\nnoise", 5)
    assert [(c.name, c.weight) for c in proposed] == [("relevance", 3.0), ("numerical accuracy", 5.0)]


# candidate -> criterion scores: "tidy" is clear but wrong, "right" is correct but terse
CRITERIA_SCORES = {"tidy": {"relevance": 8, "correctness": 2, "completeness": 6, "clarity": 10},
                   "right": {"relevance": 8, "correctness": 10, "completeness": 6, "clarity": 2}}


def rebel_respond(req, i):
    text = user_text(req)
    if "several criteria" in text:
        cand = candidate_of(text)
        return "Step by step...\n" + "\n".join(f"{k}: {v}" for k, v in CRITERIA_SCORES[cand].items())
    if "which criteria matter" in text:
        return "- relevance (1): on topic\n- clarity (4): readable\n"
    return ["tidy", "right"][i]


def test_rerank_weights_are_honoured():
    router, backends = scripted_router(rebel_respond)
    pipe = Pipeline({"g": Generate(samples=2), "r": Rerank(preset="answer_quality", top_k=2)}, {"r": ["g"]},
                    router=router)
    result = pipe.run("q")
    assert [c.text for c in result.candidates] == ["right", "tidy"]  # correctness weighs 2 by default
    right = result.candidates[0].scores
    assert right["criteria"] == pytest.approx((8 * 1 + 10 * 2 + 6 * 1 + 2 * 0.5) / 4.5 / 10)
    assert right["criteria.correctness"] == 10
    assert len(backends["embedded"].batches[1]) == 2  # one scoring call per candidate, one batch
    flipped = [Criterion(name="correctness", weight=1), Criterion(name="clarity", weight=5)]
    pipe = Pipeline({"g": Generate(samples=2), "r": Rerank(preset="answer_quality", top_k=1, criteria=flipped)},
                    {"r": ["g"]}, router=router)
    result = pipe.run("q")
    assert [c.text for c in result.candidates] == ["tidy"]
    assert result.candidates[0].scores["criteria"] == pytest.approx((2 + 50) / 6 / 10)
    assert "criteria.relevance" not in result.candidates[0].scores


def test_rerank_two_turn_uses_the_proposed_criteria():
    router, backends = scripted_router(rebel_respond)
    pipe = Pipeline({"g": Generate(samples=2), "r": Rerank(preset="answer_quality", mode="two_turn", top_k=None)},
                    {"r": ["g"]}, router=router)
    result = pipe.run("q")
    assert [c.text for c in result.candidates] == ["tidy", "right"]  # clarity (4) now dominates
    batches = backends["embedded"].batches
    assert [len(b) for b in batches] == [1, 1, 2]
    scoring_prompt = user_text(batches[2][0])
    assert "- clarity: readable" in scoring_prompt and "correctness" not in scoring_prompt
    assert any("criteria for this query: relevance (1), clarity (4)" in n for n in trace(result, "r").notes)


def test_rerank_unparsable_reply_is_ranked_last_with_a_note():
    def respond(req, i):
        text = user_text(req)
        if "several criteria" in text:
            return "I like it" if candidate_of(text) == "tidy" else "correctness: 9"
        return ["tidy", "right"][i]

    router, _ = scripted_router(respond)
    result = Pipeline({"g": Generate(samples=2), "r": Rerank(preset="answer_quality", top_k=None)}, {"r": ["g"]},
                      router=router).run("q")
    assert [c.text for c in result.candidates] == ["right", "tidy"]
    assert "criteria" not in result.candidates[1].scores
    assert any("candidate 1: no score for" in n for n in trace(result, "r").notes)


# -- unit tests that run --------------------------------------------------------------------

CORRECT = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
BUGGY = "```python\ndef add(a, b):\n    return a - b\n```\nThis works for all inputs."
LOOPS = "```python\ndef add(a, b):\n    while True:\n        pass\n```"
LLM_TESTS = "```python\nassert add(1, 2) == 3\nassert add(0, 0) == 0\nassert add(-1, 1) == 0\n```"


def test_extract_code_and_parse_tests():
    assert extract_code(CORRECT) == "def add(a, b):\n    return a + b"
    assert extract_code("```\nprint(1)\n```\n```python\ndef f():\n    pass\n```\n```\nf()\n```") == \
        "def f():\n    pass"
    assert extract_code("def f(): return 1") == "def f(): return 1"
    assert extract_code("Just prose, no code.") == ""
    assert parse_tests(LLM_TESTS) == ["assert add(1, 2) == 3", "assert add(0, 0) == 0", "assert add(-1, 1) == 0"]
    assert parse_tests("```python\nassert f(1) == 2\nassert f(2) ==\nassert f(1) == 2\n```") == ["assert f(1) == 2"]
    assert parse_tests("assert g([1,\n  2]) == 3") == ["assert g([1,\n  2]) == 3"]
    assert load_task_tests("def check():\n    pass") == ["def check():\n    pass"]
    assert load_task_tests(["assert x", ""]) == ["assert x"]


def test_run_program_tests_in_the_real_sandbox():
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4"]
    assert run_program_tests("def add(a, b):\n    return a + b", tests) == [True, True]
    assert run_program_tests("def add(a, b):\n    return a * b", tests) == [False, True]
    start = time.monotonic()
    assert run_program_tests("while True:\n    pass", tests, timeout_s=0.5) == [False, False]
    assert run_program_tests("import sys\nsys.exit(0)", tests, timeout_s=0.5) == [False, False]
    assert time.monotonic() - start < 5


def code_respond(req, i):
    if "unit tests for a Python solution" in user_text(req):
        return LLM_TESTS
    return [BUGGY, CORRECT, LOOPS][i]


def test_unit_tests_rank_by_tests_passed_with_llm_written_tests():
    router, backends = scripted_router(code_respond)
    pipe = Pipeline({"g": Generate(samples=3), "t": UnitTests(timeout_s=0.5)}, {"t": ["g"]}, router=router)
    start = time.monotonic()
    result = pipe.run("Write add(a, b).")
    elapsed = time.monotonic() - start
    assert [c.text for c in result.candidates] == [CORRECT, BUGGY, LOOPS]
    assert [c.scores["tests_passed"] for c in result.candidates] == [1.0, pytest.approx(1 / 3), 0.0]
    assert result.candidates[1].metadata["tests_passed"] == [False, True, False]
    batches = backends["embedded"].batches
    assert [len(b) for b in batches] == [1, 1]  # samples, then one test-writing call
    assert "Write add(a, b)." in user_text(batches[1][0])
    notes = trace(result, "t").notes
    assert "3 tests written by the LLM" in notes and "tests passed: 1/3, 3/3, 0/3" in notes
    assert elapsed < 10  # the looping program was killed by the per-test timeout


def test_unit_tests_from_task_metadata_make_no_model_call():
    router, backends = scripted_router(code_respond)
    pipe = Pipeline({"g": Generate(samples=3), "t": UnitTests(timeout_s=0.5, top_k=1)}, {"t": ["g"]}, router=router)
    query = Query(id="q", prompt="Write add.", metadata={"tests": ["assert add(2, 3) == 5"]})
    result = pipe.run(query)
    assert [c.text for c in result.candidates] == [CORRECT]
    assert [len(b) for b in backends["embedded"].batches] == [1]
    assert "1 tests from the task" in trace(result, "t").notes


def test_unit_tests_without_tests_keep_order():
    router, _ = scripted_router(lambda req, i: "No tests, sorry." if "unit tests" in user_text(req) else f"c{i}")
    result = Pipeline({"g": Generate(samples=2), "t": UnitTests()}, {"t": ["g"]}, router=router).run("q")
    assert [c.text for c in result.candidates] == ["c0", "c1"]
    assert any("no tests to run" in n for n in trace(result, "t").notes)


# -- natural-language unit tests (Archon) -----------------------------------------------------

def nl_respond(req, i):
    text = user_text(req)
    if "short, checkable statements" in text:
        return "1. States the answer 42.\n2. Shows the addition.\n3. Is one sentence."
    if "against each unit test" in text:
        cand = candidate_of(text)
        return {"good": "Test 1: pass\nTest 2: pass\nTest 3: fail",
                "bad": "Test 1: fail\nTest 2: pass\nTest 3: fail",
                "mute": "hmm"}[cand]
    return ["bad", "good", "mute"][i]


def test_nl_unit_tests_are_llm_judged_and_named_apart():
    router, backends = scripted_router(nl_respond)
    pipe = Pipeline({"g": Generate(samples=3), "t": NLUnitTests(top_k=2)}, {"t": ["g"]}, router=router)
    result = pipe.run("What is 40 + 2?")
    assert [c.text for c in result.candidates] == ["good", "bad"]
    assert [c.scores["nl_tests_passed"] for c in result.candidates] == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert "tests_passed" not in result.candidates[0].scores  # never confused with executed tests
    assert [len(b) for b in backends["embedded"].batches] == [1, 1, 3]
    judge_prompt = user_text(backends["embedded"].batches[2][0])
    assert "1. States the answer 42.\n2. Shows the addition." in judge_prompt
    assert any("3 of 3 tests without a verdict" in n for n in trace(result, "t").notes)
    assert parse_nl_tests("- a test\n* another test\n3) third one", 2) == ["a test", "another test"]
    assert parse_test_verdicts("Test 1: **PASS**\nTest #2 - failed\nTest 9: pass", 2) == {0: True, 1: False}


# -- refine ---------------------------------------------------------------------------------

def refine_respond(req, i):
    text = user_text(req)
    if "You are reviewing" in text:
        cand = text.rsplit("Proposed response:\n", 1)[1]
        return "All good. Verdict: yes" if "v2" in cand or "fine" in cand else "Wrong sum. Verdict: no"
    if "Improve a response" in text:
        cur = text.rsplit("Current response:\n", 1)[1].split("\n\nFeedback:", 1)[0]
        return re.sub(r"v(\d)", lambda m: f"v{int(m.group(1)) + 1}", cur) if "v" in cur else cur + " v1"
    return ["draft", "fine"][i]


def test_refine_stops_early_when_the_verifier_accepts():
    router, backends = scripted_router(refine_respond)
    pipe = Pipeline({"g": Generate(samples=2), "r": Refine(max_rounds=5)}, {"r": ["g"]}, router=router)
    result = pipe.run("q")
    draft, fine = result.candidates
    assert draft.text == "draft v2" and draft.scores == {"refine_rounds": 2.0, "verified": 1.0}
    assert draft.parents and draft.critique == "All good. Verdict: yes"
    assert fine.text == "fine" and fine.scores["refine_rounds"] == 0.0 and fine.scores["verified"] == 1.0
    sizes = [len(b) for b in backends["embedded"].batches]
    # sample; feedback x2; revise draft; feedback; revise; feedback (accepted) -> stop, far below 5 rounds
    assert sizes == [1, 2, 1, 1, 1, 1]


def test_refine_respects_max_rounds_and_verify_final():
    never = lambda req, i: "Verdict: no" if "You are reviewing" in user_text(req) else (  # noqa: E731
        user_text(req).rsplit("Current response:\n", 1)[1].split("\n\n", 1)[0] + "+" if "Improve" in user_text(req)
        else "x")
    router, backends = scripted_router(never)
    result = Pipeline({"g": Generate(), "r": Refine(max_rounds=2)}, {"r": ["g"]}, router=router).run("q")
    assert result.answer == "x++" and result.candidates[0].scores == {"refine_rounds": 2.0, "verified": 0.0}
    assert len(backends["embedded"].batches) == 1 + 2 * 2 + 1  # sample, 2 x (feedback, revise), final verify
    router, backends = scripted_router(never)
    result = Pipeline({"g": Generate(), "r": Refine(max_rounds=2, verify_final=False)}, {"r": ["g"]},
                      router=router).run("q")
    assert result.candidates[0].scores == {"refine_rounds": 2.0} and result.candidates[0].critique is None
    assert len(backends["embedded"].batches) == 1 + 2 * 2


def test_refine_under_a_budget_keeps_the_current_version():
    router, _ = scripted_router(refine_respond)
    pipe = Pipeline({"g": Generate(max_tokens=10), "r": Refine(max_rounds=3, max_tokens=400)}, {"r": ["g"]},
                    router=router, budget=Budget(max_tokens=600))
    result = pipe.run("q")
    assert result.answer.startswith("draft")
    assert any("skipped (budget)" in n for n in trace(result, "r").notes)


# -- end to end on the embedded model (shape, not correctness) --------------------------------

@pytest.mark.slow
def test_each_technique_runs_on_the_embedded_model(embedded_router):
    """Every technique reads the same two samples (one level, so one pass over the model);
    tiny token limits: this checks shapes, usage and notes, never answer quality."""
    nodes = {
        "g": Generate(samples=2, max_tokens=16),
        "judge": BestOfN(top_k=1, max_tokens=8, scorer={"type": "judge"}),
        "rerank": Rerank(top_k=1, max_tokens=12),
        "nl": NLUnitTests(num_tests=2, max_tokens=12),
        "tests": UnitTests(timeout_s=2),  # the task's tests: the real samples run in the real sandbox
        "refine": Refine(max_rounds=1, verify_final=False, max_tokens=8),
        "out": Select(),
    }
    branches = ["judge", "rerank", "nl", "tests", "refine"]
    inputs = {**{b: ["g"] for b in branches}, "out": branches}
    pipe = Pipeline(nodes, inputs, router=embedded_router)
    query = Query(id="add", prompt="Write a Python function add(a, b) that returns a + b.",
                  metadata={"tests": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]})
    result = pipe.run(query)
    assert result.error is None, result.error
    assert result.answer and result.usage["calls"] > 0
    for node in branches:
        t = trace(result, node)
        assert t.outputs, node
        assert node == "tests" or (t.calls and t.usage["total_tokens"] > 0), node
        assert t.notes or node in ("judge", "rerank"), node
    assert len(trace(result, "judge").outputs) == 1 and len(trace(result, "refine").outputs) == 2
    assert all("tests_passed" in c.scores for c in trace(result, "tests").outputs)
