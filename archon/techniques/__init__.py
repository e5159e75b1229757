"""Techniques are DAG nodes. ``TECHNIQUES`` maps the names used in YAML to classes."""

from __future__ import annotations

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

TECHNIQUES: dict[str, type[Technique]] = {
    cls.name: cls for cls in (Generate, Critique, Rank, Fuse, Verify, Vote, Select)
}
TECHNIQUES.update({cls.name: cls for cls in (Score, BestOfN, Rerank, UnitTests, NLUnitTests, Refine)})
TECHNIQUES.update({cls.name: cls for cls in (SpecReason, ParticleSteering, BeamSearch, SolveDetectVerify)})

__all__ = [
    "TECHNIQUES", "Critique", "Defaults", "Fuse", "Generate", "NodeContext", "Program", "Rank", "Select",
    "Technique", "TechniqueParams", "Verify", "Vote",
]
