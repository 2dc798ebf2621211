from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from hypercorn.asyncio import serve
from hypercorn.config import Config
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as HttpRoute

from router_model.backend import RouterUpstreamError
from router_model.http_backend import HttpRouter
from router_model.prompts import ArchRouterProfile
from router_model.routes import RouteSet

ROUTES = RouteSet.of([{"name": "code", "description": "write code"}, {"name": "math", "description": "do math"}])


def make_app(seen: list[dict[str, Any]]) -> Starlette:
    async def completions(request: Request) -> Response:
        body = await request.json()
        seen.append(body)
        text = body["messages"][0]["content"]
        # The last user turn tells the fake model what to do.
        conversation = json.loads(text.split("<conversation>\n\n", 1)[1].split("\n\n</conversation>", 1)[0])
        ask = conversation[-1]["content"]
        if ask == "status 500":
            return Response("upstream exploded", status_code=500)
        if ask == "not json":
            return Response("<html>", media_type="text/html")
        if ask == "no choices":
            return JSONResponse({"choices": []})
        answers = {"malformed": '{"route": "co', "other": '{"route": "other"}', "unknown": '{"route": "chess"}'}
        answer = answers.get(ask, '{"route": "code"}')
        return JSONResponse(
            {"choices": [{"message": {"role": "assistant", "content": answer}}], "usage": {"prompt_tokens": 123}}
        )

    return Starlette(routes=[HttpRoute("/v1/chat/completions", completions, methods=["POST"])])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A real hypercorn serving an OpenAI-shaped fake router model on 127.0.0.1, in its own thread's loop."""
    import threading

    seen: list[dict[str, Any]] = []
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    started = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)

        async def main() -> None:
            started.set()
            await serve(make_app(seen), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

        loop.run_until_complete(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(5)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{port}/v1", seen
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    loop.close()


def decide(url: str, content: str, **kwargs: Any) -> Any:
    async def main() -> Any:
        router = HttpRouter(url, "arch-router", ROUTES, **kwargs)
        try:
            return await router.decide([{"role": "system", "content": "x"}, {"role": "user", "content": content}])
        finally:
            await router.aclose()

    return asyncio.run(main())


def test_sends_the_same_prompt_and_parses_the_route(server: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = server
    decision = decide(url, "write a sort", api_key="k")
    assert decision.route == "code" and decision.backend == "http" and decision.prompt_tokens == 123
    body = seen[-1]
    assert body["model"] == "arch-router" and body["temperature"] == 0
    expected = ArchRouterProfile().user_message(ROUTES, [])
    conversation = '[{"role": "user", "content": "write a sort"}]'
    assert body["messages"] == [{"role": "user", "content": expected.replace("[]", conversation, 1)}]


@pytest.mark.parametrize("ask", ["malformed", "other", "unknown"])
def test_malformed_or_other_answers_mean_no_route(server: tuple[str, list[dict[str, Any]]], ask: str) -> None:
    decision = decide(server[0], ask)
    assert decision.route is None and decision.raw


@pytest.mark.parametrize(("ask", "match"), [("status 500", "answered 500"), ("not json", "no chat completion"), ("no choices", "no chat completion")])
def test_endpoint_errors_raise_router_upstream_error(server: tuple[str, list[dict[str, Any]]], ask: str, match: str) -> None:
    with pytest.raises(RouterUpstreamError, match=match):
        decide(server[0], ask)


def test_connect_error_raises_router_upstream_error() -> None:
    with pytest.raises(RouterUpstreamError, match="failed"):
        decide(f"http://127.0.0.1:{free_port()}/v1", "hi", connect_timeout=0.5)
