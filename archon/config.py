"""Pipeline configuration files: schema, loading, and errors that point at the line.

A config lists ``models``, ``defaults``, an optional per-query ``budget``, and either
``nodes`` (each with an ``id``, a ``technique``, optional ``inputs`` defaulting to the
node above it, and the technique's parameters) or ``layers`` (a list of lists: each
layer's nodes read every node of the layer before, Archon's shape).
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.engine.budget import Budget
from archon.engine.graph import PipelineGraph
from archon.errors import ConfigError
from archon.techniques import TECHNIQUES
from archon.techniques.base import Defaults, Technique


class DefaultsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "embedded"
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1)
    seed: int = 0
    system: str | None = None

    def to_defaults(self) -> Defaults:
        return Defaults(**self.model_dump())


class NodeConfig(BaseModel):
    """``id``, ``technique`` and ``inputs``; every other key is the technique's parameter."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    technique: str
    inputs: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "pipeline"
    description: str = ""
    models: dict[str, ModelSpec] = Field(default_factory=dict)
    defaults: DefaultsConfig = Field(default_factory=DefaultsConfig)
    budget: Budget = Field(default_factory=Budget)
    nodes: list[NodeConfig] | None = None
    layers: list[list[NodeConfig]] | None = None
    output: str | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> PipelineConfig:
        if (self.nodes is None) == (self.layers is None):
            raise ValueError("give exactly one of `nodes` (a DAG) or `layers` (a chain of layers)")
        return self

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.models)


# -- YAML with line numbers --------------------------------------------------------------

def _line_of(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if k.value == key), None)
            key_node = next((k for k, v in node.value if k.value == key), None)
            if match is None:
                return line
            line = (key_node or match).start_mark.line + 1
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for key in loc:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _suggest(word: str, options: list[str]) -> str | None:
    close = difflib.get_close_matches(word, options, n=1)
    return f"did you mean `{close[0]}`?" if close else None


class _Source:
    def __init__(self, file: str | None, root: yaml.Node | None) -> None:
        self.file = file
        self.root = root

    def error(self, message: str, loc: tuple[Any, ...], hint: str | None = None) -> ConfigError:
        return ConfigError(message, file=self.file, path=_path(loc) or None, line=_line_of(self.root, loc), hint=hint)


def _from_validation(src: _Source, exc: ValidationError, prefix: tuple[Any, ...] = (),
                     allowed: list[str] | None = None) -> ConfigError:
    err = exc.errors()[0]
    loc = prefix + tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        options = allowed or []
        hint = _suggest(key, options) or (f"allowed keys: {', '.join(options)}" if options else None)
        return src.error(f"unknown key {key!r}", loc, hint)
    if err["type"] == "missing":
        return src.error(f"missing required field {loc[-1]!r}", loc)
    return src.error(err["msg"], loc, f"got {err.get('input')!r}" if "input" in err else None)


