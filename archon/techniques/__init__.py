"""Techniques are DAG nodes. ``TECHNIQUES`` maps the names used in YAML to classes."""

from __future__ import annotations

from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.techniques.critique import Critique
from archon.techniques.fuse import Fuse
from archon.techniques.generate import Generate
from archon.techniques.rank import Rank
from archon.techniques.select import Select
from archon.techniques.verify import Verify
from archon.techniques.vote import Vote

TECHNIQUES: dict[str, type[Technique]] = {
    cls.name: cls for cls in (Generate, Critique, Rank, Fuse, Verify, Vote, Select)
}

__all__ = [
    "TECHNIQUES", "Critique", "Defaults", "Fuse", "Generate", "NodeContext", "Program", "Rank", "Select",
    "Technique", "TechniqueParams", "Verify", "Vote",
]
