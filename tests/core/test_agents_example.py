"""The example agents (examples/agents/) and configs/agents.yaml: each agent alone, then the whole loop offline."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from examples.agents import flights, hotels, router
from router_model.conversation import Turn
from router_model.prompts import get_profile
from router_model.routes import RouteSet
from tests.harness import free_port, run_proxy, serve_app

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "agents.yaml"
DEMO_MODEL = {"listeners": [{"name": "models", "port": 0, "filters": []}],
              "model_providers": [{"model": "demo/demo-echo", "default": True}]}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


@contextmanager
def _agent_over_demo(module: Any) -> Iterator[str]:
    """The agent on a real hypercorn, its LLM calls going to a real outerloop on the demo model."""
    with run_proxy(DEMO_MODEL) as proxy, serve_app(module.agent(proxy.url + "/v1").app()) as port:
        yield f"http://127.0.0.1:{port}/v1"


def test_flights_agent_answers_plain_and_streamed_through_the_model_listener() -> None:
    with _agent_over_demo(flights) as url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        plain = client.chat.completions.create(model="flights", messages=_ask("A flight to Lisbon on Friday"))
        text = plain.choices[0].message.content or ""
        stream = client.chat.completions.create(model="flights", messages=_ask("A flight to Lisbon on Friday"),
                                                stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
    assert text.startswith("[flights] ") and "to Lisbon, EUR" in text
    # The agent's own LLM call went through outerloop to the demo model, which echoes the user's turn.
    assert "demo model. You said: A flight to Lisbon on Friday" in text
    assert plain.model == "flights" and plain.choices[0].finish_reason == "stop" and plain.usage is not None
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_hotels_agent_names_the_agents_before_it_in_a_sequence() -> None:
    earlier = {"role": "assistant", "name": "flights", "content": "[flights] TAP 08:10 to Porto"}
    with _agent_over_demo(hotels) as url:
        first = httpx.post(url + "/chat/completions", json={"messages": _ask("Three nights in Porto")}, timeout=10)
        after = httpx.post(url + "/chat/completions", timeout=10,
                           json={"messages": [*_ask("Three nights in Porto"), earlier]})
    assert first.status_code == 200 and after.status_code == 200
    alone = first.json()["choices"][0]["message"]["content"]
    assert alone.startswith("[hotels] ") and "in Porto, EUR" in alone and "(after" not in alone
    assert after.json()["choices"][0]["message"]["content"].startswith("[hotels] (after flights) ")


class RecordingModel:
    """Stands in for the model listener: records what an agent sends, answers or fails as told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.status = 200

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = json.loads(await request.body())
            self.requests.append((dict(request.headers), body))
            if self.status != 200:
                return JSONResponse({"error": {"message": "down", "type": "server_error"}}, status_code=self.status)
            if body.get("stream"):
                events = [{"choices": [{"index": 0, "delta": {"content": "ok"}}]}, {"choices": [], "usage": {
                    "prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}]
                return Response("".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n",
                                media_type="text/event-stream")
            return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                                 "usage": None})

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_agent_forwards_traceparent_and_its_findings_to_the_model() -> None:
    model = RecordingModel()
    with serve_app(model.app()) as model_port, \
            serve_app(flights.agent(f"http://127.0.0.1:{model_port}/v1").app()) as port:
        for stream in (False, True):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                                  headers={"traceparent": TRACEPARENT, "tracestate": "ol=1"},
                                  json={"messages": _ask("Fly me to Rome"), "stream": stream})
            assert response.status_code == 200, response.text
    assert [h["traceparent"] for h, _ in model.requests] == [TRACEPARENT, TRACEPARENT]
    assert all(h["tracestate"] == "ol=1" for h, _ in model.requests)
    _, body = model.requests[0]
    assert body["model"] == "demo/demo-echo" and body["messages"][0]["role"] == "system"
    assert "to Rome, EUR" in body["messages"][0]["content"] and body["messages"][1:] == _ask("Fly me to Rome")


@pytest.mark.parametrize("stream", [False, True])
def test_agent_answers_502_in_openai_shape_when_its_model_fails(stream: bool) -> None:
    model = RecordingModel()
    model.status = 503
    with serve_app(model.app()) as model_port, \
            serve_app(flights.agent(f"http://127.0.0.1:{model_port}/v1").app()) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=10,
                              json={"messages": _ask("Fly me to Rome"), "stream": stream})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "model_failed" and "HTTP 503" in response.json()["error"]["message"]


def test_agent_rejects_a_body_without_messages() -> None:
    with serve_app(hotels.agent("http://127.0.0.1:9/v1").app()) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"messages": "hi"}, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_messages"


