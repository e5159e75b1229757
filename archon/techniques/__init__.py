"""Techniques are DAG nodes. ``TECHNIQUES`` maps the names used in YAML to classes.

Add your own with ``TECHNIQUES.register("name", MyTechnique)`` or name it in YAML as
``package.module:MyTechnique``.
"""

from __future__ import annotations

from archon.registry import Registry
from archon.techniques.base import Defaults, NodeContext, Program, Technique, TechniqueParams
from archon.techniques.beam import BeamSearch
from archon.techniques.critique import Critique
from archon.techniques.fuse import Fuse
from archon.techniques.generate import Generate
from archon.techniques.particles import ParticleSteering
from archon.techniques.rank import Rank
from archon.techniques.refine import Refine
from archon.techniques.rerank import Rerank
from archon.techniques.score import BestOfN, Score
from archon.techniques.select import Select
from archon.techniques.solve_detect_verify import SolveDetectVerify
from archon.techniques.speculative import SpecReason
from archon.techniques.unit_tests import NLUnitTests, UnitTests
from archon.techniques.verify import Verify
from archon.techniques.vote import Vote


def _is_technique(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Technique)


TECHNIQUES: Registry[type[Technique]] = Registry("technique", _is_technique)
for _cls in (Generate, Critique, Rank, Fuse, Verify, Vote, Select, Score, BestOfN, Rerank, UnitTests, NLUnitTests,
             Refine, SpecReason, ParticleSteering, BeamSearch, SolveDetectVerify):
    TECHNIQUES.register(_cls.name, _cls)

__all__ = [
    "TECHNIQUES", "Critique", "Defaults", "Fuse", "Generate", "NodeContext", "Program", "Rank", "Select",
    "Technique", "TechniqueParams", "Verify", "Vote",
]
