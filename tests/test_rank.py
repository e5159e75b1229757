"""Rank: ties and gaps are broken as Archon's ranker breaks them (ScalingIntelligence/Archon
``Ranker.extract_ranking``): duplicates count where first named, out-of-range identifiers are
ignored, unranked candidates follow in input order; ``parse: archon`` reads only the first line."""

from __future__ import annotations

import re

import pytest
from scripted import drive

from archon.data import Candidate
from archon.techniques.rank import Rank, parse_ranking


def archons_rule(reply: str, n: int) -> list[int]:
    """Archon's extraction, restated: bracketed ids on the first line, then the missing ones."""
    ids = [int(x) for x in re.findall(r"\[(\d+)\]", reply.partition("\n")[0])]
    order: list[int] = []
    for i in ids + list(range(1, n + 1)):
        if 1 <= i <= n and i not in order:
            order.append(i)
    return [i - 1 for i in order]


REPLIES = ["[3] > [1] > [2] > [4]", "[2] > [2] > [4]", "[9] > [3]", "Answer: [4]\nBecause [1] beats [2]",
           "Answer:\n[2] > [1]"]


@pytest.mark.parametrize("reply", REPLIES)
def test_archon_mode_matches_archons_tie_breaking(reply):
    out, _, _ = drive(Rank(top_k=4, parse="archon", max_retries=0), [Candidate(text=f"c{i}") for i in range(4)],
                      lambda r, i, req: reply)
    assert [c.text for c in out] == [f"c{i}" for i in archons_rule(reply, 4)]
    assert [c.scores["rank_score"] for c in out] == [1.0, 0.75, 0.5, 0.25]


def test_lenient_mode_reads_the_whole_reply():
    assert parse_ranking("Answer: [4]\nBecause [1] beats [2]", 4) == [3, 0, 1]
    assert parse_ranking("Answer: [4]\nBecause [1] beats [2]", 4, "archon") == [3]
