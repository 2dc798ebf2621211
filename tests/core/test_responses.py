"""The Responses API through a real hypercorn: the openai SDK and the OpenAI Agents SDK as clients, chat-,
Anthropic- and Responses-shaped upstreams (tests/scripted.py), conversations in memory and in Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from filters.auth import hash_key
from tests.harness import FlowRecorder, proxy_process, run_proxy, serve_app
from tests.scripted import Error, Json, ScriptedUpstream, Text, ToolCalls

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
AUTH = {"name": "auth", "config": {"keys": [{"name": "alice", "sha256": hash_key(ALICE)},
                                            {"name": "bob", "sha256": hash_key(BOB)}]}}
WEATHER_TOOL: Any = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                     "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "required": ["city"]}}
#: The upstream shapes a Responses client can be served by: model entry, the path the upstream is called on.
SHAPES = {
    "chat": ({"model": "test/chat"}, "/v1/chat/completions"),
    "anthropic": ({"model": "anthropic/claude", "interface": "anthropic"}, "/v1/messages"),
    "native": ({"model": "openai/gpt", "interface": "responses"}, "/v1/responses"),
}


@pytest.fixture()
def scripted() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        yield upstream, f"http://127.0.0.1:{port}/v1"


def _config(base: str, shape: str = "chat", filters: list[Any] | None = None, **top: Any) -> dict[str, Any]:
    entry, _ = SHAPES[shape]
    return {"listeners": [{"name": "test", "port": 0, "filters": filters or []}],
            "model_providers": [{**entry, "base_url": base, "default": True}], **top}


def _client(url: str, key: str = "sk-client") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)


def _model(shape: str) -> str:
    return str(SHAPES[shape][0]["model"])


@pytest.mark.parametrize("shape", list(SHAPES))
def test_create_and_stream_text(scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Hello there, traveller."), Text("Streamed hello.")])
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        raw = client.responses.with_raw_response.create(model=_model(shape), input="hi", instructions="Be brief.")
        answer = raw.parse()
        assert answer.output_text == "Hello there, traveller."
        assert answer.status == "completed" and answer.usage is not None and answer.usage.output_tokens > 0
        assert raw.headers["x-outerloop-model"] == _model(shape)
        assert upstream.seen[-1].path == SHAPES[shape][1]
        with client.responses.stream(model=_model(shape), input="hi again") as stream:
            kinds = [event.type for event in stream]
            final = stream.get_final_response()
        assert final.output_text == "Streamed hello."
        assert kinds[:2] == ["response.created", "response.in_progress"]
        assert kinds[-1] == "response.completed" and "response.output_text.delta" in kinds
        assert kinds.index("response.output_item.added") < kinds.index("response.content_part.added") \
            < kinds.index("response.output_text.delta") < kinds.index("response.output_text.done") \
            < kinds.index("response.output_item.done")
        if shape == "chat":
            sent = upstream.seen[0].json
            assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
            assert upstream.seen[1].json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("stream", [False, True])
def test_function_call_and_its_output_turn(scripted: tuple[ScriptedUpstream, str], shape: str, stream: bool) -> None:
    upstream, base = scripted
    upstream.script.extend([ToolCalls([("get_weather", '{"city": "Paris"}')]), Text("Sunny in Paris.")])
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        if stream:
            with client.responses.stream(model=_model(shape), input="Weather in Paris?",
                                         tools=[WEATHER_TOOL]) as events:
                kinds = [event.type for event in events]
                first = events.get_final_response()
            assert "response.function_call_arguments.delta" in kinds
            assert "response.function_call_arguments.done" in kinds
        else:
            first = client.responses.create(model=_model(shape), input="Weather in Paris?", tools=[WEATHER_TOOL])
        calls = [item for item in first.output if item.type == "function_call"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        assert json.loads(calls[0].arguments) == {"city": "Paris"}
        second = client.responses.create(
            model=_model(shape), previous_response_id=first.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 24C"}])
        assert second.output_text == "Sunny in Paris."
        assert second.previous_response_id == first.id
    sent = upstream.seen[-1].json
    if shape == "chat":
        roles = [message["role"] for message in sent["messages"]]
        assert roles == ["user", "assistant", "tool"]
        assert sent["messages"][1]["tool_calls"][0]["function"]["name"] == "get_weather"
        assert sent["messages"][2] == {"role": "tool", "tool_call_id": calls[0].call_id, "content": "sunny, 24C"}
        assert sent["tools"][0]["function"]["name"] == "get_weather"
    elif shape == "anthropic":
        blocks = [block["type"] for turn in sent["messages"] for block in turn["content"]
                  if isinstance(turn["content"], list)]
        assert "tool_use" in blocks and "tool_result" in blocks
    else:
        # The upstream served the first response natively: it is continued by its id, not resent.
        assert sent["previous_response_id"] == first.id
        assert sent["input"][0]["type"] == "function_call_output"


class Weather(BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("shape", list(SHAPES))
def test_json_schema_output(scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.append(Json({"city": "Paris", "celsius": 24}))
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        parsed = client.responses.parse(model=_model(shape), input="Weather in Paris as JSON", text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", celsius=24)
    sent = upstream.seen[-1].json
    if shape == "chat":
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "Weather"
    elif shape == "native":
        assert sent["text"]["format"]["type"] == "json_schema"


@pytest.mark.parametrize("shape", ["chat", "anthropic"])
def test_conversation_state_get_input_items_delete(scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("I am Ada."), Text("You asked who I am.")])
    with run_proxy(_config(base, shape)) as proxy, _client(proxy.url) as client:
        first = client.responses.create(model=_model(shape), input="Who are you?", instructions="Be Ada.")
        second = client.responses.create(model=_model(shape), input="What did I ask?", previous_response_id=first.id)
        assert second.output_text == "You asked who I am."
        if shape == "chat":
            # The whole conversation went upstream; the first request's instructions did not (as OpenAI).
            assert upstream.seen[-1].json["messages"] == [
                {"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Ada."},
                {"role": "user", "content": "What did I ask?"}]
        assert client.responses.retrieve(first.id).output_text == "I am Ada."
        items = client.responses.input_items.list(second.id)
        assert [item.type for item in items.data] == ["message"]
        assert items.data[0].content[0].text == "What did I ask?"  # type: ignore[union-attr]
        client.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError) as caught:
            client.responses.create(model=_model(shape), input="again", previous_response_id=first.id)
        assert caught.value.code == "responses.not_found"


def test_store_false_keeps_nothing(scripted: tuple[ScriptedUpstream, str]) -> None:
    _, base = scripted
    with run_proxy(_config(base)) as proxy, _client(proxy.url) as client:
        answer = client.responses.create(model="test/chat", input="hi", store=False)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(answer.id)


def test_another_principals_response_is_a_404(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    with run_proxy(_config(base, filters=[AUTH])) as proxy:
        with _client(proxy.url, ALICE) as alice, _client(proxy.url, BOB) as bob:
            mine = alice.responses.create(model="test/chat", input="a secret plan")
            assert alice.responses.retrieve(mine.id).id == mine.id
            seen = len(upstream.seen)
            for call in (lambda: bob.responses.retrieve(mine.id), lambda: bob.responses.delete(mine.id),
                         lambda: bob.responses.input_items.list(mine.id),
                         lambda: bob.responses.create(model="test/chat", input="x", previous_response_id=mine.id)):
                with pytest.raises(openai.NotFoundError):
                    call()
            assert len(upstream.seen) == seen  # bob's continuation never reached the upstream
            assert alice.responses.retrieve(mine.id).id == mine.id  # bob's delete did nothing
        with pytest.raises(openai.AuthenticationError):
            _client(proxy.url).responses.retrieve(mine.id)


@pytest.mark.parametrize("shape", ["chat", "anthropic"])
def test_a_conversation_continues_on_another_replica_through_redis(
        scripted: tuple[ScriptedUpstream, str], redis_url: str, shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Noted: blue."), Text("Your colour is blue.")])
    raw = _config(base, shape, responses={"store": redis_url})
    with proxy_process(raw) as (_, one), proxy_process(raw) as (_, two):
        with _client(one) as first_client, _client(two) as second_client:
            first = first_client.responses.create(model=_model(shape), input="My colour is blue.")
            second = second_client.responses.create(model=_model(shape), input="What is my colour?",
                                                    previous_response_id=first.id)
            assert second.output_text == "Your colour is blue."
            turns = upstream.seen[-1].json["messages"]
            texts = [turn["content"] if isinstance(turn["content"], str) else turn["content"][0]["text"]
                     for turn in turns]
            assert texts == ["My colour is blue.", "Noted: blue.", "What is my colour?"]
            assert [turn["role"] for turn in turns] == ["user", "assistant", "user"]
            assert second_client.responses.retrieve(first.id).output_text == "Noted: blue."


def test_filters_see_one_flow_guardrails_and_rate_cap(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Mail me at jane.doe@example.com today."), Text("Write to jane.doe@example.com.")])
    guardrails = {"name": "guardrails", "config": {"output": {"pii": "redact"}}}
    with run_proxy(_config(base, filters=[guardrails])) as proxy, _client(proxy.url) as client:
        answer = client.responses.create(model="test/chat", input="my card is 4111 1111 1111 1111")
        assert answer.output_text == "Mail me at [EMAIL] today."
        assert upstream.seen[-1].json["messages"][-1]["content"] == "my card is [CREDIT_CARD]"
        with client.responses.stream(model="test/chat", input="hi") as stream:
            final = stream.get_final_response()
        assert final.output_text == "Write to [EMAIL]."


def test_reasoning_is_dropped_and_named_for_a_chat_upstream_without_it(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    with run_proxy(_config(base, "anthropic")) as proxy, _client(proxy.url) as client:
        raw = client.responses.with_raw_response.create(model="anthropic/claude", input="hi",
                                                        reasoning={"effort": "low"})
    assert "reasoning" in raw.headers.get("x-outerloop-dropped", "")
    assert "reasoning_effort" not in json.dumps(upstream.seen[-1].json)


def test_a_built_in_tool_is_a_400_unless_the_upstream_is_native(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    with run_proxy(_config(base)) as proxy, _client(proxy.url) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="test/chat", input="news?", tools=[{"type": "web_search"}])
        assert caught.value.code == "request.unsupported_for_model"
        assert not upstream.seen
    with run_proxy(_config(base, "native")) as proxy, _client(proxy.url) as client:
        client.responses.create(model="openai/gpt", input="news?", tools=[{"type": "web_search"}])
        assert upstream.seen[-1].json["tools"] == [{"type": "web_search"}]


HOSTILE: list[Any] = [
    [], "text", {"model": "test/chat"}, {"input": 5}, {"input": [5]}, {"input": [{"type": "mystery"}]},
    {"input": "hi", "model": 3}, {"input": "hi", "instructions": []}, {"input": "hi", "tools": {}},
    {"input": "hi", "tools": [5]}, {"input": "hi", "tool_choice": 5}, {"input": "hi", "parallel_tool_calls": "yes"},
    {"input": "hi", "max_output_tokens": True}, {"input": "hi", "max_output_tokens": "9"},
    {"input": "hi", "temperature": "hot"}, {"input": "hi", "top_p": []}, {"input": "hi", "metadata": []},
    {"input": "hi", "text": "json"}, {"input": "hi", "text": {"format": {"type": "json_schema"}}},
    {"input": "hi", "reasoning": "high"}, {"input": "hi", "store": "no"}, {"input": "hi", "stream": 1},
    {"input": "hi", "previous_response_id": 7}, {"input": [{"role": "user", "content": 5}]},
    {"input": [{"type": "function_call_output"}]}, {"input": [{"role": 5, "content": "x"}]},
    {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
    {"input": [{"role": "user", "content": [{"type": "hologram", "text": "x"}]}]},
]


def test_hostile_input_is_a_clean_4xx(scripted: tuple[ScriptedUpstream, str], caplog: pytest.LogCaptureFixture) -> None:
    upstream, base = scripted
    with run_proxy(_config(base, limits={"max_request_body_bytes": 200_000})) as proxy:
        for body in HOSTILE:
            answer = httpx.post(proxy.url + "/v1/responses", json=body)
            assert 400 <= answer.status_code < 500, (body, answer.status_code, answer.text)
            error = answer.json()["error"]
            assert error["code"].startswith("request.") and error["message"], (body, error)
        huge = httpx.post(proxy.url + "/v1/responses", json={"model": "test/chat", "input": "x" * 300_000})
        assert huge.status_code == 413
        many = [{"role": "user", "content": "hi"}] * 2_000
        assert httpx.post(proxy.url + "/v1/responses", json={"model": "test/chat", "input": many}).status_code == 200
        assert httpx.post(proxy.url + "/v1/responses", json={"input": "hi", "model": "nope/none"}).status_code == 404
        assert httpx.get(proxy.url + "/v1/responses/resp_none").status_code == 404
        put = httpx.put(proxy.url + "/v1/responses/resp_none")
        assert put.status_code == 405 and put.json()["error"]["code"] == "request.method_not_allowed"
        listed = httpx.get(proxy.url + "/v1/responses/resp_none/input_items")
        assert listed.status_code == 404
        stored = httpx.post(proxy.url + "/v1/responses", json={"model": "test/chat", "input": "hi"}).json()["id"]
        for query, param in (("order=up", "order"), ("limit=0", "limit"), ("limit=x", "limit")):
            bad = httpx.get(f"{proxy.url}/v1/responses/{stored}/input_items?{query}")
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text
        # The paths without /v1 serve stored responses too (an SDK whose base URL has no /v1).
        assert httpx.get(f"{proxy.url}/responses/{stored}").json()["id"] == stored
        assert httpx.get(f"{proxy.url}/responses/{stored}/input_items").json()["data"][0]["type"] == "message"
        assert httpx.delete(f"{proxy.url}/responses/{stored}").json()["deleted"] is True
    assert not upstream.seen[:-1] or all(seen.path == "/v1/chat/completions" for seen in upstream.seen)
    assert "Traceback" not in caplog.text


def test_openai_agents_sdk_runs_a_tool_loop_through_the_proxy(scripted: tuple[ScriptedUpstream, str]) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    upstream, base = scripted
    upstream.script.extend([ToolCalls([("get_weather", '{"city": "Paris"}')]), Text("It is sunny in Paris.")])
    asked: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return "sunny, 24C"

    async def run(url: str) -> Any:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0) as client:
            agent = Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather],
                          model=OpenAIResponsesModel(model="test/chat", openai_client=client))
            return await Runner.run(agent, "What is the weather in Paris?")

    set_tracing_disabled(True)
    with run_proxy(_config(base)) as proxy:
        result = asyncio.run(run(proxy.url))
    assert result.final_output == "It is sunny in Paris."
    assert asked == ["Paris"]
    tool_turn = upstream.seen[-1].json["messages"]
    assert tool_turn[0] == {"role": "system", "content": "Answer with the tool."}
    assert tool_turn[-1]["role"] == "tool" and tool_turn[-1]["content"] == "sunny, 24C"


@pytest.mark.parametrize("shape", list(SHAPES))
def test_usage_and_finish_reason_are_recorded(scripted: tuple[ScriptedUpstream, str], shape: str) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("one two three"), ToolCalls([("get_weather", '{"city": "Oslo"}')])])
    observed = FlowRecorder()
    with run_proxy(_config(base, shape), plugins=(observed,)) as proxy, _client(proxy.url) as client:
        answer = client.responses.create(model=_model(shape), input="hi")
        with client.responses.stream(model=_model(shape), input="hi", tools=[WEATHER_TOOL]) as stream:
            streamed = stream.get_final_response()
    whole, tools = observed.wait(2)
    assert answer.usage is not None and streamed.usage is not None
    assert whole.usage is not None and whole.usage["completion_tokens"] == answer.usage.output_tokens
    assert tools.usage is not None and tools.usage["prompt_tokens"] == streamed.usage.input_tokens
    assert whole.finish_reason == "stop" and tools.finish_reason == "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_client_on_a_responses_only_upstream(scripted: tuple[ScriptedUpstream, str], stream: bool) -> None:
    upstream, base = scripted
    upstream.script.extend([ToolCalls([("get_weather", '{"city": "Rome"}')]), Text("Warm in Rome.")])
    tool: Any = {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_TOOL["parameters"]}}
    messages: Any = [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Rome?"}]
    with run_proxy(_config(base, "native")) as proxy, _client(proxy.url) as client:
        if stream:
            chunks = list(client.chat.completions.create(model="openai/gpt", messages=messages, tools=[tool],
                                                         stream=True))
            calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or []]
            name = next(call.function.name for call in calls if call.function and call.function.name)
            arguments = "".join(call.function.arguments or "" for call in calls if call.function)
            finish = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1]
        else:
            answer = client.chat.completions.create(model="openai/gpt", messages=messages, tools=[tool])
            call = answer.choices[0].message.tool_calls[0]  # type: ignore[index]
            name, arguments, finish = call.function.name, call.function.arguments, answer.choices[0].finish_reason  # type: ignore[union-attr]
        assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Rome"}, "tool_calls")
        sent = upstream.seen[-1].json
        assert upstream.seen[-1].path == "/v1/responses"
        assert sent["instructions"] == "Use tools." and sent["store"] is False
        assert sent["tools"][0]["name"] == "get_weather"
        follow = client.chat.completions.create(model="openai/gpt", messages=[
            *messages, {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                             "function": {"name": "get_weather",
                                                                          "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "warm"}])
        assert follow.choices[0].message.content == "Warm in Rome."
        kinds = [item.get("type", "message") for item in upstream.seen[-1].json["input"]]
        assert kinds == ["message", "function_call", "function_call_output"]


def test_rate_cap_counts_responses_by_their_usage(scripted: tuple[ScriptedUpstream, str]) -> None:
    from filters.rate_cap.usage import estimate_input_tokens

    upstream, base = scripted
    tokens = {"name": "rate_cap", "config": {"caps": [{"tokens": 1000, "window": "1h", "key": "global"}]}}
    with run_proxy(_config(base, filters=[tokens])) as proxy, _client(proxy.url) as client:
        first = client.responses.create(model="test/chat", input="count me")
        with client.responses.stream(model="test/chat", input="count me") as stream:
            second = stream.get_final_response()
        assert first.usage is not None and second.usage is not None
        spent = first.usage.total_tokens + second.usage.total_tokens
        raw = client.responses.with_raw_response.create(model="test/chat", input="count me")
        estimate = estimate_input_tokens(upstream.seen[-1].json)
        # The estimates of the first two were replaced by their real counts; the third's is held.
        assert raw.headers["x-ratelimit-remaining"] == str(1000 - spent - estimate)
    requests = {"name": "rate_cap", "config": {"caps": [{"requests": 1, "window": "1h", "key": "global"}]}}
    with run_proxy(_config(base, filters=[requests])) as proxy, _client(proxy.url) as client:
        client.responses.create(model="test/chat", input="one")
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model="test/chat", input="one too many")
        assert caught.value.code == "rate_cap.exceeded"
    assert len(upstream.seen) == 4


def test_session_pins_a_responses_tool_loop_to_its_model(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([ToolCalls([("get_weather", '{"city": "Oslo"}')]), Text("Cold in Oslo.")])
    raw = {"listeners": [{"name": "test", "port": 0, "filters": [{"name": "session", "config": {}}]}],
           "model_providers": [{"model": "test/a", "base_url": base, "default": True},
                               {"model": "test/b", "base_url": base}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        first = client.responses.with_raw_response.create(model="test/b", input="Oslo?", tools=[WEATHER_TOOL])
        answer = first.parse()
        assert first.headers["x-outerloop-model"] == "test/b"
        call = next(item for item in answer.output if item.type == "function_call")
        second = client.responses.with_raw_response.create(
            model="test/a", previous_response_id=answer.id, tools=[WEATHER_TOOL],
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "-3C"}])
        # The tool result continues the session: it stays on the model that made the call.
        assert second.headers["x-outerloop-model"] == "test/b"
        assert second.headers["x-session-id"] == first.headers["x-session-id"]
        assert second.parse().output_text == "Cold in Oslo."


def test_a_failing_model_falls_back_for_responses(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([Error(503, "overloaded"), Text("From the fallback."), Error(503, "overloaded"),
                            Text("Streamed from the fallback.")])
    raw = {"listeners": [{"name": "test", "port": 0}],
           "model_providers": [
               {"model": "test/main", "base_url": base, "default": True,
                "retry_policy": {"max_attempts": 1, "on_status": [503], "fallback_models": ["anthropic/backup"]}},
               {"model": "anthropic/backup", "base_url": base, "interface": "anthropic"}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        answer = client.responses.with_raw_response.create(model="test/main", input="hi")
        assert answer.parse().output_text == "From the fallback."
        assert answer.headers["x-outerloop-model"] == "anthropic/backup"
        assert answer.headers["x-outerloop-attempts"] == "2"
        with client.responses.stream(model="test/main", input="hi") as stream:
            assert stream.get_final_response().output_text == "Streamed from the fallback."
    assert upstream.paths() == ["/v1/chat/completions", "/v1/messages"] * 2


def test_the_router_routes_responses_by_their_conversation(scripted: tuple[ScriptedUpstream, str]) -> None:
    from examples.agents.router import app as router_app

    upstream, base = scripted
    with serve_app(router_app) as router_port:
        raw = {"listeners": [{"name": "test", "port": 0, "filters": ["router"]}],
               "routing": {"backend": "http", "profile": "plano-orchestrator", "budget_ms": 2000,
                           "http": {"url": f"http://127.0.0.1:{router_port}/v1"}},
               "routing_preferences": [
                   {"name": "flights", "description": "flights and plane tickets", "models": ["test/fly"]},
                   {"name": "hotels", "description": "hotels and rooms", "models": ["test/stay"]}],
               "model_providers": [{"model": "test/fly", "base_url": base, "default": True},
                                   {"model": "test/stay", "base_url": base}]}
        with run_proxy(raw) as proxy, _client(proxy.url) as client:
            answer = client.responses.with_raw_response.create(model="auto", input="A hotel room in Paris, please")
            assert answer.headers["x-outerloop-route"] == "hotels"
            assert answer.headers["x-outerloop-model"] == "test/stay"


@pytest.mark.parametrize("fault", ["reset-stream", "bad-data", "html-503", "bad-json", "openai-400"])
def test_a_failing_upstream_reaches_a_responses_client_in_its_shape(fault: str) -> None:
    from tests.faults import serve_faults

    with serve_faults() as faults, run_proxy(_config(faults.url)) as proxy, _client(proxy.url) as client:
        faults.queued[:] = [fault]
        if fault == "reset-stream":
            kinds: list[str] = []
            with client.responses.stream(model="test/chat", input="hi") as stream:
                for event in stream:
                    kinds.append(event.type)
                    if event.type == "response.failed":
                        assert event.response.status == "failed" and event.response.error is not None
            # Once the stream began, its end is the API's failure events, numbered in sequence.
            assert kinds[0] == "response.created" and kinds[-2:] == ["error", "response.failed"], kinds
            return
        with pytest.raises(openai.APIStatusError) as caught:
            if fault == "bad-data":
                with client.responses.stream(model="test/chat", input="hi") as stream:
                    list(stream)
            else:
                client.responses.create(model="test/chat", input="hi")
        expected = {"bad-data": 502, "html-503": 503, "bad-json": 502, "openai-400": 400}[fault]
        assert caught.value.status_code == expected
        body: Any = caught.value.body
        assert isinstance(body, dict) and str(body.get("code", "")).startswith("upstream."), body
        assert "127.0.0.1" not in json.dumps(body)


def test_deleting_a_native_response_deletes_it_upstream_too(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    raw = _config(base, "native")
    raw["model_providers"][0]["access_key"] = "sk-upstream-0123456789"
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        kept = client.responses.create(model="openai/gpt", input="keep me")
        gone = client.responses.create(model="openai/gpt", input="forget me")
        assert gone.id in upstream.responses
        client.responses.delete(gone.id)
        deleting = upstream.seen[-1]
        assert (deleting.path, deleting.headers["authorization"]) == (f"/v1/responses/{gone.id}",
                                                                        "Bearer sk-upstream-0123456789")
        assert gone.id not in upstream.responses and kept.id in upstream.responses
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(gone.id)
        # The upstream no longer knowing it is no reason to keep ours; an upstream that fails to delete is.
        upstream.responses.pop(kept.id)
        client.responses.delete(kept.id)
        third = client.responses.create(model="openai/gpt", input="stuck")
        upstream.fail_deletes = True
        with pytest.raises(openai.APIStatusError) as caught:
            client.responses.delete(third.id)
        assert caught.value.status_code == 502 and "127.0.0.1" not in str(caught.value.body)
        assert client.responses.retrieve(third.id).id == third.id   # kept, as the upstream kept its copy
