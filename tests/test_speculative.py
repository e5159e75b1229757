"""SpecReason conformance (Pan et al. 2025; ruipeterpan/specreason ``spec_reason.py``).

The scripted backend answers by call order and request shape (a judge is a one-token request
with log-probs; the drafter and the large model are told apart by model name), never by
prompt wording. Expected decisions are computed here from the paper's rule: greedy takes the
judge's token (a non-digit scores 0), average is the renormalised probability-weighted mean
of the digit tokens among the top 10; a draft is kept when its score >= threshold.
"""

from __future__ import annotations

import math

import pytest
from scripted_steps import is_judge, step, steps_router

from archon import Pipeline
from archon.backends.types import Sample, TokenLogprob
from archon.techniques.speculative import SCORE_PREFIX, SpecReason, judge_score


def judgement(token: str, top: dict[str, float]) -> Sample:
    """One judged token with the given top probabilities (not log-probs)."""
    lps = {t: math.log(p) for t, p in top.items()}
    return Sample(token, completion_tokens=1, logprobs=[TokenLogprob(token, lps[token], lps)])


def paper_greedy(token: str) -> float:
    return float(token) if token.isdigit() else 0.0


def paper_average(top: dict[str, float]) -> float:
    digits = {t: p for t, p in top.items() if t.isdigit()}
    total = sum(digits.values())
    return sum(int(t) * p / total for t, p in digits.items()) if total else 0.0


# (greedy token, top-10 probabilities): each draft's judgement, in call order
JUDGEMENTS = [
    ("8", {"8": 0.7, "9": 0.2, "3": 0.1}),
    ("6", {"6": 0.5, "9": 0.45, "x": 0.05}),
    ("**", {"**": 0.6, "9": 0.3, "5": 0.1}),   # greedy: a non-digit token rejects
    ("7", {"7": 0.4, "0": 0.35, "1": 0.25}),   # greedy 7 keeps; the average (3.05) rejects
    ("9", {"9": 0.9, "8": 0.1}),
]
DRAFTS = ["draft 1", "draft 2", "draft 3", "draft 4", "draft 5 \\boxed{4}"]


def scripted(drafts=DRAFTS, judgements=JUDGEMENTS, draft_tokens=None):
    calls = {"small": 0, "judge": 0, "big": 0}

    def respond(req, i):
        if is_judge(req):
            token, top = judgements[calls["judge"] % len(judgements)]
            calls["judge"] += 1
            return judgement(token, top)
        kind = "small" if req.model == "small" else "big"
        k = calls[kind]
        calls[kind] += 1
        if kind == "big":
            return f"rewrite {k + 1}"
        text = drafts[min(k, len(drafts) - 1)]
        return Sample(text, completion_tokens=draft_tokens) if draft_tokens else step(text)

    return respond


def run(tech, router, queries=("What is 2 + 2?",)):
    return Pipeline({"n": tech}, {}, router=router).run_batch(list(queries))


def expected_text(mode: str, threshold: float = 7.0) -> tuple[str, list[bool]]:
    """Replays the paper's loop on the scripted drafts and judgements."""
    steps, kept, rewrites = [], [], 0
    for draft, (token, top) in zip(DRAFTS, JUDGEMENTS, strict=True):
        score = paper_greedy(token) if mode == "greedy" else paper_average(top)
        kept.append(score >= threshold)
        if score >= threshold:
            steps.append(draft)
        else:
            rewrites += 1
            steps.append(f"rewrite {rewrites}")
        if "boxed" in steps[-1]:
            break
    return "\n\n".join(steps), kept


@pytest.mark.parametrize("mode", ["greedy", "average"])
def test_accepted_steps_follow_the_papers_rule(mode):
    router, _, log = steps_router(scripted(), models=("small", "big"))
    (result,) = run(SpecReason(drafter="small", model="big", score_mode=mode), router)
    text, kept = expected_text(mode)
    cand = result.candidates[0]
    assert cand.text == text
    scores = [paper_greedy(t) if mode == "greedy" else paper_average(top) for t, top in JUDGEMENTS[: len(kept)]]
    assert cand.metadata["judge_scores"] == pytest.approx(scores)
    assert cand.metadata["steps_accepted"] == sum(kept)
    assert cand.metadata["steps_rewritten"] == len(kept) - sum(kept)
    # every draft is judged; the large model writes only after a rejection
    expected_log = []
    for keep in kept:
        expected_log += [("small", "step"), ("big", "judge")] + ([] if keep else [("big", "step")])
    assert [(m, k) for m, k, _ in log] == expected_log


