"""Conformance of ``particle_steering`` with its references, on a scripted backend.

``method: pf`` against its_hub's ``ParticleFiltering`` (Puri et al. 2025), ``method: fk``
against ``fkd_class.py`` (Singhal et al. 2025). Every step's text carries its reward as an
``r=<value>`` tag read by ``scripted_steps.TextRewardScorer``, so each test fixes the exact reward
sequence and recomputes, from the papers' formulas and independently of the code under test,
the weights and ESS after each step, which particles survive resampling with the node's seeded
RNG, and the answer.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import zlib

import pytest
from scripted_steps import steps_router

from archon import Pipeline
from archon.techniques.particles import ParticleParams, ParticleSteering

REWARD = {"type": "scripted_steps:TextRewardScorer"}


def run(technique, router, queries=("What is 2 + 2?",)):
    return Pipeline({"n": technique}, {}, router=router).run_batch(list(queries))


def node_rng() -> random.Random:
    """The RNG the engine hands node "n" for query "q0" with seed 0 (crc32 of "seed:node:query")."""
    return random.Random(zlib.crc32(b"0:n:q0"))


def step_log(result) -> list[dict]:
    return [json.loads(n.split(" ", 2)[2]) for t in result.trace for n in t.notes if n.startswith("particles step ")]


def plan_responder(plan: list[list[str]], k: int):
    """Slot ``i`` at step ``t`` writes ``plan[t][i]`` (seed = 1 + t·k + i)."""
    def respond(req, i):
        t, slot = divmod(req.seed - 1, k)
        return plan[t][slot]

    return respond


def reward_of(text: str) -> float:
    return float(re.findall(r"r=([0-9.]+)", text)[-1])


def agg(rewards: list[float], how: str) -> float:
    return {"last": rewards[-1], "min": min(rewards), "prod": math.prod(rewards)}[how]


def softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


# -- particle filtering (Puri et al.; its_hub) ------------------------------------------------------------

# slot 0 finishes at step 1 with the best reward; the others finish at step 3 with answer B
PF_PLAN = [
    ["r=0.9 \\boxed{A}", "r=0.8 a", "r=0.8 b", "r=0.8 c"],
    ["r=0.7 d", "r=0.7 e", "r=0.7 f", "r=0.7 g"],
    ["r=0.6 \\boxed{B}", "r=0.65 \\boxed{B}", "r=0.5 \\boxed{C}", "r=0.6 \\boxed{B}"],
]


def simulate_pf(plan, k, temperature, how):
    """its_hub's loop: every live particle steps, log-weight = logit(aggregated reward), softmax over
    all particles (finished ones with their final log-weight), random.choices every step."""
    rng = node_rng()
    pop = [{"rewards": [], "steps": [], "done": False, "finished_at": None, "lw": 0.0} for _ in range(k)]
    log = []
    t = 0
    while not all(p["done"] for p in pop):
        for slot, p in enumerate(pop):
            if p["done"]:
                continue
            text = plan[t][slot]
            p["steps"].append(text)
            p["rewards"].append(reward_of(text))
            if "boxed" in text:
                p["done"], p["finished_at"] = True, t + 1
            r = agg(p["rewards"], how)
            p["lw"] = math.log(r / (1 - r))
        w = softmax([p["lw"] / temperature for p in pop])
        parents = rng.choices(range(k), weights=w, k=k)
        log.append({"weights": w, "ess": 1 / sum(x * x for x in w), "parents": parents})
        pop = [copy.deepcopy(pop[j]) for j in parents]
        t += 1
    best = max(range(k), key=lambda i: (pop[i]["lw"], -i))
    return log, pop, best, t


def test_pf_first_step_weights_by_hand():
    """After step 1 (rewards 0.9 finished, 0.8 × 3 live) softmax(logit r) is the odds, normalised:
    9 : 4 : 4 : 4. The finished particle keeps 3/7 of the mass (FK's early correction left it ~1e-11)."""
    router, _, _ = steps_router(plan_responder(PF_PLAN, 4))
    (result,) = run(ParticleSteering(particles=4, scorer=REWARD), router)
    first = step_log(result)[0]
    assert first["weights"] == pytest.approx([9 / 21, 4 / 21, 4 / 21, 4 / 21])
    assert first["ess"] == pytest.approx(441 / 129)
    assert first["step"] == 1 and first["parents"] is not None  # resampled after every step


@pytest.mark.parametrize(("how", "temperature"), [("last", 1.0), ("min", 1.0), ("prod", 1.0), ("last", 0.5)])
def test_pf_matches_its_hub(how, temperature):
    router, _, _ = steps_router(plan_responder(PF_PLAN, 4))
    tech = ParticleSteering(particles=4, scorer=REWARD, aggregate=how, softmax_temperature=temperature, max_steps=5)
    (result,) = run(tech, router)
    expected, pop, best, steps = simulate_pf(PF_PLAN, 4, temperature, how)
    got = step_log(result)
    assert len(got) == len(expected) == steps  # resampling can end the run early: all copies finished
    for g, e in zip(got, expected, strict=True):
        assert g["weights"] == pytest.approx(e["weights"], rel=1e-9)
        assert g["ess"] == pytest.approx(e["ess"], rel=1e-9)
        assert g["parents"] == e["parents"]  # the same survivors, drawn with the node's seeded RNG
    # the answer: the particle with the largest log-weight; every particle is output, best first
    top = result.candidates[0]
    assert top.text == "\n\n".join(pop[best]["steps"]).strip()
    assert top.metadata["finished_at"] == pop[best]["finished_at"]
    assert top.metadata["last_step"] == steps
    assert len(result.candidates) == 4
    final_w = softmax([p["lw"] / temperature for p in pop])
    assert sorted(c.scores["weight"] for c in result.candidates) == pytest.approx(sorted(final_w))


def test_pf_finished_particle_survives_and_wins():
    """With last-step weighting the particle that finished first at 0.9 keeps competing and is the answer."""
    router, _, _ = steps_router(plan_responder(PF_PLAN, 4))
    (result,) = run(ParticleSteering(particles=4, scorer=REWARD), router)
    _, pop, best, _ = simulate_pf(PF_PLAN, 4, 1.0, "last")
    assert pop[best]["finished_at"] == 1  # the simulation agrees: an early finisher
    assert result.final_answer == "A"
    assert result.candidates[0].metadata["finished_at"] == 1 < result.candidates[0].metadata["last_step"]


def test_pf_weighted_vote():
    router, _, _ = steps_router(plan_responder(PF_PLAN, 4))
    (result,) = run(ParticleSteering(particles=4, scorer=REWARD, final="weighted_vote"), router)
    _, pop, _, _ = simulate_pf(PF_PLAN, 4, 1.0, "last")
    w = softmax([p["lw"] for p in pop])
    totals: dict[str, float] = {}
    for p, x in zip(pop, w, strict=True):
        ans = re.findall(r"boxed\{(\w)\}", p["steps"][-1])[0]
        totals[ans] = totals.get(ans, 0.0) + x
    winner = max(totals, key=totals.get)
    assert result.final_answer == winner
    assert result.candidates[0].scores["votes"] == pytest.approx(totals[winner])


def test_pf_params():
    with pytest.raises(ValueError, match="logprob"):
        ParticleParams(scorer="logprob")
    assert ParticleParams(scorer="logprob", method="fk").method == "fk"
    assert ParticleParams().method == "pf" and ParticleParams().softmax_temperature == 1.0
    assert ParticleParams().resampling == "multinomial"
    assert ParticleParams(potential="sum").potential == "add" and ParticleParams(potential="current").potential == "rt"


# -- FK steering (Singhal et al.; fkd_class.py) ---------------------------------------------------------

FK_PLAN = [
    ["r=0.9 \\boxed{A}", "r=0.5 a", "r=0.6 b", "r=0.4 c"],
    ["r=0.7 d", "r=0.8 e", "r=0.3 f", "r=0.6 g"],
    ["r=0.5 \\boxed{C}", "r=0.85 \\boxed{B}", "r=0.2 h", "r=0.75 \\boxed{B}"],
    ["r=0.4 \\boxed{D}", "r=0.3 \\boxed{D}", "r=0.35 \\boxed{D}", "r=0.45 \\boxed{D}"],
]


def simulate_fk(plan, k, potential, lam, resample, threshold=0.5, interval=None, max_steps=4):
    """fkd_class.FKD.resample at each resampling step, with the LLM adaptation: a finished particle
    gets no new reward (its state stays); the last step is the one after which all are finished
    (if a resampling leaves only finished copies, the final correction follows at once)."""
    rng = node_rng()
    pop = [{"steps": [], "done": False, "scored": 0, "s": 0.0, "logprod": 0.0, "lw": 0.0} for _ in range(k)]
    log = []

    def weigh(step: int, last: bool) -> None:
        nonlocal pop
        new_s, log_g = [], []
        for p in pop:
            r = reward_of(p["steps"][-1]) if len(p["steps"]) > p["scored"] else None
            p["scored"] = len(p["steps"])
            s = p["s"]
            s2 = s if r is None else max(r, s) if potential == "max" else s + r if potential == "add" else r
            if last and potential != "diff":
                g = lam * s2 - p["logprod"]  # exp(λ r_T) / Π G
            elif potential == "diff":
                g = lam * (r - s) if r is not None else 0.0
            else:
                g = lam * s2
            new_s.append(s2)
            log_g.append(min(g, math.log(1e10)))
        w = softmax(log_g)
        ess = 1 / sum(x * x for x in w)
        parents = None
        if resample == "always" or (resample == "ess" and ess < threshold * k):
            parents = rng.choices(range(k), weights=w, k=k)
            nxt = []
            for j in parents:
                c = copy.deepcopy(pop[j])
                c["s"], c["logprod"], c["lw"] = new_s[j], pop[j]["logprod"] + log_g[j], log_g[j]
                nxt.append(c)
            pop = nxt
        else:
            for p, s2, g in zip(pop, new_s, log_g, strict=True):
                p["s"], p["lw"] = s2, g
        log.append({"step": step + 1, "weights": w, "ess": ess, "parents": parents, "last": last})

    t = 0
    while not all(p["done"] for p in pop):
        for slot, p in enumerate(pop):
            if not p["done"]:
                p["steps"].append(plan[t][slot])
                p["done"] = "boxed" in plan[t][slot] or len(p["steps"]) == max_steps
        last = all(p["done"] for p in pop)
        if interval is None or t in interval or last:
            weigh(t, last)
            if not last and all(p["done"] for p in pop):
                weigh(t, True)
        t += 1
    best = max(range(k), key=lambda i: (pop[i]["s"], -i))
    return log, pop, best


@pytest.mark.parametrize("potential", ["max", "add", "diff", "rt"])
@pytest.mark.parametrize("resample", ["always", "ess", "never"])
def test_fk_matches_fkd_class(potential, resample):
    router, _, _ = steps_router(plan_responder(FK_PLAN, 4))
    tech = ParticleSteering(method="fk", particles=4, scorer=REWARD, potential=potential, lam=2.0,
                            resample=resample, max_steps=4)
    (result,) = run(tech, router)
    expected, pop, best = simulate_fk(FK_PLAN, 4, potential, 2.0, resample)
    got = step_log(result)
    assert [(g["step"], g["last"]) for g in got] == [(e["step"], e["last"]) for e in expected]
    assert got[-1]["last"] and sum(g["last"] for g in got) == 1  # the final correction: once
    for g, e in zip(got, expected, strict=True):
        assert g["weights"] == pytest.approx(e["weights"], rel=1e-9, abs=1e-12)
        assert g["ess"] == pytest.approx(e["ess"], rel=1e-9)
        assert g["parents"] == e["parents"]
        assert g["last"] == e["last"]
    top = result.candidates[0]
    assert top.text == "\n\n".join(pop[best]["steps"]).strip()
    final_w = softmax([p["lw"] for p in pop])
    assert sorted(c.scores["weight"] for c in result.candidates) == pytest.approx(sorted(final_w), abs=1e-12)


def test_fk_final_correction_once_and_finished_particles_carry():
    """λ = 10, max potential, no resampling: a particle finished at 0.9 against three live at 0.8
    keeps the share e^9 / (e^9 + 3e^8) = e / (e + 3) at every step, including the last, where
    exp(λ·s)/Π G (Π G = 1 without resampling) is applied to all four together."""
    plan = [["r=0.9 \\boxed{A}", "r=0.8 a", "r=0.8 b", "r=0.8 c"],
            ["-", "r=0.8 d", "r=0.8 e", "r=0.8 f"],
            ["-", "r=0.8 \\boxed{B}", "r=0.8 \\boxed{B}", "r=0.8 \\boxed{B}"]]
    router, _, _ = steps_router(plan_responder(plan, 4))
    tech = ParticleSteering(method="fk", particles=4, scorer=REWARD, potential="max", lam=10.0, resample="never")
    (result,) = run(tech, router)
    got = step_log(result)
    share = math.e / (math.e + 3)
    assert [g["step"] for g in got] == [1, 2, 3] and [g["last"] for g in got] == [False, False, True]
    for g in got:
        assert g["weights"] == pytest.approx([share] + [(1 - share) / 3] * 3)
        assert g["parents"] is None
    assert result.final_answer == "A"
    assert result.candidates[0].scores["weight"] == pytest.approx(share)


def test_fk_copies_inherit_product_of_potentials():
    """Resampled at step 1 (always): every copy of a particle carries its G_1; at the last step the
    weight is exp(λ·s_T) / G_1 for the max potential, computed here by hand."""
    plan = [["r=0.5 a", "r=0.5 b", "r=0.5 c", "r=0.5 d"],
            ["r=0.9 \\boxed{A}", "r=0.2 \\boxed{B}", "r=0.6 \\boxed{C}", "r=0.4 \\boxed{D}"]]
    router, _, _ = steps_router(plan_responder(plan, 4))
    tech = ParticleSteering(method="fk", particles=4, scorer=REWARD, potential="max", lam=3.0, resample="always")
    (result,) = run(tech, router)
    first, last = step_log(result)
    assert first["weights"] == pytest.approx([0.25] * 4)  # equal potentials exp(3·0.5)
    # every particle now carries Π G = exp(1.5); its state max(0.5, r_2); G_T = exp(3·s) / exp(1.5)
    states = [max(0.5, r) for r in (0.9, 0.2, 0.6, 0.4)]
    assert last["weights"] == pytest.approx(softmax([3 * s - 1.5 for s in states]))
    assert last["weights"] == pytest.approx(softmax([3 * s for s in states]))  # Π G is common here


def test_fk_resampling_interval():
    """resample_every 2 from step 0: rewards and resampling at steps 1 and 3 (0-based 0, 2), plus the last (4)."""
    router, _, _ = steps_router(plan_responder(FK_PLAN, 4))
    tech = ParticleSteering(method="fk", particles=4, scorer=REWARD, potential="max", lam=2.0, resample="always",
                            resample_every=2, max_steps=4)
    (result,) = run(tech, router)
    expected, _, _ = simulate_fk(FK_PLAN, 4, "max", 2.0, "always", interval={0, 2})
    got = step_log(result)
    assert [g["step"] for g in got] == [e["step"] for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["weights"] == pytest.approx(e["weights"], rel=1e-9)
        assert g["parents"] == e["parents"]
