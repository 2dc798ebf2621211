"""Agent listeners at their edges: odd intermediate answers, long sequences, failures, disconnects, listener filters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.harness import eventually, free_port, open_sockets, run_proxy, serve_app
from tests.plugins.agents_fixtures import Agent, Travel, config_problems, travel

ASK = [{"role": "user", "content": "a flight to Lisbon and a hotel near the old town"}]


@pytest.fixture
def trip() -> Iterator[Travel]:
    with travel() as served:
        yield served


def _chat(url: str, **body: Any) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", json={"messages": ASK, **body}, timeout=10)


def test_an_intermediate_tool_call_without_text_fails_naming_the_agent(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    trip.flights.tools = True
    with run_proxy(trip.config()) as proxy:
        response = _chat(proxy.url)
        claude = httpx.post(proxy.url + "/v1/messages", json={"messages": ASK, "max_tokens": 5})
    assert claude.status_code == 502 and claude.json()["error"]["agent"] == "flights", claude.text
    # a tool call cannot be handed on as an answer: the next agent would get an empty assistant message
    assert response.status_code == 502, response.text
    assert response.json()["error"]["agent"] == "flights"
    assert response.json()["error"]["code"] == "agent.invalid_response"
    assert response.headers["x-outerloop-agent"] == "flights,hotels"
    assert not trip.hotels.seen


def test_three_agents_and_non_ascii_answers_reach_the_last(trip: Travel) -> None:
    trains = Agent("trains")
    trip.flights.text = lambda body: "flights: vôo às 07:30 — 188 €, 東京"  # type: ignore[method-assign]
    with ExitStack() as stack:
        port = stack.enter_context(serve_app(trains.app()))
        raw = trip.config()
        raw["agents"].append({"id": "trains", "url": f"http://127.0.0.1:{port}"})
        raw["listeners"][0]["agents"].append({"id": "trains", "description": "trains and rail tickets"})
        trip.router.answer = '{"route": ["flights", "hotels", "trains"]}'
        with run_proxy(raw) as proxy:
            response = _chat(proxy.url, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["x-outerloop-agent"] == "flights,hotels,trains"
    chunks = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: {")]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "trains says: done (3 messages)"
    (_, body), = trains.seen
    assert body["messages"] == [
        *ASK, {"role": "assistant", "name": "flights", "content": "flights: vôo às 07:30 — 188 €, 東京"},
        {"role": "assistant", "name": "hotels", "content": "hotels says: done (2 messages)"}]


def _slow(seconds: float) -> Starlette:
    async def chat(request: Request) -> Response:
        await request.body()
        await asyncio.sleep(seconds)
        return JSONResponse({"error": {"message": "late"}}, status_code=500)

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_an_intermediate_agent_timing_out_is_a_504_naming_it(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with serve_app(_slow(3)) as port:
        raw = trip.config()
        raw["agents"][0] = {"id": "flights", "url": f"http://127.0.0.1:{port}", "timeouts": {"first_byte": 0.3}}
        with run_proxy(raw) as proxy:
            response = _chat(proxy.url, stream=True)
    assert response.status_code == 504, response.text
    error = response.json()["error"]
    assert error["agent"] == "flights" and error["code"] == "upstream.timeout"
    assert response.headers["x-outerloop-agent"] == "flights,hotels"
    assert str(port) not in response.text and "127.0.0.1" not in response.text
    assert not trip.hotels.seen


@pytest.mark.parametrize("position", [0, 1])
def test_an_agent_refusing_connections_is_a_502_naming_it(trip: Travel, position: int) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    dead = free_port()
    raw = trip.config()
    raw["agents"][position] = {**raw["agents"][position], "url": f"http://127.0.0.1:{dead}"}
    name = ("flights", "hotels")[position]
    with run_proxy(raw) as proxy:
        response = _chat(proxy.url)
        claude = httpx.post(proxy.url + "/v1/messages", json={"messages": ASK, "max_tokens": 5})
    assert response.status_code == 502, response.text
    assert response.json()["error"]["agent"] == name
    assert response.headers["x-outerloop-agent"] == "flights,hotels"
    assert str(dead) not in response.text and "127.0.0.1" not in response.text
    assert claude.status_code == 502 and claude.json()["error"]["agent"] == name


def test_a_client_leaving_the_last_agents_stream_releases_everything(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with run_proxy(trip.config()) as proxy:
        assert _chat(proxy.url, stream=True).status_code == 200  # both pools warm
        sockets, tasks = open_sockets(), proxy.tasks()
        trip.hotels.delay = 1.0
        with httpx.Client(timeout=10) as client:
            with client.stream("POST", proxy.url + "/v1/chat/completions",
                               json={"messages": ASK, "stream": True}) as response:
                first = next(response.iter_lines())
        assert first.startswith("data: ")
        released = eventually(lambda: open_sockets() <= sockets and proxy.tasks() <= tasks)
        assert released, (open_sockets(), sockets, proxy.tasks(), tasks)
        assert len(trip.hotels.finished) == 1  # the second stream never finished


def test_auth_on_the_agent_listener_refuses_before_the_router(trip: Travel) -> None:
    from filters.auth import hash_key

    key = "sk-agent-0123456789"
    auth = {"name": "auth", "config": {"keys": [{"name": "ann", "sha256": hash_key(key)}]}}
    with run_proxy(trip.config(listener_filters=[auth])) as proxy:
        refused = _chat(proxy.url)
        models = httpx.get(proxy.url + "/v1/models")
        health = httpx.get(proxy.url + "/healthz")
        served = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK},
                            headers={"authorization": f"Bearer {key}"})
    assert refused.status_code == 401 and models.status_code == 401 and health.status_code == 200
    assert served.status_code == 200, served.text
    assert len(trip.router.prompts) == 1 and len(trip.flights.seen) == 1


@pytest.mark.parametrize("key", ["global", "model"])
def test_a_rate_cap_on_the_agent_listener(trip: Travel, key: str) -> None:
    cap = {"name": "rate_cap", "config": {"caps": [{"requests": 1, "window": 60, "key": [key]}]}}
    with run_proxy(trip.config(listener_filters=[cap])) as proxy:
        first = _chat(proxy.url)
        second = _chat(proxy.url)
    assert first.status_code == 200, first.text
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_cap.exceeded"
    assert len(trip.flights.seen) == 1


def test_model_only_paths_are_not_served_on_an_agent_listener(trip: Travel) -> None:
    raw = trip.config()
    raw["listeners"].append({"name": "models", "port": 0})
    raw["model_providers"] = [{"model": "demo/demo-echo", "default": True}]
    with run_proxy(raw) as proxy:
        embeddings = httpx.post(proxy.url + "/v1/embeddings", json={"model": "demo/demo-echo", "input": "hi"})
        count = httpx.post(proxy.url + "/v1/messages/count_tokens",
                           json={"model": "demo/demo-echo", "messages": ASK})
        on_models = httpx.post(f"http://127.0.0.1:{proxy.ports[1]}/v1/embeddings",
                               json={"model": "demo/demo-echo", "input": "hi"})
    # the agent listener's upstreams are its agents: its port does not lead to the models past their listener
    assert embeddings.status_code == 404, embeddings.text
    assert count.status_code == 404, count.text
    assert on_models.status_code == 200, on_models.text


def test_a_pin_to_an_agent_no_longer_offered_goes_to_the_router(trip: Travel) -> None:
    trip.flights.tools = True
    trip.router.answer = '{"route": ["flights"]}'
    store = {"name": "session", "config": {"backend": "memory"}}
    with run_proxy(trip.config(listener_filters=[store])) as proxy:
        first = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK},
                           headers={"x-session-id": "s1"})
        # the pin names an agent this listener does not offer (a config change, a shared Redis store)
        chain = proxy.runtime.chains[0].chain
        session = next(f for f in chain.filters if f.name == "session")
        assert proxy.loop is not None
        asyncio.run_coroutine_threadsafe(session.store.set("s1", "agent/gone"), proxy.loop).result(5)
        call = first.json()["choices"][0]["message"]
        turn = [*ASK, call, {"role": "tool", "tool_call_id": "call_1", "content": "done"}]
        trip.router.answer = '{"route": ["hotels"]}'
        second = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": turn},
                            headers={"x-session-id": "s1"})
    assert first.headers["x-outerloop-agent"] == "flights"
    assert second.status_code == 200, second.text
    assert second.headers["x-outerloop-agent"] == "hotels"


def test_a_continued_responses_conversation_keeps_the_earlier_agents_answers(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with run_proxy(trip.config()) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        first = client.responses.create(model="auto", input="a flight to Lisbon")
        second = client.responses.create(model="auto", input="and a hotel", previous_response_id=first.id)
        client.close()
    assert second.output_text.startswith("hotels says")
    (_, body) = trip.hotels.seen[-1]
    # the stored conversation, this turn, then what flights answered to it
    assert [m["content"] for m in body["messages"] if m["role"] == "user"] == ["a flight to Lisbon", "and a hotel"]
    assert body["messages"][-1] == {"role": "assistant", "name": "flights",
                                    "content": trip.flights.text(trip.flights.seen[-1][1])}


def test_config_errors_of_agents_and_routers(trip: Travel) -> None:
    raw = trip.config()
    listener = raw["listeners"][0]
    no_router = {**raw, "listeners": [{key: value for key, value in listener.items() if key != "router"}]}
    assert config_problems(no_router) == [
        "x.yaml: listeners[0].router: needed to select among 2 agents (the routing: section's keys, e.g. "
        "{backend: http, http: {url: ...}})"]
    twice = {**raw, "agents": [*raw["agents"], raw["agents"][0]]}
    assert config_problems(twice) == ["x.yaml: agents[2].id: duplicate agent id 'flights'"]
    typo = {**raw, "listeners": [{**listener, "router": {**listener["router"], "budgetms": 5}}]}
    (problem,) = config_problems(typo)
    assert problem.startswith("x.yaml: listeners[0].router.budgetms: ")


def test_a_client_leaving_during_an_intermediate_agent_releases_everything(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with serve_app(_slow(1.5)) as port:
        raw = trip.config()
        raw["agents"][0] = {"id": "flights", "url": f"http://127.0.0.1:{port}"}
        with run_proxy(raw) as proxy:
            sockets, tasks = open_sockets(), proxy.tasks()
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK}, timeout=0.5)
            released = eventually(lambda: open_sockets() <= sockets and proxy.tasks() <= tasks)
            assert released, (open_sockets(), sockets, proxy.tasks(), tasks)
    assert not trip.hotels.seen


def test_an_intermediate_agent_is_retried_by_its_policy(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    trip.flights.fail_status, trip.flights.fail_first = 503, 1
    raw = trip.config()
    raw["agents"][0]["retry_policy"] = {"max_attempts": 2, "backoff": {"base_ms": 1, "jitter": False}}
    with run_proxy(raw) as proxy:
        served = _chat(proxy.url)
        trip.flights.fail_first = 0
        failed = httpx.post(proxy.url + "/v1/messages", json={"messages": ASK, "max_tokens": 5, "stream": True})
    assert served.status_code == 200, served.text
    assert len(trip.flights.seen) == 4 and len(trip.hotels.seen) == 1
    assert failed.status_code == 503 and failed.json()["error"]["agent"] == "flights"
    assert failed.json()["type"] == "error" and failed.headers["x-outerloop-attempts"] == "2"
    assert failed.headers["x-outerloop-agent"] == "flights,hotels"


def test_an_anthropic_stream_breaking_in_the_last_agent_ends_with_an_error_event(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    trip.hotels.break_after_first = True
    with run_proxy(trip.config()) as proxy:
        response = httpx.post(proxy.url + "/v1/messages",
                              json={"messages": ASK, "max_tokens": 5, "stream": True}, timeout=10)
    assert response.status_code == 200
    assert "event: content_block_delta" in response.text
    tail = response.text.rstrip().split("\n\n")[-1]
    event, data = tail.split("\n")
    assert event == "event: error" and json.loads(data[6:])["error"]["agent"] == "hotels", tail
