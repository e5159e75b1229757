"""Level-batched execution of a pipeline over many queries.

For each DAG level, every (node, query) program starts; each round, their requests are
merged and sent through the router, which makes one backend request per model. Rounds
repeat until every program of the level returns. So the number of backend calls is the
number of (level, round, model) triples, independent of the number of queries.
"""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from archon.backends.accounting import CallTag
from archon.backends.router import ModelRouter
from archon.backends.types import (
    GenerationRequest,
    GenerationResult,
    RewardRequest,
    RewardResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)
from archon.data import CallRecord, Candidate, NodeTrace, Query, QueryResult
from archon.engine.budget import Budget, BudgetTracker
from archon.engine.graph import PipelineGraph
from archon.techniques.base import Defaults, ModelRequest, ModelResult, NodeContext, Program


@dataclass
class _Task:
    query: Query
    node: str
    program: Program
    ctx: NodeContext
    trace: NodeTrace
    pending: list[ModelRequest] = field(default_factory=list)
    done: bool = False
    output: list[Candidate] = field(default_factory=list)


@dataclass
class _QueryState:
    query: Query
    outputs: dict[str, list[Candidate]] = field(default_factory=dict)
    traces: list[NodeTrace] = field(default_factory=list)
    usage_by_node: dict[str, Usage] = field(default_factory=dict)
    error: str | None = None
    budget_skips: list[str] = field(default_factory=list)  # calls the budget refused

    def usage(self) -> Usage:
        return sum(self.usage_by_node.values(), Usage())


def _rng_for(seed: int | None, node: str, query: str) -> random.Random:
    """A node's own random stream (resampling, tie-breaking): fixed by the seed, or fresh
    from the OS when the pipeline is unseeded (``seed: null``), like its samples."""
    if seed is None:
        return random.Random()
    return random.Random(zlib.crc32(f"{seed}:{node}:{query}".encode()))


