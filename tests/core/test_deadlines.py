"""Deadlines per provider entry: connect, first byte, idle between chunks, and the total across attempts."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from core.config import ModelProvider
from tests.conftest import proxy_config
from tests.harness import run_proxy, serve_app
from tests.upstream import Upstream

MESSAGES: Any = [{"role": "user", "content": "hi"}]
COMPLETION = json.dumps({
    "id": "c", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 200}, "finish_reason": "stop"}],
}).encode()


def trickling_app(interval: float) -> Starlette:
    """An upstream that never stalls long enough for a per-read timeout: one byte every `interval` seconds."""

    async def chat(request: Request) -> Response:
        stream = (await request.json()).get("stream") is True
        body = (b"data: " + COMPLETION + b"\n\n") * 20 if stream else COMPLETION

        async def trickle() -> Any:
            first = body.index(b"\n\n") + 2 if stream else 0  # a stream's first event comes whole, at once
            if first:
                yield body[:first]
            for i in range(first, len(body)):
                yield body[i:i + 1]
                await asyncio.sleep(interval)

        return StreamingResponse(trickle(), media_type="text/event-stream" if stream else "application/json")

    return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def test_a_trickling_upstream_ends_within_the_total_deadline() -> None:
    with serve_app(trickling_app(0.05)) as port:
        base = f"http://127.0.0.1:{port}/v1"
        config = {"listeners": [{"name": "t", "port": 0}], "model_providers": [
            {"model": "slow/m", "base_url": base, "default": True, "timeouts": {"idle": 0.5, "total": 1.0}}]}
        with run_proxy(config) as proxy:
            url = proxy.url + "/v1/chat/completions"
            started = time.monotonic()
            plain = httpx.post(url, json={"messages": MESSAGES}, timeout=10)
            plain_took = time.monotonic() - started
            started = time.monotonic()
            with httpx.stream("POST", url, json={"messages": MESSAGES, "stream": True}, timeout=10) as streamed:
                status = streamed.status_code
                text = b"".join(streamed.iter_raw())
            stream_took = time.monotonic() - started
    assert plain.status_code == 504 and plain.json()["error"]["code"] == "upstream.timeout"
    assert 1.0 <= plain_took <= 1.1, plain_took  # the deadline plus 10%
    # The stream had started (headers and some bytes went out): it ends with the API's error event.
    assert status == 200 and text.rstrip().endswith(b"}") and b'"upstream.timeout"' in text.rsplit(b"data: ", 1)[1]
    assert 1.0 <= stream_took <= 1.1, stream_took


def test_idle_bounds_the_gap_between_chunks_and_first_byte_the_wait_for_headers(
        upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    config = proxy_config(base)
    config["model_providers"].append({"model": "test/slow", "base_url": base, "timeouts": {"idle": 0.1}})
    config["model_providers"] = [p for p in config["model_providers"] if p is not config["model_providers"][1]]
    with run_proxy(config) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0, timeout=10) as client:
            started = time.monotonic()
            with pytest.raises(openai.APIError) as stalled:
                list(client.chat.completions.create(model="test/slow", messages=MESSAGES, stream=True))
            idle_took = time.monotonic() - started
            started = time.monotonic()
            with pytest.raises(openai.APITimeoutError if False else openai.InternalServerError) as hung:
                client.chat.completions.create(model="test/hang", messages=MESSAGES)
            hang_took = time.monotonic() - started
    assert "upstream.timeout" in str(stalled.value.body) and idle_took < 0.3 + 0.5  # slow_delay is 0.3 s
    assert hung.value.status_code == 504 and 0.5 <= hang_took < 1.5


def test_deprecated_connect_and_read_timeout_still_work_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "outerloop.config")
    provider = ModelProvider.model_validate({"model": "p/m", "base_url": "http://127.0.0.1:1",
                                             "connect_timeout": 2, "read_timeout": 30})
    assert (provider.timeouts.connect, provider.timeouts.first_byte, provider.timeouts.idle) == (2, 30, 30)
    assert provider.timeouts.total == 600
    assert "p/m: connect_timeout and read_timeout are deprecated" in caplog.text
    explicit = ModelProvider.model_validate({"model": "p/m", "base_url": "http://127.0.0.1:1", "read_timeout": 30,
                                             "timeouts": {"idle": 5}})
    assert (explicit.timeouts.first_byte, explicit.timeouts.idle) == (30, 5)  # timeouts: wins where given
