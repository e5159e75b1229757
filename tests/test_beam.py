"""Conformance of ``beam_search`` (and DVTS) with huggingface/search-and-learn, on a scripted backend.

Every step's text names its place in the tree (``p<path>``: the root's samples are ``p0``,
``p1``, ...; sample i of beam ``pX`` is ``pXi``) and carries the reward the test fixes for that
path as ``r=<value>`` (read by ``scripted_steps.TextRewardScorer``). The expectations (which beams
are kept, which are set aside, what is returned) are worked out by hand from
search-and-learn's ``beam_search.py`` / ``diverse_verifier_tree_search.py`` for those rewards.
"""

from __future__ import annotations

import re

import pytest
from scripted_steps import is_step, steps_router

from archon import Pipeline
from archon.techniques.beam import BeamSearch, top_up
from archon.techniques.vote import Vote

REWARD = {"type": "scripted_steps:TextRewardScorer"}


def last_path(prefix: str) -> str:
    found = re.findall(r"p(\d+)", prefix)
    return found[-1] if found else ""


def tree_responder(rewards: dict[str, float], answers: dict[str, str], lookahead: dict[str, float] | None = None,
                   root_by_seed: bool = False):
    """Sample i of the beam ending in ``pX`` writes ``pXi r=<rewards[Xi]>`` (plus ``\\boxed{a}`` when the
    path has an answer). Greedy (temperature 0) requests are lookahead rollouts: ``pXg r=<lookahead[X]>``.
    ``root_by_seed``: the root's requests are DVTS subtrees; subtree j's sample i is ``p<j><i>``."""
    def respond(req, i):
        parent = last_path(req.assistant_prefix)
        if req.temperature == 0.0:
            return f"q{parent}g r={lookahead[parent]}"
        path = (str(req.seed - 1) if root_by_seed and not parent else parent) + str(i)
        text = f"p{path} r={rewards[path]}"
        return text + f" \\boxed{{{answers[path]}}}" if path in answers else text

    return respond


def step_batches(backend):
    """The sampled step rounds (not the greedy lookahead rollouts); the last has no stop string."""
    return [b for b in backend.batches if b[0].temperature != 0.0 and (is_step(b[0]) or not b[0].stop)]


def run(technique, router):
    return Pipeline({"n": technique}, {}, router=router).run_batch(["What is 2 + 2?"])[0]


def test_top_up_is_round_robin():
    a, b, c = object(), object(), object()
    assert [(x, n) for x, n in top_up([a, b], 4)] == [(a, 2), (b, 2)]
    assert [(x, n) for x, n in top_up([a, b, c], 4)] == [(a, 2), (b, 1), (c, 1)]  # (active * repeats)[:n]


# -- beam search ------------------------------------------------------------------------------------------

# N = 4 (keep 2 x expand 2), 3 iterations. Step 1: p1 finishes (set aside although its 0.8 beats p2's 0.5);
# p0 and p2 are kept and topped up to 4. Step 2: p01 finishes; p20, p21 beat p00. Step 3 writes to the end.
SET_ASIDE = {"0": 0.9, "1": 0.8, "2": 0.5, "3": 0.3,
             "00": 0.2, "01": 0.7, "20": 0.6, "21": 0.4,
             "200": 0.3, "201": 0.35, "210": 0.1, "211": 0.45}
SET_ASIDE_ANSWERS = {"1": "1", "01": "2", "200": "3", "201": "3", "210": "4", "211": "4"}


@pytest.mark.parametrize("sort_completed", [False, True])
def test_beam_sets_finished_beams_aside_and_tops_up(sort_completed):
    router, backends, _ = steps_router(tree_responder(SET_ASIDE, SET_ASIDE_ANSWERS))
    result = run(BeamSearch(beam_width=2, expand=2, max_steps=3, scorer=REWARD, sort_completed=sort_completed),
                 router)
    steps = step_batches(backends["embedded"])
    assert [[(last_path(r.assistant_prefix), r.n) for r in b] for b in steps] == [
        [("", 4)],                 # N samples from the root
        [("0", 2), ("2", 2)],      # p1 set aside; the best 2 active beams, each twice: 4 again
        [("20", 2), ("21", 2)],    # p01 set aside; p20 and p21 beat p00
    ]
    assert [r.stop for r in steps[0]] == [("\n\n",)] and all(r.stop == () for r in steps[2])  # last: to the end
    # completed in order: p1, p01, p200, p201, p210, p211; the first N (or the best N) come back, best first
    returned = ["1", "01", "201", "200"] if not sort_completed else ["1", "01", "211", "201"]
    assert [last_path(c.text) for c in result.candidates] == returned
    assert [c.scores["reward"] for c in result.candidates] == [SET_ASIDE[p] for p in returned]
    assert [c.metadata["completed_at"] for c in result.candidates] == [1, 2, 3, 3]
    assert result.final_answer == "1"


