"""Review of the Responses API path: conversations over several hops, fallbacks between native and translated
upstreams, streams that break midway, through a real hypercorn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.filter import Filter
from core.flow import Flow
from core.hookspecs import hookimpl
from core.responses_api.store import RedisResponseStore, StoredResponse
from tests.harness import run_proxy, serve_app
from tests.scripted import Error, ScriptedUpstream, Text, ToolCalls

GUARDRAILS_OUTPUT = {"name": "guardrails", "config": {"output": {"pii": "redact"}}}
WEATHER_TOOL: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


@pytest.fixture()
def scripted() -> Iterator[tuple[ScriptedUpstream, str]]:
    upstream = ScriptedUpstream()
    with serve_app(upstream.app()) as port:
        yield upstream, f"http://127.0.0.1:{port}/v1"


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)


def _listener(filters: list[Any] | None = None) -> list[dict[str, Any]]:
    return [{"name": "test", "port": 0, "filters": filters or []}]


def _texts(messages: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [(m["role"], m.get("content") if not m.get("tool_calls") else "calls") for m in messages]


def test_three_turns_with_a_tool_call_keep_every_turn_once(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Hi Ada."), ToolCalls([("get_weather", "{}")]), Text("Sunny."), Text("Bye.")])
    raw = {"listeners": _listener(), "model_providers": [{"model": "test/chat", "base_url": base, "default": True}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        one = client.responses.create(model="test/chat", input="I am Ada.", instructions="First rules.")
        two = client.responses.create(model="test/chat", input="Weather?", previous_response_id=one.id,
                                      tools=[WEATHER_TOOL], instructions="Second rules.")
        call = next(item for item in two.output if item.type == "function_call")
        three = client.responses.create(model="test/chat", previous_response_id=two.id, tools=[WEATHER_TOOL],
                                        input=[{"type": "function_call_output", "call_id": call.call_id,
                                                "output": "sunny"}])
        assert three.output_text == "Sunny."
        four = client.responses.create(model="test/chat", input="Thanks.", previous_response_id=three.id)
        assert four.output_text == "Bye."
    sent = upstream.seen[-1].json["messages"]
    assert _texts(sent) == [("user", "I am Ada."), ("assistant", "Hi Ada."), ("user", "Weather?"),
                            ("assistant", "calls"), ("tool", "sunny"), ("assistant", "Sunny."), ("user", "Thanks.")]
    # Only the instructions of the request itself go upstream, as OpenAI does.
    assert _texts(upstream.seen[1].json["messages"])[0] == ("system", "Second rules.")


def test_a_chat_fallback_of_a_native_model_is_not_continued_by_id(scripted: tuple[ScriptedUpstream, str]) -> None:
    """A native model that failed before the chat fallback answered does not hold the response: the
    continuation on the native model must carry the conversation, not an id the upstream never saw."""
    upstream, base = scripted
    upstream.script.extend([Error(503, "overloaded"), Text("From the fallback."), Text("Native again.")])
    raw = {"listeners": _listener(), "model_providers": [
        {"model": "openai/gpt", "base_url": base, "interface": "responses", "default": True,
         "retry_policy": {"max_attempts": 1, "on_status": [503], "fallback_models": ["test/chat"]}},
        {"model": "test/chat", "base_url": base}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        first = client.responses.create(model="openai/gpt", input="Remember 42.")
        assert first.output_text == "From the fallback."
        second = client.responses.create(model="openai/gpt", input="What number?", previous_response_id=first.id)
        assert second.output_text == "Native again."
    sent = upstream.seen[-1].json
    assert upstream.seen[-1].path == "/v1/responses"
    assert "previous_response_id" not in sent
    texts = [json.dumps(item) for item in sent["input"]]
    assert "Remember 42." in texts[0] and "From the fallback." in texts[1] and "What number?" in texts[2]


def _app(path: str, chunks: list[bytes], kind: str = "text/event-stream", linger: float = 0.0) -> Starlette:
    async def answer(request: Request) -> Response:
        body = json.loads(await request.body())
        if not body.get("stream"):
            return Response(chunks[0], media_type=kind)

        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.05)  # each chunk its own read: the first goes out before the break
            await asyncio.sleep(linger)

        return StreamingResponse(stream(), media_type=kind)

    return Starlette(routes=[Route(path, answer, methods=["POST"])])


def _chat_chunk(delta: dict[str, Any]) -> bytes:
    chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _responses_event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + json.dumps({"type": kind, **fields}).encode() + b"\n\n"


def _stream_kinds(url: str, model: str) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("POST", url + "/v1/responses", json={"model": model, "input": "hi", "stream": True}) as answer:
        assert answer.status_code == 200
        for line in answer.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


@pytest.mark.parametrize("filters", [[], [GUARDRAILS_OUTPUT]])
def test_a_chat_stream_that_breaks_midway_ends_in_the_api_failure_events(
        filters: list[Any], caplog: pytest.LogCaptureFixture) -> None:
    chunks = [_chat_chunk({"role": "assistant", "content": "Hel"}), b"data: {not json\n\n"]
    with serve_app(_app("/v1/chat/completions", chunks)) as port:
        raw = {"listeners": _listener(filters), "model_providers": [
            {"model": "test/chat", "base_url": f"http://127.0.0.1:{port}/v1", "default": True}]}
        with run_proxy(raw) as proxy:
            events = _stream_kinds(proxy.url, "test/chat")
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"], events
    assert events[-2]["code"] == "upstream.invalid_response"
    assert [event["sequence_number"] for event in events] == list(range(len(events)))
    assert "Traceback" not in caplog.text and "core.internal_error" not in json.dumps(events)


def test_a_native_stream_that_breaks_midway_under_an_output_filter_is_no_500(
        caplog: pytest.LogCaptureFixture) -> None:
    response = {"id": "resp_up", "object": "response", "status": "in_progress", "output": []}
    chunks = [_responses_event("response.created", response=response, sequence_number=0), b"data: {not json\n\n"]
    with serve_app(_app("/v1/responses", chunks)) as port:
        raw = {"listeners": _listener([GUARDRAILS_OUTPUT]), "model_providers": [
            {"model": "openai/gpt", "base_url": f"http://127.0.0.1:{port}/v1", "interface": "responses",
             "default": True}]}
        with run_proxy(raw) as proxy:
            events = _stream_kinds(proxy.url, "openai/gpt")
    assert [event["type"] for event in events][-2:] == ["error", "response.failed"], events
    assert events[-2]["code"] == "upstream.invalid_response"
    assert "Traceback" not in caplog.text


def test_a_failed_native_response_under_an_output_filter_is_a_clean_502(caplog: pytest.LogCaptureFixture) -> None:
    failed = {"id": "resp_up", "object": "response", "status": "failed", "output": [],
              "error": {"code": "server_error", "message": "The model failed."}}
    with serve_app(_app("/v1/responses", [json.dumps(failed).encode()], "application/json")) as port:
        raw = {"listeners": _listener([GUARDRAILS_OUTPUT]), "model_providers": [
            {"model": "openai/gpt", "base_url": f"http://127.0.0.1:{port}/v1", "interface": "responses",
             "default": True}]}
        with run_proxy(raw) as proxy:
            answer = httpx.post(proxy.url + "/v1/responses", json={"model": "openai/gpt", "input": "hi"})
    assert answer.status_code == 502, answer.text
    assert answer.json()["error"]["code"].startswith("upstream.")
    assert "Traceback" not in caplog.text


def _chat_stream(text: str) -> list[bytes]:
    done = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    return [_chat_chunk({"role": "assistant", "content": text}), b"data: " + json.dumps(done).encode() + b"\n\n",
            b"data: [DONE]\n\n"]


def _native_stream(text: str) -> list[bytes]:
    item = {"id": "msg_up", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}
    response = {"id": "resp_up", "object": "response", "created_at": 1, "status": "completed", "model": "gpt",
                "output": [item], "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2}}
    where = {"item_id": "msg_up", "output_index": 0, "content_index": 0}
    return [_responses_event("response.created", response={**response, "status": "in_progress", "output": []},
                             sequence_number=0),
            _responses_event("response.output_item.added", output_index=0, item={**item, "content": []},
                             sequence_number=1),
            _responses_event("response.output_text.delta", **where, delta=text, sequence_number=2),
            _responses_event("response.output_item.done", output_index=0, item=item, sequence_number=3),
            _responses_event("response.completed", response=response, sequence_number=4)]


@pytest.mark.parametrize("shape", ["chat", "native+output filter"])
def test_a_streamed_response_is_stored_before_its_final_event_goes_out(shape: str) -> None:
    """docs/responses.md: the response is stored before its last event, so a continuation can follow at once
    (an agent acts on response.completed; the upstream may close its stream later)."""
    native = shape != "chat"
    app = _app("/v1/responses" if native else "/v1/chat/completions",
               _native_stream("Noted.") if native else _chat_stream("Noted."), linger=1.5)
    with serve_app(app) as port:
        entry = {"model": "openai/gpt", "interface": "responses"} if native else {"model": "test/chat"}
        raw = {"listeners": _listener([GUARDRAILS_OUTPUT] if native else []),
               "model_providers": [{**entry, "base_url": f"http://127.0.0.1:{port}/v1", "default": True}]}
        with run_proxy(raw) as proxy:
            request = {"model": entry["model"], "input": "Remember 42.", "stream": True}
            with httpx.stream("POST", proxy.url + "/v1/responses", json=request, timeout=10) as answer:
                for line in answer.iter_lines():
                    if line.startswith("data: ") and json.loads(line[6:])["type"] == "response.completed":
                        response_id = json.loads(line[6:])["response"]["id"]
                        break
                got = httpx.get(f"{proxy.url}/v1/responses/{response_id}", timeout=10)
            assert got.status_code == 200, got.text
            assert got.json()["id"] == response_id


def test_an_upstream_lone_surrogate_is_stored_in_redis(redis_url: str) -> None:
    """An upstream's text may carry a lone surrogate escape ("\\ud800", passed on by encode_json): Redis must
    store the response like memory does, not fail the request on a UnicodeEncodeError."""
    text = "bad \ud800 text"
    item = StoredResponse(id="resp_s", owner=None, response={"id": "resp_s", "output_text": text},
                          input_items=[], messages=[{"role": "assistant", "content": text}], native=None,
                          created_at=1.0, previous=None, chain=[])

    async def go() -> StoredResponse | None:
        store = RedisResponseStore(redis_url, ttl=60, timeout=2.0, key_prefix="t:review:")
        try:
            await store.put(item)
            return await store.get("resp_s")
        finally:
            await store.close()

    assert asyncio.run(go()) == item


@pytest.mark.parametrize("stream", [False, True])
def test_a_native_answer_encoded_again_is_stored_under_the_id_the_client_got(
        scripted: tuple[ScriptedUpstream, str], stream: bool) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Mail a@example.com."), Text("Second."), Text("Third.")])
    raw = {"listeners": _listener([GUARDRAILS_OUTPUT]), "model_providers": [
        {"model": "openai/gpt", "base_url": base, "interface": "responses", "default": True}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        first: openai.types.responses.Response
        if stream:
            with client.responses.stream(model="openai/gpt", input="One.") as events:
                first = events.get_final_response()
        else:
            first = client.responses.create(model="openai/gpt", input="One.")
        assert first.output_text == "Mail [EMAIL]." and first.id not in upstream.responses
        assert client.responses.retrieve(first.id).output_text == "Mail [EMAIL]."
        second = client.responses.create(model="openai/gpt", input="Two.", previous_response_id=first.id)
        third = client.responses.create(model="openai/gpt", input="Three.", previous_response_id=second.id)
        assert third.output_text == "Third."
    # The upstream never knew the ids the client got: every turn carries the whole conversation, once each.
    sent = upstream.seen[-1].json
    assert "previous_response_id" not in sent
    texts = [item["content"] if isinstance(item["content"], str) else item["content"][0]["text"]
             for item in sent["input"]]
    assert texts == ["One.", "Mail [EMAIL].", "Two.", "Second.", "Three."]


def test_two_continuations_of_one_response_branch_without_mixing(scripted: tuple[ScriptedUpstream, str]) -> None:
    upstream, base = scripted
    upstream.script.extend([Text("Root."), Text("Left."), Text("Right."), Text("After left.")])
    raw = {"listeners": _listener(), "model_providers": [{"model": "test/chat", "base_url": base, "default": True}]}
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        root = client.responses.create(model="test/chat", input="root")
        left = client.responses.create(model="test/chat", input="go left", previous_response_id=root.id)
        client.responses.create(model="test/chat", input="go right", previous_response_id=root.id)
        client.responses.create(model="test/chat", input="and then", previous_response_id=left.id)
    assert _texts(upstream.seen[-1].json["messages"]) == [
        ("user", "root"), ("assistant", "Root."), ("user", "go left"), ("assistant", "Left."), ("user", "and then")]


class _Rewrite(Filter):
    """Stands for http_filter: a body replaced by one a Responses upstream cannot take (a legacy role)."""

    async def on_request(self, flow: Flow) -> None:
        flow.json = {**flow.json, "messages": [{"role": "function", "name": "f", "content": "x"}]}


class _NoSettings(BaseModel):
    pass


class _RewritePlugin:
    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        register("rewrite", lambda settings, context: _Rewrite(), _NoSettings)


def test_a_rewritten_body_a_native_upstream_cannot_take_is_a_400(
        scripted: tuple[ScriptedUpstream, str], caplog: pytest.LogCaptureFixture) -> None:
    upstream, base = scripted
    raw = {"listeners": _listener(["rewrite"]), "model_providers": [
        {"model": "openai/gpt", "base_url": base, "interface": "responses", "default": True}]}
    with run_proxy(raw, plugins=(_RewritePlugin(),)) as proxy:
        answer = httpx.post(proxy.url + "/v1/responses", json={"model": "openai/gpt", "input": "hi"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["code"].startswith("request.")
    assert not upstream.seen and "Traceback" not in caplog.text


def test_another_deployment_of_a_native_model_gets_the_conversation_not_the_id() -> None:
    """Responses are kept per account: a deployment other than the one that answered (another base URL, as
    an Azure region or a second account) does not know the id and must get the whole conversation."""
    one, two = ScriptedUpstream(Text("Noted 42.")), ScriptedUpstream(Text("It was 42."))
    with serve_app(one.app()) as port_one, serve_app(two.app()) as port_two:
        raw = {"listeners": _listener(), "model_providers": [
            {"model": "openai/gpt", "base_url": f"http://127.0.0.1:{port}/v1", "interface": "responses",
             "default": True} for port in (port_one, port_two)]}
        with run_proxy(raw) as proxy, _client(proxy.url) as client:
            first = client.responses.create(model="openai/gpt", input="Remember 42.")
            second = client.responses.create(model="openai/gpt", input="Which number?",
                                             previous_response_id=first.id)
    assert (len(one.seen), len(two.seen)) == (1, 1)  # round robin: each deployment answered once
    assert second.output_text == "It was 42."
    sent = two.seen[0].json
    assert "previous_response_id" not in sent and len(sent["input"]) == 3


def _breaking_app(path: str, chunks: list[bytes]) -> Starlette:
    async def answer(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
                await asyncio.sleep(0.05)
            raise ConnectionResetError("the upstream went away")  # hypercorn aborts the connection

        return StreamingResponse(stream(), media_type="text/event-stream")

    return Starlette(routes=[Route(path, answer, methods=["POST"])])


def test_a_native_stream_cut_midway_ends_in_error_then_response_failed() -> None:
    """docs/responses.md: a failure after the first event is an error event followed by response.failed,
    numbered after the upstream's own events, for the same response id."""
    response = {"id": "resp_up", "object": "response", "created_at": 1, "status": "in_progress", "model": "gpt",
                "output": []}
    chunks = [_responses_event("response.created", response=response, sequence_number=0),
              _responses_event("response.in_progress", response=response, sequence_number=1)]
    with serve_app(_breaking_app("/v1/responses", chunks)) as port:
        raw = {"listeners": _listener(), "model_providers": [
            {"model": "openai/gpt", "base_url": f"http://127.0.0.1:{port}/v1", "interface": "responses",
             "default": True}]}
        with run_proxy(raw) as proxy:
            events = _stream_kinds(proxy.url, "openai/gpt")
    assert [event["type"] for event in events] == ["response.created", "response.in_progress", "error",
                                                   "response.failed"], events
    assert [event["sequence_number"] for event in events] == [0, 1, 2, 3]
    assert events[-1]["response"]["id"] == "resp_up" and events[-1]["response"]["status"] == "failed"


def test_input_items_pages_by_after_limit_and_order(scripted: tuple[ScriptedUpstream, str]) -> None:
    _, base = scripted
    raw = {"listeners": _listener(), "model_providers": [{"model": "test/chat", "base_url": base, "default": True}]}
    items: Any = [{"id": f"msg_{i}", "type": "message", "role": "user", "content": f"m{i}"} for i in range(5)]
    with run_proxy(raw) as proxy, _client(proxy.url) as client:
        answer = client.responses.create(model="test/chat", input=items)
        first = client.responses.input_items.list(answer.id, limit=2, order="asc")
        assert [item.id for item in first.data] == ["msg_0", "msg_1"] and first.has_more
        assert [item.id for item in client.responses.input_items.list(answer.id, order="asc")] == [
            f"msg_{i}" for i in range(5)]  # the SDK follows `after` through every page
        last = client.responses.input_items.list(answer.id, after="msg_1", limit=2)
        assert [item.id for item in last.data] == ["msg_0"] and not last.has_more
        bad = httpx.get(f"{proxy.url}/v1/responses/{answer.id}/input_items", params={"limit": "0"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "request.invalid_value"
