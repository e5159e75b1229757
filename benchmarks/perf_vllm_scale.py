"""vLLM at a realistic batch: 16 GSM8K questions x n=8, three ways, side by side in one run.

1. archon, ``backend: vllm`` in process: a ``generate`` node with ``samples: 8`` on all
   questions, one ``llm.generate`` call (128 seeded samples).
2. archon, ``backend: openai`` against vLLM's OpenAI server on 127.0.0.1 (started here with
   the flags archon's README recommends: ``--enable-prompt-tokens-details``, and on CPU
   ``--no-enable-chunked-prefill``), same pipeline; the server kind is probed, so archon
   sends one seeded ``n=1`` request per sample, all in flight at once.
3. a plain ``openai`` client against the same server: one request per question with
   ``n=8``, all concurrent (what a hand-written script does).

Same questions, same seeds (sample ``i`` is seeded ``seed + i`` everywhere: vLLM seeds child
``i`` of an ``n`` request with ``seed + i``), so the samples should be identical. Reported
per arm: wall time, generated tokens, the server's prefix-cache hit rate from its own
counters (``/metrics`` or ``LLM.get_metrics()``) read before and after, and for archon its
reported cached prompt tokens against those counters. The server's prefix cache is reset
between arms 2 and 3 (``VLLM_SERVER_DEV_MODE=1`` exposes ``POST /reset_prefix_cache``) so
neither inherits the other's cache.

    python -m archon.benchmarks.perf_vllm_scale [--questions 16] [--n 8] [--max-tokens 128]
        [--model PATH_OR_HUB_ID] [--out benchmarks/results]

Default model: the embedded Gemma 3 270M, converted for vLLM once. Writes
``vllm_scale.json`` and ``vllm_scale.md`` to ``--out``; exits non-zero if a check fails
(samples differ between the archon arms, or archon's cached tokens are more than 5% off
the server's counters).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from archon.backends.registry import EMBEDDED_PARAMETERS, ModelSpec
from archon.backends.server_metrics import read_counters
from archon.benchmarks.vllm_server import VLLMServer, server_args
from archon.pipeline import Pipeline
from archon.techniques import Generate
from archon.techniques.base import Defaults

RESULTS = Path(__file__).parent / "results"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
NAME = "bench-model"
TOLERANCE = 0.05


def load_questions(path: Path, k: int, shots: int = 0) -> list[str]:
    """The first ``k`` questions; with ``shots``, each after the same worked examples from the
    train split (a shared prefix: what makes prefix-cache hits, hence the 5% check, non-trivial;
    prefix caching works on full KV blocks, and a bare question is shorter than one)."""
    if not path.is_file():
        sys.exit(f"GSM8K questions not found at {path}; pass --data PATH (a JSONL with `question`)")
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines()[:k]]
    if not shots:
        return questions
    train = path.with_name("train.jsonl")
    if not train.is_file():
        sys.exit(f"--shots needs {train}")
    examples = [json.loads(line) for line in train.read_text().splitlines()[:shots]]
    header = "".join(f"Question: {e['question']}\nAnswer: {e['answer']}\n\n" for e in examples)
    return [f"{header}Question: {q}\nAnswer:" for q in questions]


def _pipeline(spec: ModelSpec, args: argparse.Namespace) -> Pipeline:
    defaults = Defaults(model=NAME, temperature=args.temperature, max_tokens=args.max_tokens, seed=args.seed)
    return Pipeline({"sample": Generate(samples=args.n)}, models={NAME: spec}, defaults=defaults, cache=False)


def run_archon(pipe: Pipeline, questions: list[str]) -> dict[str, Any]:
    start = time.perf_counter()
    results = pipe.run_batch(questions)
    wall = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"pipeline errors: {errors[:3]}")
    usage = {k: sum(int(r.usage.get(k, 0)) for r in results)
             for k in ("prompt_tokens", "cached_prompt_tokens", "cache_unknown_prompt_tokens", "completion_tokens",
                       "calls")}
    return {"wall_s": round(wall, 2), "generated_tokens": usage["completion_tokens"], "archon_usage": usage,
            "backend_requests": len(pipe.router.calls), "texts": [[c.text for c in r.candidates] for r in results]}


async def _plain(base_url: str, questions: list[str], args: argparse.Namespace) -> list[Any]:
    from openai import AsyncOpenAI

    async with AsyncOpenAI(base_url=base_url, api_key="EMPTY", max_retries=0, timeout=7200) as client:
        return list(await asyncio.gather(*[
            client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": q}], n=args.n,
                                           temperature=args.temperature, top_p=1.0, max_tokens=args.max_tokens,
                                           seed=args.seed)
            for q in questions]))


def run_plain(base_url: str, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    responses = asyncio.run(_plain(base_url, questions, args))
    wall = time.perf_counter() - start
    # stripped, as archon's candidates are, so the comparison is of samples, not whitespace
    texts = [[(c.message.content or "").strip() for c in sorted(r.choices, key=lambda c: c.index)]
             for r in responses]
    details = [getattr(r.usage, "prompt_tokens_details", None) for r in responses]
    return {"wall_s": round(wall, 2), "generated_tokens": sum(r.usage.completion_tokens for r in responses),
            "client_usage": {"prompt_tokens": sum(r.usage.prompt_tokens for r in responses),
                             "cached_prompt_tokens": sum((d.cached_tokens or 0) if d else 0 for d in details)},
            "backend_requests": len(responses), "texts": texts}


def _delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float]:
    if not before or not after:
        return {}
    return {k: after[k] - before.get(k, 0.0) for k in after}


def _hit_rate(delta: dict[str, float]) -> float | None:
    q = delta.get("prefix_cache_queries")
    return round(delta.get("prefix_cache_hits", 0.0) / q, 4) if q else None


def _engine_counters(pipe: Pipeline) -> dict[str, float] | None:
    stats = pipe.router.backend(NAME).prefix_cache_stats()  # type: ignore[attr-defined]
    if stats.get("source") != "vllm":
        return None
    return {"prefix_cache_queries": float(stats["queries"]), "prefix_cache_hits": float(stats["hits"])}


def _agreement(archon_usage: dict[str, int], delta: dict[str, float]) -> dict[str, Any]:
    """archon's prompt and cached tokens against the engine's counters (relative error)."""
    hits, queries = delta.get("prefix_cache_hits"), delta.get("prefix_cache_queries")
    if hits is None or queries is None:
        return {"checked": False}
    cached, prompt = archon_usage["cached_prompt_tokens"], archon_usage["prompt_tokens"]
    err = abs(cached - hits) / hits if hits else float(cached != 0)
    return {"checked": True, "archon_cached": cached, "server_hits": int(hits), "archon_prompt": prompt,
            "server_queries": int(queries), "cached_rel_error": round(err, 4), "within_5pct": err <= TOLERANCE}


def _warm(pipe: Pipeline) -> None:
    """Start the engine (or open the connection) outside the timings."""
    from archon.backends.types import GenerationRequest

    pipe.router.backend(NAME).generate([GenerationRequest(model=NAME, prompt="Warm up:", max_tokens=2)])


def _reset_server_cache(base_url: str) -> bool:
    root = base_url.removesuffix("/v1")
    try:
        req = urllib.request.Request(f"{root}/reset_prefix_cache", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status == 200
    except OSError:
        return False


def _same(a: list[list[str]], b: list[list[str]]) -> dict[str, Any]:
    pairs = [(x, y) for qa, qb in zip(a, b, strict=True) for x, y in zip(qa, qb, strict=True)]
    same = sum(x == y for x, y in pairs)
    return {"identical_samples": same, "samples": len(pairs), "all_identical": same == len(pairs)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="HF folder or hub id (default: the embedded model, converted once)")
    parser.add_argument("--parameters", type=float, default=None, help="parameter count for FLOPs")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--shots", type=int, default=4, help="worked train examples before each question")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--tag", default="", help="suffix for the result files (e.g. gpu)")
    args = parser.parse_args()

    model = args.model
    parameters = args.parameters
    if model is None:
        from archon.backends.convert import ensure_embedded_hf

        model = str(ensure_embedded_hf())
        parameters = parameters or EMBEDDED_PARAMETERS
    questions = load_questions(args.data, args.questions, args.shots)
    load = os.getloadavg()[0]
    report: dict[str, Any] = {"setup": {"questions": len(questions), "shots": args.shots, "n": args.n,
                                        "max_tokens": args.max_tokens,
                                        "temperature": args.temperature, "seed": args.seed, "model": model,
                                        "load_average_at_start": round(load, 2), "cpus": os.cpu_count(),
                                        "machine": platform.machine()}}

    # 1. in process
    spec = ModelSpec(backend="vllm", path=model, parameters=parameters, max_model_len=args.max_model_len)
    pipe = _pipeline(spec, args)
    try:
        start = time.perf_counter()
        _warm(pipe)
        engine_start = time.perf_counter() - start
        backend = pipe.router.backend(NAME)
        engine_kwargs = backend.describe()["engine_kwargs"]  # type: ignore[attr-defined]
        from vllm import __version__ as vllm_version

        from archon.backends.vllm_offline import _on_cpu

        cpu = _on_cpu()
        report["setup"].update(device="CPU" if cpu else "GPU", vllm=vllm_version, dtype=engine_kwargs.get("dtype"),
                               engine_kwargs=engine_kwargs)
        before = _engine_counters(pipe)
        inproc = run_archon(pipe, questions)
        delta = _delta(before, _engine_counters(pipe))
        inproc.update(engine_start_s=round(engine_start, 1), prefix_cache_hit_rate=_hit_rate(delta),
                      counters=delta, agreement=_agreement(inproc["archon_usage"], delta))
    finally:
        pipe.close()  # frees the engine before the server starts: one engine at a time

    # 2 and 3: one vLLM OpenAI server
    flags = server_args(max_model_len=args.max_model_len, cpu=cpu, dtype=engine_kwargs.get("dtype"))
    env = {"VLLM_SERVER_DEV_MODE": "1"}
    if cpu:
        flags += ["--max-num-seqs", "256"]  # vllm.LLM's CPU default (the server's is 128)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # the in-process engine's 2 GiB
    with VLLMServer(model, NAME, args=flags, env=env) as server:
        report["setup"].update(server_flags=flags, server_start_s=round(server.ready_s or 0.0, 1))
        http_spec = ModelSpec(backend="openai", base_url=server.base_url, parameters=parameters, timeout_s=7200)
        pipe = _pipeline(http_spec, args)
        try:
            _warm(pipe)
            _reset_server_cache(server.base_url)
            before = read_counters(server.base_url, NAME)
            via_server = run_archon(pipe, questions)
            delta = _delta(before, read_counters(server.base_url, NAME))
            described = pipe.router.backend(NAME).describe()  # type: ignore[attr-defined]
            via_server.update(server_kind=described["server_kind"], max_concurrency=described["max_concurrency"],
                              prefix_cache_hit_rate=_hit_rate(delta), counters=delta,
                              agreement=_agreement(via_server["archon_usage"], delta))
        finally:
            pipe.close()
        reset = _reset_server_cache(server.base_url)
        before = read_counters(server.base_url, NAME)
        plain = run_plain(server.base_url, questions, args)
        delta = _delta(before, read_counters(server.base_url, NAME))
        plain.update(prefix_cache_hit_rate=_hit_rate(delta), counters=delta, cache_reset_before=reset)

    report["arms"] = {"archon_in_process": inproc, "archon_via_server": via_server, "plain_client": plain}
    report["same_samples"] = {
        "in_process_vs_server_archon": _same(inproc["texts"], via_server["texts"]),
        "server_archon_vs_plain_client": _same(via_server["texts"], plain["texts"]),
    }
    report["checks"] = {
        "server_archon_cached_within_5pct": via_server["agreement"].get("within_5pct"),
        "in_process_cached_within_5pct": inproc["agreement"].get("within_5pct"),
        "same_generated_tokens_server_arms": via_server["generated_tokens"] == plain["generated_tokens"],
    }
    for arm in report["arms"].values():
        arm["texts"] = [t[:2] for t in arm["texts"][:2]]  # a sample of the texts, not all of them
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "vllm_scale" + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    ok = bool(report["checks"]["server_archon_cached_within_5pct"]) and report["checks"][
        "same_generated_tokens_server_arms"]
    return 0 if ok else 1


def markdown(r: dict[str, Any]) -> str:
    s = r["setup"]
    rows = []
    labels = {"archon_in_process": "archon, `backend: vllm` in process",
              "archon_via_server": "archon, `backend: openai` → vLLM server",
              "plain_client": "plain openai client, n per request, all concurrent"}
    for key, arm in r["arms"].items():
        reported = arm.get("archon_usage", arm.get("client_usage", {}))
        agreement = arm.get("agreement", {})
        vs = "—"
        if agreement.get("checked"):
            vs = (f"{agreement['archon_cached']:,} vs {agreement['server_hits']:,} "
                  f"({100 * agreement['cached_rel_error']:.1f}%)")
        rate = arm.get("prefix_cache_hit_rate")
        rows.append(f"| {labels[key]} | {arm['wall_s']} | {arm['generated_tokens']:,} | {arm['backend_requests']} | "
                    f"{'—' if rate is None else f'{100 * rate:.1f}%'} | {reported.get('cached_prompt_tokens', 0):,} | "
                    f"{vs} |")
    same = r["same_samples"]
    return "\n".join([
        f"# vLLM at a realistic batch: {s['questions']} GSM8K questions ({s.get('shots', 0)}-shot) × n={s['n']}, "
        f"max_tokens {s['max_tokens']}",
        "",
        f"{s.get('device')} · vLLM {s.get('vllm')} · dtype {s.get('dtype')} · {s['cpus']} CPUs · "
        f"load average at start {s['load_average_at_start']} · model `{s['model']}` · engine start "
        f"{r['arms']['archon_in_process'].get('engine_start_s')} s, server start {s.get('server_start_s')} s.",
        "",
        "| arm | wall s | generated tokens | backend requests | prefix-cache hit rate (engine counters) | "
        "cached prompt tokens reported to the client | archon cached vs engine hits |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        f"Identical samples: in process vs archon via server "
        f"{same['in_process_vs_server_archon']['identical_samples']}/{same['in_process_vs_server_archon']['samples']}; "
        f"archon via server vs plain client {same['server_archon_vs_plain_client']['identical_samples']}/"
        f"{same['server_archon_vs_plain_client']['samples']}.",
        f"Checks: {json.dumps(r['checks'])}.",
        "",
        "Server flags: `" + " ".join(s.get("server_flags", [])) + "`. The server's prefix cache is reset "
        "before each server arm. Timings come from a shared machine; read the ratios.",
        "",
    ])


if __name__ == "__main__":
    raise SystemExit(main())
