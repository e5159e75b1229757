from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_router():
    """The real embedded model (llama.cpp, Gemma 3 270M), no cache, one per test session."""
    from archon.backends.router import ModelRouter

    router = ModelRouter()
    yield router
    router.close()


@pytest.fixture
def tmp_cache(tmp_path):
    from archon.backends.cache import CallCache

    cache = CallCache(tmp_path / "calls.sqlite")
    yield cache
    cache.close()
