"""What an OpenAI-compatible server says about itself: its kind and its Prometheus counters.

Two cheap GETs, both optional. ``/v1/models`` names who serves the model (``owned_by``:
``vllm``, ``sglang``, ``llamacpp``; llama-cpp-python says ``me``), which decides how many
requests are worth having in flight. ``/metrics`` (vLLM) holds the server's own token and
prefix-cache counters: read before and after a run, their difference is what the run cost
the server, the check on what clients were told (a server started without
``--enable-prompt-tokens-details`` reports no cache hits to clients at all).
"""

from __future__ import annotations

import re
from typing import Literal

import httpx

ServerKind = Literal["vllm", "sglang", "llama.cpp", "other"]

# Requests in flight per base URL when a spec leaves ``max_concurrency`` unset. vLLM and
# SGLang batch continuously: a whole level (e.g. 16 questions x 8 particles) should reach
# the scheduler at once. llama.cpp's servers decode one request at a time: two in flight
# keep it busy without piling timeouts up behind it. Anything else (hosted APIs): 16.
SERVER_CONCURRENCY: dict[ServerKind, int] = {"vllm": 256, "sglang": 256, "llama.cpp": 2, "other": 16}

# Servers that get one request per sample (see OpenAIBackend): they batch them anyway.
PER_SAMPLE_KINDS: frozenset[str] = frozenset({"vllm", "sglang"})

_OWNERS: dict[str, ServerKind] = {"vllm": "vllm", "sglang": "sglang", "llamacpp": "llama.cpp", "me": "llama.cpp"}

# Counters worth a before/after difference (vLLM names; Prometheus adds `_total`).
COUNTERS = ("prefix_cache_queries", "prefix_cache_hits", "prompt_tokens", "generation_tokens", "request_success")
_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def detect_kind(base_url: str, api_key: str = "", timeout_s: float = 3.0) -> ServerKind:
    """The server behind ``base_url`` from ``GET /models``; ``other`` when it does not say."""
    try:
        response = httpx.get(f"{base_url.rstrip('/')}/models", headers=_headers(api_key), timeout=timeout_s)
        data = response.json().get("data") or []
    except (httpx.HTTPError, ValueError, AttributeError):
        return "other"
    owners = {str(m.get("owned_by", "")).lower() for m in data if isinstance(m, dict)}
    for owner in owners:
        if owner in _OWNERS:
            return _OWNERS[owner]
    return "other"


def metrics_url(base_url: str) -> str:
    """``http://host:port/v1`` -> ``http://host:port/metrics`` (Prometheus lives at the root)."""
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


def parse_counters(text: str, model: str | None = None) -> dict[str, float]:
    """Sum of each counter in ``COUNTERS`` over its label sets (only ``model_name=model`` if given)."""
    totals: dict[str, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or line.startswith("#"):
            continue
        name = m.group("name").removeprefix("vllm:").removesuffix("_total")
        if name not in COUNTERS or m.group("name").endswith("_created"):
            continue
        labels = dict(_LABEL.findall(m.group("labels") or ""))
        if model is not None and labels.get("model_name", model) != model:
            continue
        try:
            totals[name] = totals.get(name, 0.0) + float(m.group("value"))
        except ValueError:
            continue
    return totals


def read_counters(base_url: str, model: str | None = None, api_key: str = "",
                  timeout_s: float = 5.0) -> dict[str, float] | None:
    """The server's counters now, or None when it has no ``/metrics`` (llama.cpp, hosted APIs)."""
    try:
        response = httpx.get(metrics_url(base_url), headers=_headers(api_key), timeout=timeout_s)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    counters = parse_counters(response.text, model)
    return counters or None