def test_greedy_and_average_disagree_where_the_paper_says():
    assert expected_text("greedy")[1] == [True, False, False, True, True]
    assert expected_text("average")[1] == [True, True, True, False, True]  # 7.7, 7.42, 8.0, 3.05, 8.9


def test_judge_reads_the_trace_as_its_own_turn():
    router, backends, _ = steps_router(scripted(), models=("small", "big"))
    run(SpecReason(drafter="small", model="big"), router)
    draft1, draft2 = backends["small"].batches[0][0], backends["small"].batches[1][0]
    judge2 = backends["big"].batches[1][0]
    assert [m.role for m in judge2.messages] == ["user", "assistant", "user"]
    # the solve turn and the trace so far are a prefix of the judge's prompt (KV reuse)
    assert judge2.messages[0] == draft2.messages[-1]
    assert judge2.messages[1].content == draft2.assistant_prefix + "draft 2" + "\n\n"
    assert judge2.messages[1].content.startswith(draft1.assistant_prefix + "draft 1\n\n")
    instruction = judge2.messages[2].content
    assert "factual correctness and logical validity" in instruction and "0 to 9" in instruction
    assert "usefulness" in instruction  # ... which it is told to ignore
    assert judge2.assistant_prefix == SCORE_PREFIX == "I think the quality score is: "
    assert (judge2.max_tokens, judge2.temperature, judge2.logprobs, judge2.top_logprobs) == (1, 0.0, True, 10)
    # the reference's sampling for steps
    assert (draft1.temperature, draft1.top_p, draft1.max_tokens, draft1.stop) == (0.6, 0.95, 512, ("\n\n",))
    rewrite = backends["big"].batches[2][0]
    assert rewrite.assistant_prefix == draft2.assistant_prefix and rewrite.max_tokens == 512


def test_token_budget_counts_kept_steps_and_there_is_no_step_cap():
    router, _, _ = steps_router(scripted(drafts=[f"step {k}" for k in range(100)], draft_tokens=500,
                                         judgements=[("9", {"9": 1.0})]), models=("small", "big"))
    (result,) = run(SpecReason(drafter="small", model="big"), router)
    md = result.candidates[0].metadata
    assert md["steps"] == math.ceil(8192 / 500) and md["finish"] == "max_total_tokens"  # 17 > the old cap of 12


def test_repeated_step_ends_the_trace():
    router, _, _ = steps_router(scripted(drafts=["a", "same", "same", "b"], judgements=[("9", {"9": 1.0})]),
                                models=("small", "big"))
    (result,) = run(SpecReason(drafter="small", model="big"), router)
    md = result.candidates[0].metadata
    assert md["steps"] == 3 and md["finish"] == "repeated"


def test_judge_score_reader():
    assert judge_score(judgement("**", {"**": 0.9, "9": 0.1}), "greedy") == 0.0
    assert judge_score(judgement(" 8", {" 8": 0.9, "9": 0.1}), "greedy") == 8.0
    assert judge_score(judgement("7", {"7": 0.5, "The": 0.3, "9": 0.2}), "weighted") == pytest.approx(
        (7 * 0.5 + 9 * 0.2) / 0.7)
    assert judge_score(judgement("no", {"no": 1.0}), "average") == 0.0
    assert judge_score(None, "greedy") is None


def test_batches_queries_one_request_per_model_per_round():
    def respond(req, i):
        if is_judge(req):
            return judgement("9", {"9": 1.0})
        return "step" if req.assistant_prefix.count("\n\n") < 2 else "done \\boxed{1}"

    router, _, log = steps_router(respond, models=("small", "big"))
    results = run(SpecReason(drafter="small", model="big"), router, queries=["a", "b", "c"])
    assert all(r.final_answer == "1" for r in results)
    assert log == [("small", "step", 3), ("big", "judge", 3)] * 3


def test_first_n_large_and_metadata():
    router, _, log = steps_router(scripted(), models=("small", "big"))
    (result,) = run(SpecReason(drafter="small", model="big", first_n_large=1), router)
    assert log[0] == ("big", "step", 1)
    md = result.candidates[0].metadata
    assert md["steps_large_first"] == 1 and md["tokens_judge"] == md["steps_drafted"]
