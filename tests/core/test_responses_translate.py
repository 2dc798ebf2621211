"""Tests for Responses API <-> Chat Completions translation, checked against the openai SDK's own types and
stream accumulator."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import BaseModel, TypeAdapter

from core.errors import RequestError
from core.responses_api import (
    ChatToResponsesStream,
    ResponsesToChatStream,
    TranslationError,
    chat_to_response,
    chat_to_responses_request,
    input_items,
    response_items,
    response_to_chat,
    to_chat,
    validate_responses,
)
from core.sse import SSEDecoder

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
ITEM: TypeAdapter[Any] = TypeAdapter(ResponseItem)
WEATHER = {"type": "function", "name": "weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "strict": False}
USAGE = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
         "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, usage: dict[str, Any] | None = None,
          empty: bool = False) -> bytes:
    body: dict[str, Any] = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-up",
                            "choices": [] if empty else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def call_piece(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> bytes:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id:
        call |= {"id": call_id, "type": "function"}
        call["function"]["name"] = name
    return chunk({"tool_calls": [call]})


TEXT_STREAM = (chunk({"role": "assistant", "content": ""}) + chunk({"content": "Hel"}) + chunk({"content": "lo"})
               + chunk(finish="stop") + chunk(empty=True, usage=USAGE) + b"data: [DONE]\n\n")
TOOLS_STREAM = (chunk({"role": "assistant", "content": "Checking."})
                + call_piece(0, '{"city":', "call_a", "weather") + call_piece(0, '"Paris"}')
                + call_piece(1, '{"city":"Oslo"}', "call_b", "weather")
                + chunk(finish="tool_calls") + chunk(empty=True, usage=USAGE) + b"data: [DONE]\n\n")
CALL_ONLY_STREAM = (chunk({"role": "assistant"}) + call_piece(0, "{}", "call_z", "now")
                    + chunk(finish="tool_calls") + b"data: [DONE]\n\n")
LENGTH_STREAM = chunk({"content": "trunc"}) + chunk(finish="length") + b"data: [DONE]\n\n"


def events(raw: bytes) -> list[dict[str, Any]]:
    """The decoded events, each parsed by the SDK's stream event union; sequence numbers count from 0."""
    out = []
    for name, data in SSEDecoder().feed(raw):
        payload = json.loads(data)
        assert name == payload["type"]
        STREAM_EVENT.validate_python(payload)
        out.append(payload)
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    return out


def translate(raw: bytes, request: dict[str, Any] | None = None) -> tuple[ChatToResponsesStream, bytes]:
    stream = ChatToResponsesStream(request or {"model": "gpt-x", "input": "hi"}, "resp_1", 1700000000)
    return stream, stream.feed(raw) + stream.close()


# Chat Completions SSE -> Responses SSE


def test_text_stream_golden_sequence() -> None:
    stream, raw = translate(TEXT_STREAM)
    got = events(raw)
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed",
    ]
    assert got[0]["response"]["status"] == "in_progress" and got[0]["response"]["output"] == []
    assert got[3]["part"] == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    assert [e["delta"] for e in got[4:6]] == ["Hel", "lo"]
    item_id = got[2]["item"]["id"]
    assert item_id.startswith("msg_") and {e["item_id"] for e in got[3:8]} == {item_id}
    assert got[6]["text"] == "Hello"
    final = Response.model_validate(got[-1]["response"])
    assert final.status == "completed" and final.output_text == "Hello" and final.model == "gpt-up"
    assert final.usage is not None and final.usage.input_tokens == 11 and final.usage.output_tokens == 7
    assert final.usage.input_tokens_details.cached_tokens == 4
    assert final.usage.output_tokens_details.reasoning_tokens == 2 and final.usage.total_tokens == 18
    assert stream.response == got[-1]["response"]
    assert stream.usage == USAGE


