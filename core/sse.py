"""Server-sent events, incrementally: bytes split anywhere in, whole events out. One parser for every filter."""

from __future__ import annotations

import re
from typing import Any

from core.flow import encode_json

# One line ending (\r\n, \r or \n) followed by an empty line: the end of an event.
_BOUNDARY = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")


class EventSplitter:
    """Splits a text/event-stream into events, whatever the chunking and line endings (\\n, \\r\\n, \\r).

    Events come out as the bytes received, terminator included, so a filter can pass them on unchanged.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held while waiting for the end of an event."""
        return len(self._buffer)

    def held(self, limit: int | None = None) -> bytes:
        """The bytes held (the first ``limit`` of them), left in place."""
        return bytes(self._buffer[:limit])

    def feed(self, chunk: bytes) -> list[bytes]:
        # A held final "\r" is decided by the next byte, whatever it is.
        held_cr = self._buffer.endswith(b"\r")
        self._buffer += chunk
        # Only a line break can complete an event; skipping the scan keeps 1-byte feeds linear.
        if not held_cr and b"\n" not in chunk and b"\r" not in chunk:
            return []
        data = bytes(self._buffer)
        # A final "\r" may be the first half of "\r\n": it is decided when the next byte comes.
        limit = len(data) - 1 if data.endswith(b"\r") else len(data)
        events: list[bytes] = []
        start = 0
        for match in _BOUNDARY.finditer(data, 0, limit):
            events.append(data[start:match.end()])
            start = match.end()
        if start:
            self._buffer = bytearray(data[start:])
        return events

    def close(self) -> bytes:
        """The unterminated rest (an upstream may omit the final blank line), as received."""
        rest = bytes(self._buffer)
        self._buffer = bytearray()
        return rest


def parse_event(event: bytes) -> tuple[str | None, str | None]:
    """(event name, data) of one event; data lines are joined with \\n, None when the event has none."""
    name: str | None = None
    data: list[str] = []
    text = event.decode("utf-8", "replace")
    # Only CR, LF and CRLF end a line (str.splitlines would also split on U+2028, \x85, \x0c... inside data).
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n") if "\r" in text else text.split("\n")
    for line in lines:
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    return name, ("\n".join(data) if data else None)


class SSEDecoder:
    """Complete (event name, data) pairs from a byte stream; events without data are skipped."""

    __slots__ = ("_splitter",)

    def __init__(self) -> None:
        self._splitter = EventSplitter()

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        return _with_data(self._splitter.feed(chunk))

    def close(self) -> list[tuple[str, str]]:
        rest = self._splitter.close()
        return _with_data([rest] if rest else [])


def _with_data(events: list[bytes]) -> list[tuple[str, str]]:
    out = []
    for event in events:
        name, data = parse_event(event)
        if data is not None:
            out.append((name or "", data))
    return out


def encode_event(obj: Any, name: str | None = None) -> bytes:
    """One event as the APIs write it: `data: {json}` (OpenAI), with `event: NAME` first (Anthropic)."""
    payload = encode_json(obj)
    return (f"event: {name}\n".encode() if name else b"") + b"data: " + payload + b"\n\n"
