"""Token-probability process reward: any causal LM as a PRM (Math-Shepherd style).

Math-Shepherd (Wang et al. 2024) puts a step tag after each step and reads, at the tag,
the probability of a "good" token against a "bad" one (``+`` / ``-``). This scorer asks
exactly that through a ``ScoreRequest`` per step: the prompt ends with step ``i`` and its
tag, the two continuations are ``good`` and ``bad``, and the step's score is
``P(good) / (P(good) + P(bad))`` in [0, 1]. It works on every backend that scores
continuations (llama.cpp, vLLM, an OpenAI-compatible server), so a trained token PRM and an
ordinary LLM are used the same way:

- ``format: raw`` (a trained PRM): ``{question} {step 1}{tag}{sep}{step 2}{tag}...`` with
  ``step_tag: " ки"``, ``tag_separator: "\\n"``, ``good: "+"``, ``bad: "-"`` (Math-Shepherd's).
- ``format: chat`` (default, any chat LLM): the question and the steps so far in the
  ``steps_score.j2`` prompt ("Is this partial solution correct so far?"), assistant text
  ``Answer:``, continuations ``" Yes"`` / ``" No"``.

Steps already scored (``ctx.prior``) are not asked again; every new step of every
candidate goes out in one round, so the engine batches them into one backend request.
"""

from __future__ import annotations

from dataclasses import replace
from typing import ClassVar, Literal

from pydantic import Field

from archon.backends.types import ScoreRequest, ScoreResult
from archon.cost import CallCost, CostInputs
from archon.prompts import render, template_tokens
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram, Scorer
from archon.scoring.values import NAN, two_way


class TokenProbPRM(Scorer):
    key: ClassVar[str] = "prm"
    process: ClassVar[bool] = True
    type: Literal["token_prm"] = "token_prm"
    format: Literal["chat", "raw"] = Field("chat", description="chat: a prompt for any chat LLM; raw: tagged text")
    good: str = Field(" Yes", description="the continuation meaning the step is right (Math-Shepherd: +)")
    bad: str = Field(" No", description="the continuation meaning the step is wrong (Math-Shepherd: -)")
    step_tag: str = Field(" ки", description="raw: the tag after each step, where good/bad are read")
    tag_separator: str = Field("\n", description="raw: text after a tag before the next step")
    question_separator: str = Field(" ", description="raw: text between the question and the first step")
    answer_prefix: str = Field("Answer:", description="chat: the assistant text good/bad follow")
    system: str | None = Field(None, description="chat: system prompt (default: the node's)")
    prompt_template: str | None = Field(None, description="chat: jinja2 file overriding steps_score.j2 "
                                                          "(variables: question, partial, steps)")

    template: ClassVar[str | None] = "steps_score.j2"

    def estimate(self, c: CostInputs) -> list[CallCost]:
        """A whole candidate as one step: one request, its prompt scored with two continuations."""
        n = c.inputs.count
        if n <= 0:
            return []
        prompt = c.question + (template_tokens(self.template) if self.format == "chat" else 0) + c.inputs.length
        return [CallCost(self.model or c.model, 2 * n * prompt, 0.0, n)]

    def request(self, ctx: ScoreContext, question: str, steps: list[str]) -> ScoreRequest:
        """The request scoring the LAST of ``steps`` given the ones before it."""
        if self.format == "raw":
            body = "".join(s + self.step_tag + self.tag_separator for s in steps[:-1]) + steps[-1] + self.step_tag
            return ScoreRequest(model=self.target(ctx), prompt=question + self.question_separator + body,
                                continuations=(self.good, self.bad))
        user = render("steps_score.j2", self.prompt_template, question=question,
                      partial=self.step_separator.join(steps), steps=steps)
        return ScoreRequest(model=self.target(ctx), messages=self.messages(ctx, user, self.system),
                            continuations=(self.good, self.bad), assistant_prefix=self.answer_prefix)

    def score_steps(self, question: str, candidates: list[str], steps: list[list[str]],
                    ctx: ScoreContext) -> ScoreProgram:
        out: list[list[float]] = []
        jobs: list[tuple[int, int]] = []
        requests = []
        for c, st in enumerate(steps):
            known = list(ctx.prior[c]) if ctx.prior is not None else []
            out.append([*known[: len(st)], *[NAN] * max(0, len(st) - len(known))])
            for i in range(len(known), len(st)):
                jobs.append((c, i))
                requests.append(self.request(ctx, question, st[: i + 1]))
        if not requests:
            return out
        results = yield requests
        skipped = 0
        for (c, i), res in zip(jobs, results, strict=True):
            if isinstance(res, ScoreResult) and len(res.logprobs) == 2:
                out[c][i] = two_way(res.logprobs[0], res.logprobs[1])
            else:
                skipped += 1
        if skipped:
            ctx.note(f"token_prm: {skipped} of {len(jobs)} step scores skipped (budget)")
        return out

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        """A whole candidate as one step."""
        per_step = yield from self.score_steps(question, candidates, [[c] for c in candidates],
                                               replace(ctx, prior=None))
        return [row[0] for row in per_step]


SCORERS.register("token_prm", TokenProbPRM, "math_shepherd", "token_probability_prm")