def test_text_and_two_tool_calls() -> None:
    got = events(translate(TOOLS_STREAM)[1])
    assert [e["type"] for e in got][2:] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]
    first = got[8]
    assert first["output_index"] == 1
    assert first["item"] | {"id": ""} == {"id": "", "type": "function_call", "status": "in_progress",
                                          "arguments": "", "call_id": "call_a", "name": "weather"}
    assert got[11]["arguments"] == '{"city":"Paris"}' and got[11]["name"] == "weather"
    assert got[12]["item"]["status"] == "completed" and got[12]["item"]["arguments"] == '{"city":"Paris"}'
    final = Response.model_validate(got[-1]["response"])
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.arguments) for c in calls] == [("call_a", '{"city":"Paris"}'), ("call_b", '{"city":"Oslo"}')]
    assert final.output_text == "Checking." and [i.id for i in final.output] == [
        got[2]["item"]["id"], got[8]["item"]["id"], got[13]["item"]["id"]]


def test_tool_call_only_has_no_message_and_no_usage() -> None:
    got = events(translate(CALL_ONLY_STREAM)[1])
    assert [e["type"] for e in got][2:] == [
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert got[2]["output_index"] == 0 and got[-1]["response"]["usage"] is None


def test_length_finish_is_incomplete() -> None:
    stream, raw = translate(LENGTH_STREAM)
    got = events(raw)
    assert got[-1]["type"] == "response.incomplete"
    final = Response.model_validate(got[-1]["response"])
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert got[-2]["item"]["status"] == "incomplete"
    assert stream.response is not None and stream.response["status"] == "incomplete"


def test_usage_chunk_after_finish_is_counted_and_close_without_done_completes() -> None:
    raw = chunk({"content": "x"}) + chunk(finish="stop") + chunk(empty=True, usage=USAGE)
    stream, out = translate(raw)
    got = events(out)
    assert got[-1]["type"] == "response.completed" and got[-1]["response"]["usage"]["total_tokens"] == 18
    assert stream.feed(b"data: [DONE]\n\n") == b"" and stream.close() == b""


def test_refusal_is_a_refusal_part() -> None:
    got = events(translate(chunk({"refusal": "No."}) + chunk(finish="stop"))[1])
    assert [e["type"] for e in got][3:6] == ["response.content_part.added", "response.refusal.delta",
                                             "response.refusal.done"]
    final = Response.model_validate(got[-1]["response"])
    assert final.output[0].type == "message" and final.output[0].content[0].type == "refusal"


def test_error_midway_gives_error_then_failed() -> None:
    stream = ChatToResponsesStream({"model": "m", "input": "x"}, "resp_e", 1)
    out = stream.feed(chunk({"content": "par"}))
    out += stream.error_event(504, "upstream timed out", "upstream.timeout")
    got = events(out)
    assert [e["type"] for e in got][-2:] == ["error", "response.failed"]
    assert got[-2]["code"] == "upstream.timeout" and got[-2]["param"] is None
    failed = Response.model_validate(got[-1]["response"])
    assert failed.status == "failed" and failed.error is not None and failed.error.message == "upstream timed out"
    assert stream.close() == b"" and stream.response is None


def test_chat_error_event_becomes_failure() -> None:
    raw = chunk({"content": "a"}) + b'data: {"error": {"message": "overloaded", "code": "busy"}}\n\n'
    got = events(translate(raw)[1])
    assert got[-2]["type"] == "error" and got[-2]["code"] == "upstream.busy" and got[-2]["message"] == "overloaded"
    assert got[-1]["type"] == "response.failed"


def test_request_parameters_are_echoed() -> None:
    request = {"model": "gpt-x", "input": "hi", "instructions": "Be brief", "max_output_tokens": 50,
               "metadata": {"k": "v"}, "tools": [WEATHER], "tool_choice": "required", "temperature": 0.2,
               "top_p": 0.9, "parallel_tool_calls": False, "previous_response_id": "resp_0", "user": "u",
               "store": False, "reasoning": {"effort": "low"}, "truncation": "auto",
               "text": {"format": {"type": "json_object"}}}
    response = Response.model_validate(translate(TEXT_STREAM, request)[0].response)
    assert response.instructions == "Be brief" and response.max_output_tokens == 50
    assert response.metadata == {"k": "v"} and response.tool_choice == "required"
    assert response.temperature == 0.2 and response.top_p == 0.9 and response.parallel_tool_calls is False
    assert response.previous_response_id == "resp_0" and response.user == "u" and response.store is False
    assert response.reasoning is not None and response.reasoning.effort == "low"
    assert response.truncation == "auto" and response.tools[0].type == "function"
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_object"
    defaults = Response.model_validate(translate(TEXT_STREAM)[0].response)
    assert defaults.metadata == {} and defaults.parallel_tool_calls is True and defaults.tools == []
    assert defaults.tool_choice == "auto" and defaults.text is not None and defaults.text.format is not None
    assert defaults.text.format.type == "text" and defaults.error is None and defaults.incomplete_details is None


def normal(raw: bytes) -> bytes:
    """``raw`` with its fresh ids numbered in order of appearance and its clock readings zeroed."""
    ids: dict[bytes, bytes] = {}
    raw = re.sub(rb"(msg|fc|call)_[0-9a-f]{32}", lambda m: ids.setdefault(m[0], b"id%d" % len(ids)), raw)
    return re.sub(rb'"completed_at":\d+', b'"completed_at":0', raw)


@pytest.mark.parametrize("raw", [TEXT_STREAM, TOOLS_STREAM, CALL_ONLY_STREAM, LENGTH_STREAM])
def test_any_split_gives_the_same_events(raw: bytes) -> None:
    whole = normal(translate(raw)[1])
    stream = ChatToResponsesStream({"model": "gpt-x", "input": "hi"}, "resp_1", 1700000000)
    out = b"".join(stream.feed(raw[i:i + 3]) for i in range(0, len(raw), 3)) + stream.close()
    assert normal(out) == whole and len(events(out)) > 3


@pytest.mark.parametrize("raw", [b"data: nope\n\n", b"data: [1]\n\n", b"data: {\n\n"])
def test_garbage_raises_translation_error(raw: bytes) -> None:
    with pytest.raises(TranslationError):
        translate(raw)


def test_interleaved_tool_arguments_are_refused() -> None:
    raw = call_piece(0, "{", "a", "f") + call_piece(1, "{", "b", "g") + call_piece(0, "}")
    with pytest.raises(TranslationError):
        translate(raw)


# Responses SSE -> Chat Completions SSE


def chat_chunks(raw: bytes) -> list[dict[str, Any]]:
    out = []
    decoded = SSEDecoder().feed(raw)
    assert decoded[-1][1] == "[DONE]"
    for _, data in decoded[:-1]:
        payload = json.loads(data)
        if "error" not in payload:
            ChatCompletionChunk.model_validate(payload)
        out.append(payload)
    return out


def back(raw: bytes) -> list[dict[str, Any]]:
    stream = ResponsesToChatStream("gpt-client")
    return chat_chunks(stream.feed(raw) + stream.close())


def test_responses_text_stream_to_chat() -> None:
    got = back(translate(TEXT_STREAM)[1])
    assert got[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in got[1:3]] == ["Hel", "lo"]
    assert got[-2]["choices"][0]["finish_reason"] == "stop"
    assert got[-1]["choices"] == [] and got[-1]["usage"]["prompt_tokens"] == 11
    assert got[-1]["usage"]["completion_tokens"] == 7 and got[-1]["usage"]["total_tokens"] == 18
    assert got[-1]["usage"]["prompt_tokens_details"] == {"cached_tokens": 4}
    assert {c["id"] for c in got} == {"chatcmpl-1"} and {c["model"] for c in got} == {"gpt-client"}
    quiet = ResponsesToChatStream("gpt-client", include_usage=False)
    assert chat_chunks(quiet.feed(translate(TEXT_STREAM)[1]))[-1]["choices"][0]["finish_reason"] == "stop"


def test_responses_tool_calls_to_chat() -> None:
    got = back(translate(TOOLS_STREAM)[1])
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in got if c["choices"]
             and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0] == {"index": 0, "id": "call_a", "type": "function",
                        "function": {"name": "weather", "arguments": ""}}
    assert "".join(c["function"]["arguments"] for c in calls if c["index"] == 0) == '{"city":"Paris"}'
    assert calls[3]["id"] == "call_b" and calls[3]["index"] == 1
    assert got[-2]["choices"][0]["finish_reason"] == "tool_calls"


