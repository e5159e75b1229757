"""The `archon` command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from archon.commands.console import err, fail, out
from archon.commands.evaluate import RunningStats, set_scheduler
from archon.errors import ArchonError, ConfigError

app = typer.Typer(help="archon: inference-time scaling pipelines.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="Model utilities.", no_args_is_help=True)
app.add_typer(models_app, name="models")

_fail = fail  # every command prints errors through archon.commands.console


def _load(config: Path, model: str | None, no_cache: bool, cache: Path | None,  # type: ignore[no-untyped-def]
          runtime_profiles: list[str] | None = None):
    from archon.pipeline import Pipeline

    cache_setting: bool | Path = False if no_cache else (cache or True)
    if config.suffix.lower() == ".json":  # an Archon architecture: say what differs, as import-archon does
        from archon.config import apply_runtime_profiles, parse_config
        from archon.importers import convert_archon

        result = convert_archon(config)
        if result.differs:
            err.print(f"[yellow]{escape(str(config))}: converted from Archon JSON with {len(result.differs)} "
                      "behaviour difference(s)[/] (`archon import-archon` writes them into the YAML):")
            for note in result.differs:
                err.print(f"  - {escape(note.where() + ': ' + note.message)}", highlight=False, soft_wrap=True)
        parsed = parse_config(result.config, file=str(config))
        if runtime_profiles:
            parsed = apply_runtime_profiles(parsed, list(runtime_profiles))
        return Pipeline.from_config(parsed, source=str(config), model=model, cache=cache_setting)
    return Pipeline.from_yaml(config, model=model, cache=cache_setting, runtime_profiles=runtime_profiles or ())


CacheOpt = Annotated[Path | None, typer.Option("--cache", help="call cache file (default: ~/.cache/archon)")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="do not read or write the call cache")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="send every node's calls to this model")]
ProfileOpt = Annotated[list[str] | None, typer.Option(
    "--runtime-profile", help="NAME=PATH: model NAME's runtime profile file, for the idealized runtime")]


@app.command()
def run(
    config: Annotated[Path, typer.Argument(help="pipeline YAML")],
    input: Annotated[str | None, typer.Option("--input", "-i", help="one question")] = None,
    input_file: Annotated[Path | None, typer.Option("--input-file", help="JSONL: id, prompt/question")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="JSONL results; reruns resume")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print answer, usage and trace as JSON")] = False,
    model: ModelOpt = None,
    window: Annotated[int | None, typer.Option("--window", "-w", help="queries in flight at once (default: chosen "
                                               "by the backend; with scheduler levels: the chunk size, 8)")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", hidden=True, help="old name of --window")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="dataflow or levels "
                                                  "(default: the config's, else dataflow)")] = None,
    no_cache: NoCacheOpt = False,
    cache: CacheOpt = None,
    runtime_profile: ProfileOpt = None,
) -> None:
    """Run a pipeline on one question or a JSONL file of questions."""
    if (input is None) == (input_file is None):
        err.print("[red]give exactly one of --input or --input-file[/]")
        raise typer.Exit(2)
    try:
        pipe = _load(config, model, no_cache, cache, runtime_profile)
        set_scheduler(pipe, scheduler)
        with pipe:
            if input is not None:
                result = pipe.run(input)
                if as_json:
                    out.print_json(result.model_dump_json())
                else:
                    print(result.answer)
                    u = result.usage
                    unknown = int(u.get("cache_unknown_prompt_tokens", 0))
                    cached = f"{int(u['cached_prompt_tokens'])} cached" + (
                        f" + unknown for {unknown} (server did not report)" if unknown else "")
                    err.print(f"[dim]{int(u['total_tokens'])} tokens ({int(u['prompt_tokens'])} prompt, "
                              f"{cached}, {int(u['completion_tokens'])} completion), "
                              f"{int(u['calls'])} calls, {int(u['cache_hits'])} cache hits, "
                              f"{result.latency_s:.1f}s, {_idealized_text(u)}[/]")
                if result.error:
                    err.print(f"[red]{escape(result.error)}[/]")
                return
            assert input_file is not None
            _run_file(pipe, input_file, output, window or batch_size, as_json)
    except ArchonError as exc:
        raise _fail(exc) from None


def _idealized_text(u: dict) -> str:  # type: ignore[type-arg]
    if u.get("idealized_unknown_calls"):
        return "idealized runtime unknown (no runtime profile; see `archon models profile`)"
    return f"{float(u.get('idealized_runtime_s', 0.0)):.2f}s idealized"


def _run_file(pipe, input_file: Path, output: Path | None, window: int | None, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Each result is written the moment its query finishes (fsynced when ``output`` is a
    file), so a kill loses only unfinished queries and a rerun resumes."""
    from archon.pipeline import as_query
    from archon.results_io import append_jsonl, finished_ids, read_jsonl

    if not input_file.is_file():
        raise ConfigError(f"input file not found: {input_file}")
    queries = []
    for i, row in enumerate(read_jsonl(input_file)):
        try:
            queries.append(as_query(row, i))
        except ValueError as exc:
            raise ConfigError(str(exc), file=str(input_file), line=i + 1,
                              hint="each line needs `id` and `prompt` (or `question`)") from None
    done = finished_ids(output) if output else set()
    todo = [q for q in queries if q.id not in done]
    if done:
        err.print(f"resuming: {len(queries) - len(todo)} of {len(queries)} already in {escape(str(output))}")
    if pipe.scheduler == "levels" and window is None:
        window = 8
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=err) as progress:
        task = progress.add_task(escape(pipe.name), total=len(queries), completed=len(queries) - len(todo), stats="")
        seen = RunningStats()

        def emit(result) -> None:  # type: ignore[no-untyped-def]
            row = _row(result, full=as_json)
            if output:
                append_jsonl(output, [row])
            else:
                print(json.dumps(row, ensure_ascii=False), flush=True)
            seen.add(row)
            progress.update(task, advance=1, stats=seen.text())

        pipe.run_batch(todo, on_result=emit, window=window)


