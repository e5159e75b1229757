"""DeepSeek-GRM conformance (Liu et al. 2025): k sampled judgments, pointwise 1-10 per
response, totals summed across the judgments; meta-RM guided voting keeps the k_meta best.

Judgments are answered by sample index (the scripted backend), never by prompt wording;
expected totals are computed here from the paper's formula S_i = sum_j S_ij.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import pytest
from scripted import scripted_router

from archon.scoring import GenerativeRewardScorer, LLMJudgeScorer, ScoreContext, Scorer, make_scorer, run_program
from archon.scoring.grm_vote import Judgment, keep_by_meta, vote

# k = 4 judgments of three responses; the third has no complete score list
LISTS = [(8, 3, 5), (6, 5, 5), None, (9, 2, 6)]


def reply(lists):
    def respond(req, i):
        s = lists[i % len(lists)]
        body = f"J{i}. Principles: exactness. Critique: ..."
        return body + (" \\boxed{" + ", ".join(map(str, s)) + "}" if s else " I cannot decide.")
    return respond


def paper_sum(lists, keep=None):
    kept = [s for j, s in enumerate(lists) if s is not None and (keep is None or j in keep)]
    return [float(sum(s[r] for s in kept)) for r in range(len(kept[0]))]


def test_k_judgments_of_all_responses_summed():
    router, backends = scripted_router(reply(LISTS))
    values = run_program(GenerativeRewardScorer(samples=4).score("q", ["a", "b", "c"]), router)
    assert values == paper_sum(LISTS) == [23.0, 10.0, 16.0]
    (batch,) = backends["embedded"].batches
    assert len(batch) == 1 and batch[0].n == 4  # every response in one prompt, k samples


def test_groups_are_put_on_one_scale():
    # group 1 (a, b): four readable judgments; group 2 (c, d): two readable of four
    g1 = [(7, 2)] * 4
    g2 = [(7, 4), None, (7, 4), None]

    def respond(req, i):
        lists = g1 if "[Response 2]\nb" in req.messages[-1].content else g2
        s = lists[i]
        return "\\boxed{" + ", ".join(map(str, s)) + "}" if s else "no scores"

    router, _ = scripted_router(respond)
    notes: list[str] = []
    values = run_program(GenerativeRewardScorer(samples=4, group_size=2).score(
        "q", ["a", "b", "c", "d"], ScoreContext(note=notes.append)), router)
    # the paper's sum for group 1; group 2's sum scaled to the same number of judgments
    assert values[:2] == paper_sum(g1) == [28.0, 8.0]
    assert values[2:] == [x * 4 / 2 for x in paper_sum(g2)] == [28.0, 16.0]
    assert values[0] == values[2]  # equally rated responses in different groups tie
    assert any("2 of 4" in n for n in notes)


class TableMeta(Scorer):
    """A meta-RM for the test: the meta reward of judgment J<i> is META[i]."""

    key: ClassVar[str] = "meta"
    META: ClassVar[tuple[float, ...]] = (0.1, 0.9, 0.5, 0.7)
    type: str = "table_meta"

    def models(self, default):
        return []

    def score_outcomes(self, question, candidates, ctx):
        return [self.META[int(re.search(r"J(\d)", c).group(1))] for c in candidates]
        yield []


def test_meta_rm_keeps_the_k_meta_best_judgments():
    router, _ = scripted_router(reply(LISTS))
    scorer = make_scorer({"type": "grm", "samples": 4, "k_meta": 2, "meta_rm": {"type": "test_grm:TableMeta"}})
    values = run_program(scorer.score("q", ["a", "b", "c"]), router)
    readable = [j for j, s in enumerate(LISTS) if s is not None]
    best = sorted(readable, key=lambda j: -TableMeta.META[j])[:2]  # J1 (0.9) and J3 (0.7)
    assert values == paper_sum(LISTS, keep=set(best)) == [15.0, 7.0, 11.0]


def test_any_scorer_can_be_the_meta_rm():
    scorer = GenerativeRewardScorer(meta_rm={"type": "judge", "model": "big"})
    assert isinstance(scorer.meta_rm, LLMJudgeScorer) and scorer.models("small") == ["small", "big"]
    assert scorer.kept_count() == 2 and scorer.model_dump()["meta_rm"]["type"] == "judge"


def test_vote_functions():
    js = [Judgment("a", (1.0, 2.0)), Judgment("b", None), Judgment("c", (3.0, 1.0))]
    assert keep_by_meta(js, None, None) == [0, 2]
    assert keep_by_meta(js, [0.2, 0.9, float("nan")], 1) == [0]
    assert vote(js, 2, 2) == [4.0, 3.0] and vote(js, 2, 4) == [8.0, 6.0]
    assert vote(js, 2, 2, aggregate="mean") == [2.0, 1.5] and vote(js, 2, 2, aggregate="majority") == [0.5, 0.5]
    assert all(math.isnan(v) for v in vote([Judgment("x", None)], 2, 2))


@pytest.mark.parametrize("aggregate", ["mean", "majority"])
def test_other_aggregates_still_available(aggregate):
    router, _ = scripted_router(reply(LISTS))
    values = run_program(GenerativeRewardScorer(samples=4, aggregate=aggregate).score("q", ["a", "b", "c"]), router)
    kept = [s for s in LISTS if s is not None]
    if aggregate == "mean":
        assert values == pytest.approx([sum(s[r] for s in kept) / 3 for r in range(3)])
    else:
        assert values == pytest.approx([sum(s[r] == max(s) for s in kept) / 3 for r in range(3)])


@pytest.mark.slow
def test_meta_rm_guided_voting_on_the_embedded_model(embedded_router):
    """The whole flow on a real engine: k judgments, an LLM judge as meta-RM, k_meta kept."""
    notes: list[str] = []
    scorer = GenerativeRewardScorer(samples=2, max_tokens=24, k_meta=1,
                                    meta_rm={"type": "judge", "max_tokens": 8})
    values = run_program(scorer.score("What is 2 + 3?", ["5", "6"],
                                      ScoreContext(model="embedded", max_tokens=24, note=notes.append)),
                         embedded_router)
    assert len(values) == 2  # numbers, or nan with a note when the tiny model writes no score list
    assert all(not math.isnan(v) for v in values) or notes