def test_responses_incomplete_to_chat_length() -> None:
    assert back(translate(LENGTH_STREAM)[1])[-2]["choices"][0]["finish_reason"] == "length"


def test_responses_failure_to_chat_error() -> None:
    stream = ChatToResponsesStream({"model": "m", "input": "x"}, "resp_e", 1)
    raw = stream.feed(chunk({"content": "a"})) + stream.error_event(502, "broken", "upstream.reset")
    got = back(raw)
    assert got[-1]["error"]["message"] == "broken" and got[-1]["error"]["code"] == "upstream.reset"


def test_responses_truncated_stream_to_chat_error() -> None:
    raw = translate(TEXT_STREAM)[1]
    cut = raw[:raw.index(b"event: response.completed")]
    got = back(cut)
    assert got[-1]["error"]["code"] == "upstream.stream_truncated"


def test_responses_done_events_without_deltas() -> None:
    item = {"id": "fc_1", "type": "function_call", "call_id": "c", "name": "f", "arguments": '{"x":1}',
            "status": "completed"}
    lines = [
        {"type": "response.created", "response": {"id": "resp_9"}},
        {"type": "response.output_text.done", "output_index": 0, "content_index": 0, "text": "whole"},
        {"type": "response.output_item.added", "output_index": 1, "item": item | {"arguments": ""}},
        {"type": "response.output_item.done", "output_index": 1, "item": item},
        {"type": "response.completed", "response": {"id": "resp_9", "status": "completed"}},
    ]
    raw = b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in lines)
    got = back(raw)
    assert got[1]["choices"][0]["delta"] == {"content": "whole"} and got[1]["id"] == "chatcmpl-9"
    assert got[3]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"arguments": '{"x":1}'}


