"""Tests for OpenAI <-> Anthropic translation, checked against the official SDKs' own types and parsers."""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from core.errors import anthropic_error
from core.providers.anthropic import (
    ANTHROPIC_VERSION,
    DEFAULT_MAX_TOKENS,
    TranslationError,
    anthropic_to_openai_request,
    openai_to_anthropic_request,
)
from core.providers.anthropic_response import (
    anthropic_to_openai_response,
    openai_to_anthropic_response,
)
from core.providers.anthropic_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from core.sse import SSEDecoder

STREAM_EVENT = TypeAdapter(RawMessageStreamEvent)
PNG = "iVBORw0KGgo="
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Streams stamp `created` once; a fixed clock makes outputs of separate runs byte-comparable.
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)


def sdk_response(status: int, body: bytes, content_type: str = "application/json") -> httpx2.Client:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, headers={"content-type": content_type}, content=body)

    return httpx2.Client(transport=httpx2.MockTransport(handler))


def openai_client(status: int, body: bytes, content_type: str = "application/json") -> openai.OpenAI:
    http = sdk_response(status, body, content_type)
    return openai.OpenAI(api_key="k", base_url="http://upstream.test/v1", http_client=http, max_retries=0)


def anthropic_client(status: int, body: bytes, content_type: str = "application/json") -> anthropic.Anthropic:
    http = sdk_response(status, body, content_type)
    return anthropic.Anthropic(api_key="k", base_url="http://upstream.test", http_client=http, max_retries=0)


def sse_frames(body: bytes, separator: bytes = b"\n\n") -> list[bytes]:
    assert body.endswith(separator)
    return body[: -len(separator)].split(separator)


def openai_chunks(body: bytes) -> list[dict[str, Any]]:
    """Parses translated OpenAI SSE exactly framed as the real API does it, validating every chunk."""
    frames = sse_frames(body)
    assert frames[-1] == b"data: [DONE]"
    chunks = []
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and b"\n" not in frame
        chunk = json.loads(frame[len(b"data: ") :])
        if "error" not in chunk:
            ChatCompletionChunk.model_validate(chunk)
        chunks.append(chunk)
    return chunks


def anthropic_events(body: bytes) -> list[dict[str, Any]]:
    """Parses translated Anthropic SSE (`event:` then `data:` per frame), validating every event."""
    events = []
    for frame in sse_frames(body):
        event_line, data_line = frame.split(b"\n")
        assert event_line.startswith(b"event: ") and data_line.startswith(b"data: ")
        event = json.loads(data_line[len(b"data: ") :])
        assert event["type"] == event_line[len(b"event: ") :].decode()
        if event["type"] == "error":
            ErrorResponse.model_validate(event)
        elif event["type"] != "ping":
            STREAM_EVENT.validate_python(event)
        events.append(event)
    return events


def run_stream(stream: AnthropicToOpenAIStream | OpenAIToAnthropicStream, pieces: list[bytes]) -> bytes:
    return b"".join(stream.feed(piece) for piece in pieces) + stream.close()


def splits(data: bytes) -> Iterator[list[bytes]]:
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), 12))
        yield [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def anthropic_sse(*events: dict[str, Any], newline: bytes = b"\n") -> bytes:
    frames = [
        b"event: " + e["type"].encode() + newline + b"data: " + json.dumps(e).encode() + newline + newline
        for e in events
    ]
    return b"".join(frames)


def openai_sse(*chunks: dict[str, Any] | str) -> bytes:
    return b"".join(
        b"data: " + (c.encode() if isinstance(c, str) else json.dumps(c).encode()) + b"\n\n" for c in chunks
    )


# A real-shaped Anthropic stream: thinking, text, one tool call with its input split, usage at both ends.
ANTHROPIC_STREAM = anthropic_sse(
    {
        "type": "message_start",
        "message": {
            "id": "msg_01ABC",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 25, "cache_read_input_tokens": 5, "output_tokens": 1},
        },
    },
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Paris, so..."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Let me check "}},
    {"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "the weather — ☀️."}},
    {"type": "content_block_stop", "index": 1},
    {
        "type": "content_block_start",
        "index": 2,
        "content_block": {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {}},
    },
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 2},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"output_tokens": 42},
    },
    {"type": "message_stop"},
)