def read_yaml_file(path: str | Path, *, what: str = "config file", missing_hint: str = "check the path"
                   ) -> tuple[Any, yaml.Node | None]:
    """Parsed data and the node tree (for line numbers); YAML errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}", hint=missing_hint)
    text = p.read_text()
    try:
        return yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=str(p),
                          line=mark.line + 1 if mark else None,
                          hint="check indentation and that lists use `- ` or [a, b]") from None


def load_yaml(path: str | Path) -> tuple[dict[str, Any], yaml.Node | None]:
    p = Path(path)
    data, root = read_yaml_file(p)
    if not isinstance(data, dict):
        raise ConfigError("a pipeline config must be a mapping with `nodes:` or `layers:`", file=str(p))
    return data, root


def parse_config(data: dict[str, Any], *, file: str | None = None, root: yaml.Node | None = None) -> PipelineConfig:
    src = _Source(file, root)
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        return_err = _from_validation(src, exc, allowed=list(PipelineConfig.model_fields))
        raise return_err from None


def apply_runtime_profiles(config: PipelineConfig, pairs: list[str] | tuple[str, ...]) -> PipelineConfig:
    """``--runtime-profile NAME=PATH``: point model NAME at a runtime profile file.

    ``embedded`` can be given without defining it under ``models:``.
    """
    from archon.backends.registry import EMBEDDED_NAME, embedded_spec
    from archon.backends.runtime_profile import RuntimeProfile

    models = dict(config.models)
    for pair in pairs:
        name, eq, path = pair.partition("=")
        name, path = name.strip(), path.strip()
        if not eq or not name or not path:
            raise ConfigError(f"--runtime-profile {pair!r}: expected NAME=PATH",
                              hint="e.g. --runtime-profile embedded=embedded.runtime_profile.json")
        spec = models.get(name) or (embedded_spec() if name == EMBEDDED_NAME else None)
        if spec is None:
            known = sorted({*models, EMBEDDED_NAME})
            raise ConfigError(f"--runtime-profile {pair!r}: unknown model {name!r}",
                              hint=_suggest(name, known) or f"known models: {', '.join(known)}")
        RuntimeProfile.load(path, field=f"--runtime-profile {name}")  # fail now, not mid-run
        models[name] = spec.model_copy(update={"runtime_profile": path})
    return config.model_copy(update={"models": models})


def check_runtime_profiles(config: PipelineConfig, file: str | None = None) -> None:
    """Every ``runtime_profile:`` in ``models:`` names a readable profile (checked at load time)."""
    from archon.backends.runtime_profile import RuntimeProfile

    for name, spec in config.models.items():
        if spec.runtime_profile:
            try:
                RuntimeProfile.load(spec.runtime_profile, field=f"models.{name}.runtime_profile")
            except ConfigError as exc:
                where = f" (in {file})" if file else ""
                raise ConfigError(exc.message + where, file=exc.file, path=exc.path, hint=exc.hint) from None


def technique_class(name: str) -> type[Technique]:
    """A packaged technique by name, or ``package.module:Class`` for your own."""
    if name in TECHNIQUES:
        return TECHNIQUES[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        if not (isinstance(cls, type) and issubclass(cls, Technique)):
            raise TypeError(f"{name} is not a Technique subclass")
        return cls
    raise KeyError(name)


def build_graph(config: PipelineConfig, *, file: str | None = None, root: yaml.Node | None = None,
                model_override: str | None = None) -> PipelineGraph:
    src = _Source(file, root)
    registry = config.registry()
    entries: list[tuple[tuple[Any, ...], NodeConfig, list[str]]] = []
    if config.nodes is not None:
        previous: str | None = None
        for i, node in enumerate(config.nodes):
            node_id = node.id or f"{node.technique}_{i}"
            inputs = node.inputs if node.inputs is not None else ([previous] if previous else [])
            entries.append((("nodes", i), node.model_copy(update={"id": node_id}), inputs))
            previous = node_id
    else:
        prev_layer: list[str] = []
        for li, layer in enumerate(config.layers or []):
            ids = []
            for ni, node in enumerate(layer):
                node_id = node.id or f"{node.technique}_{li}_{ni}"
                inputs = node.inputs if node.inputs is not None else list(prev_layer)
                entries.append((("layers", li, ni), node.model_copy(update={"id": node_id}), inputs))
                ids.append(node_id)
            prev_layer = ids
    techniques: dict[str, Technique] = {}
    inputs_of: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for loc, node, inputs in entries:
        assert node.id is not None
        if node.id in techniques:
            raise src.error(f"duplicate node id {node.id!r}", (*loc, "id"), "node ids must be unique")
        try:
            cls = technique_class(node.technique)
        except (KeyError, ImportError, AttributeError, TypeError):
            raise src.error(f"unknown technique {node.technique!r}", (*loc, "technique"),
                            _suggest(node.technique, list(TECHNIQUES))
                            or f"known techniques: {', '.join(TECHNIQUES)}") from None
        params = node.params()
        try:
            technique = cls(cls.Params.model_validate(params))
        except ValidationError as exc:
            raise _from_validation(src, exc, loc, allowed=["id", "technique", "inputs", *cls.Params.model_fields]
                                   ) from None
        if model_override:
            technique = _override_models(technique, model_override)
        for model in technique.models(config.defaults.to_defaults()):
            if model not in registry:
                raise src.error(f"unknown model {model!r}", loc,
                                _suggest(model, registry.names())
                                or f"define it under `models:` (known: {', '.join(registry.names())})")
        techniques[node.id] = technique
        inputs_of[node.id] = inputs
        paths[node.id] = _path(loc)
    return PipelineGraph(techniques, inputs_of, output=config.output, source=file, paths=paths)


def _override_models(technique: Technique, model: str) -> Technique:
    """``--model NAME``: every call of every node goes to one model.

    Model-valued fields are found by name (``model``, ``*_model``, ``drafter``, ``judge``,
    ``models``, ``fusers``) and inside scorer specs (a mapping with a ``model`` key), so a
    technique added later is covered without editing this function.
    """
    updates: dict[str, Any] = {}
    for name in type(technique.params).model_fields:
        value = getattr(technique.params, name)
        if value is None:
            continue
        if name in ("model", "drafter", "judge") or name.endswith("_model"):
            if isinstance(value, str):
                updates[name] = model
        elif name in ("models", "fusers") and isinstance(value, list):
            updates[name] = [model] * len(value)
        elif isinstance(value, dict) and "model" in value:
            updates[name] = {**value, "model": model}
        elif isinstance(value, BaseModel) and "model" in type(value).model_fields and value.model:  # type: ignore[attr-defined]
            updates[name] = value.model_copy(update={"model": model})
    return type(technique)(technique.params.model_copy(update=updates))
