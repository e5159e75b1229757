"""Pipeline configuration files: schema, loading, and errors that point at the line.

A config lists ``models``, ``defaults``, an optional per-query ``budget``, and either
``nodes`` (each with an ``id``, a ``technique``, optional ``inputs`` defaulting to the
node above it, and the technique's parameters) or ``layers`` (a list of lists: each
layer's nodes read every node of the layer before, Archon's shape).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import jinja2
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from archon.backends.registry import EMBEDDED_NAME, ModelRegistry, ModelSpec
from archon.engine.budget import Budget
from archon.engine.graph import PipelineGraph
from archon.errors import BudgetError, ConfigError
from archon.registry import suggest
from archon.techniques import TECHNIQUES
from archon.techniques.base import Defaults, Technique
from archon.yaml_guard import decode_yaml_bytes, load_checked, quote


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
    scheduler: Literal["dataflow", "levels"] = Field(
        "dataflow", description="dataflow: each query's programs run as soon as their inputs exist; "
                                "levels: all queries level by level in lockstep (one request per model per round)")
    window: int | None = Field(None, ge=1, description="queries in flight (default: chosen by the backend)")
    nodes: list[NodeConfig] | None = None
    layers: list[list[NodeConfig]] | None = None
    output: str | None = None
    plugins: list[str] = Field(
        default_factory=list, description="Python modules to import for `technique: module:Class` nodes; "
        "a config runs no code of its own unless its modules are listed here")
    allow_external_templates: bool = Field(
        False, description="let `*_template:` paths leave the config file's folder")

    @model_validator(mode="after")
    def _one_shape(self) -> PipelineConfig:
        if (self.nodes is None) == (self.layers is None):
            raise ValueError("give exactly one of `nodes` (a DAG) or `layers` (a chain of layers)")
        return self

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.models)


# -- YAML with line numbers --------------------------------------------------------------

_PROMPT_FLOOR = 8  # estimate_prompt_tokens of an empty prompt
_CALLS_AT_MAX_TOKENS = frozenset({"generate", "fuse", "critique"})  # every call asks for the node's max_tokens


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
        hint = suggest(key, options) or (f"allowed keys: {', '.join(options)}" if options else None)
        return src.error(f"unknown key {key!r}", loc, hint)
    if err["type"] == "missing":
        return src.error(f"missing required field {loc[-1]!r}", loc)
    return src.error(err["msg"], loc, f"got {quote(err.get('input'))}" if "input" in err else None)


def read_yaml_file(path: str | Path, *, what: str = "config file", missing_hint: str = "check the path"
                   ) -> tuple[Any, yaml.Node | None]:
    """Parsed data and the node tree (for line numbers); YAML errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}", hint=missing_hint)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {what}: {exc.strerror}", file=str(p)) from None
    text = decode_yaml_bytes(raw, str(p))
    try:
        return load_checked(text, str(p))
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


def technique_class(name: str, plugins: Sequence[str] | None = None) -> type[Technique]:
    """A packaged technique by name, or ``package.module:Class`` from a module in ``plugins``.

    ``plugins=None`` (the SDK, where the caller is the one naming the code) imports the
    module; a config passes its ``plugins:`` list, and a module not in it is never imported.
    Errors are ``ConfigError`` (the message says what failed) or ``KeyError`` (unknown name).
    """
    if name in TECHNIQUES:
        return TECHNIQUES[name]
    if ":" not in name:
        raise KeyError(name)
    module, _, attr = name.partition(":")
    if plugins is not None and module not in plugins:
        raise ConfigError(f"technique {quote(name)} is code from module {quote(module)}, which is not listed "
                          "under `plugins:`; archon imports no module a config names unless it is listed",
                          hint=f"add `plugins: [{module}]` at the top level (this runs that module's code)")
    mod = import_plugin(module)
    cls = getattr(mod, attr, None)
    if cls is None:
        raise ConfigError(f"module {quote(module)} has no attribute {quote(attr)}")
    if not (isinstance(cls, type) and issubclass(cls, Technique)):
        raise ConfigError(f"{quote(name)} is not a Technique subclass")
    return cls


