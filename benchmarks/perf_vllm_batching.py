"""vLLM: what batching and automatic prefix caching buy (the reasons archon sends whole levels).

Part 1, batching: 16 prompts x n=4 sent as one ``generate`` call vs one request at a
time (same seeds, so the same samples): completion tokens per second, and the ratio.
Part 2, prefix caching: a ~2,000-token shared prefix with 8 different suffixes, one
request at a time, with the prefix cache reset before every request ("off") vs kept
("on"); ``max_tokens=1`` so what is timed is prefill. Also all 8 in one call after a
reset. Reports the prefill time ratio and the prefix-cache hit rate.

One engine serves both parts (``reset_prefix_cache()`` stands in for a second engine
without caching: same weights, same threads, no second minute-long start).

    python -m archon.benchmarks.perf_vllm_batching [--model-dir DIR] [--max-tokens 32]

Writes benchmarks/results/vllm_batching.{json,md} and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

from archon.backends.registry import EMBEDDED_PARAMETERS, ModelSpec
from archon.backends.types import GenerationRequest, GenerationResult
from archon.backends.vllm_offline import VLLMBackend, _on_cpu

RESULTS = Path(__file__).parent / "results"
MODEL = "gemma-vllm"
TOPICS = ["a lighthouse", "a lost key", "the moon", "a red fox", "an old map", "a storm", "a robot", "a garden",
          "a train", "a violin", "a desert", "a snowman", "a pirate", "a library", "a volcano", "a cat"]


def _tokens(results: list[GenerationResult]) -> int:
    return sum(r.usage.completion_tokens for r in results)


def batching(backend: VLLMBackend, max_tokens: int, n: int) -> dict:
    reqs = [GenerationRequest(model=MODEL, prompt=f"A short story about {t}.\n\nOnce upon a time,", n=n,
                              temperature=1.0, max_tokens=max_tokens, seed=i) for i, t in enumerate(TOPICS)]
    backend.reset_prefix_cache()
    start = time.perf_counter()
    batched = backend.generate(reqs)
    batched_s = time.perf_counter() - start

    backend.reset_prefix_cache()
    start = time.perf_counter()
    serial = [backend.generate([r])[0] for r in reqs]
    serial_s = time.perf_counter() - start

    batched_tps = _tokens(batched) / batched_s
    serial_tps = _tokens(serial) / serial_s
    return {
        "prompts": len(reqs), "n": n, "max_tokens": max_tokens,
        "batched": {"engine_calls": 1, "wall_s": round(batched_s, 2), "completion_tokens": _tokens(batched),
                    "tokens_per_s": round(batched_tps, 1)},
        "one_at_a_time": {"engine_calls": len(reqs), "wall_s": round(serial_s, 2),
                          "completion_tokens": _tokens(serial), "tokens_per_s": round(serial_tps, 1)},
        "throughput_ratio": round(batched_tps / serial_tps, 2),
        "same_samples": [r.texts for r in batched] == [r.texts for r in serial],
    }


def _shared_prefix(backend: VLLMBackend, target: int) -> str:
    lines, i = [], 0
    while True:
        lines.append(f"Record {i}: the warehouse in district {i % 17} shipped {i * 37 % 1000} crates of item "
                     f"{i * 11 % 97} on day {i % 28 + 1}.\n")
        i += 1
        if i % 10 == 0 and len(backend.prompt_ids(GenerationRequest(model=MODEL, prompt="".join(lines)))) >= target:
            return "".join(lines)


def prefix_caching(backend: VLLMBackend, prefix_tokens: int, suffixes: int) -> dict:
    prefix = _shared_prefix(backend, prefix_tokens)
    reqs = [GenerationRequest(model=MODEL, prompt=prefix + f"Question {k}: how many crates did district {k} ship?",
                              temperature=0.0, max_tokens=1) for k in range(suffixes)]

    def run(reset_each: bool) -> dict:
        backend.reset_prefix_cache()
        per_request, results = [], []
        for r in reqs:
            if reset_each:
                backend.reset_prefix_cache()
            start = time.perf_counter()
            results.append(backend.generate([r])[0])
            per_request.append(time.perf_counter() - start)
        prompt = sum(r.usage.prompt_tokens for r in results)
        cached = sum(r.usage.cached_prompt_tokens for r in results)
        return {"prefill_s": round(sum(per_request), 2), "per_request_s": [round(x, 2) for x in per_request],
                "prompt_tokens": prompt, "cached_tokens": cached, "hit_rate": round(cached / prompt, 3)}

    off = run(reset_each=True)
    before = backend.prefix_cache_stats()
    on = run(reset_each=False)
    after = backend.prefix_cache_stats()
    if after["source"] == "vllm":
        queries = int(after["queries"]) - int(before["queries"])
        hits = int(after["hits"]) - int(before["hits"])
        on["vllm_counter_hit_rate"] = round(hits / queries, 3) if queries else 0.0

    backend.reset_prefix_cache()
    start = time.perf_counter()
    batch = backend.generate(reqs)
    batch_s = time.perf_counter() - start
    prompt = sum(r.usage.prompt_tokens for r in batch)
    cached = sum(r.usage.cached_prompt_tokens for r in batch)
    return {
        "prefix_tokens": len(backend.prompt_ids(GenerationRequest(model=MODEL, prompt=prefix))),
        "suffixes": suffixes,
        "cache_off": off,
        "cache_on": on,
        "cache_on_one_batch": {"prefill_s": round(batch_s, 2), "prompt_tokens": prompt, "cached_tokens": cached,
                               "hit_rate": round(cached / prompt, 3)},
        "prefill_ratio_off_over_on": round(off["prefill_s"] / on["prefill_s"], 2),
        "prefill_ratio_off_over_on_batch": round(off["prefill_s"] / batch_s, 2),
    }


def markdown(report: dict) -> str:
    b, p, env = report["batching"], report["prefix_caching"], report["environment"]
    return "\n".join([
        "# vLLM: batching and prefix caching",
        "",
        f"`python -m archon.benchmarks.perf_vllm_batching` on {env['device']} ({env['cpus']} cores, "
        f"load average {env['load_average_at_start']} at start), vLLM {env['vllm']}, dtype {env['dtype']}, "
        f"model {env['model']}. Engine start: {env['engine_start_s']} s.",
        "",
        f"## Batching: {b['prompts']} prompts x n={b['n']}, max_tokens {b['max_tokens']}",
        "",
        "| mode | engine calls | wall s | completion tokens | tokens/s |",
        "|---|---|---|---|---|",
        f"| one batch | 1 | {b['batched']['wall_s']} | {b['batched']['completion_tokens']} | "
        f"{b['batched']['tokens_per_s']} |",
        f"| one request at a time | {b['one_at_a_time']['engine_calls']} | {b['one_at_a_time']['wall_s']} | "
        f"{b['one_at_a_time']['completion_tokens']} | {b['one_at_a_time']['tokens_per_s']} |",
        "",
        f"Throughput ratio (batch / one at a time): **{b['throughput_ratio']}x**. "
        f"Same seeds in both modes; identical samples: {b['same_samples']}.",
        "",
        f"## Prefix caching: {p['prefix_tokens']}-token shared prefix, {p['suffixes']} suffixes, max_tokens 1",
        "",
        "| mode | prefill s (sum) | prompt tokens | cached tokens | hit rate |",
        "|---|---|---|---|---|",
        f"| cache off (reset before each request) | {p['cache_off']['prefill_s']} | "
        f"{p['cache_off']['prompt_tokens']} | {p['cache_off']['cached_tokens']} | {p['cache_off']['hit_rate']} |",
        f"| cache on, one request at a time | {p['cache_on']['prefill_s']} | {p['cache_on']['prompt_tokens']} | "
        f"{p['cache_on']['cached_tokens']} | {p['cache_on']['hit_rate']} |",
        f"| cache on, all in one call | {p['cache_on_one_batch']['prefill_s']} | "
        f"{p['cache_on_one_batch']['prompt_tokens']} | {p['cache_on_one_batch']['cached_tokens']} | "
        f"{p['cache_on_one_batch']['hit_rate']} |",
        "",
        f"Prefill time ratio off/on: **{p['prefill_ratio_off_over_on']}x** one at a time, "
        f"**{p['prefill_ratio_off_over_on_batch']}x** against one call. "
        f"vLLM's own counters over the cache-on run: hit rate {p['cache_on'].get('vllm_counter_hit_rate', 'n/a')}.",
        "",
        "Per-request prefill s, off: " + ", ".join(map(str, p["cache_off"]["per_request_s"]))
        + "; on: " + ", ".join(map(str, p["cache_on"]["per_request_s"])) + ".",
        "",
        "Timings come from a shared 2-core machine (see the load average); ratios are the figures to read.",
        "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="HF folder (default: the embedded model, converted once)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--prefix-tokens", type=int, default=2000)
    parser.add_argument("--suffixes", type=int, default=8)
    args = parser.parse_args()

    if args.model_dir is None:
        from archon.backends.convert import ensure_embedded_hf

        args.model_dir = str(ensure_embedded_hf())
    spec = ModelSpec(backend="vllm", path=args.model_dir, parameters=EMBEDDED_PARAMETERS, max_model_len=4096)
    backend = VLLMBackend(MODEL, spec)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    backend.llm  # noqa: B018 - start the engine outside the timings
    engine_start = time.perf_counter() - start
    backend.generate([GenerationRequest(model=MODEL, prompt="Warm up:", max_tokens=4)])
    try:
        import vllm

        report = {
            "environment": {
                "device": "CPU" if _on_cpu() else "GPU",
                "cpus": os.cpu_count(), "machine": platform.machine(), "load_average_at_start": round(load, 2),
                "vllm": vllm.__version__, "dtype": backend.engine_kwargs()["dtype"], "model": args.model_dir,
                "engine_start_s": round(engine_start, 1),
            },
            "batching": batching(backend, args.max_tokens, args.n),
            "prefix_caching": prefix_caching(backend, args.prefix_tokens, args.suffixes),
        }
    finally:
        backend.close()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "vllm_batching.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (RESULTS / "vllm_batching.md").write_text(text)
    print(json.dumps(report, indent=2))
    print(text)


if __name__ == "__main__":
    main()
