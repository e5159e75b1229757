"""YAML configs: shapes, and errors that name the file, the field, the line and a fix."""

from __future__ import annotations

import textwrap
import time
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


# -- hostile and broken input (issue 14) ------------------------------------------------------

def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Pipeline.from_yaml(path, cache=False)
    return info.value


@pytest.mark.reliability
def test_utf16_and_latin1_files_are_config_errors(tmp_path):
    text = "nodes:\n  - {id: s, technique: generate}\n"
    utf16 = tmp_path / "utf16.yaml"
    utf16.write_bytes(text.encode("utf-16"))
    err = _error(utf16)
    assert str(utf16) in str(err) and "UTF-16" in str(err) and "UTF-8" in (err.hint or "")
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: caf\xe9\n" + text.encode())
    err = _error(latin)
    assert str(latin) in str(err) and "not valid UTF-8" in str(err) and err.line == 1


@pytest.mark.reliability
def test_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, "
              f"*a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: *a8\nnodes:\n  - {technique: generate}\n")
    started = time.monotonic()
    err = _error(path)
    assert time.monotonic() - started < 5
    assert "alias bomb" in str(err) and str(path) in str(err)


@pytest.mark.reliability
def test_huge_values_are_cut_in_errors(tmp_path):
    path = write(tmp_path, "name: [" + ", ".join(["abcdefghij"] * 20000) + "]\nnodes:\n  - {technique: generate}\n")
    err = _error(path)
    assert "name" in str(err) and len(str(err)) < 2000


@pytest.mark.reliability
def test_duplicate_keys_name_both_lines(tmp_path):
    path = write(tmp_path, """
        nodes:
          - id: s
            technique: generate
            samples: 2
            samples: 3
        """)
    err = _error(path)
    assert "duplicate key 'samples'" in str(err) and "lines 5 and 6" in str(err)


@pytest.mark.reliability
def test_module_technique_is_not_imported_without_plugins(tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').write('side effect')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = write(tmp_path, "nodes:\n  - {id: s, technique: 'evil_mod:Cls'}\n")
    err = _error(path)
    assert not marker.exists()
    assert "plugins" in str(err) and "evil_mod" in str(err) and "nodes[0].technique" in str(err)


@pytest.mark.reliability
def test_listed_plugin_is_loaded_and_its_failure_explained(tmp_path, monkeypatch):
    (tmp_path / "good_plugin.py").write_text(
        "from archon.techniques.generate import Generate\n\nclass Twice(Generate):\n    name = 'twice'\n")
    (tmp_path / "bad_plugin.py").write_text("raise RuntimeError('plugin exploded')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ok = write(tmp_path, "plugins: [good_plugin]\nnodes:\n  - {id: s, technique: 'good_plugin:Twice'}\n")
    assert type(Pipeline.from_yaml(ok, cache=False).graph.nodes["s"]).__name__ == "Twice"
    bad = write(tmp_path, "plugins: [bad_plugin]\nnodes:\n  - {id: s, technique: 'bad_plugin:X'}\n")
    err = _error(bad)
    assert "cannot import plugin module 'bad_plugin': RuntimeError: plugin exploded" in str(err)
    assert err.path == "plugins[0]"


@pytest.mark.reliability
def test_template_paths_stay_in_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "cfg"
    folder.mkdir()
    (folder / "mine.j2").write_text("Q: {{ question }}")
    monkeypatch.chdir(tmp_path)  # relative paths resolve against the config file, not the cwd
    ok = folder / "ok.yaml"
    ok.write_text("nodes:\n  - {id: s, technique: generate, prompt_template: mine.j2}\n")
    pipe = Pipeline.from_yaml(ok, cache=False)
    assert pipe.graph.nodes["s"].params.prompt_template == str(folder / "mine.j2")
    for outside in ("/etc/passwd", "../secret.j2"):
        bad = folder / "bad.yaml"
        bad.write_text(f"nodes:\n  - {{id: s, technique: generate, prompt_template: '{outside}'}}\n")
        err = _error(bad)
        assert "outside the config's folder" in str(err) and "nodes[0].prompt_template" in str(err)
    (tmp_path / "shared.j2").write_text("{{ question }}")
    allowed = folder / "allowed.yaml"
    allowed.write_text("allow_external_templates: true\n"
                       "nodes:\n  - {id: s, technique: generate, prompt_template: ../shared.j2}\n")
    assert Pipeline.from_yaml(allowed, cache=False).graph.nodes["s"].params.prompt_template == str(
        tmp_path / "shared.j2")


@pytest.mark.reliability
def test_missing_or_broken_template_found_by_validate(tmp_path):
    missing = write(tmp_path, "nodes:\n  - {id: s, technique: generate}\n  - {id: f, technique: fuse, "
                              "prompt_template: nope.j2}\n")
    err = _error(missing)
    assert "template file not found" in str(err) and "nodes[1].prompt_template" in str(err)
    (tmp_path / "broken.j2").write_text("line one\n{% if question %}unclosed\n")
    broken = write(tmp_path, "nodes:\n  - {id: s, technique: generate, prompt_template: broken.j2}\n")
    err = _error(broken)
    assert "broken.j2" in str(err) and "nodes[0].prompt_template" in str(err)


@pytest.mark.reliability
def test_budget_too_small_for_any_call_is_refused(tmp_path):
    from archon.errors import BudgetError

    path = write(tmp_path, """
        budget: {max_tokens: 1}
        nodes:
          - {id: s, technique: generate, max_tokens: 32}
        """)
    with pytest.raises(BudgetError) as info:
        Pipeline.from_yaml(path, cache=False)
    assert "budget.max_tokens is 1" in str(info.value) and "~40 tokens" in str(info.value)
    fits = write(tmp_path, "budget: {max_tokens: 40}\nnodes:\n  - {id: s, technique: generate, max_tokens: 32}\n")
    Pipeline.from_yaml(fits, cache=False)


@pytest.mark.reliability
def test_budget_starved_rows_say_so():
    from scripted import scripted_router

    from archon.engine.budget import Budget
    from archon.techniques import Generate

    router, _ = scripted_router()
    pipe = Pipeline({"s": Generate(max_tokens=16)}, output="s", budget=Budget(max_tokens=40), router=router)
    fed = pipe.run("short?")
    starved = pipe.run("a long question " * 40)
    assert fed.answer and fed.error is None
    assert starved.answer == "" and starved.error is not None and starved.error.startswith("budget:")


@pytest.mark.reliability
def test_validate_catches_unreachable_models(tmp_path):
    cases = {
        "backend: openai": "needs `base_url:`",
        f"backend: llama_cpp, path: {tmp_path / 'missing.gguf'}": "GGUF file not found",
        f"backend: vllm, path: {tmp_path / 'no_folder'}": "model folder not found",
    }
    for spec, message in cases.items():
        path = write(tmp_path, f"models:\n  m: {{{spec}}}\nnodes:\n  - {{id: s, technique: generate, model: m}}\n")
        err = _error(path)
        assert message in str(err) and "models.m" in str(err), str(err)
