"""What every response says about itself, read by the core as its bytes pass: usage, finish reason, its end.

One meter per upstream response, on the upstream's own bytes (OpenAI- or Anthropic-shaped, before any
translation), so every adapter is measured the same way and the facts are on the flow before the event
that follows them is sent: the client may hang up on `[DONE]`, and nothing it was owed is lost.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from core.flow import Flow
from core.providers.anthropic_response import FINISH_REASONS
from core.sse import EventSplitter, parse_event

log = logging.getLogger("outerloop.usage")

_FINISH = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"([A-Za-z_]+)"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ENDS = (b"data: [DONE]", b"data:[DONE]", b"message_stop")
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
#: A usage object and a finish reason that is a string, in compact JSON and with a space after colons.
_COMPACT = (b'"usage":{', b'_reason":"')
_SPACED = (b'"usage": {', b'_reason": "')
#: The last event of a stream ends its chunk.
_STREAM_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n", b'"message_stop"}\n\n', b'"message_stop"}\r\n\r\n')
_DECODER = json.JSONDecoder()


def _openai_shaped(fields: dict[str, int]) -> dict[str, int] | None:
    """OpenAI-shaped usage from the counts seen (Anthropic's input, output and cache counts mapped)."""
    if not fields:
        return None
    f = fields
    prompt = f.get("prompt_tokens", f.get("input_tokens", 0) + f.get("cache_creation_input_tokens", 0)
                   + f.get("cache_read_input_tokens", 0))
    completion = f.get("completion_tokens", f.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class UsageMeter:
    """Reads one upstream response as it passes; records usage and finish reason on the flow.

    Streams are split into events (anywhere across chunks); only events that can carry usage are parsed.
    With ``strip`` the usage-only chunk (``choices: []``) that the proxy asked for on the client's behalf is
    dropped; only then are bytes held back, up to the next event boundary. A whole body is parsed once it
    is complete, and its last chunk is held until then, so the usage is stored before the client has it.
    """

    __slots__ = ("flow", "stream", "strip", "cap", "ended", "_events", "_fields", "_gave_up")

    def __init__(self, flow: Flow, *, stream: bool, strip: bool, cap: int) -> None:
        self.flow = flow
        self.stream = stream
        self.strip = strip
        self.cap = cap
        #: True once the stream's final event (`[DONE]`, `message_stop`) went past.
        self.ended = False
        self._events = EventSplitter()
        self._fields: dict[str, int] = {}
        self._gave_up = False

    def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return self._stream(chunks) if self.stream else self._body(chunks)

    async def _stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        partial = False  # an event begun in an earlier chunk is waiting for its end
        usage_key = reason = b""  # as this upstream writes JSON: compact, or with a space after colons
        async for chunk in chunks:
            if not usage_key and b'":' in chunk:  # the first chunk with a JSON key tells (not a comment)
                usage_key, reason = _SPACED if b'": ' in chunk else _COMPACT
            # The common chunk: whole events (a blank line at its end, nothing pending) without a usage
            # object. It is read in place and passes as it is; inline byte tests, as this runs for every chunk.
            if not partial and usage_key and chunk.endswith(_EVENT_ENDS) and usage_key not in chunk:
                if reason in chunk:  # a finish reason that is not null (every OpenAI chunk has the key)
                    self._finish_in(chunk)
                if chunk.endswith(_STREAM_ENDS):
                    self.ended = True
                yield chunk
                continue
            out = self._feed(chunk, end=False)
            partial = self._events.pending > 0
            if out:
                yield out
        out = self._feed(b"", end=True)
        if out:
            yield out

    def _feed(self, chunk: bytes, end: bool) -> bytes:
        if self._gave_up:
            return chunk
        events = self._events.feed(chunk) if chunk else []
        if end:
            rest = self._events.close()
            if rest:
                events.append(rest)
        kept = bytearray()
        for event in events:
            if not self._event(event) or not self.strip:
                kept += event
        if self._events.pending > self.cap:
            log.warning("request %s: a response event is larger than %d bytes; its usage is not counted",
                        self.flow.request_id, self.cap)
            self._gave_up = True
            kept += self._events.close()
        return bytes(kept) if self.strip else chunk

    def _event(self, event: bytes) -> bool:
        """Reads one SSE event; True when it is a usage-only chunk."""
        self._finish_in(event)
        if any(end in event for end in _ENDS):
            self.ended = True
        if _USAGE.search(event) is None:
            return False
        _, data = parse_event(event)
        obj = self._take(data.encode()) if data is not None else None
        return obj is not None and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)

    async def _body(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        seen: list[bytes] = []
        size = 0
        held: bytes | None = None
        async for chunk in chunks:
            if held is not None:
                yield held
            held = chunk
            if size <= self.cap:
                size += len(chunk)
                seen.append(chunk)
        if size <= self.cap:
            self._whole(seen[0] if len(seen) == 1 else b"".join(seen))
        self.ended = True
        if held is not None:
            yield held

    def _whole(self, body: bytes) -> None:
        """Usage and finish reason of a whole JSON body, without parsing all of it: a key can only be a JSON
        key where its quotes are bare (inside a string they are escaped), so only the usage object is decoded."""
        for match in reversed(list(_USAGE.finditer(body))):
            try:
                usage, _ = _DECODER.raw_decode(body[match.end() - 1:].decode("utf-8", "replace"))
            except (ValueError, RecursionError):
                continue
            if isinstance(usage, dict):
                self._fields.update({k: v for k, v in usage.items() if type(v) is int})
                self.flow.usage = _openai_shaped(self._fields)
                break
        self._finish_in(body)

    def _finish_in(self, data: bytes) -> None:
        finish = _FINISH.search(data)
        if finish is not None:
            self._finish(finish.group(1).decode())

    def _finish(self, reason: str) -> None:
        # Anthropic's stop reasons in OpenAI's words, so the finish reason reads the same for every upstream.
        self.flow.finish_reason = FINISH_REASONS.get(reason, reason)

    def _take(self, data: bytes) -> dict[str, Any] | None:
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if not isinstance(obj, dict):
            return None
        message = obj.get("message")
        found = False
        for usage in (obj.get("usage"), message.get("usage") if isinstance(message, dict) else None):
            if isinstance(usage, dict):
                found = True
                self._fields.update({k: v for k, v in usage.items() if type(v) is int})
        if found:
            self.flow.usage = _openai_shaped(self._fields)
        return obj
