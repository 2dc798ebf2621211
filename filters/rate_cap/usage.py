"""Token accounting for rate_cap: the estimate of a request's input, and usage read from responses as they pass."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from core.flow import content_text
from core.sse import EventSplitter, parse_event

log = logging.getLogger("outerloop.rate_cap")

# Token estimate before the call (documented in docs/filters/rate_cap.md): ~4 characters per token,
# plus a few tokens of framing per message and per request, and a flat cost for each non-text part.
CHARS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REQUEST = 3
TOKENS_PER_NON_TEXT_PART = 85
_MAX_USAGE_SCAN = 4 * 1024 * 1024


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
    count = len(messages) if isinstance(messages, list) else 0
    return (-(-chars // CHARS_PER_TOKEN) + TOKENS_PER_MESSAGE * count + TOKENS_PER_REQUEST
            + TOKENS_PER_NON_TEXT_PART * parts)


class UsageReader:
    """Finds usage in a response as it passes: SSE events split anywhere across chunks, or one JSON body.

    With ``strip`` it also drops OpenAI's usage-only chunk (``choices: []``) that the filter asked for on the
    client's behalf; only then are bytes held back, and only up to the next event boundary.
    """

    def __init__(self, stream: bool, strip: bool) -> None:
        self.stream = stream
        self.strip = strip
        self.pending = bytearray()
        self.events = EventSplitter()
        self.fields: dict[str, Any] = {}
        self.overflow = False

    def feed(self, chunk: bytes, end: bool) -> bytes:
        if self.overflow:
            return chunk
        if not self.stream:
            self.pending += chunk
            if len(self.pending) > _MAX_USAGE_SCAN:
                self._give_up()
            elif end:
                self._take(self.pending)
            return chunk
        events = self.events.feed(chunk)
        if end:
            rest = self.events.close()
            if rest:
                events.append(rest)
        out = bytearray()
        for event in events:
            if not self._event(event) or not self.strip:
                out += event
        if self.events.pending > _MAX_USAGE_SCAN:
            out += self.events.close()
            self._give_up()
        return chunk if not self.strip else bytes(out)

    def _give_up(self) -> None:
        log.warning("rate_cap: response event larger than %d bytes; its usage is not counted", _MAX_USAGE_SCAN)
        self.overflow = True
        self.pending.clear()
        self.events.close()

    def _event(self, event: bytes) -> bool:
        """Reads usage from one SSE event; True when it is a usage-only chunk."""
        if b'"usage"' not in event:
            return False
        _, data = parse_event(event)
        obj = self._take(data.encode()) if data is not None else None
        return obj is not None and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)

    def _take(self, data: bytes | bytearray) -> dict[str, Any] | None:
        try:
            obj = json.loads(data)
        except ValueError:
            return None
        if not isinstance(obj, dict):
            return None
        message = obj.get("message")
        for usage in (obj.get("usage"), message.get("usage") if isinstance(message, dict) else None):
            if isinstance(usage, dict):
                self.fields.update({k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)})
        return obj

    @property
    def usage(self) -> dict[str, int] | None:
        """OpenAI-shaped usage (Anthropic's input/output and cache counts mapped), or None when none was seen."""
        f = self.fields
        if not f:
            return None
        prompt = f.get("prompt_tokens", f.get("input_tokens", 0) + f.get("cache_creation_input_tokens", 0)
                       + f.get("cache_read_input_tokens", 0))
        completion = f.get("completion_tokens", f.get("output_tokens", 0))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
