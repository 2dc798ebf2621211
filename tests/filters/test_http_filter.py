from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from filters.http_filter import HttpFilterConfig
from tests.conftest import proxy_config
from tests.harness import free_port, run_proxy, serve_app
from tests.upstream import Upstream


@dataclass
class Service:
    """A filter service written the way a user would, in any language: here starlette."""

    seen: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/{mode}", self.handle, methods=["POST"])])

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        mode = request.path_params["mode"]
        self.seen.append((mode, dict(request.headers), body))
        phase = request.headers["x-outerloop-phase"]
        if mode == "replace":
            data = json.loads(body)
            if phase == "request":
                data["messages"][-1]["content"] = "rewritten by the service"
            else:
                data["choices"][0]["message"]["content"] = "answer rewritten"
            return JSONResponse(data)
        if mode == "unchanged":
            return Response(status_code=204)
        if mode == "reject":
            return JSONResponse({"error": {"message": "policy 7 forbids this topic"}}, status_code=403)
        if mode == "reject-text":
            return PlainTextResponse("nope, plain text", status_code=422)
        if mode == "error":
            return PlainTextResponse("boom", status_code=500)
        if mode == "garbage":
            return PlainTextResponse("not json", status_code=200)
        if mode == "hang":
            await asyncio.sleep(30)
        if mode == "sse":
            return PlainTextResponse(body.decode().replace("Hello", "Howdy"), media_type="text/event-stream")
        return Response(status_code=204)


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[Service, str]]:
    svc = Service()
    with serve_app(svc.app()) as port:
        yield svc, f"http://127.0.0.1:{port}"


def filtered(base: str, url: str, **settings: Any) -> dict[str, Any]:
    return proxy_config(base, filters=[{"name": "http_filter", "config": {"url": url, **settings}}])


def chat(proxy_url: str, content: str = "hi", stream: bool = False,
         headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(proxy_url + "/v1/chat/completions", headers=headers or {}, timeout=10,
                      json={"model": "test-model", "stream": stream, "messages": [{"role": "user", "content": content}]})


def test_replacement_reaches_upstream_with_headers(upstream: tuple[Upstream, str],
                                                    service: tuple[Service, str]) -> None:
    server, base = upstream
    svc, url = service
    config = filtered(base, url + "/replace?token=secret", headers={"authorization": "Bearer svc"},
                      forward_headers=["X-Team"])
    with run_proxy(config) as proxy:
        answer = chat(proxy.url, "original text", headers={"x-team": "blue", "x-request-id": "req-42"})
        assert answer.status_code == 200
        assert server.seen[-1].json["messages"][0]["content"] == "rewritten by the service"
        mode, headers, body = svc.seen[-1]
        assert json.loads(body)["messages"][0]["content"] == "original text"
        assert headers["x-outerloop-phase"] == "request" and headers["x-outerloop-request-id"] == "req-42"
        assert headers["x-team"] == "blue" and headers["authorization"] == "Bearer svc"


def test_204_leaves_request_unchanged(upstream: tuple[Upstream, str], service: tuple[Service, str]) -> None:
    server, base = upstream
    with run_proxy(filtered(base, service[1] + "/unchanged")) as proxy:
        body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "keep  me"}]}).encode()
        answer = httpx.post(proxy.url + "/v1/chat/completions", content=body,
                            headers={"content-type": "application/json"})
        assert answer.status_code == 200 and server.seen[-1].body == body


@pytest.mark.parametrize(("mode", "status", "message"), [
    ("reject", 403, "policy 7 forbids this topic"), ("reject-text", 422, "nope, plain text")])
def test_4xx_blocks_with_the_services_message(upstream: tuple[Upstream, str], service: tuple[Service, str],
                                             mode: str, status: int, message: str) -> None:
    server, base = upstream
    with run_proxy(filtered(base, service[1] + "/" + mode)) as proxy:
        answer = chat(proxy.url)
        assert answer.status_code == status
        error = answer.json()["error"]
        assert error["message"] == message and error["code"] == "http_filter.rejected"
        assert not server.seen


