"""Graders: a pipeline's output against the gold answer. They never feed back into pipelines.

A grader has a ``name`` and a ``version`` (stored with every run, so runs graded
differently are never ranked together) and grades a batch of questions at once:
``grade_runs(items, runs, pools, router)`` gets, per question, the pipeline's results (one
per chat turn) and the *pool*, the texts of the candidates the pipeline sampled before
any selection, and returns a ``QueryGrade`` per question.

==================  ================================================================  ==========
grader              decides                                                           metric
==================  ================================================================  ==========
``arith``           the integer the completion starts with (or its boxed/"answer is"  accuracy
                    answer) equals the gold value
``math``            ``grade_math``: the extracted final answer is equivalent to gold  accuracy
                    (math-verify, then normalised string equality)
``exact``           normalised final answer (or whole text) equals normalised gold    accuracy
``humaneval``       the candidate program passes the hidden tests in the sandbox;     accuracy
                    pass@k over the pool with the unbiased estimator
``mt_bench_judge``  an LLM judge rates each turn 1-10 with MT-Bench's single-answer    judge_score
                    prompts; the verdict ``[[rating]]`` is parsed, with bounded
                    retries
==================  ================================================================  ==========

Binary graders also grade every pool candidate (distinct answers once), which gives the
oracle *coverage*: whether any sampled candidate, or the selected answer, is correct.
"""

from __future__ import annotations

import hashlib
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from archon.backends.accounting import CallTag
from archon.backends.types import GenerationRequest, Message, Usage
from archon.data import QueryResult
from archon.errors import ConfigError
from archon.verifiers.answers import extract_final_answer, normalize_answer
from archon.verifiers.math_grader import GRADER_VERSION as MATH_GRADER_VERSION
from archon.verifiers.math_grader import grade_math
from archon.verifiers.sandbox import pass_at_k, run_tests


@dataclass
class Grade:
    """One text graded. ``score`` is 1.0/0.0 for binary graders."""

    correct: bool
    extracted: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        return 1.0 if self.correct else 0.0


@dataclass
class QueryGrade:
    """A question graded: the selected answer, and the pool for oracle metrics."""

    score: float | None  # None: the grader could not decide (e.g. no judge verdict)
    correct: bool | None
    extracted: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # pool: {"answer", "correct"}
    coverage: bool | None = None
    pass_at_k: dict[str, float] | None = None
    grader_usage: dict[str, float] | None = None


class Grader(ABC):
    name: ClassVar[str]
    metric: ClassVar[str] = "accuracy"
    binary: ClassVar[bool] = True
    workers: int = 2

    @property
    def version(self) -> str:
        return "1"

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "metric": self.metric}

    # -- binary graders implement these two --------------------------------------------

    @abstractmethod
    def grade_text(self, item: Any, text: str) -> Grade:
        """Grade one response text against ``item.gold`` / ``item.record``."""

    def key(self, item: Any, text: str) -> str:
        """Texts with the same key get the same grade (graded once)."""
        return text.strip()

    def grade_texts(self, item: Any, texts: Sequence[str]) -> list[Grade]:
        done: dict[str, Grade] = {}
        out = []
        for text in texts:
            k = self.key(item, text)
            if k not in done:
                done[k] = self.grade_text(item, text)
            out.append(done[k])
        return out

    def grade_runs(self, items: Sequence[Any], runs: Sequence[Sequence[QueryResult]],
                   pools: Sequence[Sequence[str]], router: Any = None) -> list[QueryGrade]:
        """Selected answer (the last turn's) and pool of every question; parallel over questions."""
        def one(i: int) -> QueryGrade:
            result = runs[i][-1]
            texts = [result.answer, *pools[i]]
            grades = self.grade_texts(items[i], texts)
            sel, pool = grades[0], grades[1:]
            return QueryGrade(
                score=sel.score, correct=sel.correct, extracted=sel.extracted, details=sel.details,
                candidates=[{"answer": g.extracted, "correct": g.correct} for g in pool],
                coverage=sel.correct or any(g.correct for g in pool),
            )

        if self.workers <= 1 or len(items) <= 1:
            return [one(i) for i in range(len(items))]
        with ThreadPoolExecutor(max_workers=self.workers) as pool_exec:
            return list(pool_exec.map(one, range(len(items))))


