"""Runtime profiles: the idealized runtime of one call, from its token counts alone.

Narayanan et al., "Cheaply Evaluating Inference Efficiency Metrics for Autoregressive
Transformer APIs" (NeurIPS 2023), define a query's *idealized runtime* as the time it would
take on uniform hardware and software with no contention, and estimate it with a per-model
cost model fitted on an otherwise idle engine:

    runtime(p, o) = F(p) + g * (o - 1)        (o >= 1 output tokens)

``F(p)`` is the time to encode a ``p``-token prompt (which also yields the first output
token), piecewise linear in ``p`` (the paper profiles a set of prompt lengths and
interpolates between them); ``g`` is the time of each further output token. Both come from
least squares over a sweep of prompt and output lengths. Measured latency, by contrast,
moves with the machine's load and the server's batching; the idealized runtime depends only
on the token counts and the profile, so it ranks pipelines the same way on any day.

archon adds one term the paper does not have, because its engines cache prefixes: prompt
tokens served from a prefix cache cost ``c`` each (attention still reads them), fitted from
a second sweep that re-sends a cached prompt with a short new suffix. ``F`` then applies to
the *uncached* prompt tokens only:

    idealized(u, c_tok, o) = F(u) + c * c_tok + g * max(o - 1, 0)

Engines that do not report cached tokens count every prompt token as uncached.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from archon.errors import ConfigError

BUNDLED_PACKAGE = "archon.profiles"
BUNDLED_EMBEDDED = "embedded.json"


class RuntimeCoefficients(BaseModel):
    """The fitted cost model. ``F`` is linear between knots and extended along the first
    and last segments outside them (clamped at 0)."""

    model_config = ConfigDict(extra="forbid")

    prompt_knots: list[float] = Field(description="uncached prompt lengths (tokens) where F is known")
    prompt_runtime_s: list[float] = Field(description="F at each knot: seconds to encode that many tokens")
    per_output_token_s: float = Field(ge=0, description="g: seconds per output token after the first")
    per_cached_token_s: float = Field(0.0, ge=0, description="c: seconds per prompt token served from a cache")

    @model_validator(mode="after")
    def _shape(self) -> RuntimeCoefficients:
        if len(self.prompt_knots) < 2:
            raise ValueError("prompt_knots needs at least two prompt lengths")
        if len(self.prompt_knots) != len(self.prompt_runtime_s):
            raise ValueError("prompt_knots and prompt_runtime_s must have the same length")
        if any(b <= a for a, b in zip(self.prompt_knots, self.prompt_knots[1:], strict=False)):
            raise ValueError("prompt_knots must be strictly increasing")
        return self

    def prompt_runtime(self, uncached: float) -> float:
        """F(uncached), linear between knots and along the end segments outside them."""
        w = knot_weights(self.prompt_knots, uncached)
        return max(0.0, float(sum(wi * fi for wi, fi in zip(w, self.prompt_runtime_s, strict=True))))

    def predict(self, uncached: float, cached: float, generated: float) -> float:
        return (self.prompt_runtime(uncached) + self.per_cached_token_s * cached
                + self.per_output_token_s * max(generated - 1.0, 0.0))


class ProfileMeasurement(BaseModel):
    """One point of the sweep: token counts as the engine reported them, the median runtime."""

    model_config = ConfigDict(extra="forbid")

    uncached_prompt_tokens: int
    cached_prompt_tokens: int = 0
    generated_tokens: int
    runtime_s: float
    repeats_s: list[float] = Field(default_factory=list)


class RuntimeProfile(BaseModel):
    """A model's runtime profile as written by ``archon models profile``."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[1] = 1
    model: str
    engine: dict[str, Any] = Field(default_factory=dict)  # backend kind, package and version, settings
    hardware: dict[str, Any] = Field(default_factory=dict)  # where it was measured
    versions: dict[str, str] = Field(default_factory=dict)  # python, archon, numpy, scipy
    created_at: str = ""
    method: dict[str, Any] = Field(default_factory=dict)  # warm-up, repeats, statistic, sweep
    coefficients: RuntimeCoefficients
    fit: dict[str, float] = Field(default_factory=dict)  # r2, rmse_s, max_abs_error_s
    measurements: list[ProfileMeasurement] = Field(default_factory=list)

    def predict(self, uncached: float, cached: float = 0.0, generated: float = 0.0) -> float:
        """Idealized seconds of one call with these token counts."""
        return self.coefficients.predict(uncached, cached, generated)

    def describe(self) -> str:
        c = self.coefficients
        where = self.hardware.get("cpu") or self.hardware.get("machine") or "?"
        return (f"{self.model} on {self.engine.get('backend', '?')} ({where}): "
                f"F({int(c.prompt_knots[0])})={c.prompt_runtime_s[0]:.3f}s .. "
                f"F({int(c.prompt_knots[-1])})={c.prompt_runtime_s[-1]:.3f}s, "
                f"{1000 * c.per_output_token_s:.1f} ms/output token, "
                f"{1e6 * c.per_cached_token_s:.1f} us/cached token")

    def save(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.model_dump_json(indent=2) + "\n")
        return p

    @classmethod
    def load(cls, path: str | Path, *, field: str = "runtime_profile") -> RuntimeProfile:
        """Read a profile file; errors name the file, the field at fault and the fix."""
        p = Path(path)
        hint = "write one with `archon models profile MODEL --out FILE`"
        if not p.is_file():
            raise ConfigError(f"runtime profile not found: {p}", path=field, hint=hint)
        try:
            data = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"runtime profile is not valid JSON: {exc}", file=str(p), path=field,
                              hint=hint) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            e = exc.errors()[0]
            where = ".".join(str(x) for x in e["loc"]) or "(top level)"
            raise ConfigError(f"runtime profile field {where}: {e['msg']}", file=str(p), path=field,
                              hint=hint) from None