def fn_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def openai_chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-XYZ",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }


def call_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    call: dict[str, Any] = {"index": index, "function": {"arguments": arguments}}
    if call_id is not None:
        call |= {"id": call_id, "type": "function"}
        call["function"]["name"] = name
    return {"tool_calls": [call]}


# A real-shaped OpenAI stream: role, text, two parallel tool calls with split arguments, finish, usage chunk.
OPENAI_STREAM = openai_sse(
    openai_chunk({"role": "assistant", "content": "", "refusal": None}),
    openai_chunk({"content": "Checking "}),
    openai_chunk({"content": "both — ☀️."}),
    openai_chunk(call_delta(0, "", "call_a", "get_weather")),
    openai_chunk(call_delta(0, '{"city":')),
    openai_chunk(call_delta(0, '"Paris"}')),
    openai_chunk(call_delta(1, '{"city":"Rome"}', "call_b", "get_weather")),
    openai_chunk({}, "tool_calls"),
    {
        "id": "chatcmpl-XYZ",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o",
        "choices": [],
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    },
    "[DONE]",
)


# OpenAI -> Anthropic requests


def test_version_is_the_one_anthropic_documents() -> None:
    assert ANTHROPIC_VERSION == "2023-06-01"


def test_minimal_request_gets_model_and_default_max_tokens() -> None:
    out = openai_to_anthropic_request({"model": "alias", "messages": [{"role": "user", "content": "Hi"}]}, "claude-x")
    assert out == {
        "model": "claude-x",
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": DEFAULT_MAX_TOKENS,
    }
    assert DEFAULT_MAX_TOKENS == 4096


def test_system_and_developer_messages_become_system_blocks() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "Hi"},
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["system"] == [{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Answer in French."}]
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_single_system_message_stays_a_string() -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert openai_to_anthropic_request(body, "m")["system"] == "Be brief."


def test_sampling_parameters() -> None:
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 10,
        "max_completion_tokens": 20,
        "temperature": 1.7,
        "top_p": 0.9,
        "stop": "END",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "user-123",
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["max_tokens"] == 20  # max_completion_tokens supersedes the deprecated max_tokens
    assert out["temperature"] == 1  # Anthropic's maximum
    assert out["top_p"] == 0.9
    assert out["stop_sequences"] == ["END"]
    assert out["stream"] is True
    assert out["metadata"] == {"user_id": "user-123"}
    assert "stream_options" not in out


def test_legacy_max_tokens_and_stop_list() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 7, "stop": ["a", "b"], "temperature": 0.3}
    out = openai_to_anthropic_request(body, "m")
    assert (out["max_tokens"], out["stop_sequences"], out["temperature"]) == (7, ["a", "b"], 0.3)


def test_user_content_parts_with_images_and_pdf() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
    ]
    out = openai_to_anthropic_request({"messages": [{"role": "user", "content": content}]}, "m")
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "What is in these?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
    ]


def test_cache_control_on_openai_parts_is_kept() -> None:
    marked = {"type": "text", "text": "Long context", "cache_control": {"type": "ephemeral"}}
    body = {"messages": [{"role": "system", "content": [marked]}, {"role": "user", "content": [marked]}]}
    out = openai_to_anthropic_request(body, "m")
    assert out["system"] == [marked]
    assert out["messages"] == [{"role": "user", "content": [marked]}]