@pytest.mark.parametrize("raw", [b"data: nope\n\n", b"event: x\ndata: 3\n\n"])
def test_responses_garbage_raises_translation_error(raw: bytes) -> None:
    with pytest.raises(TranslationError):
        ResponsesToChatStream("m").feed(raw)


# Whole responses


COMPLETION = {
    "id": "chatcmpl-9", "object": "chat.completion", "created": 5, "model": "gpt-up",
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "Let me look.",
        "tool_calls": [{"id": "call_1", "type": "function",
                        "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]}}],
    "usage": USAGE,
}


def test_chat_to_response() -> None:
    out = chat_to_response(COMPLETION, {"model": "gpt-x", "input": "hi", "tools": [WEATHER]}, "resp_7", 9)
    response = Response.model_validate(out)
    assert response.id == "resp_7" and response.object == "response" and response.created_at == 9
    assert response.status == "completed" and response.model == "gpt-up" and response.output_text == "Let me look."
    message, call = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert out["output"][0]["content"][0]["annotations"] == []
    assert call.type == "function_call" and call.id is not None and call.id.startswith("fc_")
    assert (call.call_id, call.name, call.arguments, call.status) == ("call_1", "weather", '{"city":"Rome"}',
                                                                      "completed")
    assert response.usage is not None and response.usage.total_tokens == 18
    assert response.usage.input_tokens_details.cached_tokens == 4


@pytest.mark.parametrize(("finish", "reason"), [("length", "max_output_tokens"), ("content_filter", "content_filter")])
def test_chat_to_response_incomplete(finish: str, reason: str) -> None:
    completion = {"model": "m", "choices": [{"message": {"content": "abc", "refusal": "no"}, "finish_reason": finish}]}
    response = Response.model_validate(chat_to_response(completion, {"input": "x"}, "resp_1", 1))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == reason and response.usage is None
    assert [part.type for part in response.output[0].content] == ["output_text", "refusal"]  # type: ignore[union-attr]


def test_response_to_chat_and_items() -> None:
    response = chat_to_response(COMPLETION, {"model": "gpt-x", "input": "hi"}, "resp_7", 9)
    completion = ChatCompletion.model_validate(response_to_chat(response, "gpt-client"))
    assert completion.id == "chatcmpl-7" and completion.model == "gpt-client" and completion.created == 9
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me look."
    assert choice.message.tool_calls is not None and choice.message.tool_calls[0].id == "call_1"
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    assert response_items(response) == [{"role": "assistant", "content": "Let me look.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Rome"}'}}]}]
    incomplete = chat_to_response({"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]},
                                  {"input": "x"}, "resp_1", 1)
    assert response_to_chat(incomplete, "m")["choices"][0]["finish_reason"] == "length"
    with pytest.raises(TranslationError):
        response_to_chat({"status": "failed", "error": {"message": "boom"}}, "m")


# Requests


def test_to_chat_every_field() -> None:
    body = validate_responses({
        "model": "gpt-x", "instructions": "Be brief", "input": "Weather?", "tools": [WEATHER],
        "tool_choice": {"type": "function", "name": "weather"}, "parallel_tool_calls": False,
        "max_output_tokens": 99, "temperature": 0.5, "top_p": 0.8, "metadata": {"a": "b"}, "user": "u1",
        "text": {"format": {"type": "json_schema", "name": "W", "schema": {"type": "object"}, "strict": True,
                            "description": "d"}, "verbosity": "low"},
        "reasoning": {"effort": "high", "summary": "auto"}, "stream": True, "store": True,
        "previous_response_id": "resp_0", "include": ["reasoning.encrypted_content"], "truncation": "auto",
        "background": False, "seed": 3,
    })
    form = to_chat(body, [])
    assert form.body == {
        "model": "gpt-x",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Weather?"}],
        "tools": [{"type": "function", "function": {k: WEATHER[k] for k in ("name", "description", "parameters",
                                                                              "strict")}}],
        "parallel_tool_calls": False,
        "tool_choice": {"type": "function", "function": {"name": "weather"}},
        "max_completion_tokens": 99, "temperature": 0.5, "top_p": 0.8, "metadata": {"a": "b"}, "user": "u1",
        "response_format": {"type": "json_schema", "json_schema": {"name": "W", "schema": {"type": "object"},
                                                                   "strict": True, "description": "d"}},
        "verbosity": "low", "reasoning_effort": "high", "stream": True, "stream_options": {"include_usage": True},
    }
    assert form.dropped == ["reasoning.summary", "seed"] and form.unsupported == []


def test_to_chat_items_history_and_tool_turn() -> None:
    history = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "ok"}]
    body = validate_responses({"model": "m", "input": [
        {"role": "developer", "content": "dev note"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "Look"},
            {"type": "input_image", "image_url": "https://x.test/a.png", "detail": "high"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "rain"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
    ]})
    form = to_chat(body, history)
    assert form.body["messages"] == history + [
        {"role": "developer", "content": "dev note"},
        {"role": "user", "content": [{"type": "text", "text": "Look"},
                                     {"type": "image_url", "image_url": {"url": "https://x.test/a.png",
                                                                         "detail": "high"}}]},
        {"role": "assistant", "content": "Calling.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "rain"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
    ]
    assert form.unsupported == [] and "stream" not in form.body


def test_to_chat_unsupported() -> None:
    body = validate_responses({"input": [
        {"type": "item_reference", "id": "msg_1"},
        {"role": "user", "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"},
                                     {"type": "input_image", "file_id": "file_1"}]},
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
    ], "tools": [WEATHER, {"type": "web_search"}], "tool_choice": {"type": "file_search"}})
    form = to_chat(body, [])
    assert [path for path, _ in form.unsupported] == [
        "input[0]", "input[1].content[0]", "input[1].content[1]", "input[2]", "tools[1]", "tool_choice"]
    assert len(form.body["tools"]) == 1


CLOSE_AGENT = {"type": "function", "name": "close_agent", "description": "Close an agent",
               "parameters": {"type": "object", "properties": {"target": {"type": "string"}}}, "strict": False}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Sub-agents", "tools": [CLOSE_AGENT]}


def test_namespace_tools_are_chat_functions_whose_calls_get_their_namespace_back() -> None:
    # Codex CLI sends its sub-agent tools as a namespace, and later turns carry the call with its namespace.
    body = validate_responses({"model": "m", "tools": [WEATHER, AGENTS], "input": [
        {"role": "user", "content": "close it"},
        {"type": "function_call", "call_id": "c1", "name": "close_agent", "namespace": "multi_agent_v1",
         "arguments": '{"target":"a1"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "closed"},
    ]})
    form = to_chat(body, [])
    assert form.unsupported == [] and [tool["function"]["name"] for tool in form.body["tools"]] == [
        "weather", "close_agent"]
    assert form.body["tools"][1]["function"] == {k: CLOSE_AGENT[k] for k in ("name", "description", "parameters",
                                                                             "strict")}
    assert form.body["messages"][1]["tool_calls"][0]["function"] == {"name": "close_agent",
                                                                      "arguments": '{"target":"a1"}'}
    completion = {"model": "m", "choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "close_agent", "arguments": "{}"}},
        {"id": "c3", "type": "function", "function": {"name": "weather", "arguments": "{}"}}]}}]}
    response = Response.model_validate(chat_to_response(completion, body, "resp_1", 1))
    assert [(item.name, item.namespace) for item in response.output] == [  # type: ignore[union-attr]
        ("close_agent", "multi_agent_v1"), ("weather", None)]
    streamed = events(translate(chunk({"role": "assistant"}) + call_piece(0, "{}", "c2", "close_agent")
                                + chunk(finish="tool_calls") + b"data: [DONE]\n\n", body)[1])
    assert streamed[2]["item"]["namespace"] == "multi_agent_v1"
    final = Response.model_validate(streamed[-1]["response"])
    assert final.output[0].namespace == "multi_agent_v1"  # type: ignore[union-attr]


