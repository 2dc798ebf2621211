"""The router filter through a real server: route choice, fallbacks that never fail a request, decision API."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import ConfigError
from core.filter import Filter, LocalReply
from core.flow import Flow
from core.hookspecs import hookimpl
from tests.conftest import proxy_config
from tests.harness import run_proxy, serve_app
from tests.upstream import Upstream

ROOT = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "write a python function"}]


class RouterModelServer:
    """An OpenAI-shaped server standing in for vLLM serving Arch-Router: answers what `answer` says."""

    def __init__(self) -> None:
        self.answer = '{"route": "coding"}'
        self.status = 200
        self.prompts: list[str] = []

    def app(self) -> Starlette:
        async def chat(request: Request) -> JSONResponse:
            body = await request.json()
            self.prompts.append(body["messages"][-1]["content"])
            if self.status != 200:
                return JSONResponse({"error": {"message": "down"}}, status_code=self.status)
            return JSONResponse({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": self.answer}}]})
        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@pytest.fixture
def router_server() -> Iterator[tuple[RouterModelServer, str]]:
    server = RouterModelServer()
    with serve_app(server.app()) as port:
        yield server, f"http://127.0.0.1:{port}/v1"


def _config(base: str, router_url: str, filters: list[Any] | None = None, **routing: Any) -> dict[str, Any]:
    raw = proxy_config(base, filters=filters or ["router"])
    raw["model_providers"].append({"model": "test/coder", "base_url": base})
    raw["routing"] = {"backend": "http", "http": {"url": router_url, "timeout": 1.0}, **routing}
    raw["routing_preferences"] = [
        {"name": "coding", "description": "writing code", "models": ["test/fail-500", "test/coder"]},
        {"name": "chat", "description": "small talk", "models": ["test/test-model"]},
    ]
    return raw


def test_matched_route_serves_its_models_in_order(upstream: tuple[Upstream, str],
                                                  router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    with run_proxy(_config(base, router_url)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(model="auto", messages=MESSAGES)  # type: ignore[arg-type]
        client.close()
    # The route's first model failed with a 500 before any byte; the second one served the request.
    assert [s.json["model"] for s in server.seen] == ["fail-500", "coder"]
    assert raw.headers["x-outerloop-model"] == "test/coder" and raw.headers["x-outerloop-route"] == "coding"
    assert "x-outerloop-route-fallback" not in raw.headers
    assert raw.parse().choices[0].message.content == "Hello from the test upstream."
    # The router model saw the Arch-Router prompt with the routes and the conversation.
    assert '"name": "coding"' in router.prompts[0] and "write a python function" in router.prompts[0]


def test_other_serves_default_and_named_models_are_not_routed(upstream: tuple[Upstream, str],
                                                              router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    with run_proxy(_config(base, router_url)) as proxy:
        router.answer = '{"route": "other"}'
        other = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
        router.answer = '{"route": "coding"}'
        named = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "test-model", "messages": MESSAGES})
    assert [s.json["model"] for s in server.seen] == ["test-model", "test-model"]
    assert other.headers["x-outerloop-route"] == "other" and "x-outerloop-route" not in named.headers
    assert len(router.prompts) == 1  # the request naming a model never reached the router


def test_route_named_models_switch(upstream: tuple[Upstream, str],
                                   router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    with run_proxy(_config(base, router_url, route_named_models=True)) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", json={"model": "test-model", "messages": MESSAGES})
    assert [s.json["model"] for s in server.seen] == ["fail-500", "coder"]


@pytest.mark.parametrize("answer", ["not json at all", '{"route": "unknown_route"}', '{"route": 5}', ""])
def test_malformed_router_answers_serve_the_default(upstream: tuple[Upstream, str],
                                                   router_server: tuple[RouterModelServer, str],
                                                   answer: str) -> None:
    server, base = upstream
    router, router_url = router_server
    router.answer = answer
    with run_proxy(_config(base, router_url)) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 200
    assert server.seen[-1].json["model"] == "test-model"


def test_router_failures_never_fail_the_request(upstream: tuple[Upstream, str],
                                                router_server: tuple[RouterModelServer, str],
                                                caplog: pytest.LogCaptureFixture) -> None:
    server, base = upstream
    router, router_url = router_server
    router.status = 500
    with run_proxy(_config(base, router_url)) as proxy:
        for _ in range(3):
            ok = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
            assert ok.status_code == 200
            assert ok.headers["x-outerloop-route"] == "other"
            assert ok.headers["x-outerloop-route-fallback"] == "engine_error"
        decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert all(s.json["model"] == "test-model" for s in server.seen)
    assert decision["fallback"] == "engine_error" and decision["models"] == ["test/test-model"]
    # logged once, not once per request
    assert sum("router fell back" in r.getMessage() for r in caplog.records) == 1


def test_missing_model_files_fall_back(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    server, base = upstream
    raw = _config(base, "http://127.0.0.1:9/v1")
    raw["routing"] = {"backend": "onnx", "model_path": str(tmp_path / "absent")}
    with run_proxy(raw) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
        decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert response.status_code == 200 and server.seen[-1].json["model"] == "test-model"
    assert decision["fallback"] == "model_missing" and decision["route"] is None


def test_decision_past_budget_falls_back(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    import asyncio

    slow = Starlette(routes=[Route("/v1/chat/completions", _slow_answer, methods=["POST"])])
    with serve_app(slow) as port:
        raw = _config(base, f"http://127.0.0.1:{port}/v1", budget_ms=50)
        with run_proxy(raw) as proxy:
            decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert decision["fallback"] == "budget_exceeded"
    assert decision["latency_ms"] < 1000
    del asyncio


async def _slow_answer(request: Request) -> JSONResponse:
    import asyncio

    await asyncio.sleep(0.5)
    return JSONResponse({"choices": [{"message": {"content": '{"route": "coding"}'}}]})


def test_decision_api(upstream: tuple[Upstream, str], router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    with run_proxy(_config(base, router_url)) as proxy:
        decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES},
                              headers={"x-session-id": "s1"}).json()
        wrong = httpx.get(proxy.url + "/routing/v1/chat/completions")
    assert decision["route"] == "coding"
    assert decision["models"] == ["test/fail-500", "test/coder"]
    assert decision["backend"] == "http" and decision["pinned"] is False
    assert decision["latency_ms"] > 0
    assert set(decision) >= {"route", "models", "session_id", "pinned", "latency_ms", "backend"}
    assert server.seen == []  # no model was called
    assert wrong.status_code == 405


class PinPlugin:
    """Stands in for the session filter: marks every request as a pinned trajectory on test/coder."""

    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        class Pin(Filter):
            async def on_request(self, flow: Flow) -> LocalReply | None:
                flow.pin = "test/coder"
                return None

        register("pin", lambda config, context: Pin())


def test_pinned_trajectory_is_not_rerouted(upstream: tuple[Upstream, str],
                                           router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    with run_proxy(_config(base, router_url, filters=["pin", "router"]), plugins=(PinPlugin(),)) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
        decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES}).json()
    assert router.prompts == []
    assert server.seen[-1].json["model"] == "coder"  # the pin, applied by the core
    assert decision["pinned"] is True


def test_routing_disabled_listener_has_no_decision_api(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        response = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES})
    assert response.status_code == 404 and response.json()["error"]["code"] == "router.not_enabled"


def test_unknown_route_model_is_a_config_error(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = _config(base, "http://127.0.0.1:9/v1")
    raw["routing_preferences"][1]["models"] = ["test/missing"]
    with pytest.raises(ConfigError) as caught:
        with run_proxy(raw):
            pass
    assert "routing_preferences[1].models[0]: 'test/missing' is not a configured model" in str(caught.value)


def test_inline_routing_preferences(upstream: tuple[Upstream, str],
                                    router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    raw = _config(base, router_url)
    del raw["routing_preferences"]
    raw["model_providers"][-1]["routing_preferences"] = [{"name": "coding", "description": "writing code"}]
    with run_proxy(raw) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    assert server.seen[-1].json["model"] == "coder"


def test_cli_route(router_server: tuple[RouterModelServer, str], tmp_path: Path) -> None:
    router, router_url = router_server
    path = tmp_path / "route.yaml"
    path.write_text(yaml.safe_dump(_config("http://127.0.0.1:9/v1", router_url)))
    out = subprocess.run([sys.executable, "-m", "core.cli", "route", "-c", str(path), "fix my code"],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["route"] == "coding"
    assert "fix my code" in router.prompts[-1]


def test_router_keeps_to_models_the_principal_may_use(upstream: tuple[Upstream, str],
                                                      router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    import hashlib

    digest = hashlib.sha256(b"k-limited").hexdigest()
    auth = {"name": "auth", "config": {"keys": [
        {"name": "limited", "sha256": digest, "models": ["test/test-model", "test/coder"]}]}}
    with run_proxy(_config(base, router_url, filters=[auth, "router"])) as proxy:
        headers = {"authorization": "Bearer k-limited"}
        response = httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES}, headers=headers)
        router.answer = '{"route": "chat"}'
        decision = httpx.post(proxy.url + "/routing/v1/chat/completions", json={"messages": MESSAGES},
                              headers=headers).json()
    # the coding route lists test/fail-500 first, which this principal may not use: only test/coder is tried
    assert response.status_code == 200
    assert [s.json["model"] for s in server.seen] == ["coder"]
    assert decision["route"] == "chat" and decision["models"] == ["test/test-model"]


def test_rate_caps_keyed_by_route_and_model_see_the_routed_request(
        upstream: tuple[Upstream, str], router_server: tuple[RouterModelServer, str]) -> None:
    server, base = upstream
    router, router_url = router_server
    caps = {"name": "rate_cap", "config": {"caps": [
        {"requests": 1, "window": "1m", "key": "route"},
        {"requests": 2, "window": "1m", "key": "model"},
    ]}}
    raw = _config(base, router_url, filters=[caps, "router"])
    raw["routing_preferences"] += [
        {"name": "greeting", "description": "hello", "models": ["test/test-model"]},
        {"name": "farewell", "description": "goodbye", "models": ["test/test-model"]},
    ]
    with run_proxy(raw) as proxy:
        url = proxy.url + "/v1/chat/completions"

        def ask(route: str) -> httpx.Response:
            router.answer = json.dumps({"route": route})
            return httpx.post(url, json={"messages": MESSAGES})

        first_chat, second_chat, coding, greeting, farewell = (
            ask(r) for r in ("chat", "chat", "coding", "greeting", "farewell"))
    assert first_chat.status_code == 200
    assert second_chat.status_code == 429 and "by-route" in second_chat.json()["error"]["message"]
    assert coding.status_code == 200  # another route has its own budget (and failed over once, admitted once)
    assert greeting.status_code == 200  # a fresh route; test/test-model's second request of the minute
    # a fresh route again, but test/test-model has had its two requests: the model cap says no
    assert farewell.status_code == 429 and "by-model" in farewell.json()["error"]["message"]
