"""YAML configs: shapes, and errors that name the file, the field, the line and a fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from archon import Pipeline
from archon.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(textwrap.dedent(text))
    return p


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_validate(path):
    pipe = Pipeline.from_yaml(path, cache=False)
    assert pipe.graph.output in pipe.graph.nodes


def test_chain_shorthand_and_layers(tmp_path):
    pipe = Pipeline.from_yaml(write(tmp_path, """
        nodes:
          - {id: s, technique: generate, samples: 2}
          - {id: r, technique: rank, top_k: 1}
        """), cache=False)
    assert pipe.graph.parents("r") == ["s"] and pipe.graph.output == "r"
    pipe = Pipeline.from_yaml(write(tmp_path, """
        layers:
          - [{technique: generate}, {technique: generate, temperature: 1.0}]
          - [{technique: fuse}, {technique: fuse}]
          - [{technique: rank, top_k: 1}]
        """), cache=False)
    assert len(pipe.graph.levels()) == 3
    assert pipe.graph.parents("fuse_1_0") == ["generate_0_0", "generate_0_1"]


def test_typo_in_a_parameter(tmp_path):
    path = write(tmp_path, """
        nodes:
          - id: s
            technique: generate
          - id: r
            technique: rank
            top_kk: 2
        """)
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path, cache=False)
    text = str(info.value)
    assert str(path) in text and "nodes[1].top_kk" in text and "did you mean `top_k`" in text
    assert info.value.line == 7


def test_unknown_technique_and_model_and_type(tmp_path):
    with pytest.raises(ConfigError, match=r"nodes\[1\].technique.*unknown technique 'fusee'|unknown technique"):
        Pipeline.from_yaml(write(tmp_path, """
            nodes:
              - {technique: generate}
              - {technique: fusee}
            """), cache=False)
    with pytest.raises(ConfigError, match="unknown model 'gpt-9'"):
        Pipeline.from_yaml(write(tmp_path, """
            nodes:
              - {technique: generate, model: gpt-9}
            """), cache=False)
    with pytest.raises(ConfigError, match=r"nodes\[0\].samples"):
        Pipeline.from_yaml(write(tmp_path, """
            nodes:
              - {technique: generate, samples: many}
            """), cache=False)


def test_cycle_and_missing_input_and_top_level_typo(tmp_path):
    with pytest.raises(ConfigError, match="cycle: "):
        Pipeline.from_yaml(write(tmp_path, """
            nodes:
              - {id: g, technique: generate}
              - {id: a, technique: fuse, inputs: [g, b]}
              - {id: b, technique: fuse, inputs: [a]}
            """), cache=False)
    with pytest.raises(ConfigError, match="'missing', which is not a node"):
        Pipeline.from_yaml(write(tmp_path, """
            nodes:
              - {id: g, technique: generate}
              - {id: a, technique: fuse, inputs: [missing]}
            """), cache=False)
    with pytest.raises(ConfigError, match="did you mean `defaults`"):
        Pipeline.from_yaml(write(tmp_path, """
            default: {model: embedded}
            nodes: [{technique: generate}]
            """), cache=False)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid YAML"):
        Pipeline.from_yaml(write(tmp_path, "nodes:\n  - {technique: generate\n"), cache=False)
    with pytest.raises(ConfigError, match="not found"):
        Pipeline.from_yaml(tmp_path / "nope.yaml", cache=False)


def test_model_override_reaches_every_node(tmp_path):
    path = write(tmp_path, """
        models:
          other: {backend: openai, base_url: "http://127.0.0.1:9/v1"}
        nodes:
          - {technique: generate, models: [embedded, embedded]}
          - {technique: fuse, fusers: [embedded]}
        """)
    pipe = Pipeline.from_yaml(path, model="other", cache=False)
    assert pipe.models() == ["other"]
