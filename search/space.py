"""The search-space file: which pipelines a search may try.

A space describes Archon's pipeline shape with a choice at every decision::

    name: tiny
    base:                          # copied into every trial's pipeline config
      defaults: {model: embedded, max_tokens: 8}
    generate:
      models: {embedded: [1, 2, 4]}   # which models sample, and how many samples each (0 removes it)
      temperature: [0.2, 0.8]
    layers:                        # fuse layers; before each fuse: critique? rank (top-k)? verify?
      count: [0, 1]
      fusers: [1, 2]
      critique: [false, true]
      rank_top_k: [null, 2]
      verify: false
    final:
      selector: [vote, fuse, best_of_n]
      scorers: {judge: {type: judge}}
    step:                          # step-level techniques (when installed) and their knobs
      methods: [null, particles]
      particles: {particles: [4, 8]}

Every knob is a fixed value, a list (a categorical choice) or a range
``{low, high, step?, log?}`` (ints when ``low``/``high``/``step`` are ints). A field that
is given as a fixed value is not searched.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from archon.backends.registry import EMBEDDED_NAME, ModelSpec
from archon.config import DefaultsConfig, _line_of, _path, read_yaml_file
from archon.engine.budget import Budget
from archon.errors import ConfigError
from archon.registry import suggest as _suggest

Scalar = str | int | float | bool | None

SELECTORS = ("vote", "best_of_n", "fuse", "rank", "first")


class Range(BaseModel):
    """A numeric range: ints when low, high (and step) are ints, floats otherwise."""

    model_config = ConfigDict(extra="forbid")

    low: float | int
    high: float | int
    step: float | int | None = None
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if self.low > self.high:
            raise ValueError(f"range low ({self.low}) is above high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("give `step` or `log: true`, not both")
        return self

    @property
    def is_int(self) -> bool:
        return all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and (
            self.step is None or isinstance(self.step, int))


Knob = Range | list[Scalar] | Scalar


def knob_values(knob: Knob) -> list[Any] | None:
    """The finite values a knob may take (None for a continuous range)."""
    if isinstance(knob, Range):
        if knob.is_int and not knob.log:
            step = int(knob.step or 1)
            return list(range(int(knob.low), int(knob.high) + 1, step))
        return None
    if isinstance(knob, list):
        return list(knob)
    return [knob]


def _check_knob(knob: Knob, what: str, *, kind: type | tuple[type, ...], low: float | None = None,
                allow_none: bool = False) -> Knob:
    values = knob_values(knob)
    if isinstance(knob, list) and not knob:
        raise ValueError(f"{what}: an empty list offers nothing to choose; give at least one value")
    if isinstance(knob, list) and len({json.dumps(v) for v in knob}) != len(knob):
        raise ValueError(f"{what}: choices repeat; list each value once")
    if values is None:
        values = [knob.low, knob.high] if isinstance(knob, Range) else []
    for v in values:
        if v is None:
            if not allow_none:
                raise ValueError(f"{what}: null is not allowed here")
            continue
        if isinstance(v, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise ValueError(f"{what}: expected {_kind_name(kind)}, got {v!r}")
        if not isinstance(v, kind):
            raise ValueError(f"{what}: expected {_kind_name(kind)}, got {v!r}")
        if low is not None and not isinstance(v, bool) and v < low:
            raise ValueError(f"{what}: {v!r} is below the minimum {low}")
    return knob


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


class GenerateSpace(BaseModel):
    """The first layer: an ensemble of samplers."""

    model_config = ConfigDict(extra="forbid")

    models: dict[str, Knob] = Field(
        default_factory=lambda: {EMBEDDED_NAME: [1, 2, 4]},
        description="model -> samples it draws (a choice list; 0 removes the model from the ensemble)")
    temperature: Knob = Field(0.7, description="sampling temperature of the generators")
    max_tokens: Knob = Field(None, description="completion limit of the generators (default: the pipeline's)")
    per_model_temperature: bool = Field(False, description="search one temperature per model instead of one shared")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="fixed parameters of every generate node (e.g. stop: [\"\\n\"])")
    technique: str = Field("generate", description="the sampling technique: generate, or your own module:Class "
                                                   "taking the same parameters")

    @field_validator("models")
    @classmethod
    def _samples(cls, v: dict[str, Knob]) -> dict[str, Knob]:
        if not v:
            raise ValueError("list at least one model under generate.models")
        for model, knob in v.items():
            _check_knob(knob, f"generate.models.{model}", kind=int, low=0)
        return v

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: Knob) -> Knob:
        return _check_knob(v, "temperature", kind=(int, float), low=0.0)

    @field_validator("max_tokens")
    @classmethod
    def _mt(cls, v: Knob) -> Knob:
        return _check_knob(v, "max_tokens", kind=int, low=1, allow_none=True)


class LayerSpace(BaseModel):
    """Fuse layers (Archon's critique -> rank -> verify -> fuse blocks)."""

    model_config = ConfigDict(extra="forbid")

    count: Knob = Field(0, description="how many fuse layers (0: none)")
    fusers: Knob = Field(1, description="fusers per layer")
    fuser_models: list[str] | None = Field(None, description="models a fuser may use (default: the pipeline's)")
    samples: Knob = Field(1, description="fused answers per fuser")
    temperature: Knob = Field(None, description="fuser temperature (default: the pipeline's)")
    max_tokens: Knob = Field(None, description="fuser completion limit (default: the pipeline's)")
    critique: Knob = Field(False, description="critique every candidate before the fuse")
    rank_top_k: Knob = Field(None, description="rank and keep the top k before the fuse (null or 0: no ranking)")
    verify: Knob = Field(False, description="verify before the fuse and keep accepted candidates")
    critique_max_tokens: int | None = Field(None, ge=1)
    rank_max_tokens: int | None = Field(None, ge=1)
    verify_max_tokens: int | None = Field(None, ge=1)
    per_layer: bool = Field(True, description="search critique/rank/verify/fusers separately for each layer")

    @model_validator(mode="after")
    def _kinds(self) -> LayerSpace:
        _check_knob(self.count, "layers.count", kind=int, low=0)
        _check_knob(self.fusers, "layers.fusers", kind=int, low=1)
        _check_knob(self.samples, "layers.samples", kind=int, low=1)
        _check_knob(self.temperature, "layers.temperature", kind=(int, float), low=0.0, allow_none=True)
        _check_knob(self.max_tokens, "layers.max_tokens", kind=int, low=1, allow_none=True)
        _check_knob(self.critique, "layers.critique", kind=bool)
        _check_knob(self.verify, "layers.verify", kind=bool)
        _check_knob(self.rank_top_k, "layers.rank_top_k", kind=int, low=0, allow_none=True)
        if self.fuser_models is not None and not self.fuser_models:
            raise ValueError("layers.fuser_models: give at least one model or leave it out")
        return self


class FinalSpace(BaseModel):
    """How one answer is chosen at the end."""

    model_config = ConfigDict(extra="forbid")

    selector: Knob = Field("vote", description=f"one or more of {', '.join(SELECTORS)}")
    verify: Knob = Field(False, description="verify the candidates right before the selector (keeps accepted ones)")
    verify_max_tokens: int | None = Field(None, ge=1)
    scorers: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"judge": {"type": "judge"}},
        description="named scorers best_of_n may use (archon.scoring specs)")
    scorer_max_tokens: int | None = Field(None, ge=1, description="max_tokens of the best_of_n node")
    fuser_model: Knob = Field(None, description="model of a final fuse (default: the pipeline's)")
    max_tokens: Knob = Field(None, description="completion limit of a final fuse or rank")

    @model_validator(mode="after")
    def _kinds(self) -> FinalSpace:
        values = knob_values(self.selector)
        if values is None:
            raise ValueError("final.selector must be a name or a list of names")
        for v in values:
            if v not in SELECTORS:
                raise ValueError(f"final.selector: unknown selector {v!r}; use {', '.join(SELECTORS)}")
        _check_knob(self.max_tokens, "final.max_tokens", kind=int, low=1, allow_none=True)
        _check_knob(self.verify, "final.verify", kind=bool)
        if "best_of_n" in values and not self.scorers:
            raise ValueError("final.selector offers best_of_n but final.scorers is empty; name at least one scorer")
        for name, spec in self.scorers.items():
            if not isinstance(spec, dict) or "type" not in spec:
                raise ValueError(f"final.scorers.{name}: a scorer is a mapping with `type:` (judge, logprob, ...)")
        return self


