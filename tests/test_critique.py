"""Critique: one call per candidate, or Archon's comparative critic (one call for all).

Replies are chosen by round (``scripted.drive``), never by prompt wording."""

from __future__ import annotations

from scripted import drive

from archon.data import Candidate
from archon.techniques.critique import Critique, split_critiques

CANDS = [Candidate(text=t) for t in ("four", "five", "six")]
GOOD = ("[1]\nStrengths:\n- right\nWeaknesses:\n- terse\n\n"
        "[2]\nStrengths:\n- clear\nWeaknesses:\n- wrong, see [1]\n\n"
        "[3]\nStrengths:\n- none much\nWeaknesses:\n- wrong")


def test_comparative_is_one_call_and_each_critique_stays_with_its_candidate():
    out, rounds, _ = drive(Critique(mode="comparative"), CANDS, lambda r, i, req: GOOD)
    assert [len(r) for r in rounds] == [1]
    prompt = rounds[0][0].messages[-1].content
    assert all(f"[{i}] {c.text}" in prompt for i, c in enumerate(CANDS, 1))
    assert [c.text for c in out] == ["four", "five", "six"]
    assert out[0].critique == "Strengths:\n- right\nWeaknesses:\n- terse"
    assert out[1].critique.endswith("wrong, see [1]")  # a reference to another response does not split it
    assert out[2].critique == "Strengths:\n- none much\nWeaknesses:\n- wrong"


def test_an_unusable_reply_is_asked_again_then_given_up():
    replies = ["[1] Strengths: ok. Weaknesses: none.", GOOD]
    out, rounds, notes = drive(Critique(mode="comparative"), CANDS, lambda r, i, req: replies[r])
    assert len(rounds) == 2 and rounds[1][0].seed != rounds[0][0].seed and out[2].critique
    out, rounds, notes = drive(Critique(mode="comparative", max_retries=1), CANDS, lambda r, i, req: "meh")
    assert len(rounds) == 2 and all(c.critique is None for c in out)
    assert any("without critiques" in n for n in notes)


def test_split_critiques_rules():
    assert split_critiques("[1] Strengths: a. Weaknesses: b.", 2) is None  # [2] missing
    assert split_critiques("[1] Strengths: a only.\n[2] Strengths: c. Weaknesses: d.", 2) is None
    assert split_critiques("[1] Strengths: a. Weaknesses: b.", 1) == ["Strengths: a. Weaknesses: b."]


def test_each_mode_is_one_call_per_candidate():
    out, rounds, _ = drive(Critique(), CANDS, lambda r, i, req: f"Strengths: s{i}. Weaknesses: w{i}.")
    assert [len(r) for r in rounds] == [3] and [c.critique for c in out][1] == "Strengths: s1. Weaknesses: w1."