# -- arithmetic ------------------------------------------------------------------------------

_INT_RE = re.compile(r"[+-]?\d[\d,]*")


def arith_answer(text: str) -> str | None:
    """The integer a completion commits to: its boxed / "answer is" answer, else the first
    integer of its first line (after the last ``=`` when it restates the sum)."""
    extracted = extract_final_answer(text)
    if extracted is not None:
        m = _INT_RE.search(extracted)
        if m:
            return str(int(m.group(0).replace(",", "")))
    stripped = text.strip()
    if not stripped:
        return None
    first = stripped.splitlines()[0]
    if "=" in first and _INT_RE.search(first.rsplit("=", 1)[1]):
        first = first.rsplit("=", 1)[1]
    m = _INT_RE.search(first) or _INT_RE.search(stripped)
    if not m:
        return None
    try:
        return str(int(m.group(0).replace(",", "")))
    except ValueError:
        return None


class ArithGrader(Grader):
    name = "arith"

    @property
    def version(self) -> str:
        return "arith-exact-1"

    def key(self, item: Any, text: str) -> str:
        ans = arith_answer(text)
        return f"n:{ans}" if ans is not None else f"t:{text.strip()}"

    def grade_text(self, item: Any, text: str) -> Grade:
        ans = arith_answer(text)
        return Grade(ans is not None and int(ans) == int(item.gold), ans)


# -- math ------------------------------------------------------------------------------------

class MathGrader(Grader):
    name = "math"

    @property
    def version(self) -> str:
        return MATH_GRADER_VERSION

    def key(self, item: Any, text: str) -> str:
        ans = extract_final_answer(text)
        return f"a:{normalize_answer(ans)}" if ans is not None else f"t:{text.strip()}"

    def grade_text(self, item: Any, text: str) -> Grade:
        if item.gold is None:
            raise ConfigError(f"question {item.id}: no gold answer to grade against")
        g = grade_math(text, str(item.gold))
        details = {"method": g.method}
        if g.timed_out:
            details["timed_out"] = True
        return Grade(g.correct, g.extracted, details)


class ExactGrader(Grader):
    """Normalised string equality of the final answer (or the whole text) with gold."""

    name = "exact"

    @property
    def version(self) -> str:
        return "exact-1"

    def key(self, item: Any, text: str) -> str:
        return self._answer(text)

    @staticmethod
    def _answer(text: str) -> str:
        ans = extract_final_answer(text)
        return normalize_answer(ans if ans is not None else text.strip())

    def grade_text(self, item: Any, text: str) -> Grade:
        ans = self._answer(text)
        return Grade(ans != "" and ans == normalize_answer(str(item.gold)), ans)


# -- code ------------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[^\n`]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The fenced code block that defines ``entry_point`` (else the first block), else the text."""
    blocks = _FENCE_RE.findall(text)
    if not blocks:
        return text
    if entry_point:
        for b in blocks:
            if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", b, re.MULTILINE):
                return b
    return blocks[0]


def build_program(prompt: str, completion: str, entry_point: str) -> str:
    """The program HumanEval runs: the task prompt completed by the candidate.

    A candidate that writes the whole function replaces the prompt's stub (the prompt's
    imports and helper functions stay); otherwise the candidate is the body that continues
    the prompt, as in the original HumanEval protocol.
    """
    code = extract_code(completion, entry_point)
    if re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", code, re.MULTILINE):
        return prompt.rstrip("\n") + "\n    pass\n\n\n" + code.strip("\n") + "\n"
    return prompt + code


