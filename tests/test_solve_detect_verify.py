"""Solve-Detect-Verify / FlexiVe conformance (Zhong et al. 2025; JianyuanZhong/flexive).

The scripted backend tells calls apart by their shape (model name, assistant prefix, number of
turns, seed), never by prompt wording. Expected verdicts and escalations are computed here
from the paper's rule: among the readable fast verdicts the most common stands when its share
is >= 0.9, else ceil(k/4) slow samples decide; no readable fast verdict leaves it undecided.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
from scripted_steps import steps_router, user_text

from archon import Pipeline
from archon.techniques.solve_detect_verify import (
    HESITATION_KEYWORDS,
    THINKING_CLOSED,
    SolveDetectVerify,
    critique_text,
    majority,
    parse_verdict,
    split_at_hesitations,
    tag_paragraphs,
)

FIRST = ["Two plus two is 5.", "\\boxed{5}"]


def responder(fast, slow=("\\boxed{-1}",), first=FIRST, revisions=("\\boxed{4}",)):
    """fast/slow: verifier replies by sample index; revisions: the j-th revision's text."""
    def respond(req, i):
        if req.model == "verifier":
            replies = fast if req.assistant_prefix == THINKING_CLOSED else slow
            return replies[i % len(replies)]
        if len(req.messages) > 1:  # the multi-turn revision exchange
            j = (req.seed // 100) % 10
            return revisions[j % len(revisions)]
        n = req.assistant_prefix.count("\n\n")
        return first[min(n, len(first) - 1)]

    return respond


def run(tech, router):
    (result,) = Pipeline({"n": tech}, {}, router=router).run_batch(["What is 2 + 2?"])
    return result


def sdv(**kw):
    return SolveDetectVerify(model="solver", verifier_model="verifier", **kw)


def paper_decision(fast: list[int | None], threshold: float = 0.9) -> tuple[str, int | None]:
    readable = [v for v in fast if v is not None]
    if not readable:
        return "undecided", None
    best, count = Counter(readable).most_common(1)[0]
    return ("fast", best) if count / len(readable) >= threshold else ("slow", None)


@pytest.mark.parametrize("fast", [
    ["\\boxed{-1}"] * 4,
    ["\\boxed{-1}", "\\boxed{-1}", "\\boxed{-1}", "\\boxed{1}"],    # 0.75: escalates at 0.9
    ["\\boxed{-1}", "\\boxed{-1}", "\\boxed{-1}", "no verdict"],    # 3 of 3 readable agree
    ["\\boxed{1}", "\\boxed{1}", "\\boxed{0}", "\\boxed{0}"],
    ["nothing", "nothing", "nothing", "nothing"],
])
def test_when_flexive_escalates(fast):
    router, backends, log = steps_router(responder(fast), models=("solver", "verifier"))
    result = run(sdv(max_rounds=0), router)
    verdicts = [parse_verdict(t) for t in fast]
    mode, verdict = paper_decision(verdicts)
    verifier_calls = [k for m, k, _ in log if m == "verifier"]
    md = result.candidates[0].metadata
    assert md["fast_verdicts"] == verdicts
    if mode == "slow":
        assert len(verifier_calls) == 2 and md["verify_mode"] == "slow"
        slow_req = backends["verifier"].batches[1][0]
        assert slow_req.n == math.ceil(4 / 4) and slow_req.max_tokens == 32768 and slow_req.assistant_prefix == ""
        assert md["verdict"] == -1
    else:
        assert len(verifier_calls) == 1 and md["verify_mode"] == "fast" and md["verdict"] == verdict
    fast_req = backends["verifier"].batches[0][0]
    assert (fast_req.n, fast_req.temperature, fast_req.assistant_prefix) == (4, 0.6, THINKING_CLOSED)


def test_slow_pass_size_is_a_quarter_of_k():
    fast = ["\\boxed{0}", "\\boxed{-1}"] * 4
    router, backends, _ = steps_router(responder(fast), models=("solver", "verifier"))
    run(sdv(fast_checks=8, max_rounds=0), router)
    assert backends["verifier"].batches[1][0].n == math.ceil(8 / 4) == 2


def test_paragraphs_split_at_hesitation_keywords_and_tagged_from_zero():
    text = ("We add 2 and 2 to get 4. Wait, let me double-check: 2 + 2 = 4.\n"
            "Hmm, that holds. I will make sure of it.\n\nSo \\boxed{4}. Alternatively")
    paras = split_at_hesitations(text)
    assert paras == ["We add 2 and 2 to get 4.", "Wait, let me double-check: 2 + 2 = 4.",
                     "Hmm, that holds. I will make sure of it.\n\nSo \\boxed{4}."]  # trailing keyword dropped
    assert len(HESITATION_KEYWORDS) == 10
    assert tag_paragraphs(paras[:2]) == ("<paragraph_0>\nWe add 2 and 2 to get 4.\n</paragraph_0>\n\n"
                                         "<paragraph_1>\nWait, let me double-check: 2 + 2 = 4.\n</paragraph_1>")
    router, backends, _ = steps_router(responder(["\\boxed{-1}"], first=[text]), models=("solver", "verifier"))
    run(sdv(detect=False), router)
    prompt = user_text(backends["verifier"].batches[0][0])
    assert tag_paragraphs(split_at_hesitations(text)) in prompt and "indexed from 0" in prompt


def test_a_flexive_checkpoints_answers_parse():
    fast_reply = ("Paragraph 0 is right. Paragraph 1 says 2 + 2 = 5, which is false.\n\n"
                  "**Final Answer**\n\\boxed{1}")
    slow_reply = ("<think>\nCheck paragraph 0: \\boxed{0}? No, it is fine.\nParagraph 1 adds wrongly.\n</think>\n\n"
                  "The earliest error is in paragraph 1.\n\n\\boxed{1}")
    assert parse_verdict(fast_reply) == 1 and parse_verdict(slow_reply) == 1
    assert parse_verdict("All steps are correct. \\boxed{-1}") == -1 and parse_verdict("\\boxed{ 2 }") == 2
    assert parse_verdict("paragraph 3 is wrong") is None and parse_verdict("\\boxed{-2}") is None
    assert critique_text(fast_reply) == fast_reply.replace("\\boxed{1}", "").strip()
    assert critique_text(slow_reply) == "Check paragraph 0: ? No, it is fine.\nParagraph 1 adds wrongly."
    assert majority([2, 2, None, -1]) == (2, 2 / 3) and majority([None]) == (None, 0.0)


def test_failure_revises_with_the_critique_then_votes_best_of_n():
    fast = ["Paragraph 1 claims 2 + 2 = 5, which is wrong. \\boxed{1}"] * 4
    revisions = ["So \\boxed{4}", "So \\boxed{5}", "Thus \\boxed{4}", "So \\boxed{3}"]
    router, backends, log = steps_router(responder(fast, revisions=revisions), models=("solver", "verifier"))
    result = run(sdv(), router)
    revise_reqs = [r for b in backends["solver"].batches for r in b if len(r.messages) > 1]
    assert len({r.seed for r in revise_reqs}) == 4  # best-of-4, one request each, sent together
    req = revise_reqs[0]
    assert [m.role for m in req.messages] == ["user", "assistant", "user"]
    assert req.messages[1].content == "\n\n".join(FIRST)
    assert critique_text(fast[0]) in req.messages[2].content
    # the majority answer, first solution carrying it (computed independently)
    answers = ["4", "5", "4", "3"]
    winner, count = Counter(answers).most_common(1)[0]
    assert result.final_answer == winner and result.candidates[0].text == revisions[answers.index(winner)]
    assert result.candidates[0].scores["votes"] == count / 4
    assert [m for m, k, _ in log].count("verifier") == 1  # the voted revision is not verified again


def test_revision_rounds_and_none():
    fast = ["\\boxed{0}"] * 4
    router, _, log = steps_router(responder(fast), models=("solver", "verifier"))
    result = run(sdv(max_rounds=0), router)
    assert len(result.candidates) == 1 and result.candidates[0].scores["verified"] == 0.0
    assert any("still fails" in n for t in result.trace for n in t.notes)
    router, _, log = steps_router(responder(fast), models=("solver", "verifier"))
    run(sdv(max_rounds=2), router)
    assert [m for m, k, _ in log].count("verifier") == 2  # archon extension: the voted revision is re-verified


def test_hesitation_triggers_check_and_early_stop():
    first = ["Two plus two is 4.", "So the result is 4. Wait, let me check again.", "more"]
    router, backends, log = steps_router(responder(["\\boxed{-1}"], first=first),
                                         score_fn=lambda r: [-0.1, -3.0], models=("solver", "verifier"))
    result = run(sdv(), router)
    assert [(m, k) for m, k, _ in log] == [("solver", "step"), ("solver", "step"), ("solver", "score"),
                                           ("solver", "answer"), ("verifier", "gen")]
    detect = backends["solver"].score_batches[0][0]
    assert detect.continuations == (" Yes", " No") and "So the result is 4." in user_text(detect)
    cand = result.candidates[0]
    assert cand.text.startswith("Two plus two is 4.\n\nSo the result is 4.\n\nFinal answer: \\boxed{")
    assert cand.scores["verified"] == 1.0 and cand.metadata["early_stop"] and cand.metadata["detect_checks"] == 1


def test_detect_no_continues_solving():
    first = ["Two plus two is 4.", "Hmm, is it?", "Yes: \\boxed{4}"]
    router, _, log = steps_router(responder(["\\boxed{-1}"], first=first), score_fn=lambda r: [-3.0, -0.1],
                                  models=("solver", "verifier"))
    result = run(sdv(), router)
    assert [k for _, k, _ in log] == ["step", "step", "score", "step", "gen"]
    assert not result.candidates[0].metadata["early_stop"]
    assert result.candidates[0].text.endswith("Yes: \\boxed{4}")


def test_defaults_are_the_papers():
    p = SolveDetectVerify().params
    assert (p.fast_checks, p.agreement, p.slow_max_tokens, p.revisions, p.max_rounds, p.verify_temperature) == (
        4, 0.9, 32768, 4, 1, 0.6)
    assert SolveDetectVerify().slow_count() == 1 and p.hesitation_markers == HESITATION_KEYWORDS
