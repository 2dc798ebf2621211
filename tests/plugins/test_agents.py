"""Agent listeners through a real proxy: selection by description, sequences, fallbacks, per-agent filters, traces."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from opentelemetry.trace import SpanKind

from tests.conftest import export_tiny_encoder
from tests.harness import MemoryTracing, eventually, run_proxy
from tests.plugins.agents_fixtures import FLIGHTS, HOTELS, Travel, config_problems, travel

ASK = [{"role": "user", "content": "a flight to Lisbon and a hotel near the old town"}]


@pytest.fixture
def trip() -> Iterator[Travel]:
    with travel() as served:
        yield served


def _openai(proxy_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=proxy_url + "/v1", api_key="k", max_retries=0)


def test_one_agent_selected_by_description(trip: Travel) -> None:
    trip.router.answer = '{"route": ["hotels"]}'
    with run_proxy(trip.config()) as proxy:
        client = _openai(proxy.url)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=ASK)  # type: ignore[arg-type]
        client.close()
    answer = raw.parse()
    assert answer.choices[0].message.content == "hotels says: done (1 messages)"
    assert raw.headers["x-outerloop-agent"] == "hotels"
    assert "x-outerloop-route-fallback" not in raw.headers
    assert not trip.flights.seen
    # the router read both agents' descriptions; the agent got the client's conversation
    assert FLIGHTS in trip.router.prompts[0] and HOTELS in trip.router.prompts[0]
    assert trip.hotels.seen[0][1]["messages"] == ASK


def test_two_agents_in_order_the_last_streamed_as_it_comes(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    trip.hotels.delay = 0.4
    with run_proxy(trip.config()) as proxy:
        client = _openai(proxy.url)
        arrivals: list[tuple[float, str]] = []
        with client.chat.completions.with_streaming_response.create(
                model="auto", messages=ASK, stream=True) as response:  # type: ignore[arg-type]
            headers = response.headers
            for chunk in response.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append((time.monotonic(), chunk.choices[0].delta.content))
        client.close()
    assert headers["x-outerloop-agent"] == "flights,hotels"
    assert "".join(text for _, text in arrivals) == "hotels says: done (2 messages)"
    # the first chunk reached the client before the last agent had finished (it sleeps 0.4 s between chunks)
    assert arrivals[0][0] < trip.hotels.finished[0] - 0.5
    # the first agent answered whole; its answer reached the second as an assistant message naming it
    (flights_headers, flights_body), = trip.flights.seen
    assert flights_body["stream"] is False
    (_, hotels_body), = trip.hotels.seen
    assert hotels_body["stream"] is True
    assert hotels_body["messages"] == [*ASK, {"role": "assistant", "name": "flights",
                                              "content": "flights says: done (1 messages)"}]


def test_anthropic_client_on_an_agent_listener(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with run_proxy(trip.config()) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="k", max_retries=0)
        with client.messages.stream(model="auto", max_tokens=100, messages=ASK) as stream:  # type: ignore[arg-type]
            text = "".join(stream.text_stream)
        whole = client.messages.with_raw_response.create(model="auto", max_tokens=100, messages=ASK)  # type: ignore[arg-type]
        client.close()
    assert text == "hotels says: done (2 messages)"
    assert whole.headers["x-outerloop-agent"] == "flights,hotels"
    assert whole.parse().content[0].text == "hotels says: done (2 messages)"  # type: ignore[union-attr]
    # the agents speak OpenAI: the Anthropic conversation was translated, the first answer appended
    assert trip.hotels.seen[0][1]["messages"][-1] == {"role": "assistant",
                                                      "content": "flights says: done (1 messages)"}


@pytest.mark.parametrize(("setup", "reason"), [
    ({"answer": '{"route": []}'}, "no_match"),
    ({"answer": '{"route": ["trains"]}'}, "no_match"),
    ({"status": 500}, "engine_error"),
    ({"delay": 0.5}, "budget_exceeded"),
])
def test_default_agent_when_the_router_cannot_decide(trip: Travel, setup: dict[str, Any], reason: str) -> None:
    for key, value in setup.items():
        setattr(trip.router, key, value)
    with run_proxy(_with_metrics(trip.config(budget_ms=100))) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK}, timeout=10)
        metrics = eventually(lambda: _metric_line(proxy.url, "flights", reason))
    assert response.status_code == 200, response.text
    assert response.headers["x-outerloop-agent"] == "flights"
    assert response.headers["x-outerloop-route-fallback"] == reason
    assert response.json()["choices"][0]["message"]["content"].startswith("flights says")
    assert metrics, "no outerloop_agent_selections_total line for the fallback"


def _with_metrics(raw: dict[str, Any]) -> dict[str, Any]:
    return {**raw, "metrics": {"enabled": True}}


def _metric_line(url: str, agent: str, fallback: str) -> bool:
    text = httpx.get(url + "/metrics").text
    return (f'outerloop_agent_selections_total{{agent="{agent}",fallback="{fallback}",listener="travel"}} 1.0'
            in text)


def test_agent_error_before_its_first_byte_names_it(trip: Travel) -> None:
    trip.router.answer = '{"route": ["hotels"]}'
    trip.hotels.fail_status = 503
    with run_proxy(trip.config()) as proxy:
        last = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK, "stream": True})
        trip.router.answer = '{"route": ["flights", "hotels"]}'
        trip.hotels.fail_status, trip.flights.fail_status = None, 500
        first = httpx.post(proxy.url + "/v1/messages", json={"messages": ASK, "max_tokens": 10})
    assert last.status_code == 503
    assert last.json()["error"]["agent"] == "hotels"
    assert "hotels is broken" in last.json()["error"]["message"]
    # an intermediate agent's failure ends the request in the client's API shape; the next agent never runs
    assert first.status_code == 500
    assert first.json()["type"] == "error" and first.json()["error"]["agent"] == "flights"
    assert first.headers["x-outerloop-agent"] == "flights,hotels"
    assert len(trip.hotels.seen) == 1


def test_agent_error_after_its_first_byte_is_the_stream_error_event(trip: Travel) -> None:
    trip.router.answer = '{"route": ["hotels"]}'
    trip.hotels.break_after_first = True
    with run_proxy(trip.config()) as proxy:
        client = _openai(proxy.url)
        got: list[str] = []
        with pytest.raises(openai.APIError) as raised:
            for chunk in client.chat.completions.create(model="auto", messages=ASK, stream=True):  # type: ignore[arg-type]
                got.append(chunk.choices[0].delta.content or "")
        client.close()
    assert got and got[0] and "hotels says: done".startswith(got[0])
    assert isinstance(raised.value.body, dict) and raised.value.body["agent"] == "hotels"


def test_filters_of_one_agent_leave_the_other_alone(trip: Travel) -> None:
    deny = {"name": "guardrails", "config": {"deny": {"action": "block", "terms": ["lisbon"]}}}
    with run_proxy(trip.config(hotels_filters=[deny])) as proxy:
        trip.router.answer = '{"route": ["flights"]}'
        flights = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
        trip.router.answer = '{"route": ["hotels"]}'
        hotels = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
        trip.router.answer = '{"route": ["hotels", "flights"]}'
        first_of_two = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
    assert flights.status_code == 200 and len(trip.flights.seen) == 1
    assert hotels.status_code == 400
    assert hotels.json()["error"]["agent"] == "hotels"
    assert hotels.json()["error"]["code"] == "guardrails.deny" or "guardrails" in hotels.json()["error"]["code"]
    # as the first agent of a sequence too: the request stops there
    assert first_of_two.status_code == 400 and first_of_two.json()["error"]["agent"] == "hotels"
    assert not trip.hotels.seen and len(trip.flights.seen) == 1


def test_traceparent_span_per_agent_and_metrics(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    tracing = MemoryTracing()
    with run_proxy(_with_metrics(trip.config()), plugins=(tracing,)) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
        metrics = httpx.get(proxy.url + "/metrics").text
    assert response.status_code == 200
    spans = tracing.exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER and s.name.startswith("POST")]
    assert server.attributes is not None
    assert server.attributes["outerloop.agents.selected"] == "flights,hotels"
    agents = {s.name: s for s in spans if s.name.startswith("agent ")}
    assert set(agents) == {"agent flights", "agent hotels"}
    for name, agent in (("flights", trip.flights), ("hotels", trip.hotels)):
        span = agents[f"agent {name}"]
        assert span.attributes is not None and span.attributes["outerloop.agent"] == name
        assert span.context.trace_id == server.context.trace_id
        # the agent got W3C trace context of this trace, from the agent call's own upstream span
        traceparent = agent.seen[0][0]["traceparent"]
        assert traceparent.split("-")[1] == format(server.context.trace_id, "032x")
        (client_span,) = [s for s in spans if s.kind == SpanKind.CLIENT
                          and s.parent is not None and s.parent.span_id == span.context.span_id]
        assert traceparent.split("-")[2] == format(client_span.context.span_id, "016x")
    assert agents["agent hotels"].attributes["outerloop.agent.position"] == 1  # type: ignore[index]
    for name in ("flights", "hotels"):
        assert f'outerloop_agent_selections_total{{agent="{name}",fallback="",listener="travel"}} 1.0' in metrics


def test_session_keeps_a_tool_loop_with_its_agent(trip: Travel) -> None:
    trip.flights.tools = True
    trip.router.answer = '{"route": ["flights"]}'
    with run_proxy(trip.config(listener_filters=["session"])) as proxy:
        client = _openai(proxy.url)
        first = client.chat.completions.with_raw_response.create(model="auto", messages=ASK)  # type: ignore[arg-type]
        call = first.parse().choices[0].message
        assert call.tool_calls
        # the router would now send the conversation elsewhere; the pin keeps it with flights
        trip.router.answer = '{"route": ["hotels"]}'
        turn = [*ASK, call.model_dump(exclude_none=True),
                {"role": "tool", "tool_call_id": call.tool_calls[0].id, "content": "TP123 at 9:00"}]
        second = client.chat.completions.with_raw_response.create(model="auto", messages=turn)  # type: ignore[arg-type]
        # a new user turn is selected again
        third = client.chat.completions.with_raw_response.create(
            model="auto", messages=[*turn, {"role": "assistant", "content": "booked"},
                                    {"role": "user", "content": "and a hotel?"}])  # type: ignore[arg-type]
        client.close()
    assert first.headers["x-outerloop-agent"] == "flights"
    assert second.headers["x-outerloop-agent"] == "flights"
    assert second.parse().choices[0].message.content == "flights says: done (3 messages)"
    assert len(trip.router.prompts) == 2  # the continuation did not ask the router
    assert third.headers["x-outerloop-agent"] == "hotels"
    assert first.headers["x-session-id"] == second.headers["x-session-id"]


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT sentence encoder, exported to ONNX at test time (as tests/router_model does)."""
    corpus = [FLIGHTS, HOTELS, "flights hotels", "hello there friend"]
    return export_tiny_encoder(tmp_path_factory.mktemp("encoder"), corpus, vocab_size=200, layers=1)


