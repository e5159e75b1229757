"""A scripted backend for step-level control-flow tests: responders may return full
``Sample`` objects (finish reasons, log-probabilities), score requests get scripted
log-probabilities, and every backend call is logged in one shared, ordered list."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    TokenLogprob,
    Usage,
)
from archon.scoring import ScoreContext, Scorer

StepResponder = Callable[[GenerationRequest, int], "str | Sample"]
ScoreResponder = Callable[[ScoreRequest], list[float]]


def tokens_of(text: str) -> int:
    return max(1, len(text) // 4)


def step(text: str, finish: str = "stop") -> Sample:
    return Sample(text, finish_reason=finish, completion_tokens=tokens_of(text))


def digit(dist: dict[int, float] | int) -> Sample:
    """A one-token judgement: the greedy digit with a distribution over digits as top log-probs."""
    if isinstance(dist, int):
        dist = {dist: 1.0}
    total = sum(dist.values())
    top = {str(d): math.log(p / total) for d, p in dist.items() if p > 0}
    best = max(dist, key=lambda d: dist[d])
    return Sample(str(best), completion_tokens=1, logprobs=[TokenLogprob(str(best), top[str(best)], top)])


def is_judge(r: GenerationRequest) -> bool:
    return r.max_tokens == 1 and r.logprobs


def is_step(r: GenerationRequest) -> bool:
    return "\n\n" in r.stop


def kind_of(requests: Sequence[GenerationRequest]) -> str:
    """A label for a generate batch: judge, step, answer, verify_fast or gen."""
    r = requests[0]
    if is_judge(r):
        return "judge"
    if is_step(r):
        return "step"
    if r.assistant_prefix.endswith("\\boxed{") and r.assistant_prefix != "\\boxed{":
        return "answer"
    if r.assistant_prefix == "\\boxed{":
        return "verify_fast"
    return "gen"


def user_text(r: GenerationRequest | ScoreRequest) -> str:
    return r.messages[-1].content if r.messages else (r.prompt or "")


def default_score(r: ScoreRequest) -> list[float]:
    return [-1.0 * (i + 1) for i in range(len(r.continuations))]


@dataclass
class StepBackend:
    name: str
    respond: StepResponder
    score_fn: ScoreResponder = default_score
    log: list[tuple[str, str, int]] = field(default_factory=list)  # shared: (model, kind, requests)
    batches: list[list[GenerationRequest]] = field(default_factory=list)
    score_batches: list[list[ScoreRequest]] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append(list(requests))
        self.log.append((self.name, kind_of(requests), len(requests)))
        out = []
        for r in requests:
            samples = []
            for i in range(r.n):
                s = self.respond(r, r.sample_offset + i)
                samples.append(step(s) if isinstance(s, str) else s)
            prompt_tokens = tokens_of(r.prefix_text())
            out.append(GenerationResult(samples, Usage(prompt_tokens=prompt_tokens * r.n,
                                                       completion_tokens=sum(s.completion_tokens for s in samples),
                                                       calls=1)))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self.score_batches.append(list(requests))
        self.log.append((self.name, "score", len(requests)))
        out = []
        for r in requests:
            lps = self.score_fn(r)
            out.append(ScoreResult(lps, [[x] for x in lps], Usage(prompt_tokens=tokens_of(user_text(r)), calls=1)))
        return out

    def close(self) -> None:
        pass


def steps_router(respond: StepResponder, score_fn: ScoreResponder = default_score,
                 models: Sequence[str] = ("embedded",), cache=None,  # type: ignore[no-untyped-def]
                 ) -> tuple[ModelRouter, dict[str, StepBackend], list[tuple[str, str, int]]]:
    log: list[tuple[str, str, int]] = []
    backends = {m: StepBackend(m, respond, score_fn, log) for m in models}
    registry = ModelRegistry({m: ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", parameters=1e6)
                              for m in models})
    router = ModelRouter(registry=registry, cache=cache, factory=lambda name, spec: backends[name])
    return router, backends, log


_REWARD_TAG = re.compile(r"r=([0-9]*\.?[0-9]+)")


class TextRewardScorer(Scorer):
    """A step scorer without model calls, for conformance tests: the last ``r=<float>`` tag in
    each partial solution (``scorer: {type: "scripted_steps:TextRewardScorer"}``), so a test fixes
    the exact reward sequence; ``nan`` when there is none."""

    type: str = "text_reward"

    def models(self, default: str) -> list[str]:
        return []

    def score_outcomes(self, question: str, candidates: list[str],  # type: ignore[override]
                       ctx: ScoreContext) -> Generator[list, list, list[float]]:
        out = []
        for p in candidates:
            tags = _REWARD_TAG.findall(p)
            out.append(float(tags[-1]) if tags else float("nan"))
        return out
        yield []  # pragma: no cover - a generator, like every scorer
