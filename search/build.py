"""From sampled choices to a pipeline config.

``build_config(space, suggester)`` walks the space in a fixed order, asks the suggester
for every choice that matters (define-by-run: a layer's knobs are asked only when that
layer exists), and returns a plain config dict that ``archon.config.parse_config`` and
``build_graph`` validate. A combination that cannot make a sensible pipeline raises
``InvalidPipeline``; the search turns that into a pruned trial.

The suggester is an Optuna trial in a search, or a replay of fixed choices
(``FixedSuggester``) to rebuild a trial's pipeline, or ``enumerate_space``'s explorer.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from typing import Any, Protocol

from .space import Knob, Range, SearchSpace, knob_values


class InvalidPipeline(ValueError):
    """These choices do not make a sensible pipeline (the trial is pruned, not failed)."""


class Suggester(Protocol):
    def categorical(self, name: str, choices: list[Any]) -> Any: ...

    def integer(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int: ...

    def real(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float: ...


class OptunaSuggester:
    """Asks an ``optuna.Trial``."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def categorical(self, name: str, choices: list[Any]) -> Any:
        return self.trial.suggest_categorical(name, choices)

    def integer(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return int(self.trial.suggest_int(name, low, high, step=step, log=log))

    def real(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return float(self.trial.suggest_float(name, low, high, step=step, log=log))


class FixedSuggester:
    """Replays recorded choices (a trial's ``params``); a missing choice is an error."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = dict(params)

    def _get(self, name: str) -> Any:
        if name not in self.params:
            raise KeyError(f"no value for search parameter {name!r}")
        return self.params[name]

    def categorical(self, name: str, choices: list[Any]) -> Any:
        return self._get(name)

    def integer(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return int(self._get(name))

    def real(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        return float(self._get(name))


def pick(s: Suggester, name: str, knob: Knob) -> Any:
    """A fixed knob is returned as is; a list or range is asked of the suggester."""
    if isinstance(knob, Range):
        if knob.is_int:
            return s.integer(name, int(knob.low), int(knob.high), int(knob.step or 1), knob.log)
        return s.real(name, float(knob.low), float(knob.high), None if knob.step is None else float(knob.step),
                      knob.log)
    if isinstance(knob, list):
        return knob[0] if len(knob) == 1 else s.categorical(name, list(knob))
    return knob


_UNSET = object()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "m"


def _count_hint(cls: Any, params: dict[str, Any], default: int) -> int:
    """How many candidates the step technique hands on: its own ``output_count``."""
    try:
        return int(cls(cls.Params.model_validate(params)).output_count(default))
    except Exception:  # invalid choices are reported when the config is built
        return default


def build_config(space: SearchSpace, s: Suggester, *, name: str | None = None) -> dict[str, Any]:
    """The pipeline config for one set of choices (raises ``InvalidPipeline``)."""
    from archon.techniques import TECHNIQUES

    base = copy.deepcopy(space.base)
    config: dict[str, Any] = {"name": name or base.pop("name", None) or f"{space.name}-trial"}
    base.pop("name", None)
    config.update(base)
    nodes: list[dict[str, Any]] = []
    heads: list[str] = []
    count = 0

    method = pick(s, "step.method", space.step.methods)
    step_cls = TECHNIQUES.get(method) if method else None
    step_params: dict[str, Any] = {}
    if method:
        step_params = {k: pick(s, f"step.{method}.{k}", v) for k, v in space.step.knobs(method).items()}
    if step_cls is not None and step_cls.consumes == "query":
        nodes.append({"id": "step", "technique": method, "inputs": [], **step_params})
        heads, count = ["step"], _count_hint(step_cls, step_params, 1)
    else:
        gen = space.generate
        shared_temp: Any = None
        max_tokens: Any = _UNSET
        for model, knob in gen.models.items():
            samples = int(pick(s, f"gen.{model}.samples", knob))
            if samples <= 0:
                continue
            if gen.per_model_temperature:
                temperature = pick(s, f"gen.{model}.temperature", gen.temperature)
            else:
                if shared_temp is None:
                    shared_temp = pick(s, "gen.temperature", gen.temperature)
                temperature = shared_temp
            node: dict[str, Any] = {"id": f"gen_{_slug(model)}", "technique": gen.technique, "inputs": [],
                                    **copy.deepcopy(gen.params), "model": model, "samples": samples,
                                    "temperature": temperature}
            if max_tokens is _UNSET:
                max_tokens = pick(s, "gen.max_tokens", gen.max_tokens)
            if max_tokens is not None:
                node["max_tokens"] = max_tokens
            nodes.append(node)
            heads.append(node["id"])
            count += samples
        if not heads:
            raise InvalidPipeline("every generator draws 0 samples: no candidates")
        if step_cls is not None:  # a technique over candidates (e.g. refinement) right after sampling
            nodes.append({"id": "step", "technique": method, "inputs": heads, **step_params})
            heads, count = ["step"], min(count, _count_hint(step_cls, step_params, count))

    lay = space.layers
    n_layers = int(pick(s, "layers.count", lay.count))
    for i in range(1, n_layers + 1):
        prefix = f"L{i}." if lay.per_layer else "layer."
        if pick(s, prefix + "critique", lay.critique):
            node = {"id": f"critique_{i}", "technique": "critique", "inputs": heads}
            if lay.critique_max_tokens:
                node["max_tokens"] = lay.critique_max_tokens
            nodes.append(node)
            heads = [node["id"]]
        top_k = pick(s, prefix + "rank_top_k", lay.rank_top_k)
        if top_k:
            if top_k >= count:
                raise InvalidPipeline(f"layer {i}: ranking keeps the top {top_k} of only {count} candidates")
            node = {"id": f"rank_{i}", "technique": "rank", "inputs": heads, "top_k": int(top_k)}
            if lay.rank_max_tokens:
                node["max_tokens"] = lay.rank_max_tokens
            nodes.append(node)
            heads, count = [node["id"]], int(top_k)
        if pick(s, prefix + "verify", lay.verify):
            node = {"id": f"verify_{i}", "technique": "verify", "inputs": heads, "fallback": "all"}
            if lay.verify_max_tokens:
                node["max_tokens"] = lay.verify_max_tokens
            nodes.append(node)
            heads = [node["id"]]
        n_fusers = int(pick(s, prefix + "fusers", lay.fusers))
        node = {"id": f"fuse_{i}", "technique": "fuse", "inputs": heads}
        if lay.fuser_models:
            models = [pick(s, f"{prefix}fuser{j + 1}.model", list(lay.fuser_models)) for j in range(n_fusers)]
            node["fusers"] = models
        elif n_fusers > 1:
            default = (config.get("defaults") or {}).get("model", "embedded")
            node["fusers"] = [default] * n_fusers
        samples = int(pick(s, prefix + "samples", lay.samples))
        if samples > 1:
            node["samples"] = samples
        for key in ("temperature", "max_tokens"):
            value = pick(s, prefix + key, getattr(lay, key))
            if value is not None:
                node[key] = value
        nodes.append(node)
        heads, count = [node["id"]], n_fusers * samples

    fin = space.final
    if pick(s, "final.verify", fin.verify):
        node = {"id": "verify_final", "technique": "verify", "inputs": heads, "fallback": "all"}
        if fin.verify_max_tokens:
            node["max_tokens"] = fin.verify_max_tokens
        nodes.append(node)
        heads = [node["id"]]
    selector = pick(s, "final.selector", fin.selector)
    if selector == "first":
        if count != 1:
            raise InvalidPipeline(f"selector `first` needs exactly one candidate, the pipeline makes {count}")
        node = {"id": "select", "technique": "select", "method": "first", "inputs": heads}
    elif selector == "vote":
        node = {"id": "select", "technique": "select", "method": "vote", "inputs": heads}
    elif count == 1:
        raise InvalidPipeline(f"selector `{selector}` over a single candidate does nothing")
    elif selector == "fuse":
        node = {"id": "final_fuse", "technique": "fuse", "inputs": heads}
        model = pick(s, "final.fuser_model", fin.fuser_model)
        if model:
            node["model"] = model
    elif selector == "rank":
        node = {"id": "final_rank", "technique": "rank", "inputs": heads, "top_k": 1}
    elif selector == "best_of_n":
        names = list(fin.scorers)
        scorer = pick(s, "final.scorer", names)
        node = {"id": "best_of_n", "technique": "best_of_n", "inputs": heads, "top_k": 1,
                "scorer": copy.deepcopy(fin.scorers[scorer])}
        if fin.scorer_max_tokens:
            node["max_tokens"] = fin.scorer_max_tokens
    else:  # pragma: no cover - the schema rejects other names
        raise InvalidPipeline(f"unknown selector {selector!r}")
    if selector in ("fuse", "rank"):
        max_tokens = pick(s, "final.max_tokens", fin.max_tokens)
        if max_tokens is not None:
            node["max_tokens"] = max_tokens
    nodes.append(node)
    config["nodes"] = nodes
    config["output"] = node["id"]
    return config


def describe(config: dict[str, Any]) -> str:
    """A one-line summary of a pipeline config, for tables and progress."""
    parts: list[str] = []
    gens = []
    for node in config.get("nodes") or []:
        t = node["technique"]
        if node.get("id", "").startswith("gen_") or t == "generate":
            gens.append(f"{node.get('model', 'default')}x{node.get('samples', 1)}"
                        + (f"@t{node['temperature']}" if "temperature" in node else ""))
            continue
        if gens:
            parts.append("gen " + "+".join(gens))
            gens = []
        if t == "fuse":
            k = len(node.get("fusers") or [1])
            parts.append(f"fuse{'x' + str(k) if k > 1 else ''}")
        elif t == "rank":
            parts.append(f"rank{node.get('top_k', '')}")
        elif t == "select":
            parts.append(node.get("method", "select"))
        elif t == "best_of_n":
            parts.append(f"best_of_n({(node.get('scorer') or {}).get('type', '?')})")
        else:
            knobs = ",".join(f"{k}={v}" for k, v in node.items() if k not in ("id", "technique", "inputs"))
            parts.append(t + (f"({knobs})" if knobs and node.get("id") == "step" else ""))
    if gens:
        parts.append("gen " + "+".join(gens))
    return " > ".join(parts)


# -- enumeration (small spaces only) -------------------------------------------------------

class _Branch(Exception):
    def __init__(self, name: str, values: list[Any]) -> None:
        super().__init__(name)
        self.name = name
        self.values = values


class _Explorer:
    def __init__(self, fixed: dict[str, Any]) -> None:
        self.fixed = fixed

    def categorical(self, name: str, choices: list[Any]) -> Any:
        if name in self.fixed:
            return self.fixed[name]
        raise _Branch(name, list(choices))

    def integer(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        if name in self.fixed:
            return int(self.fixed[name])
        if log:
            raise ValueError(f"{name}: a log range cannot be enumerated; use a list of values")
        raise _Branch(name, list(range(low, high + 1, step)))

    def real(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        if name in self.fixed:
            return float(self.fixed[name])
        if step is None or log:
            raise ValueError(f"{name}: a continuous range cannot be enumerated; use a list of values")
        n = round((high - low) / step)
        raise _Branch(name, [low + i * step for i in range(n + 1)])


def enumerate_space(space: SearchSpace, limit: int = 100_000
                    ) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None, str | None]]:
    """Every set of choices of a (finite) space: ``(params, config or None, why invalid)``."""
    stack: list[dict[str, Any]] = [{}]
    seen = 0
    while stack:
        fixed = stack.pop()
        try:
            config = build_config(space, _Explorer(fixed))
        except _Branch as branch:
            stack.extend({**fixed, branch.name: v} for v in reversed(branch.values))
            continue
        except InvalidPipeline as exc:
            yield fixed, None, str(exc)
        else:
            yield fixed, config, None
        seen += 1
        if seen >= limit:
            raise ValueError(f"the space has more than {limit} points; it is too large to enumerate")


def space_size(space: SearchSpace) -> tuple[int, int] | None:
    """(valid, invalid) points of a finite space, or None when a range is continuous."""
    try:
        valid = invalid = 0
        for _, config, _ in enumerate_space(space, limit=20_000):
            if config is None:
                invalid += 1
            else:
                valid += 1
        return valid, invalid
    except ValueError:
        return None


def knob_count(knob: Knob) -> int | None:
    values = knob_values(knob)
    return None if values is None else len(values)