def import_plugin(module: str) -> Any:
    """Import a module named under ``plugins:``; a failure says which module and why."""
    try:
        return importlib.import_module(module)
    except Exception as exc:  # any error in the user's module is reported, never a traceback
        raise ConfigError(f"cannot import plugin module {quote(module)}: {type(exc).__name__}: {exc}",
                          hint="check the module name and that it imports cleanly (python -c 'import ...')"
                          ) from None


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
    for i, module in enumerate(config.plugins):
        try:
            import_plugin(module)
        except ConfigError as exc:
            raise src.error(exc.message, ("plugins", i), exc.hint) from None
    techniques: dict[str, Technique] = {}
    inputs_of: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for loc, node, inputs in entries:
        assert node.id is not None
        if node.id in techniques:
            raise src.error(f"duplicate node id {quote(node.id)}", (*loc, "id"), "node ids must be unique")
        try:
            cls = technique_class(node.technique, config.plugins)
        except ConfigError as exc:
            raise src.error(exc.message, (*loc, "technique"), exc.hint) from None
        except KeyError:
            raise src.error(f"unknown technique {quote(node.technique)}", (*loc, "technique"),
                            suggest(node.technique, list(TECHNIQUES))
                            or f"known techniques: {', '.join(TECHNIQUES)}") from None
        params = node.params()
        try:
            technique = cls(cls.Params.model_validate(params))
        except ValidationError as exc:
            raise _from_validation(src, exc, loc, allowed=["id", "technique", "inputs", *cls.Params.model_fields]
                                   ) from None
        technique = _resolve_templates(technique, src, loc, config.allow_external_templates)
        if model_override:
            technique = _override_models(technique, model_override)
        for model in technique.models(config.defaults.to_defaults()):
            if model not in registry:
                raise src.error(f"unknown model {quote(model)}", loc,
                                suggest(model, registry.names())
                                or f"define it under `models:` (known: {', '.join(registry.names())})")
            _check_model(src, model, registry.get(model), model in config.models)
        techniques[node.id] = technique
        inputs_of[node.id] = inputs
        paths[node.id] = _path(loc)
    check_budget(config.budget, techniques, config.defaults.to_defaults(), registry)
    return PipelineGraph(techniques, inputs_of, output=config.output, source=file, paths=paths)


def _check_model(src: _Source, name: str, spec: ModelSpec, defined: bool) -> None:
    """What can be known about a model without loading or calling it."""
    loc: tuple[Any, ...] = ("models", name) if defined else ()
    if spec.backend == "openai" and not spec.base_urls():
        raise src.error(f"model {quote(name)}: backend `openai` needs `base_url:`", (*loc, "base_url"),
                        "e.g. base_url: http://127.0.0.1:8000/v1")
    if (spec.backend == "llama_cpp" and (spec.path is not None or name != EMBEDDED_NAME)
            and (not spec.path or not Path(spec.path).expanduser().is_file())):
        raise src.error(f"model {quote(name)}: GGUF file not found at {quote(spec.path)}", (*loc, "path"),
                        "set `path:` to an existing .gguf file")
    if spec.backend == "vllm" and spec.path is not None:
        from archon.backends.vllm_offline import _check_model_path
        from archon.errors import BackendError

        try:
            _check_model_path(name, spec.path)
        except BackendError as exc:
            raise src.error(str(exc), (*loc, "path")) from None


_TEMPLATE_FIELDS = ("prompt_template",)


def _template_fields(technique: Technique) -> list[str]:
    return [f for f in type(technique.params).model_fields
            if (f in _TEMPLATE_FIELDS or f.endswith("_template")) and isinstance(getattr(technique.params, f), str)]


