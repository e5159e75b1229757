"""The one interface every inference engine implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from archon.backends.types import GenerationRequest, GenerationResult, ScoreRequest, ScoreResult


@runtime_checkable
class Backend(Protocol):
    """A model server or engine.

    ``generate`` takes a whole batch so that engines which batch (vLLM) see every
    request of a pipeline level at once; engines that do not (llama.cpp) loop inside.
    Results come back in request order, one per request, with ``n`` samples each.
    Usage reported here is real compute; the router adds cache accounting on top.
    """

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]: ...

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]: ...

    def close(self) -> None: ...
