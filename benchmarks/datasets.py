"""Benchmark items: where the files are, how rows become queries, and what the gold is.

An ``Item`` is what the evaluator runs and grades: ``query`` (prompt or chat messages plus
``metadata`` such as the task type: everything a pipeline may see) and, kept apart,
``gold`` and ``record`` (the gold answer and the benchmark's own row: hidden tests,
reference answers), which only graders read. A query never carries the gold answer.

Files are read from a data directory laid out as ``NAME/split.jsonl`` (see
``default_data_dir``); when a set is not there and the ``datasets`` package is installed,
the same set is loaded from the Hugging Face hub.

``arith`` is a synthetic set generated from a seed: few-shot ``a+b=`` lines that even the
embedded 270M base model completes correctly some of the time, so repeated sampling and
voting show their effect on a laptop. Its queries are raw completion prompts
(``metadata["format"] == "completion"``, stop at the newline).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archon.data import Query
from archon.errors import ConfigError

# Chat prompts for instruction-tuned models. The embedded base model rarely follows them;
# `arith` is the set it can do.
MATH_PROMPT = "{question}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CODE_PROMPT = ("Complete the following Python function. Reply with the complete function (including the "
               "signature and any imports it needs) in one ```python code block.\n\n```python\n{prompt}```")

# Where the hub has each set, when it is not on disk: (path, config, split map, field map).
HUB_SOURCES: dict[str, dict[str, Any]] = {
    "gsm8k": {"path": "openai/gsm8k", "name": "main", "splits": {"test": "test", "train": "train"}},
    "math500": {"path": "HuggingFaceH4/MATH-500", "splits": {"test": "test"}},
    "aime24": {"path": "HuggingFaceH4/aime_2024", "splits": {"test": "train"}},
    "amc23": {"path": "math-ai/amc23", "splits": {"test": "test"}},
    "humaneval": {"path": "openai/openai_humaneval", "splits": {"test": "test"}},
    "mt_bench": {"path": "HuggingFaceH4/mt_bench_prompts", "splits": {"test": "train"}},
}


@dataclass
class Item:
    """One benchmark question. Pipelines see ``query``; graders see ``gold`` and ``record``."""

    id: str
    query: Query
    gold: Any = None
    record: dict[str, Any] = field(default_factory=dict)
    followups: list[str] = field(default_factory=list)  # later user turns (multi-turn chat sets)


# -- locating data --------------------------------------------------------------------------

def repo_root() -> Path:
    """The source checkout this package was installed from (editable installs)."""
    import archon

    return Path(archon.__file__).resolve().parent.parent


def default_data_dir() -> Path | None:
    """``$ARCHON_DATA_DIR``, else ``../shared/data`` next to the repository, if it exists."""
    env = os.environ.get("ARCHON_DATA_DIR")
    if env:
        return Path(env)
    candidate = repo_root().parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A JSONL (optionally gzipped) or JSON-list file as a list of rows."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
        text = fh.read()
    stripped = text.lstrip()
    if stripped.startswith("["):
        return list(json.loads(stripped))
    rows = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"invalid JSON on line {i + 1}: {exc.msg}", file=str(path)) from None
    return rows


def _find_file(data_dir: Path | None, name: str, split: str, filenames: Sequence[str] = ()) -> Path | None:
    if data_dir is None:
        return None
    folder = data_dir / name
    for fname in (*filenames, f"{split}.jsonl", f"{split}.jsonl.gz", f"{split}.json"):
        p = folder / fname
        if p.is_file():
            return p
    return None


def load_split(name: str, split: str, data_dir: Path | None, filenames: Sequence[str] = (),
               splits: Sequence[str] = ("test",)) -> list[dict[str, Any]]:
    """Rows of ``name/split`` from ``data_dir``, else from the hub, else a clear error."""
    if split not in splits:
        raise ConfigError(f"benchmark {name!r} has no split {split!r}", hint=f"splits: {', '.join(splits)}")
    path = _find_file(data_dir, name, split, filenames)
    if path is not None:
        return read_rows(path)
    return _from_hub(name, split, data_dir)


def _from_hub(name: str, split: str, data_dir: Path | None) -> list[dict[str, Any]]:
    where = f"{data_dir}/{name}/" if data_dir else "no data directory (--data-dir, $ARCHON_DATA_DIR)"
    source = HUB_SOURCES.get(name)
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError(f"benchmark {name!r}: no local files ({where}) and the `datasets` package is not installed",
                          hint="pass --data-dir DIR (laid out as NAME/split.jsonl) or pip install datasets"
                          ) from None
    if source is None:
        raise ConfigError(f"benchmark {name!r}: no local files ({where}) and no hub source is known")
    try:
        ds = datasets.load_dataset(source["path"], source.get("name"), split=source["splits"][split])
    except Exception as exc:  # network, auth, renamed sets: say what was tried
        raise ConfigError(f"benchmark {name!r}: no local files ({where}) and loading {source['path']} from the "
                          f"Hugging Face hub failed: {type(exc).__name__}: {exc}",
                          hint="pass --data-dir DIR with NAME/split.jsonl files") from None
    return [dict(r) for r in ds]


# -- gold parsing -----------------------------------------------------------------------------

def gsm8k_gold(solution: str) -> str:
    """The number after GSM8K's ``####``, without thousands separators."""
    if "####" not in solution:
        raise ValueError("GSM8K solution without '####'")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def integer_gold(value: Any) -> str:
    """``27.0`` -> ``27``, ``"025"`` -> ``25``; other values as text."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value).strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return str(int(text))
    if re.fullmatch(r"[+-]?\d+\.0+", text):
        return str(int(float(text)))
    return text


# -- loaders: rows -> items ---------------------------------------------------------------------

def gsm8k_items(rows: Iterable[dict[str, Any]], split: str) -> list[Item]:
    items = []
    for i, r in enumerate(rows):
        q = Query(id=f"gsm8k/{split}/{i}", prompt=MATH_PROMPT.format(question=r["question"]),
                  metadata={"task": "math", "benchmark": "gsm8k"})
        items.append(Item(q.id, q, gsm8k_gold(r["answer"]), {"solution": r["answer"]}))
    return items


def math500_items(rows: Iterable[dict[str, Any]]) -> list[Item]:
    items = []
    for i, r in enumerate(rows):
        qid = f"math500/{r.get('unique_id') or i}"
        meta = {"task": "math", "benchmark": "math500"}
        meta.update({k: r[k] for k in ("subject", "level") if k in r})
        q = Query(id=qid, prompt=MATH_PROMPT.format(question=r["problem"]), metadata=meta)
        items.append(Item(qid, q, str(r["answer"]).strip(), {"solution": r.get("solution", "")}))
    return items


def competition_items(name: str, rows: Iterable[dict[str, Any]]) -> list[Item]:
    """AIME 2024 and AMC 2023: integer answers."""
    items = []
    for i, r in enumerate(rows):
        qid = f"{name}/{r.get('id', i)}"
        problem = r.get("problem") or r.get("question")
        q = Query(id=qid, prompt=MATH_PROMPT.format(question=problem), metadata={"task": "math", "benchmark": name})
        items.append(Item(qid, q, integer_gold(r["answer"]), {"url": r.get("url"), "solution": r.get("solution")}))
    return items


_DOCTEST_RE = re.compile(r"^\s*>>>\s?(.*)$")


def doctest_asserts(prompt: str) -> list[str]:
    """The ``>>> call`` / ``result`` examples of a docstring as ``assert`` lines.

    These are public (they are in the prompt), so a pipeline may run them, e.g. the
    ``unit_tests`` technique reads ``query.metadata["tests"]``. Examples whose expected
    output spans several lines or is not a Python expression are skipped.
    """
    lines = prompt.splitlines()
    tests = []
    for i, line in enumerate(lines):
        m = _DOCTEST_RE.match(line)
        if not m or i + 1 >= len(lines):
            continue
        expr, expected = m.group(1).strip(), lines[i + 1].strip()
        if not expr or not expected or expected.startswith(">>>") or expected.endswith('"""'):
            continue
        try:
            compile(expr, "<doctest>", "eval")
            compile(expected, "<doctest>", "eval")
        except SyntaxError:
            continue
        tests.append(f"assert ({expr}) == ({expected})")
    return tests