def test_namespace_tools_without_a_chat_form_are_unsupported() -> None:
    custom = {"type": "custom", "name": "apply_patch"}
    clash = {**AGENTS, "tools": [{**WEATHER}]}
    form = to_chat(validate_responses({"input": "x", "tools": [WEATHER, {**AGENTS, "tools": [CLOSE_AGENT, custom]},
                                                               clash]}), [])
    assert [path for path, _ in form.unsupported] == ["tools[1].tools[1]", "tools"]


def test_input_items_are_listed_with_ids() -> None:
    listed = input_items({"input": "hello"})
    assert listed[0]["id"].startswith("msg_") and listed[0]["content"] == [{"type": "input_text", "text": "hello"}]
    items = input_items({"input": [
        {"role": "user", "content": "q", "id": "msg_client"},
        {"role": "assistant", "content": "a"},
        {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c", "output": "r"},
    ]})
    assert items[0]["id"] == "msg_client" and items[1]["content"][0]["annotations"] == []
    assert items[2]["id"].startswith("fc_") and all(item["status"] == "completed" for item in items)
    for item in listed + items:
        ITEM.validate_python(item)


def test_chat_to_responses_request() -> None:
    chat = {
        "model": "alias", "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": [{"type": "text", "text": "hi"},
                                         {"type": "image_url", "image_url": {"url": "https://x.test/i.png"}}]},
            {"role": "assistant", "content": "Calling", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "done"},
            {"role": "developer", "content": "later"},
        ],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}}, "max_tokens": 20,
        "response_format": {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object"}}},
        "reasoning_effort": "low", "stream": True, "temperature": 0.1,
    }
    out = chat_to_responses_request(chat, "gpt-up")
    assert out == {
        "model": "gpt-up", "store": False, "instructions": "sys", "stream": True, "temperature": 0.1,
        "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "hi"},
                {"type": "input_image", "image_url": "https://x.test/i.png", "detail": "auto"}]},
            {"type": "message", "role": "assistant", "content": "Calling"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "done"},
            {"type": "message", "role": "developer", "content": "later"},
        ],
        "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": False}],
        "tool_choice": {"type": "function", "name": "f"}, "max_output_tokens": 20,
        "text": {"format": {"type": "json_schema", "name": "S", "schema": {"type": "object"}}},
        "reasoning": {"effort": "low"},
    }
    validate_responses(out)
    back = to_chat(out, [])
    assert back.unsupported == [] and back.body["messages"][0] == {"role": "system", "content": "sys"}
    with pytest.raises(TranslationError):
        chat_to_responses_request({"messages": [{"role": "wizard"}]}, "m")


