"""Archon JSON architectures -> archon pipeline configs with the same behaviour.

An Archon file is ``{"name": ..., "layers": [layer, ...]}``; a layer is a list of
components (or the older ``{"branches": 1, "models": [...]}``, or one bare component),
each ``{"type", "model", "model_type", "temperature", "max_tokens", "samples", ...}``.

Archon runs the layers in order over an untyped state (``candidates``, ``critiques``,
``unit_tests``). Every component of a layer reads the *previous* layer's state and
appends to the new one; a key that no component of the layer writes is carried over.
So, per component type:

- ``generator`` reads the query only and adds ``samples`` candidates;
- ``critic`` writes one critique per incoming candidate (candidates carry over);
- ``ranker`` keeps its ``top_k``; ``verifier`` keeps the accepted ones (all if none);
- ``fuser`` writes ``samples`` new candidates from all incoming ones (several fusers in
  one layer each read the previous layer: they are parallel);
- ``unit_test_generator`` writes natural-language tests (and appends them to the query
  that every later component sees); ``unit_test_evaluator`` has an LLM mark each test
  passed/failed per candidate and keeps the best (``first_k``: the first that pass all).

The converter builds the equivalent DAG with explicit ``inputs``: a layer's output is
the concatenation, in component order, of the nodes that write candidates (or, when none
does, the previous layer's candidates, critiqued if the layer has a critic). Where Archon
is wrong it is not copied: critiques stay attached to the candidate they describe (Archon
pairs two lists by position, and carries stale critiques onto new candidates), and the
final choice is a deterministic ``select`` node instead of ``random.choice``. Every other
difference is reported as an :class:`ImportNote` (file, layer, component, reason) and
written in the YAML's header; nothing is dropped silently.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from archon.errors import ConfigError

COMPONENT_TYPES = ("generator", "fuser", "ranker", "critic", "verifier", "unit_test_generator",
                   "unit_test_evaluator")
PAIRRM = "llm-blender/PairRM"
EMBEDDED = "embedded"
UNIT_TEST_TECHNIQUE = "nl_unit_tests"
UNIT_TEST_SCORE = "nl_tests_passed"  # the score nl_unit_tests writes (its `key`)
ARCHON_SYSTEM = "You are a helpful assistant"  # what Archon puts before a plain-text query
ARCHON_ANTHROPIC_MAX_TOKENS = 4096  # Archon's Anthropic call overrides every component's max_tokens with this
# OpenAI models Archon calls without temperature/max_tokens; the rest of the o1 family rejects them too.
ARCHON_O1_MODELS = ("o1-preview-2024-09-12", "o1-mini-2024-09-12")
_O1_FAMILY = re.compile(r"^o1(?:-|$)")

# Archon's per-role system prompts (its generators use the conversation's own).
ROLE_SYSTEM = {
    "critic": "You are a critical evaluator.",
    "ranker": "You are a helpful assistant who ranks multiple answers",
    "fuser": "You are a helpful assistant who fuses multiple answers",
    "verifier": "You are a verification system for judging responses and their reasoning.",
}


@dataclass(frozen=True)
class Provider:
    base_url: str | None
    api_key_env: str | None
    slug: str


PROVIDERS: dict[str, Provider] = {
    "OpenAI_API": Provider("https://api.openai.com/v1", "OPENAI_API_KEY", "openai"),
    "Together_API": Provider("https://api.together.xyz/v1", "TOGETHER_API_KEY", "together"),
    "Groq_API": Provider("https://api.groq.com/openai/v1", "GROQ_API_KEY", "groq"),
    "Google_API": Provider("https://generativelanguage.googleapis.com/v1beta/openai/", "GOOGLE_API_KEY", "google"),
    "Anthropic_API": Provider("https://api.anthropic.com/v1/", "ANTHROPIC_API_KEY", "anthropic"),
    # Archon calls Bedrock through litellm; a LiteLLM proxy is the nearest OpenAI-compatible gateway.
    "Bedrock_API": Provider("http://127.0.0.1:4000/v1", "LITELLM_API_KEY", "bedrock"),
    "tgi": Provider("http://127.0.0.1:8080/v1", None, "tgi"),
    "vLLM": Provider(None, None, "vllm"),
}

# Keys each component type reads in Archon (beyond type/model/model_type/temperature/max_tokens/samples/no_system).
_COMMON = ("type", "model", "model_type", "temperature", "max_tokens", "samples", "no_system")
_USED: dict[str, tuple[str, ...]] = {
    "generator": (),
    "critic": (),
    "ranker": ("top_k", "use_critiques", "ranker_batch_size"),
    "fuser": ("length_control",),
    "verifier": ("first_k",),
    "unit_test_generator": ("unit_test_cap",),
    "unit_test_evaluator": ("first_k", "first_pass", "top_k", "remove_unit_tests_from_prompt", "unit_test_cap"),
}
# Keys that appear in Archon's published files but that Archon's code never reads for that type.
_KNOWN_IGNORED = ("top_k", "checkpoint", "ranker_batch_size", "batch_num", "use_critiques", "ranker_config",
                  "fuse_generations_count", "top_k_generations", "remove_unit_tests_from_prompt", "first_pass",
                  "length_contorl")

_ids = itertools.count()


# -- results and errors ------------------------------------------------------------------

@dataclass(frozen=True)
class ImportNote:
    """Something that could not be mapped exactly. ``kind`` is ``differs`` when the archon
    pipeline behaves differently from Archon, ``info`` when nothing changes (e.g. a key that
    Archon ignores too)."""

    file: str | None
    layer: int | None
    component: int | None
    message: str
    kind: Literal["differs", "info"] = "differs"
    component_type: str | None = None
    components: tuple[int, ...] = ()  # several components of one layer with the same note

    def where(self) -> str:
        parts = []
        if self.layer is not None:
            parts.append(f"layer {self.layer}")
        if self.components:
            parts.append(f"components {_ranges(self.components)}"
                         + (f" ({self.component_type}s)" if self.component_type else ""))
        elif self.component is not None:
            parts.append(f"component {self.component}" + (f" ({self.component_type})" if self.component_type else ""))
        return ", ".join(parts) or "file"

    def __str__(self) -> str:
        prefix = f"{self.file}: " if self.file else ""
        return f"{prefix}{self.where()}: {self.message}"


def _ranges(values: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> "0-2, 5"."""
    out: list[str] = []
    for _, group in itertools.groupby(enumerate(sorted(values)), key=lambda p: p[1] - p[0]):
        run = [v for _, v in group]
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)))
    return ", ".join(out)


