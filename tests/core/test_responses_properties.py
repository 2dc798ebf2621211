"""Property tests for the Responses API translation: any body or stream gets a result or the documented error
(RequestError for requests, a ValueError for streams), whatever the chunking, and what comes out parses."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import RequestError
from core.flow import encode_json
from core.responses_api import (
    ChatToResponsesStream,
    ResponsesToChatStream,
    chat_to_response,
    chat_to_responses_request,
    input_items,
    response_items,
    response_to_chat,
    to_chat,
    validate_responses,
)
from tests.core.test_properties import json_strategies
from tests.core.test_responses_translate import ITEM as LISTED_ITEM
from tests.core.test_responses_translate import STREAM_EVENT

# Keys and values the code under test looks at, so random documents reach past the first type check.
WORDS = [
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
    "temperature", "top_p", "metadata", "text", "format", "reasoning", "effort", "summary", "store", "stream",
    "previous_response_id", "user", "include", "truncation", "type", "role", "content", "message",
    "function_call", "function_call_output", "item_reference", "web_search_call", "call_id", "name", "arguments",
    "output", "id", "input_text", "output_text", "input_image", "input_file", "refusal", "image_url", "file_id",
    "file_data", "detail", "json_schema", "json_object", "schema", "strict", "function", "parameters", "auto",
    "none", "required", "allowed_tools", "mode", "user", "assistant", "system", "developer", "choices", "delta",
    "tool_calls", "index", "finish_reason", "usage", "error", "length", "stop", "response", "item",
    "output_index", "content_index", "response.created", "response.output_text.delta",
    "response.output_item.added", "response.output_item.done", "response.function_call_arguments.delta",
    "response.completed", "response.incomplete", "response.failed", "status", "incomplete_details",
    "prompt_tokens", "completion_tokens", "input_tokens", "output_tokens", "[DONE]", "\ud800",
]
_, _, JSON, OBJECTS = json_strategies(WORDS)
EXAMPLES = settings(max_examples=150, deadline=None)

PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "refusal", "input_image", "input_file", "x"])},
    optional={"text": st.text(max_size=5) | JSON, "refusal": st.text(max_size=5), "image_url": st.text(max_size=5),
              "file_id": st.text(max_size=5), "file_data": st.text(max_size=5), "detail": JSON})
ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference",
                             "web_search_call", "bogus"]) | JSON,
    "role": st.sampled_from(["user", "assistant", "system", "developer"]) | JSON,
    "content": st.text(max_size=5) | st.lists(PART, max_size=3) | JSON,
    "call_id": st.text(max_size=3) | JSON, "name": st.text(max_size=3), "arguments": st.text(max_size=3) | JSON,
    "output": st.text(max_size=3) | st.lists(PART, max_size=2), "id": st.text(max_size=3) | JSON})
TEXT = st.text(max_size=5)
VALID_PART = (st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": TEXT})
              | st.fixed_dictionaries({"type": st.just("refusal"), "refusal": TEXT})
              | st.fixed_dictionaries({"type": st.just("input_image"), "image_url": TEXT},
                                      optional={"detail": st.sampled_from(["low", "high", "auto"])})
              | st.fixed_dictionaries({"type": st.just("input_file")}, optional={"file_data": TEXT, "file_id": TEXT}))
VALID_ITEM = (
    st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "developer"]),
                           "content": TEXT | st.lists(VALID_PART, max_size=3)}, optional={"type": st.just("message")})
    | st.fixed_dictionaries({"type": st.just("function_call"), "call_id": TEXT, "name": TEXT, "arguments": TEXT})
    | st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": TEXT,
                             "output": TEXT | st.lists(VALID_PART, max_size=2)})
    | st.fixed_dictionaries({"type": st.sampled_from(["reasoning", "item_reference", "web_search_call"]),
                             "id": TEXT}))
CLEAN_TOOL = st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]), "name": TEXT},
                                   optional={"parameters": st.dictionaries(TEXT, TEXT), "strict": st.booleans()})
TOOL = (CLEAN_TOOL
        | st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"]) | JSON},
                                optional={"name": st.text(max_size=3) | JSON, "parameters": JSON, "strict": JSON}))
FORMAT = st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "json_schema"]) | JSON},
                               optional={"name": st.text(max_size=3) | JSON, "schema": OBJECTS | JSON})
RESPONSES_BODY = st.fixed_dictionaries(
    {"input": st.text(max_size=5) | st.lists(VALID_ITEM, max_size=6) | st.lists(VALID_ITEM | ITEM, max_size=5)
     | JSON},
    optional={"model": st.text(max_size=3) | JSON, "instructions": st.text(max_size=3) | JSON,
              "tools": st.lists(TOOL, max_size=3) | JSON,
              "tool_choice": st.sampled_from(["auto", "none", "required"]) | OBJECTS | JSON,
              "text": st.fixed_dictionaries({}, optional={"format": FORMAT | JSON}) | JSON,
              "reasoning": st.fixed_dictionaries({}, optional={"effort": st.text(max_size=3) | JSON}) | JSON,
              **{k: JSON for k in ("parallel_tool_calls", "max_output_tokens", "temperature", "top_p", "metadata",
                                   "store", "stream", "previous_response_id", "user", "include", "truncation")}})


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _normal(raw: bytes) -> bytes:
    ids: dict[bytes, bytes] = {}
    raw = re.sub(rb"(msg_|fc_|call_|chatcmpl-)[0-9a-f]{32}", lambda m: ids.setdefault(m[0], b"id%d" % len(ids)), raw)
    return re.sub(rb'"(completed_at|created)":\d+', b'"t":0', raw)


# --- requests --------------------------------------------------------------------------------------------------

@EXAMPLES
@given(JSON | OBJECTS | RESPONSES_BODY)
def test_validate_any_value_and_translate_what_passes(body: Any) -> None:
    try:
        assert validate_responses(body) is body
    except RequestError as exc:
        assert exc.status == 400 and exc.code.startswith("request.") and exc.message
        return
    form = to_chat(body, [{"role": "user", "content": "before"}])
    encode_json(form.body)
    assert all(isinstance(path, str) and reason for path, reason in form.unsupported)
    assert form.body["messages"][0 if not body.get("instructions") else 1] == {"role": "user", "content": "before"}
    listed = input_items(body)
    assert all(isinstance(item.get("id"), str) for item in listed)
    encode_json(listed)


VALID_BODY = st.fixed_dictionaries({"input": TEXT | st.lists(VALID_ITEM, max_size=8)}, optional={
    "model": TEXT, "instructions": TEXT, "tools": st.lists(CLEAN_TOOL, max_size=2),
    "tool_choice": st.sampled_from(["auto", "none", "required", {"type": "function", "name": "f"},
                                    {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function"}]}]),
    "max_output_tokens": st.integers(1, 99), "temperature": st.floats(0, 2), "stream": st.booleans(),
    "text": st.sampled_from([{"format": {"type": "json_schema", "name": "n", "schema": {}}}, {"verbosity": "low"}]),
    "reasoning": st.sampled_from([{"effort": "low", "summary": "auto"}, {}])})


@EXAMPLES
@given(VALID_BODY)
def test_well_formed_bodies_pass_and_translate(body: dict[str, Any]) -> None:
    assert validate_responses(body) is body
    form = to_chat(body, [])
    encode_json(form.body)
    roles = {message["role"] for message in form.body["messages"]}
    assert roles <= {"system", "developer", "user", "assistant", "tool"}
    listed = input_items(body)
    assert len(listed) == (1 if isinstance(body["input"], str) else len(body["input"]))
    for item in listed:
        if item["type"] in ("message", "function_call", "function_call_output") and not (
                item.get("role") == "assistant" and any(p["type"] in ("input_image", "input_file")
                                                        for p in item["content"])):
            LISTED_ITEM.validate_python(item)  # what GET /input_items returns, the SDK parses


@EXAMPLES
@given(OBJECTS | st.fixed_dictionaries({"messages": st.lists(OBJECTS | st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"])},
    optional={"content": JSON, "tool_calls": JSON, "tool_call_id": JSON}), max_size=4)}, optional={
    k: JSON for k in ("tools", "tool_choice", "response_format", "max_tokens", "reasoning_effort", "n")}))
def test_chat_to_responses_request_any_body(body: dict[str, Any]) -> None:
    try:
        out = chat_to_responses_request(body, "m")
    except ValueError:
        return
    encode_json(out)
    assert out["store"] is False and out["model"] == "m"


@EXAMPLES
@given(OBJECTS | st.fixed_dictionaries({"choices": st.lists(st.fixed_dictionaries(
    {"message": OBJECTS}, optional={"finish_reason": JSON}), max_size=2) | JSON}, optional={"usage": JSON}))
def test_whole_responses_any_value(completion: dict[str, Any]) -> None:
    response = chat_to_response(completion, {"input": "x"}, "resp_1", 1)
    encode_json(response)
    assert response["status"] in ("completed", "incomplete")
    encode_json(response_items(response))
    encode_json(response_to_chat(response, "m"))
    try:
        encode_json(response_to_chat(completion, "m"))
    except ValueError:
        pass


# --- streams ---------------------------------------------------------------------------------------------------

NOISY_CHOICE = st.fixed_dictionaries({"index": st.just(0) | JSON}, optional={
    "delta": st.fixed_dictionaries({}, optional={"content": JSON, "tool_calls": st.lists(OBJECTS, max_size=2) | JSON})
    | JSON, "finish_reason": JSON})
NOISY_CHUNK = st.fixed_dictionaries({"choices": st.lists(NOISY_CHOICE, max_size=2) | JSON},
                                    optional={"usage": JSON, "model": JSON, "error": JSON})
CALL = st.fixed_dictionaries({"index": st.integers(0, 1)}, optional={
    "id": st.sampled_from(["a", "b"]), "function": st.fixed_dictionaries({}, optional={"name": TEXT,
                                                                                       "arguments": TEXT})})
CHOICE = st.fixed_dictionaries({"index": st.just(0), "delta": st.fixed_dictionaries({}, optional={
    "content": TEXT, "refusal": TEXT, "tool_calls": st.lists(CALL, min_size=1, max_size=2)})},
    optional={"finish_reason": st.sampled_from(["stop", "length", "tool_calls", "content_filter"])})
CHUNK = st.fixed_dictionaries({"choices": st.lists(CHOICE, min_size=1, max_size=1)},
                              optional={"usage": st.fixed_dictionaries({"prompt_tokens": st.integers(0, 9),
                                                                        "completion_tokens": st.integers(0, 9)})})
# Mostly well-formed chunks, so the translation reaches its deeper states; some noise and specials.
CHAT_EVENTS = st.lists(st.one_of(*[CHUNK] * 4, NOISY_CHUNK).map(lambda c: b"data: " + json.dumps(c).encode() + b"\n\n")
                       | st.sampled_from([b"data: [DONE]\n\n", b": ping\n\n", b"data: nope\n\n",
                                          b'data: {"error": {"message": "x"}}\n\n']), max_size=10)


def _run(stream: ChatToResponsesStream | ResponsesToChatStream, pieces: list[bytes]) -> bytes | None:
    try:
        return b"".join(stream.feed(piece) for piece in pieces) + stream.close()
    except ValueError:
        return None


def _chat_stream() -> ChatToResponsesStream:
    return ChatToResponsesStream({"model": "m", "input": "x"}, "resp_p", 1)


@EXAMPLES
@given(CHAT_EVENTS, st.lists(st.integers(0, 10_000), max_size=6))
def test_chat_to_responses_any_stream_any_split(events: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(events)
    whole = _run(_chat_stream(), [raw])
    split = _run(_chat_stream(), _split(raw, cuts))
    assert (whole is None) == (split is None)
    if whole is None or split is None:
        return
    assert _normal(whole) == _normal(split)
    sequence = []
    for event in whole.split(b"\n\n")[:-1]:
        name, _, data = event.partition(b"\ndata: ")
        payload = json.loads(data)
        assert name == b"event: " + payload["type"].encode()
        STREAM_EVENT.validate_python(payload)
        sequence.append(payload["sequence_number"])
    assert sequence == list(range(len(sequence)))
    assert json.loads(whole.split(b"\n\n")[-2].partition(b"\ndata: ")[2])["type"] in (
        "response.completed", "response.incomplete", "response.failed")


@EXAMPLES
@given(CHAT_EVENTS)
def test_chat_to_responses_then_back(events: list[bytes]) -> None:
    responses = _run(_chat_stream(), [b"".join(events)])
    if responses is None:
        return
    back = ResponsesToChatStream("m")
    out = back.feed(responses) + back.close()
    assert out.endswith(b"data: [DONE]\n\n")


RESPONSE_EVENT = st.fixed_dictionaries(
    {"type": st.sampled_from([w for w in WORDS if w.startswith("response.")] + ["error"]) | JSON},
    optional={"response": OBJECTS | JSON, "item": st.fixed_dictionaries(
        {"type": st.just("function_call")}, optional={"arguments": JSON, "call_id": JSON, "name": JSON}) | JSON,
        "output_index": st.integers(0, 2) | JSON, "content_index": JSON, "delta": st.text(max_size=4) | JSON,
        "text": JSON})
RESPONSE_EVENTS = st.lists(RESPONSE_EVENT.map(lambda e: b"data: " + json.dumps(e).encode() + b"\n\n")
                           | st.binary(max_size=20), max_size=8)


@EXAMPLES
@given(RESPONSE_EVENTS, st.lists(st.integers(0, 10_000), max_size=6))
def test_responses_to_chat_any_stream_any_split(events: list[bytes], cuts: list[int]) -> None:
    raw = b"".join(events)
    whole = _run(ResponsesToChatStream("m"), [raw])
    split = _run(ResponsesToChatStream("m"), _split(raw, cuts))
    assert (whole is None) == (split is None)
    if whole is None or split is None:
        return
    assert _normal(whole) == _normal(split) and whole.endswith(b"data: [DONE]\n\n")


@pytest.mark.parametrize("garbage", [b"data: {\"choices\": 3}\n\n", b"\xff\xfe\n\n", b"data: {}\r\n\r\n"])
def test_odd_but_json_chunks_complete(garbage: bytes) -> None:
    out = _run(_chat_stream(), [garbage])
    assert out is not None and b"response.completed" in out