def _row(result, full: bool) -> dict:  # type: ignore[no-untyped-def]
    data = result.model_dump(exclude={"trace", "candidates"} if not full else set())
    return data


@app.command()
def validate(config: Annotated[Path, typer.Argument(help="pipeline YAML")]) -> None:
    """Check a config without calling any model."""
    try:
        pipe = _load(config, None, True, None)
    except ArchonError as exc:
        raise _fail(exc) from None
    levels = pipe.graph.levels()
    out.print(f"[green]ok[/] {escape(str(config))}: {len(pipe.graph.nodes)} nodes in {len(levels)} levels, "
              f"output `{escape(str(pipe.graph.output))}`, models: {escape(', '.join(pipe.models()) or '-')}")


@app.command()
def show(
    config: Annotated[Path, typer.Argument(help="pipeline YAML")],
    format: Annotated[str, typer.Option("--format", "-f", help="text, mermaid or dot")] = "text",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write to this file")] = None,
) -> None:
    """Draw the pipeline DAG."""
    try:
        pipe = _load(config, None, True, None)
    except ArchonError as exc:
        raise _fail(exc) from None
    graph = pipe.graph
    if format == "mermaid":
        text = graph.to_mermaid()
    elif format == "dot":
        text = graph.to_dot()
    elif format == "text":
        lines = [f"{pipe.name}"]
        for i, level in enumerate(graph.levels()):
            for node in level:
                tech = graph.nodes[node]
                params = ", ".join(f"{k}={v}" for k, v in tech.describe().items() if k != "technique")
                src = ", ".join(graph.parents(node)) or "query"
                mark = "  <- output" if node == graph.output else ""
                lines.append(f"  L{i}  {node} [{tech.name}]  <- {src}" + (f"  ({params})" if params else "") + mark)
        text = "\n".join(lines)
    else:
        err.print(f"[red]unknown format {escape(repr(format))}; use text, mermaid or dot[/]")
        raise typer.Exit(2)
    if output:
        output.write_text(text + "\n")
        err.print(f"wrote {escape(str(output))}")
    else:
        print(text)


@models_app.command("list")
def models_list(config: Annotated[Path | None, typer.Argument(help="pipeline YAML (optional)")] = None) -> None:
    """Models known by default or defined in a config."""
    from archon.backends.registry import ModelRegistry

    registry = ModelRegistry()
    if config:
        try:
            registry = _load(config, None, True, None).registry
        except ArchonError as exc:
            raise _fail(exc) from None
    from archon.backends.runtime_profile import resolve_profile

    table = Table("name", "backend", "where", "parameters", "runtime profile")
    for name in registry.names():
        spec = registry.get(name)
        where = spec.path or ", ".join(spec.base_urls()) or ("bundled Gemma 3 270M" if name == "embedded" else "-")
        try:
            profile = resolve_profile(name, spec).source or "-"
        except ArchonError as exc:
            profile = f"error: {exc}"
        table.add_row(escape(name), spec.backend, escape(where),
                      f"{spec.parameters:,.0f}" if spec.parameters else "-", escape(profile))
    out.print(table)


