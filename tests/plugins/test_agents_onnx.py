"""Agent listeners selecting with the onnx router backend (a tiny Qwen2 exported in the test), both profiles."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from core.config import Listener
from core.config_loader import parse_config
from core.flow import Flow
from core.plugins import build_registry
from plugins.agents.selection import Selector
from router_model.backend import Decision, Message
from router_model.onnx_router import OnnxRouter
from router_model.routes import OTHER, RouteSet
from router_model.trie import TokenTrie
from tests.harness import FlowRecorder, run_proxy, serve_app
from tests.plugins.agents_fixtures import FLIGHTS, HOTELS, Agent, Travel, travel
from tests.router_model.test_route_lists import continued, reference_routes, restricted

CARS = "rents cars, vans and motorbikes"
DESCRIPTIONS = {"flights": FLIGHTS, "hotels": HOTELS, "cars": CARS}
CONVERSATIONS: list[list[Any]] = [  # chat messages (the openai SDK types them as its TypedDicts)
    [{"role": "user", "content": "a flight to Lisbon and a hotel near the old town"}],
    [{"role": "user", "content": "I need a room for two nights"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi, where to?"},
     {"role": "user", "content": "rent me a van at the airport, then book a plane ticket"}],
]


@pytest.fixture
def trip() -> Iterator[tuple[Travel, Agent]]:
    """Flights and hotels (the default) from the shared fixtures, and a third agent, cars."""
    cars = Agent("cars")
    with travel() as served, serve_app(cars.app()) as port:
        served.urls["cars"] = f"http://127.0.0.1:{port}"
        yield served, cars


def _config(urls: dict[str, str], router: dict[str, Any]) -> dict[str, Any]:
    ids = ("flights", "hotels", "cars")
    return {
        "agents": [{"id": id_, "url": urls[id_]} for id_ in ids],
        "listeners": [{
            "name": "travel", "type": "agent", "port": 0, "router": router,
            "agents": [{"id": id_, "description": DESCRIPTIONS[id_], "default": id_ == "hotels"} for id_ in ids],
        }],
    }


def _onnx(model_dir: Path, profile: str, budget_ms: float = 5000) -> dict[str, Any]:
    return {"backend": "onnx", "model_path": str(model_dir), "profile": profile, "budget_ms": budget_ms,
            "execution_providers": ["CPUExecutionProvider"]}


def _calls(agents: dict[str, Agent]) -> dict[str, int]:
    return {id_: len(agent.seen) for id_, agent in agents.items()}


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["arch-router", "plano-orchestrator"])
def test_onnx_router_selects_configured_agents(trip: tuple[Travel, Agent], tiny_onnx_dir: Path,
                                               profile: str) -> None:
    served, cars = trip
    agents = {"flights": served.flights, "hotels": served.hotels, "cars": cars}
    flows = FlowRecorder()
    with run_proxy(_config(served.urls, _onnx(tiny_onnx_dir, profile)), plugins=(flows,)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=30)
        named: list[str] = []
        for messages in CONVERSATIONS:
            before = _calls(agents)
            raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
            header = raw.headers["x-outerloop-agent"]
            named.append(header)
            sequence = header.split(",")
            assert set(sequence) <= set(agents) and len(set(sequence)) == len(sequence) >= 1, header
            if profile == "arch-router":
                assert len(sequence) == 1, header
            # the agents named ran, once each, and no other
            after = _calls(agents)
            assert {id_: after[id_] - before[id_] for id_ in agents} == {id_: int(id_ in sequence) for id_ in agents}
            # the backend loaded and decided: at most "it named no agent" (what this random model answers here),
            # never an engine or model failure
            fallback = raw.headers.get("x-outerloop-route-fallback")
            assert fallback in (None, "no_match"), fallback
            if fallback == "no_match":
                assert sequence == ["hotels"]
            answered = len(messages) + len(sequence) - 1
            assert raw.parse().choices[0].message.content == f"{sequence[-1]} says: done ({answered} messages)"
        client.close()
        finished = flows.wait(len(CONVERSATIONS))
    # the router was asked every time (its decision's latency is on each request's annotations)
    assert [flow.annotations["agents.selected"] for flow in finished] == named
    assert all(flow.annotations["router.latency_ms"] > 0 for flow in finished)
    assert served.router.prompts == []  # the http router of the shared fixtures was never asked


def _naming(monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    """Every OnnxRouter may only name agents: a random model otherwise answers `other` or the empty list. A list
    answer's first step names an agent and continues the list (tests/router_model/test_route_lists restricts it
    so); a single route is any but `other`. The choices among those stay the model's own."""
    if profile == "plano-orchestrator":
        first_moves = OnnxRouter.first_moves

        def moves_kept(self: OnnxRouter, routes: RouteSet) -> Any:
            return restricted(functools.partial(first_moves, self), continued)(routes)

        monkeypatch.setattr(OnnxRouter, "first_moves", moves_kept)
        return

    def named_only(self: OnnxRouter, routes: RouteSet) -> TokenTrie:
        return TokenTrie({name: ids for name, ids in self.prompts.candidates(routes).items() if name != OTHER})

    monkeypatch.setattr(OnnxRouter, "trie", named_only)


