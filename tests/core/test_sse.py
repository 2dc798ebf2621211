"""The one SSE parser: any chunking and any line ending give the same events, byte for byte."""

from __future__ import annotations

import pytest

from core.sse import EventSplitter, SSEDecoder, encode_event, parse_event

STREAM = (b'event: message_start\ndata: {"a": 1}\n\n'
          b': a comment\ndata: line one\ndata: line two\n\n'
          b'data: {"text": "caf\xc3\xa9"}\n\n'
          b'data: [DONE]\n\n')


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_split_point_gives_the_same_raw_events(ending: bytes) -> None:
    stream = STREAM.replace(b"\n", ending)
    reference = EventSplitter()
    # A final lone "\r" could still become "\r\n": that last event is only certain at close().
    whole = reference.feed(stream) + ([rest] if (rest := reference.close()) else [])
    assert b"".join(whole) == stream and len(whole) == 4
    for cut in range(1, len(stream)):
        splitter = EventSplitter()
        events = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        events += [rest] if (rest := splitter.close()) else []
        assert events == whole, cut


def test_one_byte_at_a_time_and_unterminated_tail() -> None:
    splitter = EventSplitter()
    events = [e for i in range(len(STREAM)) for e in splitter.feed(STREAM[i:i + 1])]
    assert b"".join(events) == STREAM
    splitter.feed(b"data: no blank line")
    assert splitter.pending == len(b"data: no blank line")
    assert splitter.close() == b"data: no blank line"


def test_parse_and_decode() -> None:
    assert parse_event(b'event: message_start\r\ndata: {"a": 1}\r\n\r\n') == ("message_start", '{"a": 1}')
    assert parse_event(b": only a comment\n\n") == (None, None)
    decoder = SSEDecoder()
    pairs = decoder.feed(STREAM[:40]) + decoder.feed(STREAM[40:]) + decoder.close()
    assert pairs == [("message_start", '{"a": 1}'), ("", "line one\nline two"), ("", '{"text": "café"}'),
                     ("", "[DONE]")]
    assert encode_event({"x": "é"}, "delta") == 'event: delta\ndata: {"x":"é"}\n\n'.encode()
