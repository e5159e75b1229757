"""`archon serve`: pipelines behind an OpenAI-compatible HTTP API.

Registered in ``archon.cli`` as ``app.command("serve")(serve_command)``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from archon.errors import ArchonError, ConfigError

err = Console(stderr=True)


def serve_command(
    configs: Annotated[list[Path], typer.Argument(help="pipeline YAML files or folders of them; each is a model")],
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 8000,
    api_key_env: Annotated[str | None, typer.Option("--api-key-env", help="environment variable holding the API "
                                                    "key clients must send (default: no key)")] = None,
    max_queue: Annotated[int, typer.Option("--max-queue", help="pipeline runs admitted at once; more get 429",
                                           min=1)] = 256,
    timeout: Annotated[float | None, typer.Option("--timeout", help="seconds a request may take; then 504")] = None,
    keepalive: Annotated[float, typer.Option("--keepalive", help="seconds between SSE keep-alive comments")] = 5.0,
    model: Annotated[str | None, typer.Option("--model", help="send every node's calls to this model")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not read or write the call cache")] = False,
    cache: Annotated[Path | None, typer.Option("--cache", help="call cache file (default: ~/.cache/archon)")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
) -> None:
    """Serve pipelines as models behind /v1/chat/completions and /v1/completions (see docs/serve.md)."""
    from archon.server import serve
    from archon.server.loading import load_pipelines

    api_key = None
    if api_key_env:
        api_key = os.environ.get(api_key_env, "")
        if not api_key:
            err.print(f"[bold red]config error:[/] --api-key-env names {escape(api_key_env)}, which is not set "
                      "or empty\n  hint: export it before starting the server", highlight=False)
            raise typer.Exit(2)
    try:
        pipelines = load_pipelines(configs, cache=False if no_cache else (cache or True), model=model)
    except ArchonError as exc:
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        err.print(f"[bold red]{kind}:[/] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    err.print(f"serving {', '.join(sorted(pipelines))} on http://{host}:{port}/v1"
              + (" (API key required)" if api_key else ""), highlight=False)
    routers = {id(p.router): p.router for p in pipelines.values()}
    try:
        serve(pipelines, host=host, port=port, api_key=api_key, max_queue=max_queue, timeout_s=timeout,
              keepalive_s=keepalive, log_level=log_level)
    finally:
        for router in routers.values():
            router.close()
