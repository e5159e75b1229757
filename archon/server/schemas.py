"""The OpenAI wire format at the server's boundary: requests in, completion objects out.

Request fields fall in three groups (docs/serve.md lists them):

- honoured: ``model``, ``messages``/``prompt``, ``max_tokens`` (``max_completion_tokens``),
  ``temperature``, ``seed`` (overrides of the pipeline's defaults), ``n`` (independent
  pipeline runs), ``stop``, ``stream``, ``stream_options.include_usage``, and archon's own
  ``archon_trace``;
- refused with 400, because a pipeline cannot honour them: ``logprobs``/``top_logprobs``,
  ``echo``, ``best_of`` > 1, ``suffix``, ``tools``/``functions``, ``logit_bias``, a
  ``response_format`` other than text, non-text message parts;
- anything else (``top_p``, penalties, ``user``, ``metadata``...) is accepted and ignored.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from archon.data import ChatMessage, QueryResult

MAX_N = 16
MAX_STOP = 4


class RequestError(ValueError):
    """A request the server refuses with 400; ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class _Common(BaseModel):
    """Fields shared by chat and text completions."""

    model_config = ConfigDict(extra="allow")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    archon_trace: bool = False
    # Refused unless unset or a no-op (checked in ``refuse_unsupported``).
    logprobs: bool | int | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        return [s for s in stops if s]

    def stops(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]

    def refuse_unsupported(self) -> None:
        if self.logprobs or self.top_logprobs:
            raise RequestError("logprobs are not available: a pipeline's answer is not one model's sample",
                               "logprobs")
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by archon pipelines", "logit_bias")
        if self.tools or self.functions:
            raise RequestError("tool calling is not supported by archon pipelines", "tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise RequestError("only response_format {\"type\": \"text\"} is supported", "response_format")

    def defaults_overrides(self) -> dict[str, Any]:
        """What the request changes in the pipeline's defaults."""
        out: dict[str, Any] = {}
        if self.max_tokens is not None:
            out["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.seed is not None:
            out["seed"] = self.seed
        return out


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Common):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def defaults_overrides(self) -> dict[str, Any]:
        out = super().defaults_overrides()
        if self.max_completion_tokens is not None and self.max_tokens is None:
            out["max_tokens"] = self.max_completion_tokens
        return out

    def chat(self) -> list[ChatMessage]:
        """The conversation as archon's messages: ``developer`` is a system turn, text parts are joined."""
        out = []
        for i, m in enumerate(self.messages):
            role = "system" if m.role == "developer" else m.role
            if role not in ("system", "user", "assistant"):
                raise RequestError(f"messages[{i}].role {m.role!r} is not supported; use system, user or assistant",
                                   f"messages[{i}].role")
            if isinstance(m.content, list):
                parts = []
                for j, part in enumerate(m.content):
                    if part.get("type") != "text" or not isinstance(part.get("text"), str):
                        raise RequestError(f"messages[{i}].content[{j}]: only text parts are supported",
                                           f"messages[{i}].content")
                    parts.append(part["text"])
                text = "".join(parts)
            else:
                text = m.content or ""
            out.append(ChatMessage(role=role, content=text))
        if not any(m.role == "user" for m in out):
            raise RequestError("messages need at least one user turn", "messages")
        return out


class CompletionRequest(_Common):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.echo:
            raise RequestError("echo is not supported: archon serves generations, not prompt scoring", "echo")
        if self.best_of not in (None, 1):
            raise RequestError("best_of is not supported; put best-of-n in the pipeline instead", "best_of")
        if self.suffix:
            raise RequestError("suffix (insertion) is not supported", "suffix")
        if not self.prompts():
            raise RequestError("prompt must not be empty", "prompt")


def error_body(message: str, kind: str, *, code: str | None = None, param: str | None = None,
               **extra: Any) -> dict[str, Any]:
    """OpenAI's error object, which every SDK parses."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code, **extra}}


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """The text up to the first stop sequence (excluded), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def run_extension(result: QueryResult, *, trace: bool) -> dict[str, Any]:
    """What archon adds to a choice: cost per node, calls, cache hits, and the trace on request."""
    out: dict[str, Any] = {
        "query_id": result.id,
        "final_answer": result.final_answer,
        "usage": result.usage,
        "usage_by_node": result.usage_by_node,
        "calls": int(result.usage.get("calls", 0)),
        "cache_hits": int(result.usage.get("cache_hits", 0)),
        "latency_s": round(result.latency_s, 4),
    }
    if trace:
        out["trace"] = [t.model_dump(mode="json") for t in result.trace]
    return out


def usage_of(results: list[QueryResult]) -> dict[str, int]:
    prompt = sum(int(r.usage.get("prompt_tokens", 0)) for r in results)
    completion = sum(int(r.usage.get("completion_tokens", 0)) for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


Kind = Literal["chat", "text"]


def completion_object(kind: Kind, rid: str, model: str, answers: list[tuple[str, str]],
                      results: list[QueryResult], *, trace: bool) -> dict[str, Any]:
    """A whole (non-streamed) response; ``answers`` holds (text, finish_reason) per choice."""
    choices = []
    for i, (text, finish) in enumerate(answers):
        if kind == "chat":
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": None})
        else:
            choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": None})
    return {
        "id": rid,
        "object": "chat.completion" if kind == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage_of(results),
        "archon": {"pipeline": model, "runs": [run_extension(r, trace=trace) for r in results]},
    }


def chunk_object(kind: Kind, rid: str, model: str, created: int, choices: list[dict[str, Any]],
                 **extra: Any) -> dict[str, Any]:
    return {"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created, "model": model, "choices": choices, **extra}
