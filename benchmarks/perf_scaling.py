"""Accuracy against compute for repeated sampling on the synthetic ``arith`` set (embedded model).

For each difficulty, every question gets one greedy answer and ``--samples`` (64) samples at
``--temperature``, in one batched router call per kind (the call cache makes reruns free).
Smaller k are read off the same samples, so the curve costs one run:

* ``majority@k``: the 64 samples are cut into 64/k disjoint groups of k; each group votes
  with archon's own ``vote`` (``tally``, answers keyed as the ``generate`` node keys them) and
  the winner is graded; the mean over groups and questions is reported;
* ``coverage@k`` (oracle: any of k samples correct): the unbiased estimator
  ``1 - C(n-c, k) / C(n, k)`` with n = 64 and c correct samples, averaged over questions;
* compute per query at k: the prompt once (a prefix-caching engine evaluates it once) plus
  k times the mean completion tokens; FLOPs = 2 x parameters x those tokens.

The prompts are ``arith``'s few-shot completion prompts sent as raw text (stop at the
newline), which is what a ``generate`` node with ``samples: k`` followed by ``vote`` sends
for completion-format queries.

    python -m archon.benchmarks.perf_scaling [--questions 30] [--samples 64] [--max-tokens 4] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

from archon.backends.registry import EMBEDDED_PARAMETERS, ModelRegistry, embedded_spec
from archon.backends.types import GenerationRequest
from archon.benchmarks.graders import ArithGrader
from archon.benchmarks.registry import get_benchmark
from archon.data import Candidate
from archon.pipeline import make_router
from archon.techniques.vote import tally
from archon.verifiers.answers import extract_final_answer
from archon.verifiers.sandbox import pass_at_k

RESULTS = Path(__file__).resolve().parent / "results"
LEVELS = {"one-digit (1-9)": "digits=1", "two-digit (10-49)": "min=10&max=49"}


def _candidates(texts: list[str]) -> list[Candidate]:
    return [Candidate(text=t.strip(), answer=extract_final_answer(t)) for t in texts]


def curve(items: list[Any], greedy: list[str], samples: list[list[str]], ks: list[int],
          prompt_tokens: float, completion_per_sample: float) -> dict[str, Any]:
    grader = ArithGrader()
    n = len(samples[0])
    correct = [[grader.grade_text(it, t).correct for t in s] for it, s in zip(items, samples, strict=True)]
    rows = []
    for k in ks:
        votes = []
        for it, texts in zip(items, samples, strict=True):
            groups = [texts[g * k:(g + 1) * k] for g in range(n // k)]
            wins = [grader.grade_text(it, tally(_candidates(grp))[0].text).correct for grp in groups]
            votes.append(sum(wins) / len(wins))
        coverage = [pass_at_k(n, sum(c), k) for c in correct]
        tokens = prompt_tokens + k * completion_per_sample
        rows.append({"k": k, "majority": sum(votes) / len(votes), "coverage": sum(coverage) / len(coverage),
                     "tokens_per_query": tokens, "flops_per_query": 2.0 * EMBEDDED_PARAMETERS * tokens})
    greedy_acc = sum(grader.grade_text(it, t).correct for it, t in zip(items, greedy, strict=True)) / len(items)
    return {"greedy": greedy_acc, "greedy_tokens_per_query": prompt_tokens + completion_per_sample,
            "per_sample_accuracy": sum(map(sum, correct)) / (len(items) * n), "rows": rows}


def run(questions: int, samples: int, max_tokens: int, temperature: float, cache: bool | str,
        threads: int | None = None) -> dict[str, Any]:
    ks = [k for k in (1, 2, 4, 8, 16, 32, 64, 128, 256) if k <= samples]
    registry = ModelRegistry({"embedded": embedded_spec().model_copy(update={"n_threads": threads})}
                             if threads else None)
    router = make_router(registry, cache=cache)
    out: dict[str, Any] = {"settings": {"questions": questions, "samples": samples, "max_tokens": max_tokens,
                                        "temperature": temperature, "threads": threads,
                                        "model": "embedded (Gemma 3 270M base, Q4_K_M)",
                                        "machine": f"{platform.machine()}, {platform.system()}"}, "levels": {}}
    try:
        for label, params in LEVELS.items():
            spec = f"arith?n={questions}&seed=0&{params}"
            items = get_benchmark(spec).load()
            base = dict(model="embedded", max_tokens=max_tokens, stop=("\n",), seed=0)
            started = time.perf_counter()
            greedy_res = router.generate([GenerationRequest(prompt=it.query.prompt, temperature=0.0, n=1, **base)
                                          for it in items])
            sample_res = router.generate([GenerationRequest(prompt=it.query.prompt, temperature=temperature,
                                                            n=samples, **base) for it in items])
            wall = time.perf_counter() - started
            texts = [[s.text for s in r.samples] for r in sample_res]
            completion = sum(r.usage.completion_tokens for r in sample_res) / (len(items) * samples)
            prompt = sum(r.usage.prompt_tokens for r in greedy_res) / len(items)
            result = curve(items, [r.samples[0].text for r in greedy_res], texts, ks, prompt, completion)
            result.update({"benchmark": get_benchmark(spec).label, "wall_s": round(wall, 1),
                           "cache_hits": sum(r.usage.cache_hits for r in greedy_res + sample_res),
                           "completion_tokens_per_sample": completion, "prompt_tokens": prompt})
            out["levels"][label] = result
            print(f"{label}: greedy {result['greedy']:.3f}, " + ", ".join(
                f"k={r['k']} maj {r['majority']:.3f} cov {r['coverage']:.3f}" for r in result["rows"]) +
                f" ({wall:.0f}s)", flush=True)
    finally:
        router.close()
    return out


def markdown(data: dict[str, Any]) -> str:
    st = data["settings"]
    lines = [f"# Repeated sampling on `arith`: accuracy vs compute ({st['model']})", "",
             f"{st['questions']} questions per difficulty, {st['samples']} samples each at temperature "
             f"{st['temperature']}, max_tokens {st['max_tokens']}, stop at newline; smaller k subsample the same "
             "samples (majority: disjoint groups of k; coverage: unbiased any-of-k estimator). Tokens per query "
             "count the prompt once (prefix cache) plus k completions.", ""]
    for label, lv in data["levels"].items():
        lines += [f"## {label}: `{lv['benchmark']}`", "",
                  f"Greedy (temperature 0): **{100 * lv['greedy']:.1f}%** at {lv['greedy_tokens_per_query']:.1f} "
                  f"tokens/query; a single sample at temperature {st['temperature']}: "
                  f"{100 * lv['per_sample_accuracy']:.1f}%. Sampling wall time {lv['wall_s']} s "
                  f"({lv['cache_hits']} samples from the call cache).", "",
                  "| k | majority vote | coverage (any correct) | tokens/query | FLOPs/query |",
                  "|---:|---:|---:|---:|---:|"]
        for r in lv["rows"]:
            lines.append(f"| {r['k']} | {100 * r['majority']:.1f}% | {100 * r['coverage']:.1f}% | "
                         f"{r['tokens_per_query']:.1f} | {r['flops_per_query']:.3g} |")
        lines.append("")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.8))
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for color, (label, lv) in zip(colors, data["levels"].items(), strict=False):
        xs = [r["tokens_per_query"] for r in lv["rows"]]
        ax.plot(xs, [100 * r["coverage"] for r in lv["rows"]], "o-", color=color, label=f"{label}: coverage@k")
        ax.plot(xs, [100 * r["majority"] for r in lv["rows"]], "s--", color=color, label=f"{label}: majority@k")
        ax.axhline(100 * lv["greedy"], color=color, linestyle=":", linewidth=1, label=f"{label}: greedy")
        for r in lv["rows"]:
            ax.annotate(f"k={r['k']}", (r["tokens_per_query"], 100 * r["coverage"]), textcoords="offset points",
                        xytext=(0, 6), fontsize=7, ha="center")
    ax.set_xscale("log")
    ax.set_xlabel("tokens per query (prompt once + k completions)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Repeated sampling on arith, embedded Gemma 3 270M", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=30)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=None,
                    help="llama.cpp threads (default: all cores; 1 is much faster on a busy machine)")
    ap.add_argument("--no-cache", action="store_true", help="do not use the call cache")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    data = run(args.questions, args.samples, args.max_tokens, args.temperature, cache=not args.no_cache,
               threads=args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "scaling.md").write_text(markdown(data) + "\n")
    try:
        plot(data, args.out / "scaling.png")
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'archon[plot]')")
    print(f"wrote {args.out}/scaling.{{json,md,png}}")


if __name__ == "__main__":
    main()