@models_app.command("profile")
def models_profile(
    model: Annotated[str, typer.Argument(help="model name (`embedded` or one defined in --config)")] = "embedded",
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="profile file to write "
                                                  "(default: MODEL.runtime_profile.json)")] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="pipeline YAML that defines the model")
                      ] = None,
    prompt_lengths: Annotated[str, typer.Option(help="prompt lengths of the sweep (tokens)")] = "8,64,256,1024",
    output_lengths: Annotated[str, typer.Option(help="output lengths of the sweep (tokens)")] = "1,16,64",
    cached_lengths: Annotated[str, typer.Option(help="cached-prefix lengths (tokens; empty: skip)")] = "256,1024",
    repeats: Annotated[int, typer.Option(min=1, help="timed runs per point (the median is fitted)")] = 3,
    warmup: Annotated[int, typer.Option(min=0, help="untimed calls first")] = 2,
) -> None:
    """Measure MODEL's runtime profile on this machine, for the idealized runtime (Narayanan et al.).

    Run it on an otherwise idle machine: the profile should describe the engine without contention.
    """
    from archon.backends.profiling import measure_profile, parse_lengths, settings_from
    from archon.backends.registry import ModelRegistry
    from archon.backends.router import default_backend_factory

    try:
        registry = ModelRegistry() if config is None else _load(config, None, True, None).registry
        spec = registry.get(model)
        try:
            settings = settings_from(parse_lengths(prompt_lengths, "--prompt-lengths"),
                                     parse_lengths(output_lengths, "--output-lengths"),
                                     parse_lengths(cached_lengths, "--cached-lengths") if cached_lengths else (),
                                     repeats, warmup)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        backend = default_backend_factory(model, spec)
        try:
            label = f"profiling {escape(model)}"
            with err.status(label) as status:
                profile = measure_profile(model, spec, backend, settings,
                                          progress=lambda msg: status.update(f"{label}: {escape(msg)}"))
        finally:
            backend.close()
    except ArchonError as exc:
        raise _fail(exc) from None
    path = profile.save(out_file or Path(f"{model}.runtime_profile.json"))
    c = profile.coefficients
    table = Table("prompt tokens (uncached)", "F: encode seconds", title=f"runtime profile of {escape(model)}")
    for k, v in zip(c.prompt_knots, c.prompt_runtime_s, strict=True):
        table.add_row(f"{k:.0f}", f"{v:.4f}")
    out.print(table)
    out.print(f"per output token after the first: {1000 * c.per_output_token_s:.2f} ms; per cached prompt token: "
              f"{1e6 * c.per_cached_token_s:.2f} us; fit R^2 {profile.fit['r2']:.4f}, "
              f"RMSE {profile.fit['rmse_s']:.4f}s over {int(profile.fit['points'])} points")
    out.print(f"[green]wrote[/] {escape(str(path))}  (use it: `models: {{{escape(model)}: {{runtime_profile: "
              f"{escape(str(path))}}}}}` or --runtime-profile {escape(model)}={escape(str(path))})")


@models_app.command("convert")
def models_convert(
    src: Annotated[Path, typer.Argument(help="GGUF file")],
    dest: Annotated[Path, typer.Argument(help="output folder (Hugging Face layout)")],
) -> None:
    """Convert a GGUF into a Hugging Face folder that vLLM can load.

    Needs the `cpu` extra: pip install "archon\\[cpu]".
    """
    from archon.backends.convert import convert_gguf_to_hf

    try:
        path = convert_gguf_to_hf(src, dest)
    except ArchonError as exc:
        raise _fail(exc) from None
    out.print(f"[green]wrote[/] {escape(str(path))}")


from archon.commands.evaluate import eval_command  # noqa: E402
from archon.commands.import_archon import import_archon_command  # noqa: E402
from archon.commands.leaderboard import leaderboard_command  # noqa: E402
from archon.commands.search import search_command  # noqa: E402
from archon.commands.serve import serve_command  # noqa: E402

app.command("eval")(eval_command)
app.command("leaderboard")(leaderboard_command)
app.command("search")(search_command)
app.command("import-archon")(import_archon_command)
app.command("serve")(serve_command)


def main() -> None:  # pragma: no cover
    sys.exit(app())
