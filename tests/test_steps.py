"""Step-level techniques: SpecReason, particle steering, beam search / DVTS, solve-detect-verify.

Control flow runs on a scripted backend (tests/scripted_steps.py) that logs every backend
call in order; one tiny end-to-end run per technique uses the real embedded model (slow).
"""

from __future__ import annotations

import math
import random
import re

import pytest
from scripted_steps import digit, is_judge, is_step, step, steps_router, user_text

from archon import Budget, Pipeline
from archon.backends.cache import sample_key
from archon.backends.types import Sample, TokenLogprob
from archon.techniques import TECHNIQUES
from archon.techniques.base import Defaults
from archon.techniques.beam import BeamSearch
from archon.techniques.particles import (
    ParticleSteering,
    effective_sample_size,
    log_potential,
    normalize,
    resample_indices,
)
from archon.techniques.solve_detect_verify import SolveDetectVerify
from archon.techniques.speculative import SpecReason
from archon.techniques.steps import Trace, close_braces, digit_score, has_final_answer, yes_probability


def run(technique, router, queries=("What is 2 + 2?",), **kw):
    pipe = Pipeline({"n": technique}, {}, router=router, **kw)
    return pipe.run_batch(list(queries))


def notes(result):
    return [n for t in result.trace for n in t.notes]


def partial_of(r) -> str:
    """The partial solution inside a step-judge prompt."""
    return user_text(r).split("Partial solution:\n", 1)[1]


def last_value(text: str) -> int:
    """The reward tag in the last step: 'x7' -> 7."""
    return int(re.findall(r"x(\d)", text.split("\n\n")[-1])[-1])


# -- steps: the shared notion of a step ----------------------------------------------------------

def test_trace_end_rules():
    t = Trace()
    a = t.extend(step("First we add."), 10, None)
    assert a.steps == ("First we add.",) and a.prefix == "First we add.\n\n" and not a.done
    # max_tokens hit: kept, continued with no delimiter
    b = a.extend(step("Then we carr", finish="length"), 10, None)
    assert b.prefix == "First we add.\n\nThen we carr" and not b.done
    # an empty step after a stop: the model ended
    c = b.extend(step(""), 10, None)
    assert c.done and c.finish == "ended" and c.steps == b.steps
    # a final answer ends the trace; a backend that reports eos ends it too
    assert a.extend(step("So \\boxed{4}."), 10, None).finish == "answer"
    assert a.extend(step("Answer: 4"), 10, None).finish == "answer"
    assert a.extend(Sample("done here", finish_reason="eos", completion_tokens=2), 10, None).finish == "ended"
    # caps and budget
    assert a.extend(step("more"), 2, None).finish == "max_steps"
    assert a.extend(Sample("more", completion_tokens=50), 10, 40).finish == "max_total_tokens"
    assert a.extend(None, 10, None).finish == "budget"
    assert has_final_answer("x = \\boxed{\\frac{1}{2}}") and not has_final_answer("\\boxed{\\frac{1}{2")
    assert close_braces("\\frac{1}{2}} and more") == "\\frac{1}{2}}" and close_braces("42") == "42}"


def test_digit_and_yes_no_readers():
    s = digit({7: 0.4, 0: 0.35, 1: 0.25})
    assert digit_score(s, "greedy") == 7
    assert digit_score(s, "weighted") == pytest.approx(7 * 0.4 + 0.25)
    # non-digit tokens in the top list are ignored; no log-probs: the text's first digit
    odd = Sample("**", logprobs=[TokenLogprob("**", -0.1, {"**": -0.1, " 3": -2.0, "5": -2.0})])
    assert digit_score(odd, "weighted") == pytest.approx(4.0) and digit_score(odd, "greedy") == 3
    assert digit_score(Sample("I'd say 6"), "weighted") == 6 and digit_score(Sample("none")) is None
    from archon.backends.types import GenerationResult, ScoreResult

    assert yes_probability(ScoreResult([math.log(0.3), math.log(0.1)], [])) == pytest.approx(0.75)
    top = Sample(" Yes", logprobs=[TokenLogprob(" Yes", math.log(0.6), {" Yes": math.log(0.6), " No": math.log(0.2)})])
    assert yes_probability(GenerationResult([top])) == pytest.approx(0.75)
    assert yes_probability(GenerationResult([])) is None