def test_tool_conversation_merges_results_into_one_user_turn() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "Weather in Paris and Rome?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    fn_call("call_a", "get_weather", '{"city":"Paris"}'),
                    fn_call("call:b", "get_weather", ""),
                ],
            },
            {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
            {"role": "tool", "tool_call_id": "call:b", "content": [{"type": "text", "text": "21C"}]},
            {"role": "user", "content": "Thanks, and tomorrow?"},
            {"role": "user", "content": "Short answer please."},
        ],
        "tools": [WEATHER_TOOL],
    }
    out = openai_to_anthropic_request(body, "m")
    assert out["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
                # Anthropic's id alphabet has no ":"; the tool result below is renamed the same way.
                {"type": "tool_use", "id": "call_b", "name": "get_weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_a", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "call_b", "content": "21C"},
                {"type": "text", "text": "Thanks, and tomorrow?"},
                {"type": "text", "text": "Short answer please."},
            ],
        },
    ]
    assert out["tools"] == [
        {
            "name": "get_weather",
            "description": "Current weather for a city",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]


def test_assistant_with_only_tool_calls_and_empty_messages_dropped() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "Go"},
            {"role": "assistant", "content": "", "tool_calls": [fn_call("c1", "f", "{}")]},
            {"role": "tool", "tool_call_id": "c1", "content": ""},
            {"role": "assistant", "content": None},
        ]
    }
    out = openai_to_anthropic_request(body, "m")
    tool_use = {"type": "tool_use", "id": "c1", "name": "f", "input": {}}
    assert out["messages"][1] == {"role": "assistant", "content": [tool_use]}
    assert out["messages"][2] == {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "c1"}]}
    assert len(out["messages"]) == 3


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("none", {"type": "none"}),
        ("required", {"type": "any"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
    ],
)
def test_tool_choice_to_anthropic(choice: object, expected: dict[str, Any]) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL], "tool_choice": choice}
    assert openai_to_anthropic_request(body, "m")["tool_choice"] == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": [WEATHER_TOOL], "parallel_tool_calls": False}
    assert openai_to_anthropic_request(body, "m")["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    body["tool_choice"] = "required"
    assert openai_to_anthropic_request(body, "m")["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    tools = [{"type": "function", "function": {"name": "now"}}]
    body = {"messages": [{"role": "user", "content": "Hi"}], "tools": tools}
    assert openai_to_anthropic_request(body, "m")["tools"] == [
        {"name": "now", "input_schema": {"type": "object", "properties": {}}}
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": ["hi"]}, "messages[0]"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "messages[0].content[0].type"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]}, "messages[0].content[0].text"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
            "messages[0].content[0].file.file_data",
        ),
        ({"messages": [{"role": "system", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].type"),
        (
            {"messages": [{"role": "assistant", "tool_calls": [fn_call("c", "f", "{")]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [fn_call("c", "f", "[1]")]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}]},
            "messages[0].tool_calls[0].id",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
        ({"messages": [], "max_tokens": 0}, "max_tokens"),
        ({"messages": [], "max_completion_tokens": True}, "max_completion_tokens"),
        ({"messages": [], "temperature": "hot"}, "temperature"),
        ({"messages": [], "stop": [1]}, "stop[0]"),
        ({"messages": [], "n": 2}, "n"),
        ({"messages": [], "user": 5}, "user"),
        ({"messages": [], "tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
        ({"messages": [], "tools": [{"type": "function", "function": {"parameters": {}}}]}, "tools[0].function.name"),
        ({"messages": [], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
def test_untranslatable_openai_requests_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(TranslationError) as caught:
        openai_to_anthropic_request(body, "m")
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


# Anthropic -> OpenAI requests


def test_anthropic_request_to_openai() -> None:
    body = {
        "model": "claude-alias",
        "max_tokens": 300,
        "system": [
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use SI units."},
        ],
        "messages": [
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}},
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [
                    {"type": "text", "text": "18C"},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/radar.png"}},
                ]},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "stop_sequences": ["END"],
        "temperature": 0.5,
        "top_p": 0.8,
        "top_k": 40,
        "stream": True,
        "metadata": {"user_id": "u-1"},
        "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
    }
    out = anthropic_to_openai_request(body, "gpt-4o")
    assert out == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief.\nUse SI units."},
            {"role": "user", "content": [
                {"type": "text", "text": "Weather here?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg"}},
                {
                    "type": "file",
                    "file": {"filename": "document.pdf", "file_data": "data:application/pdf;base64,JVBERi0="},
                },
            ]},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [fn_call("toolu_1", "get_weather", '{"city":"Paris"}')],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18C"},
            {"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "https://example.com/radar.png"}},
                {"type": "text", "text": "And tomorrow?"},
            ]},
        ],
        "max_completion_tokens": 300,
        "temperature": 0.5,
        "top_p": 0.8,
        "stop": ["END"],
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "u-1",
        "tools": [
            {
                "type": "function",
                "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object"}},
            }
        ],
        "tool_choice": "required",
        "parallel_tool_calls": False,
    }


def test_assistant_with_only_tool_use_has_null_content() -> None:
    body = {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}
    message = anthropic_to_openai_request(body, "m")["messages"][0]
    assert message["content"] is None and message["tool_calls"][0]["function"]["arguments"] == "{}"


def test_tool_results_come_before_the_user_text_sent_with_them() -> None:
    content = [
        {"type": "tool_result", "tool_use_id": "t1", "content": "18C", "is_error": False},
        {"type": "tool_result", "tool_use_id": "t2"},
        {"type": "text", "text": "Thanks"},
    ]
    assert anthropic_to_openai_request({"messages": [{"role": "user", "content": content}]}, "m")["messages"] == [
        {"role": "tool", "tool_call_id": "t1", "content": "18C"},
        {"role": "tool", "tool_call_id": "t2", "content": ""},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        ({"type": "tool", "name": "f"}, {"type": "function", "function": {"name": "f"}}),
    ],
)
def test_tool_choice_to_openai(choice: dict[str, Any], expected: object) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "tool_choice": choice}
    assert anthropic_to_openai_request(body, "m")["tool_choice"] == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"messages": {}}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}]},
            "messages[0].content[0].source.type",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]},
            "messages[0].content[0].tool_use_id",
        ),
        (
            {"messages": [{"role": "assistant", "content": [{"type": "server_tool_use"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "content": [
                {"type": "tool_use", "id": "t", "name": "f", "input": 1}
            ]}]},
            "messages[0].content[0].input",
        ),
        ({"messages": [], "system": 3}, "system"),
        ({"messages": [], "max_tokens": "many"}, "max_tokens"),
        ({"messages": [], "stop_sequences": "END"}, "stop_sequences"),
        ({"messages": [], "metadata": {"user_id": 1}}, "metadata.user_id"),
        ({"messages": [], "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"messages": [], "tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"messages": [], "tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ],
)
def test_untranslatable_anthropic_requests_name_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(TranslationError) as caught:
        anthropic_to_openai_request(body, "m")
    assert caught.value.field == field


# Request round trips


TOOL_CONVERSATION_OPENAI: dict[str, Any] = {
    "model": "gpt-4o",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [fn_call("call_a", "get_weather", '{"city":"Paris"}')],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "18C"},
        {"role": "assistant", "content": "It is 18C."},
        {"role": "user", "content": [
            {"type": "text", "text": "And this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
        ]},
    ],
    "max_completion_tokens": 100,
    "temperature": 0.2,
    "stop": ["END"],
    "user": "u-1",
    "tools": [WEATHER_TOOL],
    "tool_choice": "required",
}


def test_openai_request_round_trips_through_anthropic() -> None:
    original = copy.deepcopy(TOOL_CONVERSATION_OPENAI)
    back = anthropic_to_openai_request(openai_to_anthropic_request(original, "claude"), "gpt-4o")
    assert back == TOOL_CONVERSATION_OPENAI
    assert original == TOOL_CONVERSATION_OPENAI  # inputs are not mutated


def test_anthropic_request_round_trips_through_openai() -> None:
    anthropic_body = openai_to_anthropic_request(TOOL_CONVERSATION_OPENAI, "claude")
    assert openai_to_anthropic_request(anthropic_to_openai_request(anthropic_body, "gpt"), "claude") == anthropic_body


# Responses


ANTHROPIC_MESSAGE: dict[str, Any] = {
    "id": "msg_01XYZ",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-4-5",
    "content": [
        {"type": "thinking", "thinking": "Let me think", "signature": "sig"},
        {"type": "text", "text": "Checking "},
        {"type": "text", "text": "now."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "cache_read_input_tokens": 30,
        "output_tokens": 15,
    },
}


def test_anthropic_response_to_openai() -> None:
    out = anthropic_to_openai_response(ANTHROPIC_MESSAGE, "my-model")
    completion = ChatCompletion.model_validate(out)
    assert completion.id == "chatcmpl-01XYZ"
    assert completion.model == "my-model"
    assert completion.created == 1_700_000_000
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking now."
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert call.type == "function"
    assert (call.id, call.function.name) == ("toolu_1", "get_weather")
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert out["usage"] == {
        "prompt_tokens": 150,
        "completion_tokens": 15,
        "total_tokens": 165,
        "prompt_tokens_details": {"cached_tokens": 30},
    }


def test_openai_sdk_parses_translated_response() -> None:
    body = json.dumps(anthropic_to_openai_response(ANTHROPIC_MESSAGE, "m")).encode()
    client = openai_client(200, body)
    completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert completion.choices[0].message.tool_calls is not None
    assert completion.usage is not None and completion.usage.total_tokens == 165


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("model_context_window_exceeded", "length"),
        ("pause_turn", "stop"),
        (None, "stop"),
    ],
)
def test_stop_reason_to_finish_reason(stop_reason: str | None, finish_reason: str) -> None:
    body = ANTHROPIC_MESSAGE | {"stop_reason": stop_reason, "content": [{"type": "text", "text": "x"}]}
    assert anthropic_to_openai_response(body, "m")["choices"][0]["finish_reason"] == finish_reason


OPENAI_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-ABC",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-4o",
    "choices": [{
        "index": 0,
        "message": {
            "role": "assistant",
            "content": "Checking.",
            "refusal": None,
            "tool_calls": [
                fn_call("call_1", "get_weather", '{"city": "Paris"}'),
                fn_call("call_2", "now", ""),
            ],
        },
        "logprobs": None,
        "finish_reason": "tool_calls",
    }],
    "usage": {
        "prompt_tokens": 50,
        "completion_tokens": 9,
        "total_tokens": 59,
        "prompt_tokens_details": {"cached_tokens": 20},
    },
}


