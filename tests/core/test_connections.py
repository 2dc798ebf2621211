"""Client connections through a real hypercorn: sockets freed when clients leave, header and body deadlines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import httpx
import pytest

from tests.harness import FlowRecorder, eventually, proxy_process, run_proxy

DEMO: dict[str, Any] = {
    "listeners": [{"name": "test", "port": 0}],
    "model_providers": [{"model": "demo/demo-echo", "default": True}],
}
BODY = {"model": "demo/demo-echo", "messages": [{"role": "user", "content": "hi"}]}


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _request(url: str, stream: bool) -> None:
    # One client each, closed after its answer: what the proxy must not hold on to afterwards.
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        if stream:
            async with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
                assert response.status_code == 200
                assert b"[DONE]" in b"".join([chunk async for chunk in response.aiter_raw()])
        else:
            assert (await client.post("/v1/chat/completions", json=BODY)).status_code == 200


def test_fds_return_to_baseline_when_clients_close() -> None:
    """Before: every closed kept-alive connection stayed in CLOSE_WAIT for the keep-alive time."""
    with proxy_process({**DEMO, "server": {"keep_alive_seconds": 120}}) as (process, url):
        asyncio.run(_request(url, stream=False))
        baseline = eventually(lambda: _fds(process.pid) if _fds(process.pid) <= 64 else 0)

        async def many() -> None:
            await asyncio.gather(*(_request(url, stream=i % 2 == 0) for i in range(100)))

        asyncio.run(many())
        closed = time.monotonic()
        assert eventually(lambda: _fds(process.pid) <= baseline, timeout=3.0), (_fds(process.pid), baseline)
        assert time.monotonic() - closed < 3.0


def _response(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    data = b""
    while not data.endswith(b'"ok"}'):
        data += sock.recv(4096)
    return data


def test_open_idle_connection_is_kept_for_keep_alive_then_closed() -> None:
    with run_proxy({**DEMO, "server": {"keep_alive_seconds": 0.5}}) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.ports[0])) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(4096) == b""  # the server closed the idle connection
        assert 0.3 < time.monotonic() - started < 3


def _trickle(port: int, lines: list[bytes], pause: float, limit: float) -> tuple[float, bytes]:
    """Sends ``lines`` one per ``pause``; returns when the server closed and what it answered."""
    started = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(pause)
        for line in lines:
            try:
                sock.sendall(line)
            except OSError:
                break
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            answer += data
            if not data:
                break
        else:
            sock.settimeout(limit)
            try:
                while data := sock.recv(4096):
                    answer += data
            except OSError:
                pass
    return time.monotonic() - started, answer


def test_trickled_headers_are_cut_off_at_the_header_timeout() -> None:
    lines = [b"POST /v1/chat/completions HTTP/1.1\r\n"] + [b"x-slow: 1\r\n"] * 40
    with run_proxy({**DEMO, "server": {"header_timeout_seconds": 1.0, "keep_alive_seconds": 30}}) as proxy:
        elapsed, answer = _trickle(proxy.ports[0], lines, pause=0.1, limit=5)
    assert elapsed < 2.5
    assert answer == b""


def test_trickled_headers_on_a_kept_alive_connection_get_the_header_timeout() -> None:
    with run_proxy({**DEMO, "server": {"header_timeout_seconds": 1.0, "keep_alive_seconds": 30}}) as proxy, \
            socket.create_connection(("127.0.0.1", proxy.ports[0])) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200")
        time.sleep(1.5)  # idle longer than the header timeout: keep-alive applies until the next request
        started = time.monotonic()
        closed = False
        for _ in range(40):
            try:
                sock.sendall(b"x-slow: 1\r\n" if _ else b"GET /healthz HTTP/1.1\r\n")
                sock.settimeout(0.1)
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except OSError:
                closed = True
                break
        assert closed and time.monotonic() - started < 2.5


def test_trickled_body_gets_408_at_the_body_timeout_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    recorder = FlowRecorder()
    caplog.set_level(logging.INFO, logger="outerloop.access")
    with run_proxy({**DEMO, "server": {"body_timeout_seconds": 1.0, "access_log": True}},
                   plugins=(recorder,)) as proxy:
        head = b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 500\r\n\r\n"
        elapsed, answer = _trickle(proxy.ports[0], [head] + [b" "] * 40, pause=0.1, limit=5)
        flow = recorder.wait(1)[0]
    assert elapsed < 2.5
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"type": "error"' in answer and b"request.body_timeout" in answer  # Anthropic's shape on /v1/messages
    # The request is one access-log line and one count (observers: what /metrics counts), like any refusal.
    assert (flow.response_status, flow.details, flow.path) == (408, "request.body_timeout", "/v1/messages")
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "outerloop.access"]
    assert [(line["status"], line["details"]) for line in lines] == [(408, "request.body_timeout")]
