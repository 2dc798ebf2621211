"""The core's usage meter: usage, finish reason and the end of a response, read from upstream bytes as they pass."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.config import ModelProvider
from core.errors import RequestError
from core.flow import Flow
from core.providers.openai import openai_passthrough
from core.target import Target, Upstream
from core.usage import UsageMeter


def make_flow(stream: bool = True, **body: Any) -> Flow:
    json_body: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **body}
    if stream:
        json_body["stream"] = True
    return Flow(request_id="r", listener="test", api="openai", method="POST", path="/v1/chat/completions",
                headers={}, body=json.dumps(json_body).encode(), json_body=json_body)


def sse(*objs: Any, crlf: bool = False) -> bytes:
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    return b"".join(b"data: " + (o if isinstance(o, bytes) else json.dumps(o).encode()) + sep for o in objs)


CHUNKS = [{"choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}], "usage": None}
          for w in ("He", "llo", " usage")]
FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}], "usage": None}
USAGE = {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}}


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def meter_all(meter: UsageMeter, *parts: bytes) -> bytes:
    async def run() -> bytes:
        return b"".join([chunk async for chunk in meter.wrap(_chunks(*parts))])

    return asyncio.run(run())


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("strip", [False, True])
def test_stream_usage_and_finish_reason_at_every_split_point(strip: bool, crlf: bool) -> None:
    stream = sse(*CHUNKS, FINISH, USAGE, b"[DONE]", crlf=crlf)
    expected = sse(*CHUNKS, FINISH, b"[DONE]", crlf=crlf) if strip else stream
    for cut in range(1, len(stream)):
        for second in (cut, min(len(stream), cut + 7)):
            flow = make_flow()
            meter = UsageMeter(flow, strip=strip, cap=1 << 20)
            out = meter_all(meter, stream[:cut], stream[cut:second], stream[second:])
            assert out == expected, cut
            assert flow.usage == USAGE["usage"]
            assert flow.finish_reason == "length"
            assert meter.ended


def test_usage_is_on_the_flow_before_the_event_after_it_is_passed_on() -> None:
    flow = make_flow()
    meter = UsageMeter(flow, strip=False, cap=1 << 20)
    seen_when_done: list[Any] = []

    async def run() -> None:
        async for chunk in meter.wrap(_chunks(sse(*CHUNKS), sse(USAGE), sse(b"[DONE]"))):
            if b"[DONE]" in chunk:
                seen_when_done.append(flow.usage)

    asyncio.run(run())
    assert seen_when_done == [USAGE["usage"]]


def test_anthropic_events_and_an_unterminated_tail() -> None:
    events = (b'event: message_start\ndata: {"type":"message_start","message":{"usage":{"input_tokens":20,'
              b'"cache_read_input_tokens":5,"output_tokens":1}}}\n\n'
              b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use"},'
              b'"usage":{"output_tokens":9}}')
    flow = make_flow()
    assert meter_all(UsageMeter(flow, strip=False, cap=1 << 20), events) == events
    assert flow.usage == {"prompt_tokens": 25, "completion_tokens": 9, "total_tokens": 34}
    assert flow.finish_reason == "tool_calls"
    later = make_flow()
    # Only the first data event is checked: later garbage passes (the SDK or the translator reports it).
    assert meter_all(UsageMeter(later, strip=True, cap=1 << 20), sse(CHUNKS[0]), b"data: {not json") \
        == sse(CHUNKS[0]) + b"data: {not json"
    assert later.usage is None


@pytest.mark.parametrize("stream", [b"data: {not json\n\n", b"<html><body>502</body></html>", b'{"id": "x"}',
                                    b"hello\n\n", b"data: [1, 2]\n\n", b"", b": just a comment\n\n"])
def test_a_stream_that_is_not_sse_with_json_data_is_refused(stream: bytes) -> None:
    for strip in (False, True):
        with pytest.raises(RequestError) as refused:
            meter_all(UsageMeter(make_flow(), strip=strip, cap=1 << 20), stream[:3], stream[3:])
        assert refused.value.status == 502 and refused.value.code == "upstream.invalid_response"


def test_a_chunk_goes_out_once_the_events_it_completes_were_checked() -> None:
    first = sse(CHUNKS[0])
    out: list[bytes] = []

    async def run(*parts: bytes) -> None:
        async for chunk in UsageMeter(make_flow(), strip=False, cap=1 << 20).wrap(_chunks(*parts)):
            out.append(chunk)

    parts = (b": comment\n\n" + first[:9], first[9:] + first[:5], first[5:], sse(b"[DONE]"))
    asyncio.run(run(*parts))
    assert out == list(parts)  # a first event arriving slowly is not held
    out.clear()
    with pytest.raises(RequestError):
        asyncio.run(run(b"data: {", b"not json}\n\n"))
    assert out == [b"data: {"]  # its start went out (the core ends the stream with the API's error event)


def test_whole_bodies_openai_and_anthropic_and_garbage() -> None:
    flow = make_flow(stream=False)
    meter = UsageMeter(flow, strip=False, cap=1 << 20)
    meter.whole({"choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
                 "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}})
    assert flow.usage == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert flow.finish_reason == "stop" and meter.ended
    anthropic = make_flow(stream=False)
    UsageMeter(anthropic, strip=False, cap=1 << 20).whole(
        {"type": "message", "stop_reason": "max_tokens", "usage": {"input_tokens": 7, "output_tokens": 5}})
    assert anthropic.usage == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
    assert anthropic.finish_reason == "length"
    garbage = make_flow(stream=False)
    UsageMeter(garbage, strip=False, cap=1 << 20).whole({"usage": "lots", "choices": [7]})
    assert garbage.usage is None and garbage.finish_reason is None


def test_openai_streams_ask_for_usage_without_touching_what_the_client_asked() -> None:
    adapter = openai_passthrough()
    target = Target(ModelProvider(model="openai/m", base_url="http://127.0.0.1:1/v1"),
                    Upstream("openai", "http://127.0.0.1:1/v1", None, None))  # type: ignore[arg-type]
    plain = make_flow()
    sent = json.loads(adapter.request(plain, target).content)
    assert sent["stream_options"] == {"include_usage": True}
    assert "stream_options" not in plain.json
    asked = make_flow(stream_options={"include_usage": True})
    assert adapter.request(asked, target).content == asked.body
    not_streamed = make_flow(stream=False)
    assert "stream_options" not in json.loads(adapter.request(not_streamed, target).content)


def test_usage_is_asked_for_in_the_clients_own_bytes_when_they_can_be_kept() -> None:
    adapter = openai_passthrough()
    target = Target(ModelProvider(model="openai/m", base_url="http://127.0.0.1:1/v1"),
                    Upstream("openai", "http://127.0.0.1:1/v1", None, None))  # type: ignore[arg-type]
    raw = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "h\\u00e9 \xc3\xa9"}]}'
    flow = Flow(request_id="r", listener="test", api="openai", method="POST", path="/v1/chat/completions",
                headers={}, body=raw, json_body=json.loads(raw))
    sent = adapter.request(flow, target).content
    assert sent.endswith(raw[1:])  # the client's bytes, escapes and spacing as they were
    assert json.loads(sent) == {**json.loads(raw), "stream_options": {"include_usage": True}}
    options_given = make_flow(stream_options={"include_usage": False})  # the client said no: asked anyway
    assert json.loads(adapter.request(options_given, target).content)["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("spaced", [False, True])
def test_whole_event_chunks_in_either_json_style_after_a_comment(spaced: bool) -> None:
    """Chunks that are whole events take the meter's fast path; the JSON style is learnt from the first key."""
    def event(obj: Any) -> bytes:
        text = json.dumps(obj) if spaced else json.dumps(obj, separators=(",", ":"))
        return b"data: " + text.encode() + b"\n\n"

    chunks = [b": PROCESSING\n\n", *(event(c) for c in CHUNKS), event(FINISH) + event(USAGE), b"data: [DONE]\n\n"]
    flow = make_flow()
    meter = UsageMeter(flow, strip=True, cap=1 << 20)
    out = meter_all(meter, *chunks)
    assert out == b"".join(chunks).replace(event(USAGE), b"")
    assert flow.usage == USAGE["usage"] and flow.finish_reason == "length" and meter.ended
