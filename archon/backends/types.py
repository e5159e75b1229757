"""Backend-neutral request and result types.

Every technique speaks these types and nothing else, so a pipeline runs unchanged on
llama.cpp, vLLM or a remote server. Requests are frozen so that they can be hashed into
the call cache and batched without defensive copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


def chat(system: str | None, user: str) -> tuple[Message, ...]:
    """The one place a system prompt is prepended: ``(system?, user)`` as messages."""
    return ((Message("system", system),) if system else ()) + (Message("user", user),)


@dataclass(frozen=True)
class GenerationRequest:
    """One prompt sent to one model for ``n`` samples.

    Exactly one of ``prompt`` (raw completion text) or ``messages`` (a chat) is set.
    ``assistant_prefix`` is text the model's answer must continue from: step-level
    methods resend a partial reasoning trace this way instead of restarting it.
    ``sample_offset`` says which sample indices these are (``offset .. offset+n-1``):
    the call cache keys samples by index, and backends that draw samples one by one
    seed sample ``i`` with ``seed + i`` so a partially cached request is reproducible.
    """

    model: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    assistant_prefix: str = ""
    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    sample_offset: int = 0

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of `prompt` or `messages`")
        if self.n < 1:
            raise ValueError(f"GenerationRequest.n must be >= 1, got {self.n}")
        if self.max_tokens < 1:
            raise ValueError(f"GenerationRequest.max_tokens must be >= 1, got {self.max_tokens}")

    def with_samples(self, n: int, offset: int) -> GenerationRequest:
        return replace(self, n=n, sample_offset=offset)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def prefix_text(self) -> str:
        """A flat view of the prompt used to order a batch so shared prefixes are adjacent."""
        if self.prompt is not None:
            return self.prompt + self.assistant_prefix
        body = "\n".join(f"{m.role}:{m.content}" for m in self.messages or ())
        return body + "\nassistant:" + self.assistant_prefix


@dataclass(frozen=True)
class ScoreRequest:
    """Log-probabilities of given continuations after a prompt (judges, reward models)."""

    model: str
    continuations: tuple[str, ...]
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    assistant_prefix: str = ""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("ScoreRequest needs exactly one of `prompt` or `messages`")
        if not self.continuations:
            raise ValueError("ScoreRequest needs at least one continuation")

    def prefix_text(self) -> str:
        """The same flat view as ``GenerationRequest.prefix_text``, for ordering and traces."""
        if self.prompt is not None:
            return self.prompt + self.assistant_prefix
        body = "\n".join(f"{m.role}:{m.content}" for m in self.messages or ())
        return body + "\nassistant:" + self.assistant_prefix


@dataclass(frozen=True)
class RewardRequest:
    """A reward / pooling model's output for one text (Qwen2.5-Math-PRM, ORMs, classifiers).

    ``messages`` are rendered with the model's own chat template (no generation prompt when
    the last turn is the assistant's: the scored answer sits there, step tags included);
    ``prompt`` is sent as is. The backend returns the pooled rows (a PRM: one row of class
    probabilities per step tag; an ORM: one row); what a row means is the scorer's business.
    """

    model: str
    prompt: str | None = None
    messages: tuple[Message, ...] | None = None
    step_tag: str | None = None
    """The token marking the end of each step (``<extra_0>``): the backend returns one row per tag."""

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("RewardRequest needs exactly one of `prompt` or `messages`")

    @property
    def assistant_prefix(self) -> str:  # the budget's prompt estimate reads it
        return ""

    def prefix_text(self) -> str:
        if self.prompt is not None:
            return self.prompt
        return "\n".join(f"{m.role}:{m.content}" for m in self.messages or ())


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass
class Sample:
    text: str
    finish_reason: str = "stop"
    logprobs: list[TokenLogprob] | None = None
    completion_tokens: int = 0
    cached: bool = False

    def mean_logprob(self) -> float | None:
        if not self.logprobs:
            return None
        return sum(t.logprob for t in self.logprobs) / len(self.logprobs)


@dataclass
class Usage:
    """Compute spent by calls. Cache hits are counted apart: they cost nothing."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    latency_s: float = 0.0
    flops: float = 0.0
    cache_hits: int = 0
    retries: int = 0  # transient failures retried before the answer came (server restarts, 5xx)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            calls=self.calls + other.calls,
            latency_s=self.latency_s + other.latency_s,
            flops=self.flops + other.flops,
            cache_hits=self.cache_hits + other.cache_hits,
            retries=self.retries + other.retries,
        )

    def to_dict(self) -> dict[str, int | float]:
        """``retries`` appears only when some happened, so the usual rows keep their shape."""
        extra: dict[str, int | float] = {"retries": self.retries} if self.retries else {}
        return {
            "prompt_tokens": self.prompt_tokens,
            "cached_prompt_tokens": self.cached_prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "latency_s": round(self.latency_s, 6),
            "flops": self.flops,
            "cache_hits": self.cache_hits,
            **extra,
        }


@dataclass
class GenerationResult:
    samples: list[Sample]
    usage: Usage = field(default_factory=Usage)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.samples]


@dataclass
class ScoreResult:
    """Per continuation: summed log-probability and the per-token values."""

    logprobs: list[float]
    token_logprobs: list[list[float]]
    usage: Usage = field(default_factory=Usage)


@dataclass
class RewardResult:
    """The pooled rows of one ``RewardRequest`` (empty when the call was skipped)."""

    rows: list[list[float]]
    usage: Usage = field(default_factory=Usage)
