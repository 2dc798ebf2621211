"""Agents and a router model for the agent-listener tests: plain starlette servers, scripted per test."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from core.config_loader import parse_config
from core.errors import ConfigError
from core.plugins import build_registry
from tests.harness import serve_app

FLIGHTS = "books flights, plane tickets and airline fares"
HOTELS = "finds hotels, rooms and places to stay"


@dataclass
class Agent:
    """One agent: answers `<id> says: ...` in three chunks, as the test sets it up to."""

    id: str
    #: Answer every call with this status and an OpenAI error (before any byte).
    fail_status: int | None = None
    #: With fail_status: fail only this many first calls (0: every call).
    fail_first: int = 0
    #: Seconds between the chunks of a streamed answer.
    delay: float = 0.0
    #: Stream the first chunk, then break the connection.
    break_after_first: bool = False
    #: Answer a new user turn with a tool call, and the tool's result with text (a tool loop).
    tools: bool = False
    seen: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    #: time.monotonic() when each streamed answer's last chunk was sent.
    finished: list[float] = field(default_factory=list)

    def text(self, body: dict[str, Any]) -> str:
        return f"{self.id} says: done ({len(body['messages'])} messages)"

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.seen.append((dict(request.headers), body))
            if self.fail_status is not None and (not self.fail_first or len(self.seen) <= self.fail_first):
                return JSONResponse({"error": {"message": f"{self.id} is broken", "type": "server_error"}},
                                    status_code=self.fail_status)
            last = body["messages"][-1]
            if self.tools and last["role"] == "user":
                message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{}"}}]}
                return JSONResponse(_completion(self.id, message, "tool_calls"))
            text = self.text(body)
            if not body.get("stream"):
                return JSONResponse(_completion(self.id, {"role": "assistant", "content": text}, "stop"))
            return StreamingResponse(self._chunks(text), media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

    async def _chunks(self, text: str) -> AsyncIterator[bytes]:
        third = len(text) // 3
        parts = [text[:third], text[third:2 * third], text[2 * third:]]
        for i, part in enumerate(parts):
            if i:
                await asyncio.sleep(self.delay)
            yield _chunk(self.id, {"content": part}, None)
            if self.break_after_first:
                raise ConnectionError("the agent fell over mid-stream")
        yield _chunk(self.id, {}, "stop")
        self.finished.append(time.monotonic())
        yield b"data: [DONE]\n\n"


def _completion(agent: str, message: dict[str, Any], finish: str) -> dict[str, Any]:
    return {"id": "c-" + agent, "object": "chat.completion", "created": 0, "model": agent,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}


def _chunk(agent: str, delta: dict[str, Any], finish: str | None) -> bytes:
    data = {"id": "c-" + agent, "object": "chat.completion.chunk", "created": 0, "model": agent,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


@dataclass
class Router:
    """A router model served OpenAI-style (vLLM with Plano-Orchestrator): answers `answer`, after `delay`."""

    answer: str = '{"route": ["flights"]}'
    status: int = 200
    delay: float = 0.0
    prompts: list[str] = field(default_factory=list)

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            body = await request.json()
            self.prompts.append(body["messages"][-1]["content"])
            await asyncio.sleep(self.delay)
            if self.status != 200:
                return JSONResponse({"error": {"message": "router down"}}, status_code=self.status)
            return JSONResponse(_completion("router", {"role": "assistant", "content": self.answer}, "stop"))

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


@dataclass
class Travel:
    """Two agents and their router, served; ``config()`` is an agent listener over them."""

    flights: Agent
    hotels: Agent
    router: Router
    urls: dict[str, str]

    def config(self, listener_filters: list[Any] | None = None, flights_filters: list[Any] | None = None,
               hotels_filters: list[Any] | None = None, **router: Any) -> dict[str, Any]:
        return {
            "agents": [{"id": "flights", "url": self.urls["flights"]}, {"id": "hotels", "url": self.urls["hotels"]}],
            "listeners": [{
                "name": "travel", "type": "agent", "port": 0, "filters": listener_filters or [],
                "router": {"backend": "http", "profile": "plano-orchestrator",
                           "http": {"url": self.urls["router"] + "/v1", "timeout": 2.0}, "budget_ms": 1000,
                           **router},
                "agents": [
                    {"id": "flights", "description": FLIGHTS, "default": True, "filters": flights_filters or []},
                    {"id": "hotels", "description": HOTELS, "filters": hotels_filters or []},
                ],
            }],
        }


@contextmanager
def travel() -> Iterator[Travel]:
    flights, hotels, router = Agent("flights"), Agent("hotels"), Router()
    with ExitStack() as stack:
        urls = {name: f"http://127.0.0.1:{stack.enter_context(serve_app(server.app()))}"
                for name, server in (("flights", flights), ("hotels", hotels), ("router", router))}
        yield Travel(flights, hotels, router, urls)


def config_problems(raw: dict[str, Any]) -> list[str]:
    """The problems the loader finds in ``raw`` (a config the test expects to be refused), as `x.yaml`."""
    with pytest.raises(ConfigError) as raised:
        parse_config(raw, build_registry(entry_points=False), source="x.yaml")
    return raised.value.problems
