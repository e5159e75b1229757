"""Final-answer extraction and normalisation, with no knowledge of gold answers.

``extract_final_answer`` pulls the answer a model committed to out of free text, and
``normalize_answer`` turns it into a canonical string so that majority voting groups
``1,000`` with ``1000`` and ``\\dfrac12`` with ``\\frac{1}{2}``. Both run on every sampled
candidate, so they are plain string/regex code: deterministic, fast, no sympy. Voting must
never see gold answers, which is why grading against gold lives elsewhere
(``archon.verifiers.math_grader``).
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

__all__ = ["extract_final_answer", "find_boxed", "normalize_answer"]

_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\b")
_TOKEN_RE = re.compile(r"[^\s$]+")
_BRACE_RE = re.compile(r"(?<!\\)[{}]")
_GSM8K_RE = re.compile(r"####\s*([^\n]*)")
# "The final answer is X", "the answer is: X", "Answer: X", "**Answer:** X"; the last one wins.
_PHRASE_RE = re.compile(r"(?:final\s+answer\s*(?:is|:)|the\s+answer\s+is|\banswer\s*:)\s*:?", re.IGNORECASE)
# Where an answer phrase's answer ends: a full stop, or a clause such as "because ...".
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)|\s+(?:because|since|which|as|so)\b", re.IGNORECASE)


def find_boxed(text: str) -> list[str]:
    """Contents of every ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, in order.

    Braces are matched by counting, so ``\\boxed{\\frac{1}{2}}`` yields ``\\frac{1}{2}``
    (a regex cannot do this); ``\\{``/``\\}`` are literal braces. An unbraced
    ``\\boxed 5`` yields the next token. An unclosed box (a truncated generation) is
    ignored. Linear in ``len(text)``, even for degenerate output full of unclosed boxes.
    """
    found: list[str] = []
    closing: dict[int, int] | None = None
    n = len(text)
    for m in _BOXED_RE.finditer(text):
        i = m.end()
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            continue
        if text[i] != "{":
            tok = _TOKEN_RE.match(text, i) if i > m.end() else None
            if tok:
                found.append(tok.group(0))
            continue
        if closing is None:
            closing = _match_braces(text)
        j = closing.get(i)
        if j is not None:
            found.append(text[i + 1 : j].strip())
    return found


def _match_braces(text: str) -> dict[int, int]:
    """Index of each unescaped ``{`` -> index of its ``}``, in one pass."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _clean_phrase_answer(ans: str) -> str:
    """Trim what follows "The answer is": markdown, a sentence end, wrapping ``$``."""
    ans = ans.strip().strip("*").strip()
    m = _SENTENCE_END_RE.search(ans)
    if m:
        ans = ans[: m.start()]
    return ans.strip().strip("*").strip()


def extract_final_answer(text: str) -> str | None:
    """The answer a response commits to, or ``None`` if it commits to none.

    Priority: the last ``\\boxed{}`` (or ``\\fbox{}``); else the last GSM8K ``#### n``; else
    the last "The (final) answer is X" / "Answer: X" phrase, cut at the end of its sentence.
    The result is the raw answer text (not normalised); empty answers count as none.
    """
    if not text:
        return None
    boxed = [b for b in find_boxed(text) if b]
    if boxed:
        return boxed[-1]
    hashes = [m.group(1).strip() for m in _GSM8K_RE.finditer(text)]
    hashes = [a for a in hashes if a]
    if hashes:
        return hashes[-1]
    for m in reversed(list(_PHRASE_RE.finditer(text))):
        end = text.find("\n", m.end())
        ans = _clean_phrase_answer(text[m.end() : end if end >= 0 else len(text)])
        if ans:
            return ans
    return None


# --- normalisation -------------------------------------------------------------------------