def _reference(model_dir: Path, profile: str, messages: list[dict[str, str]]) -> tuple[str, ...]:
    """The routes the decoder must find: each step the exact argmax of uncached full scores."""
    routes = RouteSet.of([{"name": id_, "description": text} for id_, text in DESCRIPTIONS.items()])
    router = OnnxRouter(model_dir, routes, profile=profile, providers=["CPUExecutionProvider"],
                        max_routes=len(routes.names))
    if profile == "plano-orchestrator":
        return reference_routes(router, messages, continued)[0]
    scores = router.score_candidates(messages)
    return (max((name for name in scores if name != OTHER), key=lambda name: scores[name]),)


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["arch-router", "plano-orchestrator"])
def test_a_decision_runs_its_agents_in_order(trip: tuple[Travel, Agent], tiny_onnx_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch, profile: str) -> None:
    served, cars = trip
    agents = {"flights": served.flights, "hotels": served.hotels, "cars": cars}
    _naming(monkeypatch, profile)
    messages = CONVERSATIONS[0]
    expected = _reference(tiny_onnx_dir, profile, messages)
    assert 2 <= len(expected) <= 3 if profile == "plano-orchestrator" else len(expected) == 1
    with run_proxy(_config(served.urls, _onnx(tiny_onnx_dir, profile))) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=30)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=messages)
        client.close()
    assert raw.headers["x-outerloop-agent"] == ",".join(expected)
    assert "x-outerloop-route-fallback" not in raw.headers
    # each agent ran once, in order, and saw the answers of those before it as assistant messages naming them
    conversation: list[dict[str, Any]] = list(messages)
    for id_ in expected:
        ((_, body),) = agents[id_].seen
        assert body["messages"] == conversation
        conversation.append({"role": "assistant", "name": id_, "content": f"{id_} says: done "
                                                                         f"({len(conversation)} messages)"})
    assert not any(agents[id_].seen for id_ in set(agents) - set(expected))
    assert raw.parse().choices[0].message.content == conversation[-1]["content"]