# Validation


@pytest.mark.parametrize(("body", "param", "code"), [
    ([], None, "request.invalid_json"),
    ({}, "input", "request.missing_field"),
    ({"input": 3}, "input", "request.invalid_type"),
    ({"input": "x", "model": 1}, "model", "request.invalid_type"),
    ({"input": "x", "instructions": []}, "instructions", "request.invalid_type"),
    ({"input": "x", "tools": {}}, "tools", "request.invalid_type"),
    ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name", "request.missing_field"),
    ({"input": "x", "tools": [{"type": "function", "name": "f", "strict": 1}]}, "tools[0].strict",
     "request.invalid_type"),
    ({"input": "x", "tool_choice": 1}, "tool_choice", "request.invalid_type"),
    ({"input": "x", "tool_choice": "maybe"}, "tool_choice", "request.invalid_value"),
    ({"input": "x", "tool_choice": {"type": "function"}}, "tool_choice.name", "request.missing_field"),
    ({"input": "x", "parallel_tool_calls": 1}, "parallel_tool_calls", "request.invalid_type"),
    ({"input": "x", "max_output_tokens": True}, "max_output_tokens", "request.invalid_type"),
    ({"input": "x", "max_output_tokens": 1.5}, "max_output_tokens", "request.invalid_type"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens", "request.invalid_value"),
    ({"input": "x", "temperature": True}, "temperature", "request.invalid_type"),
    ({"input": "x", "top_p": "1"}, "top_p", "request.invalid_type"),
    ({"input": "x", "metadata": []}, "metadata", "request.invalid_type"),
    ({"input": "x", "metadata": {"k": 1}}, "metadata.k", "request.invalid_type"),
    ({"input": "x", "text": "json"}, "text", "request.invalid_type"),
    ({"input": "x", "text": {"format": "json"}}, "text.format", "request.invalid_type"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type", "request.invalid_value"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name",
     "request.missing_field"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "n"}}}, "text.format.schema",
     "request.missing_field"),
    ({"input": "x", "reasoning": "high"}, "reasoning", "request.invalid_type"),
    ({"input": "x", "reasoning": {"effort": 1}}, "reasoning.effort", "request.invalid_type"),
    ({"input": "x", "store": "yes"}, "store", "request.invalid_type"),
    ({"input": "x", "stream": 1}, "stream", "request.invalid_type"),
    ({"input": "x", "previous_response_id": 5}, "previous_response_id", "request.invalid_type"),
    ({"input": "x", "user": 5}, "user", "request.invalid_type"),
    ({"input": "x", "include": "all"}, "include", "request.invalid_type"),
    ({"input": "x", "include": [1]}, "include[0]", "request.invalid_type"),
    ({"input": "x", "truncation": "sometimes"}, "truncation", "request.invalid_value"),
    ({"input": [1]}, "input[0]", "request.invalid_type"),
    ({"input": [{"type": "telepathy"}]}, "input[0].type", "request.unsupported_item"),
    ({"input": [{"type": 3}]}, "input[0].type", "request.invalid_type"),
    ({"input": [{"role": "king", "content": "x"}]}, "input[0].role", "request.invalid_value"),
    ({"input": [{"role": "user"}]}, "input[0].content", "request.missing_field"),
    ({"input": [{"role": "user", "content": 1}]}, "input[0].content", "request.invalid_type"),
    ({"input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text",
     "request.missing_field"),
    ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, "input[0].content[0].type",
     "request.invalid_value"),
    ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input[0].content[0].image_url",
     "request.missing_field"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": {}}]},
     "input[0].arguments", "request.invalid_type"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output", "request.missing_field"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": 1}]}, "input[0].output",
     "request.invalid_type"),
    ({"input": [{"type": "item_reference"}]}, "input[0].id", "request.missing_field"),
])
def test_validation_errors(body: Any, param: str | None, code: str) -> None:
    with pytest.raises(RequestError) as caught:
        validate_responses(body)
    assert caught.value.status == 400 and caught.value.code == code and caught.value.param == param


