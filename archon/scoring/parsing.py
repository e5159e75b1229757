"""Reading a judge's reply: scores, preferences, verdicts, and digit distributions.

Every "LLM says a number" parser lives here once; judges, pairwise and GRM scorers,
``verify`` and ``refine`` all read replies through these functions.
"""

from __future__ import annotations

import math
import re
from typing import Literal

from archon.backends.types import GenerationResult, Sample, ScoreResult
from archon.scoring.values import two_way

# -- pointwise scores ---------------------------------------------------------------------------

_NUM = r"(\d+(?:\.\d+)?)"
_SCORE_PATTERNS = (
    re.compile(r"(?:score|rating|grade)\s*(?:\([^)\n]*\))?\s*(?:is|of)?\s*[:=\-]?\s*[*_\s]*\[*\s*" + _NUM,
               re.IGNORECASE),
    re.compile(r"\[\[\s*" + _NUM + r"\s*\]\]"),
    re.compile(_NUM + r"\s*/\s*\d+"),
    re.compile(_NUM + r"\s+out\s+of\s+\d+", re.IGNORECASE),
    re.compile(r"^\s*[*_]*" + _NUM + r"[*_.]*\s*$"),
)


def parse_score(text: str, low: float = 1, high: float = 10) -> tuple[float, int] | None:
    """The judge's score and where its digits start in ``text``; None when absent.

    Accepts ``Score: 7``, ``**Rating:** 8/10``, ``[[6]]``, ``7/10``, ``7 out of 10`` or
    a bare number; the last in-range match of the most explicit form wins.
    """
    for pattern in _SCORE_PATTERNS:
        found = [(float(m.group(1)), m.start(1)) for m in pattern.finditer(text)
                 if low <= float(m.group(1)) <= high]
        if found:
            return found[-1]
    return None


# -- digit distributions (G-Eval style expected scores) -------------------------------------------

def _alternatives(sample: Sample, position: int) -> dict[str, float]:
    tok = sample.logprobs[position]  # type: ignore[index]
    top = dict(tok.top)
    top.setdefault(tok.token, tok.logprob)
    return top


def _digit_mass(top: dict[str, float], low: int, high: int, single: bool) -> dict[int, float]:
    mass: dict[int, float] = {}
    for piece, lp in top.items():
        s = piece.strip()
        if s.isdigit() and (not single or len(s) == 1) and low <= int(s) <= high:
            mass[int(s)] = mass.get(int(s), 0.0) + math.exp(lp)
    return mass


def _expected(mass: dict[int, float]) -> float | None:
    total = sum(mass.values())
    return sum(v * p for v, p in mass.items()) / total if total > 0 else None


def expected_digit_score(sample: Sample, low: int, high: int) -> float | None:
    """Expected score under the top-logprob distribution of the token where the score starts.

    The score is located in the concatenated token texts (so offsets match the tokens).
    Exact when every score value is a single token (Gemma splits numbers into digits, so a
    1-9 scale is exact; a reply of ``10`` falls back to the parsed value). None when the
    sample carries no log-probabilities or the score is not one token.
    """
    if not sample.logprobs:
        return None
    joined = "".join(t.token for t in sample.logprobs)
    parsed = parse_score(joined, low, high)
    if parsed is None:
        return None
    start = parsed[1]
    number = re.match(r"\d+", joined[start:])
    pos = 0
    for i, tok in enumerate(sample.logprobs):
        end = pos + len(tok.token)
        if end > start:
            if number is None or tok.token.strip() != number.group(0):
                return None
            return _expected(_digit_mass(_alternatives(sample, i), low, high, single=False))
        pos = end
    return None


def digit_score(sample: Sample | None, mode: str = "weighted", low: int = 0, high: int = 9) -> float | None:
    """A one-token ``low``-``high`` score from the FIRST token: the probability-weighted mean
    digit over the digit tokens among its top log-probs (``weighted``) or the greedy digit
    (``greedy``). Without log-probabilities the first digit of the text is used. None: no digit.
    """
    if sample is None:
        return None
    mass = _digit_mass(_alternatives(sample, 0), low, high, single=True) if sample.logprobs else {}
    if not mass:
        m = re.search(r"\d", sample.text)
        return float(m.group(0)) if m and low <= int(m.group(0)) <= high else None
    if mode == "greedy":
        chosen = sample.logprobs[0].token.strip() if sample.logprobs else ""
        if len(chosen) == 1 and chosen.isdigit():
            return float(chosen)
        return float(max(mass, key=lambda d: (mass[d], -d)))
    return _expected(mass)