def test_openai_response_to_anthropic() -> None:
    out = openai_to_anthropic_response(OPENAI_COMPLETION, "claude-alias")
    message = Message.model_validate(out)
    assert message.id == "msg_ABC"
    assert message.model == "claude-alias"
    assert message.stop_reason == "tool_use"
    assert out["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "call_2", "name": "now", "input": {}},
    ]
    assert out["usage"] == {
        "input_tokens": 30,
        "output_tokens": 9,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 20,
    }


def test_anthropic_sdk_parses_translated_response() -> None:
    body = json.dumps(openai_to_anthropic_response(OPENAI_COMPLETION, "claude")).encode()
    client = anthropic_client(200, body)
    message = client.messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]


@pytest.mark.parametrize(
    ("finish_reason", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_finish_reason_to_stop_reason(finish_reason: str | None, stop_reason: str) -> None:
    body = copy.deepcopy(OPENAI_COMPLETION)
    body["choices"][0]["finish_reason"] = finish_reason
    assert openai_to_anthropic_response(body, "m")["stop_reason"] == stop_reason


def test_refusal_becomes_text_and_missing_usage_is_zero() -> None:
    message = {"role": "assistant", "content": None, "refusal": "I can't."}
    body = {"id": "chatcmpl-1", "choices": [{"message": message, "finish_reason": "stop"}]}
    out = openai_to_anthropic_response(body, "m")
    Message.model_validate(out)
    assert out["content"] == [{"type": "text", "text": "I can't."}]
    assert out["usage"]["input_tokens"] == 0 and out["usage"]["output_tokens"] == 0


def test_response_round_trip_keeps_content_and_usage() -> None:
    back = openai_to_anthropic_response(anthropic_to_openai_response(ANTHROPIC_MESSAGE, "m"), "claude-sonnet-4-5")
    assert back["id"] == ANTHROPIC_MESSAGE["id"]
    assert back["stop_reason"] == "tool_use"
    assert back["content"] == [{"type": "text", "text": "Checking now."}, ANTHROPIC_MESSAGE["content"][3]]
    # Cache writes are folded into input tokens on the OpenAI side; reads survive.
    assert back["usage"] == {
        "input_tokens": 120,
        "output_tokens": 15,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 30,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"choices": []}, "choices"),
        ({"choices": [{"message": "hi"}]}, "choices[0].message"),
        (
            {"choices": [{"message": {"tool_calls": [fn_call("c", "f", "{oops")]}}]},
            "choices[0].message.tool_calls[0].function.arguments",
        ),
    ],
)
def test_untranslatable_openai_responses(body: dict[str, Any], field: str) -> None:
    with pytest.raises(TranslationError) as caught:
        openai_to_anthropic_response(body, "m")
    assert caught.value.field == field


