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
from core.providers.anthropic_response import FINISH_REASONS, openai_usage
from core.sse import EventSplitter, parse_event
from core.upstream_errors import invalid_response

log = logging.getLogger("outerloop.usage")

_FINISH = re.compile(rb'"(?:finish_reason|stop_reason)"\s*:\s*"([A-Za-z_]+)"')
_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_ENDS = (b"data: [DONE]", b"data:[DONE]", b"message_stop", b"event: response.completed",
         b"event: response.incomplete")
_EVENT_ENDS = (b"\n\n", b"\r\n\r\n")
#: A usage object and a finish reason that is a string, in compact JSON and with a space after colons.
_COMPACT = (b'"usage":{', b'_reason":"')
_SPACED = (b'"usage": {', b'_reason": "')
#: The last event of a stream ends its chunk.
_STREAM_ENDS = (b"[DONE]\n\n", b"[DONE]\r\n\r\n", b'"message_stop"}\n\n', b'"message_stop"}\r\n\r\n')
#: The fields of server-sent events (a line starting with ":" is a comment).
_FIELDS = frozenset({b"data", b"event", b"id", b"retry"})


def _openai_shaped(fields: dict[str, int]) -> dict[str, int] | None:
    """OpenAI-shaped usage from the counts seen (Anthropic's input, output and cache counts mapped)."""
    if not fields:
        return None
    if "prompt_tokens" in fields or "completion_tokens" in fields:
        prompt, completion = fields.get("prompt_tokens", 0), fields.get("completion_tokens", 0)
    else:  # Anthropic's counts, mapped as the translators map them
        mapped = openai_usage(fields)
        prompt, completion = mapped["prompt_tokens"], mapped["completion_tokens"]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class UsageMeter:
    """Reads one upstream response as it passes; records usage and finish reason on the flow.

    Streams are split into events (anywhere across chunks); only events that can carry usage are parsed.
    With ``strip`` the usage-only chunk (``choices: []``) that the proxy asked for on the client's behalf is
    dropped; only then are bytes held back, up to the next event boundary. Events are read until the first
    data event: a stream that is not SSE with JSON data is ``upstream.invalid_response``.
    A whole body is read and parsed by the core before its headers go out, and given to :meth:`whole`.
    """

    __slots__ = ("flow", "strip", "cap", "ended", "_events", "_fields", "_gave_up", "_checked")

    def __init__(self, flow: Flow, *, strip: bool, cap: int) -> None:
        self.flow = flow
        self.strip = strip
        self.cap = cap
        #: True once the stream's final event (`[DONE]`, `message_stop`) went past.
        self.ended = False
        self._events = EventSplitter()
        self._fields: dict[str, int] = {}
        self._gave_up = False
        self._checked = False  # the stream's first data event was read and is JSON

    def wrap(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """A stream's chunks, metered (a whole body is parsed by the core and given to :meth:`whole`)."""
        return self._stream(chunks)

    async def _stream(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        partial = False  # an event begun in an earlier chunk is waiting for its end
        usage_key = reason = b""  # as this upstream writes JSON: compact, or with a space after colons
        async for chunk in chunks:
            if not usage_key:
                # Until the first data event was checked and the JSON style learnt, every event is split and
                # read (`_event` checks that the stream is SSE with JSON data); the fast path has no test for it.
                out = self._feed(chunk, end=False)
                partial = self._events.pending > 0
                if self._checked and b'":' in chunk:  # the first chunk with a JSON key tells (not a comment)
                    usage_key, reason = _SPACED if b'": ' in chunk else _COMPACT
                if out:
                    yield out
                continue
            # The common chunk: whole events (a blank line at its end, nothing pending) without a usage
            # object. It is read in place and passes as it is; inline byte tests, as this runs for every chunk.
            if not partial and chunk.endswith(_EVENT_ENDS) and usage_key not in chunk:
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
        if not self._checked:
            if end:
                raise invalid_response(self.flow, "the stream ended before its first data event")
            if self._events.held(4).lstrip(b"\xef\xbb\xbf")[:1] not in b"deir:\r\n":
                raise invalid_response(self.flow, f"the stream is not server-sent events: "
                                                  f"{self._events.held(60)!r}")
        if self._events.pending > self.cap:
            if not self._checked:
                raise invalid_response(self.flow, f"the stream's first event is larger than {self.cap} bytes")
            log.warning("request %s: a response event is larger than %d bytes; its usage is not counted",
                        self.flow.request_id, self.cap)
            self._gave_up = True
            kept += self._events.close()
        # A chunk goes out once the events it completes were checked (and what it begins looks like SSE): a
        # first event that arrives slowly is not held, and if it proves bad the API's error event ends the stream.
        return bytes(kept) if self.strip else chunk

    def _check(self, event: bytes) -> None:
        """The first events of a stream must be SSE, and its first data JSON: else the client gets a 502 (or,
        once bytes went out, the API's error event), not bytes its SDK fails to decode."""
        for line in event.lstrip(b"\xef\xbb\xbf").splitlines():
            if line and line[:1] != b":" and line.partition(b":")[0] not in _FIELDS:
                raise invalid_response(self.flow, f"the stream is not server-sent events: {event[:60]!r}")
        _, data = parse_event(event)
        if data is None:
            return
        if data.strip() != "[DONE]":
            try:
                obj = json.loads(data)
            except (ValueError, RecursionError):
                raise invalid_response(self.flow, f"the stream's data is not JSON: {data[:60]!r}") from None
            if not isinstance(obj, dict):
                raise invalid_response(self.flow, f"the stream's data is not a JSON object: {data[:60]!r}")
        self._checked = True

    def _event(self, event: bytes) -> bool:
        """Reads one SSE event; True when it is a usage-only chunk."""
        if not self._checked:
            self._check(event)
        self._finish_in(event)
        if any(end in event for end in _ENDS):
            self.ended = True
        if _USAGE.search(event) is None:
            return False
        _, data = parse_event(event)
        obj = self._take(data.encode()) if data is not None else None
        return obj is not None and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)

    def whole(self, body: dict[str, Any]) -> None:
        """Usage and finish reason of a whole body, parsed once by the core (OpenAI- or Anthropic-shaped)."""
        if self.flow.endpoint == "count_tokens":
            # Its `input_tokens` is the count the client asked for, not tokens spent: no usage to record.
            self.ended = True
            return
        self._count(body)
        reason = body.get("stop_reason")
        choices = body.get("choices")
        if isinstance(choices, list) and choices and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
        if isinstance(reason, str):
            self._finish(reason)
        self.ended = True

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
        self._count(obj)
        return obj

    def _count(self, obj: dict[str, Any]) -> None:
        """The counts of an answer or event (``usage``, Anthropic's ``message.usage``, the Responses API's
        ``response.usage``), merged with those seen before (Anthropic reports input and output in different
        events); OpenAI-shaped on the flow."""
        message = obj.get("message")
        if not isinstance(message, dict):
            message = obj.get("response")
        found = False
        for usage in (obj.get("usage"), message.get("usage") if isinstance(message, dict) else None):
            if isinstance(usage, dict):
                found = True
                self._fields.update({k: v for k, v in usage.items() if type(v) is int})
        if found:
            self.flow.usage = _openai_shaped(self._fields)
