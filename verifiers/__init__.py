"""Gold-aware checking and running code: what tells a candidate is right.

``answers`` (extraction and normalisation, used by voting; never sees gold), ``math_grader``
(math-verify equivalence against gold), ``sandbox`` (run Python and unit tests, pass@k).
Gold-free scorers (judges, reward models) live in ``archon.scoring``, never here.
Importing this package is cheap and loads no grader: the names below resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from archon.verifiers.answers import extract_final_answer, normalize_answer

_LAZY = {
    "GRADER_VERSION": "math_grader", "MathGrade": "math_grader", "grade_math": "math_grader",
    "SandboxResult": "sandbox", "SandboxUnavailable": "sandbox", "TestOutcome": "sandbox", "pass_at_k": "sandbox",
    "run_python": "sandbox",
    "run_tests": "sandbox",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"archon.verifiers.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'archon.verifiers' has no attribute {name!r}")


__all__ = ["extract_final_answer", "normalize_answer", *_LAZY]