def test_untranslatable_anthropic_response() -> None:
    with pytest.raises(TranslationError) as caught:
        anthropic_to_openai_response({"content": "hello"}, "m")
    assert caught.value.field == "content"


# Errors


@pytest.mark.parametrize(
    ("status", "error_type", "exception"),
    [
        (400, "invalid_request_error", anthropic.BadRequestError),
        (401, "authentication_error", anthropic.AuthenticationError),
        (402, "billing_error", anthropic.APIStatusError),
        (403, "permission_error", anthropic.PermissionDeniedError),
        (404, "not_found_error", anthropic.NotFoundError),
        (413, "invalid_request_error", anthropic.APIStatusError),
        (429, "rate_limit_error", anthropic.RateLimitError),
        (500, "api_error", anthropic.InternalServerError),
        (502, "api_error", anthropic.InternalServerError),
        (503, "overloaded_error", anthropic.InternalServerError),
        (504, "timeout_error", anthropic.InternalServerError),
        (529, "overloaded_error", anthropic.APIStatusError),
    ],
)
def test_anthropic_error_shape(status: int, error_type: str, exception: type[Exception]) -> None:
    body = anthropic_error(status, "slow down", "rate_cap.exceeded")
    assert body == {"type": "error", "error": {"type": error_type, "message": "slow down", "code": "rate_cap.exceeded"}}
    ErrorResponse.model_validate(body)
    client = anthropic_client(status, json.dumps(body).encode())
    with pytest.raises(exception) as caught:
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert "slow down" in str(caught.value)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_sse_decoder_line_endings_comments_and_multiline_data(newline: bytes) -> None:
    lines = [b": keep-alive", b"event: a", b"data: one", b"data:two", b"id: 1", b"", b"data: {}", b"", b"", b""]
    raw = newline.join(lines)
    for pieces in splits(raw):
        decoder = SSEDecoder()
        events = [e for piece in pieces for e in decoder.feed(piece)] + decoder.close()
        assert events == [("a", "one\ntwo"), ("", "{}")]