def humaneval_items(rows: Iterable[dict[str, Any]]) -> list[Item]:
    items = []
    for r in rows:
        meta = {"task": "code", "benchmark": "humaneval", "entry_point": r["entry_point"],
                "tests": doctest_asserts(r["prompt"])}
        q = Query(id=r["task_id"], prompt=CODE_PROMPT.format(prompt=r["prompt"]), metadata=meta)
        record = {k: r[k] for k in ("prompt", "test", "entry_point", "canonical_solution") if k in r}
        items.append(Item(r["task_id"], q, None, record))
    return items


def mt_bench_items(rows: Iterable[dict[str, Any]], references: dict[int, list[str]]) -> list[Item]:
    """Two-turn questions: the first turn is the query, the second a follow-up in the same chat."""
    items = []
    for r in rows:
        qid_num = int(r.get("question_id", r.get("prompt_id", 0)))
        turns = list(r.get("turns") or r.get("prompt") or [])
        if not turns:
            raise ValueError(f"mt_bench question {qid_num} has no turns")
        qid = f"mt_bench/{qid_num}"
        q = Query(id=qid, prompt=turns[0], metadata={"task": "chat", "benchmark": "mt_bench",
                                                     "category": r.get("category", "")})
        reference = references.get(qid_num) or r.get("reference") or None
        record = {"question_id": qid_num, "category": r.get("category", ""), "turns": turns,
                  "reference": reference}
        items.append(Item(qid, q, reference, record, followups=turns[1:]))
    return items


