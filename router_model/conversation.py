"""Choosing which turns of a conversation the router model sees, within a token budget."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Roles the router never sees: instructions and tool traffic say nothing about the user's intent.
DROPPED_ROLES = frozenset({"system", "developer", "tool", "function"})
TRIM_MARKER = "…"


@dataclass(frozen=True)
class Turn:
    role: str
    content: str

    def as_json(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def message_text(content: Any) -> str:
    """OpenAI content as plain text: a string, or the text parts of a list of parts joined by newlines."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type") in ("text", "input_text") and "text" in part:
                parts.append(str(part["text"]))
        return "\n".join(parts)
    return str(content)


def trim_middle(text: str, max_tokens: int, count: Callable[[str], int]) -> str:
    """Keeps the head and tail of `text` (where users frame a task and then ask) within `max_tokens`."""
    if count(text) <= max_tokens:
        return text
    if max_tokens <= 1:
        return TRIM_MARKER if max_tokens == 1 else ""
    # Binary search the number of characters kept; token counts are monotone enough in kept length.
    lo, hi = 0, len(text)
    best = TRIM_MARKER
    while lo <= hi:
        keep = (lo + hi) // 2
        head = text[: (keep + 1) // 2]
        tail = text[len(text) - keep // 2 :] if keep // 2 else ""
        candidate = head + TRIM_MARKER + tail
        if count(candidate) <= max_tokens:
            best, lo = candidate, keep + 1
        else:
            hi = keep - 1
    return best


def select_turns(
    messages: Sequence[Mapping[str, Any]],
    max_tokens: int,
    count: Callable[[str], int],
    max_turns: int = 16,
) -> list[Turn]:
    """The most recent user/assistant turns whose text fits `max_tokens` (counted by `count`).

    The newest turn always survives: if it alone is too long and comes from the user it is trimmed in the
    middle, because the latest user intent is what the router must see.
    """
    turns = [
        Turn(str(m.get("role", "user")), text)
        for m in messages
        if str(m.get("role", "user")) not in DROPPED_ROLES and (text := message_text(m.get("content")))
    ][-max_turns:]
    selected: list[Turn] = []
    used = 0
    for turn in reversed(turns):
        cost = count(turn.content)
        if used + cost <= max_tokens:
            selected.append(turn)
            used += cost
            continue
        if not selected or turn.role == "user":
            room = max_tokens - used
            if room > 0:
                selected.append(Turn(turn.role, trim_middle(turn.content, room, count)))
            elif not selected:
                selected.append(Turn(turn.role, TRIM_MARKER))
        break
    selected.reverse()
    return selected