def _resolve_templates(technique: Technique, src: _Source, loc: tuple[Any, ...], allow_external: bool
                       ) -> Technique:
    """Template paths resolve against the config file's folder and must stay inside it.

    Each template must exist and parse now, so a bad one is reported by ``validate`` with
    its node, not after a run has spent its generations.
    """
    fields = _template_fields(technique)
    if not fields:
        return technique
    base = (Path(src.file).resolve().parent if src.file else Path.cwd().resolve())
    updates: dict[str, str] = {}
    for name in fields:
        value = getattr(technique.params, name)
        path = (base / Path(value).expanduser()).resolve()
        if src.file and not allow_external and not path.is_relative_to(base):
            raise src.error(f"template {quote(value)} is outside the config's folder {base}", (*loc, name),
                            "put the template next to the config, or set `allow_external_templates: true` "
                            "at the top level to allow it")
        if not path.is_file():
            raise src.error(f"template file not found: {path}", (*loc, name),
                            "paths are relative to the config file's folder")
        try:
            text = decode_yaml_bytes(path.read_bytes(), str(path))
            jinja2.Environment().parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise src.error(f"template {path}:{exc.lineno}: {exc.message}", (*loc, name)) from None
        except ConfigError as exc:
            raise src.error(f"template {path}: {exc.message}", (*loc, name), exc.hint) from None
        updates[name] = str(path)
    return type(technique)(technique.params.model_copy(update=updates))


def check_budget(budget: Budget, techniques: dict[str, Technique], defaults: Defaults,
                 registry: ModelRegistry) -> None:
    """Refuse a budget that cannot pay for even the cheapest call of the pipeline.

    The cheapest call is costed the way the engine costs it before calling: an empty prompt
    (the estimator's 8-token floor) plus, for one sample, the node's ``max_tokens`` where
    every call of the technique uses it, else 1 (judges and step scorers ask for one token),
    so a pipeline this refuses could not have produced anything.
    """
    costs = []
    for node, tech in techniques.items():
        models = tech.models(defaults)
        if not models:
            continue
        max_tokens = (tech.params.max_tokens or defaults.max_tokens) if tech.name in _CALLS_AT_MAX_TOKENS else 1
        tokens = _PROMPT_FLOOR + max_tokens
        params = min((registry.get(m).parameters or 0.0) for m in models)
        costs.append((tokens, 2.0 * params * tokens, node))
    if not costs:
        return
    tokens, _, node = min(costs)
    if budget.max_tokens is not None and budget.max_tokens < tokens:
        raise BudgetError(f"budget.max_tokens is {budget.max_tokens}, but the cheapest call (node {quote(node)}) "
                          f"needs ~{tokens} tokens (prompt of at least {_PROMPT_FLOOR} + max_tokens "
                          f"{tokens - _PROMPT_FLOOR}); every answer would be empty. Raise the budget or lower "
                          "the nodes' max_tokens")
    flops, _, node = min((c[1], c[0], c[2]) for c in costs)
    if budget.max_flops is not None and flops > 0 and budget.max_flops < flops:
        raise BudgetError(f"budget.max_flops is {budget.max_flops:.3g}, but the cheapest call (node {quote(node)}) "
                          f"needs ~{flops:.3g} FLOPs; every answer would be empty")


def _override_models(technique: Technique, model: str) -> Technique:
    """``--model NAME``: every call of every node goes to one model.

    The technique names its model parameters (``Technique.model_params``); scorer
    parameters (and their nested scorers, e.g. a GRM's meta-RM) with an explicit ``model``
    are rewritten too.
    """
    from archon.scoring import Scorer

    def scorer_with(value: Scorer) -> Scorer:
        updates: dict[str, Any] = {"model": model} if value.model else {}
        for name in type(value).model_fields:
            inner = getattr(value, name)
            if isinstance(inner, Scorer):
                updates[name] = scorer_with(inner)
        return value.model_copy(update=updates) if updates else value

    updates: dict[str, Any] = {}
    for name in type(technique).model_params():
        value = getattr(technique.params, name)
        if isinstance(value, str):
            updates[name] = model
        elif isinstance(value, list):
            updates[name] = [model] * len(value)
    for name in type(technique.params).model_fields:
        value = getattr(technique.params, name)
        if isinstance(value, Scorer):
            updates[name] = scorer_with(value)
    return type(technique)(technique.params.model_copy(update=updates))
