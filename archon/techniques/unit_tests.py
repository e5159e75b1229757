"""Unit tests as a ranking signal, in two kinds that are named apart.

``unit_tests`` — tests that **run** (CodeT, Chen et al. 2022; AlphaCode's clustering
by test behaviour, Li et al. 2022): for a coding question, an LLM writes ``assert``
test cases (or the task supplies them in ``query.metadata["tests"]``, which is then
used instead, with no model call), every candidate program (the code in its ````` ``` `````
fences) is executed against each test in the sandbox (``archon.verifiers.sandbox``,
with time and memory limits), and candidates are ranked by the fraction of tests they
pass, ``scores["tests_passed"]``. A program that loops forever is killed by the
timeout and fails its tests.

``nl_unit_tests`` — Archon's Unit Test Generator and Evaluator (Saad-Falcon et al.
2024): an LLM writes natural-language unit tests for the question, and an LLM judges
each candidate against them. Nothing is executed; the score is the fraction the LLM
judged passed, ``scores["nl_tests_passed"]``.
"""

from __future__ import annotations

import ast
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

from pydantic import Field

from archon import prompts
from archon.backends.types import GenerationResult
from archon.data import Candidate
from archon.scoring import NAN, order_by_score
from archon.techniques.base import NodeContext, Program, Technique, TechniqueParams, first_text

