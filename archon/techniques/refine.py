"""Refine: sequential rounds of feedback and revision (Self-Refine, Madaan et al. 2023),
stopping early once a verifier accepts (as in Archon's verifier-gated loops).

Each round, every still-open candidate gets one verifier call that writes feedback and
ends with ``Verdict: yes/no`` (the ``verify`` technique's parser). An accepted candidate
stops; a rejected one is revised with that feedback in the same round's second batch.
After ``max_rounds`` revisions the last version is verified once more (``verify_final``)
and the loop ends. All candidates of a round share one batch per step, across queries.

Outputs keep the input order. A revised candidate is a new candidate (its parent is the
input) with ``scores["verified"]`` (1/0, the last verdict, when there was one),
``scores["refine_rounds"]`` (revisions made) and the last feedback as its critique.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from archon import prompts
from archon.data import Candidate
from archon.scoring.parsing import parse_verdict
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams, first_text
from archon.verifiers.answers import extract_final_answer


class RefineParams(TechniqueParams):
    max_rounds: int = Field(2, ge=0, le=10, description="most revisions per candidate")
    stop_on_accept: bool = Field(True, description="stop revising a candidate once the verifier accepts it")
    verify_final: bool = Field(True, description="verify the last revision (one more verifier call)")
    verifier_model: str | None = Field(None, description="model for feedback and verdicts (default: `model`)")
    history: bool = Field(False, description="show earlier attempts and their feedback when revising")
    feedback_template: str | None = Field(None, description="jinja2 file overriding the feedback/verify prompt")


@dataclass
class _State:
    source: Candidate
    text: str
    rounds: int = 0
    verdict: bool | None = None
    feedback: str | None = None
    attempts: list[tuple[str, str]] = field(default_factory=list)
    open: bool = True


class Refine(Technique):
    name = "refine"
    Params = RefineParams
    description = "rounds of LLM feedback and revision until a verifier accepts"
    params: RefineParams

    def models(self, defaults: Defaults) -> list[str]:
        model = self.params.model or defaults.model
        return list(dict.fromkeys([model, self.params.verifier_model or model]))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("nothing to refine")
            return []
        p = self.params
        question = ctx.query.question_text()
        states = [_State(c, c.text) for c in inputs]
        for rnd in range(p.max_rounds + 1):
            last = rnd == p.max_rounds
            active = [s for s in states if s.open]
            if not active or (last and rnd > 0 and not p.verify_final):
                break
            # 1. feedback + verdict for every open candidate, one batch
            requests = [self.request(ctx, prompts.render("refine_feedback.j2", p.feedback_template, question=question,
                                                         candidate=s.text),
                                     model=p.verifier_model, seed_offset=rnd)
                        for s in active]
            results = yield list(requests)
            to_revise: list[_State] = []
            for s, res in zip(active, results, strict=True):
                text = first_text(res)
                if text is None:
                    ctx.note(f"round {rnd + 1}: feedback skipped (budget); kept the current version")
                    s.open = False
                    continue
                s.feedback = text.strip()
                s.verdict = parse_verdict(text)
                if (s.verdict and p.stop_on_accept) or last:
                    s.open = False
                else:
                    to_revise.append(s)
            accepted = sum(1 for s in active if s.verdict and not s.open and s.feedback is not None)
            if accepted and p.stop_on_accept:
                ctx.note(f"round {rnd + 1}: {accepted} of {len(active)} accepted by the verifier")
            if not to_revise:
                continue
            # 2. revisions for the rejected ones, one batch
            requests = [self.request(ctx, prompts.render("refine_revise.j2", p.prompt_template, question=question,
                                                         candidate=s.text, feedback=s.feedback,
                                                         attempts=s.attempts if p.history else []),
                                     seed_offset=rnd)
                        for s in to_revise]
            results = yield list(requests)
            for s, res in zip(to_revise, results, strict=True):
                text = first_text(res)
                if text is None or not text.strip():
                    ctx.note(f"round {rnd + 1}: revision " + ("skipped (budget)" if text is None else "empty")
                             + "; kept the current version")
                    s.open = False
                    continue
                s.attempts.append((s.text, s.feedback or ""))
                s.text = text.strip()
                s.rounds += 1
                s.verdict = s.feedback = None  # the new version has not been verified yet
        revised = sum(1 for s in states if s.rounds)
        ctx.note(f"revised {revised} of {len(states)} candidates; "
                 f"{sum(1 for s in states if s.verdict)} accepted at the end")
        return [self._output(ctx, s) for s in states]

    def _output(self, ctx: NodeContext, s: _State) -> Candidate:
        scores = {"refine_rounds": float(s.rounds)}
        if s.verdict is not None:
            scores["verified"] = 1.0 if s.verdict else 0.0
        if not s.rounds:
            return s.source.derive(scores={**s.source.scores, **scores}, critique=s.feedback or s.source.critique)
        return Candidate(text=s.text, answer=extract_final_answer(s.text), scores=scores, critique=s.feedback,
                         node=ctx.node_id, model=self.params.model or ctx.defaults.model, parents=[s.source.id])