@pytest.mark.slow
def test_embedding_backend_selects_by_description(trip: Travel, tiny_encoder_dir: Path) -> None:
    raw = trip.config()
    raw["listeners"][0]["router"] = {"backend": "embedding", "budget_ms": 5000,
                                     "execution_providers": ["CPUExecutionProvider"],
                                     "embedding": {"model_path": str(tiny_encoder_dir), "threshold": 0.0}}
    with run_proxy(raw) as proxy:
        hotels = httpx.post(proxy.url + "/v1/chat/completions",
                            json={"messages": [{"role": "user", "content": HOTELS}]})
        flights = httpx.post(proxy.url + "/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": FLIGHTS}]})
    assert hotels.headers["x-outerloop-agent"] == "hotels"
    assert flights.headers["x-outerloop-agent"] == "flights"
    assert "x-outerloop-route-fallback" not in hotels.headers
    assert not trip.router.prompts


def test_config_errors_name_file_path_and_reason(trip: Travel) -> None:
    raw = trip.config()
    listener = raw["listeners"][0]
    unknown = {**raw, "listeners": [{**listener, "agents": [*listener["agents"], {"id": "trains",
                                                                                   "description": "rail"}]}]}
    assert config_problems(unknown) == ["x.yaml: listeners[0].agents[2].id: unknown agent 'trains' (configured in "
                                  "agents: flights, hotels)"]
    no_default = {**raw, "listeners": [{**listener, "agents": [{"id": "flights", "description": "f"},
                                                               {"id": "hotels", "description": "h"}]}]}
    assert config_problems(no_default) == ["x.yaml: listeners[0].agents: no default agent: mark the one that takes "
                                     "requests the router cannot place with default: true"]
    two = {**raw, "listeners": [{**listener, "agents": [{"id": "flights", "description": "f", "default": True},
                                                        {"id": "hotels", "description": "h", "default": True}]}]}
    assert config_problems(two) == ["x.yaml: listeners[0].agents[1].default: only one agent can be the default "
                              "(agents[0] is)"]
    empty = {**raw, "listeners": [{**listener, "agents": []}]}
    assert config_problems(empty) == ["x.yaml: listeners[0].agents: an agent listener needs at least one agent "
                                "(expected a list of {id, description})"]
    bad_router = {**raw, "listeners": [{**listener, "router": {"backend": "magic", "budget_ms": -1}}]}
    assert config_problems(bad_router) == [
        "x.yaml: listeners[0].router.backend: expected one of 'onnx', 'http' or 'embedding', got \"magic\"",
        "x.yaml: listeners[0].router.budget_ms: expected a positive number, got -1"]
    bad_filter = trip.config(hotels_filters=["nope"])
    (problem,) = config_problems(bad_filter)
    assert problem.startswith("x.yaml: listeners[0].agents[1].filters[0].name: unknown filter 'nope'")
    on_models = {**raw, "listeners": [{"name": "m", "port": 0, "agents": listener["agents"]}]}
    assert config_problems(on_models) == ["x.yaml: listeners[0].agents: only an agent listener (type: agent) has agents"]
    bad_url = {**raw, "agents": [{"id": "flights", "url": "localhost:1"}, *raw["agents"][1:]]}
    assert config_problems(bad_url) == ["x.yaml: agents[0].url: expected an http:// or https:// URL, got \"localhost:1\""]


