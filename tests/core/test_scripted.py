"""The scripted upstream (tests/scripted.py) speaks the real wire shapes: the official SDKs, pointed straight at it,
parse every answer, and every raw object and event validates against the SDKs' own types."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageFunctionToolCall
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from tests.harness import serve_app
from tests.scripted import Error, Json, ScriptedUpstream, Text, ToolCalls, embedding, pieces

WEATHER_ARGS = '{"city": "Paris", "unit": "celsius"}'
CHAT_TOOLS: Any = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}]
RESPONSES_TOOLS: Any = [{"type": "function", "name": "get_weather", "description": "Weather in a city",
                         "parameters": CHAT_TOOLS[0]["function"]["parameters"], "strict": False}]
ANTHROPIC_TOOLS: Any = [{"name": "get_weather", "description": "Weather in a city",
                         "input_schema": CHAT_TOOLS[0]["function"]["parameters"]}]
HI: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


@dataclass
class Scripted:
    upstream: ScriptedUpstream
    #: The upstream's URL, without /v1.
    base: str
    openai: openai.OpenAI
    anthropic: anthropic.Anthropic


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    """A scripted upstream under a real hypercorn, and both SDKs' clients pointed straight at it."""
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        base = f"http://127.0.0.1:{port}"
        with openai.OpenAI(base_url=base + "/v1", api_key="sk-test", max_retries=0) as oai, \
                anthropic.Anthropic(base_url=base, api_key="sk-ant-test", max_retries=0) as ant:
            yield Scripted(upstream, base, oai, ant)


def _raw_events(base: str, path: str, body: dict[str, Any]) -> list[tuple[str | None, Any]]:
    """The (event name, data) pairs of a streamed answer, read off the wire; data ``[DONE]`` stays a string."""
    events: list[tuple[str | None, Any]] = []
    with httpx.stream("POST", base + path, json=body, timeout=10) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        text = response.read().decode()
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
        assert data is not None, block
        events.append((name, data if data == "[DONE]" else json.loads(data)))
    return events


def _post(base: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(base + path, json=body, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


# --- OpenAI chat completions ------------------------------------------------------------------------------------

def test_chat_completion_with_a_tool_call(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.extend([ToolCalls([("get_weather", WEATHER_ARGS)], text="Let me check."), Text("Sunny.")])
    completion = scripted.openai.chat.completions.create(model="gpt-test", messages=HI, tools=CHAT_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    call = (choice.message.tool_calls or [])[0]
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "celsius"}
    assert completion.model == "gpt-test" and completion.usage is not None
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens

    raw = _post(base, "/v1/chat/completions", {"model": "gpt-test", "messages": HI})
    assert ChatCompletion.model_validate(raw).choices[0].message.content == "Sunny."
    assert raw["choices"][0]["finish_reason"] == "stop" and "tool_calls" not in raw["choices"][0]["message"]
    seen = upstream.seen[0]
    assert seen.path == "/v1/chat/completions" and seen.headers["authorization"] == "Bearer sk-test"
    assert seen.json["tools"] == CHAT_TOOLS and seen.json["messages"] == HI


def test_chat_stream_text_in_several_deltas_with_usage_last(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(Text("The weather in Paris is sunny."))
    stream = scripted.openai.chat.completions.create(model="gpt-test", messages=HI, stream=True,
                                                   stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(deltas) == 6 and "".join(deltas) == "The weather in Paris is sunny."
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0

    upstream.script.append(Text("Sunny."))
    events = _raw_events(base, "/v1/chat/completions", {"model": "gpt-test", "messages": HI, "stream": True})
    assert events[-1] == (None, "[DONE]")
    for _, data in events[:-1]:
        ChatCompletionChunk.model_validate(data)
        assert "usage" not in data   # only with include_usage
    assert events[0][1]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}


def test_chat_stream_tool_call_arguments_in_pieces(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS), ("get_time", '{"tz": "CET"}')]))
    client = scripted.openai
    with client.chat.completions.stream(model="gpt-test", messages=HI, tools=CHAT_TOOLS) as stream:
        argument_deltas = [event for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = stream.get_final_completion()
    assert len(argument_deltas) > 4
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls" and not message.content
    calls = message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr,unused-ignore]
        ("get_weather", WEATHER_ARGS), ("get_time", '{"tz": "CET"}')]
    assert calls[0].id.startswith("call_") and calls[0].id != calls[1].id

    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS)]))
    events = _raw_events(base, "/v1/chat/completions", {"model": "gpt-test", "messages": HI, "stream": True,
                                                         "stream_options": {"include_usage": True}})
    chunks = [ChatCompletionChunk.model_validate(data) for _, data in events[:-1]]
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None and first.tool_calls is not None
    assert first.tool_calls[0].function is not None and first.tool_calls[0].function.arguments == ""
    assert all(chunk.usage is None for chunk in chunks[:-1]) and chunks[-1].usage is not None


