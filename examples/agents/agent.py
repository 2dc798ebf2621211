"""One agent as a plain starlette app: OpenAI chat completions in, its own LLM calls through outerloop out."""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

#: Where the agent makes its own LLM calls: outerloop's model listener (configs/agents.yaml's `models`).
DEFAULT_MODEL_URL = "http://127.0.0.1:12000/v1"
DEFAULT_MODEL = "demo/demo-echo"
#: The W3C trace context headers an agent passes on, so its LLM calls join the trace the proxy started.
TRACE_HEADERS = ("traceparent", "tracestate")

Message = Mapping[str, Any]
#: An agent's own work before it asks the model: the conversation in, a short result (its "tool" output) out.
Work = Callable[[Sequence[Message]], Awaitable[str]]


class ModelError(Exception):
    """The model listener failed or answered with an error; the agent answers 502 (or an error event)."""


def text_of(content: Any) -> str:
    """A message's text, whether `content` is a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def last_user_text(messages: Sequence[Message]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return text_of(message.get("content"))
    return ""


_LEAD = re.compile(r"^\[([\w.-]+)\]")


def earlier_agents(messages: Sequence[Message]) -> list[str]:
    """The agents that answered before this one in a sequence: assistant messages that carry a `name`, or whose
    text starts with an agent's `[name]` lead line (every example agent's answer does)."""
    found = []
    for message in messages:
        if message.get("role") != "assistant":
            continue
        lead = _LEAD.match(text_of(message.get("content")))
        name = message.get("name") or (lead.group(1) if lead else None)
        if name and name not in found:
            found.append(str(name))
    return found


def _error(status: int, message: str, kind: str, code: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": code}},
                        status_code=status)


def _event(obj: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Agent:
    """The agent: does its work, asks the model with the result in a system prompt, answers in its own name."""

    def __init__(self, name: str, instructions: str, work: Work, model_url: str = DEFAULT_MODEL_URL,
                 model: str = DEFAULT_MODEL, api_key: str = "unused") -> None:
        self.name = name
        self.instructions = instructions
        self.work = work
        self.model = model
        self.url = model_url.rstrip("/") + "/chat/completions"
        self.api_key = api_key
        self.client: httpx.AsyncClient | None = None

    def app(self) -> Starlette:
        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            # One client for the process: its pool keeps connections to the model listener warm.
            async with httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=2.0),
                                         headers={"authorization": f"Bearer {self.api_key}"}) as client:
                self.client = client
                yield
            self.client = None

        return Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"]),
                                 Route("/healthz", self.health, methods=["GET"])], lifespan=lifespan)

    async def health(self, request: Request) -> Response:
        return JSONResponse({"agent": self.name, "status": "ok"})

    async def chat(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "the body is not JSON", "invalid_request_error", "invalid_json")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "`messages` must be a list of chat messages", "invalid_request_error",
                          "invalid_messages")
        trace = {h: request.headers[h] for h in TRACE_HEADERS if h in request.headers}
        found = await self.work(messages)
        ask = {"model": self.model, "messages": self.model_messages(messages, found)}
        before = earlier_agents(messages)
        lead = f"[{self.name}] " + (f"(after {', '.join(before)}) " if before else "") + f"{found}\n"
        if body.get("stream") is True:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return await self._stream(ask, trace, lead, include_usage)
        try:
            text, usage = await self._complete(ask, trace)
        except ModelError as exc:
            return _error(502, f"{self.name}: the model call failed: {exc}", "server_error", "model_failed")
        content = lead + text
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": self.name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop",
                         "logprobs": None}],
            "usage": usage,
        })

    def model_messages(self, messages: Sequence[Message], found: str) -> list[dict[str, Any]]:
        """The agent's own prompt: its instructions and what its work found, then the user's turns only (earlier
        agents' answers reach it through the system prompt, so the model is asked about the user's request)."""
        before = earlier_agents(messages)
        context = f" Agents that answered before you: {', '.join(before)}." if before else ""
        system = f"{self.instructions}{context} What you found: {found}"
        return [{"role": "system", "content": system},
                *({"role": "user", "content": text_of(m.get("content"))} for m in messages if m.get("role") == "user")]

    async def _complete(self, ask: dict[str, Any], trace: dict[str, str]) -> tuple[str, Any]:
        """The model's answer text and usage."""
        assert self.client is not None, "the app's lifespan did not run"
        try:
            response = await self.client.post(self.url, json=ask, headers=trace)
        except httpx.HTTPError as exc:
            raise ModelError(type(exc).__name__) from exc
        if response.status_code != 200:
            raise ModelError(f"HTTP {response.status_code}")
        try:
            answer = response.json()
            return text_of(answer["choices"][0]["message"].get("content")), answer.get("usage")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ModelError("not a chat completion") from exc

    async def _stream(self, ask: dict[str, Any], trace: dict[str, str], lead: str,
                      include_usage: bool) -> Response:
        """Opens the model's stream before answering, so a failed model call is still a clean 502; then relays
        its deltas as they arrive, after the agent's own lead line."""
        assert self.client is not None, "the app's lifespan did not run"
        request = self.client.build_request("POST", self.url, headers=trace, json={
            **ask, "stream": True, "stream_options": {"include_usage": True}})
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            return _error(502, f"{self.name}: the model call failed: {type(exc).__name__}", "server_error",
                          "model_failed")
        if upstream.status_code != 200:
            await upstream.aclose()
            return _error(502, f"{self.name}: the model call failed: HTTP {upstream.status_code}", "server_error",
                          "model_failed")
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self.name}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            return _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        async def events() -> AsyncIterator[bytes]:
            usage: Any = None
            try:
                yield chunk({"role": "assistant", "content": lead})
                async for line in upstream.aiter_lines():
                    if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                        continue
                    event = json.loads(line[5:])
                    if "error" in event:
                        yield _event(event)
                        return
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            yield chunk({"content": content})
                yield chunk({}, "stop")
                if include_usage and usage:
                    yield _event({**base, "choices": [], "usage": usage})
                yield b"data: [DONE]\n\n"
            except (httpx.HTTPError, ValueError) as exc:
                # Headers went out: the failure is an error event, as OpenAI sends one mid-stream.
                yield _event({"error": {"message": f"{self.name}: the model stream failed: {type(exc).__name__}",
                                        "type": "server_error", "param": None, "code": "model_failed"}})
            finally:
                await upstream.aclose()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})


def serve(agent_for: Callable[[str, str], Agent], description: str, default_port: int) -> None:
    """`python -m examples.agents.NAME --port N --model-url URL`: the agent on hypercorn, 127.0.0.1 only."""
    import asyncio

    from hypercorn.asyncio import serve as hypercorn_serve
    from hypercorn.config import Config

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--port", type=int, default=default_port, help="port on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--model-url", default=os.environ.get("OUTERLOOP_MODEL_URL", DEFAULT_MODEL_URL),
                        help="outerloop's model listener, OpenAI-compatible (default: $OUTERLOOP_MODEL_URL or "
                        "%(default)s)")
    parser.add_argument("--model", default=os.environ.get("OUTERLOOP_AGENT_MODEL", DEFAULT_MODEL),
                        help="the model the agent asks for (default: $OUTERLOOP_AGENT_MODEL or %(default)s)")
    args = parser.parse_args()
    config = Config()
    config.bind = [f"127.0.0.1:{args.port}"]
    config.accesslog = None
    app = agent_for(args.model_url, args.model).app()
    try:
        asyncio.run(hypercorn_serve(app, config))  # type: ignore[arg-type]
    except KeyboardInterrupt:
        pass