class StepSpace(BaseModel):
    """Step-level techniques (particles, beam, speculative, ...) and their knobs.

    ``methods`` lists the alternatives (``null`` = plain sampling, no step-level technique);
    every other key is a technique name mapping its parameters to knobs. A technique
    that consumes the query replaces the generators; one that consumes candidates runs
    right after them.
    """

    model_config = ConfigDict(extra="allow")

    methods: list[str | None] = Field(default_factory=lambda: [None])

    def knobs(self, method: str) -> dict[str, Knob]:
        raw = (self.model_extra or {}).get(method) or {}
        return dict(raw)


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "search"
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict,
                                 description="models, defaults, budget, name: copied into every trial's config")
    generate: GenerateSpace = Field(default_factory=GenerateSpace)
    layers: LayerSpace = Field(default_factory=LayerSpace)
    final: FinalSpace = Field(default_factory=FinalSpace)
    step: StepSpace = Field(default_factory=StepSpace)

    # filled by load_space: what was dropped and why
    notes: list[str] = Field(default_factory=list, exclude=True)
    source: str | None = Field(None, exclude=True)

    @field_validator("base")
    @classmethod
    def _base(cls, v: dict[str, Any]) -> dict[str, Any]:
        allowed = {"name", "description", "models", "defaults", "budget", "plugins"}
        for key in v:
            if key not in allowed:
                hint = _suggest(key, sorted(allowed))
                raise ValueError(f"base: unknown key {key!r}" + (f" ({hint})" if hint else "")
                                 + f"; allowed: {', '.join(sorted(allowed))}. Nodes come from the searched shape")
        checks: list[tuple[str, type[BaseModel], Any]] = [
            (f"base.models.{name}", ModelSpec, spec) for name, spec in (v.get("models") or {}).items()]
        checks += [("base.defaults", DefaultsConfig, v.get("defaults") or {}),
                   ("base.budget", Budget, v.get("budget") or {})]
        for where, model, value in checks:
            try:
                model.model_validate(value)
            except ValidationError as exc:
                e = exc.errors()[0]
                field = ".".join(str(x) for x in e["loc"])
                raise ValueError(f"{where}{'.' + field if field else ''}: {e['msg']}") from None
        return v

    def model_specs(self) -> dict[str, ModelSpec]:
        return {name: ModelSpec.model_validate(spec) for name, spec in (self.base.get("models") or {}).items()}

    def model_names(self) -> list[str]:
        return sorted({EMBEDDED_NAME, *(self.base.get("models") or {})})

    def fingerprint(self) -> str:
        """Identifies the space, so a resumed study can check it was not changed under it."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- loading with errors that say file, field and fix ----------------------------------------

def _error_for(file: str | None, root: yaml.Node | None, exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and (x.startswith("function-")
                                                                       or x in _UNION_TAGS)))
    line = _line_of(root, loc)
    path = _path(loc) or None
    if err["type"] == "extra_forbidden":
        key = str(loc[-1])
        section = _SECTIONS.get(loc[-2] if len(loc) > 1 else "", SearchSpace)
        options = list(section.model_fields)
        hint = _suggest(key, options) or f"allowed keys: {', '.join(options)}"
        return ConfigError(f"unknown key {key!r}", file=file, path=path, line=line, hint=hint)
    msg = str(err["msg"]).removeprefix("Value error, ")
    hint = _HINTS.get(str(loc[0]) if loc else "")
    if "input" in err and err["type"] != "value_error":
        hint = f"got {err['input']!r}" + (f"; {hint}" if hint else "")
    return ConfigError(msg, file=file, path=path, line=line, hint=hint)


_UNION_TAGS = {"Range", "list[union[str,int,float,bool,nullable[null]]]", "str", "int", "float", "bool", "none",
               "list[nullable[union[str,int,float,bool]]]"}
_SECTIONS: dict[Any, type[BaseModel]] = {"generate": GenerateSpace, "layers": LayerSpace, "final": FinalSpace,
                                         "step": StepSpace, "": SearchSpace}
_HINTS = {
    "generate": "e.g. generate: {models: {embedded: [1, 2, 4]}, temperature: [0.2, 0.8]}",
    "layers": "e.g. layers: {count: [0, 1], fusers: [1, 2], critique: [false, true], rank_top_k: [null, 3]}",
    "final": f"e.g. final: {{selector: [vote, fuse]}}; selectors: {', '.join(SELECTORS)}",
    "base": "base holds models, defaults and budget, as in a pipeline config",
}


def parse_space(data: Any, *, file: str | None = None, root: yaml.Node | None = None,
                techniques: dict[str, Any] | None = None) -> SearchSpace:
    """Validate a space mapping; step techniques not installed are dropped with a note."""
    if not isinstance(data, dict):
        raise ConfigError("a search space must be a mapping (generate:, layers:, final:, ...)", file=file,
                          hint="see configs/search/tiny_space.yaml")
    try:
        space = SearchSpace.model_validate(data)
    except ValidationError as exc:
        raise _error_for(file, root, exc) from None
    space.source = file
    _check_generator(space, file, root)
    _check_models(space, file, root)
    _check_step(space, file, root, techniques)
    _check_final(space, file, root, techniques)
    return space


def _check_generator(space: SearchSpace, file: str | None, root: yaml.Node | None) -> None:
    from archon.config import technique_class

    name = space.generate.technique
    loc = ("generate", "technique")
    try:
        technique_class(name, list(space.base.get("plugins") or []))  # imports only modules the space lists
    except ConfigError as exc:
        raise ConfigError(exc.message, file=file, path=_path(loc), line=_line_of(root, loc), hint=exc.hint) from None
    except (KeyError, ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown technique {name!r} ({type(exc).__name__})", file=file, path=_path(loc),
                          line=_line_of(root, loc), hint="use generate, or module.path:Class of your own "
                          "(listed under `base: {plugins: [module.path]}`)") from None


def _check_models(space: SearchSpace, file: str | None, root: yaml.Node | None) -> None:
    known = space.model_names()
    refs: list[tuple[tuple[Any, ...], str]] = [(("generate", "models", m), m) for m in space.generate.models]
    refs += [(("layers", "fuser_models", i), m) for i, m in enumerate(space.layers.fuser_models or [])]
    for v in knob_values(space.final.fuser_model) or []:
        if v is not None:
            refs.append((("final", "fuser_model"), str(v)))
    default = (space.base.get("defaults") or {}).get("model")
    if default:
        refs.append((("base", "defaults", "model"), default))
    for loc, model in refs:
        if model not in known:
            raise ConfigError(f"unknown model {model!r}", file=file, path=_path(loc), line=_line_of(root, loc),
                              hint=_suggest(model, known) or f"define it under `base.models:` (known: "
                                                             f"{', '.join(known)})")


def _check_step(space: SearchSpace, file: str | None, root: yaml.Node | None,
                techniques: dict[str, Any] | None) -> None:
    if techniques is None:
        from archon.techniques import TECHNIQUES as techniques
    methods = list(space.step.methods)
    extra = space.step.model_extra or {}
    for name in extra:
        if name not in methods:
            loc = ("step", name)
            raise ConfigError(f"knobs given for step method {name!r}, which `step.methods` does not list",
                              file=file, path=_path(loc), line=_line_of(root, loc),
                              hint=f"add it: step.methods: [{', '.join(str(m) for m in [*methods, name])}]")
    kept: list[str | None] = []
    for method in methods:
        if method is None:
            kept.append(None)
            continue
        if method not in techniques:
            space.notes.append(f"step method {method!r} is not an installed technique; dropped from the space")
            warnings.warn(space.notes[-1], stacklevel=3)
            continue
        cls = techniques[method]
        fields = set(cls.Params.model_fields)
        knobs = extra.get(method) or {}
        if not isinstance(knobs, dict):
            loc = ("step", method)
            raise ConfigError(f"step.{method} must map parameters to values or choices", file=file,
                              path=_path(loc), line=_line_of(root, loc), hint="e.g. {particles: [4, 8]}")
        for knob in knobs:
            if knob not in fields:
                loc = ("step", method, knob)
                raise ConfigError(f"technique {method!r} has no parameter {knob!r}", file=file, path=_path(loc),
                                  line=_line_of(root, loc),
                                  hint=_suggest(knob, sorted(fields)) or f"parameters: {', '.join(sorted(fields))}")
        for knob, value in knobs.items():
            try:
                knobs[knob] = _parse_knob(value)
            except ValueError as exc:
                loc = ("step", method, knob)
                raise ConfigError(str(exc), file=file, path=_path(loc), line=_line_of(root, loc)) from None
        kept.append(method)
    if not kept:
        kept = [None]
        space.notes.append("no step method left; plain sampling only")
    space.step.methods = kept


def _parse_knob(value: Any) -> Knob:
    if isinstance(value, dict):
        return Range.model_validate(value)
    if isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                raise ValueError("a choice list holds plain values (numbers, strings, booleans, null)")
    return value  # type: ignore[no-any-return]


def _check_final(space: SearchSpace, file: str | None, root: yaml.Node | None,
                 techniques: dict[str, Any] | None) -> None:
    if techniques is None:
        from archon.techniques import TECHNIQUES as techniques
    values = knob_values(space.final.selector) or []
    if "best_of_n" in values and "best_of_n" not in techniques:
        note = "selector best_of_n needs the best_of_n technique, which is not installed; dropped"
        space.notes.append(note)
        warnings.warn(note, stacklevel=3)
        rest = [v for v in values if v != "best_of_n"]
        if not rest:
            loc = ("final", "selector")
            raise ConfigError("no usable selector left", file=file, path=_path(loc), line=_line_of(root, loc),
                              hint="add vote or fuse")
        space.final.selector = rest if len(rest) > 1 else rest[0]
    if "best_of_n" in values:
        try:
            from archon.scoring import make_scorer
        except ImportError:  # pragma: no cover
            return
        for name, spec in space.final.scorers.items():
            try:
                make_scorer(spec)
            except Exception as exc:
                loc = ("final", "scorers", name)
                raise ConfigError(f"invalid scorer {name!r}: {exc}", file=file, path=_path(loc),
                                  line=_line_of(root, loc), hint="e.g. {type: judge} or {type: logprob}") from None


def load_space(path: str | Path, *, techniques: dict[str, Any] | None = None) -> SearchSpace:
    p = Path(path)
    data, root = read_yaml_file(p, what="search space file", missing_hint="see configs/search/*.yaml for examples")
    return parse_space(data, file=str(p), root=root, techniques=techniques)

