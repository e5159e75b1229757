"""The pipeline DAG and its validation. Every check runs before any model call."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from archon.errors import ConfigError
from archon.techniques.base import Technique


@dataclass
class PipelineGraph:
    nodes: dict[str, Technique]
    inputs: dict[str, list[str]]
    output: str | None = None
    source: str | None = None  # the YAML file, for error messages
    paths: dict[str, str] = field(default_factory=dict)  # node id -> YAML path
    _graph: nx.DiGraph = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._graph = nx.DiGraph()
        self._graph.add_nodes_from(self.nodes)
        for node, parents in self.inputs.items():
            for parent in parents:
                self._graph.add_edge(parent, node)
        self.validate()

    def _error(self, node: str | None, message: str, hint: str | None = None, field_name: str = "") -> ConfigError:
        path = self.paths.get(node or "", f"nodes.{node}" if node else "")
        return ConfigError(message, file=self.source, path=(path + field_name) if path else None, hint=hint)

    def validate(self) -> None:
        known = set(self.nodes)
        for node, parents in self.inputs.items():
            for parent in parents:
                if parent not in known:
                    raise self._error(node, f"node {node!r} takes input from {parent!r}, which is not a node",
                                      hint=f"known nodes: {', '.join(self.nodes)}", field_name=".inputs")
        if not nx.is_directed_acyclic_graph(self._graph):
            cycle = nx.find_cycle(self._graph)
            loop = " -> ".join([a for a, _ in cycle] + [cycle[0][0]])
            raise self._error(cycle[0][1], f"the pipeline has a cycle: {loop}",
                              hint="a pipeline is a DAG: remove one of these inputs", field_name=".inputs")
        for node, tech in self.nodes.items():
            parents = self.inputs.get(node, [])
            if tech.consumes == "query" and parents:
                raise self._error(node, f"node {node!r} ({tech.name}) starts from the query and takes no inputs, "
                                        f"but lists {parents}", hint="remove its `inputs`", field_name=".inputs")
            if tech.consumes == "candidates" and not parents:
                raise self._error(node, f"node {node!r} ({tech.name}) needs candidates but has no inputs",
                                  hint="give it `inputs: [<node id>]`, e.g. a generate node",
                                  field_name=".inputs")
        sinks = [n for n in self.nodes if self._graph.out_degree(n) == 0]
        if self.output is None:
            if len(sinks) != 1:
                raise ConfigError(f"the pipeline must have exactly one output node, found {len(sinks)}: {sinks}",
                                  file=self.source, path="output",
                                  hint="set `output: <node id>` or connect the dangling nodes")
            self.output = sinks[0]
        elif self.output not in self.nodes:
            raise ConfigError(f"output node {self.output!r} is not a node", file=self.source, path="output",
                              hint=f"one of: {', '.join(self.nodes)}")
        else:
            extra = [s for s in sinks if s != self.output]
            if extra:
                raise ConfigError(f"nodes {extra} feed nothing and are not the output {self.output!r}",
                                  file=self.source, path="output",
                                  hint="connect them or remove them: their calls would be wasted")
        if not self.nodes:
            raise ConfigError("the pipeline has no nodes", file=self.source, path="nodes")

    def levels(self) -> list[list[str]]:
        """Nodes grouped so each level depends only on earlier ones, in config order."""
        order = {n: i for i, n in enumerate(self.nodes)}
        return [sorted(level, key=order.__getitem__) for level in nx.topological_generations(self._graph)]

    def parents(self, node: str) -> list[str]:
        return list(self.inputs.get(node, []))

    def to_mermaid(self) -> str:
        # Node ids become n0, n1, ...: a config id may be a mermaid keyword (`end`) or hold
        # characters mermaid reads as syntax; the real id is in the quoted label.
        key = {node: f"n{i}" for i, node in enumerate(self.nodes)}
        lines = ["flowchart TD"]
        for node, tech in self.nodes.items():
            label = "<br/>".join([node, tech.name, *_details(tech)]).replace('"', "#quot;")
            lines.append(f'    {key[node]}["{label}"]')
        for node, parents in self.inputs.items():
            lines.extend(f"    {key[p]} --> {key[node]}" for p in parents)
        return "\n".join(lines)

    def to_dot(self) -> str:
        lines = ["digraph pipeline {", "  rankdir=TB;"]
        for node, tech in self.nodes.items():
            shape = "doublecircle" if node == self.output else "box"
            label = "\\n".join([node, tech.name, *_details(tech)]).replace('"', '\\"')
            lines.append(f'  "{node}" [label="{label}", shape={shape}];')
        for node, parents in self.inputs.items():
            lines.extend(f'  "{p}" -> "{node}";' for p in parents)
        lines.append("}")
        return "\n".join(lines)


# What tells two nodes of one technique apart in a drawing (an ensemble's generators, say).
_DRAWN = ("model", "models", "samples", "fusers", "top_k", "particles", "beam_width", "scorer")


def _details(tech: Technique) -> list[str]:
    described = tech.describe()
    out = []
    for key in _DRAWN:
        value = described.get(key)
        if value in (None, "", [], {}):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k} x{v}" if isinstance(v, int) else str(k) for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        out.append(f"{key}: {value}")
    return out