def test_registered_and_step_params_validate():
    for name in ("specreason", "particle_steering", "beam_search", "solve_detect_verify"):
        assert TECHNIQUES[name].consumes == "query"
    with pytest.raises(ValueError, match="unknown scorer 'nope'"):
        ParticleSteering(scorer="nope")
    with pytest.raises(ValueError, match="temperature > 0"):
        ParticleSteering(temperature=0.0)


# SpecReason: tests/test_speculative.py


# -- particle steering -------------------------------------------------------------------------

def test_resampling_indices_are_valid_and_reproducible():
    for method in ("multinomial", "systematic"):
        for seed in range(20):
            rng = random.Random(seed)
            w = normalize([rng.uniform(-3, 3) for _ in range(6)])
            idx = resample_indices(w, 6, method, random.Random(seed))
            assert len(idx) == 6 and all(0 <= j < 6 for j in idx) and idx == sorted(idx)
            assert idx == resample_indices(w, 6, method, random.Random(seed))
            if method == "systematic":  # each particle gets floor(k·w) or ceil(k·w) copies
                for j in range(6):
                    assert math.floor(6 * w[j]) <= idx.count(j) <= math.ceil(6 * w[j])
    # zero-weight particles are never chosen
    assert set(resample_indices([0.0, 1.0, 0.0], 3, "multinomial", random.Random(1))) == {1}
    assert effective_sample_size([0.25] * 4) == pytest.approx(4)
    assert effective_sample_size([1.0, 0, 0, 0]) == pytest.approx(1)
    assert log_potential("max", 2.0, [0.5, 0.2]) == pytest.approx(1.0)
    assert log_potential("diff", 2.0, [0.5, 0.2]) == pytest.approx(-0.6)
    assert log_potential("sum", 2.0, [0.5, 0.2]) == pytest.approx(1.4)
    assert log_potential("current", 2.0, [0.5, 0.2]) == pytest.approx(0.4)


def particle_responder(k: int, table):
    """Particle i (slot) at step t writes 'x{table[i][t]}'; the last step boxes the slot id.

    The judge reads the value back, so particle i's reward at step t is table[i][t] / 9."""
    steps = len(table[0])

    def respond(req, i):
        if is_judge(req):
            return digit(last_value(partial_of(req)))
        t, slot = divmod(req.seed - 1, k)
        value = table[slot][t]
        return f"x{value} \\boxed{{{slot}}}" if t == steps - 1 else f"x{value} s{req.seed}"

    return respond


@pytest.mark.parametrize("potential", ["max", "diff", "sum", "current"])
def test_final_weights_are_exp_lambda_final_reward(potential):
    table = [[9, 1, 3], [1, 9, 6], [5, 5, 8]]
    router, _, _ = steps_router(particle_responder(3, table))
    tech = ParticleSteering(particles=3, potential=potential, lam=2.0, resample="never", max_steps=5)
    (result,) = run(tech, router)
    by_slot = {c.metadata["particle"]: c for c in result.candidates}
    expected = normalize([2.0 * row[-1] / 9 for row in table])
    for slot in range(3):
        assert by_slot[slot].scores["weight"] == pytest.approx(expected[slot])
        assert by_slot[slot].scores["reward"] == pytest.approx(table[slot][-1] / 9)
        assert by_slot[slot].metadata["rewards"] == pytest.approx([v / 9 for v in table[slot]])
    assert [c.metadata["particle"] for c in result.candidates] == [2, 1, 0]  # best reward first
    assert result.final_answer == "2"


@pytest.mark.parametrize(("first_rewards", "resampled"), [([4, 4, 4, 4], False), ([9, 0, 0, 0], True)])
def test_ess_threshold_triggers_resampling(first_rewards, resampled):
    table = [[v, 5] for v in first_rewards]
    router, _, _ = steps_router(particle_responder(4, table))
    tech = ParticleSteering(particles=4, lam=10.0, resample="ess", ess_threshold=0.5, resampling="systematic")
    (result,) = run(tech, router)
    ancestors = sorted(c.metadata["ancestors"] for c in result.candidates)
    if resampled:
        assert ancestors == [[0]] * 4  # all mass on particle 0
        assert any("resampled after steps [1]" in n for n in notes(result))
    else:
        assert ancestors == [[]] * 4
        assert any("resampled after steps never" in n for n in notes(result))