def test_sse_decoder_flushes_an_unterminated_last_event_on_close() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == []
    assert decoder.close() == [("", "[DONE]")]


def test_sse_decoder_keeps_multibyte_characters_split_across_feeds() -> None:
    raw = "data: é☀️\n\n".encode()
    decoder = SSEDecoder()
    assert [e for i in range(len(raw)) for e in decoder.feed(raw[i : i + 1])] == [("", "é☀️")]


# Anthropic stream -> OpenAI stream


def test_anthropic_stream_to_openai_chunks() -> None:
    stream = AnthropicToOpenAIStream("my-model", include_usage=True)
    chunks = openai_chunks(run_stream(stream, [ANTHROPIC_STREAM]))
    assert {c["id"] for c in chunks} == {"chatcmpl-01ABC"}
    assert {c["model"] for c in chunks} == {"my-model"}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"content": "Let me check "},
        {"content": "the weather — ☀️."},
        {"tool_calls": [fn_call("toolu_01", "get_weather", "") | {"index": 0}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert all(c["usage"] is None for c in chunks[:-1])
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 42,
        "total_tokens": 72,
        "prompt_tokens_details": {"cached_tokens": 5},
    }
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == usage
    assert stream.usage == usage


def test_anthropic_stream_without_usage_option() -> None:
    chunks = openai_chunks(run_stream(AnthropicToOpenAIStream("m", include_usage=False), [ANTHROPIC_STREAM]))
    assert all("usage" not in c and c["choices"] for c in chunks)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_anthropic_stream_output_is_independent_of_splits(newline: bytes) -> None:
    upstream = ANTHROPIC_STREAM.replace(b"\n", newline)
    expected = run_stream(AnthropicToOpenAIStream("m", include_usage=True), [ANTHROPIC_STREAM])
    for pieces in splits(upstream):
        assert run_stream(AnthropicToOpenAIStream("m", include_usage=True), pieces) == expected


def test_openai_sdk_accumulates_translated_stream() -> None:
    body = run_stream(AnthropicToOpenAIStream("m", include_usage=True), [ANTHROPIC_STREAM])
    client = openai_client(200, body, "text/event-stream")
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        completion = stream.get_final_completion()
    message = completion.choices[0].message
    assert message.content == "Let me check the weather — ☀️."
    assert message.tool_calls is not None
    assert message.tool_calls[0].function.arguments == '{"city": "Paris"}'
    assert completion.choices[0].finish_reason == "tool_calls"
    assert completion.usage is not None and completion.usage.completion_tokens == 42


def test_anthropic_error_event_becomes_openai_error_chunk() -> None:
    upstream = ANTHROPIC_STREAM.split(b"event: content_block_start")[0] + anthropic_sse(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    stream = AnthropicToOpenAIStream("m", include_usage=True)
    body = run_stream(stream, [upstream])
    chunks = openai_chunks(body)
    error = {"message": "Overloaded", "type": "service_unavailable_error", "param": None, "code": "upstream.overloaded_error"}
    assert chunks[-1] == {"error": error}
    assert stream.usage is not None and stream.usage["prompt_tokens"] == 30  # counted before the failure
    client = openai_client(200, body, "text/event-stream")
    with pytest.raises(openai.APIError, match="Overloaded"):
        list(client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], stream=True))


