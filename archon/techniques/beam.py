"""Step-level beam search with a process reward, and DVTS.

Beam search over reasoning steps guided by a process reward (Yao et al. 2023; Snell et al.
2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling Model
Parameters"), and **Diverse Verifier Tree Search** (``diverse: true``; Beeching, Tunstall &
Rush 2024, "Scaling test-time compute with open models", Hugging Face).

- ``diverse: false``: the root is expanded with ``beam_width · expand`` samples; after each
  step every live beam is expanded with ``expand`` samples, every expansion gets a step reward
  (``archon.techniques.steps``), and the top ``beam_width`` expansions by aggregated reward
  are kept (across all beams). Kept beams that are finished (answer, end, caps) leave the
  search; the rest continue, so the search ends when no beam is live.
- ``diverse: true`` (DVTS): ``beam_width`` independent subtrees; each expands its own single
  beam with ``expand`` samples per step and keeps its own best (greedy by reward). Subtrees
  never compete, which keeps the final answers diverse.

A beam's reward aggregates its step rewards: ``last`` (default, as in Snell et al.),
``min`` or ``mean``. Every step is one round with one request per live beam (``n=expand``;
seeds differ per step and beam so equal prefixes still diverge) and at most one reward round;
the engine batches them across beams and queries into one backend request per model.
The output is every finished beam, best first, with a ``reward`` score.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from archon.data import Candidate
from archon.scoring import order_by_score
from archon.techniques.base import Defaults, NodeContext, Program
from archon.techniques.steps import NAN, RewardStepParams, StepTechnique, Trace, is_nan, samples_of
from archon.verifiers.answers import extract_final_answer


class BeamParams(RewardStepParams):
    beam_width: int = Field(4, ge=1, le=256, description="beams kept per step (DVTS: number of subtrees)")
    expand: int = Field(4, ge=1, le=256, description="samples per beam per step (m)")
    diverse: bool = Field(False, description="DVTS: beam_width independent subtrees, each keeping its own best")
    aggregate: Literal["last", "min", "mean"] = Field("last", description="how a beam's step rewards combine")


@dataclass
class Beam:
    trace: Trace
    rewards: list[float] = field(default_factory=list)
    subtree: int = 0

    def score(self, how: str) -> float:
        values = [r for r in self.rewards if not is_nan(r)]
        if not values:
            return NAN
        if how == "min":
            return min(values)
        if how == "mean":
            return sum(values) / len(values)
        return values[-1]


def best_first(beams: list[Beam], how: str) -> list[Beam]:
    """Highest aggregated reward first; beams without a reward last; ties keep the order."""
    return [beams[i] for i in order_by_score([b.score(how) for b in beams])]


class BeamSearch(StepTechnique):
    name = "beam_search"
    Params = BeamParams
    description = "step-level beam search with a process reward (diverse: DVTS)"
    params: BeamParams

    def output_count(self, inputs: int) -> int:
        return self.params.beam_width

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.params.model or defaults.model, *self.reward_models(defaults)]))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        p = self.params
        width, m, how = p.beam_width, p.expand, p.aggregate
        question = ctx.query.question_text()
        root = self.new_trace()
        active = [Beam(root, subtree=s) for s in range(width)] if p.diverse else [Beam(root)]
        finished: list[Beam] = []
        step = missing = 0
        while active:
            if not p.diverse and step == 0:
                requests = [self.step_request(ctx, root, n=width * m, seed_offset=1, logprobs=self.wants_logprobs())]
            else:
                requests = [self.step_request(ctx, b.trace, n=m, seed_offset=1 + step * width + j,
                                              logprobs=self.wants_logprobs())
                            for j, b in enumerate(active)]
            results = yield list(requests)
            expansions: list[Beam] = []
            samples = []
            for b, res in zip(active, results, strict=True):
                got = samples_of(res)
                if not got:
                    finished.append(Beam(b.trace.stopped("budget"), b.rewards, b.subtree))
                    continue
                for s in got:
                    expansions.append(Beam(self.extend(b.trace, s), list(b.rewards), b.subtree))
                    samples.append(s)
            if not expansions:
                ctx.note(f"beam: step {step + 1} skipped (budget)")
                break
            rewards = yield from self.step_rewards(ctx, question, [e.trace for e in expansions], samples)
            for e, r in zip(expansions, rewards, strict=True):
                if is_nan(r):
                    missing += 1
                    r = e.rewards[-1] if e.rewards else NAN
                e.rewards.append(r)
            if p.diverse:
                kept = []
                for s in dict.fromkeys(e.subtree for e in expansions):
                    kept.append(best_first([e for e in expansions if e.subtree == s], how)[0])
            else:
                kept = best_first(expansions, how)[:width]
            finished += [e for e in kept if e.trace.done]
            active = [e for e in kept if not e.trace.done]
            step += 1
        if missing:
            ctx.note(f"beam: {missing} step rewards missing")
        ctx.note(f"beam{' (DVTS)' if p.diverse else ''}: width {width}, expand {m}, {step} steps, "
                 f"{len(finished)} finished beams")
        model = p.model or ctx.defaults.model
        out = []
        for b in best_first(finished, how):
            if not b.trace.steps:
                continue
            text = b.trace.text
            out.append(Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=model,
                                 scores={} if is_nan(b.score(how)) else {"reward": b.score(how)},
                                 metadata={"subtree": b.subtree, "steps": len(b.trace), "finish": b.trace.finish,
                                           "rewards": b.rewards, "step_scores": self.step_scores(ctx, b.trace),
                                           "score_key": "reward"}))
        if not out:
            ctx.note("beam: no beam wrote a step")
        return out


__all__ = ["Beam", "BeamParams", "BeamSearch", "best_first"]