def test_validation_passes_unknown_fields_and_known_items() -> None:
    body = {"input": [{"id": "msg_1"}, {"type": "web_search_call", "id": "ws"}], "seed": 1, "service_tier": "flex"}
    assert validate_responses(body) is body


# The openai SDK against the translation, end to end over a mock transport


class Weather(BaseModel):
    city: str
    degrees: int


def sdk_client(completion: dict[str, Any] | None = None, stream: bytes | None = None) -> openai.OpenAI:
    """An openai client whose /v1/responses is answered by translating a canned chat answer."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        body = validate_responses(json.loads(request.content))
        form = to_chat(body, [])
        assert form.unsupported == []
        if body.get("stream"):
            translator = ChatToResponsesStream(body, "resp_sdk", 1700000000)
            out = translator.feed(stream or b"") + translator.close()
            return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=out)
        answer = chat_to_response(completion or {}, body, "resp_sdk", 1700000000)
        return httpx2.Response(200, json=answer)

    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://proxy.test/v1", http_client=http, max_retries=0)


def test_sdk_create_and_parse() -> None:
    completion = {"model": "gpt-up", "choices": [{"message": {"content": '{"city":"Oslo","degrees":3}'},
                                                  "finish_reason": "stop"}], "usage": USAGE}
    client = sdk_client(completion)
    response = client.responses.create(model="gpt-x", input="hi")
    assert response.output_text == '{"city":"Oslo","degrees":3}' and response.id == "resp_sdk"
    parsed = client.responses.parse(model="gpt-x", input="hi", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Oslo", degrees=3)


def test_sdk_stream_and_final_response() -> None:
    client = sdk_client(stream=TOOLS_STREAM)
    with client.responses.stream(model="gpt-x", input="hi", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Checking." and [item.type for item in final.output] == [
        "message", "function_call", "function_call"]
    raw = client.responses.create(model="gpt-x", input="hi", stream=True)
    assert [event.sequence_number for event in raw] == list(range(len(kinds)))


def test_sdk_stream_parsed() -> None:
    raw = chunk({"content": '{"city":"Rome",'}) + chunk({"content": '"degrees":20}'}) + chunk(finish="stop")
    client = sdk_client(stream=raw + b"data: [DONE]\n\n")
    with client.responses.stream(model="gpt-x", input="hi", text_format=Weather) as stream:
        final = stream.get_final_response()
    assert final.output_parsed == Weather(city="Rome", degrees=20)