def test_truncated_anthropic_stream_ends_with_an_error() -> None:
    upstream = ANTHROPIC_STREAM.split(b"event: message_delta")[0]
    chunks = openai_chunks(run_stream(AnthropicToOpenAIStream("m", include_usage=True), [upstream]))
    assert chunks[-1]["error"]["message"] == "upstream stream ended before message_stop"


def test_anthropic_stream_rejects_non_json_data() -> None:
    with pytest.raises(TranslationError, match="message_start event"):
        AnthropicToOpenAIStream("m", include_usage=False).feed(b"event: message_start\ndata: {nope\n\n")


def test_nothing_is_emitted_after_the_end() -> None:
    stream = AnthropicToOpenAIStream("m", include_usage=False)
    body = stream.feed(ANTHROPIC_STREAM)
    assert body.endswith(b"data: [DONE]\n\n")
    assert stream.feed(ANTHROPIC_STREAM) == b"" and stream.close() == b""


# OpenAI stream -> Anthropic stream


def test_openai_stream_to_anthropic_events() -> None:
    stream = OpenAIToAnthropicStream("claude-alias")
    events = anthropic_events(run_stream(stream, [OPENAI_STREAM]))
    assert [e["type"] for e in events] == [
        "message_start", "ping",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop",
    ]  # fmt: skip
    assert events[0]["message"]["id"] == "msg_XYZ" and events[0]["message"]["model"] == "claude-alias"
    assert [e["index"] for e in events if "index" in e] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    assert events[6]["content_block"] == {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {}}
    assert events[7]["delta"] == {"type": "input_json_delta", "partial_json": '{"city":'}
    assert events[-2]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert events[-2]["usage"] == {
        "input_tokens": 20,
        "output_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 10,
    }
    assert stream.usage is not None and stream.usage["total_tokens"] == 42


def test_openai_stream_output_is_independent_of_splits() -> None:
    expected = run_stream(OpenAIToAnthropicStream("m"), [OPENAI_STREAM])
    for pieces in splits(OPENAI_STREAM):
        assert run_stream(OpenAIToAnthropicStream("m"), pieces) == expected


def test_anthropic_sdk_accumulates_translated_stream() -> None:
    body = run_stream(OpenAIToAnthropicStream("claude"), [OPENAI_STREAM])
    client = anthropic_client(200, body, "text/event-stream")
    with client.messages.stream(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as stream:
        message = stream.get_final_message()
    assert [block.type for block in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].type == "text" and message.content[0].text == "Checking both — ☀️."
    inputs = [block.input for block in message.content if block.type == "tool_use"]
    assert inputs == [{"city": "Paris"}, {"city": "Rome"}]
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (20, 12)


def test_openai_error_chunk_becomes_anthropic_error_event() -> None:
    upstream = openai_sse(
        openai_chunk({"role": "assistant", "content": "Hel"}),
        {"error": {"message": "Rate limit reached", "type": "rate_limit_error", "code": "rate_limit_exceeded"}},
    )
    events = anthropic_events(run_stream(OpenAIToAnthropicStream("m"), [upstream]))
    error = {"type": "rate_limit_error", "message": "Rate limit reached", "code": "upstream.rate_limit_exceeded"}
    assert events[-1] == {"type": "error", "error": error}
    client = anthropic_client(200, run_stream(OpenAIToAnthropicStream("m"), [upstream]), "text/event-stream")
    with pytest.raises(anthropic.APIStatusError, match="Rate limit reached"):
        list(client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}], stream=True))


