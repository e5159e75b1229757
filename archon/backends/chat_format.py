"""Turn chat messages into prompt text for engines that lack a chat template.

The embedded Gemma 3 GGUF ships without one; Gemma's turn format has no system role,
so a system message is folded into the first user turn (as Gemma's own template does).
"""

from __future__ import annotations

from collections.abc import Sequence

from archon.backends.types import Message


def render_gemma(messages: Sequence[Message], assistant_prefix: str = "") -> str:
    parts: list[str] = []
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    first_user = True
    for m in messages:
        if m.role == "system":
            continue
        role = "model" if m.role == "assistant" else "user"
        content = m.content
        if role == "user" and first_user and system:
            content = f"{system}\n\n{content}"
            first_user = False
        parts.append(f"<start_of_turn>{role}\n{content}<end_of_turn>\n")
    parts.append("<start_of_turn>model\n" + assistant_prefix)
    return "".join(parts)


GEMMA_STOPS = ("<end_of_turn>", "<start_of_turn>")
