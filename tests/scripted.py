"""A scripted backend for control-flow unit tests (never shipped, never the only evidence).

It answers from a function of the request and records every batch it receives, so
tests can assert the exact calls an algorithm makes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.backends.router import ModelRouter
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    RewardRequest,
    RewardResult,
    Sample,
    ScoreRequest,
    ScoreResult,
    Usage,
)

Responder = Callable[[GenerationRequest, int], str]


def default_responder(request: GenerationRequest, index: int) -> str:
    text = request.messages[-1].content if request.messages else (request.prompt or "")
    if "rank" in text.lower() and "Ranking:" in text:
        return "[2] > [1] > [3]"
    if "Verdict" in text:
        return "Looks right. Verdict: yes"
    if "Strengths" in text:
        return "Strengths: clear. Weaknesses: none."
    return f"answer {index} \\boxed{{{index % 2}}}"


@dataclass
class ScriptedBackend:
    respond: Responder = default_responder
    batches: list[list[GenerationRequest]] = field(default_factory=list)
    score_batches: list[list[ScoreRequest]] = field(default_factory=list)
    reward_batches: list[list[RewardRequest]] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.batches.append(list(requests))
        out = []
        for r in requests:
            samples = [Sample(self.respond(r, r.sample_offset + i), completion_tokens=5) for i in range(r.n)]
            prompt_tokens = len(r.prefix_text()) // 4 + 1
            out.append(GenerationResult(samples, Usage(prompt_tokens=prompt_tokens, completion_tokens=5 * r.n,
                                                       calls=1)))
        return out

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        self.score_batches.append(list(requests))
        return [ScoreResult([-1.0 * (i + 1) for i in range(len(r.continuations))],
                            [[-1.0 * (i + 1)] for i in range(len(r.continuations))], Usage(prompt_tokens=3, calls=1))
                for r in requests]

    def reward(self, requests: Sequence[RewardRequest]) -> list[RewardResult]:
        """One [p_bad, p_good] row per step tag; p_good from the text's length (deterministic)."""
        self.reward_batches.append(list(requests))
        out = []
        for r in requests:
            text = r.prefix_text()
            steps = max(1, text.count(r.step_tag)) if r.step_tag else 1
            rows = [[1 - p, p] for p in ((len(text) * (k + 3)) % 97 / 100 for k in range(steps))]
            out.append(RewardResult(rows, Usage(prompt_tokens=len(text) // 4 + 1, calls=1)))
        return out

    def close(self) -> None:
        pass


def scripted_router(respond: Responder = default_responder, models: Sequence[str] = ("embedded",),
                    cache=None) -> tuple[ModelRouter, dict[str, ScriptedBackend]]:  # type: ignore[no-untyped-def]
    backends = {m: ScriptedBackend(respond) for m in models}
    registry = ModelRegistry({m: ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", parameters=1e6)
                              for m in models})
    router = ModelRouter(registry=registry, cache=cache, factory=lambda name, spec: backends[name])
    return router, backends


Delay = Callable[[GenerationRequest], float]


@dataclass
class DelayedBackend(ScriptedBackend):
    """A scripted *server*: ``agenerate`` answers each request after ``delay(request)``
    seconds, concurrently, like an HTTP backend; ``generate`` (the level executor's path)
    answers a batch when its slowest request is done. ``done`` logs (finish time, request)."""

    delay: Delay = lambda request: 0.0
    done: list[tuple[float, GenerationRequest]] = field(default_factory=list)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import time

        time.sleep(max((self.delay(r) for r in requests), default=0.0))
        now = time.perf_counter()
        self.done.extend((now, r) for r in requests)
        return super().generate(requests)

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        import asyncio
        import time

        async def one(r: GenerationRequest) -> GenerationResult:
            await asyncio.sleep(self.delay(r))
            self.done.append((time.perf_counter(), r))
            return ScriptedBackend.generate(self, [r])[0]

        return list(await asyncio.gather(*(one(r) for r in requests)))


def delayed_router(respond: Responder = default_responder, delay: Delay = lambda r: 0.0,
                   model: str = "embedded") -> tuple[ModelRouter, DelayedBackend]:
    backend = DelayedBackend(respond, delay=delay)
    registry = ModelRegistry({model: ModelSpec(backend="openai", base_url="http://127.0.0.1:9/v1", parameters=1e6)})
    return ModelRouter(registry=registry, factory=lambda name, spec: backend), backend


def drive(technique, inputs, reply, question: str = "q"):  # type: ignore[no-untyped-def]
    """Run one technique's program for one query without an engine: ``reply(round, index,
    request)`` answers each request (a ``str``, a ``Sample``, a list of them, or a result),
    in the order the technique yielded them. Returns (outputs, rounds of requests, notes)."""
    import random

    from archon.data import Query
    from archon.techniques.base import Defaults, NodeContext

    ctx = NodeContext("n", Query(id="q1", prompt=question), Defaults(), random.Random(0))
    program = technique.run(ctx, list(inputs))
    rounds: list[list] = []
    try:
        requests = next(program)
        while True:
            rounds.append(list(requests))
            results = []
            for i, r in enumerate(requests):
                out = reply(len(rounds) - 1, i, r)
                if isinstance(out, (GenerationResult, ScoreResult)):
                    results.append(out)
                    continue
                items = out if isinstance(out, list) else [out]
                results.append(GenerationResult([s if isinstance(s, Sample) else Sample(s, completion_tokens=5)
                                                 for s in items]))
            requests = program.send(results)
    except StopIteration as stop:
        return stop.value, rounds, ctx.notes