def test_resampling_is_reproducible_and_duplicates_diverge(tmp_cache):
    table = [[9, 5], [0, 5], [0, 5], [0, 5]]
    tech = ParticleSteering(particles=4, lam=10.0, resample="always", resampling="multinomial")
    outs = []
    for _ in range(2):
        router, backends, _ = steps_router(particle_responder(4, table), cache=tmp_cache)
        (result,) = run(tech, router)
        outs.append([(c.text, c.metadata["ancestors"]) for c in result.candidates])
        if len(outs) == 1:
            step2 = [r for r in backends["embedded"].batches[2] if is_step(r)]
            # every particle descends from particle 0, yet all four continue with their own seed
            assert len({r.assistant_prefix for r in step2}) == 1 and len({r.seed for r in step2}) == 4
            assert len({sample_key(r, 0) for r in step2}) == 4  # so the cache keeps them apart too
        else:
            assert backends["embedded"].batches == []  # the whole second run came from the cache
    assert outs[0] == outs[1]
    second_steps = [text.split("\n\n")[1] for text, _ in outs[0]]
    assert len(set(second_steps)) == 4  # duplicates got distinct continuations, cache or not


def test_one_backend_request_per_model_per_step_for_all_queries_and_particles():
    def respond(req, i):
        if is_judge(req):
            return digit(5)
        return f"step s{req.seed}"

    router, _, log = steps_router(respond, models=("gen", "prm"))
    tech = ParticleSteering(model="gen", particles=4, max_steps=3,
                            scorer={"type": "judge", "mode": "digit", "model": "prm"})
    results = run(tech, router, queries=["q1", "q2", "q3"])
    assert all(len(r.candidates) == 4 for r in results)
    assert log == [("gen", "step", 12), ("prm", "judge", 12)] * 3
    assert len(router.calls) == 6 and all(c.requests == 12 for c in router.calls)


def test_weighted_vote_vs_best():
    def respond(req, i):
        if is_judge(req):
            return digit(9 if "A" in partial_of(req) else 7)
        slot = (req.seed - 1) % 4
        return "\\boxed{A}" if slot == 0 else "\\boxed{B}"

    for final, answer in (("best", "A"), ("weighted_vote", "B")):
        router, _, _ = steps_router(respond)
        (result,) = run(ParticleSteering(particles=4, lam=1.0, final=final), router)
        assert result.final_answer == answer
        assert len(result.candidates) == 4
    assert result.candidates[0].scores["votes"] == pytest.approx(3 * math.exp(7 / 9) / (3 * math.exp(7 / 9) + math.e))


# -- beam search / DVTS ------------------------------------------------------------------------

def test_beam_keeps_top_k_by_reward():
    def respond(req, i):
        if is_judge(req):
            return digit(last_value(partial_of(req)))
        if req.assistant_prefix == "":
            return f"v{i}x{i}"
        return f"w{i}x{i} \\boxed{{{i}}}"

    router, backends, log = steps_router(respond)
    (result,) = run(BeamSearch(beam_width=2, expand=3), router)
    gen = [b for b in backends["embedded"].batches if is_step(b[0])]
    assert [(r.n, r.assistant_prefix) for r in gen[0]] == [(6, "")]  # the root: beam_width x expand samples
    assert sorted((r.n, r.assistant_prefix) for r in gen[1]) == [(3, "v4x4\n\n"), (3, "v5x5\n\n")]  # top 2 of 6
    assert log == [("embedded", "step", 1), ("embedded", "judge", 6), ("embedded", "step", 2),
                   ("embedded", "judge", 6)]
    assert [c.text for c in result.candidates] == ["v5x5\n\nw2x2 \\boxed{2}", "v4x4\n\nw2x2 \\boxed{2}"]
    assert result.candidates[0].scores["reward"] == pytest.approx(2 / 9)