# beam_width 3 x expand 2: after step 1 the top 3 of the 6 children differ with the aggregation
AGG = {"0": 0.9, "1": 0.55, "2": 0.3, "3": 0.1, "4": 0.05, "5": 0.02,
       "00": 0.99, "01": 0.5, "10": 0.8, "11": 0.52, "20": 0.98, "21": 0.04}


@pytest.mark.parametrize(("how", "kept"), [
    ("last", {"00", "20", "10"}),   # 0.99, 0.98, 0.8
    ("min", {"00", "10", "11"}),    # min: 0.9, 0.55, 0.52 (p20 falls to 0.3)
    ("prod", {"00", "01", "10"}),   # products: 0.891, 0.45, 0.44
])
def test_beam_aggregation_decides_which_beams_are_kept(how, kept):
    rewards = {**AGG, **{p + s: 0.5 for p in AGG if len(p) == 2 for s in "01"}}
    answers = {p: "9" for p in rewards if len(p) == 3}
    router, backends, _ = steps_router(tree_responder(rewards, answers))
    run(BeamSearch(beam_width=3, expand=2, max_steps=3, scorer=REWARD, aggregate=how), router)
    steps = step_batches(backends["embedded"])
    assert {last_path(r.assistant_prefix) for r in steps[2]} == kept
    assert [r.n for r in steps[2]] == [2, 2, 2]


def test_lookahead_scores_greedy_rollouts_then_drops_them():
    # without lookahead p0 (0.9) beats p1 (0.5); one greedy step more says 0.1 vs 0.8
    rewards = {"0": 0.9, "1": 0.5, "00": 0.4, "01": 0.3, "10": 0.6, "11": 0.7}
    answers = {"00": "0", "01": "0", "10": "1", "11": "1"}
    for lookahead, winner in ((0, "0"), (1, "1")):
        router, backends, _ = steps_router(tree_responder(rewards, answers, lookahead={"0": 0.1, "1": 0.8}))
        run(BeamSearch(beam_width=1, expand=2, max_steps=2, scorer=REWARD, lookahead=lookahead), router)
        batches = backends["embedded"].batches
        greedy = [r for b in batches for r in b if r.temperature == 0.0]
        assert len(greedy) == 2 * lookahead  # both expansions rolled out at step 1; never at the last step
        second = step_batches(backends["embedded"])[1]
        assert [r.assistant_prefix for r in second] == [f"p{winner} r={rewards[winner]}\n\n"]  # rollout dropped


# -- DVTS -------------------------------------------------------------------------------------------------

# 2 subtrees x expand 2 (N = 4), 3 iterations. Subtree 0 moves 00 -> 001 (not finished) -> 0011;
# subtree 1 moves to 11 and then to 110, which is finished: it stops with siblings 110, 111 (unfinished).
DVTS = {"00": 0.9, "01": 0.4, "10": 0.3, "11": 0.6,
        "000": 0.5, "001": 0.8, "110": 0.7, "111": 0.2,
        "0010": 0.6, "0011": 0.65}
DVTS_ANSWERS = {"000": "A", "110": "B", "0010": "A", "0011": "A"}


def test_dvts_returns_all_n_completions():
    router, backends, _ = steps_router(tree_responder(DVTS, DVTS_ANSWERS, root_by_seed=True))
    result = run(BeamSearch(beam_width=2, expand=2, diverse=True, max_steps=3, scorer=REWARD), router)
    steps = step_batches(backends["embedded"])
    assert [(last_path(r.assistant_prefix), r.n, r.seed) for r in steps[0]] == [("", 2, 1), ("", 2, 2)]
    assert [(last_path(r.assistant_prefix), r.n) for r in steps[1]] == [("00", 2), ("11", 2)]
    assert [(last_path(r.assistant_prefix), r.n) for r in steps[2]] == [("001", 2)]  # subtree 1 has stopped
    assert steps[2][0].stop == ()  # the last iteration writes to the end
    # all N = 4: each subtree's siblings from its last expansion, best first
    assert [last_path(c.text) for c in result.candidates] == ["110", "0011", "0010", "111"]
    assert [c.scores["reward"] for c in result.candidates] == [0.7, 0.65, 0.6, 0.2]
    assert [c.metadata["subtree"] for c in result.candidates] == [1, 0, 0, 1]
    assert result.final_answer == "B"


def test_dvts_weighted_vote_over_all_completions():
    """search-and-learn's weighted best-of-N over DVTS's N completions: A has 0.6 + 0.65 > B's 0.7."""
    router, _, _ = steps_router(tree_responder(DVTS, DVTS_ANSWERS, root_by_seed=True))
    pipe = Pipeline({"dvts": BeamSearch(beam_width=2, expand=2, diverse=True, max_steps=3, scorer=REWARD),
                     "vote": Vote(method="weighted", weight="reward")}, {"vote": ["dvts"]}, router=router)
    result = pipe.run("What is 2 + 2?")
    assert result.final_answer == "A"
    assert result.candidates[0].scores["votes"] == pytest.approx(1.25 / (1.25 + 0.7 + 0.2))