def yes_probability(result: GenerationResult | ScoreResult | None, yes: str = "yes", no: str = "no") -> float | None:
    """P(yes) / (P(yes) + P(no)) from a ``ScoreRequest`` on (yes, no) continuations or from the
    top log-probs of a one-token generation. None when the call was skipped or neither appears."""
    if isinstance(result, ScoreResult):
        if len(result.logprobs) < 2:
            return None
        return two_way(result.logprobs[0], result.logprobs[1])
    if not isinstance(result, GenerationResult) or not result.samples:
        return None
    sample = result.samples[0]
    p_yes = p_no = 0.0
    if sample.logprobs:
        for piece, lp in _alternatives(sample, 0).items():
            s = piece.strip().lower()
            if s == yes:
                p_yes += math.exp(lp)
            elif s == no:
                p_no += math.exp(lp)
    if p_yes + p_no == 0.0:
        s = sample.text.strip().lower()
        return 1.0 if s.startswith(yes) else 0.0 if s.startswith(no) else None
    return p_yes / (p_yes + p_no)


# -- verdicts -------------------------------------------------------------------------------------

_VERDICT = re.compile(r"verdict\s*[:\-]?\s*\**\s*(yes|no|correct|incorrect)", re.IGNORECASE)
_WORD = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_verdict(text: str) -> bool | None:
    """True/False from "Verdict: yes/no"; the last verdict wins; None when absent."""
    found = _VERDICT.findall(text)
    if found:
        return found[-1].lower() in ("yes", "correct")
    words = _WORD.findall(text)
    if words:
        return words[-1].lower() == "yes"
    return None


# -- pairwise preferences ------------------------------------------------------------------------

_WINNER = re.compile(r"(?:winner|better(?:\s+response)?|preferred|verdict)\s*(?:is)?\s*[:\-]?\s*[*_\s\[]*"
                     r"(?:response\s+)?\b(A|B|tie)\b", re.IGNORECASE)
_BRACKET = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_RESPONSE_BETTER = re.compile(r"response\s+(A|B)\s+is\s+(?:better|preferred|superior)", re.IGNORECASE)


def parse_preference(text: str) -> Literal["A", "B", "tie"] | None:
    """``A``, ``B`` or ``tie`` from "Winner: A", "[[B]]" (MT-Bench; ``[[C]]`` = tie) or
    "Response A is better"; the last explicit verdict wins; None when absent."""
    for pattern in (_WINNER, _BRACKET, _RESPONSE_BETTER):
        found = pattern.findall(text)
        if found:
            v = found[-1].upper()
            return "tie" if v in ("TIE", "C") else v  # type: ignore[return-value]
    return None


# -- GRM score lists -------------------------------------------------------------------------------

_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_SCORES_LINE = re.compile(r"scores?\s*[:=]\s*\[?([\d.,\s]+)\]?", re.IGNORECASE)
_PER_RESPONSE = re.compile(r"(?:response|candidate)\s*#?\s*(\d+)\s*(?:score)?\s*[:=\-]\s*\**\s*(\d+(?:\.\d+)?)",
                           re.IGNORECASE)


def parse_score_list(text: str, count: int, low: float = 1, high: float = 10) -> list[float] | None:
    """``count`` scores from a GRM reply: ``\\boxed{7, 3}``, ``Scores: [7, 3]`` or
    ``Response 1: 7`` lines; the last complete list wins; None if none is complete."""
    def valid(values: list[float]) -> bool:
        return len(values) == count and all(low <= v <= high for v in values)

    for pattern in (_BOXED, _SCORES_LINE):
        for m in reversed(list(pattern.finditer(text))):
            values = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", m.group(1))]
            if valid(values):
                return values
    per: dict[int, float] = {}
    for idx, value in _PER_RESPONSE.findall(text):
        per[int(idx)] = float(value)
    values = [per[i] for i in range(1, count + 1) if i in per]
    return values if valid(values) else None


__all__ = ["digit_score", "expected_digit_score", "parse_preference", "parse_score", "parse_score_list",
           "parse_verdict", "yes_probability"]