@pytest.mark.parametrize("diverse", [False, True])
def test_dvts_subtrees_are_independent(diverse):
    # subtree 0's expansions beat everything else: plain beam search keeps only them
    rewards = {1: [9, 8], 2: [3, 2], 3: [5, 1]}

    def respond(req, i):
        if is_judge(req):
            return digit(last_value(partial_of(req)))
        if req.assistant_prefix == "":
            tree = req.seed if diverse else 1 + i // 2
            return f"t{tree}x{rewards[tree][i % 2]}"
        return "x1 \\boxed{7}"

    router, backends, _ = steps_router(respond)
    (result,) = run(BeamSearch(beam_width=3, expand=2, diverse=diverse), router)
    gen = [b for b in backends["embedded"].batches if is_step(b[0])]
    if diverse:
        assert [(r.n, r.seed) for r in gen[0]] == [(2, 1), (2, 2), (2, 3)]  # one request per subtree, own seed
        kept = sorted(r.assistant_prefix for r in gen[1])
        assert kept == ["t1x9\n\n", "t2x3\n\n", "t3x5\n\n"]  # each subtree's own best
        assert sorted(c.metadata["subtree"] for c in result.candidates) == [0, 1, 2]
    else:
        kept = sorted(r.assistant_prefix for r in gen[1])
        assert kept == ["t1x8\n\n", "t1x9\n\n", "t3x5\n\n"]  # the global top 3


# solve-detect-verify: tests/test_solve_detect_verify.py


# -- budgets --------------------------------------------------------------------------------------

def endless(req, i):
    if is_judge(req):
        return digit(9)
    if req.assistant_prefix == "\\boxed{":
        return "-1}"
    if req.assistant_prefix.endswith("\\boxed{"):
        return "4}"
    return "one more step of reasoning here"


@pytest.mark.parametrize("make", [
    lambda: SpecReason(max_steps=8, max_tokens=40, stop_on_repeat=False),
    lambda: ParticleSteering(particles=2, max_steps=8, max_tokens=40),
    lambda: BeamSearch(beam_width=2, expand=2, max_steps=8, max_tokens=40),
    lambda: SolveDetectVerify(max_steps=8, max_tokens=40, max_rounds=0),
], ids=["specreason", "particles", "beam", "sdv"])
def test_budget_cuts_steps_and_says_so(make):
    router, _, _ = steps_router(endless)
    (free,) = run(make(), router)
    router, _, _ = steps_router(endless)
    (tight,) = run(make(), router, budget=Budget(max_tokens=600))
    assert tight.usage["total_tokens"] <= 600 < free.usage["total_tokens"]
    assert max(c.metadata["steps"] for c in tight.candidates) < max(c.metadata["steps"] for c in free.candidates)
    assert any("skipped" in n for n in notes(tight))


def test_models_lists():
    d = Defaults(model="m")
    assert SpecReason(drafter="s", model="l").models(d) == ["s", "l"]
    assert ParticleSteering(scorer={"type": "judge", "mode": "digit", "model": "prm"}).models(d) == ["m", "prm"]
    assert ParticleSteering(scorer="logprob").models(d) == ["m"]
    assert BeamSearch(scorer={"type": "judge", "mode": "yes_no"}).models(d) == ["m"]
    assert SolveDetectVerify(verifier_model="v").models(d) == ["m", "v"]


def test_self_logprob_reward_needs_no_extra_call():
    def respond(req, i):
        assert req.logprobs
        lp = -0.1 if (req.seed - 1) % 2 == 0 else -2.0
        return Sample("\\boxed{1}" if (req.seed - 1) % 2 == 0 else "\\boxed{2}", completion_tokens=3,
                      logprobs=[TokenLogprob("x", lp)])

    router, _, log = steps_router(respond)
    (result,) = run(ParticleSteering(particles=2, scorer="logprob", lam=1.0), router)
    assert [k for _, k, _ in log] == ["step"]
    assert result.final_answer == "1" and result.candidates[0].scores["reward"] == pytest.approx(-0.1)


# -- the real embedded model (tiny; shape, not correctness) --------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("make", [
    lambda: SpecReason(max_steps=2, max_tokens=12, threshold=5),
    lambda: ParticleSteering(particles=2, max_steps=2, max_tokens=12,
                             scorer={"type": "judge", "mode": "yes_no"}),  # the ScoreRequest path
    lambda: BeamSearch(beam_width=2, expand=1, max_steps=2, max_tokens=12),
    lambda: SolveDetectVerify(max_steps=2, max_tokens=12, fast_checks=2, fast_max_tokens=12, slow_max_tokens=12,
                              max_rounds=0, answer_max_tokens=6),
], ids=["specreason", "particles", "beam", "sdv"])
def test_embedded_end_to_end(make, embedded_router):
    pipe = Pipeline({"n": make()}, {}, router=embedded_router)
    result = pipe.run("What is 3 + 4?")
    assert result.error is None
    assert result.answer and result.candidates
    assert result.usage["completion_tokens"] > 0 and result.usage["calls"] > 0
    assert notes(result)
