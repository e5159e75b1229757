"""Prefix-aware vs round-robin routing over two replicas of one model, side by side.

Two llama.cpp servers (the embedded Gemma 3 270M) stand behind one `backend: openai` model.
The same sample-4 -> critique -> rank -> fuse pipeline runs over the same GSM8K questions
twice, once per routing policy, with fresh servers each time (empty caches) and the same
seeds. What each server reused is read from its own log: llama-cpp-python reports, per
request, how many prompt tokens matched what it already held ("N prefix-match hit,
remaining M prompt tokens to eval"). llama.cpp keeps one prompt's state per server, so this
measures exactly what routing controls: whether consecutive requests on a replica share a
prefix.

    python -m archon.benchmarks.perf_replica_routing --questions 6 --out benchmarks/results

Writes ``replica_routing.json`` and ``replica_routing.md``.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

from archon.backends.registry import EMBEDDED_PARAMETERS, ModelSpec
from archon.data import Query
from archon.pipeline import Pipeline
from archon.techniques import Critique, Fuse, Generate, Rank

REPO = Path(__file__).resolve().parent.parent
_HIT = re.compile(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")


def _server_class() -> Any:
    """The tests' loopback server launcher (a dev-time benchmark runs from a checkout)."""
    sys.path.insert(0, str(REPO / "tests"))
    from servers import LlamaServer

    return LlamaServer


def gsm8k_questions(n: int, data_dir: Path) -> list[Query]:
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:n]]
    return [Query(id=f"gsm8k-{i}", prompt=r["question"]) for i, r in enumerate(rows)]


def pipeline(urls: list[str], policy: str, max_tokens: int) -> Pipeline:
    spec = ModelSpec(backend="openai", base_url=urls, api_model="gemma", parameters=EMBEDDED_PARAMETERS,
                     routing={"policy": policy}, max_concurrency=8)
    nodes = {"sample": Generate(samples=4, max_tokens=max_tokens), "critique": Critique(max_tokens=max_tokens),
             "rank": Rank(top_k=2, max_tokens=16), "fuse": Fuse(max_tokens=max_tokens)}
    edges = {"critique": ["sample"], "rank": ["critique"], "fuse": ["rank"]}
    from archon.techniques.base import Defaults

    return Pipeline(nodes, edges, models={"replicas": spec}, defaults=Defaults(model="replicas", seed=0),
                    cache=False, name=f"routing-{policy}")


def server_reuse(log: str) -> int:
    """Prompt tokens the server took from the state it held (it logs only requests that reused some)."""
    return sum(int(a) for a, _ in _HIT.findall(log))


def run_policy(policy: str, questions: list[Query], max_tokens: int) -> dict[str, Any]:
    server = _server_class()
    with server(alias="gemma", n_threads=1) as one, server(alias="gemma", n_threads=1) as two:
        pipe = pipeline([one.base_url, two.base_url], policy, max_tokens)
        start = time.perf_counter()
        results = pipe.run_batch(questions)
        wall = time.perf_counter() - start
        backend = pipe.router.backend("replicas")
        stats = backend.stats()  # type: ignore[attr-defined]
        pipe.close()
        logs = {"replica-1": one.log_tail(10_000_000), "replica-2": two.log_tail(10_000_000)}
    reused = sum(server_reuse(log) for log in logs.values())
    prompt_tokens = sum(r.usage["prompt_tokens"] for r in results)
    evaluated = prompt_tokens - reused
    return {
        "policy": policy,
        "wall_s": round(wall, 2),
        "errors": sum(r.error is not None for r in results),
        "prompt_tokens_reused": reused,
        "prompt_tokens_evaluated": evaluated,
        "reuse_rate": round(reused / prompt_tokens, 3) if prompt_tokens else 0.0,
        "per_replica": {name: {"requests": stats[url]["requests"], "prompt_tokens_reused": server_reuse(log)}
                        for (name, log), url in zip(logs.items(), stats, strict=True)},
    }


def table(report: dict[str, Any]) -> str:
    lines = ["| routing | wall s | prompt tokens reused (server log) | evaluated | reuse rate | requests per replica |",
             "|---|---|---|---|---|---|"]
    for r in report["runs"]:
        per = " / ".join(str(v["requests"]) for v in r["per_replica"].values())
        lines.append(f"| {r['policy']} | {r['wall_s']} | {r['prompt_tokens_reused']} | {r['prompt_tokens_evaluated']} "
                     f"| {r['reuse_rate']:.1%} | {per} |")
    p, rr = report["runs"][0], report["runs"][1]
    lines.append("")
    fewer = rr["prompt_tokens_evaluated"] / max(1, p["prompt_tokens_evaluated"])
    lines.append(f"Prefix-aware vs round-robin: {fewer:.2f}x fewer prompt tokens evaluated, "
                 f"wall time ratio {rr['wall_s'] / p['wall_s']:.2f}x.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    questions = gsm8k_questions(args.questions, args.data_dir)
    runs = [run_policy(policy, questions, args.max_tokens) for policy in ("prefix", "round_robin")]
    report = {"settings": {"questions": args.questions, "max_tokens": args.max_tokens,
                           "pipeline": "sample 4 -> critique -> rank top 2 -> fuse", "replicas": 2,
                           "server": "llama_cpp.server, Gemma 3 270M Q4_K_M, 1 thread each"},
              "machine": platform.platform(), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replica_routing.json").write_text(json.dumps(report, indent=2) + "\n")
    title = "# Replica routing: prefix-aware vs round-robin\n\n"
    (args.out / "replica_routing.md").write_text(title + table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    main()