@pytest.mark.slow
@pytest.mark.parametrize("profile", ["arch-router", "plano-orchestrator"])
def test_budget_exceeded_goes_to_the_default_agent(trip: tuple[Travel, Agent], tiny_onnx_dir: Path,
                                                   profile: str) -> None:
    served, cars = trip
    flows = FlowRecorder()
    raw = _config(served.urls, _onnx(tiny_onnx_dir, profile, budget_ms=0.001))
    with run_proxy(raw, plugins=(flows,)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0, timeout=30)
        answer = client.chat.completions.with_raw_response.create(model="auto", messages=CONVERSATIONS[0])
        streamed = client.chat.completions.create(model="auto", messages=CONVERSATIONS[1], stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        client.close()
        finished = flows.wait(2)
    for status, headers in ((answer.status_code, answer.headers), (streamed.response.status_code,
                                                                   streamed.response.headers)):
        assert status == 200
        assert headers["x-outerloop-agent"] == "hotels"
        assert headers["x-outerloop-route-fallback"] == "budget_exceeded"
    assert answer.parse().choices[0].message.content == "hotels says: done (1 messages)"
    assert text == "hotels says: done (1 messages)"
    assert len(served.hotels.seen) == 2 and not served.flights.seen and not cars.seen
    for flow in finished:
        assert flow.annotations["router.fallback"] == "budget_exceeded"
        assert "router.latency_ms" not in flow.annotations


# -- the selection over a backend's answer ------------------------------------------------------------------------


class Answers:
    """A RouterBackend that answers the routes it is given, in order, or raises."""

    name = "fixed"

    def __init__(self, routes: tuple[str, ...] = (), error: Exception | None = None) -> None:
        self.routes = routes
        self.error = error
        self.asked: list[Sequence[Message]] = []

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        self.asked.append(messages)
        if self.error is not None:
            raise self.error
        return Decision(route=self.routes[0] if self.routes else None, routes=self.routes, latency_ms=1.0,
                        backend=self.name)

    def warm_up(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _listener(profile: str) -> Listener:
    raw = _config({id_: "http://127.0.0.1:9" for id_ in DESCRIPTIONS},
                  {"backend": "http", "profile": profile, "http": {"url": "http://127.0.0.1:9/v1"}})
    return parse_config(raw, build_registry(entry_points=False), source="x.yaml").listeners[0]


def _select(profile: str, backend: Answers) -> tuple[tuple[str, ...], Flow]:
    selector = Selector(_listener(profile))
    assert selector.shared is not None
    selector.shared.backend = backend
    flow = Flow(request_id="r1", listener="travel", api="openai", method="POST", path="/v1/chat/completions",
                headers={}, body=b"", json_body={"messages": CONVERSATIONS[0]})
    chosen = asyncio.run(selector.select(flow))
    assert backend.asked == [CONVERSATIONS[0]]
    return chosen, flow


@pytest.mark.parametrize(("profile", "routes", "chosen"), [
    ("plano-orchestrator", ("cars", "flights"), ("cars", "flights")),
    ("plano-orchestrator", ("flights", "hotels", "cars"), ("flights", "hotels", "cars")),
    ("arch-router", ("cars", "flights"), ("cars",)),
    # names that are no configured agent, and repeats, are skipped; the rest keep their order
    ("plano-orchestrator", ("trains", "cars", "cars", "boats", "flights"), ("cars", "flights")),
    ("arch-router", ("trains", "flights"), ("flights",)),
])
def test_selection_keeps_the_configured_agents_in_order(profile: str, routes: tuple[str, ...],
                                                        chosen: tuple[str, ...]) -> None:
    selected, flow = _select(profile, Answers(routes))
    assert selected == chosen
    assert flow.extra_headers == {"x-outerloop-agent": ",".join(chosen)}
    assert flow.annotations["router.latency_ms"] == 1.0 and "router.fallback" not in flow.annotations


@pytest.mark.parametrize(("backend", "reason"), [
    (Answers(()), "no_match"),
    (Answers(("trains", "boats")), "no_match"),
    (Answers(error=RuntimeError("onnxruntime failed")), "engine_error"),
])
@pytest.mark.parametrize("profile", ["arch-router", "plano-orchestrator"])
def test_selection_falls_back_to_the_default_agent(profile: str, backend: Answers, reason: str) -> None:
    backend.asked.clear()  # one instance serves both profiles' cases
    selected, flow = _select(profile, backend)
    assert selected == ("hotels",)
    assert flow.extra_headers == {"x-outerloop-agent": "hotels", "x-outerloop-route-fallback": reason}
    assert flow.annotations["router.fallback"] == reason
