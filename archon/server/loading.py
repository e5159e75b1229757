"""Pipelines for `archon serve`: configs and folders of configs, one shared router.

All served pipelines share one router, so a model used by several of them is loaded once
and their calls meet in the same backend batches and the same call cache.
"""

from __future__ import annotations

from pathlib import Path

from archon.backends.registry import ModelRegistry, ModelSpec
from archon.errors import ConfigError
from archon.pipeline import Pipeline, make_router

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


def config_files(paths: list[Path]) -> list[Path]:
    """The config files named, folders expanded to the configs directly inside them."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
            if not found:
                raise ConfigError(f"no pipeline configs (*.yaml, *.yml, *.json) in folder {path}",
                                  hint="name config files or a folder that holds them")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"config not found: {path}", hint="give a pipeline YAML file or a folder of them")
    return files


def load_pipelines(paths: list[Path], *, cache: bool | str | Path = True,
                   model: str | None = None) -> dict[str, Pipeline]:
    """Each config becomes a model id: its `name:` if it sets one, else the file stem."""
    from archon.importers import read_pipeline_config

    loaded = []
    specs: dict[str, tuple[ModelSpec, Path]] = {}
    for path in config_files(paths):
        config, root = read_pipeline_config(path)
        for name, spec in config.models.items():
            if name in specs and specs[name][0] != spec:
                raise ConfigError(f"model {name!r} is defined differently in {specs[name][1]} and {path}",
                                  file=str(path), path=f"models.{name}",
                                  hint="served pipelines share their models; give the two definitions different names")
            specs[name] = (spec, path)
        name = config.name if "name" in config.model_fields_set else path.stem
        loaded.append((name, path, config, root))
    router = make_router(ModelRegistry({n: s for n, (s, _) in specs.items()}), cache=cache)
    pipelines: dict[str, Pipeline] = {}
    where: dict[str, Path] = {}
    for name, path, config, root in loaded:
        if name in pipelines:
            raise ConfigError(f"two served pipelines are both named {name!r}: {where[name]} and {path}",
                              file=str(path), path="name", hint="give one of them another `name:`")
        pipelines[name] = Pipeline.from_config(config, source=str(path), root=root, model=model, router=router)
        where[name] = path
    return pipelines
