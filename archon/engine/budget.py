"""Per-query compute budget, enforced before each call rather than discovered after.

A request is costed as its prompt (estimated at 4 characters a token until the
backend reports real counts) plus ``max_tokens`` for each sample. If the rest of the
budget cannot pay for all samples, ``n`` is cut to what fits; if it cannot pay for
one, the call is skipped. Either way the trace says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pydantic import BaseModel, ConfigDict, Field

from archon.backends.types import GenerationRequest, RewardRequest, ScoreRequest, Usage

Request = GenerationRequest | ScoreRequest | RewardRequest


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int | None = Field(None, ge=1, description="prompt + completion tokens per query")
    max_calls: int | None = Field(None, ge=1, description="backend requests per query")
    max_flops: float | None = Field(None, gt=0, description="estimated FLOPs per query")

    def is_set(self) -> bool:
        return any(v is not None for v in (self.max_tokens, self.max_calls, self.max_flops))


def estimate_prompt_tokens(request: Request) -> int:
    text = request.prompt if request.prompt is not None else " ".join(m.content for m in request.messages or ())
    return (len(text) + len(request.assistant_prefix)) // 4 + 8


@dataclass
class Decision:
    request: Request | None
    note: str | None = None
    reserved: tuple[int, int, float] = (0, 0, 0.0)  # tokens, calls, flops held until the answer


@dataclass
class BudgetTracker:
    """Remaining budget of one query; ``spent`` is real usage, ``reserved`` in-flight estimates."""

    budget: Budget
    parameters: dict[str, float | None]
    spent: Usage
    reserved_tokens: int = 0
    reserved_calls: int = 0
    reserved_flops: float = 0.0

    def _room(self) -> tuple[float, float, float]:
        inf = float("inf")
        b = self.budget
        tokens = (b.max_tokens - self.spent.total_tokens - self.reserved_tokens) if b.max_tokens else inf
        calls = (b.max_calls - self.spent.calls - self.reserved_calls) if b.max_calls else inf
        flops = (b.max_flops - self.spent.flops - self.reserved_flops) if b.max_flops else inf
        return tokens, calls, flops

    def admit(self, request: Request) -> Decision:
        if not self.budget.is_set():
            return Decision(request)
        tokens_room, calls_room, flops_room = self._room()
        if calls_room < 1:
            return Decision(None, f"skipped a call to {request.model}: call budget spent")
        prompt = estimate_prompt_tokens(request)
        flops_per_token = 2.0 * (self.parameters.get(request.model) or 0.0)
        if isinstance(request, (ScoreRequest, RewardRequest)):
            cost = prompt * (len(request.continuations) if isinstance(request, ScoreRequest) else 1)
            if cost > tokens_room or cost * flops_per_token > flops_room:
                return Decision(None, f"skipped scoring on {request.model}: budget spent")
            return Decision(request, reserved=self._reserve(cost, cost * flops_per_token))
        per_sample = request.max_tokens
        afford = request.n
        if tokens_room != float("inf"):
            afford = min(afford, int((tokens_room - prompt) // per_sample))
        if flops_per_token and flops_room != float("inf"):
            afford = min(afford, int((flops_room / flops_per_token - prompt) // per_sample))
        if afford < 1:
            return Decision(None, f"skipped a call to {request.model}: needs ~{prompt + per_sample} tokens, "
                                  f"{max(0, int(tokens_room))} left")
        note = None
        if afford < request.n:
            note = f"cut n from {request.n} to {afford} on {request.model} to stay within budget"
            request = replace(request, n=afford)
        cost = prompt + afford * per_sample
        return Decision(request, note, self._reserve(cost, cost * flops_per_token))

    def _reserve(self, tokens: int, flops: float) -> tuple[int, int, float]:
        self.reserved_tokens += tokens
        self.reserved_calls += 1
        self.reserved_flops += flops
        return tokens, 1, flops

    def release(self, decision: Decision, spent: Usage) -> None:
        """One answered request: its estimate gives way to real usage, while the estimates of
        the query's other requests still in flight stay held (the dataflow executor)."""
        tokens, calls, flops = decision.reserved
        self.reserved_tokens -= tokens
        self.reserved_calls -= calls
        self.reserved_flops -= flops
        self.spent = spent

    def settle(self, spent: Usage) -> None:
        """Real usage replaces the round's estimates."""
        self.spent = spent
        self.reserved_tokens = self.reserved_calls = 0
        self.reserved_flops = 0.0
