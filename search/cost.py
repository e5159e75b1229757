"""A trial's cost per query, estimated from the pipeline's shape before anything is spent.

Each node is costed from what it will send: ``generate`` sends one request per model for
``samples`` completions, ``critique`` and ``verify`` one per candidate, ``rank`` one over
all candidates, ``fuse`` one per fuser over all candidates, ``best_of_n`` what its scorer
asks. Prompts are the question plus the packaged template plus the candidates they show
(each assumed as long as its node's ``max_tokens``); completions are ``n x max_tokens``.
Prompt tokens are counted per sample, as the embedded engine reports them.

The idealized runtime (``runtime``) is estimated with the models' runtime profiles when
``runtime`` is given: each call costs the profile's runtime of its prompt (encoded once, the
samples of one request share it) and of its completions; ``None`` when a model has none.

The estimate is an upper-ish bound (completions often stop early); the search calibrates it
against measured trials before skipping anything (see ``runner``). Techniques it does not
know are costed 0 and listed in ``unknown``, so they are never skipped on a guess.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

# (model, prompt tokens encoded per call, completion tokens per call) -> idealized seconds, None if unknown
RuntimeFn = Callable[[str, float, float], "float | None"]

_TEMPLATES = {"generate": "generate.j2", "critique": "critique.j2", "rank": "rank.j2", "verify": "verify.j2",
              "fuse": "fuse.j2", "judge": "judge_pointwise.j2", "pairwise": "judge_pairwise.j2",
              "grm": "judge_grm.j2"}


@lru_cache(maxsize=32)
def template_tokens(technique: str) -> int:
    """Rough token count of a packaged template's fixed text (4 characters a token)."""
    name = _TEMPLATES.get(technique)
    if name is None:
        return 0
    try:
        import archon.prompts as prompts_mod

        path = Path(prompts_mod.__file__).parent / "prompts" / name
        return len(path.read_text()) // 4
    except OSError:
        return 60


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
    runtime: float | None = 0.0  # idealized seconds; None once a model without a profile is called
    runtime_of: RuntimeFn | None = field(default=None, repr=False)

    def add(self, model: str, prompt: float, completion: float, calls: float, parameters: float | None,
            encoded: float | None = None) -> None:
        """``encoded``: prompt tokens encoded per call (default ``prompt / calls``; the samples of
        one request share their prompt)."""
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.tokens += prompt + completion
        self.calls += calls
        self.by_model[model] += prompt + completion
        self.flops += 2.0 * (parameters or 0.0) * (prompt + completion)
        if self.runtime_of is None or calls <= 0:
            if self.runtime_of is None:
                self.runtime = None
            return
        per_call = self.runtime_of(model, encoded if encoded is not None else prompt / calls, completion / calls)
        self.runtime = None if per_call is None or self.runtime is None else self.runtime + calls * per_call

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": round(self.tokens, 1), "prompt_tokens": round(self.prompt_tokens, 1),
                "completion_tokens": round(self.completion_tokens, 1), "calls": round(self.calls, 2),
                "flops": self.flops, "runtime": round(self.runtime, 4) if self.runtime is not None else None,
                "unknown": list(self.unknown)}


@dataclass
class _Out:
    count: float
    length: float  # tokens of one candidate as later prompts show it (text + critique)


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


def estimate_cost(config: dict[str, Any], *, question_tokens: float = 32.0,
                  parameters: Callable[[str], float | None] | None = None,
                  runtime: RuntimeFn | None = None) -> CostEstimate:
    """Estimated cost of one query through the pipeline ``config`` (a config dict)."""
    defaults = config.get("defaults") or {}
    d_model = defaults.get("model", "embedded")
    d_max = int(defaults.get("max_tokens", 256))
    params_of = parameters or (lambda _m: None)
    est = CostEstimate(runtime_of=runtime)
    outs: dict[str, _Out] = {}
    q = float(question_tokens)
    for node, inputs in _nodes(config):
        tech = node["technique"]
        model = node.get("model") or d_model
        mt = float(node.get("max_tokens") or d_max)
        ins = [outs[i] for i in inputs if i in outs]
        n_in = sum(o.count for o in ins)
        length = (sum(o.count * o.length for o in ins) / n_in) if n_in else 0.0
        if ":" in tech and "samples" in node and not inputs:
            tech = "generate"  # your own sampler (module:Class) with generate's parameters
        tpl = template_tokens(tech)
        if tech == "generate":
            models = node.get("models") or [model]
            k = int(node.get("samples", 1))
            for m in models:
                est.add(m, k * (q + tpl), k * mt, 1, params_of(m), encoded=q + tpl)
            outs[node["id"]] = _Out(k * len(models), mt)
        elif tech == "critique":
            est.add(model, n_in * (q + tpl + length), n_in * mt, n_in, params_of(model))
            outs[node["id"]] = _Out(n_in, length + mt)
        elif tech == "verify":
            est.add(model, n_in * (q + tpl + length), n_in * mt, n_in, params_of(model))
            outs[node["id"]] = _Out(n_in, length)
        elif tech == "rank":
            if n_in > 1:
                rmt = float(node.get("max_tokens") or 64)
                est.add(model, q + tpl + n_in * length, rmt, 1, params_of(model))
            outs[node["id"]] = _Out(min(float(node.get("top_k", 3)), n_in), length)
        elif tech == "fuse":
            fusers = node.get("fusers") or [model]
            k = int(node.get("samples", 1))
            if n_in:
                for m in fusers:
                    est.add(m, k * (q + tpl + n_in * length), k * mt, 1, params_of(m), encoded=q + tpl + n_in * length)
                outs[node["id"]] = _Out(len(fusers) * k, mt)
            else:
                outs[node["id"]] = _Out(0, 0)
        elif tech in ("best_of_n", "score"):
            scorer = node.get("scorer") or {"type": "judge"}
            kind = scorer.get("type", "judge")
            smodel = scorer.get("model") or model
            smt = float(scorer.get("max_tokens") or node.get("max_tokens") or d_max)
            if kind == "pairwise":
                pairs = n_in * (n_in - 1) / 2
                est.add(smodel, pairs * (q + template_tokens("pairwise") + 2 * length), pairs * smt, pairs,
                        params_of(smodel))
            elif kind == "grm":
                k = float(scorer.get("samples", 1))
                est.add(smodel, k * (q + template_tokens("grm") + n_in * length), k * smt, 1, params_of(smodel),
                        encoded=q + template_tokens("grm") + n_in * length)
            elif kind in ("logprob", "reward_model"):
                est.add(smodel, n_in * (q + length), 0.0, n_in, params_of(smodel))
            else:
                est.add(smodel, n_in * (q + template_tokens("judge") + length), n_in * smt, n_in,
                        params_of(smodel))
            keep = float(node.get("top_k", n_in)) if tech == "best_of_n" else n_in
            outs[node["id"]] = _Out(min(keep, n_in), length)
        elif tech in ("vote", "select"):
            keep = 1.0 if tech == "select" else n_in
            outs[node["id"]] = _Out(min(keep, n_in), length)
        else:
            est.unknown.append(tech)
            count = next((node[k] for k in ("particles", "beam_width", "samples", "n") if isinstance(node.get(k), int)),
                         max(n_in, 1))
            outs[node["id"]] = _Out(float(count), mt)
    return est