ROUTES = RouteSet.of([{"name": a["id"], "description": a["description"]}
                      for a in yaml.safe_load(CONFIG.read_text())["listeners"][1]["agents"]])


@pytest.mark.parametrize(("text", "chosen"), [
    ("Find me a flight to Lisbon and a hotel near the old town", ["flights", "hotels"]),
    ("Book a room in Rome, then a plane ticket home", ["hotels", "flights"]),
    ("Where should I stay in Porto for three nights?", ["hotels"]),
    ("What is the weather like?", []),
])
def test_keyword_router_names_routes_in_the_order_asked(text: str, chosen: list[str]) -> None:
    for profile in ("plano-orchestrator", "arch-router"):
        routes, conversation, lists = router.parse_prompt(get_profile(profile).user_message(ROUTES, [Turn("user", text)]))
        assert [r["name"] for r in routes] == ["flights", "hotels"]
        assert lists is (profile == "plano-orchestrator")
        assert router.choose(routes, conversation) == chosen


def test_keyword_router_serves_the_http_backend() -> None:
    import asyncio

    from router_model.http_backend import HttpRouter

    async def decide(url: str, profile: str) -> tuple[str, ...]:
        backend = HttpRouter(url, "keyword-router", ROUTES, profile=profile)
        try:
            return (await backend.decide(_ask("a hotel in Porto and a flight back"))).routes
        finally:
            await backend.aclose()

    with serve_app(router.app) as port:
        url = f"http://127.0.0.1:{port}/v1"
        assert asyncio.run(decide(url, "plano-orchestrator")) == ("hotels", "flights")
        assert asyncio.run(decide(url, "arch-router")) == ("hotels",)


# --- the whole loop through configs/agents.yaml ---------------------------------------------------------------

@contextmanager
def _whole_loop() -> Iterator[str]:
    """configs/agents.yaml on free ports: both agents and the keyword router on real hypercorns, the proxy on
    another; yields the agent listener's base URL."""
    raw = yaml.safe_load(CONFIG.read_text())
    model_listener, travel = raw["listeners"]
    model_listener["port"], travel["port"] = free_port(), free_port()
    model_url = f"http://127.0.0.1:{model_listener['port']}/v1"
    with ExitStack() as stack:
        ports = {a.__name__.rsplit(".", 1)[1]: stack.enter_context(serve_app(a.agent(model_url).app()))
                 for a in (flights, hotels)}
        for agent in raw["agents"]:
            agent["url"] = f"http://127.0.0.1:{ports[agent['id']]}"
        travel["router"]["http"]["url"] = f"http://127.0.0.1:{stack.enter_context(serve_app(router.app))}/v1"
        stack.enter_context(run_proxy(raw))
        yield f"http://127.0.0.1:{travel['port']}/v1"


def test_whole_example_loop_offline_with_the_openai_sdk() -> None:
    with _whole_loop() as url, openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        one = client.chat.completions.with_raw_response.create(
            model="auto", messages=_ask("Where should I stay in Porto for three nights?"))
        stream = client.chat.completions.with_raw_response.create(
            model="auto", messages=_ask("Find me a flight to Lisbon and a hotel near the old town"), stream=True)
        chunks = list(stream.parse())
        fallback = client.chat.completions.with_raw_response.create(
            model="auto", messages=_ask("What is the weather like?"))
    assert one.headers["x-outerloop-agent"] == "hotels" and "x-outerloop-route-fallback" not in one.headers
    text = one.parse().choices[0].message.content or ""
    assert text.startswith("[hotels] ") and "in Porto, EUR" in text and "demo model. You said:" in text
    # Two agents in turn; only the last one's answer reaches the client, streamed, and it saw the first's.
    assert stream.headers["x-outerloop-agent"].replace(" ", "") == "flights,hotels"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.startswith("[hotels] (after flights) ") and "[flights]" not in streamed
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    # No route matched: the default agent answers, and the headers say it was a fallback.
    assert fallback.headers["x-outerloop-agent"] == "flights"
    assert fallback.headers["x-outerloop-route-fallback"]
    assert (fallback.parse().choices[0].message.content or "").startswith("[flights] ")


def test_launcher_starts_what_the_config_names() -> None:
    from examples.agents.__main__ import plan

    others, agent_port, model_port = plan(yaml.safe_load(CONFIG.read_text()))
    assert (agent_port, model_port) == (8001, 12000)
    by_name = {name: argv for name, argv in others}
    assert set(by_name) == {"flights", "hotels", "router"}
    assert by_name["flights"][2:] == ["examples.agents.flights", "--port", "9001", "--model-url",
                                      "http://127.0.0.1:12000/v1"]
    assert by_name["hotels"][4] == "9002" and by_name["router"][2:] == ["examples.agents.router", "--port", "9000"]
