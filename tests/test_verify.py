"""Verify: one call with a yes/no verdict, or Archon's two calls (reasoning, then a
[Correct]/[Incorrect] verdict). Replies are chosen by round and position (``scripted.drive``)."""

from __future__ import annotations

from scripted import drive

from archon.data import Candidate
from archon.techniques.verify import ARCHON_REASONING_SYSTEM, Verify, parse_bracket_verdict

CANDS = [Candidate(text=t) for t in ("4", "5", "6")]


def test_reason_then_verdict_makes_two_calls_with_the_reasoning():
    verdicts = ["It adds up. [Correct]", "Off by one. [Incorrect]", "Hmm [Correct] or [Incorrect]"]
    retry = ["Clearly wrong. [Incorrect]"]

    def reply(rnd, i, req):
        if rnd == 0:
            return f"reasoning {i}"
        return verdicts[i] if rnd == 1 else retry[i]

    out, rounds, _ = drive(Verify(mode="reason_then_verdict", system="judge system"), CANDS, reply)
    assert [len(r) for r in rounds] == [3, 3, 1]  # reasoning x3, verdict x3, one re-ask (both verdicts named)
    reasoning = rounds[0][1]
    assert reasoning.messages[0].content == ARCHON_REASONING_SYSTEM and "5" in reasoning.messages[-1].content
    verdict = rounds[1][1]
    assert verdict.messages[0].content == "judge system"
    assert "Reasoning: reasoning 1" in verdict.messages[-1].content and "[Correct]" in verdict.messages[-1].content
    assert [c.text for c in out] == ["4"] and out[0].scores["verified"] == 1.0


def test_none_accepted_keeps_all_as_archon():
    out, _, notes = drive(Verify(mode="reason_then_verdict", max_retries=0), CANDS,
                          lambda r, i, req: "why" if r == 0 else "no verdict here")
    assert [c.text for c in out] == ["4", "5", "6"] and all(c.scores["verified"] == 0.0 for c in out)
    assert any("fallback=all" in n for n in notes)


def test_bracket_verdicts():
    assert parse_bracket_verdict("... [Correct]") is True and parse_bracket_verdict("[Incorrect]") is False
    assert parse_bracket_verdict("[Correct] [Incorrect]") is None and parse_bracket_verdict("correct") is None


def test_one_call_mode_is_unchanged():
    out, rounds, _ = drive(Verify(), CANDS, lambda r, i, req: "Verdict: yes" if i == 1 else "Verdict: no")
    assert [len(r) for r in rounds] == [3] and [c.text for c in out] == ["5"]