# -- the fit ------------------------------------------------------------------------------

def knot_weights(knots: Sequence[float], x: float) -> list[float]:
    """Weights of the knot values in the piecewise-linear F(x): two neighbours share 1,
    and outside the knots the first or last segment is extended."""
    k = list(knots)
    i = 0
    while i < len(k) - 2 and x > k[i + 1]:
        i += 1
    t = (x - k[i]) / (k[i + 1] - k[i])
    w = [0.0] * len(k)
    w[i], w[i + 1] = 1.0 - t, t
    return w


@dataclass(frozen=True)
class Timing:
    """One measured call: token counts and seconds."""

    uncached: float
    cached: float
    generated: float
    seconds: float


def fit_coefficients(timings: Sequence[Timing], knots: Sequence[float]) -> tuple[RuntimeCoefficients, dict[str, float]]:
    """Least squares for F's knot values, c and g (all bounded below by 0).

    ``knots`` are the prompt lengths of the sweep; with no cached timings c is 0.
    """
    knots = sorted({float(x) for x in knots})
    if len(knots) < 2:
        raise ValueError("the fit needs at least two distinct prompt lengths")
    if len(timings) < len(knots) + 1:
        raise ValueError(f"the fit needs more timings ({len(timings)}) than unknowns ({len(knots) + 1})")
    from scipy.optimize import lsq_linear

    with_cached = any(t.cached > 0 for t in timings)
    rows = []
    for t in timings:
        row = knot_weights(knots, t.uncached)
        if with_cached:
            row.append(t.cached)
        row.append(max(t.generated - 1.0, 0.0))
        rows.append(row)
    a = np.asarray(rows, dtype=np.float64)
    y = np.asarray([t.seconds for t in timings], dtype=np.float64)
    scale = np.maximum(np.abs(a).max(axis=0), 1e-12)  # columns of very different size: condition the solve
    sol = lsq_linear(a / scale, y, bounds=(0.0, np.inf), method="bvls")
    theta = sol.x / scale
    n_k = len(knots)
    coeffs = RuntimeCoefficients(
        prompt_knots=knots, prompt_runtime_s=[float(v) for v in theta[:n_k]],
        per_cached_token_s=float(theta[n_k]) if with_cached else 0.0,
        per_output_token_s=float(theta[-1]))
    pred = a @ theta
    resid = y - pred
    ss_tot = float(((y - y.mean()) ** 2).sum())
    stats = {"r2": 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0,
             "rmse_s": float(np.sqrt((resid ** 2).mean())), "max_abs_error_s": float(np.abs(resid).max()),
             "points": float(len(timings))}
    return coeffs, stats


# -- which profile a model uses -----------------------------------------------------------

@dataclass(frozen=True)
class ProfileLookup:
    """A model's profile, or why it has none (shown where the figure would be)."""

    profile: RuntimeProfile | None
    source: str = ""  # the file it came from
    reason: str = ""  # why there is none


def bundled_profile_path(name: str = BUNDLED_EMBEDDED) -> Path | None:
    try:
        path = resources.files(BUNDLED_PACKAGE).joinpath(name)
    except ModuleNotFoundError:  # pragma: no cover - a broken install
        return None
    return Path(str(path)) if path.is_file() else None


def resolve_profile(name: str, spec: Any) -> ProfileLookup:
    """The profile for model ``name`` with spec ``spec`` (a ``ModelSpec``).

    ``runtime_profile: PATH`` on the spec wins; the bundled embedded model (llama.cpp on
    its packaged GGUF) falls back to the profile shipped in the package.
    """
    from archon.backends.registry import EMBEDDED_NAME

    path = getattr(spec, "runtime_profile", None)
    if path:
        profile = RuntimeProfile.load(path, field=f"models.{name}.runtime_profile")
        return ProfileLookup(profile, source=str(path))
    if name == EMBEDDED_NAME and spec.backend == "llama_cpp" and not spec.path:
        bundled = bundled_profile_path()
        if bundled is not None:
            return ProfileLookup(RuntimeProfile.load(bundled), source=f"bundled:{bundled.name}")
    return ProfileLookup(None, reason=f"model {name!r} has no runtime profile: measure one with `archon models "
                                      f"profile {name} --out FILE` and set `models.{name}.runtime_profile: FILE`")


def accelerators(spec: Any) -> int:
    """Accelerators one replica of the model needs: ``accelerators:``, else TP x PP."""
    if getattr(spec, "accelerators", None):
        return int(spec.accelerators)
    return int(spec.tensor_parallel_size or 1) * int(getattr(spec, "pipeline_parallel_size", None) or 1)