def test_openai_stream_without_done_finishes_on_close() -> None:
    upstream = OPENAI_STREAM.removesuffix(b"data: [DONE]\n\n")
    expected = run_stream(OpenAIToAnthropicStream("m"), [OPENAI_STREAM])
    assert run_stream(OpenAIToAnthropicStream("m"), [upstream]) == expected


def test_truncated_openai_stream_ends_with_an_error_event() -> None:
    upstream = openai_sse(openai_chunk({"content": "Hel"}))
    events = anthropic_events(run_stream(OpenAIToAnthropicStream("m"), [upstream]))
    assert events[-1]["type"] == "error"
    assert events[-1]["error"]["message"] == "upstream stream ended before finish_reason"


def test_empty_openai_stream_still_makes_a_complete_message() -> None:
    events = anthropic_events(run_stream(OpenAIToAnthropicStream("m"), [openai_sse("[DONE]")]))
    assert [e["type"] for e in events] == ["message_start", "ping", "message_delta", "message_stop"]
    assert events[2]["delta"]["stop_reason"] == "end_turn"


def test_openai_tool_calls_without_index_are_told_apart_by_id() -> None:
    def call(call_id: str | None, arguments: str) -> dict[str, Any]:
        fields: dict[str, Any] = {"function": {"arguments": arguments, "name": "f"}}
        return {"tool_calls": [fields | ({"id": call_id} if call_id else {})]}

    upstream = openai_sse(
        openai_chunk(call("call_1", '{"a":')),
        openai_chunk(call(None, "1}")),
        openai_chunk(call("call_2", "{}")),
        openai_chunk({}, "tool_calls"),
        "[DONE]",
    )
    events = anthropic_events(run_stream(OpenAIToAnthropicStream("m"), [upstream]))
    starts = [e["content_block"]["id"] for e in events if e["type"] == "content_block_start"]
    assert starts == ["call_1", "call_2"]


def test_interleaved_openai_tool_arguments_are_refused() -> None:
    upstream = openai_sse(
        openai_chunk(call_delta(0, '{"a":', "c0", "f")),
        openai_chunk(call_delta(1, "{}", "c1", "g")),
        openai_chunk(call_delta(0, "1}")),
    )
    with pytest.raises(TranslationError) as caught:
        OpenAIToAnthropicStream("m").feed(upstream)
    assert caught.value.field == "choices[0].delta.tool_calls[0]"


# Stream round trips


def test_anthropic_stream_round_trip() -> None:
    openai_body = run_stream(AnthropicToOpenAIStream("gpt-4o", include_usage=True), [ANTHROPIC_STREAM])
    back = run_stream(OpenAIToAnthropicStream("claude-sonnet-4-5"), [openai_body])
    client = anthropic_client(200, back, "text/event-stream")
    with client.messages.stream(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]) as stream:
        message = stream.get_final_message()
    assert message.id == "msg_01ABC"
    assert message.stop_reason == "tool_use"
    assert message.model_dump(include={"content"}, exclude_none=True)["content"] == [
        {"type": "text", "text": "Let me check the weather — ☀️."},
        {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
    ]
    # Cache writes fold into input tokens on the OpenAI leg; reads survive both legs.
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (25, 5, 42)


def test_openai_stream_round_trip() -> None:
    anthropic_body = run_stream(OpenAIToAnthropicStream("claude"), [OPENAI_STREAM])
    back = run_stream(AnthropicToOpenAIStream("gpt-4o", include_usage=True), [anthropic_body])
    client = openai_client(200, back, "text/event-stream")
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": "x"}]) as stream:
        completion = stream.get_final_completion()
    assert completion.id == "chatcmpl-XYZ"
    message = completion.choices[0].message
    assert message.content == "Checking both — ☀️."
    assert message.tool_calls is not None
    calls = [(c.id, c.function.arguments) for c in message.tool_calls]
    assert calls == [("call_a", '{"city":"Paris"}'), ("call_b", '{"city":"Rome"}')]
    assert completion.usage is not None
    assert completion.usage.model_dump(include={"prompt_tokens", "completion_tokens", "total_tokens"}) == {
        "prompt_tokens": 30, "completion_tokens": 12, "total_tokens": 42,
    }  # fmt: skip
