"""Step-level beam search with a process reward, and DVTS, as search-and-learn runs them.

Snell et al. 2024, "Scaling LLM Test-Time Compute Optimally can be More Effective than Scaling
Model Parameters" (beam search over steps with a PRM), and **Diverse Verifier Tree Search**
(``diverse: true``; Beeching, Tunstall & Rush 2024, "Scaling test-time compute with open
models"). Reference: huggingface/search-and-learn ``src/sal/search/beam_search.py`` and
``diverse_verifier_tree_search.py``. With search-and-learn's names, ``N = beam_width · expand``
is ``n`` and ``expand`` is its ``beam_width`` M; ``max_steps`` is ``num_iterations``.

- ``diverse: false`` (beam search): N active beams each write one step (the first iteration:
  N samples from the root). Every expansion gets a step reward. Expansions that **finished**
  (answer, end, caps) are **set aside** as completed beams and do not compete; of the others
  the best ``beam_width`` by aggregated reward are kept, and the active set is **topped back up
  to N** by repeating them round-robin (search-and-learn's ``(active * repeats)[:n]``; a
  kept beam with c copies is one request with ``n=c``). The output is the first N completed
  beams (``sort_completed: true``: the best N), best first.
- ``diverse: true`` (DVTS): N / M = ``beam_width`` independent subtrees. Each active subtree
  writes ``expand`` samples per step and moves to its best one; a subtree stops when that best
  one finished. The output is **all N completions**: for each subtree, the ``expand`` siblings
  of its last expansion, each with its own reward, ready for a (weighted) vote.
- The last iteration (``max_steps − 1``) writes **to the end** (no delimiter stop).
- ``lookahead: k``: each expansion that has not finished is continued ``k`` more steps greedily
  (temperature 0) and rewarded on that longer text; the extra steps are then dropped
  (search-and-learn's ``generate_k_steps``; its beam_search.py generates them but scores the
  beam without them, its DVTS scores them; archon scores them in both).

A beam's reward aggregates its step rewards: ``last`` (default), ``min`` or ``prod`` (the
reference's ``agg_strategy``), or ``mean`` (archon's addition). Every step is one round
of generation requests (one per distinct beam, ``n`` = its copies; seeds differ per step and
beam), then ``lookahead`` greedy rounds and one reward round. Output candidates carry a
``reward`` score and metadata ``subtree``, ``steps``, ``finish``, ``rewards``, ``completed_at``.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field

from archon.backends.types import Sample
from archon.data import Candidate
from archon.scoring import order_by_score
from archon.techniques.base import Defaults, ModelRequest, ModelResult, NodeContext, Program
from archon.techniques.steps import (
    NAN,
    RewardStepParams,
    StepTechnique,
    Trace,
    aggregate_rewards,
    first_sample,
    is_nan,
    samples_of,
)
from archon.verifiers.answers import extract_final_answer

RewardsProgram = Generator[list[ModelRequest], list[ModelResult], list[float]]


class BeamParams(RewardStepParams):
    beam_width: int = Field(4, ge=1, le=256, description="beams kept per step, N / M (DVTS: number of subtrees)")
    expand: int = Field(4, ge=1, le=256, description="M: samples per kept beam per step (search-and-learn's "
                                                     "beam_width, default 4)")
    diverse: bool = Field(False, description="DVTS: beam_width independent subtrees, each keeping its own best")
    aggregate: Literal["last", "min", "prod", "mean"] = Field("last", description="how a beam's step rewards "
                                                                                  "combine")
    lookahead: int = Field(0, ge=0, le=16, description="greedy steps rolled out before an expansion is rewarded")
    sort_completed: bool = Field(False, description="beam search: output the best N completed beams instead of "
                                                    "the first N")


@dataclass
class Beam:
    trace: Trace
    rewards: list[float] = field(default_factory=list)
    subtree: int = 0
    completed_at: int | None = None

    def score(self, how: str) -> float:
        return aggregate_rewards(self.rewards, how)


def best_first(beams: list[Beam], how: str) -> list[Beam]:
    """Highest aggregated reward first; beams without a reward last; ties keep the order."""
    return [beams[i] for i in order_by_score([b.score(how) for b in beams])]


def top_up(kept: list[Beam], n: int) -> list[tuple[Beam, int]]:
    """``(beam, copies)``: the kept beams repeated round-robin to ``n`` slots."""
    slots = [kept[i % len(kept)] for i in range(n)]
    return [(b, sum(1 for s in slots if s is b)) for b in kept if any(s is b for s in slots)]


class BeamSearch(StepTechnique):
    name = "beam_search"
    Params = BeamParams
    description = "step-level beam search with a process reward (diverse: DVTS), as search-and-learn"
    params: BeamParams

    def output_count(self, inputs: int) -> int:
        return self.params.beam_width

    def models(self, defaults: Defaults) -> list[str]:
        return list(dict.fromkeys([self.params.model or defaults.model, *self.reward_models(defaults)]))

    # -- shared pieces ------------------------------------------------------------------------

    def _expand(self, ctx: NodeContext, groups: list[tuple[Beam, int]], step: int) -> Program:
        """One step for every group (``n`` samples each): the expansions, and the beams whose call
        was skipped for the budget."""
        last = step == self.params.max_steps - 1
        stride = self.params.beam_width * self.params.expand  # never fewer groups than this: seeds stay distinct
        requests = [self.step_request(ctx, b.trace, n=n, seed_offset=1 + step * stride + j,
                                      logprobs=self.wants_logprobs(), to_end=last)
                    for j, (b, n) in enumerate(groups)]
        results = yield list(requests)
        expansions: list[Beam] = []
        samples: list[Sample] = []
        skipped: list[Beam] = []
        for (b, _), res in zip(groups, results, strict=True):
            got = samples_of(res)
            if not got:
                skipped.append(Beam(b.trace.stopped("budget"), list(b.rewards), b.subtree, step + 1))
            for s in got:
                expansions.append(Beam(self.extend(b.trace, s), list(b.rewards), b.subtree))
                samples.append(s)
        return expansions, samples, skipped

    def _reward(self, ctx: NodeContext, expansions: list[Beam], samples: list[Sample], step: int) -> Program:
        """Append one step reward to every expansion (after ``lookahead`` greedy steps)."""
        traces = yield from self._lookahead(ctx, expansions, step)
        rewards = yield from self._rewards(ctx, traces, samples)
        missing = 0
        for e, r in zip(expansions, rewards, strict=True):
            if is_nan(r):
                missing += 1
            e.rewards.append(NAN if is_nan(r) else float(r))
        return missing

    def _rewards(self, ctx: NodeContext, traces: list[Trace], samples: list[Sample]) -> RewardsProgram:
        """The one reward call site: one reward per partial solution."""
        return (yield from self.step_rewards(ctx, ctx.query.question_text(), traces, samples))

    def _lookahead(self, ctx: NodeContext, expansions: list[Beam], step: int) -> Program:
        k = self.params.lookahead if step < self.params.max_steps - 1 else 0
        traces = [e.trace for e in expansions]
        for _ in range(k):
            todo = [i for i, t in enumerate(traces) if not t.done]
            if not todo:
                break
            results = yield [self.step_request(ctx, traces[i], temperature=0.0) for i in todo]
            for i, res in zip(todo, results, strict=True):
                traces[i] = traces[i].extend(first_sample(res), 10**6, self.params.max_total_tokens)
        return traces

    def _candidates(self, ctx: NodeContext, beams: list[Beam]) -> list[Candidate]:
        how = self.params.aggregate
        model = self.params.model or ctx.defaults.model
        out = []
        for b in best_first(beams, how):
            if not b.trace.steps:
                continue
            text = b.trace.text
            score = b.score(how)
            out.append(Candidate(text=text, answer=extract_final_answer(text), node=ctx.node_id, model=model,
                                 scores={} if is_nan(score) else {"reward": score},
                                 metadata={"subtree": b.subtree, "steps": len(b.trace), "finish": b.trace.finish,
                                           "rewards": b.rewards, "completed_at": b.completed_at,
                                           "step_scores": self.step_scores(ctx, b.trace), "score_key": "reward"}))
        if not out:
            ctx.note("beam: no beam wrote a step")
        return out

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if self.params.diverse:
            return (yield from self._dvts(ctx))
        return (yield from self._beam_search(ctx))

    # -- beam search ----------------------------------------------------------------------------

    def _beam_search(self, ctx: NodeContext) -> Program:
        p = self.params
        n, how = p.beam_width * p.expand, p.aggregate
        groups: list[tuple[Beam, int]] = [(Beam(self.new_trace()), n)]
        completed: list[Beam] = []
        missing = 0
        step = 0
        for step in range(p.max_steps):
            expansions, samples, skipped = yield from self._expand(ctx, groups, step)
            completed += skipped
            if not expansions:
                ctx.note(f"beam: step {step + 1} skipped (budget)")
                break
            missing += yield from self._reward(ctx, expansions, samples, step)
            done = [e for e in expansions if e.trace.done]
            for e in done:
                e.completed_at = step + 1
            completed += done
            active = [e for e in expansions if not e.trace.done]
            ctx.note(f"beam step {step + 1}: {len(done)} completed set aside, "
                     f"{min(p.beam_width, len(active))} of {len(active)} active kept")
            if not active:
                break
            groups = top_up(best_first(active, how)[:p.beam_width], n)
        if missing:
            ctx.note(f"beam: {missing} step rewards missing")
        chosen = best_first(completed, how)[:n] if p.sort_completed else completed[:n]
        ctx.note(f"beam: N={n} (keep {p.beam_width} x expand {p.expand}), {step + 1} steps, "
                 f"{len(completed)} completed beams, {len(chosen)} returned")
        return self._candidates(ctx, chosen)

    # -- DVTS -------------------------------------------------------------------------------------

    def _dvts(self, ctx: NodeContext) -> Program:
        p = self.params
        how = p.aggregate
        heads = [Beam(self.new_trace(), subtree=s) for s in range(p.beam_width)]
        siblings: list[list[Beam]] = [[] for _ in heads]
        stopped = [False] * len(heads)
        missing = 0
        step = 0
        for step in range(p.max_steps):
            active = [s for s in range(len(heads)) if not stopped[s]]
            if not active:
                break
            expansions, samples, skipped = yield from self._expand(ctx, [(heads[s], p.expand) for s in active], step)
            for b in skipped:
                stopped[b.subtree] = True
            if not expansions:
                ctx.note(f"beam: step {step + 1} skipped (budget)")
                break
            missing += yield from self._reward(ctx, expansions, samples, step)
            for s in active:
                mine = [e for e in expansions if e.subtree == s]
                if not mine:
                    continue
                for e in mine:
                    e.completed_at = step + 1
                siblings[s] = mine
                heads[s] = best_first(mine, how)[0]
                stopped[s] = heads[s].trace.done
        if missing:
            ctx.note(f"beam: {missing} step rewards missing")
        out = [b for group in siblings for b in group]
        ctx.note(f"beam (DVTS): {p.beam_width} subtrees x expand {p.expand}, {step + 1} steps, "
                 f"{len(out)} completions returned")
        return self._candidates(ctx, out)


__all__ = ["Beam", "BeamParams", "BeamSearch", "best_first", "top_up"]