def merge_notes(notes: list[ImportNote]) -> list[ImportNote]:
    """One note per (layer, type, message) instead of one per component."""
    groups: dict[tuple[Any, ...], list[ImportNote]] = {}
    for note in notes:
        groups.setdefault((note.file, note.layer, note.component_type, note.message, note.kind), []).append(note)
    out = []
    for group in groups.values():
        comps = tuple(n.component for n in group if n.component is not None)
        if len(group) > 1 and len(comps) == len(group) and len(set(comps)) > 1:
            first = group[0]
            out.append(ImportNote(first.file, first.layer, None, first.message, first.kind, first.component_type,
                                  tuple(sorted(set(comps)))))
        else:
            out.append(group[0])
    return out


class ArchonImportError(ConfigError):
    """An Archon file that cannot be converted: invalid JSON, an unknown component type,
    no layers, a component with no candidates to read. Names the file, layer and component."""

    def __init__(self, message: str, *, file: str | None = None, layer: int | None = None,
                 component: int | None = None, line: int | None = None, hint: str | None = None) -> None:
        self.layer = layer
        self.component = component
        path = None
        if layer is not None:
            path = f"layers[{layer}]" + (f"[{component}]" if component is not None else "")
        super().__init__(message, file=file, path=path, line=line, hint=hint)

    def render(self) -> str:
        where = self.file or ""
        if self.line:
            where += f":{self.line}"
        loc = []
        if self.layer is not None:
            loc.append(f"layer {self.layer}")
        if self.component is not None:
            loc.append(f"component {self.component}")
        if loc:
            where = f"{where} at {', '.join(loc)}" if where else ", ".join(loc)
        text = f"{where}: {self.message}" if where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


@dataclass
class ArchonImport:
    """One converted file: the config dict (``PipelineConfig``-compatible), its notes, and
    the comments that explain it in the YAML."""

    name: str
    source: str | None
    config: dict[str, Any]
    notes: list[ImportNote] = field(default_factory=list)
    comments: dict[str, str] = field(default_factory=dict)  # node id -> comment line above it
    select_comment: str = ""

    @property
    def differs(self) -> list[ImportNote]:
        return [n for n in self.notes if n.kind == "differs"]

    def pipeline_config(self):  # type: ignore[no-untyped-def]
        """The validated ``PipelineConfig`` (schema only; ``build_graph`` checks techniques)."""
        from archon.config import parse_config

        return parse_config(self.config, file=self.source)

    def validate(self) -> None:
        """Schema, techniques, parameters, models and DAG, as ``archon validate`` checks them."""
        from archon.config import build_graph

        build_graph(self.pipeline_config(), file=self.source)

    def to_yaml(self) -> str:
        lines = [f"# Imported from Archon: {self.source or self.name}",
                 "# by `archon import-archon`. Archon's layers are written as an explicit DAG",
                 "# (`inputs:`); critiques stay attached to their candidates; the final pick is",
                 "# deterministic (see the `select` node)."]
        if self.notes:
            n_diff, n_info = len(self.differs), len(self.notes) - len(self.differs)
            lines.append(f"# Notes ({n_diff} behaviour difference{'s' if n_diff != 1 else ''}, "
                         f"{n_info} informational):")
            for note in self.notes:
                tag = "" if note.kind == "differs" else "[info] "
                lines.extend(_wrap_comment(f"- {tag}{note.where()}: {note.message}", indent="#   "))
        else:
            lines.append("# Notes: none; every component maps exactly.")
        top = {k: v for k, v in self.config.items() if k not in ("nodes", "output")}
        lines.append(yaml.safe_dump(top, sort_keys=False, allow_unicode=True, width=100).rstrip())
        lines.append("nodes:")
        for node in self.config["nodes"]:
            comment = self.comments.get(node["id"])
            if node["id"] == self.config.get("output") and self.select_comment:
                comment = self.select_comment
            if comment:
                lines.extend(_wrap_comment(comment, indent="  # "))
            dumped = yaml.safe_dump([node], sort_keys=False, allow_unicode=True, width=100,
                                    default_flow_style=None).rstrip()
            lines.extend("  " + line for line in dumped.splitlines())
        lines.append(f"output: {self.config['output']}")
        return "\n".join(lines) + "\n"


def _wrap_comment(text: str, indent: str, width: int = 100) -> list[str]:
    import textwrap

    body = textwrap.wrap(text, width=width - len(indent), break_long_words=False, break_on_hyphens=False)
    out = [indent + body[0]] if body else [indent.rstrip()]
    cont = indent + ("  " if text.startswith("- ") else "")
    out.extend(cont + b for b in body[1:])
    return out


# -- input -------------------------------------------------------------------------------

