"""A trial's cost per query, estimated from the pipeline's shape before anything is spent.

Every technique estimates its own calls (``Technique.estimate``, which asks its scorer's
``Scorer.estimate`` when it has one); this module only walks the DAG, hands each node the
candidates its inputs produce (how many, and tokens each) and adds the calls up, with FLOPs
from the models' parameter counts. Completions are assumed to fill ``max_tokens``.

The estimate is an upper-ish bound (completions often stop early); the search calibrates it
against measured trials before skipping anything (see ``runner``). A technique without an
estimate is costed 0 and listed in ``unknown``, so it is never skipped on a guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from archon.cost import CostInputs, Flow


@dataclass
class CostEstimate:
    """Per query: tokens (prompt + completion), calls (backend requests), FLOPs."""

    tokens: float = 0.0
    prompt_tokens: float = 0.0
    completion_tokens: float = 0.0
    calls: float = 0.0
    flops: float = 0.0
    by_model: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    unknown: list[str] = field(default_factory=list)

    def add(self, model: str, prompt: float, completion: float, calls: float, parameters: float | None) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.tokens += prompt + completion
        self.calls += calls
        self.by_model[model] += prompt + completion
        self.flops += 2.0 * (parameters or 0.0) * (prompt + completion)

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": round(self.tokens, 1), "prompt_tokens": round(self.prompt_tokens, 1),
                "completion_tokens": round(self.completion_tokens, 1), "calls": round(self.calls, 2),
                "flops": self.flops, "unknown": list(self.unknown)}


def _nodes(config: dict[str, Any]) -> list[tuple[dict[str, Any], list[str]]]:
    out: list[tuple[dict[str, Any], list[str]]] = []
    if config.get("nodes") is not None:
        previous: str | None = None
        for i, node in enumerate(config["nodes"]):
            node_id = node.get("id") or f"{node['technique']}_{i}"
            inputs = node.get("inputs")
            out.append(({**node, "id": node_id}, list(inputs) if inputs is not None else
                        ([previous] if previous else [])))
            previous = node_id
    else:
        prev: list[str] = []
        for li, layer in enumerate(config.get("layers") or []):
            ids = []
            for ni, node in enumerate(layer):
                node_id = node.get("id") or f"{node['technique']}_{li}_{ni}"
                inputs = node.get("inputs")
                out.append(({**node, "id": node_id}, list(inputs) if inputs is not None else list(prev)))
                ids.append(node_id)
            prev = ids
    return out


def _technique(node: dict[str, Any]) -> Any:
    """The node's technique object, or None when its name or parameters do not validate."""
    from archon.techniques import TECHNIQUES

    params = {k: v for k, v in node.items() if k not in ("id", "technique", "inputs")}
    try:
        cls = TECHNIQUES.resolve(node["technique"])
        return cls(cls.Params.model_validate(params))
    except Exception:  # an invalid node is reported by build_graph, not here
        return None


def estimate_cost(config: dict[str, Any], *, question_tokens: float = 32.0,
                  parameters: Callable[[str], float | None] | None = None) -> CostEstimate:
    """Estimated cost of one query through the pipeline ``config`` (a config dict)."""
    defaults = config.get("defaults") or {}
    d_model = defaults.get("model", "embedded")
    d_max = int(defaults.get("max_tokens", 256))
    params_of = parameters or (lambda _m: None)
    est = CostEstimate()
    outs: dict[str, Flow] = {}
    q = float(question_tokens)
    for node, inputs in _nodes(config):
        ins = [outs[i] for i in inputs if i in outs]
        n_in = sum(o.count for o in ins)
        length = (sum(o.count * o.length for o in ins) / n_in) if n_in else 0.0
        tech = _technique(node)
        cost_in = CostInputs(q, Flow(n_in, length), node.get("model") or d_model,
                             float(node.get("max_tokens") or d_max))
        estimate = tech.estimate(cost_in) if tech is not None else None
        if estimate is None:
            est.unknown.append(node["technique"])
            count = tech.output_count(int(n_in)) if tech is not None else max(n_in, 1)
            outs[node["id"]] = Flow(float(count), cost_in.max_tokens)
            continue
        calls, out = estimate
        for call in calls:
            est.add(call.model, call.prompt, call.completion, call.calls, params_of(call.model))
        outs[node["id"]] = out
    return est
