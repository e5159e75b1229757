"""What flows through a pipeline: queries in, candidates along edges, results out.

These are pydantic models because they cross boundaries (results files, traces, the
SDK). A query never carries a gold answer: graders get gold answers, techniques never do.
"""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

_ids = itertools.count()


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: str
    content: str


class Query(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    def question_text(self) -> str:
        """The question as plain text, for prompts that embed it (fusers, judges)."""
        if self.prompt is not None:
            return self.prompt
        return "\n\n".join(m.content for m in self.messages or [] if m.role == "user")


class Candidate(BaseModel):
    """One proposed answer. A critique or score is attached to the candidate it is
    about, so it can never drift onto another candidate when lists are reordered."""

    id: str = Field(default_factory=lambda: f"c{next(_ids)}")
    text: str
    answer: str | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    critique: str | None = None
    node: str = ""
    model: str = ""
    parents: list[str] = Field(default_factory=list)
    metadata: dict[str, Any] = Field(default_factory=dict)

    def derive(self, **changes: Any) -> Candidate:
        """A copy carrying the same lineage; nodes never mutate their inputs."""
        return self.model_copy(update=changes, deep=True)


class CallRecord(BaseModel):
    """One request a node made, as the trace shows it."""

    model: str
    prompt: str
    n: int
    outputs: list[str]
    usage: dict[str, int | float]


class NodeTrace(BaseModel):
    node: str
    technique: str
    inputs: list[str] = Field(default_factory=list)
    outputs: list[Candidate] = Field(default_factory=list)
    calls: list[CallRecord] = Field(default_factory=list)
    usage: dict[str, int | float] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)


class QueryResult(BaseModel):
    """A pipeline's answer to one query, with what it cost and how it got there."""

    id: str
    answer: str
    final_answer: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    usage: dict[str, int | float] = Field(default_factory=dict)
    usage_by_node: dict[str, dict[str, int | float]] = Field(default_factory=dict)
    latency_s: float = 0.0
    trace: list[NodeTrace] = Field(default_factory=list)
    error: str | None = None