def test_chat_error_and_empty_script(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(Error(429, "slow down"))
    client = scripted.openai
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-test", messages=HI)
    assert caught.value.status_code == 429 and "slow down" in caught.value.message
    assert client.chat.completions.create(model="gpt-test", messages=HI).choices[0].message.content == "ok"


# --- OpenAI Responses -------------------------------------------------------------------------------------------

def test_responses_create_with_a_tool_call_then_continue_natively(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.extend([ToolCalls([("get_weather", WEATHER_ARGS)]), Text("It is sunny in Paris.")])
    client = scripted.openai
    first = client.responses.create(model="gpt-test", input="Weather in Paris?", tools=RESPONSES_TOOLS,
                                    instructions="Be brief.")
    assert first.status == "completed" and first.id.startswith("resp_") and first.instructions == "Be brief."
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.arguments == WEATHER_ARGS
    assert first.usage is not None and first.usage.output_tokens > 0

    second = client.responses.create(model="gpt-test", previous_response_id=first.id, tools=RESPONSES_TOOLS,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": '{"sky": "clear"}'}])
    assert second.output_text == "It is sunny in Paris." and second.previous_response_id == first.id
    assert upstream.seen[-1].json["previous_response_id"] == first.id
    conversation = upstream.responses[second.id]["conversation"]
    assert [item["type"] for item in conversation] == ["message", "function_call", "function_call_output",
                                                       "message"]
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens   # the history counts natively

    raw = httpx.get(f"{base}/v1/responses/{second.id}").json()
    assert Response.model_validate(raw).output_text == "It is sunny in Paris."
    assert client.responses.retrieve(first.id).output[0].type == "function_call"
    items = client.responses.input_items.list(first.id)
    assert [item.type for item in items.data] == ["message"]
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="gpt-test", previous_response_id="resp_nope", input="hi")
    assert caught.value.code == "previous_response_not_found"


def test_responses_not_stored_when_store_is_false(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    response = scripted.openai.responses.create(model="gpt-test", input="hi", store=False)
    assert response.output_text == "ok" and upstream.responses == {}
    assert upstream.seen[0].json["store"] is False and response.model_dump()["store"] is False


def test_responses_stream_with_text_and_a_tool_call(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS)], text="Checking the weather now."))
    client = scripted.openai
    with client.responses.stream(model="gpt-test", input="Weather in Paris?", tools=RESPONSES_TOOLS) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds.count("response.output_text.delta") == 4
    assert kinds.count("response.function_call_arguments.delta") > 2
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Checking the weather now."
    call = final.output[1]
    assert call.type == "function_call" and call.arguments == WEATHER_ARGS and call.call_id.startswith("call_")
    assert final.usage is not None and final.usage.total_tokens > 0
    assert final.id in upstream.responses


