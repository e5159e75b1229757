"""Step-level search methods side by side on ``arith`` (embedded model, one step reward for all).

Questions: ``arith`` sums of three one-digit numbers (``operands=3``). Every method builds
solutions step by step with the same prompt (``benchmarks/prompts/arith_steps.j2``: three worked
examples, one addition per line, then ``Answer: x``), the same step (a line: ``delimiter "\\n"``),
the same caps (``--steps`` steps of ``--step-tokens`` tokens) and N = ``--n`` traces per query,
so the generated-token budget per query is the same (measured and reported):

* best-of-N: N independent traces (``particle_steering`` with ``method: fk``, ``resample:
  never``, ``potential: rt``), the one with the best reward;
* majority vote over the same N traces;
* beam search (search-and-learn): keep N/2, expand 2;
* DVTS: N/2 subtrees × expand 2, all N completions, weighted vote by reward (search-and-learn's
  weighted best-of-N);
* particle filtering (``method: pf``, Puri et al.): N particles, the best-weighted particle.

The step reward is the same zero-call checker for every method (``ArithStepScorer``): a
calculator standing in for a process reward model. It reads only the partial solution: a last
line ``a+b=c`` (any number of terms, ``+ - *``) scores 0.9 when it is right, 0.1 when wrong;
``Answer: x`` scores 0.9 when ``x`` is the previous line's result, 0.1 otherwise; anything else
0.5. So a trace may add all three numbers in one line and finish a step early. Rewards aggregate by
``min`` (one wrong step spoils the trace). Gold answers reach the grader only.

Reported: accuracy with a 95% Wilson interval, mean generated tokens per query, wall time, and
for particle filtering the share of final answers whose particle finished before the last step.

    python -m archon.benchmarks.perf_step_methods [--questions 20] [--n 4] [--steps 4] [--step-tokens 8]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path
from typing import Any

from archon.backends.registry import ModelRegistry
from archon.backends.types import GenerationRequest
from archon.benchmarks.datasets import ArithSpec, arith_problems
from archon.benchmarks.graders import wilson_interval
from archon.data import Query
from archon.pipeline import Pipeline, make_router
from archon.scoring import ScoreContext, Scorer
from archon.techniques.base import Defaults
from archon.techniques.beam import BeamSearch
from archon.techniques.particles import ParticleSteering
from archon.techniques.vote import tally

RESULTS = Path(__file__).resolve().parent / "results"
TEMPLATE = str(Path(__file__).resolve().parent / "prompts" / "arith_steps.j2")
SCORER = {"type": "archon.benchmarks.perf_step_methods:ArithStepScorer", "aggregation": "last"}
_EQ = re.compile(r"^\s*(\d+(?:\s*[+\-*]\s*\d+)+)\s*=\s*(-?\d+)\s*$")
_ANS = re.compile(r"^\s*answer\s*:\s*(-?\d+)\s*$", re.IGNORECASE)


def _check(lines: list[str]) -> float:
    last = lines[-1]
    m = _EQ.match(last)
    if m:  # digits and + - * only, so eval is a calculator here
        return 0.9 if eval(m.group(1), {"__builtins__": {}}, {}) == int(m.group(2)) else 0.1
    m = _ANS.match(last)
    if m:
        prev = _EQ.match(lines[-2]) if len(lines) > 1 else None
        return 0.9 if prev and int(prev.group(2)) == int(m.group(1)) else 0.1
    return 0.5


class ArithStepScorer(Scorer):
    """A calculator as process reward: the last line of each partial solution, checked."""

    type: str = "arith_calculator"

    def models(self, default: str) -> list[str]:
        return []

    def score_outcomes(self, question: str, candidates: list[str], ctx: ScoreContext) -> Any:
        out = []
        for p in candidates:
            lines = [x for x in p.splitlines() if x.strip()]
            out.append(_check(lines) if lines else 0.5)
        return out
        yield []  # pragma: no cover - a generator, like every scorer


def answer_of(text: str) -> int | None:
    m = re.search(r"(?im)^\s*answer\s*:\s*(-?\d+)", text)
    return int(m.group(1)) if m else None


def methods(args: argparse.Namespace) -> dict[str, Any]:
    common = {"scorer": SCORER, "aggregate": "min", "delimiter": "\n", "solve_template": TEMPLATE,
              "max_steps": args.steps, "max_tokens": args.step_tokens,
              "max_total_tokens": args.steps * args.step_tokens}
    half = max(1, args.n // 2)
    return {  # particle filtering first: its early-finish share is the figure the issue asks for
        "particle_filtering": ParticleSteering(method="pf", particles=args.n, **common),
        "best_of_n": ParticleSteering(method="fk", potential="rt", resample="never", particles=args.n, **common),
        "beam_search": BeamSearch(beam_width=half, expand=2, **common),
        "dvts": BeamSearch(beam_width=half, expand=2, diverse=True, **common),
    }


def pick(name: str, cands: list[Any]) -> list[tuple[str, Any]]:
    """(reported method, chosen candidate) for one query's output of ``name``."""
    if not cands:
        return [(name, None)] if name != "best_of_n" else [("best_of_n", None), ("majority_vote", None)]
    if name == "best_of_n":
        return [("best_of_n", cands[0]), ("majority_vote", tally(cands)[0])]
    if name == "dvts":
        return [("dvts", tally(cands, "weighted", "reward")[0])]
    return [(name, cands[0])]


