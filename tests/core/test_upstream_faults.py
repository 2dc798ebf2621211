"""Upstreams that misbehave (tests/faults.py) through a real hypercorn: every fault gets one clear answer in the
client's API shape, in bounded time, without a traceback, and nothing is held afterwards."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.faults import FAULTS, FaultyUpstream, serve_faults
from tests.harness import Proxy, eventually, open_sockets, run_proxy

CAP = 8192
TIMEOUTS = {"first_byte": 0.5, "idle": 0.5, "total": 1.5}
TRICKLE_TIMEOUTS = {"first_byte": 5, "idle": 5, "total": 1.0}
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def faulty() -> Iterator[tuple[Proxy, FaultyUpstream]]:
    with serve_faults() as faults:
        providers: list[dict[str, Any]] = []
        for name in [*FAULTS, "ok", "big-2000", "big-20000", "big-reset-20000"]:
            for provider in ("test", "anthropic"):
                # A trickle never waits long between bytes: only the total deadline ends it.
                timeouts = TRICKLE_TIMEOUTS if name == "trickle" else TIMEOUTS
                providers.append({"model": f"{provider}/{name}", "base_url": faults.url, "timeouts": timeouts})
        providers.append({"model": "test/refused", "base_url": faults.refusing_url})
        providers[0]["default"] = True
        raw = {"listeners": [{"name": "test", "port": 0, "filters": []}], "model_providers": providers,
               "limits": {"max_buffered_response_bytes": CAP}}
        with run_proxy(raw) as proxy:
            yield proxy, faults


def _post(proxy: Proxy, api: str, model: str, stream: bool) -> tuple[httpx.Response, float]:
    path, body = "/v1/chat/completions", {"model": model, "messages": MESSAGES, "stream": stream}
    if api == "anthropic":
        path, body["max_tokens"] = "/v1/messages", 50
    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        response = client.post(proxy.url + path, json=body)
    return response, time.monotonic() - started


def _error(api: str, response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    if api == "anthropic":
        assert body["type"] == "error" and set(body["error"]) == {"type", "message", "code"}
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.exc_info is None, record.getMessage()
        assert "Error in ASGI" not in record.getMessage()


def _released(proxy: Proxy, faults: FaultyUpstream, sockets: int, tasks: int, upstream_open: int) -> None:
    """Sockets, the proxy's tasks and the upstream's connections back to what they were before the request."""
    assert eventually(lambda: open_sockets() <= sockets and proxy.tasks() <= tasks and faults.open <= upstream_open), \
        (open_sockets(), sockets, proxy.tasks(), tasks, faults.open, upstream_open)


# fault, stream, status, details code, the message (None: not checked)
CASES = [
    ("vllm-500", False, 500, "upstream.http_500", "CUDA out of memory"),
    ("html-503", False, 503, "upstream.http_503", "the upstream answered 503 (text/html)"),
    ("html-503", True, 503, "upstream.http_503", "the upstream answered 503 (text/html)"),
    ("anthropic-529", False, 529, "upstream.http_529", "Overloaded"),
    ("openai-400", False, 400, "upstream.http_400", "This model's maximum context length is 8192 tokens"),
    ("429", False, 429, "upstream.http_429", "upstream says 429"),
    ("500", True, 500, "upstream.http_500", "upstream says 500"),
    ("503", False, 503, "upstream.http_503", "the upstream answered 503 (text/plain)"),
    ("binary-502", False, 502, "upstream.http_502", "the upstream answered 502 (application/octet-stream)"),
    ("bad-json", False, 502, "upstream.invalid_response", None),
    ("json-array", False, 502, "upstream.invalid_response", None),
    ("html-200", False, 502, "upstream.invalid_response", None),
    ("html-200", True, 502, "upstream.invalid_response", None),
    ("not-sse", True, 502, "upstream.invalid_response", None),
    ("bad-data", True, 502, "upstream.invalid_response", None),
    ("json-stream", True, 502, "upstream.invalid_response", None),
    ("half-body", False, 502, "upstream.unavailable", None),
    ("close", False, 502, "upstream.unavailable", None),
    ("hang", False, 504, "upstream.timeout", None),
    ("stall-headers", False, 504, "upstream.timeout", None),
    ("stall-headers", True, 504, "upstream.timeout", None),
]


@pytest.mark.parametrize("upstream_api", ["test", "anthropic"])
@pytest.mark.parametrize("client_api", ["openai", "anthropic"])
@pytest.mark.parametrize(("fault", "stream", "status", "code", "message"), CASES)
def test_every_fault_gets_one_clear_answer(faulty: tuple[Proxy, FaultyUpstream], caplog: pytest.LogCaptureFixture,
                                           client_api: str, upstream_api: str, fault: str, stream: bool, status: int,
                                           code: str, message: str | None) -> None:
    proxy, faults = faulty
    before = open_sockets(), proxy.tasks(), faults.open
    response, elapsed = _post(proxy, client_api, f"{upstream_api}/{fault}", stream)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = _error(client_api, response)
    assert error["code"] == code
    if message is not None:
        assert error["message"].startswith(message)  # control characters and a tail may follow
    assert "<html" not in response.text and "nginx" not in response.text and "127.0.0.1" not in response.text
    assert response.headers["x-request-id"]
    assert elapsed < TIMEOUTS["total"] + 1.5
    _released(proxy, faults, *before)
    _no_traceback(caplog)


@pytest.mark.parametrize(("client_api", "upstream_api", "stream"), [
    ("openai", "test", False), ("anthropic", "anthropic", True)])
def test_a_trickling_upstream_ends_within_the_total_deadline(
        faulty: tuple[Proxy, FaultyUpstream], caplog: pytest.LogCaptureFixture, client_api: str, upstream_api: str,
        stream: bool) -> None:
    proxy, faults = faulty
    before = open_sockets(), proxy.tasks(), faults.open
    response, elapsed = _post(proxy, client_api, f"{upstream_api}/trickle", stream)
    assert response.status_code == 504 and response.headers["content-type"] == "application/json"
    assert _error(client_api, response)["code"] == "upstream.timeout"
    assert TRICKLE_TIMEOUTS["total"] - 0.1 < elapsed < TRICKLE_TIMEOUTS["total"] + 1.5
    _released(proxy, faults, *before)
    _no_traceback(caplog)


def test_upstream_error_keeps_retry_after_param_and_strips_control_characters(
        faulty: tuple[Proxy, FaultyUpstream]) -> None:
    proxy, _ = faulty
    limited, _ = _post(proxy, "openai", "test/429", False)
    assert limited.headers["retry-after"] == "7"
    too_long, _ = _post(proxy, "openai", "test/openai-400", False)
    error = _error("openai", too_long)
    assert error["param"] == "messages" and "\x00" not in error["message"] and "\x1b" not in error["message"]


def test_refused_connection_is_a_502(faulty: tuple[Proxy, FaultyUpstream], caplog: pytest.LogCaptureFixture) -> None:
    proxy, faults = faulty
    before = open_sockets(), proxy.tasks(), faults.open
    for api in ("openai", "anthropic"):
        response, elapsed = _post(proxy, api, "test/refused", False)
        assert response.status_code == 502 and _error(api, response)["code"] == "upstream.unavailable"
        assert elapsed < 2
    _released(proxy, faults, *before)
    _no_traceback(caplog)


@pytest.mark.parametrize("upstream_api", ["test", "anthropic"])
@pytest.mark.parametrize("client_api", ["openai", "anthropic"])
def test_a_stream_reset_midway_ends_with_the_api_error_event(
        faulty: tuple[Proxy, FaultyUpstream], caplog: pytest.LogCaptureFixture, client_api: str,
        upstream_api: str) -> None:
    proxy, faults = faulty
    before = open_sockets(), proxy.tasks(), faults.open
    response, elapsed = _post(proxy, client_api, f"{upstream_api}/reset-stream", True)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    last = response.text.strip().split("\n\n")[-1]
    if client_api == "anthropic":
        assert last.startswith("event: error\ndata: ")
    data = json.loads(last.split("data: ", 1)[1])
    assert data["error"]["code"] == "upstream.unavailable"
    assert elapsed < 2
    _released(proxy, faults, *before)
    _no_traceback(caplog)


def test_sdks_raise_their_own_errors_on_faults(faulty: tuple[Proxy, FaultyUpstream],
                                               caplog: pytest.LogCaptureFixture) -> None:
    proxy, _ = faulty
    client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
    with pytest.raises(openai.InternalServerError) as html:
        client.chat.completions.create(model="test/html-503", messages=MESSAGES)  # type: ignore[arg-type]
    assert html.value.status_code == 503 and html.value.code == "upstream.http_503"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="anthropic/429", messages=MESSAGES)  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError) as garbage:
        client.chat.completions.create(model="test/bad-json", messages=MESSAGES)  # type: ignore[arg-type]
    assert garbage.value.status_code == 502 and garbage.value.code == "upstream.invalid_response"
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="test/not-sse", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError) as reset:
        list(client.chat.completions.create(model="test/reset-stream", messages=MESSAGES,  # type: ignore[arg-type]
                                            stream=True))
    assert "upstream" in str(reset.value)
    whole = client.chat.completions.create(model="test/big-2000", messages=MESSAGES)  # type: ignore[arg-type]
    assert whole.choices[0].message.content and whole.usage is not None and whole.usage.total_tokens == 7
    client.close()
    claude = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
    with pytest.raises(anthropic.InternalServerError) as vllm:
        claude.messages.create(model="test/vllm-500", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert vllm.value.status_code == 500 and "CUDA out of memory" in str(vllm.value)
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        claude.messages.create(model="anthropic/anthropic-529", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert overloaded.value.status_code == 529
    with pytest.raises(anthropic.InternalServerError) as bad:
        claude.messages.create(model="test/bad-json", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert bad.value.status_code == 502
    with pytest.raises(anthropic.InternalServerError):
        with claude.messages.stream(model="test/bad-data", max_tokens=5, messages=MESSAGES) as stream:  # type: ignore[arg-type]
            list(stream.text_stream)
    message = claude.messages.create(model="test/ok", max_tokens=5, messages=MESSAGES)  # type: ignore[arg-type]
    assert message.content[0].text.startswith("Hello")  # type: ignore[union-attr]
    claude.close()
    _no_traceback(caplog)


def test_bodies_past_the_buffer_cap(faulty: tuple[Proxy, FaultyUpstream], caplog: pytest.LogCaptureFixture) -> None:
    proxy, faults = faulty
    # Passed through: streamed on unread (a log line says so); translated: a 502, never buffered past the cap.
    passed, _ = _post(proxy, "openai", "test/big-20000", False)
    assert passed.status_code == 200 and len(passed.content) > CAP and passed.json()["choices"]
    assert any("passed on unread" in r.getMessage() for r in caplog.records)
    for api, model in (("anthropic", "test/big-20000"), ("openai", "anthropic/big-20000")):
        refused, _ = _post(proxy, api, model, False)
        assert refused.status_code == 502 and _error(api, refused)["code"] == "upstream.response_too_large"
    _no_traceback(caplog)


def test_a_body_that_fails_after_its_headers_is_aborted(faulty: tuple[Proxy, FaultyUpstream],
                                                        caplog: pytest.LogCaptureFixture,
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    proxy, faults = faulty
    before = open_sockets(), proxy.tasks(), faults.open
    caplog.set_level(logging.WARNING)
    for path, body in (("/v1/chat/completions", {"model": "test/big-reset-20000", "messages": MESSAGES}),
                       ("/v1/messages", {"model": "anthropic/big-reset-20000", "messages": MESSAGES,
                                         "max_tokens": 5})):
        started = time.monotonic()
        with httpx.Client(timeout=10) as client:
            with client.stream("POST", proxy.url + path, json=body) as response:
                assert response.status_code == 200
                with pytest.raises(httpx.RemoteProtocolError):
                    response.read()
        assert time.monotonic() - started < 2
    aborted = [r for r in caplog.records if "connection aborted" in r.getMessage()]
    assert len(aborted) == 2
    _released(proxy, faults, *before)
    _no_traceback(caplog)
    assert "Traceback" not in capfd.readouterr().err