class CodeGrader(Grader):
    """HumanEval: the candidate program plus the hidden ``check`` tests, in the sandbox."""

    name = "humaneval"
    ks: ClassVar[tuple[int, ...]] = (1, 2, 5, 10, 20, 50, 100)

    def __init__(self, timeout_s: float = 10.0, workers: int = 2) -> None:
        self.timeout_s = timeout_s
        self.workers = workers

    @property
    def version(self) -> str:
        return "humaneval-exec-1"

    def _program(self, item: Any, text: str) -> str:
        rec = item.record
        return build_program(rec["prompt"], text, rec["entry_point"])

    def key(self, item: Any, text: str) -> str:
        return self._program(item, text)

    def grade_text(self, item: Any, text: str) -> Grade:
        rec = item.record
        outcome = run_tests(self._program(item, text), rec["test"], rec["entry_point"], timeout_s=self.timeout_s)
        details: dict[str, Any] = {}
        if outcome.error:
            details["error"] = outcome.error
        if outcome.timed_out:
            details["timed_out"] = True
        return Grade(outcome.passed, None, details)

    def grade_runs(self, items: Sequence[Any], runs: Sequence[Sequence[QueryResult]],
                   pools: Sequence[Sequence[str]], router: Any = None) -> list[QueryGrade]:
        grades = super().grade_runs(items, runs, pools, router)
        for g in grades:
            n = len(g.candidates)
            if n >= 1:
                c = sum(1 for cand in g.candidates if cand["correct"])
                g.pass_at_k = {str(k): pass_at_k(n, c, k) for k in self.ks if k <= n}
        return grades


# -- LLM judge (MT-Bench) -------------------------------------------------------------------

NEED_REF_CATEGORIES = frozenset({"math", "reasoning", "coding"})
_RATING_RE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
_RATING_BACKUP_RE = re.compile(r"\[(\d+\.?\d*)\]")


def parse_rating(text: str) -> float | None:
    """MT-Bench's verdict: the last ``[[rating]]`` (else ``[rating]``) in 1-10, or None."""
    for pattern in (_RATING_RE, _RATING_BACKUP_RE):
        found = pattern.findall(text or "")
        if found:
            try:
                value = float(found[-1])
            except ValueError:
                continue
            if 1.0 <= value <= 10.0:
                return value
    return None


def load_judge_prompts(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in rows}