def run(args: argparse.Namespace, on_method: Any = None) -> dict[str, Any]:
    questions, _ = arith_problems(ArithSpec(n=args.questions, operands=3, seed=args.seed))
    queries = [Query(id=f"arith3/{i}", prompt=expr) for i, (expr, _) in enumerate(questions)]
    router = make_router(ModelRegistry(), cache=args.cache or False)
    router.generate([GenerationRequest(model="embedded", prompt="Hello", max_tokens=1)])  # load the engine
    defaults = Defaults(model="embedded", temperature=args.temperature, seed=args.seed)
    rows: dict[str, dict[str, Any]] = {}
    for name, tech in methods(args).items():
        pipe = Pipeline({name: tech}, {}, router=router, defaults=defaults)
        start = time.perf_counter()
        results = pipe.run_batch(queries)
        wall = time.perf_counter() - start
        tokens = sum(r.usage.get("completion_tokens", 0) for r in results) / len(results)
        early = total = 0
        for (expr, gold), res in zip(questions, results, strict=True):
            for label, cand in pick(name, res.candidates):
                row = rows.setdefault(label, {"correct": 0, "n": 0, "tokens_per_query": round(tokens, 1),
                                              "wall_s": round(wall, 1), "errors": 0, "examples": []})
                if len(row["examples"]) < 3:
                    row["examples"].append({"question": expr, "gold": gold,
                                            "chosen": cand.text if cand is not None else None})
                row["n"] += 1
                row["errors"] += res.error is not None
                row["correct"] += cand is not None and answer_of(cand.text) == gold
                if label == "particle_filtering" and cand is not None:
                    total += 1
                    fin, last = cand.metadata.get("finished_at"), cand.metadata.get("last_step")
                    early += fin is not None and last is not None and fin < last
        if name == "particle_filtering":
            rows[name]["early_finished_share"] = round(early / total, 3) if total else None
            rows[name]["early_finished"] = f"{early}/{total}"
        print(f"{name}: {wall:.0f} s", flush=True)
        for row in rows.values():
            lo, hi = wilson_interval(row["correct"], row["n"])
            row["accuracy"] = round(row["correct"] / row["n"], 3) if row["n"] else 0.0
            row["ci95"] = [round(lo, 3), round(hi, 3)]
        report = {"settings": vars(args), "model": "embedded (Gemma 3 270M base, llama.cpp)",
                  "machine": f"{platform.machine()}, shared", "methods": rows}
        if on_method is not None:
            on_method(report)  # partial results survive an interrupted run
    router.close()
    return report


def table(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# Step-level methods on `arith` (3 one-digit operands), {report['model']}", "",
             f"{s['questions']} questions, N = {s['n']} traces per query, at most {s['steps']} steps of "
             f"{s['step_tokens']} tokens, temperature {s['temperature']}, one calculator step reward for all.", "",
             "| method | accuracy | 95% CI | generated tokens / query | wall s |", "|---|---|---|---|---|"]
    for name, row in report["methods"].items():
        lines.append(f"| {name} | {row['accuracy']:.3f} ({row['correct']}/{row['n']}) | "
                     f"{row['ci95'][0]:.3f}–{row['ci95'][1]:.3f} | {row['tokens_per_query']} | {row['wall_s']} |")
    pf = report["methods"].get("particle_filtering", {})
    if pf:
        lines += ["", f"Particle filtering: final answers from particles that finished before the last step: "
                      f"{pf.get('early_finished')} (share {pf.get('early_finished_share')})."]
    lines += ["", f"Total {report['total_s']} s on a shared 2-core machine."]
    return "\n".join(lines) + "\n"


def figure(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a benchmark extra
        return
    names = list(report["methods"])
    acc = [report["methods"][n]["accuracy"] for n in names]
    err = [[a - report["methods"][n]["ci95"][0] for n, a in zip(names, acc, strict=True)],
           [report["methods"][n]["ci95"][1] - a for n, a in zip(names, acc, strict=True)]]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.bar(names, acc, yerr=err, capsize=4, color="#4a7ab0")
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_ylim(0, 1)
    ax.set_title(f"arith, {report['settings']['questions']} questions, N={report['settings']['n']}, "
                 "embedded Gemma 3 270M", fontsize=9)
    plt.xticks(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--n", type=int, default=4, help="traces / beams / particles per query")
    parser.add_argument("--steps", type=int, default=4, help="most steps per trace (lines)")
    parser.add_argument("--step-tokens", type=int, default=8, help="tokens per step")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default="", help="call-cache path (default: no cache)")
    args = parser.parse_args()
    start = time.perf_counter()

    def write(report: dict[str, Any]) -> None:
        report["total_s"] = round(time.perf_counter() - start, 1)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "step_methods.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "step_methods.md").write_text(table(report))
        figure(report, RESULTS / "step_methods.png")

    report = run(args, write)
    write(report)
    print(table(report))


if __name__ == "__main__":
    main()
