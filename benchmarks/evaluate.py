"""Run a pipeline over a benchmark, grade it, and keep the record.

``evaluate(pipeline, benchmark, out_dir)`` runs the questions through the pipeline's
scheduler (dataflow: each question on its own, ``window`` in flight; levels: in chunks),
grades each question as soon as it finishes and appends its JSON line to
``OUT/results.jsonl`` at once (``archon.results_io``: fsynced, a torn last line is dropped),
so a kill loses only questions not finished yet. ``OUT/run.json``
holds what the run is (pipeline config hash, benchmark, subset, grader) and its sessions;
``OUT/summary.json`` the metrics, recomputed from the results file after every session.

Rerunning into the same directory resumes: questions already in ``results.jsonl`` are
skipped. Resuming a directory made with another config hash, benchmark, subset or grader
is refused, so a run never mixes answers from two pipelines.

Metrics (``EvalSummary``):

* ``accuracy`` with a 95% Wilson interval (binary graders), or the mean judge rating
  (1-10) with a normal-approximation interval (``metric: judge_score``). Questions whose
  pipeline failed count as wrong.
* ``coverage`` (oracle, "any candidate correct"): the selected answer **or** any
  candidate produced by the pipeline's *root nodes* (those reading the query, e.g. its
  ``generate`` nodes; for several roots, all of them) is correct. The final node often
  keeps one candidate, so its list says nothing about coverage; the root nodes' outputs
  are read from the trace (``result.trace[i].outputs``). Not computed by the judge grader.
* ``pass_at_k`` (code): the unbiased pass@k over the root nodes' candidates.
* per-query means of tokens (prompt, completion, cached prompt), backend calls, FLOPs,
  cache hits and latency. Tokens, calls and FLOPs are the pipeline's **cost**: what the run
  spent plus what the call cache served (metered by ``archon.search.metering.MeteredRouter``:
  cached samples' own completion tokens, their prompts as measured or estimated), so a
  rerun from the cache ranks like the original; ``spent`` and ``cache_saved`` hold the split.
  Latency is the model time of the query's own calls; a row's ``batch_wall_s`` is the wall
  time from the question's admission to its result (with ``scheduler: levels``, its
  chunk's); wall time covers all sessions, grading included.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import hashlib
import json
import os
import subprocess
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, Field

from archon.benchmarks.datasets import Item, ids_digest, repo_root
from archon.benchmarks.graders import QueryGrade, mean_interval, wilson_interval
from archon.benchmarks.registry import Benchmark, get_benchmark
from archon.data import ChatMessage, Query, QueryResult
from archon.errors import ConfigError
from archon.results_io import LOCK_FILE, append_jsonl, lock_run_dir, read_json_file, read_jsonl

RESULTS_FILE = "results.jsonl"
RUN_FILE = "run.json"
SUMMARY_LOCK_FILE = ".summary.lock"
SUMMARY_FILE = "summary.json"
USAGE_KEYS = ("prompt_tokens", "cached_prompt_tokens", "completion_tokens", "total_tokens", "calls", "latency_s",
              "flops", "cache_hits")


class EvalSummary(BaseModel):
    """What ``summary.json`` holds; the leaderboard reads it."""

    run_dir: str
    benchmark: str  # a readable spec, e.g. "arith?digits=1&..."
    benchmark_spec: dict[str, Any]
    subset: dict[str, Any]
    grader: dict[str, Any]
    metric: str = "accuracy"  # or "judge_score" (mean rating 1-10)
    n: int = 0  # questions with a result
    n_total: int = 0  # questions in the subset
    complete: bool = False
    graded: int = 0  # questions with a score (judge failures are not)
    errors: int = 0  # pipeline errors (counted as wrong)
    correct: float | None = None
    accuracy: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    ci_method: str = "wilson"
    coverage: float | None = None
    coverage_ci_low: float | None = None
    coverage_ci_high: float | None = None
    coverage_source: str = ""
    pass_at_k: dict[str, float] | None = None
    tokens_per_query: float = 0.0
    prompt_tokens_per_query: float = 0.0
    cached_prompt_tokens_per_query: float = 0.0
    completion_tokens_per_query: float = 0.0
    calls_per_query: float = 0.0
    flops_per_query: float = 0.0
    latency_per_query_s: float = 0.0
    totals: dict[str, float] = Field(default_factory=dict)  # the pipeline's cost: spent + cache_saved
    spent: dict[str, float] = Field(default_factory=dict)  # what this run paid
    cache_saved: dict[str, float] = Field(default_factory=dict)  # what the call cache served
    cache_hits: int = 0
    wall_time_s: float = 0.0
    grader_usage: dict[str, float] | None = None
    pipeline: dict[str, Any] = Field(default_factory=dict)
    models: list[str] = Field(default_factory=list)
    git_revision: str | None = None
    archon_version: str | None = None
    created_at: str = ""
    updated_at: str = ""
    shards: dict[str, Any] | None = None  # a sharded run: {"n", "started", "missing"}

    @property
    def name(self) -> str:
        return str(self.pipeline.get("name") or Path(self.run_dir).name)


# -- identity of a run ----------------------------------------------------------------------

def pipeline_fingerprint(pipe: Any) -> dict[str, Any]:
    """Everything that decides what the pipeline sends: nodes and their full parameters,
    edges, output, defaults, budget and the specs of the models it uses (after ``--model``
    and other overrides, since those change the techniques' parameters)."""
    graph = pipe.graph
    nodes = {nid: {"technique": f"{type(t).__module__}.{type(t).__name__}",
                   "params": t.params.model_dump(mode="json")} for nid, t in graph.nodes.items()}
    models = {}
    for m in pipe.models():
        spec = pipe.registry.get(m) if m in pipe.registry else None
        models[m] = spec.model_dump(mode="json", exclude_none=True) if spec is not None else None
    return {"nodes": nodes, "inputs": {k: list(v) for k, v in graph.inputs.items()}, "output": graph.output,
            "defaults": dataclasses.asdict(pipe.defaults), "budget": pipe.budget.model_dump(mode="json"),
            "models": models}


def config_hash(pipe: Any) -> str:
    blob = json.dumps(pipeline_fingerprint(pipe), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_revision(root: Path | None = None) -> str | None:
    """``HEAD`` of the source checkout (``+dirty`` with uncommitted changes), or None."""
    root = root or repo_root()
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _archon_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("archon")
    except Exception:
        return None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(tmp, path)


def _check_resume(old: dict[str, Any], new: dict[str, Any], run_dir: Path) -> None:
    checks = [
        ("pipeline config", old.get("config_hash"), new["config_hash"]),
        ("benchmark", old.get("benchmark_spec"), new["benchmark_spec"]),
        ("subset", {k: old.get("subset", {}).get(k) for k in ("split", "limit", "seed", "ids_sha")},
         {k: new["subset"].get(k) for k in ("split", "limit", "seed", "ids_sha")}),
        ("grader", [old.get("grader", {}).get("name"), old.get("grader", {}).get("version")],
         [new["grader"]["name"], new["grader"]["version"]]),
    ]
    for what, was, now in checks:
        if was != now:
            raise ConfigError(
                f"{run_dir} holds a run with a different {what}: it has {json.dumps(was, default=str)}, "
                f"this run has {json.dumps(now, default=str)}",
                hint="resume only with the same config, benchmark, subset and grader; use a new --out directory "
                     "(or delete this one to start over)")


# -- loading a pipeline -----------------------------------------------------------------------

def _step(container: Any, key: str, where: str) -> Any:
    if isinstance(container, dict):
        return container.setdefault(key, {})
    if isinstance(container, list):
        if key.lstrip("-").isdigit():
            try:
                return container[int(key)]
            except IndexError:
                raise ConfigError(f"--set {where}: index {key} out of range (0..{len(container) - 1})") from None
        for node in container:  # nodes by id
            if isinstance(node, dict) and node.get("id") == key:
                return node
        ids = [str(n.get("id")) for n in container if isinstance(n, dict) and n.get("id")]
        raise ConfigError(f"--set {where}: no node with id {key!r}", hint=f"ids: {', '.join(ids) or '-'}")
    raise ConfigError(f"--set {where}: {key!r} is inside a value, not a mapping or list")


def apply_overrides(data: dict[str, Any], sets: Sequence[str]) -> dict[str, Any]:
    """``KEY.PATH=VALUE`` (VALUE read as YAML): ``defaults.max_tokens=8``,
    ``nodes.sample.samples=4`` (a node by id) or ``nodes.0.temperature=0``."""
    import yaml

    for item in sets:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE", hint="e.g. --set defaults.max_tokens=8")
        parts = key.strip().split(".")
        cur: Any = data
        for p in parts[:-1]:
            cur = _step(cur, p, key)
        last = parts[-1]
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(cur, dict):
            cur[last] = value
        elif isinstance(cur, list) and last.isdigit() and int(last) < len(cur):
            cur[int(last)] = value
        else:
            raise ConfigError(f"--set {key}: cannot set {last!r} here")
    return data


def load_pipeline(config: str | Path, *, model: str | None = None, cache: bool | str | Path = True,
                  sets: Sequence[str] = ()) -> Any:
    """A pipeline from a YAML (or Archon ``.json``) config with ``sets`` overrides applied, on a
    router that also meters what the call cache saved (so cached runs report their full cost)."""
    from archon.config import load_yaml, parse_config
    from archon.importers import read_pipeline_config
    from archon.pipeline import Pipeline, make_router
    from archon.search.metering import MeteredRouter

    path = Path(config)
    if not sets:
        parsed, root = read_pipeline_config(path)
    else:
        if path.suffix.lower() == ".json":
            data = read_pipeline_config(path)[0].model_dump(mode="json", exclude_none=True)
        else:
            data = load_yaml(path)[0]
        parsed, root = parse_config(apply_overrides(data, sets), file=str(path)), None  # values changed: no lines
    router = MeteredRouter.wrap(make_router(parsed.registry(), cache=cache))
    return Pipeline.from_config(parsed, source=str(path), root=root, model=model, router=router)


# -- the run --------------------------------------------------------------------------------

def root_nodes(pipe: Any) -> list[str]:
    return [n for n in pipe.graph.nodes if not pipe.graph.parents(n)]


def pool_texts(result: QueryResult, roots: Sequence[str]) -> list[str]:
    """Texts of the candidates the root nodes produced (see the module docstring)."""
    return [c.text for tr in result.trace if tr.node in roots for c in tr.outputs]


def _sum_usage(dicts: Sequence[dict[str, Any]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _followup_query(item: Item, results: Sequence[QueryResult], turn: int) -> Query:
    msgs: list[ChatMessage] = []
    turns = [item.query.question_text(), *item.followups]
    for t in range(turn):
        msgs.append(ChatMessage(role="user", content=turns[t]))
        msgs.append(ChatMessage(role="assistant", content=results[t].answer))
    msgs.append(ChatMessage(role="user", content=turns[turn]))
    return Query(id=f"{item.id}#t{turn + 1}", messages=msgs, metadata=dict(item.query.metadata))


def run_items(pipe: Any, items: Sequence[Item]) -> list[list[QueryResult]]:
    """One result per turn per item: the first turns as one batch, then each follow-up turn."""
    runs = [[r] for r in pipe.run_batch([it.query for it in items])]
    turns = max((len(it.followups) for it in items), default=0)
    for t in range(1, turns + 1):
        todo = [i for i, it in enumerate(items) if len(it.followups) >= t and runs[i][-1].error is None]
        if not todo:
            break
        results = pipe.run_batch([_followup_query(items[i], runs[i], t) for i in todo])
        for i, r in zip(todo, results, strict=True):
            runs[i].append(r)
    return runs


def saved_usage(router: Any, results: Sequence[QueryResult]) -> dict[str, float] | None:
    """What the call cache saved these results (a ``MeteredRouter``), else None."""
    saved = getattr(router, "saved_by_query", None)
    if saved is None:
        return None
    return _sum_usage([saved[r.id].to_dict() for r in results if r.id in saved])


def make_row(item: Item, results: Sequence[QueryResult], grade: QueryGrade,
             cache_saved: dict[str, float] | None = None) -> dict[str, Any]:
    last = results[-1]
    errors = [r.error for r in results if r.error]
    row: dict[str, Any] = {
        "id": item.id,
        "output": last.answer,
        "final_answer": last.final_answer,
        "extracted": grade.extracted,
        "gold": item.gold,
        "correct": grade.correct,
        "score": grade.score,
        "coverage": grade.coverage,
        "candidates": grade.candidates,
        "usage": _sum_usage([r.usage for r in results]),
        "usage_by_node": {},
        "latency_s": round(sum(float(r.usage.get("latency_s", 0.0)) for r in results), 6),  # model time
        "batch_wall_s": round(sum(r.latency_s for r in results), 6),  # wall time of its batch(es)
        "error": "; ".join(errors) if errors else None,
        "grade": grade.details,
    }
    for r in results:
        for node, u in r.usage_by_node.items():
            row["usage_by_node"][node] = _sum_usage([row["usage_by_node"].get(node, {}), u])
    if cache_saved:
        row["cache_saved"] = cache_saved
    if grade.pass_at_k is not None:
        row["pass_at_k"] = grade.pass_at_k
    if grade.grader_usage is not None:
        row["grader_usage"] = grade.grader_usage
    if len(results) > 1 or item.followups:
        row["turn_outputs"] = [r.answer for r in results]
    return row


def evaluate(
    pipeline: Any,
    benchmark: str | Benchmark,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    split: str | None = None,
    seed: int | None = None,
    data_dir: str | Path | None = None,
    items: Sequence[Item] | None = None,
    batch_size: int | None = None,
    window: int | None = None,
    model: str | None = None,
    cache: bool | str | Path = True,
    judge_model: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    pipeline_meta: dict[str, Any] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    shard: Shard | None = None,
) -> EvalSummary:
    """Evaluate ``pipeline`` (a ``Pipeline`` or a YAML path) on ``benchmark`` (a name or a
    ``Benchmark``) into ``out_dir``; resumes a partial run; returns the summary.

    ``items`` replaces the benchmark's own selection (``split``/``limit``/``seed``); the
    subset is then identified by the hash of the items' ids. ``progress(done, total)`` is
    called after every row written and ``on_row(row)`` with the row itself. ``window`` is
    the number of questions in flight (``batch_size`` is its old name; default: the
    pipeline's ``window``, else the backend's choice; with ``scheduler: levels`` the chunk
    size, default 8). ``shard`` (``Shard(k, n)``) answers only the questions whose id hashes to
    shard k of n, into per-shard files of the same run directory, so that n processes (on
    one machine or several sharing the folder) split one run; the summary is the union. Example::

        from archon import Pipeline
        from archon.benchmarks.evaluate import evaluate

        summary = evaluate(Pipeline.from_yaml("configs/sample_vote.yaml"), "arith", "runs/vote", limit=20)
        print(summary.accuracy, summary.coverage, summary.tokens_per_query)
    """
    from archon.pipeline import Pipeline

    own = not isinstance(pipeline, Pipeline)
    pipe = load_pipeline(pipeline, model=model, cache=cache) if own else pipeline
    try:
        bench = benchmark if isinstance(benchmark, Benchmark) else get_benchmark(
            benchmark, data_dir, judge_model=judge_model)
        split = split or bench.default_split
        selected = list(items) if items is not None else bench.load(split, limit, seed)
        ids = [it.id for it in selected]
        if len(set(ids)) != len(ids):
            raise ConfigError("benchmark items have duplicate ids")
        files = RunFiles.of(Path(out_dir), shard)
        files.check_layout()
        with lock_run_dir(out_dir, files.lock):
            return _evaluate(pipe, bench, Path(out_dir), selected, split=split, limit=limit, seed=seed,
                             custom_items=items is not None, window=window or batch_size, progress=progress,
                             pipeline_meta=pipeline_meta or {}, on_row=on_row, files=files)
    finally:
        if own:
            pipe.close()


def _evaluate(pipe: Any, bench: Benchmark, run_dir: Path, items: list[Item], *, split: str, limit: int | None,
              seed: int | None, custom_items: bool, window: int | None,
              progress: Callable[[int, int], None] | None, pipeline_meta: dict[str, Any],
              on_row: Callable[[dict[str, Any]], None] | None = None, files: RunFiles) -> EvalSummary:
    started = time.perf_counter()
    judge = getattr(bench.grader, "judge_model", None)
    if judge is not None and judge not in pipe.registry:
        raise ConfigError(f"judge model {judge!r} is not defined",
                          hint=f"define it under `models:` in the pipeline config (known: "
                               f"{', '.join(pipe.registry.names())})")
    run_dir.mkdir(parents=True, exist_ok=True)
    results_path = run_dir / files.results
    manifest_path = run_dir / files.manifest
    subset = {"split": split, "limit": limit, "seed": seed,
              "selection": "custom" if custom_items else ("first" if seed is None else f"random(seed={seed})"),
              "n": len(items), "ids_sha": ids_digest(items)}
    all_ids = [it.id for it in items]
    if files.shard is not None:
        subset["shards"] = files.shard.n
        items = [it for it in items if files.shard.holds(it.id)]
    source = pipe.graph.source
    config_dump = (pipe.config.model_dump(mode="json", exclude_none=True) if pipe.config is not None
                   else pipeline_fingerprint(pipe))
    manifest = {
        "format": 1,
        "benchmark": bench.label,
        "benchmark_spec": bench.spec(),
        "subset": subset,
        "grader": bench.grader.describe(),
        "config_hash": config_hash(pipe),
        "pipeline": {"name": pipe.name, "source": source, "config": config_dump, **pipeline_meta},
        "models": pipe.models(),
        "coverage_source": "root nodes: " + ", ".join(root_nodes(pipe)),
        "git_revision": git_revision(),
        "archon_version": _archon_version(),
        "created_at": _now(),
        "sessions": [],
    }
    if manifest_path.exists():
        old = read_json_file(manifest_path, what=RUN_FILE)
        _check_resume(old, manifest, run_dir)
        manifest["created_at"] = old.get("created_at", manifest["created_at"])
        manifest["sessions"] = old.get("sessions", [])
    elif results_path.exists() and results_path.stat().st_size > 0:
        raise ConfigError(f"{results_path} exists but {manifest_path.name} does not: results of unknown origin",
                          hint="use a new --out directory")
    session = {"started_at": _now(), "wall_s": 0.0, "queries": 0, "git_revision": manifest["git_revision"]}
    manifest["sessions"].append(session)

    wanted = {it.id for it in items}
    done = {str(r["id"]) for r in read_jsonl(results_path) if "id" in r} & wanted
    todo = [it for it in items if it.id not in done]
    total = len(items)
    if progress:
        progress(len(done), total)
    roots = root_nodes(pipe)
    written = [len(done)]

    def write(rows: list[dict[str, Any]]) -> None:
        append_jsonl(results_path, rows)
        session["queries"] += len(rows)
        session["wall_s"] = round(time.perf_counter() - started, 3)
        _write_json(manifest_path, manifest)
        written[0] += len(rows)
        for row in rows:
            if on_row:
                on_row(row)
        if progress:
            progress(written[0], total)

    try:
        _write_json(manifest_path, manifest)
        if hasattr(pipe.router, "reset_saved"):
            pipe.router.reset_saved()
        if getattr(pipe, "scheduler", "levels") == "levels":
            size = max(1, window or 8)
            for start in range(0, len(todo), size):
                chunk = todo[start:start + size]
                if hasattr(pipe.router, "reset_saved"):
                    pipe.router.reset_saved()
                write(_grade_rows(pipe, bench, chunk, run_items(pipe, chunk), roots))
        elif todo:
            asyncio.run(_stream_items(pipe, bench, todo, roots, window, write))
    finally:
        session["wall_s"] = round(time.perf_counter() - started, 3)
        session["finished_at"] = _now()
        _write_json(manifest_path, manifest)
        with FileLock(str(run_dir / SUMMARY_LOCK_FILE), timeout=60):  # shards finishing together: one at a time
            summary = summarize(run_dir, ids=all_ids)
            _write_json(run_dir / SUMMARY_FILE, summary.model_dump(mode="json"))
    return summary


def _grade_rows(pipe: Any, bench: Benchmark, items: Sequence[Item], runs: Sequence[Sequence[QueryResult]],
                roots: Sequence[str]) -> list[dict[str, Any]]:
    saved = [saved_usage(pipe.router, r) for r in runs]
    pools = [pool_texts(r[-1], roots) for r in runs]
    grades = bench.grader.grade_runs(items, runs, pools, router=pipe.router)
    return [make_row(it, r, g, sv) for it, r, g, sv in zip(items, runs, grades, saved, strict=True)]


async def _stream_items(pipe: Any, bench: Benchmark, items: Sequence[Item], roots: Sequence[str],
                        window: int | None, write: Callable[[list[dict[str, Any]]], None]) -> None:
    """The dataflow path: every question runs on its own through a shared executor (a
    conversation's next turn is submitted as soon as the previous one is answered, at the
    head of the line), and finished questions are graded and written while others run.
    Grading takes whatever has finished at once, so a judge sees batches too."""
    from archon.engine.dataflow import run_in_daemon_thread

    executor = pipe.executor(window=window)
    finished: list[tuple[Item, list[QueryResult]]] = []
    ready = asyncio.Event()

    async def one(item: Item) -> None:
        runs = [await executor.submit(item.query)]
        for turn in range(1, len(item.followups) + 1):
            if runs[-1].error is not None:
                break
            runs.append(await executor.submit(_followup_query(item, runs, turn), first=True))
        finished.append((item, runs))
        ready.set()

    async def grade() -> None:
        graded = 0
        while graded < len(items):
            await ready.wait()
            ready.clear()
            while finished:
                batch = finished[:]
                finished.clear()
                chunk, runs = [it for it, _ in batch], [r for _, r in batch]
                write(await run_in_daemon_thread(_grade_rows, pipe, bench, chunk, runs, roots))
                graded += len(batch)

    tasks = [asyncio.ensure_future(one(it)) for it in items]
    grader = asyncio.ensure_future(grade())
    try:
        await asyncio.gather(*tasks)
        await grader
    finally:
        for task in [*tasks, grader]:
            task.cancel()
        await asyncio.gather(*tasks, grader, return_exceptions=True)
        await executor.aclose()


# -- summaries ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """Shard ``k`` of ``n`` (1-based): the questions whose id hashes there. Hashing the id, not
    the position, keeps a question in its shard whatever else the selection holds."""

    k: int
    n: int

    def __post_init__(self) -> None:
        if not (self.n >= 1 and 1 <= self.k <= self.n):
            raise ConfigError(f"shard {self.k}/{self.n}: K must be between 1 and N", hint="e.g. --shard 2/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        k, sep, n = text.partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ConfigError(f"--shard {text!r}: write K/N, e.g. 1/4")
        return cls(int(k), int(n))

    def holds(self, item_id: str) -> bool:
        return zlib.crc32(item_id.encode()) % self.n == self.k - 1


@dataclass(frozen=True)
class RunFiles:
    """Which files of a run directory one writer owns: the whole run's, or one shard's."""

    run_dir: Path
    shard: Shard | None = None

    @classmethod
    def of(cls, run_dir: Path, shard: Shard | None) -> RunFiles:
        return cls(run_dir, shard)

    @property
    def _tag(self) -> str:
        return "" if self.shard is None else f".shard-{self.shard.k}-of-{self.shard.n}"

    @property
    def results(self) -> str:
        return RESULTS_FILE if self.shard is None else f"results{self._tag}.jsonl"

    @property
    def manifest(self) -> str:
        return RUN_FILE if self.shard is None else f"run{self._tag}.json"

    @property
    def lock(self) -> str:
        return f"{LOCK_FILE}{self._tag}"

    def check_layout(self) -> None:
        """One run directory is either unsharded or sharded N ways, never a mix."""
        d = self.run_dir
        whole = (d / RUN_FILE).is_file()
        shard_ns = {int(p.stem.rsplit("-of-", 1)[1]) for p in d.glob("run.shard-*-of-*.json")}
        if self.shard is None and shard_ns:
            raise ConfigError(f"{d} holds a run sharded {sorted(shard_ns)[0]} ways",
                              hint=f"rerun each shard with --shard K/{sorted(shard_ns)[0]}, or use another --out")
        if self.shard is not None and whole:
            raise ConfigError(f"{d} holds an unsharded run", hint="rerun it without --shard, or use another --out")
        if self.shard is not None and shard_ns - {self.shard.n}:
            raise ConfigError(f"{d} is sharded {sorted(shard_ns)[0]} ways, not {self.shard.n}",
                              hint=f"use --shard K/{sorted(shard_ns)[0]}")

    @staticmethod
    def manifests(run_dir: Path) -> list[Path]:
        whole = run_dir / RUN_FILE
        return [whole] if whole.is_file() else sorted(run_dir.glob("run.shard-*-of-*.json"))

    @staticmethod
    def result_files(run_dir: Path) -> list[Path]:
        return [p for p in [run_dir / RESULTS_FILE, *sorted(run_dir.glob("results.shard-*-of-*.jsonl"))]
                if p.is_file()]


def summarize(run_dir: str | Path, ids: Sequence[str] | None = None) -> EvalSummary:
    """Metrics of a run directory, from ``run.json`` and ``results.jsonl`` (no model calls)."""
    run_dir = Path(run_dir)
    manifests = RunFiles.manifests(run_dir)
    if not manifests:
        raise ConfigError(f"{run_dir} is not an evaluation run (no {RUN_FILE})",
                          hint="give directories written by `archon eval --out DIR`")
    manifest = read_json_file(manifests[0], what=manifests[0].name)
    sessions = [x for path in manifests for x in read_json_file(path, what=path.name).get("sessions", [])]
    rows_by_id: dict[str, dict[str, Any]] = {}
    for path in RunFiles.result_files(run_dir):
        for row in read_jsonl(path):
            if "id" in row:
                rows_by_id[str(row["id"])] = row
    if ids is not None:
        wanted = set(ids)
        rows_by_id = {k: v for k, v in rows_by_id.items() if k in wanted}
    rows = list(rows_by_id.values())
    n = len(rows)
    grader = manifest.get("grader", {})
    metric = grader.get("metric", "accuracy")
    s = EvalSummary(
        run_dir=str(run_dir), benchmark=manifest.get("benchmark", ""),
        benchmark_spec=manifest.get("benchmark_spec", {}),
        subset=manifest.get("subset", {}), grader=grader, metric=metric, n=n,
        n_total=int(manifest.get("subset", {}).get("n", n)), pipeline={**manifest.get("pipeline", {}),
                                                                     "config_hash": manifest.get("config_hash")},
        models=manifest.get("models", []), git_revision=manifest.get("git_revision"),
        archon_version=manifest.get("archon_version"), created_at=manifest.get("created_at", ""),
        updated_at=_now(), coverage_source=manifest.get("coverage_source", ""),
        wall_time_s=round(sum(float(x.get("wall_s", 0.0)) for x in sessions), 3),
    )
    s.complete = n >= s.n_total
    n_shards = int(manifest.get("subset", {}).get("shards") or 0)
    if n_shards:
        present = {int(m.name.split("-")[1]) for m in manifests}  # run.shard-K-of-N.json
        s.shards = {"n": n_shards, "started": sorted(present),
                    "missing": [k for k in range(1, n_shards + 1) if k not in present]}
    s.errors = sum(1 for r in rows if r.get("error"))
    scores = [float(r["score"]) for r in rows if r.get("score") is not None]
    s.graded = len(scores)
    if metric == "judge_score":
        if scores:
            s.accuracy, s.ci_low, s.ci_high = mean_interval(scores)
        s.ci_method = "normal"
    elif n:
        s.correct = sum(scores)
        s.accuracy = s.correct / n
        s.ci_low, s.ci_high = wilson_interval(s.correct, n)
        s.ci_method = "wilson"
    cov = [bool(r["coverage"]) for r in rows if r.get("coverage") is not None]
    if cov:
        s.coverage = sum(cov) / len(cov)
        s.coverage_ci_low, s.coverage_ci_high = wilson_interval(sum(cov), len(cov))
    pak: dict[str, list[float]] = {}
    for r in rows:
        for k, v in (r.get("pass_at_k") or {}).items():
            pak.setdefault(k, []).append(float(v))
    if pak:
        s.pass_at_k = {k: sum(v) / len(v) for k, v in sorted(pak.items(), key=lambda kv: int(kv[0]))}
    spent = _sum_usage([{k: float(r.get("usage", {}).get(k, 0)) for k in USAGE_KEYS} for r in rows])
    saved = _sum_usage([{k: float(r.get("cache_saved", {}).get(k, 0)) for k in USAGE_KEYS} for r in rows])
    totals = {k: spent.get(k, 0.0) + (saved.get(k, 0.0) if k not in ("latency_s", "cache_hits") else 0.0)
              for k in USAGE_KEYS}
    s.totals, s.spent, s.cache_saved = totals, spent, saved
    if n:
        s.tokens_per_query = totals.get("total_tokens", 0) / n
        s.prompt_tokens_per_query = totals.get("prompt_tokens", 0) / n
        s.cached_prompt_tokens_per_query = totals.get("cached_prompt_tokens", 0) / n
        s.completion_tokens_per_query = totals.get("completion_tokens", 0) / n
        s.calls_per_query = totals.get("calls", 0) / n
        s.flops_per_query = totals.get("flops", 0) / n
        s.latency_per_query_s = sum(float(r.get("latency_s", 0.0)) for r in rows) / n
    s.cache_hits = int(spent.get("cache_hits", 0))
    gu = [r["grader_usage"] for r in rows if r.get("grader_usage")]
    if gu:
        s.grader_usage = _sum_usage(gu)
    return s


def load_summary(run_dir: str | Path) -> EvalSummary:
    """``summary.json`` if present and current, else recomputed from the run's files."""
    run_dir = Path(run_dir)
    path = run_dir / SUMMARY_FILE
    newest = max((f.stat().st_mtime for f in RunFiles.result_files(run_dir)), default=0.0)
    if path.is_file() and path.stat().st_mtime >= newest:
        data = read_json_file(path, what=SUMMARY_FILE)
        data["run_dir"] = str(run_dir)
        return EvalSummary.model_validate(data)
    return summarize(run_dir)
