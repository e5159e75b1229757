"""REBEL conformance (LeVine & Varjavand 2025; microsoft/REBEL, llama_index ``REBELRerank``).

The technique's program is driven directly (``scripted.drive``): replies are chosen by the
round and position of each request, never by prompt wording. Expected rankings are computed
here from the paper's rule: pool every batch's ``Doc: i, Relevance: s`` lines, sort by s
(stable), keep top_k; with reported properties, final = R + 0.5 * sum(secondary), R < 3 dropped.
"""

from __future__ import annotations

import pytest
from scripted import drive

from archon.data import Candidate
from archon.techniques.rerank import (
    REBEL_PROPERTIES,
    Rerank,
    fill_generated_prompt,
    format_documents,
    parse_doc_lines,
)

NAMES = ["Depth", "Diversity", "Clarity", "Authoritativeness", "Recency"]


def cands(n: int) -> list[Candidate]:
    return [Candidate(text=f"answer {i}") for i in range(1, n + 1)]


def paper_rank(pooled: list[tuple[str, float]], top_k: int | None) -> list[str]:
    ordered = sorted(pooled, key=lambda p: p[1], reverse=True)  # stable, like the reference's sorted()
    return [t for t, _ in ordered][:top_k]


def test_one_turn_is_listwise_in_batches_of_ten_and_pools_the_final_scores():
    inputs = cands(12)
    replies = {0: "Doc: 3, Relevance: 12.5\nDoc: 1, Relevance: 9\nDoc: 7, Relevance: 12.5\nDoc: 11, Relevance: 20",
               1: "Doc: 2, Relevance: 10"}
    out, rounds, _ = drive(Rerank(mode="one_turn"), inputs, lambda r, i, req: replies[i])
    assert len(rounds) == 1 and [len(r.messages[-1].content) > 0 for r in rounds[0]] == [True, True]
    first = rounds[0][0].messages[-1].content
    assert format_documents([c.text for c in inputs[:10]]) in first
    assert "Document 11:" not in first and "Document 1:\nanswer 11" in rounds[0][1].messages[-1].content
    # the paper's rule, computed here: batch 1 doc 11 is out of range and ignored
    pooled = [("answer 3", 12.5), ("answer 1", 9), ("answer 7", 12.5), ("answer 12", 10)]
    assert [c.text for c in out] == paper_rank(pooled, 3) == ["answer 3", "answer 7", "answer 12"]
    assert [c.scores["rebel"] for c in out] == [12.5, 12.5, 10]


def test_one_turn_prompt_states_the_papers_rubric():
    _, rounds, _ = drive(Rerank(mode="one_turn"), cands(2), lambda r, i, req: "Doc: 1, Relevance: 5")
    prompt = rounds[0][0].messages[-1].content
    assert "Relevance (0-10)" in prompt and "below 3" in prompt
    formula = "Final Score = Relevance" + "".join(f" + 0.5*({n})" for n in NAMES)
    assert formula in prompt
    assert prompt.rstrip().endswith("Question: q\nAnswer:")


def test_reported_properties_are_combined_by_the_papers_formula():
    lines = ("Doc: 1, Relevance: 8, Depth: 3, Diversity: 2, Clarity: 4, Authoritativeness: 5, Recency: 1\n"
             "Doc: 2, Relevance: 2, Depth: 5, Diversity: 5, Clarity: 5, Authoritativeness: 5, Recency: 5\n"
             "Doc: 3, Relevance: 6, Depth: 5, Diversity: 5, Clarity: 5, Authoritativeness: 5, Recency: 5\n")
    out, _, notes = drive(Rerank(mode="one_turn", report="properties", top_k=None), cands(4),
                          lambda r, i, req: lines)

    def final(rel, props):
        return rel + 0.5 * sum(props)

    expected = {"answer 1": final(8, [3, 2, 4, 5, 1]), "answer 3": final(6, [5] * 5)}  # doc 2: R < 3; doc 4 absent
    assert [c.text for c in out] == sorted(expected, key=expected.get, reverse=True) == ["answer 3", "answer 1"]
    assert {c.text: c.scores["rebel"] for c in out} == pytest.approx(expected)
    assert out[1].scores["rebel.authoritativeness"] == 5 and out[1].scores["rebel.relevance"] == 8
    assert any("2 candidate(s) discarded" in n for n in notes)


def test_two_turn_writes_the_prompt_then_scores_with_it():
    generated = "Rank for this query. Weights: Recency 0.7.\n{context_str}\nQuestion: {query_str}\nAnswer:\n"

    def reply(rnd, i, req):
        return generated if rnd == 0 else "Doc: 2, Relevance: 11.4\nDoc: 1, Relevance: 3.5"

    out, rounds, _ = drive(Rerank(), cands(2), reply, question="Latest treatments?")  # two_turn is the default
    assert [len(r) for r in rounds] == [1, 1]
    meta = rounds[0][0].messages[-1].content
    assert meta.rstrip().endswith("Latest treatments?") and "{context_str}" in meta
    scoring = rounds[1][0].messages[-1].content
    assert scoring == fill_generated_prompt(generated.strip(), format_documents(["answer 1", "answer 2"]),
                                            "Latest treatments?")
    assert [c.text for c in out] == ["answer 2", "answer 1"]


def test_two_turn_without_placeholders_falls_back_to_one_turn():
    def reply(rnd, i, req):
        return "I cannot help" if rnd == 0 else "Doc: 1, Relevance: 4"

    out, rounds, notes = drive(Rerank(), cands(2), reply)
    assert "Final Score = Relevance" in rounds[1][0].messages[-1].content
    assert any("lacks {context_str}" in n for n in notes) and [c.text for c in out] == ["answer 1"]


@pytest.mark.parametrize("keep", [True, False])
def test_a_reply_naming_no_document(keep):
    out, _, notes = drive(Rerank(mode="one_turn", keep_unranked=keep, top_k=None), cands(3),
                          lambda r, i, req: "They all look fine.")
    assert [c.text for c in out] == (["answer 1", "answer 2", "answer 3"] if keep else [])
    assert any("no document ranked" in n for n in notes)


def test_parser_and_defaults():
    assert parse_doc_lines("Doc: 2, Relevance: 7\nnoise\nDoc: [4], Relevance: [3.5]\nDoc: 2, Relevance: 1\n"
                           "Doc: 9, Relevance: 9", 4) == [(1, 7.0), (3, 3.5)]
    p = Rerank().params
    assert (p.preset, p.batch_size, p.min_relevance, p.top_k, Rerank().mode()) == ("rebel", 10, 3.0, 3, "two_turn")
    assert [c.name for c in REBEL_PROPERTIES] == NAMES and {c.weight for c in REBEL_PROPERTIES} == {0.5}
    assert Rerank(preset="answer_quality").mode() == "one_turn"