def parse_model_map(items: Iterable[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["SRC=DEST", "*=embedded"]`` -> ``{"SRC": "DEST", "*": "embedded"}``."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        src, sep, dest = item.partition("=")
        if not sep or not src.strip() or not dest.strip():
            raise ConfigError(f"--model-map {item!r}: expected SRC=DEST",
                              hint="e.g. --model-map 'gpt-4o=gpt-4o-mini' or --model-map '*=embedded'")
        out[src.strip()] = dest.strip()
    return out


def load_archon_json(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ArchonImportError("file not found", file=str(p))
    text = p.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArchonImportError(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(p), line=exc.lineno,
                                hint="check for a missing comma or quote on that line") from None
    if not isinstance(data, dict):
        raise ArchonImportError("an Archon config must be a JSON object with `name` and `layers`", file=str(p))
    return data


# -- conversion --------------------------------------------------------------------------

@dataclass
class _Node:
    id: str
    technique: str
    params: dict[str, Any]
    inputs: list[_Node] | None  # None: reads the query
    layer: int
    component: int | None = None
    ctype: str | None = None  # the Archon component type it comes from
    count: int | None = None  # most candidates it can output (None: unknown)
    critiqued: bool = False  # its candidates carry critiques
    score: str | None = None  # a score every output candidate carries
    comment: str = ""

    def as_dict(self) -> dict[str, Any]:
        # `inputs` is always explicit: in `nodes:` form a missing one means "the node above".
        out: dict[str, Any] = {"id": self.id, "technique": self.technique,
                               "inputs": [n.id for n in self.inputs or []]}
        out.update(self.params)
        return out


def _total(nodes: list[_Node]) -> int | None:
    counts = [n.count for n in nodes]
    return None if any(c is None for c in counts) else sum(c for c in counts if c is not None)


def _common(nodes: list[_Node], attr: str) -> Any:
    values = {getattr(n, attr) for n in nodes}
    return values.pop() if len(values) == 1 else None


class _ArchonState:
    """Archon's own state, tracked abstractly to find where it pairs critiques wrongly.

    ``cand`` and ``crit`` are tuples of version tokens: the critiques describe the
    candidates only when both tuples are equal."""

    def __init__(self) -> None:
        self.cand: tuple[int, ...] = ()
        self.crit: tuple[int, ...] = ()
        self.tests = False

    @property
    def misaligned(self) -> bool:
        return bool(self.crit) and self.crit != self.cand


class _Converter:
    def __init__(self, data: dict[str, Any], file: str | None, model_map: dict[str, str]) -> None:
        self.data = data
        self.file = file
        self.model_map = model_map
        self.notes: list[ImportNote] = []
        self.models: dict[str, dict[str, Any]] = {}
        self._model_keys: dict[tuple[str, str | None], str] = {}
        self.nodes: list[_Node] = []
        self._used_ids: set[str] = set()
        self.all_comps: list[list[dict[str, Any]]] = []

    # notes and errors
    def note(self, layer: int | None, comp: int | None, message: str, kind: Literal["differs", "info"] = "differs",
             ctype: str | None = None) -> None:
        self.notes.append(ImportNote(self.file, layer, comp, message, kind, ctype))

    def error(self, message: str, layer: int | None = None, comp: int | None = None,
              hint: str | None = None) -> ArchonImportError:
        return ArchonImportError(message, file=self.file, layer=layer, component=comp, hint=hint)

    # models
    def _mapped(self, model: str) -> str:
        if model in self.model_map:
            return self.model_map[model]
        return self.model_map.get("*", model)

    def model_name(self, comp: dict[str, Any], li: int, ci: int) -> str:
        """The archon model name for a component; defines its spec under ``models:``."""
        ctype = comp["type"]
        original = comp["model"]
        name = self._mapped(original)
        if name == EMBEDDED:
            return EMBEDDED
        model_type = comp.get("model_type")
        if model_type not in PROVIDERS:
            known = ", ".join(PROVIDERS)
            if model_type in (None, ""):
                raise self.error(f"{ctype} {original!r} has no `model_type`", li, ci,
                                 hint=f"set one of: {known} (or map the model: --model-map '{original}=embedded')")
            close = difflib.get_close_matches(str(model_type), list(PROVIDERS), n=1)
            raise self.error(f"unknown model_type {model_type!r} for {ctype} {original!r}", li, ci,
                             hint=(f"did you mean `{close[0]}`? " if close else "")
                             + f"known: {known}; Archon's custom generators cannot be imported")
        key = (name, model_type)
        if key in self._model_keys:
            return self._model_keys[key]
        provider = PROVIDERS[model_type]
        spec: dict[str, Any]
        api_model = name
        label = name
        if model_type == "vLLM":
            spec = {"backend": "vllm", "path": name}
        else:
            spec = {"backend": "openai"}
            base_url = provider.base_url
            if model_type == "tgi":
                # Archon's TGI convention: `model` is the endpoint URL and the server is asked for "tgi".
                api_model = "tgi"
                if re.match(r"https?://", name):
                    base_url = name
                    label = "tgi@" + re.sub(r"^https?://", "", name).split("/")[0]
                    self.note(li, ci, f"tgi endpoint {name} taken from `model` (Archon's convention); "
                                      "check that it serves the OpenAI-compatible API", "info", ctype)
                else:
                    self.note(li, ci, f"tgi model {name!r}: Archon expects the endpoint URL in `model`; "
                                      f"using the placeholder base_url {base_url}: set it to your TGI server",
                              ctype=ctype)
            elif model_type == "Bedrock_API":
                self.note(li, ci, f"Bedrock model {name!r} needs an OpenAI-compatible gateway: base_url is a "
                                  f"placeholder ({base_url}, a LiteLLM proxy's default); set it to yours. "
                                  "Archon's Bedrock call ignored temperature and max_tokens; archon sends them",
                          ctype=ctype)
            spec["base_url"] = base_url
            if provider.api_key_env:
                spec["api_key_env"] = provider.api_key_env
            if model_type == "OpenAI_API" and _O1_FAMILY.match(name):
                spec["sampling"] = False
                if name in ARCHON_O1_MODELS:
                    self.note(li, ci, f"{name}: sent without temperature and max_tokens, as Archon sends it "
                                      "(`sampling: false` in its model spec)", "info", ctype)
                else:
                    self.note(li, ci, f"{name}: an o1 model, sent without temperature and max_tokens "
                                      "(`sampling: false`), which it rejects; Archon sends them to every OpenAI "
                                      "model but its two dated o1 names", ctype=ctype)
        if model_type != "vLLM" and api_model != label:
            spec["api_model"] = api_model
        if label in self.models and self.models[label] != spec:
            label = f"{label}@{provider.slug}"
            if model_type != "vLLM":
                spec["api_model"] = api_model
        self.models[label] = spec
        self._model_keys[key] = label
        return label

    # components
    def component_list(self, layer: Any, li: int) -> list[dict[str, Any]]:
        if isinstance(layer, list):
            comps = layer
        elif isinstance(layer, dict) and "models" in layer:
            comps = layer["models"]
            extra = sorted(k for k in layer if k not in ("models", "branches"))
            if layer.get("branches", 1) != 1:
                self.note(li, None, f"`branches: {layer['branches']}` ignored (Archon ignores it too)", "info")
            if extra:
                self.note(li, None, f"layer keys {extra} ignored (Archon ignores them too)", "info")
            if not isinstance(comps, list):
                raise self.error("`models` must be a list of components", li)
        elif isinstance(layer, dict) and "type" in layer:
            self.note(li, None, "a bare component where Archon expects a list: read as a one-component layer",
                      "info")
            comps = [layer]
        else:
            raise self.error("a layer must be a list of components, {\"models\": [...]}, or one component", li,
                             hint="e.g. [{\"type\": \"generator\", \"model\": ..., \"model_type\": ...}]")
        for ci, comp in enumerate(comps):
            if not isinstance(comp, dict):
                raise self.error(f"a component must be a JSON object, got {type(comp).__name__}", li, ci)
            ctype = comp.get("type")
            if ctype not in COMPONENT_TYPES:
                if ctype is None:
                    raise self.error("component has no `type`", li, ci, hint=f"one of: {', '.join(COMPONENT_TYPES)}")
                close = difflib.get_close_matches(str(ctype), COMPONENT_TYPES, n=1)
                raise self.error(f"unknown component type {ctype!r}", li, ci,
                                 hint=(f"did you mean `{close[0]}`? " if close else "")
                                 + f"known: {', '.join(COMPONENT_TYPES)} (Archon custom components cannot be "
                                   "imported)")
            if not isinstance(comp.get("model"), str) or not comp["model"]:
                raise self.error(f"{ctype} has no `model`", li, ci)
        return comps

    def _number(self, comp: dict[str, Any], key: str, li: int, ci: int, default: Any, *, integer: bool = False,
                required: bool = True) -> Any:
        if key not in comp or comp[key] is None:
            if required:
                self.note(li, ci, f"`{key}` missing (Archon would fail with a KeyError); using {default}",
                          ctype=comp["type"])
            return default
        value = comp[key]
        ok = isinstance(value, int) if integer else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise self.error(f"`{key}` must be {'an integer' if integer else 'a number'}, got {value!r}", li, ci)
        return value

    def sampling(self, comp: dict[str, Any], li: int, ci: int) -> dict[str, Any]:
        """model, temperature, max_tokens and system for a component's node."""
        ctype = comp["type"]
        params: dict[str, Any] = {"model": self.model_name(comp, li, ci)}
        temperature = float(self._number(comp, "temperature", li, ci, 0.7))
        if temperature > 2.0:
            self.note(li, ci, f"temperature {temperature} above archon's limit: using 2.0", ctype=ctype)
            temperature = 2.0
        if temperature < 0:
            raise self.error(f"temperature must be >= 0, got {temperature}", li, ci)
        params["temperature"] = temperature
        max_tokens = self._number(comp, "max_tokens", li, ci, 2048, integer=True)
        if max_tokens < 1:
            raise self.error(f"max_tokens must be >= 1, got {max_tokens}", li, ci)
        if comp.get("model_type") == "Anthropic_API" and params["model"] != EMBEDDED \
                and max_tokens != ARCHON_ANTHROPIC_MAX_TOKENS:
            self.note(li, ci, f"Anthropic model: `max_tokens: {max_tokens}` replaced by "
                              f"{ARCHON_ANTHROPIC_MAX_TOKENS}, the fixed value Archon's Anthropic call sends",
                      "info", ctype)
            max_tokens = ARCHON_ANTHROPIC_MAX_TOKENS
        params["max_tokens"] = max_tokens
        if comp.get("no_system"):
            params["system"] = ""
            self.note(li, ci, "`no_system`: mapped to `system: ''` (no system message); a system message inside "
                              "a chat query is still sent (Archon dropped the conversation's first message)",
                      ctype=ctype)
        elif ctype in ROLE_SYSTEM:
            params["system"] = ROLE_SYSTEM[ctype]
        return params

    def check_keys(self, comp: dict[str, Any], li: int, ci: int) -> None:
        ctype = comp["type"]
        used = set(_COMMON) | set(_USED[ctype])
        for key in comp:
            if key in used:
                continue
            if key in _KNOWN_IGNORED:
                extra = " (did you mean `length_control`? length control stays off, as in Archon)" \
                    if key == "length_contorl" else ""
                self.note(li, ci, f"`{key}` ignored: Archon does not read it on a {ctype}{extra}", "info", ctype)
            else:
                close = difflib.get_close_matches(key, sorted(used), n=1)
                hint = f" (did you mean `{close[0]}`?)" if close else ""
                self.note(li, ci, f"unknown key `{key}` ignored{hint} (Archon ignores it too)", "info", ctype)
        samples = comp.get("samples", 1)
        if ctype in ("critic", "ranker", "verifier", "unit_test_generator", "unit_test_evaluator") \
                and isinstance(samples, int) and samples > 1:
            waste = "forces 1" if ctype == "ranker" else f"made {samples} calls and used only the first"
            self.note(li, ci, f"`samples: {samples}`: Archon {waste}; archon makes one call", "info", ctype)

    def new_id(self, li: int, kind: str) -> str:
        """``l<layer>_<technique>_<n>``, numbered per layer and technique."""
        for i in itertools.count():
            node_id = f"l{li}_{kind}_{i}"
            if node_id not in self._used_ids:
                self._used_ids.add(node_id)
                return node_id
        raise AssertionError  # pragma: no cover

    def add(self, node: _Node) -> _Node:
        if node.ctype is None and node.component is not None:
            node.ctype = self.all_comps[node.layer][node.component]["type"]
        self.nodes.append(node)
        return node

    # the walk
    def convert(self) -> ArchonImport:
        data = self.data
        if "layers" not in data:
            raise self.error("no `layers`: an Archon config is {\"name\": ..., \"layers\": [[component, ...], ...]}")
        layers = data["layers"]
        if not isinstance(layers, list) or not layers:
            raise self.error("`layers` must be a non-empty list of layers")
        extra = sorted(k for k in data if k not in ("name", "layers"))
        if data.get("custom"):
            self.note(None, None, "`custom: true`: Archon's custom components/generators cannot be imported")
        if extra:
            self.note(None, None, f"top-level keys {extra} ignored", "info")
        name = str(data.get("name") or (Path(self.file).stem if self.file else "archon-import"))
        all_comps = [self.component_list(layer, li) for li, layer in enumerate(layers)]
        self.all_comps = all_comps

        archon = _ArchonState()
        prev_out: list[_Node] = []
        test_writers: list[tuple[int, int, dict[str, Any]]] = []  # unit_test_generators seen, not yet consumed
        used_writers: set[int] = set()
        tests_shown_to: list[str] = []
        first_model: str | None = None

        for li, comps in enumerate(all_comps):
            if not comps:
                self.note(li, None, "empty layer: skipped (Archon passes the state through)", "info")
                continue
            src: list[_Node] = list(prev_out)
            writers: list[_Node] = []
            layer_critic: _Node | None = None
            cand_parts: list[tuple[int, ...]] = []
            crit_parts: list[tuple[int, ...]] = []
            for ci, comp in enumerate(comps):
                ctype = comp["type"]
                self.check_keys(comp, li, ci)
                if archon.tests and ctype not in ("unit_test_generator", "unit_test_evaluator"):
                    tests_shown_to.append(f"layer {li} {ctype}")
                if ctype == "generator":
                    params = self.sampling(comp, li, ci)
                    samples = self._number(comp, "samples", li, ci, 1, integer=True, required=False)
                    if samples < 1:
                        raise self.error(f"samples must be >= 1, got {samples}", li, ci)
                    params["samples"] = samples
                    first_model = first_model or params["model"]
                    node = self.add(_Node(self.new_id(li, "generate"), "generate", params, None, li, ci, count=samples))
                    node.comment = f"layer {li}, component {ci}: generator ({comp['model']}, {samples} sample"\
                                   f"{'s' if samples != 1 else ''}), reads the query"
                    writers.append(node)
                    cand_parts.append((next(_ids),))
                elif ctype == "critic":
                    target = writers if writers else src
                    if not target:
                        raise self.error("critic has no candidates to critique: no earlier layer or component "
                                         "writes any (Archon fails here too)", li, ci)
                    params = self.sampling(comp, li, ci)
                    params["mode"] = "comparative"
                    node = self.add(_Node(self.new_id(li, "critique"), "critique", params, list(target), li, ci,
                                          count=_total(target), critiqued=True, score=_common(target, "score")))
                    node.comment = f"layer {li}, component {ci}: critic ({comp['model']}), judges all candidates " \
                                   "in one comparative call; each critique stays attached to its candidate"
                    self.note(li, ci, "a reply that does not split into one critique per candidate is asked again "
                                      "at most twice, then the candidates go on without critiques; Archon retries "
                                      "10 times, then fails", "info", ctype)
                    if writers:
                        self.note(li, ci, "critic after candidate-writing components of the same layer: it "
                                          "critiques their candidates (a chain); Archon's critic would critique the "
                                          "previous layer's candidates and pair those critiques with this layer's "
                                          "candidates by position", ctype=ctype)
                        writers = [node]
                    else:
                        src = [node]
                        layer_critic = node
                    if archon.cand:
                        crit_parts.append(archon.cand)
                elif ctype == "ranker":
                    node = self.ranker(comp, li, ci, src, layer_critic, archon)
                    writers.append(node)
                    token = (next(_ids),)
                    cand_parts.append(token)
                    if archon.crit and comp["model"] != PAIRRM:
                        crit_parts.append(token if not archon.misaligned else (next(_ids),))
                elif ctype == "fuser":
                    node = self.fuser(comp, li, ci, src, layer_critic, archon)
                    writers.append(node)
                    cand_parts.append((next(_ids),))
                elif ctype == "verifier":
                    node = self.verifier(comp, li, ci, src, archon)
                    writers.append(node)
                    token = (next(_ids),)
                    cand_parts.append(token)
                    if archon.crit:
                        crit_parts.append(token if not archon.misaligned else (next(_ids),))
                elif ctype == "unit_test_generator":
                    test_writers.append((li, ci, comp))
                    archon.tests = True  # Archon appends them to the query at once, by reference
                elif ctype == "unit_test_evaluator":
                    # Archon's state holds the tests of the latest layer that wrote any.
                    earlier = [t[0] for t in test_writers if t[0] < li]
                    writers_for = [t for t in test_writers if earlier and t[0] == max(earlier)]
                    if not writers_for:
                        same = [t for t in test_writers if t[0] == li]
                        if not same:
                            raise self.error("unit_test_evaluator without an earlier unit_test_generator: there "
                                             "are no unit tests to evaluate (Archon fails here too)", li, ci)
                        self.note(li, ci, "its unit_test_generator is in the same layer: Archon's evaluator "
                                          "would see no tests yet and fail; here it uses that generator's tests",
                                  ctype=ctype)
                        writers_for = same
                    if any(id(t[2]) in used_writers for t in writers_for):
                        self.note(li, ci, "a second evaluator of the same unit tests: archon's node writes its own "
                                          "tests again, where Archon reuses the same ones", ctype=ctype)
                    node = self.unit_tests(comp, li, ci, src, writers_for)
                    used_writers.update(id(t[2]) for t in writers_for)
                    writers.append(node)
                    cand_parts.append((next(_ids),))
            # the layer's output, and Archon's state after it
            layer_out = writers if writers else src
            if cand_parts:
                archon.cand = tuple(t for part in cand_parts for t in part)
            if crit_parts:
                archon.crit = tuple(t for part in crit_parts for t in part)
            prev_out = layer_out

        for li, ci, comp in test_writers:
            if id(comp) not in used_writers:
                self.note(li, ci, "unit_test_generator with no later unit_test_evaluator: in Archon its only "
                                  "effect is appending the tests to the query of later components, which archon "
                                  "does not do, so it is left out", ctype="unit_test_generator")
        if tests_shown_to:
            shown = sorted(set(tests_shown_to), key=tests_shown_to.index)
            self.note(None, None, "Archon appends the generated unit tests to the query that every later component "
                                  f"sees ({', '.join(shown)}); archon keeps the query as asked, and only the "
                                  f"`{UNIT_TEST_TECHNIQUE}` node sees the tests")
        if not prev_out:
            raise self.error("the pipeline writes no candidates: it needs at least one generator")
        return self.finish(name, prev_out, first_model)

    def ranker(self, comp: dict[str, Any], li: int, ci: int, src: list[_Node], layer_critic: _Node | None,
               archon: _ArchonState) -> _Node:
        ctype = "ranker"
        if not src:
            raise self.error("ranker has no candidates to rank: no earlier layer writes any (Archon fails here too)",
                             li, ci)
        top_k = self._number(comp, "top_k", li, ci, 1, integer=True)
        if top_k < 1:
            raise self.error(f"top_k must be >= 1, got {top_k}", li, ci)
        use_critiques = comp.get("use_critiques", False)
        critiqued = bool(_common(src, "critiqued"))
        if comp["model"] == PAIRRM:
            mapped = self._mapped(PAIRRM)
            if mapped != PAIRRM:
                params = {"model": self.pairrm_target(comp, mapped, li, ci)}
                how = f"the LLM {mapped!r} (from --model-map)"
            else:
                params = {}
                how = "the pipeline's default model (set `model:` or --model-map 'llm-blender/PairRM=NAME')"
            temperature = self._number(comp, "temperature", li, ci, 0.7, required=False)
            params["temperature"] = min(2.0, float(temperature))
            params["system"] = ROLE_SYSTEM["ranker"]
            self.note(li, ci, "PairRM (a pairwise reward model, run in-process by Archon) has no archon backend: "
                              f"mapped to `rank` with listwise ranking by {how}; an OpenAI-compatible reward model "
                              "can be used through a scorer instead", ctype=ctype)
            use_critiques = False  # PairRM only ever sees the candidates
        else:
            params = self.sampling(comp, li, ci)
            if critiqued and not use_critiques:
                self.note(li, ci, "`use_critiques: false` although the candidates carry critiques: Archon's ranker "
                                  "prompt shows critiques whenever its state has them; archon follows the config "
                                  "and hides them", ctype=ctype)
        if archon.misaligned and comp["model"] != PAIRRM:
            self._misaligned_note(li, ci, ctype, critiqued)
        if layer_critic is not None and use_critiques:
            self.note(li, ci, "ranks the candidates critiqued by the critic earlier in this layer (a chain) and "
                              "shows those critiques; Archon's ranker reads the previous layer's state and would not "
                              "see them", ctype=ctype)
        params.update(top_k=top_k, use_critiques=bool(use_critiques), max_retries=0)
        if comp["model"] != PAIRRM:
            params["parse"] = "archon"  # the first line's [i]; unranked candidates follow in input order
        count = _total(src)
        node = self.add(_Node(self.new_id(li, "rank"), "rank", params, list(src), li, ci,
                              count=min(top_k, count) if count is not None else top_k, critiqued=critiqued,
                              score="rank_score"))
        node.comment = f"layer {li}, component {ci}: ranker ({comp['model']}), keeps the top {top_k}"
        return node

    def pairrm_target(self, comp: dict[str, Any], mapped: str, li: int, ci: int) -> str:
        """The model a PairRM ranker is mapped to: its provider comes from another component
        using the same model, or from the ranker's own ``model_type``."""
        if mapped == EMBEDDED:
            return EMBEDDED
        for layer in self.all_comps:
            for other in layer:
                if other is not comp and other["model"] != PAIRRM and self._mapped(other["model"]) == mapped \
                        and other.get("model_type") in PROVIDERS:
                    return self.model_name({**other, "model": other["model"]}, li, ci)
        if comp.get("model_type") in PROVIDERS:
            return self.model_name({**comp, "model": mapped}, li, ci)
        raise self.error(f"PairRM is mapped to {mapped!r}, but no component says which provider serves it", li, ci,
                         hint="map it to a model used elsewhere in the file, to `embedded`, or set the ranker's "
                              "model_type")

    def fuser(self, comp: dict[str, Any], li: int, ci: int, src: list[_Node], layer_critic: _Node | None,
              archon: _ArchonState) -> _Node:
        if not src:
            raise self.error("fuser has no candidates to fuse: no earlier layer writes any (Archon fails here too)",
                             li, ci, hint="put the fuser in a layer after the generators")
        params = self.sampling(comp, li, ci)
        samples = self._number(comp, "samples", li, ci, 1, integer=True, required=False)
        if samples < 1:
            raise self.error(f"samples must be >= 1, got {samples}", li, ci)
        params["samples"] = samples
        critiqued = bool(_common(src, "critiqued"))
        if comp.get("length_control"):
            if critiqued:
                params["length_control"] = True
            else:
                self.note(li, ci, "`length_control` left off: Archon's fuser prompt applies it only to critiqued "
                                  "candidates, and these carry no critiques", "info", "fuser")
        if archon.misaligned:
            self._misaligned_note(li, ci, "fuser", critiqued)
        if layer_critic is not None:
            self.note(li, ci, "fuses the candidates critiqued by the critic earlier in this layer (a chain), with "
                              "their critiques; Archon's fuser reads the previous layer's state and would not see "
                              "them", ctype="fuser")
        node = self.add(_Node(self.new_id(li, "fuse"), "fuse", params, list(src), li, ci, count=samples))
        node.comment = f"layer {li}, component {ci}: fuser ({comp['model']}), reads every incoming candidate" + \
            (" and its critique" if critiqued else "")
        return node

    def verifier(self, comp: dict[str, Any], li: int, ci: int, src: list[_Node], archon: _ArchonState) -> _Node:
        if not src:
            raise self.error("verifier has no candidates to verify: no earlier layer writes any (Archon fails here "
                             "too)", li, ci)
        params = self.sampling(comp, li, ci)
        params["fallback"] = "all"
        params["mode"] = "reason_then_verdict"
        critiqued = bool(_common(src, "critiqued"))
        if archon.misaligned:
            self.note(li, ci, "Archon's verifier asserts as many critiques as candidates here and would fail or "
                              "keep the wrong critiques; archon keeps each critique with its candidate",
                      ctype="verifier")
        count = _total(src)
        node = self.add(_Node(self.new_id(li, "verify"), "verify", params, list(src), li, ci, count=count,
                              critiqued=critiqued, score="verified"))
        node.comment = f"layer {li}, component {ci}: verifier ({comp['model']}), keeps the accepted candidates " \
                       "(all of them if none passes, as Archon)"
        self.note(li, ci, "two calls per candidate as in Archon (reasoning, then a [Correct]/[Incorrect] "
                          "verdict); a verdict still unreadable after 2 re-asks rejects the candidate, where Archon "
                          "(after 10) drops it from the next layer", "info", "verifier")
        first_k = self._number(comp, "first_k", li, ci, None, integer=True, required=False)
        if first_k:
            if first_k == 1:
                keep = self.add(_Node(self.new_id(li, "first"), "select", {"method": "first"}, [node], li, ci, count=1,
                                      critiqued=critiqued, score="verified"))
                keep.comment = f"layer {li}, component {ci}: the verifier's `first_k: 1`: the first accepted " \
                               "candidate"
                self.note(li, ci, "`first_k: 1` mapped to verify + select(first): the same candidate when one "
                                  "passes; when none passes archon keeps the first candidate where Archon keeps "
                                  "all, and archon verifies every candidate where Archon stops at the first pass",
                          ctype="verifier")
                return keep
            self.note(li, ci, f"`first_k: {first_k}` cannot be mapped (archon's verify has no first-k cut): every "
                              f"accepted candidate goes on, where Archon keeps the first {first_k} accepted",
                      ctype="verifier")
        return node

    def unit_tests(self, comp: dict[str, Any], li: int, ci: int, src: list[_Node],
                   writers: list[tuple[int, int, dict[str, Any]]]) -> _Node:
        """Archon's unit_test_generator + unit_test_evaluator as one ``nl_unit_tests`` node:
        the generator's model writes the tests, the evaluator's model judges each candidate."""
        ctype = "unit_test_evaluator"
        if not src:
            raise self.error("unit_test_evaluator has no candidates to evaluate: no earlier layer writes any "
                             "(Archon fails here too)", li, ci)
        wl, wc, writer = writers[-1]
        if len(writers) > 1:
            self.note(li, ci, f"{len(writers)} unit_test_generators in layer {wl} feed this evaluator: Archon "
                              "evaluates the union of their tests; archon uses the last one's settings "
                              f"(component {wc})", ctype=ctype)
        judge = self.sampling(comp, li, ci)
        gen = self.sampling(writer, wl, wc)
        params: dict[str, Any] = {"model": gen["model"], "judge_model": judge["model"],
                                  "temperature": judge["temperature"],
                                  "max_tokens": max(judge["max_tokens"], gen["max_tokens"])}
        if gen["temperature"] != judge["temperature"] or gen["max_tokens"] != judge["max_tokens"]:
            self.note(li, ci, "the unit_test_generator's temperature/max_tokens "
                              f"({gen['temperature']}/{gen['max_tokens']}) differ from the evaluator's "
                              f"({judge['temperature']}/{judge['max_tokens']}): `{UNIT_TEST_TECHNIQUE}` uses one "
                              f"setting for both: {params['temperature']}/{params['max_tokens']}", ctype=ctype)
        if "system" in gen or "system" in judge:
            params["system"] = ""
        cap = self._number(writer, "unit_test_cap", wl, wc, None, integer=True, required=False)
        if cap is None:
            cap = 5
            self.note(wl, wc, "no `unit_test_cap`: Archon lets the model choose how many tests to write; archon "
                              "asks for 5", ctype="unit_test_generator")
        elif cap > 20 or cap < 1:
            self.note(wl, wc, f"`unit_test_cap: {cap}` outside archon's 1-20: using {min(max(cap, 1), 20)}",
                      ctype="unit_test_generator")
            cap = min(max(cap, 1), 20)
        params["num_tests"] = cap
        first_k = self._number(comp, "first_k", li, ci, None, integer=True, required=False)
        if first_k is None and comp.get("first_pass"):
            first_k = 1
        top_k = self._number(comp, "top_k", li, ci, None, integer=True, required=False)
        if first_k:
            # Candidates are ranked by the fraction passed, ties in input order: the first k that pass
            # every test are exactly the top k whenever at least k pass.
            params["top_k"] = first_k
            self.note(li, ci, f"`first_k: {first_k}` (or `first_pass`): kept as `top_k: {first_k}`, which keeps the "
                              f"first {first_k} candidates that pass every test; archon judges every candidate "
                              "where Archon stops at the last of them", "info", ctype)
            if top_k != first_k:
                self.note(li, ci, f"when fewer than {first_k} candidates pass every test Archon keeps its "
                                  f"`top_k` ({top_k if top_k else 'all'}) by tests passed; archon keeps {first_k}",
                          ctype=ctype)
        elif top_k:
            params["top_k"] = top_k
        if "remove_unit_tests_from_prompt" not in comp:
            self.note(li, ci, "`remove_unit_tests_from_prompt` missing (Archon would fail with a KeyError)",
                      ctype=ctype)
        elif not comp["remove_unit_tests_from_prompt"]:
            self.note(li, ci, "`remove_unit_tests_from_prompt: false`: Archon's evaluator also saw the tests "
                              "appended to the query; archon shows them once, as the list to check", ctype=ctype)
        params = self.fit_params(UNIT_TEST_TECHNIQUE, params, li, ci, ctype)
        count = _total(src)
        if params.get("top_k"):
            count = min(count, params["top_k"]) if count is not None else params["top_k"]
        node = self.add(_Node(self.new_id(li, "unit_tests"), UNIT_TEST_TECHNIQUE, params, list(src), li, ci,
                              count=count, critiqued=bool(_common(src, "critiqued")), score=UNIT_TEST_SCORE))
        node.comment = (f"layer {li}, component {ci}: unit_test_evaluator ({comp['model']}) judging the tests "
                        f"written by the unit_test_generator of layer {wl} ({writer['model']})")
        return node

    def fit_params(self, technique: str, params: dict[str, Any], li: int, ci: int, ctype: str) -> dict[str, Any]:
        """Drops (with a note) parameters the installed technique does not have; as they are
        when the technique is not installed (validation then names it)."""
        from archon.techniques import TECHNIQUES

        cls = TECHNIQUES.get(technique)
        if cls is None:
            return params
        fields = set(cls.Params.model_fields)
        for key in [k for k in params if k not in fields]:
            self.note(li, ci, f"`{key}: {params.pop(key)}` has no counterpart in `{technique}`: dropped",
                      ctype=ctype)
        return params

    def _misaligned_note(self, li: int, ci: int, ctype: str, critiqued: bool) -> None:
        now = "its own critique" if critiqued else "no critique (none was written about it)"
        self.note(li, ci, "Archon would pair the state's critiques with these candidates by position although they "
                          f"describe other candidates; here every candidate shows {now}", ctype=ctype)

    def prune(self, output: _Node) -> None:
        """Leaves out nodes whose candidates nothing reads: in Archon a later layer replaced
        them before any component read them (e.g. generators in two consecutive layers)."""
        live: set[int] = set()
        stack = [output]
        while stack:
            node = stack.pop()
            if id(node) not in live:
                live.add(id(node))
                stack.extend(node.inputs or [])
        for node in self.nodes:
            if id(node) not in live:
                self.note(node.layer, node.component,
                          "candidates never read: in Archon the next layer replaces them before any component reads "
                          "them (wasted calls), so the component is left out", "info", node.ctype)
        self.nodes = [n for n in self.nodes if id(n) in live]

    def finish(self, name: str, outputs: list[_Node], first_model: str | None) -> ArchonImport:
        count = _total(outputs)
        score = _common(outputs, "score")
        method = "best_scored" if score else "first"
        params: dict[str, Any] = {"method": method}
        if score:
            params["score"] = score
        select = self.add(_Node("select", "select", params, list(outputs), len(self.data["layers"]), count=1))
        self.prune(select)
        if count == 1:
            why = "one candidate remains, so Archon's random pick never happens; select just names the output"
        else:
            n = f"{count}" if count is not None else "several"
            rule = f"the highest `{score}` (ties: the earliest)" if score else "the first, in layer order"
            why = f"Archon picks one of the {n} remaining candidates at random; archon deterministically takes {rule}"
        select_comment = f"final choice: method `{method}`: {why}"

        default_model = first_model or EMBEDDED
        for node in self.nodes:
            if node.technique == "rank" and "model" not in node.params:
                node.params = {"model": default_model, **node.params}
        config: dict[str, Any] = {"name": name}
        description = f"Imported from Archon ({self.file})" if self.file else "Imported from Archon"
        config["description"] = description
        used = {m for n in self.nodes for m in (n.params.get("model"), n.params.get("judge_model")) if m}
        used.add(default_model)
        models = {k: v for k, v in self.models.items() if k in used}
        if models:
            config["models"] = models
        config["defaults"] = {"model": default_model, "system": ARCHON_SYSTEM}
        config["nodes"] = [n.as_dict() for n in self.nodes]
        config["output"] = "select"
        return ArchonImport(name=name, source=self.file, config=config, notes=merge_notes(self.notes),
                            comments={n.id: n.comment for n in self.nodes if n.comment},
                            select_comment=select_comment)


ModelMap = Iterable[str] | Mapping[str, str] | None


def convert_archon(source: str | Path | Mapping[str, Any], *, model_map: ModelMap = None,
                   file: str | None = None) -> ArchonImport:
    """Convert one Archon config (a dict, or a path to its JSON file).

    ``model_map`` rewrites model names (``{"gpt-4o": "gpt-4o-mini"}``, ``{"*": "embedded"}``:
    ``*`` matches every model that has no exact entry). A model mapped to ``embedded``
    needs no spec; any other name keeps its component's provider.
    """
    if isinstance(source, Mapping):
        data = dict(source)
    else:
        file = file or str(source)
        data = load_archon_json(source)
    return _Converter(data, file, parse_model_map(model_map)).convert()


def read_pipeline_config(path: str | Path, *, model_map: ModelMap = None):  # type: ignore[no-untyped-def]
    """``(PipelineConfig, yaml root node or None)`` from a ``.yaml`` or an Archon ``.json``."""
    from archon.config import load_yaml, parse_config

    p = Path(path)
    if p.suffix.lower() == ".json":
        result = convert_archon(p, model_map=model_map)
        return parse_config(result.config, file=str(p)), None
    data, root = load_yaml(p)
    return parse_config(data, file=str(p), root=root), root


def load_pipeline_config(path: str | Path, *, model_map: ModelMap = None):  # type: ignore[no-untyped-def]
    """A ``PipelineConfig`` from a ``.yaml`` file or an Archon ``.json`` (converted on the fly)."""
    return read_pipeline_config(path, model_map=model_map)[0]