_FENCE = re.compile(r"```[ \t]*([\w+\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str) -> str:
    """The program in a reply: the last fenced Python block that defines something (else
    the last fenced block); unfenced text only when it parses as Python."""
    blocks = [(lang.lower(), body) for lang, body in _FENCE.findall(text)]
    blocks = [(lang, body) for lang, body in blocks if lang in ("", "python", "py", "python3")] or blocks
    if blocks:
        defining = [b for _, b in blocks if re.search(r"^\s*(def|class)\s", b, re.MULTILINE)]
        return (defining or [b for _, b in blocks])[-1].strip("\n")
    try:
        ast.parse(text)
    except SyntaxError:
        return ""
    return text.strip("\n")


def parse_tests(text: str) -> list[str]:
    """Top-level ``assert`` statements from a reply or a test file, deduplicated, in order.

    The fenced blocks are read if there are any; a block that does not parse as a whole
    is read line by line (each line that parses alone as an ``assert`` counts).
    """
    blocks = [body for _, body in _FENCE.findall(text)] or [text]
    tests: list[str] = []
    for block in blocks:
        try:
            tree = ast.parse(block)
        except SyntaxError:
            for line in block.splitlines():
                stripped = line.strip()
                if stripped.startswith("assert"):
                    try:
                        if isinstance(ast.parse(stripped).body[0], ast.Assert):
                            tests.append(stripped)
                    except SyntaxError:
                        continue
            continue
        for node in tree.body:
            if isinstance(node, ast.Assert):
                segment = ast.get_source_segment(block, node)
                if segment:
                    tests.append(segment)
    return list(dict.fromkeys(tests))


def load_task_tests(value: Any) -> list[str]:
    """``query.metadata["tests"]``: a list of test snippets, or one test program (split into
    its top-level asserts; kept whole when it has none)."""
    if isinstance(value, str):
        return parse_tests(value) or ([value] if value.strip() else [])
    if isinstance(value, (list, tuple)):
        return [str(t) for t in value if str(t).strip()]
    return []


class UnitTestsParams(TechniqueParams):
    tests_from: Literal["auto", "metadata", "llm"] = Field(
        "auto", description="auto: query.metadata['tests'] when present, else LLM-written tests")
    num_tests: int = Field(5, ge=1, le=50, description="tests the LLM is asked to write per sample")
    test_samples: int = Field(1, ge=1, le=16, description="LLM test-writing samples (their tests are pooled)")
    max_tests: int = Field(20, ge=1, le=200, description="most tests run per candidate")
    timeout_s: float = Field(5.0, gt=0, le=120, description="wall time for loading the program, and for each test")
    memory_mb: int = Field(512, ge=32, description="memory limit per sandboxed run")
    workers: int = Field(2, ge=1, le=32, description="sandboxed runs in parallel")
    top_k: int | None = Field(None, ge=1, description="candidates kept (null: all, best first)")


class _KeepsTopK(Technique):
    def output_count(self, inputs: int) -> int:
        top_k = getattr(self.params, "top_k", None)
        return inputs if top_k is None else min(top_k, inputs)


class UnitTests(_KeepsTopK):
    name = "unit_tests"
    Params = UnitTestsParams
    description = "LLM-written (or given) assert tests executed in the sandbox; rank by tests passed"
    params: UnitTestsParams

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidates to test")
            return []
        p = self.params
        meta = ctx.query.metadata.get("tests")
        tests: list[str] = []
        if p.tests_from in ("auto", "metadata") and meta is not None:
            tests = load_task_tests(meta)
            ctx.note(f"{len(tests)} tests from the task")
        elif p.tests_from == "metadata":
            ctx.note("tests_from=metadata but the query has no metadata['tests']")
        else:
            prompt = prompts.render("unit_tests_write.j2", p.prompt_template, question=ctx.query.question_text(),
                                    num_tests=p.num_tests, entry_point=ctx.query.metadata.get("entry_point"))
            (result,) = yield [self.request(ctx, prompt, n=p.test_samples)]
            texts = result.texts if isinstance(result, GenerationResult) else []
            if not texts:
                ctx.note("test writing skipped (budget)")
            tests = list(dict.fromkeys(t for text in texts for t in parse_tests(text)))
            ctx.note(f"{len(tests)} tests written by the LLM")
        tests = tests[: p.max_tests]
        if not tests:
            ctx.note("no tests to run; kept the input order")
            return list(inputs) if p.top_k is None else list(inputs)[: p.top_k]
        programs = [extract_code(c.text) for c in inputs]
        outcomes = self._execute(programs, tests)
        out: list[Candidate] = []
        values: list[float] = []
        for i, (cand, code, passed) in enumerate(zip(inputs, programs, outcomes, strict=True)):
            if not code:
                ctx.note(f"candidate {i + 1}: no code found")
            fraction = sum(passed) / len(tests)
            values.append(fraction)
            out.append(cand.derive(scores={**cand.scores, "tests_passed": fraction},
                                   metadata={**cand.metadata, "tests_passed": [bool(x) for x in passed],
                                             "score_key": "tests_passed"}))
        ctx.note("tests passed: " + ", ".join(f"{sum(o)}/{len(tests)}" for o in outcomes))
        ranked = [out[i] for i in order_by_score(values)]
        return ranked if p.top_k is None else ranked[: p.top_k]

    def _execute(self, programs: list[str], tests: list[str]) -> list[list[bool]]:
        """Per program, per test: passed? Programs without code fail everything."""
        p = self.params
        jobs = [(i, code) for i, code in enumerate(programs) if code]
        results: list[list[bool]] = [[False] * len(tests) for _ in programs]

        def one(job: tuple[int, str]) -> tuple[int, list[bool]]:
            i, code = job
            return i, run_program_tests(code, tests, timeout_s=p.timeout_s, memory_mb=p.memory_mb)

        if jobs:
            with ThreadPoolExecutor(max_workers=min(p.workers, len(jobs))) as pool:
                for i, passed in pool.map(one, jobs):
                    results[i] = passed
        return results


_HARNESS = """
import signal as _signal, sys as _sys
class _TestTimeout(BaseException):
    pass
def _on_alarm(*_):
    raise _TestTimeout()
_signal.signal(_signal.SIGALRM, _on_alarm)
def _run(_src, _name, _ns, _limit):
    _signal.setitimer(_signal.ITIMER_REAL, _limit)
    try:
        exec(compile(_src, _name, "exec"), _ns)
        return True
    except BaseException:
        return False
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
_ns = {"__name__": "solution", "__builtins__": __builtins__}
_ok = _run(%(program)r, "<program>", _ns, %(limit)r)
_sys.stdout.write("\\n%(marker)s load %%d\\n" %% _ok)
_sys.stdout.flush()
if _ok:
    for _i, _t in enumerate(%(tests)r):
        _passed = _run(_t, "<test %%d>" %% (_i + 1), _ns, %(limit)r)
        _sys.stdout.write("\\n%(marker)s test %%d %%d\\n" %% (_i, _passed))
        _sys.stdout.flush()
"""


def run_program_tests(program: str, tests: list[str], *, timeout_s: float = 5.0, memory_mb: int = 512) -> list[bool]:
    """Run ``program`` once in the sandbox, then each test in its namespace; which passed?

    One sandboxed process per program. Loading the program and each test get
    ``timeout_s`` of wall time apiece (an interval timer raises inside them), and the
    whole run is killed after ``timeout_s * (tests + 1) + 2`` seconds, so a program stuck
    in C code or swallowing the timer still ends; tests that did not report fail.
    """
    from archon.verifiers.sandbox import run_python

    marker = f"@@archon-unit-test-{secrets.token_hex(8)}@@"
    source = _HARNESS % {"program": program, "tests": list(tests), "limit": float(timeout_s), "marker": marker}
    result = run_python(source, timeout_s=timeout_s * (len(tests) + 1) + 2.0, memory_mb=memory_mb)
    passed = [False] * len(tests)
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == marker and parts[1] == "test":
            idx = int(parts[2])
            if 0 <= idx < len(tests):
                passed[idx] = parts[3] == "1"
    return passed


# -- natural-language unit tests (Archon) ---------------------------------------------------

_NUMBERED = re.compile(r"^\s*(?:\d+[.):]|[-*•])\s+(.+?)\s*$", re.MULTILINE)
_VERDICT = re.compile(r"test\s*#?\s*(\d+)\s*[:\-=]?\s*\**\s*(pass(?:ed|es)?|fail(?:ed|s)?)", re.IGNORECASE)


def parse_nl_tests(text: str, limit: int) -> list[str]:
    """Numbered or bulleted lines."""
    tests = [t.strip() for t in _NUMBERED.findall(text) if len(t.strip()) > 3]
    return list(dict.fromkeys(tests))[:limit]


def parse_test_verdicts(text: str, count: int) -> dict[int, bool]:
    """``{test index (0-based): passed}`` from "Test 2: pass" lines (last one per test wins)."""
    out: dict[int, bool] = {}
    for idx, verdict in _VERDICT.findall(text):
        i = int(idx) - 1
        if 0 <= i < count:
            out[i] = verdict.lower().startswith("pass")
    return out


class NLUnitTestsParams(TechniqueParams):
    num_tests: int = Field(5, ge=1, le=20, description="natural-language tests the LLM writes")
    judge_model: str | None = Field(None, description="model judging candidates against the tests (default: model)")
    top_k: int | None = Field(None, ge=1, description="candidates kept (null: all, best first)")
    key: str = Field("nl_tests_passed", description="score name for the fraction judged passed")


class NLUnitTests(_KeepsTopK):
    name = "nl_unit_tests"
    Params = NLUnitTestsParams
    description = "Archon's natural-language unit tests: LLM-written, LLM-judged per candidate (not executed)"
    params: NLUnitTestsParams

    def models(self, defaults):  # type: ignore[no-untyped-def]
        model = self.params.model or defaults.model
        return list(dict.fromkeys([model, self.params.judge_model or model]))

    def run(self, ctx: NodeContext, inputs: list[Candidate]) -> Program:
        if not inputs:
            ctx.note("no candidates to test")
            return []
        p = self.params
        question = ctx.query.question_text()
        (result,) = yield [self.request(ctx, prompts.render("nl_unit_tests_write.j2", p.prompt_template,
                                                            question=question, num_tests=p.num_tests))]
        text = first_text(result)
        tests = parse_nl_tests(text, p.num_tests) if text is not None else []
        if not tests:
            ctx.note("unit test writing " + ("skipped (budget)" if text is None else "gave no tests")
                     + "; kept the input order")
            return list(inputs) if p.top_k is None else list(inputs)[: p.top_k]
        ctx.note(f"{len(tests)} natural-language unit tests")
        requests = [self.request(ctx, prompts.render("nl_unit_tests_judge.j2", None, question=question, tests=tests,
                                                     candidate=c.text), model=p.judge_model)
                    for c in inputs]
        results = yield list(requests)
        out: list[Candidate] = []
        values: list[float] = []
        for i, (cand, res) in enumerate(zip(inputs, results, strict=True)):
            reply = first_text(res)
            if reply is None:
                ctx.note(f"candidate {i + 1}: judging skipped (budget)")
                out.append(cand)
                values.append(NAN)
                continue
            verdicts = parse_test_verdicts(reply, len(tests))
            if len(verdicts) < len(tests):
                ctx.note(f"candidate {i + 1}: {len(tests) - len(verdicts)} of {len(tests)} tests without a "
                         "verdict (counted as failed)")
            fraction = sum(verdicts.values()) / len(tests)
            values.append(fraction)
            out.append(cand.derive(scores={**cand.scores, p.key: fraction},
                                   metadata={**cand.metadata, "nl_unit_tests": tests, "score_key": p.key}))
        ranked = [out[i] for i in order_by_score(values)]
        return ranked if p.top_k is None else ranked[: p.top_k]
