"""Particle filtering / Feynman-Kac steering over reasoning steps.

Singhal et al. 2025, "A General Framework for Inference-time Scaling and Steering of
Diffusion Models" (FK steering: potentials ``max``, ``diff``, ``sum``, resampling by ESS), and
Puri et al. 2025, "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using
Particle-Based Monte Carlo Methods" (particle filtering over reasoning steps with a process
reward model).

``particles`` partial solutions advance one step at a time (``archon.techniques.steps``).
After each step every particle that moved gets a step reward ``r_t`` and its weight is
multiplied by a potential ``G_t``:

=============  ============================================
``max``        ``G_t = exp(λ · max(r_1..r_t))``
``diff``       ``G_t = exp(λ · (r_t − r_{t−1}))``, ``r_0 = 0``
``sum``        ``G_t = exp(λ · (r_1 + ... + r_t))``
``current``    ``G_t = exp(λ · r_t)``
=============  ============================================

At a particle's last step (answer, end, caps, budget) the potential is instead
``exp(λ · r_T) / Π_{s<T} G_s`` over its lineage, so the product of all potentials is
``exp(λ · r(x))`` and the target stays ``p(x) · exp(λ · r(x))`` whatever the potential.

Resampling (with replacement, over all particles) happens when the effective sample size
``ESS = 1 / Σ w_i²`` of the normalised weights falls below ``ess_threshold · particles``
(``resample: ess``), after every step (``always``), or never (``never``); ``multinomial`` or
``systematic``, drawing from ``ctx.rng`` (seeded per node and query: reproducible). Weights
reset to uniform after resampling. A resampled duplicate keeps sampling at temperature > 0
with its own seed (``seed_offset`` = f(step, particle slot)), so duplicates get distinct
continuations and the call cache never hands two of them the same text.

Every step is one round with one generation request per live particle (the engine merges all
particles of all queries into one backend request per model), then at most one round of
reward requests. The output is every particle, best first, with ``scores`` ``reward`` (the last
step reward) and ``weight`` (normalised importance weight): ``final: best`` orders by reward
(then weight); ``final: weighted_vote`` puts the answer with the largest total weight first
(a ``votes`` score holds each answer's weight share).
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, field_validator

from archon.data import Candidate
from archon.techniques.base import Defaults, NodeContext, Program
from archon.techniques.steps import NAN, RewardStepParams, StepTechnique, Trace, first_sample, is_nan
from archon.techniques.vote import vote_key
from archon.verifiers.answers import extract_final_answer

Potential = Literal["max", "diff", "sum", "current"]


class ParticleParams(RewardStepParams):
    particles: int = Field(4, ge=1, le=512, description="number of particles k")
    potential: Potential = Field("max", description="max | diff | sum | current (FK steering potentials)")
    lam: float = Field(10.0, ge=0.0, description="λ: steering strength; the target is p(x)·exp(λ·r(x))")
    resample: Literal["ess", "always", "never"] = Field("ess", description="when to resample")
    ess_threshold: float = Field(0.5, gt=0.0, le=1.0, description="resample when ESS < ess_threshold · particles")
    resampling: Literal["multinomial", "systematic"] = Field("systematic", description="resampling scheme")
    final: Literal["best", "weighted_vote"] = Field("best", description="best particle by reward, or the answer "
                                                                         "with the largest total weight")

    @field_validator("temperature")
    @classmethod
    def _positive_temperature(cls, value: float | None) -> float | None:
        if value is not None and value <= 0.0:
            raise ValueError("particles need temperature > 0 (resampled duplicates must diverge)")
        return value


# -- the maths, as plain functions ------------------------------------------------------------

def log_potential(kind: str, lam: float, rewards: list[float]) -> float:
    """log G_t for an intermediate step, given the particle's rewards r_1..r_t."""
    if kind == "max":
        return lam * max(rewards)
    if kind == "diff":
        return lam * (rewards[-1] - (rewards[-2] if len(rewards) > 1 else 0.0))
    if kind == "sum":
        return lam * sum(rewards)
    if kind == "current":
        return lam * rewards[-1]
    raise ValueError(f"unknown potential {kind!r}")


def normalize(log_weights: list[float]) -> list[float]:
    peak = max(log_weights)
    ws = [math.exp(lw - peak) for lw in log_weights]
    total = sum(ws)
    return [w / total for w in ws]


def effective_sample_size(weights: list[float]) -> float:
    """``1 / Σ w_i²`` of normalised weights: k when uniform, 1 when one particle has all the mass."""
    return 1.0 / sum(w * w for w in weights)


def resample_indices(weights: list[float], k: int, method: str, rng: random.Random) -> list[int]:
    """k ancestor indices drawn with replacement in proportion to ``weights`` (sorted)."""
    cumulative = []
    acc = 0.0
    for w in weights:
        acc += w
        cumulative.append(acc)
    total = cumulative[-1]
    last = len(weights) - 1
    if method == "systematic":
        u0 = rng.random() / k
        points = [(u0 + i / k) * total for i in range(k)]
    elif method == "multinomial":
        points = sorted(rng.random() * total for _ in range(k))
    else:
        raise ValueError(f"unknown resampling {method!r}")
    return [min(bisect.bisect_right(cumulative, u), last) for u in points]