class JudgeGrader(Grader):
    """Single-answer grading (MT-Bench ``single-v1``): a judge model rates each turn 1-10.

    Turn 1 uses ``single-v1`` (``single-math-v1`` with the reference answer for math,
    reasoning and coding); turn 2 the ``-multi-turn`` variants, which show the whole chat.
    The first try is greedy; a reply without a parsable ``[[rating]]`` is retried up to
    ``retries`` times, sampled (temperature 0.7, a new seed each time). A question's score
    is the mean of its turns' ratings; turns never rated are reported, not scored.
    """

    name = "mt_bench_judge"
    metric = "judge_score"
    binary = False

    def __init__(self, prompts: dict[str, dict[str, Any]], judge_model: str = "embedded", max_tokens: int = 512,
                 retries: int = 2) -> None:
        missing = {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} - set(prompts)
        if missing:
            raise ConfigError(f"judge prompts missing: {', '.join(sorted(missing))}",
                              hint="use mt_bench/judge_prompts.jsonl from FastChat's llm_judge")
        self.prompts = prompts
        self.judge_model = judge_model
        self.max_tokens = max_tokens
        self.retries = max(0, retries)
        blob = "\n".join(f"{k}:{prompts[k]['system_prompt']}:{prompts[k]['prompt_template']}" for k in sorted(prompts))
        self._digest = hashlib.sha256(blob.encode()).hexdigest()[:8]

    @property
    def version(self) -> str:
        return f"single-v1+judge={self.judge_model}+max_tokens={self.max_tokens}+prompts={self._digest}"

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "judge_model": self.judge_model, "retries": self.retries}

    def grade_text(self, item: Any, text: str) -> Grade:  # pragma: no cover - judges grade whole chats
        raise NotImplementedError("the judge grades turns with grade_runs")

    def judge_messages(self, item: Any, answers: Sequence[str], turn: int) -> tuple[str, tuple[Message, ...]]:
        rec = item.record
        turns = rec["turns"]
        ref = rec.get("reference") if rec.get("category") in NEED_REF_CATEGORIES else None
        if turn == 0:
            name = "single-math-v1" if ref else "single-v1"
            values = {"question": turns[0], "answer": answers[0]}
        else:
            name = "single-math-v1-multi-turn" if ref else "single-v1-multi-turn"
            values = {"question_1": turns[0], "question_2": turns[1], "answer_1": answers[0], "answer_2": answers[1]}
        if ref:
            values.update({"ref_answer_1": ref[0], "ref_answer_2": ref[1] if len(ref) > 1 else ""})
        prompt = self.prompts[name]
        user = prompt["prompt_template"].format(**values)
        return name, (Message("system", prompt["system_prompt"]), Message("user", user))

    def grade_runs(self, items: Sequence[Any], runs: Sequence[Sequence[QueryResult]],
                   pools: Sequence[Sequence[str]], router: Any = None) -> list[QueryGrade]:
        if router is None:
            raise ConfigError("the MT-Bench judge needs a model router (the pipeline's)")
        # One job per (question, turn); every retry round is one batched router call.
        jobs: list[dict[str, Any]] = []
        for i, (item, results) in enumerate(zip(items, runs, strict=True)):
            answers = [r.answer for r in results]
            for t in range(len(answers)):
                name, messages = self.judge_messages(item, answers, t)
                jobs.append({"item": i, "turn": t, "prompt": name, "messages": messages, "rating": None,
                             "replies": [], "usage": Usage()})
        for attempt in range(self.retries + 1):
            todo = [j for j in jobs if j["rating"] is None]
            if not todo:
                break
            requests = [GenerationRequest(model=self.judge_model, messages=j["messages"],
                                          temperature=0.0 if attempt == 0 else 0.7, max_tokens=self.max_tokens,
                                          seed=attempt) for j in todo]
            tags = [CallTag("grader:judge", f"judge:{items[j['item']].id}#t{j['turn'] + 1}") for j in todo]
            for job, res in zip(todo, router.generate(requests, tags), strict=True):
                job["usage"] = job["usage"] + res.usage
                reply = res.samples[0].text if res.samples else ""
                job["replies"].append(reply[-2000:])
                job["rating"] = parse_rating(reply)
        out = []
        for i in range(len(items)):
            mine = sorted((j for j in jobs if j["item"] == i), key=lambda j: j["turn"])
            ratings = [j["rating"] for j in mine]
            valid = [r for r in ratings if r is not None]
            usage = sum((j["usage"] for j in mine), Usage())
            details = {"ratings": ratings, "prompts": [j["prompt"] for j in mine],
                       "tries": [len(j["replies"]) for j in mine], "judge_replies": [j["replies"][-1] for j in mine]}
            if len(valid) < len(ratings):
                details["error"] = f"no [[rating]] after {self.retries + 1} tries for turn(s) " + ", ".join(
                    str(j["turn"] + 1) for j in mine if j["rating"] is None)
            out.append(QueryGrade(score=sum(valid) / len(valid) if valid else None, correct=None,
                                  extracted=None, details=details, grader_usage=usage.to_dict()))
        return out


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (scipy's); (0, 1) when n = 0.

    ``successes`` may be fractional (partial credit summed); it is rounded to the nearest
    count, since scipy's interval is defined on counts.
    """
    from scipy.stats import binomtest

    if n <= 0:
        return 0.0, 1.0
    k = min(n, max(0, round(successes)))
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def mean_interval(values: Sequence[float], z: float = 1.959963984540054) -> tuple[float, float, float]:
    """Mean and its normal-approximation 95% interval (for judge ratings)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, mean, mean
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = z * sd / math.sqrt(n)
    return mean, mean - half, mean + half
