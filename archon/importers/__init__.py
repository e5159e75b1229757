"""Importers: other systems' pipeline files converted into archon configs.

``archon_json`` reads Archon's JSON architectures (``{"name": ..., "layers": [...]}``)::

    from archon.importers import convert_archon, load_pipeline_config

    result = convert_archon("archon-70Bx8_then_fuser.json", model_map={"*": "embedded"})
    print(result.to_yaml())        # the YAML, with the notes in its header
    config = load_pipeline_config("pipeline.json")   # .json (converted) or .yaml
"""

from __future__ import annotations

from archon.importers.archon_json import (
    ArchonImport,
    ArchonImportError,
    ImportNote,
    convert_archon,
    load_archon_json,
    load_pipeline_config,
    parse_model_map,
    read_pipeline_config,
)

__all__ = [
    "ArchonImport", "ArchonImportError", "ImportNote", "convert_archon", "load_archon_json",
    "load_pipeline_config", "parse_model_map", "read_pipeline_config",
]