@dataclass
class Particle:
    trace: Trace
    rewards: list[float] = field(default_factory=list)
    log_g: float = 0.0      # Σ log G_s along the lineage (for the final correction)
    log_w: float = 0.0      # log weight since the last resampling
    ancestors: list[int] = field(default_factory=list)

    def copy(self, ancestor: int) -> Particle:
        return Particle(self.trace, list(self.rewards), self.log_g, 0.0, [*self.ancestors, ancestor])


class ParticleSteering(StepTechnique):
    name = "particle_steering"
    Params = ParticleParams
    description = "particle filtering / Feynman-Kac steering over reasoning steps with a step reward"
    params: ParticleParams

    def output_count(self, inputs: int) -> int:
        return self.params.particles

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.params.model or defaults.model, *self.reward_models(defaults)]))

    def _weigh(self, pt: Particle, reward: float, new_step: bool = True) -> None:
        p = self.params
        if new_step:
            pt.rewards.append(reward)
        # at the last step the product of all potentials becomes exp(λ·r_T)
        g = p.lam * reward - pt.log_g if pt.trace.done else log_potential(p.potential, p.lam, pt.rewards)
        pt.log_g += g
        pt.log_w += g

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        k = p.particles
        question = ctx.query.question_text()
        temperature = self.effective_temperature(ctx)
        if temperature <= 0.0:
            ctx.note("particles need temperature > 0; sampling at 1.0")
            temperature = 1.0
        parts = [Particle(self.new_trace()) for _ in range(k)]
        resampled_at: list[int] = []
        min_ess = float(k)
        missing = skipped = 0
        step = 0
        while True:
            live = [i for i, pt in enumerate(parts) if not pt.trace.done]
            if not live:
                break
            requests = [self.step_request(ctx, parts[i].trace, seed_offset=1 + step * k + i,
                                          logprobs=self.wants_logprobs(), temperature=temperature) for i in live]
            results = yield list(requests)
            moved = []
            for i, res in zip(live, results, strict=True):
                sample = first_sample(res)
                parts[i].trace = self.extend(parts[i].trace, sample)
                if sample is None:
                    skipped += 1
                    # stopped by the budget: close its weight with its last reward
                    self._weigh(parts[i], parts[i].rewards[-1] if parts[i].rewards else 0.0, new_step=False)
                else:
                    moved.append((i, sample))
            if moved:
                rewards = yield from self.step_rewards(ctx, question, [parts[i].trace for i, _ in moved],
                                                       [s for _, s in moved])
                for (i, _), r in zip(moved, rewards, strict=True):
                    if is_nan(r):
                        missing += 1
                        r = parts[i].rewards[-1] if parts[i].rewards else 0.0
                    self._weigh(parts[i], float(r))
            step += 1
            if not any(not pt.trace.done for pt in parts):
                break
            weights = normalize([pt.log_w for pt in parts])
            ess = effective_sample_size(weights)
            min_ess = min(min_ess, ess)
            if p.resample == "always" or (p.resample == "ess" and ess < p.ess_threshold * k):
                idx = resample_indices(weights, k, p.resampling, ctx.rng)
                parts = [parts[j].copy(j) for j in idx]
                resampled_at.append(step)
        if skipped:
            ctx.note(f"particles: {skipped} particle steps skipped (budget)")
        if missing:
            ctx.note(f"particles: {missing} step rewards missing; kept the previous reward")
        ctx.note(f"particles: k={k}, {step} steps, resampled after steps {resampled_at or 'never'} "
                 f"(min ESS {min_ess:.2f}, threshold {p.ess_threshold * k:.2f}); final: {p.final}")
        return self._output(ctx, parts)

    def _output(self, ctx: NodeContext, parts: list[Particle]) -> list[Candidate]:
        weights = normalize([pt.log_w for pt in parts])
        model = self.params.model or ctx.defaults.model
        cands = []
        for i, (pt, w) in enumerate(zip(parts, weights, strict=True)):
            text = pt.trace.text
            reward = pt.rewards[-1] if pt.rewards else NAN
            cands.append(Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=model,
                                   scores={"weight": w} if is_nan(reward) else {"reward": reward, "weight": w},
                                   metadata={"particle": i, "ancestors": pt.ancestors, "steps": len(pt.trace),
                                             "finish": pt.trace.finish, "rewards": pt.rewards,
                                             "step_scores": self.step_scores(ctx, pt.trace), "score_key": "reward"}))
        if not any(c.text for c in cands):
            ctx.note("particles: no particle wrote a step")
            return []

        def by_reward(i: int) -> tuple[bool, float, float, int]:
            r = cands[i].scores.get("reward", NAN)
            return (is_nan(r), -r if not is_nan(r) else 0.0, -weights[i], i)

        order = sorted(range(len(cands)), key=by_reward)
        if self.params.final == "weighted_vote":
            totals: dict[str, float] = {}
            for c, w in zip(cands, weights, strict=True):
                totals[vote_key(c)] = totals.get(vote_key(c), 0.0) + w
            first_seen = {}
            for pos, i in enumerate(order):
                first_seen.setdefault(vote_key(cands[i]), pos)
            order = sorted(order, key=lambda i: (-totals[vote_key(cands[i])], first_seen[vote_key(cands[i])]))
            cands = [c.derive(scores={**c.scores, "votes": totals[vote_key(c)]}) for c in cands]
        return [cands[i] for i in order]


__all__ = ["ParticleParams", "ParticleSteering", "effective_sample_size", "log_potential", "normalize",
           "resample_indices"]