def test_sdk_sees_rejection_as_its_own_exception(upstream: tuple[Upstream, str],
                                                 service: tuple[Service, str]) -> None:
    _, base = upstream
    with run_proxy(filtered(base, service[1] + "/reject")) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError, match="policy 7"):
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": "x"}])
        client.close()


@pytest.mark.parametrize("mode", ["error", "hang", "garbage", "refused"])
def test_unavailable_service_fails_closed(upstream: tuple[Upstream, str], service: tuple[Service, str],
                                          mode: str) -> None:
    server, base = upstream
    url = f"http://127.0.0.1:{free_port()}/x" if mode == "refused" else f"{service[1]}/{mode}"
    with run_proxy(filtered(base, url, timeout_seconds=0.3)) as proxy:
        started = time.monotonic()
        answer = chat(proxy.url)
        assert time.monotonic() - started < 2.0
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "http_filter.unavailable"
        assert not server.seen


@pytest.mark.parametrize("mode", ["error", "hang"])
def test_unavailable_service_fails_open_with_log(upstream: tuple[Upstream, str], service: tuple[Service, str],
                                                 mode: str, caplog: pytest.LogCaptureFixture) -> None:
    server, base = upstream
    with caplog.at_level(logging.WARNING, logger="outerloop.http_filter"):
        with run_proxy(filtered(base, f"{service[1]}/{mode}?key=hush", timeout_seconds=0.3,
                                on_error="fail_open")) as proxy:
            answer = chat(proxy.url, "passes")
            assert answer.status_code == 200
            assert server.seen[-1].json["messages"][0]["content"] == "passes"
    lines = [r.getMessage() for r in caplog.records]
    assert any("fail_open" in line and f"/{mode}" in line for line in lines)
    assert not any("hush" in line for line in lines)


def test_response_phase_replaces_json_and_leaves_streams(upstream: tuple[Upstream, str],
                                                        service: tuple[Service, str]) -> None:
    _, base = upstream
    svc, url = service
    with run_proxy(filtered(base, url + "/replace", phases=["request", "response"])) as proxy:
        answer = chat(proxy.url)
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "answer rewritten"
        assert svc.seen[-1][1]["x-outerloop-phase"] == "response" and svc.seen[-1][1]["x-outerloop-status"] == "200"
        calls = len(svc.seen)
        streamed = chat(proxy.url, stream=True)
        assert b"Hello" in streamed.content and len(svc.seen) == calls + 1   # only the request phase


def test_response_phase_rejects(upstream: tuple[Upstream, str], service: tuple[Service, str]) -> None:
    _, base = upstream
    with run_proxy(filtered(base, service[1] + "/reject", phases=["response"])) as proxy:
        answer = chat(proxy.url)
        assert answer.status_code == 403 and answer.json()["error"]["code"] == "http_filter.rejected"


def test_buffered_streams_go_to_the_service(upstream: tuple[Upstream, str], service: tuple[Service, str]) -> None:
    _, base = upstream
    svc, url = service
    with run_proxy(filtered(base, url + "/sse", phases=["response"], streams="buffer")) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="k", max_retries=0)
        stream = client.chat.completions.create(model="test-model", stream=True,
                                                messages=[{"role": "user", "content": "x"}])
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Howdy from the test upstream."
        assert svc.seen[-1][1]["content-type"].startswith("text/event-stream")
        client.close()


def test_config_validation() -> None:
    with pytest.raises(ValidationError):
        HttpFilterConfig.model_validate({"url": "ftp://x"})
    with pytest.raises(ValidationError):
        HttpFilterConfig.model_validate({"url": "http://x", "phases": ["sideways"]})
    with pytest.raises(ValidationError):
        HttpFilterConfig.model_validate({"url": "http://x", "surprise": 1})
