"""archon behind an OpenAI-compatible API (`archon serve`; see docs/serve.md).

``create_app(pipelines)`` returns an ASGI app to mount in your own server;
``serve(pipelines)`` runs it with uvicorn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from archon.server.admission import Admission, MicroBatcher, open_admission

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from archon.pipeline import Pipeline


def create_app(pipelines: Mapping[str, Pipeline] | Sequence[Pipeline], **kwargs: object) -> Starlette:
    """See ``archon.server.app.create_app``; imported lazily so the SDK does not need starlette."""
    from archon.server.app import create_app as _create_app

    return _create_app(pipelines, **kwargs)  # type: ignore[arg-type]


def serve(pipelines: Mapping[str, Pipeline] | Sequence[Pipeline], *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, max_queue: int = 256, timeout_s: float | None = None,
          keepalive_s: float = 5.0, log_level: str = "info") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(pipelines, api_key=api_key, max_queue=max_queue, timeout_s=timeout_s, keepalive_s=keepalive_s)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)


__all__ = ["Admission", "MicroBatcher", "create_app", "open_admission", "serve"]