@dataclass
class Executor:
    graph: PipelineGraph
    router: ModelRouter
    defaults: Defaults = field(default_factory=Defaults)
    budget: Budget = field(default_factory=Budget)

    def run(self, queries: Sequence[Query], on_result: Callable[[QueryResult], None] | None = None
            ) -> list[QueryResult]:
        start = time.perf_counter()
        ids = [q.id for q in queries]
        if len(set(ids)) != len(ids):
            raise ValueError("query ids must be unique within a batch")
        states = {q.id: _QueryState(q) for q in queries}
        for level in self.graph.levels():
            tasks = [self._start(states[q.id], node) for node in level for q in queries
                     if states[q.id].error is None]
            self._drive(tasks, states)
        results = []
        for q in queries:
            result = self._result(states[q.id], time.perf_counter() - start)
            if on_result is not None:
                on_result(result)
            results.append(result)
        return results

    def _start(self, state: _QueryState, node: str) -> _Task:
        inputs = [c for parent in self.graph.parents(node) for c in state.outputs.get(parent, [])]
        technique = self.graph.nodes[node]
        ctx = NodeContext(node, state.query, self.defaults,
                          _rng_for(self.defaults.seed, node, state.query.id))
        trace = NodeTrace(node=node, technique=technique.name, inputs=[c.id for c in inputs])
        state.traces.append(trace)
        task = _Task(state.query, node, technique.run(ctx, inputs), ctx, trace)
        self._advance(task, None, state)
        return task

    def _advance(self, task: _Task, results: list[ModelResult] | None, state: _QueryState) -> None:
        try:
            task.pending = list(task.program.send(results))  # type: ignore[arg-type]
            while not task.pending:  # a round with no requests needs no backend: answer at once
                task.pending = list(task.program.send([]))
        except StopIteration as stop:
            task.done = True
            task.pending = []
            task.output = list(stop.value or [])
            state.outputs[task.node] = task.output
            task.trace.outputs = task.output
            task.trace.notes = task.ctx.notes
        except Exception as exc:  # a technique bug or bad model output must not sink the batch
            if _is_backend_failure(exc):
                raise
            task.done = True
            task.pending = []
            state.error = f"node {task.node!r}: {type(exc).__name__}: {exc}"
            task.trace.notes = [*task.ctx.notes, state.error]

    def _drive(self, tasks: list[_Task], states: dict[str, _QueryState]) -> None:
        trackers: dict[str, BudgetTracker] = {}
        while True:
            live = [t for t in tasks if not t.done and t.pending]
            if not live:
                return
            gen: list[tuple[_Task, int, GenerationRequest]] = []
            score: list[tuple[_Task, int, ScoreRequest]] = []
            reward: list[tuple[_Task, int, RewardRequest]] = []
            answers: dict[int, list[ModelResult | None]] = {id(t): [None] * len(t.pending) for t in live}
            for task in live:
                tracker = trackers.get(task.query.id)
                if tracker is None:
                    tracker = trackers[task.query.id] = BudgetTracker(
                        self.budget, self._parameters(), states[task.query.id].usage())
                for i, request in enumerate(task.pending):
                    decision = tracker.admit(request)
                    if decision.note:
                        task.ctx.note(decision.note)
                    if decision.request is None:
                        states[task.query.id].budget_skips.append(decision.note or "call skipped: budget spent")
                        answers[id(task)][i] = _skipped(request)
                    elif isinstance(decision.request, GenerationRequest):
                        gen.append((task, i, decision.request))
                    elif isinstance(decision.request, RewardRequest):
                        reward.append((task, i, decision.request))
                    else:
                        score.append((task, i, decision.request))
            if gen:
                tags = [CallTag(t.node, t.query.id) for t, _, _ in gen]
                for (task, i, req), res in zip(gen, self.router.generate([r for _, _, r in gen], tags), strict=True):
                    answers[id(task)][i] = res
                    self._account(task, states, res.usage)
                    task.trace.calls.append(call_record(req, res))
            if score:
                tags = [CallTag(t.node, t.query.id) for t, _, _ in score]
                for (task, i, req), res in zip(score, self.router.score([r for _, _, r in score], tags), strict=True):
                    answers[id(task)][i] = res
                    self._account(task, states, res.usage)
                    task.trace.calls.append(call_record(req, res))
            if reward:
                tags = [CallTag(t.node, t.query.id) for t, _, _ in reward]
                for (task, i, req), res in zip(reward, self.router.reward([r for _, _, r in reward], tags),
                                               strict=True):
                    answers[id(task)][i] = res
                    self._account(task, states, res.usage)
                    task.trace.calls.append(call_record(req, res))
            for qid, tracker in trackers.items():
                tracker.settle(states[qid].usage())
            for task in live:
                self._advance(task, [a for a in answers[id(task)] if a is not None], states[task.query.id])

    def _account(self, task: _Task, states: dict[str, _QueryState], usage: Usage) -> None:
        per_node = states[task.query.id].usage_by_node
        per_node[task.node] = per_node.get(task.node, Usage()) + usage
        task.trace.usage = per_node[task.node].to_dict()

    def _parameters(self) -> dict[str, float | None]:
        return {name: self.router.registry.get(name).parameters for name in self.router.registry.names()}

    def _result(self, state: _QueryState, elapsed: float) -> QueryResult:
        final = state.outputs.get(self.graph.output or "", [])
        best = final[0] if final else None
        return QueryResult(
            id=state.query.id,
            answer=best.text if best else "",
            final_answer=best.answer if best else None,
            candidates=final,
            usage=state.usage().to_dict(),
            usage_by_node={n: u.to_dict() for n, u in state.usage_by_node.items()},
            latency_s=elapsed,
            trace=state.traces,
            error=state.error or _starved(best is None, state.budget_skips),
        )


def call_record(request: ModelRequest, result: ModelResult) -> CallRecord:
    """What a trace keeps of one answered request, whatever its kind."""
    if isinstance(request, GenerationRequest):
        assert isinstance(result, GenerationResult)
        return CallRecord(model=request.model, prompt=request.prefix_text(), n=request.n, outputs=result.texts,
                          usage=result.usage.to_dict())
    if isinstance(request, RewardRequest):
        assert isinstance(result, RewardResult)
        return CallRecord(model=request.model, prompt=request.prefix_text(), n=1,
                          outputs=[" ".join(f"{v:.4f}" for v in row) for row in result.rows],
                          usage=result.usage.to_dict())
    assert isinstance(result, ScoreResult)
    return CallRecord(model=request.model, prompt=request.prefix_text(), n=len(request.continuations),
                      outputs=[f"{lp:.4f}" for lp in result.logprobs], usage=result.usage.to_dict())


def _skipped(request: ModelRequest) -> ModelResult:
    """The empty result a technique receives for a call the budget skipped."""
    if isinstance(request, GenerationRequest):
        return GenerationResult([])
    if isinstance(request, RewardRequest):
        return RewardResult([])
    return ScoreResult([], [])


def _starved(no_answer: bool, skips: list[str]) -> str | None:
    """An empty answer because the budget refused calls is an error of that row, not a silent 0."""
    if no_answer and skips:
        return f"budget: no answer within the budget ({len(skips)} call(s) skipped; first: {skips[0]})"
    return None


def _is_backend_failure(exc: Exception) -> bool:
    from archon.errors import ArchonError

    return isinstance(exc, ArchonError)