def mt_bench_references(path: Path | None) -> dict[int, list[str]]:
    """``question_id -> turns`` of the GPT-4 reference answers (math, reasoning, coding)."""
    if path is None or not path.is_file():
        return {}
    out = {}
    for r in read_rows(path):
        choices = r.get("choices") or [{}]
        out[int(r["question_id"])] = list(choices[0].get("turns", []))
    return out


def jsonl_items(rows: Iterable[dict[str, Any]], source: str, question: str = "question", answer: str = "answer",
                id_field: str = "id", task: str = "math") -> list[Item]:
    items = []
    for i, r in enumerate(rows):
        if question not in r:
            raise ConfigError(f"row {i + 1} has no field {question!r}", file=source,
                              hint=f"fields: {', '.join(r)}; choose one with jsonl:PATH?question=FIELD")
        qid = str(r.get(id_field, i))
        q = Query(id=qid, prompt=str(r[question]), metadata={"task": task, "benchmark": "jsonl"})
        gold = r.get(answer)
        items.append(Item(qid, q, None if gold is None else str(gold), {"row": i}))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"ids in field {id_field!r} are not unique", file=source,
                          hint="choose another field with jsonl:PATH?id=FIELD")
    return items


# -- arith: the synthetic set -------------------------------------------------------------------

_OPS = {"+": "+", "add": "+", "plus": "+", "-": "-", "sub": "-", "minus": "-", "*": "*", "mul": "*", "x": "*"}


@dataclass(frozen=True)
class ArithSpec:
    """Difficulty and size of a synthetic arithmetic set.

    Operands are drawn uniformly from ``[lo, hi]`` (by default the ``digits``-digit numbers,
    one-digit meaning 1-9); each problem has ``operands`` numbers joined by operators drawn
    from ``ops``; ``shots`` solved examples (drawn from the same distribution, never equal
    to a question of the set) come first. ``seed`` fixes everything.
    """

    n: int = 100
    digits: int = 1
    operands: int = 2
    ops: str = "+"
    seed: int = 0
    shots: int = 5
    lo: int | None = None
    hi: int | None = None

    def bounds(self) -> tuple[int, int]:
        lo = self.lo if self.lo is not None else (1 if self.digits == 1 else 10 ** (self.digits - 1))
        hi = self.hi if self.hi is not None else 10 ** self.digits - 1
        if lo > hi:
            raise ConfigError(f"arith: min {lo} > max {hi}")
        return lo, hi

    def operators(self) -> list[str]:
        """``"+"``, ``"+-*"`` or ``"add,sub,mul"`` -> the operator symbols, in order."""
        text = self.ops.strip()
        tokens = [t for t in re.split(r"[,\s]+", text) if t] if ("," in text or " " in text) else (
            list(text) if all(c in "+-*x" for c in text) else [text])
        out = []
        for token in tokens:
            if token not in _OPS:
                raise ConfigError(f"arith: unknown operator {token!r}", hint="use + - * (or add, sub, mul)")
            if _OPS[token] not in out:
                out.append(_OPS[token])
        return out

    @classmethod
    def from_params(cls, params: dict[str, str]) -> ArithSpec:
        known = {"n", "digits", "operands", "ops", "seed", "shots", "min", "max"}
        unknown = set(params) - known
        if unknown:
            raise ConfigError(f"arith: unknown parameter(s) {', '.join(sorted(unknown))}",
                              hint=f"known: {', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        try:
            for k in ("n", "digits", "operands", "seed", "shots"):
                if k in params:
                    kw[k] = int(params[k])
            if "min" in params:
                kw["lo"] = int(params["min"])
            if "max" in params:
                kw["hi"] = int(params["max"])
        except ValueError as exc:
            raise ConfigError(f"arith: {exc}") from None
        if "ops" in params:
            kw["ops"] = params["ops"]
        spec = cls(**kw)
        if spec.n < 1 or spec.operands < 2 or spec.digits < 1 or spec.shots < 0:
            raise ConfigError("arith: needs n >= 1, operands >= 2, digits >= 1, shots >= 0")
        spec.bounds()
        spec.operators()
        return spec

    def describe(self) -> dict[str, Any]:
        lo, hi = self.bounds()
        return {"n": self.n, "operands": self.operands, "ops": "".join(self.operators()), "min": lo, "max": hi,
                "seed": self.seed, "shots": self.shots}


def _expression(rng: random.Random, spec: ArithSpec) -> tuple[str, int]:
    lo, hi = spec.bounds()
    ops = spec.operators()
    nums = [rng.randint(lo, hi) for _ in range(spec.operands)]
    chosen = [rng.choice(ops) for _ in range(spec.operands - 1)]
    text = str(nums[0]) + "".join(f"{o}{x}" for o, x in zip(chosen, nums[1:], strict=True))
    return text, int(eval(text, {"__builtins__": {}}, {}))  # digits and + - * only


def arith_problems(spec: ArithSpec, split: str = "test") -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """``(questions, shots)``: reproducible from ``spec.seed`` and the split."""
    salt = {"test": 0, "train": 1}.get(split)
    if salt is None:
        raise ConfigError(f"arith has no split {split!r}", hint="splits: test, train")
    rng = random.Random(f"arith:{spec.seed}:{split}")
    questions = [_expression(rng, spec) for _ in range(spec.n)]
    seen = {q for q, _ in questions}
    shot_rng = random.Random(f"arith-shots:{spec.seed}")
    shots: list[tuple[str, int]] = []
    tries = 0
    while len(shots) < spec.shots and tries < 10_000:
        tries += 1
        expr = _expression(shot_rng, spec)
        if expr[0] not in seen and expr[0] not in {s for s, _ in shots}:
            shots.append(expr)
    return questions, shots


def arith_prompt(shots: Sequence[tuple[str, int]], expression: str) -> str:
    return "".join(f"{s}={v}\n" for s, v in shots) + f"{expression}="


def arith_items(spec: ArithSpec, split: str = "test") -> list[Item]:
    questions, shots = arith_problems(spec, split)
    items = []
    for i, (expr, value) in enumerate(questions):
        q = Query(id=f"arith/{split}/{i}", prompt=arith_prompt(shots, expr),
                  metadata={"task": "arith", "benchmark": "arith", "format": "completion", "stop": ["\n"],
                            "expression": expr})
        items.append(Item(q.id, q, str(value), {"expression": expr}))
    return items


# -- subsets ----------------------------------------------------------------------------------

def select_subset(items: Sequence[Item], limit: int | None = None, seed: int | None = None) -> list[Item]:
    """The first ``limit`` items, or (with ``seed``) ``limit`` drawn at random, kept in file order."""
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be >= 0, got {limit}")
    if limit is None or limit >= len(items):
        return list(items)
    if seed is None:
        return list(items[:limit])
    picked = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in picked]