_WRAPPERS_RE = re.compile(r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mathit|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING_RE = re.compile(r"\\[,;:! ]|\\quad|\\qquad|~")
_LEFT_RIGHT_RE = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_DEGREES_RE = re.compile(
    r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree|\s*\bdegrees?\b(?:\s*(?:celsius|fahrenheit))?",
    re.IGNORECASE,
)
_PERCENT_RE = re.compile(r"\\?%|\s*\bpercent\b")
_FRAC_ALIASES_RE = re.compile(r"\\[dt]frac(?![a-zA-Z])")
# \frac12, \frac1{2}, \frac{1}2, \frac ab: a single-character argument may go without braces.
_FRAC_ARG = r"(\{[^{}]*\}|[0-9a-zA-Z])"
_FRAC_RE = re.compile(r"\\frac\s*" + _FRAC_ARG + r"\s*" + _FRAC_ARG)
_SQRT_RE = re.compile(r"\\sqrt\s*([0-9a-zA-Z])")
_THOUSANDS_BRACED_RE = re.compile(r"(?<=\d)\{,\}(?=\d{3})")
_THOUSANDS_NUMBER_RE = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_SIMPLE_FRACTION_RE = re.compile(r"^(-?)(\d+)/(\d+)$")
_PLAIN_NUMBER_RE = re.compile(r"^[+-]?(?:\d+\.?\d*|\.\d+)$")
_CHOICE_RE = re.compile(r"^\(([A-Za-z])\)$")
_LHS_RE = re.compile(r"^[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?!=)")
# A number followed by words (units): "18 apples", "5 cm", "3 dollars".
_UNITS_RE = re.compile(r"^([+-]?[\d.,]*\d)\s+((?:[A-Za-z]{2,}\.?(?:\^\d)?\s*)+)$")
# Words that change a number's value or are mathematics, never units.
_NOT_UNITS = frozenset(
    {"pi", "sqrt", "inf", "infty", "infinity", "hundred", "thousand", "million", "billion", "trillion",
     "and", "or", "to", "times", "over", "plus", "minus", "i", "e"}
)
_WORDS_RE = re.compile(r"^[A-Za-z]+(?: [A-Za-z]+)*$")
_MAX_NUMBER_LEN = 64
_EXACT = Context(prec=_MAX_NUMBER_LEN + 2)  # the default 28 digits would merge long numbers


def _canonical_number(s: str) -> str | None:
    """``2.50`` -> ``2.5``, ``-0`` -> ``0``, ``007`` -> ``7``, ``.5`` -> ``0.5``; else None."""
    if len(s) > _MAX_NUMBER_LEN or not _PLAIN_NUMBER_RE.match(s):
        return None
    try:
        d = Decimal(s)
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None
    if d == d.to_integral_value():
        return str(int(d))
    out = format(d.normalize(_EXACT), "f")
    return "0" if out in ("-0", "0") else out


def _strip_units(s: str) -> str:
    m = _UNITS_RE.match(s)
    if not m:
        return s
    words = m.group(2).lower().replace(".", " ").replace("^", " ").split()
    if any(w.strip("0123456789") in _NOT_UNITS for w in words):
        return s
    return m.group(1)


def normalize_answer(ans: str) -> str:
    """A canonical string for comparing answers by equality (voting, string fallback).

    Removes presentation only: ``$``/``\\(\\)``, ``\\boxed{}``, ``\\text{}``-like wrappers,
    ``\\left``/``\\right``, LaTeX spacing, degrees, ``%``, ``\\$``, a trailing full stop,
    trailing unit words after a number (``18 apples``), a short left-hand side (``x = 5``)
    and all whitespace. ``\\dfrac``/``\\tfrac`` become ``\\frac`` with braced arguments,
    ``a/b`` becomes ``\\frac{a}{b}``, thousands separators go (``1,000``; only when the
    whole answer is one number, since ``1,2`` may be a pair) and a plain decimal is written
    canonically (``2.50`` -> ``2.5``, ``-0`` -> ``0``). Values are not otherwise changed:
    ``0.5`` and ``\\frac{1}{2}`` stay different strings; symbolic equivalence is the
    grader's job.
    """
    s = ans.strip()
    num = _canonical_number(s)
    if num is not None:  # the common case, e.g. GSM8K: skip the rest
        return num
    boxed = find_boxed(s)
    if boxed:
        s = boxed[-1]
    s = s.replace("\\displaystyle", "").replace("\\$", "").replace("\n", " ")
    s = s.strip().strip("$").strip()
    if (s.startswith("\\(") and s.endswith("\\)")) or (s.startswith("\\[") and s.endswith("\\]")):
        s = s[2:-2]
    for _ in range(3):  # nested wrappers: \text{\textbf{B}}
        new = _WRAPPERS_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = _SPACING_RE.sub(" ", s)
    s = _LEFT_RIGHT_RE.sub("", s)
    s = _DEGREES_RE.sub("", s)
    s = _PERCENT_RE.sub("", s)
    s = s.strip().rstrip(".").strip()
    lhs = _LHS_RE.match(s)
    if lhs and "=" not in s[lhs.end() :]:
        s = s[lhs.end() :]
    s = _strip_units(s)
    s = _FRAC_ALIASES_RE.sub(r"\\frac", s)
    s = _FRAC_RE.sub(lambda m: "\\frac" + _brace(m.group(1)) + _brace(m.group(2)), s)
    s = _SQRT_RE.sub(r"\\sqrt{\1}", s)
    s = _THOUSANDS_BRACED_RE.sub("", s)
    if _WORDS_RE.match(s) and len(s) > 1:
        s = s.lower()  # "Yes" = "yes"; single letters stay as written (variables, choices)
    s = "".join(s.split())
    s = s.rstrip(".")
    if _THOUSANDS_NUMBER_RE.match(s):
        s = s.replace(",", "")
    m = _CHOICE_RE.match(s)
    if m:
        return m.group(1)
    m = _SIMPLE_FRACTION_RE.match(s)
    if m:
        return f"{m.group(1)}\\frac{{{m.group(2)}}}{{{m.group(3)}}}"
    num = _canonical_number(s)
    return num if num is not None else s


def _brace(arg: str) -> str:
    return arg if arg.startswith("{") else "{" + arg + "}"