def test_agents_are_not_models(trip: Travel) -> None:
    raw = trip.config()
    raw["listeners"].append({"name": "models", "port": 0})
    raw["model_providers"] = [{"model": "demo/demo-echo", "default": True}]
    with run_proxy(raw) as proxy:
        by_name = httpx.post(f"http://127.0.0.1:{proxy.ports[1]}/v1/chat/completions",
                             json={"model": "agent/flights", "messages": ASK})
        listed = httpx.get(f"http://127.0.0.1:{proxy.ports[1]}/v1/models").json()
        health = httpx.get(proxy.url + "/healthz")
    assert by_name.status_code == 404 and by_name.json()["error"]["code"] == "model.not_found"
    assert "agent/flights" not in {m["id"] for m in listed["data"]}
    assert health.status_code == 200
    assert not trip.flights.seen


def test_responses_client_on_an_agent_listener(trip: Travel) -> None:
    trip.router.answer = '{"route": ["flights", "hotels"]}'
    with run_proxy(trip.config()) as proxy:
        client = _openai(proxy.url)
        whole = client.responses.with_raw_response.create(model="auto", input=ASK[0]["content"])
        streamed = client.responses.create(model="auto", input=ASK[0]["content"], stream=True)
        deltas = [event.delta for event in streamed if event.type == "response.output_text.delta"]
        client.close()
    assert whole.headers["x-outerloop-agent"] == "flights,hotels"
    assert whole.parse().output_text == "hotels says: done (2 messages)"
    assert "".join(deltas) == "hotels says: done (2 messages)"
    # the first agent was asked for a chat completion, whole
    assert trip.flights.seen[0][1]["stream"] is False
    assert trip.hotels.seen[0][1]["messages"][-1]["name"] == "flights"


def test_an_agents_retry_policy_and_timeouts(trip: Travel) -> None:
    trip.router.answer = '{"route": ["hotels"]}'
    trip.hotels.fail_status, trip.hotels.fail_first = 503, 1
    raw = trip.config()
    raw["agents"][1].update({"retry_policy": {"max_attempts": 2, "backoff": {"base_ms": 1, "jitter": False}},
                             "timeouts": {"first_byte": 5}, "headers": {"x-agent-key": "k-hotels"}})
    with run_proxy(raw) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
    assert response.status_code == 200
    assert response.headers["x-outerloop-attempts"] == "2"
    assert [headers["x-agent-key"] for headers, _ in trip.hotels.seen] == ["k-hotels", "k-hotels"]


def test_single_route_profile_runs_one_agent(trip: Travel) -> None:
    trip.router.answer = '{"route": "hotels"}'
    with run_proxy(trip.config(profile="arch-router")) as proxy:
        single = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
        trip.router.answer = '{"route": ["hotels", "flights"]}'
        listed = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": ASK})
    assert single.headers["x-outerloop-agent"] == "hotels"
    assert listed.headers["x-outerloop-agent"] == "hotels"
    assert not trip.flights.seen