def ids_digest(items: Iterable[Item]) -> str:
    return hashlib.sha256("\n".join(it.id for it in items).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class HFSource:
    """Any Hugging Face dataset: a hub name through ``datasets.load_dataset``, or a folder
    written by ``save_to_disk`` through ``datasets.load_from_disk`` (works offline)."""

    path: str
    config: str | None = None
    revision: str | None = None

    @property
    def is_folder(self) -> bool:
        return Path(self.path).expanduser().is_dir()

    def identity(self) -> dict[str, Any]:
        return {"source": "folder" if self.is_folder else "hub", "revision": self.revision}

    def rows(self, split: str) -> list[dict[str, Any]]:
        try:
            import datasets  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - a dependency since issue 15
            raise ConfigError("hf: benchmarks need the `datasets` package", hint="pip install datasets") from None
        if self.is_folder:
            try:
                loaded = datasets.load_from_disk(str(Path(self.path).expanduser()))
            except Exception as exc:  # not a save_to_disk folder
                raise ConfigError(f"hf:{self.path}: not a dataset saved with save_to_disk ({exc})",
                                  hint="for JSONL files use jsonl:PATH") from None
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ConfigError(f"hf:{self.path} has no split {split!r}",
                                      hint=f"splits: {', '.join(loaded)}; add ?split=NAME")
                loaded = loaded[split]
            return [dict(row) for row in loaded]
        try:
            loaded = datasets.load_dataset(self.path, self.config, split=split, revision=self.revision)
        except Exception as exc:  # offline, unknown name, gated set, missing config: say what was tried
            raise ConfigError(
                f"hf:{self.path}: cannot load split {split!r}"
                f"{f' (config {self.config!r})' if self.config else ''} from the Hugging Face hub: "
                f"{type(exc).__name__}: {str(exc)[:300]}",
                hint="offline, use local data instead: hf:FOLDER (a dataset saved with save_to_disk), "
                     "jsonl:FILE?question=...&answer=..., or a built-in benchmark with --data-dir") from None
        return [dict(row) for row in loaded]
