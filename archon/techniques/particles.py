"""Particle filtering (Puri et al.) and Feynman-Kac steering (Singhal et al.) over reasoning steps.

``particles`` partial solutions advance one step at a time (``archon.techniques.steps``); a
step reward scores each partial; particles are resampled in proportion to their weights.
Two weightings, each as its reference implementation does it:

**``method: pf``** (default): Puri et al. 2025, "A Probabilistic Inference Approach to
Inference-Time Scaling of LLMs using Particle-Based Monte Carlo Methods"; reference:
its_hub ``algorithms/particle_gibbs.py`` (``ParticleFiltering``) and the paper's
``particle_gibbs.py`` (``resample_inactive=True``).

- After every step a particle's log-weight is ``logit(r)`` of its reward, where ``r`` is its
  step rewards aggregated (``aggregate``: ``last`` as the paper's Qwen PRM, ``min``, ``prod``).
  It is *not* accumulated over steps: the current reward is the whole weight.
- Weights are ``softmax(logit(r) / softmax_temperature)`` over ALL particles; a finished
  particle keeps competing with its final log-weight until every particle is done.
- Multinomial resampling of all ``particles`` slots after **every** step (also the last one,
  as its_hub does); copies keep their parent's steps, rewards and finished state.
- The answer is the particle with the largest log-weight (``final: best``, its_hub's
  ``argmax``) or the answer with the largest total weight (``final: weighted_vote``).

**``method: fk``**: Singhal et al. 2025, "A General Framework for Inference-time Scaling and
Steering of Diffusion Models"; reference: ``fkd_class.py`` (``FKD.resample``) of
zacharyhorvitz/Fk-Diffusion-Steering.

- Steps ``t = 0, 1, ...`` (one generation round each). Resampling steps are
  ``resample_start, resample_start + resample_every, ... <= resample_end`` plus the **last
  step**, which for traces of unequal length is defined here as the round after which every
  particle has finished (answer, end, caps, budget; at the latest ``max_steps − 1``), or
  the step whose resampling left only finished particles (the correction then follows it).
- At a resampling step every particle whose trace changed since it was last scored gets a
  reward ``r`` (as in the reference, rewards are only computed at resampling steps) and the
  particle's reward state ``s`` (start ``0``) and potential ``G`` are

  ============  ==========================  ========================
  ``max``       ``s' = max(r, s)``          ``G = exp(λ·s')``
  ``add``       ``s' = s + r``              ``G = exp(λ·s')``
  ``diff``      ``s' = r``                  ``G = exp(λ·(r − s))``
  ``rt``        ``s' = r``                  ``G = exp(λ·r)``
  ============  ==========================  ========================

  A particle that finished earlier gets **no new reward**: its state stays ``s`` and its
  potential is evaluated on it (``exp(λ·s)``; ``diff``: 1). It is carried unchanged.
- At the last step, for ``max``/``add``/``rt``, ``G = exp(λ·s') / Π G`` where the product runs
  over the potentials its lineage was resampled with, applied **once, to all particles
  together**, so the target is ``p(x)·exp(λ·r(x))``.
- ``G`` is clamped to ``1e10``; the normalised ``G`` are the weights (the reference does not carry
  weights between resampling steps). ``resample: ess`` resamples when
  ``ESS = 1/Σw² < ess_threshold·particles`` (otherwise the state is updated and ``Π G`` is
  not), ``always`` at every resampling step, ``never`` not at all. A copy inherits its
  parent's state, ``Π G · G`` and reward history.
- The answer is the particle with the largest state ``s`` (the reference's ``argmax`` of the
  population rewards), or the weighted vote.

Both draw from ``ctx.rng`` (seeded per node and query: reproducible): ``multinomial`` is
``rng.choices`` (its_hub's ``random.choices``), ``systematic`` is an archon option. A duplicate
keeps sampling at temperature > 0 with its own seed (``seed_offset = 1 + step·k + slot``), so
duplicates continue differently and the call cache keeps them apart. Each step is one round with
one generation request per live particle (the engine merges particles of all queries into one
backend request per model) and at most one reward round.

Every resampling step is written to the trace notes as ``particles step {json}`` with the
weights, the ESS and the parents of the new population (``null`` when it was not resampled).
Output: every particle, best first, with scores ``reward`` (aggregated reward) and ``weight``
(final normalised weight), and metadata ``particle``, ``ancestors``, ``rewards``, ``steps``,
``finish``, ``finished_at`` (the step at which it finished, 1-based) and ``last_step``.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator, model_validator

from archon.backends.types import Sample
from archon.data import Candidate
from archon.techniques.base import Defaults, ModelRequest, ModelResult, NodeContext, Program
from archon.techniques.steps import (
    RewardStepParams,
    StepTechnique,
    Trace,
    aggregate_rewards,
    first_sample,
    is_nan,
)
from archon.techniques.vote import vote_key
from archon.verifiers.answers import extract_final_answer

Potential = Literal["max", "add", "diff", "rt"]
ScoreProgram = Generator[list[ModelRequest], list[ModelResult], dict[int, float]]
_ALIASES = {"sum": "add", "current": "rt"}  # archon's earlier names
LOG_CLAMP = math.log(1e10)                  # fkd_class.py clamps potentials to [0, 1e10]
LOGIT_EPS = 1e-7                            # its_hub clips rewards to [1e-7, 1 - 1e-7]


class ParticleParams(RewardStepParams):
    method: Literal["pf", "fk"] = Field("pf", description="pf: Puri et al. particle filtering (its_hub); "
                                                          "fk: Feynman-Kac steering (fkd_class.py)")
    particles: int = Field(4, ge=1, le=512, description="number of particles k")
    aggregate: Literal["last", "min", "prod"] = Field("last", description="a particle's reward from its step "
                                                                          "rewards")
    softmax_temperature: float = Field(1.0, gt=0.0, description="pf: weights = softmax(logit(r) / this)")
    potential: Potential = Field("max", description="fk: max | add | diff | rt")
    lam: float = Field(10.0, ge=0.0, description="fk: λ, the target is p(x)·exp(λ·r(x))")
    resample: Literal["ess", "always", "never"] = Field("ess", description="fk: when to resample at a "
                                                                           "resampling step")
    ess_threshold: float = Field(0.5, gt=0.0, le=1.0, description="fk: resample when ESS < this · particles")
    resample_every: int = Field(1, ge=1, description="fk: resampling interval in steps (resample_frequency)")
    resample_start: int = Field(0, ge=-1, description="fk: first resampling step (0-based)")
    resample_end: int | None = Field(None, ge=0, description="fk: last interval step (default: max_steps - 1)")
    resampling: Literal["multinomial", "systematic"] = Field("multinomial", description="resampling scheme")
    final: Literal["best", "weighted_vote"] = Field("best", description="best particle, or the answer with the "
                                                                         "largest total weight")

    @field_validator("potential", mode="before")
    @classmethod
    def _alias(cls, value: object) -> object:
        return _ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float | None) -> float | None:
        if value is not None and value <= 0.0:
            raise ValueError("particles need temperature > 0 (resampled duplicates must diverge)")
        return value

    @model_validator(mode="after")
    def _pf_needs_probabilities(self) -> ParticleParams:
        if self.method == "pf" and self.scorer.uses_generation_logprobs():
            raise ValueError("method: pf weighs particles by logit(r) of a reward in [0, 1]; scorer: logprob "
                             "gives log-probabilities. Use a judge, yes/no or PRM scorer, or method: fk")
        return self


# -- the maths, as plain functions ------------------------------------------------------------

def logit(r: float) -> float:
    """``log(r / (1 − r))`` with ``r`` clipped to ``[1e-7, 1 − 1e-7]`` (its_hub's ``_inv_sigmoid``)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"particle filtering needs rewards in [0, 1], got {r}")
    r = min(max(r, LOGIT_EPS), 1.0 - LOGIT_EPS)
    return math.log(r / (1.0 - r))


def normalize(log_weights: list[float]) -> list[float]:
    """Softmax of log-weights; ``-inf`` entries get 0; all ``-inf``: uniform."""
    peak = max(log_weights)
    if peak == -math.inf:
        return [1.0 / len(log_weights)] * len(log_weights)
    ws = [math.exp(lw - peak) for lw in log_weights]
    total = sum(ws)
    return [w / total for w in ws]


def effective_sample_size(weights: list[float]) -> float:
    """``1 / Σ w_i²`` of normalised weights: k when uniform, 1 when one particle has all the mass."""
    return 1.0 / sum(w * w for w in weights)


def resample_indices(weights: list[float], k: int, method: str, rng: random.Random) -> list[int]:
    """k ancestor indices drawn with replacement in proportion to ``weights``.

    ``multinomial``: ``rng.choices`` (slot j gets draw j, unsorted, as its_hub's
    ``random.choices``); ``systematic``: one uniform offset, sorted."""
    if method == "multinomial":
        return rng.choices(range(len(weights)), weights=weights, k=k)
    if method != "systematic":
        raise ValueError(f"unknown resampling {method!r}")
    cumulative = []
    acc = 0.0
    for w in weights:
        acc += w
        cumulative.append(acc)
    total = cumulative[-1]
    u0 = rng.random() / k
    return [min(bisect.bisect_right(cumulative, (u0 + i / k) * total), len(weights) - 1) for i in range(k)]


def fk_state(kind: str, state: float, reward: float | None) -> float:
    """The reward state after a resampling step (``reward`` None: no new reward)."""
    if reward is None:
        return state
    if kind == "max":
        return max(reward, state)
    if kind == "add":
        return state + reward
    return reward  # diff, rt


def fk_log_potential(kind: str, lam: float, state: float, new_state: float, reward: float | None) -> float:
    """``log G`` at an intermediate resampling step."""
    if kind == "diff":
        return lam * (reward - state) if reward is not None else 0.0
    return lam * new_state


@dataclass
class Particle:
    trace: Trace
    rewards: list[float] = field(default_factory=list)
    scored: int = 0             # trace steps covered by the last reward
    log_w: float = 0.0          # pf: logit(aggregated reward); fk: log G at the last resampling step
    state: float = 0.0          # fk: the reward state s
    log_prod: float = 0.0       # fk: log Π G over the resamplings of its lineage
    finished_at: int | None = None
    ancestors: list[int] = field(default_factory=list)
    sample: Sample | None = None  # the last step's sample (self_logprob reads its log-probs)

    @property
    def changed(self) -> bool:
        return len(self.trace) > self.scored

    def copy(self, ancestor: int, log_g: float = 0.0) -> Particle:
        return Particle(self.trace, list(self.rewards), self.scored, self.log_w, self.state,
                        self.log_prod + log_g, self.finished_at, [*self.ancestors, ancestor], self.sample)


class ParticleSteering(StepTechnique):
    name = "particle_steering"
    Params = ParticleParams
    description = "particle filtering (Puri et al.) / Feynman-Kac steering over reasoning steps with a step reward"
    params: ParticleParams

    def output_count(self, inputs: int) -> int:
        return self.params.particles

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.params.model or defaults.model, *self.reward_models(defaults)]))

    def _score(self, ctx: NodeContext, parts: list[Particle], which: list[int]) -> ScoreProgram:
        """New rewards for particles ``which`` (the one reward call site); returns
        ``{index: aggregated reward}``, without the ones that got no signal."""
        if not which:
            return {}
        rewards = yield from self.step_rewards(ctx, ctx.query.question_text(), [parts[i].trace for i in which],
                                               [parts[i].sample for i in which])
        out: dict[int, float] = {}
        for i, r in zip(which, rewards, strict=True):
            pt = parts[i]
            pt.scored = len(pt.trace)
            if is_nan(r):
                continue
            pt.rewards.append(float(r))
            out[i] = aggregate_rewards(pt.rewards, self.params.aggregate)
        return out

    def _resampling_steps(self) -> set[int]:
        p = self.params
        end = p.resample_end if p.resample_end is not None else p.max_steps - 1
        return set(range(p.resample_start, end + 1, p.resample_every))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        k = p.particles
        temperature = self.effective_temperature(ctx)
        if temperature <= 0.0:
            ctx.note("particles need temperature > 0; sampling at 1.0")
            temperature = 1.0
        parts = [Particle(self.new_trace()) for _ in range(k)]
        interval = self._resampling_steps()
        resampled_at: list[int] = []
        missing = skipped = 0
        step = 0
        while any(not pt.trace.done for pt in parts):
            live = [i for i, pt in enumerate(parts) if not pt.trace.done]
            requests = [self.step_request(ctx, parts[i].trace, seed_offset=1 + step * k + i,
                                          logprobs=self.wants_logprobs(), temperature=temperature) for i in live]
            results = yield list(requests)
            for i, res in zip(live, results, strict=True):
                sample = first_sample(res)
                parts[i].trace = self.extend(parts[i].trace, sample)
                parts[i].sample = sample if sample is not None else parts[i].sample
                skipped += sample is None
                if parts[i].trace.done:
                    parts[i].finished_at = step + 1
            last = all(pt.trace.done for pt in parts)
            if p.method == "pf" or step in interval or last:
                changed = [i for i, pt in enumerate(parts) if pt.changed]
                new = yield from self._score(ctx, parts, changed)
                missing += len(changed) - len(new)
                weigh = self._weigh_pf if p.method == "pf" else self._weigh_fk
                parts, resampled = weigh(ctx, parts, new, step, last)
                if p.method == "fk" and not last and all(pt.trace.done for pt in parts):
                    # resampling left only finished particles: this is the last step after all
                    parts, again = self._weigh_fk(ctx, parts, {}, step, True)
                    resampled = resampled or again
                if resampled:
                    resampled_at.append(step + 1)
            step += 1
        if skipped:
            ctx.note(f"particles: {skipped} particle steps skipped (budget)")
        if missing:
            ctx.note(f"particles: {missing} step rewards missing; kept the previous reward")
        ctx.note(f"particles ({p.method}): k={k}, {step} steps, resampled after steps {resampled_at or 'never'}; "
                 f"final: {p.final}")
        return self._output(ctx, parts, step)

    # -- weighting and resampling ------------------------------------------------------------

    def _log_step(self, ctx: NodeContext, step: int, weights: list[float], parents: list[int] | None,
                  last: bool) -> None:
        ctx.note("particles step " + json.dumps({
            "step": step + 1, "last": last, "weights": [round(w, 12) for w in weights],
            "ess": round(effective_sample_size(weights), 12), "parents": parents}))

    def _weigh_pf(self, ctx: NodeContext, parts: list[Particle], new: dict[int, float], step: int,
                  last: bool) -> tuple[list[Particle], bool]:
        p = self.params
        for i, r in new.items():
            parts[i].log_w = logit(r)
        weights = normalize([pt.log_w / p.softmax_temperature for pt in parts])
        idx = resample_indices(weights, p.particles, p.resampling, ctx.rng)
        self._log_step(ctx, step, weights, idx, last)
        return [parts[j].copy(j) for j in idx], True

    def _weigh_fk(self, ctx: NodeContext, parts: list[Particle], new: dict[int, float], step: int,
                  last: bool) -> tuple[list[Particle], bool]:
        p = self.params
        states, log_g = [], []
        for i, pt in enumerate(parts):
            reward = new.get(i)
            s = fk_state(p.potential, pt.state, reward)
            if last and p.potential != "diff":
                g = p.lam * s - pt.log_prod  # the final correction exp(λ·s) / Π G, once, for everyone
            else:
                g = fk_log_potential(p.potential, p.lam, pt.state, s, reward)
            states.append(s)
            log_g.append(-math.inf if math.isnan(g) else min(g, LOG_CLAMP))
        weights = normalize(log_g)
        ess = effective_sample_size(weights)
        if p.resample == "always" or (p.resample == "ess" and ess < p.ess_threshold * p.particles):
            idx = resample_indices(weights, p.particles, p.resampling, ctx.rng)
            out = []
            for j in idx:
                child = parts[j].copy(j, log_g[j])
                child.state, child.log_w = states[j], log_g[j]
                out.append(child)
            self._log_step(ctx, step, weights, idx, last)
            return out, True
        for pt, s, g in zip(parts, states, log_g, strict=True):
            pt.state, pt.log_w = s, g
        self._log_step(ctx, step, weights, None, last)
        return parts, False

    # -- output -----------------------------------------------------------------------------

    def _output(self, ctx: NodeContext, parts: list[Particle], steps: int) -> list[Candidate]:
        p = self.params
        if p.method == "pf":
            weights = normalize([pt.log_w / p.softmax_temperature for pt in parts])
            keys = [pt.log_w for pt in parts]
        else:
            weights = normalize([pt.log_w for pt in parts])
            keys = [pt.state for pt in parts]
        model = p.model or ctx.defaults.model
        cands = []
        for i, (pt, w) in enumerate(zip(parts, weights, strict=True)):
            text = pt.trace.text
            reward = aggregate_rewards(pt.rewards, p.aggregate)
            cands.append(Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=model,
                                   scores={"weight": w} if is_nan(reward) else {"reward": reward, "weight": w},
                                   metadata={"particle": i, "ancestors": pt.ancestors, "steps": len(pt.trace),
                                             "finish": pt.trace.finish, "rewards": pt.rewards,
                                             "finished_at": pt.finished_at, "last_step": steps,
                                             "step_scores": self.step_scores(ctx, pt.trace), "score_key": "reward"}))
        if not any(c.text for c in cands):
            ctx.note("particles: no particle wrote a step")
            return []
        order = sorted(range(len(cands)), key=lambda i: (-keys[i], i))  # argmax: the first of the best
        if p.final == "weighted_vote":
            totals: dict[str, float] = {}
            for c, w in zip(cands, weights, strict=True):
                totals[vote_key(c)] = totals.get(vote_key(c), 0.0) + w
            first_seen: dict[str, int] = {}
            for pos, i in enumerate(order):
                first_seen.setdefault(vote_key(cands[i]), pos)
            order = sorted(order, key=lambda i: (-totals[vote_key(cands[i])], first_seen[vote_key(cands[i])]))
            cands = [c.derive(scores={**c.scores, "votes": totals[vote_key(c)]}) for c in cands]
        return [cands[i] for i in order]


__all__ = ["ParticleParams", "ParticleSteering", "effective_sample_size", "fk_log_potential", "fk_state", "logit",
           "normalize", "resample_indices"]
