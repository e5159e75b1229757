"""Reward / pooling models (Qwen2.5-Math-PRM style) as scorers, through the router.

A process reward model such as Qwen2.5-Math-PRM-7B reads the whole solution once, with a
step tag (``<extra_0>``) after every step inside its chat template::

    system: Please reason step by step, and put your final answer within \\boxed{}.
    user: {question}
    assistant: {step 1}<extra_0>{step 2}<extra_0>...

and returns, at each tag, the probabilities of its classes ``[bad, good]``; the step
score is the ``label`` column (1: good). vLLM serves it as a pooling model
(``vllm.LLM(..., runner="pooling")`` in process, or a server's ``/pooling`` endpoint), and
archon reaches it as a ``models:`` entry (``backend: vllm`` with ``task: reward``, or
``backend: openai`` pointing at the server). One ``RewardRequest`` per candidate scores
all its steps in one forward pass; all candidates of a round go out together, so the
engine sends them as one batch. An outcome reward model (one row) is the same with
``steps`` absent: the whole answer is one step.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from archon.backends.types import Message, RewardRequest, RewardResult
from archon.cost import CallCost, CostInputs
from archon.scoring.base import SCORERS, ScoreContext, ScoreProgram, Scorer
from archon.scoring.values import NAN

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


class RewardModelScorer(Scorer):
    key: ClassVar[str] = "reward"
    process: ClassVar[bool] = True
    type: Literal["reward_model"] = "reward_model"
    format: Literal["chat", "raw"] = Field(
        "chat", description="chat: system/user/assistant rendered by the model's template; raw: text as is")
    step_tag: str = Field("<extra_0>", description="appended after every step (Qwen2.5-Math-PRM: <extra_0>)")
    system: str | None = Field(QWEN_PRM_SYSTEM, description="chat: system prompt (null: none)")
    label: int = Field(1, description="which column of a pooled row is the reward (PRM [bad, good]: 1)")
    raw_template: str = Field("{question}\n\n{answer}", description="raw: the text sent ({question}, {answer})")

    def estimate(self, c: CostInputs) -> list[CallCost]:
        n = c.inputs.count
        if n <= 0:
            return []
        system = len(self.system or "") / 4
        return [CallCost(self.model or c.model, n * (c.question + system + c.inputs.length), 0.0, n)]

    def request(self, ctx: ScoreContext, question: str, steps: list[str]) -> RewardRequest:
        answer = "".join(s + self.step_tag for s in steps)
        if self.format == "raw":
            return RewardRequest(model=self.target(ctx), prompt=self.raw_template.format(question=question,
                                                                                         answer=answer),
                                 step_tag=self.step_tag)
        messages = ((Message("system", self.system),) if self.system else ()) + (
            Message("user", question), Message("assistant", answer))
        return RewardRequest(model=self.target(ctx), messages=messages, step_tag=self.step_tag)

    def _value(self, row: list[float]) -> float:
        if not row:
            return NAN
        if len(row) == 1:
            return float(row[0])
        return float(row[self.label])

    def score_steps(self, question: str, candidates: list[str], steps: list[list[str]],
                    ctx: ScoreContext) -> ScoreProgram:
        live = [c for c, st in enumerate(steps) if st]
        out: list[list[float]] = [[] for _ in steps]
        if not live:
            return out
        results = yield [self.request(ctx, question, steps[c]) for c in live]
        skipped = mismatched = 0
        for c, res in zip(live, results, strict=True):
            count = len(steps[c])
            if not isinstance(res, RewardResult) or not res.rows:
                skipped += 1
                out[c] = [NAN] * count
                continue
            values = [self._value(r) for r in res.rows]
            if len(values) == 1 and count > 1:  # an outcome model: one score for the whole trace
                values = [NAN] * (count - 1) + values
            if len(values) != count:
                mismatched += 1
                values = (values + [NAN] * count)[:count]
            out[c] = values
        if skipped:
            ctx.note(f"reward_model: {skipped} of {len(live)} candidates not scored (budget)")
        if mismatched:
            ctx.note(f"reward_model: {mismatched} candidates got a score count different from their step count "
                     f"(is the step tag {self.step_tag!r} one token of the model?)")
        return out

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> ScoreProgram:
        """A whole candidate as one step."""
        per_step = yield from self.score_steps(question, candidates, [[c] for c in candidates], ctx)
        return [row[-1] if row else NAN for row in per_step]


SCORERS.register("reward_model", RewardModelScorer, "reward", "prm", "orm", "pooling")
