"""Benchmarks by name: a benchmark is a loader (items), a prompt format (in the items'
queries) and a grader.

Names (``get_benchmark(spec)``)::

    gsm8k  math500  aime24  amc23  humaneval  mt_bench
    arith                      # synthetic: arith?digits=2&operands=2&ops=+-&n=100&seed=0&shots=5
    jsonl:PATH                 # jsonl:data.jsonl?question=q&answer=a&id=qid&grader=math|exact|arith
    hf:ORG/NAME or hf:FOLDER   # any Hugging Face dataset (hub name, or a save_to_disk folder):
                               # hf:openai/gsm8k?config=main&split=test&question=question&answer=answer

Parameters follow ``?`` as ``key=value`` pairs joined by ``&`` (``+`` is kept literally).
``mt_bench`` takes ``judge=MODEL``, ``judge_max_tokens=N`` and ``retries=N``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from archon.benchmarks import datasets as ds
from archon.benchmarks.graders import (
    ArithGrader,
    CodeGrader,
    ExactGrader,
    Grader,
    JudgeGrader,
    MathGrader,
    QueryGrade,
    load_judge_prompts,
)
from archon.data import QueryResult
from archon.errors import ConfigError
from archon.registry import Registry, suggest

BENCHMARKS: Registry[str] = Registry("benchmark")
"""Benchmark families and what they are (``get_benchmark`` builds them)."""
for _name, _about in {
    "gsm8k": "GSM8K grade-school math (test 1319, train 7473); math grader",
    "math500": "MATH-500 competition math; math grader",
    "aime24": "AIME 2024 (30); integer answers, math grader",
    "amc23": "AMC 2023 (40); math grader",
    "humaneval": "HumanEval (164) Python functions; hidden tests in the sandbox, pass@k",
    "mt_bench": "MT-Bench (80 two-turn chats); LLM judge 1-10 (judge=MODEL)",
    "arith": "synthetic few-shot arithmetic from a seed (digits, operands, ops, n, shots, min, max)",
    "jsonl:PATH": "your own JSONL (question=, answer=, id=, grader=math|exact|arith)",
    "hf:NAME": "any Hugging Face dataset or save_to_disk folder (config=, split=, question=, answer=, id=, grader=)",
}.items():
    BENCHMARKS.register(_name, _about)


@dataclass
class Benchmark:
    """``load(split, limit, seed)`` gives the items; ``grader`` grades them."""

    name: str  # the family: gsm8k, arith, jsonl, ...
    params: dict[str, Any]
    grader: Grader
    loader: Callable[[str], list[ds.Item]]
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    multi_turn: bool = False
    identity: dict[str, Any] = field(default_factory=dict)  # extra identity (a file's hash)

    @property
    def label(self) -> str:
        """A canonical spec string, e.g. ``arith?digits=2&n=100``."""
        if not self.params:
            return self.name
        shown = {k: v for k, v in self.params.items() if k != "path"}
        base = f"jsonl:{self.params['path']}" if self.name == "jsonl" else self.name
        return base + ("?" + "&".join(f"{k}={v}" for k, v in sorted(shown.items())) if shown else "")

    def spec(self) -> dict[str, Any]:
        """What identifies the question set (not the subset): compared when resuming and ranking."""
        params = {k: v for k, v in sorted(self.params.items()) if k != "path"}  # a file is known by its hash
        return {"name": self.name, "params": params, **self.identity}

    def load(self, split: str | None = None, limit: int | None = None, seed: int | None = None) -> list[ds.Item]:
        split = split or self.default_split
        if split not in self.splits:
            raise ConfigError(f"benchmark {self.name!r} has no split {split!r}",
                              hint=f"splits: {', '.join(self.splits)}")
        return ds.select_subset(self.loader(split), limit, seed)


    def grade(self, item: ds.Item, result: QueryResult, *, pool: list[str] | None = None,
              router: Any = None) -> QueryGrade:
        """Grade one (single-turn) result, e.g. for a search objective: ``grade(...).score``."""
        return self.grader.grade_runs([item], [[result]], [pool or []], router=router)[0]


def parse_spec(spec: str) -> tuple[str, str | None, dict[str, str]]:
    """``"jsonl:x.jsonl?question=q"`` -> ``("jsonl", "x.jsonl", {"question": "q"})``."""
    head, _, query = spec.partition("?")
    params: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise ConfigError(f"benchmark parameter {part!r} needs a value", hint="write key=value")
        params[unquote(key.strip())] = unquote(value.strip())
    for family in ("jsonl", "hf"):
        if head.startswith(f"{family}:"):
            return family, head[len(family) + 1:], params
    return head.strip(), None, params


def _check_params(name: str, params: dict[str, str], allowed: set[str]) -> None:
    unknown = set(params) - allowed
    if unknown:
        raise ConfigError(f"benchmark {name!r}: unknown parameter(s) {', '.join(sorted(unknown))}",
                          hint=f"allowed: {', '.join(sorted(allowed)) or 'none'}")


def get_benchmark(spec: str, data_dir: str | Path | None = None, *, judge_model: str | None = None,
                  judge_max_tokens: int | None = None, judge_retries: int | None = None,
                  code_timeout_s: float = 10.0) -> Benchmark:
    """A benchmark by name (see the module docstring). Nothing is read until ``load``."""
    name, path, params = parse_spec(spec)
    root = Path(data_dir) if data_dir is not None else ds.default_data_dir()
    if data_dir is not None and not Path(data_dir).is_dir():
        raise ConfigError(f"data directory not found: {data_dir}")

    if name in ("gsm8k", "math500", "aime24", "amc23"):
        _check_params(name, params, set())
        splits = ("test", "train") if name == "gsm8k" else ("test",)

        def load_math(split: str) -> list[ds.Item]:
            rows = ds.load_split(name, split, root, splits=splits)
            if name == "gsm8k":
                return ds.gsm8k_items(rows, split)
            if name == "math500":
                return ds.math500_items(rows)
            return ds.competition_items(name, rows)

        return Benchmark(name, {}, MathGrader(), load_math, splits)

    if name == "humaneval":
        _check_params(name, params, set())
        files = ("HumanEval.jsonl.gz", "HumanEval.jsonl")
        return Benchmark(name, {}, CodeGrader(timeout_s=code_timeout_s),
                         lambda split: ds.humaneval_items(ds.load_split("humaneval", split, root, filenames=files)))

    if name == "mt_bench":
        _check_params(name, params, {"judge", "judge_max_tokens", "retries"})
        model = judge_model or params.get("judge") or "embedded"
        max_tokens = judge_max_tokens or int(params.get("judge_max_tokens", 512))
        retries = judge_retries if judge_retries is not None else int(params.get("retries", 2))
        folder = root / "mt_bench" if root else None
        prompts_file = folder / "judge_prompts.jsonl" if folder else None
        if prompts_file is None or not prompts_file.is_file():
            raise ConfigError("mt_bench needs the judge prompts file mt_bench/judge_prompts.jsonl",
                              hint="pass --data-dir DIR holding mt_bench/{question,judge_prompts}.jsonl "
                                   "(from FastChat's llm_judge)")
        grader = JudgeGrader(load_judge_prompts(ds.read_rows(prompts_file)), model, max_tokens, retries)

        def load_mt(split: str) -> list[ds.Item]:
            rows = ds.load_split("mt_bench", split, root, filenames=("question.jsonl",))
            refs = ds.mt_bench_references(folder / "reference_answer_gpt-4.jsonl" if folder else None)
            return ds.mt_bench_items(rows, refs)

        return Benchmark(name, {}, grader, load_mt, multi_turn=True)

    if name == "arith":
        aspec = ds.ArithSpec.from_params(params)
        return Benchmark(name, aspec.describe(), ArithGrader(), lambda split: ds.arith_items(aspec, split),
                         ("test", "train"))

    if name == "jsonl":
        _check_params("jsonl", params, {"question", "answer", "id", "grader"})
        if not path:
            raise ConfigError("jsonl benchmark needs a path: jsonl:PATH")
        file = Path(path)
        if file.is_dir():
            raise ConfigError(f"benchmark path is a folder, not a JSONL file: {file}",
                              hint=f"name a file inside it (jsonl:{file}/test.jsonl), or use hf:{file} for a "
                              "dataset saved with save_to_disk")
        if not file.is_file():
            raise ConfigError(f"benchmark file not found: {file}")
        grader_name, task = _grader_name(params, "jsonl")
        q, a, i = params.get("question", "question"), params.get("answer", "answer"), params.get("id", "id")
        digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
        shown = {"path": str(file), "question": q, "answer": a, "id": i, "grader": grader_name}
        return Benchmark("jsonl", shown, _GRADERS[grader_name](),
                         lambda split: ds.jsonl_items(ds.read_rows(file), str(file), q, a, i, task),
                         ("test",), identity={"sha256": digest})

    if name == "hf":
        _check_params("hf", params, {"config", "split", "revision", "question", "answer", "id", "grader"})
        if not path:
            raise ConfigError("hf benchmark needs a dataset: hf:ORG/NAME or hf:FOLDER (a save_to_disk folder)")
        grader_name, task = _grader_name(params, "hf")
        q, a, i = params.get("question", "question"), params.get("answer", "answer"), params.get("id", "id")
        source = ds.HFSource(path, params.get("config"), params.get("revision"))
        shown = {"dataset": path, "config": source.config, "question": q, "answer": a, "id": i,
                 "grader": grader_name}
        splits = (params["split"],) if "split" in params else ("test", "train", "validation")
        return Benchmark("hf", shown, _GRADERS[grader_name](),
                         lambda split: ds.jsonl_items(source.rows(split), f"hf:{path}", q, a, i, task),
                         splits, identity=source.identity())

    raise ConfigError(f"unknown benchmark {spec!r}",
                      hint=suggest(name, [n for n in BENCHMARKS if ":" not in n])
                      or f"known: {', '.join(BENCHMARKS)}")


_GRADERS: dict[str, Callable[[], Grader]] = {"math": MathGrader, "exact": ExactGrader, "arith": ArithGrader}


def _grader_name(params: dict[str, str], family: str) -> tuple[str, str]:
    """The grader a jsonl:/hf: benchmark asked for, and the prompt task it implies."""
    name = params.get("grader", "math")
    if name not in _GRADERS:
        raise ConfigError(f"unknown grader {name!r} for {family}", hint=f"one of: {', '.join(_GRADERS)}")
    return name, "arith" if name == "arith" else "math"
