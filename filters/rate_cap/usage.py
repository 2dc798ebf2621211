"""Token accounting for rate_cap: the estimate of a request's input (the core records the real usage after)."""

from __future__ import annotations

import json
from typing import Any

from core.flow import content_text

# Token estimate before the call (documented in docs/filters/rate_cap.md): ~4 characters per token,
# plus a few tokens of framing per message and per request, and a flat cost for each non-text part.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
TOKENS_PER_NON_TEXT_PART = 85


def estimate_input_tokens(body: dict[str, Any]) -> int:
    """A cheap, provider-neutral estimate of a request's input tokens (the call's usage corrects it later)."""
    chars = 0
    parts = 0
    messages = body.get("messages") or []
    for message in messages if isinstance(messages, list) else []:
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        chars += len(content_text(content))
        if isinstance(content, list):
            parts += sum(1 for p in content if isinstance(p, dict) and not isinstance(p.get("text"), str))
        for call in message.get("tool_calls") or []:
            chars += len(json.dumps(call, separators=(",", ":")))
    for extra in ("system", "tools", "functions", "response_format"):
        if body.get(extra):
            value = body[extra]
            chars += len(value) if isinstance(value, str) else len(json.dumps(value, separators=(",", ":")))
    # An embeddings request's `input`: texts by their characters, token arrays by their length.
    given = body.get("input")
    tokens = 0
    for item in [given] if isinstance(given, str) else given if isinstance(given, list) else []:
        if isinstance(item, str):
            chars += len(item)
        else:
            tokens += len(item) if isinstance(item, list) else 1
    count = len(messages) if isinstance(messages, list) else 0
    return (-(-chars // CHARS_PER_TOKEN) + tokens + TOKENS_PER_MESSAGE * count + TOKENS_PER_REQUEST
            + TOKENS_PER_NON_TEXT_PART * parts)