def test_responses_stream_events_validate_in_order(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS)], text="On it."))
    events = _raw_events(base, "/v1/responses", {"model": "gpt-test", "input": "hi", "stream": True,
                                                 "tools": RESPONSES_TOOLS})
    adapter: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
    parsed = [adapter.validate_python(data) for _, data in events]
    assert [name for name, _ in events] == [event.type for event in parsed]
    assert [event.sequence_number for event in parsed] == list(range(len(parsed)))
    assert [event.type for event in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", *["response.function_call_arguments.delta"] * len(pieces(WEATHER_ARGS, 7)),
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    completed = parsed[-1].response
    assert completed.status == "completed" and completed.usage is not None and len(completed.output) == 2
    assert parsed[0].response.usage is None and parsed[0].response.status == "in_progress"


# --- Anthropic messages -----------------------------------------------------------------------------------------

def test_messages_create_with_text_and_tool_use(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.extend([ToolCalls([("get_weather", WEATHER_ARGS)], text="Let me look."), Json({"a": [1, 2]})])
    client = scripted.anthropic
    message = client.messages.create(model="claude-test", max_tokens=100, messages=HI, tools=ANTHROPIC_TOOLS,
                                     system="Be brief.")
    assert message.stop_reason == "tool_use" and [block.type for block in message.content] == ["text", "tool_use"]
    use = message.content[1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris", "unit": "celsius"}
    assert use.id.startswith("toolu_")
    seen = upstream.seen[0]
    assert seen.path == "/v1/messages" and seen.headers["anthropic-version"]
    assert "sk-ant-test" in seen.headers.get("x-api-key", "") + seen.headers.get("authorization", "")

    raw = _post(base, "/v1/messages", {"model": "claude-test", "max_tokens": 10, "messages": HI})
    parsed = Message.model_validate(raw)
    text = parsed.content[0]
    assert parsed.stop_reason == "end_turn" and text.type == "text" and json.loads(text.text) == {"a": [1, 2]}


def test_messages_stream_with_tool_use(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS)], text="Let me look that up."))
    client = scripted.anthropic
    with client.messages.stream(model="claude-test", max_tokens=100, messages=HI, tools=ANTHROPIC_TOOLS) as stream:
        text = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(text) == 5 and "".join(text) == "Let me look that up."
    assert final.stop_reason == "tool_use" and final.usage.output_tokens > 1
    use = final.content[1]
    assert use.type == "tool_use" and use.input == {"city": "Paris", "unit": "celsius"}

    upstream.script.append(ToolCalls([("get_weather", WEATHER_ARGS)]))
    events = _raw_events(base, "/v1/messages", {"model": "claude-test", "max_tokens": 10, "messages": HI,
                                                "stream": True})
    assert events[1] == ("ping", {"type": "ping"})
    adapter: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
    parsed = [adapter.validate_python(data) for name, data in events if name != "ping"]
    assert [name for name, _ in events if name != "ping"] == [event.type for event in parsed]
    partial = [event.delta.partial_json for event in parsed
               if event.type == "content_block_delta" and event.delta.type == "input_json_delta"]
    assert partial[0] == "" and len(partial) > 3 and "".join(partial) == WEATHER_ARGS
    assert parsed[-2].type == "message_delta" and parsed[-2].delta.stop_reason == "tool_use"


def test_messages_error_and_count_tokens(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    upstream.script.append(Error(529, "overloaded"))
    client = scripted.anthropic
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="claude-test", max_tokens=10, messages=HI)
    body: Any = caught.value.body
    assert caught.value.status_code == 529 and body["error"]["type"] == "overloaded_error"
    counted = client.messages.count_tokens(model="claude-test", messages=HI, tools=ANTHROPIC_TOOLS, system="x")
    used = client.messages.create(model="claude-test", max_tokens=10, messages=HI, tools=ANTHROPIC_TOOLS,
                                  system="x")
    assert counted.input_tokens == used.usage.input_tokens > 0
    assert upstream.paths() == ["/v1/messages", "/v1/messages/count_tokens", "/v1/messages"]


# --- embeddings -------------------------------------------------------------------------------------------------

def test_embeddings_are_deterministic_unit_vectors(scripted: Scripted) -> None:
    upstream, base = scripted.upstream, scripted.base
    client = scripted.openai
    default = client.embeddings.create(model="embed-test", input=["alpha", "beta"])   # the SDK asks for base64
    floats = client.embeddings.create(model="embed-test", input=["alpha", "beta"], encoding_format="float")
    assert upstream.seen[0].json["encoding_format"] == "base64"
    assert [item.embedding for item in default.data] == [item.embedding for item in floats.data]
    alpha, beta = (item.embedding for item in floats.data)
    assert len(alpha) == 8 and alpha != beta and math.isclose(sum(v * v for v in alpha), 1.0, rel_tol=1e-5)
    assert alpha == embedding("alpha", 8)
    assert floats.usage.prompt_tokens == floats.usage.total_tokens > 0

    single = client.embeddings.create(model="embed-test", input="alpha", dimensions=4, encoding_format="float")
    assert len(single.data) == 1 and len(single.data[0].embedding) == 4
    raw = _post(base, "/v1/embeddings", {"model": "embed-test", "input": "gamma"})
    assert CreateEmbeddingResponse.model_validate(raw).data[0].embedding == embedding("gamma", 8)
    assert upstream.script == type(upstream.script)()   # embeddings take no turn


def test_pieces_cover_the_text_exactly() -> None:
    for text in ["Hello there, world.", "  leading", "trailing  ", "one", "", WEATHER_ARGS]:
        assert "".join(pieces(text)) == text and "".join(pieces(text, 7)) == text
    assert len(pieces("a b c d")) == 4
