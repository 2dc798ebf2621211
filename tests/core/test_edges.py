"""Request edges through a real hypercorn: repeated credential headers, trailing slashes, auth on GET endpoints."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import pytest

from filters.auth import hash_key
from tests.harness import run_proxy

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


def _config(auth: bool = True, **extra: Any) -> dict[str, Any]:
    filters = [{"name": "auth", "config": {"keys": [
        {"name": "alice", "sha256": hash_key(ALICE)},
        {"name": "bob", "sha256": hash_key(BOB), "models": ["demo/demo-echo"]},
    ]}}] if auth else []
    return {
        "listeners": [{"name": "test", "port": 0, "filters": filters}],
        "model_providers": [{"model": "demo/demo-echo", "default": True}, {"model": "demo/other"}],
        "model_aliases": {"fast": "demo/demo-echo", "big": "demo/other"},
        **extra,
    }


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(5)
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(("path", "shape"), [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")])
@pytest.mark.parametrize("header", ["authorization: Bearer {key}", "x-api-key: {key}"])
def test_repeated_credential_header_is_refused(path: str, shape: str, header: str) -> None:
    body = b'{"model": "demo/demo-echo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}'
    lines = [header.format(key=BOB), header.format(key=ALICE)]
    with run_proxy(_config()) as proxy:
        request = (f"POST {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-type: application/json\r\n"
                   f"{lines[0]}\r\n{lines[1]}\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body
        answer = _raw(proxy.ports[0], request)
        # The same repeat on a GET endpoint beside the proxy's.
        models = _raw(proxy.ports[0], (f"GET /v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                                       f"{lines[0]}\r\n{lines[1]}\r\n\r\n").encode())
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"request.duplicate_header" in payload
    assert (b'"type": "error"' in payload) == (shape == "anthropic")
    assert models.startswith(b"HTTP/1.1 400") and b"request.duplicate_header" in models


def test_repeated_content_length_is_refused() -> None:
    with run_proxy(_config(auth=False)) as proxy:
        answer = _raw(proxy.ports[0], b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                                      b"content-length: 2\r\ncontent-length: 5\r\n\r\n{}")
    # Differing lengths: the HTTP/1.1 parser refuses them before the app (identical repeats it merges).
    assert answer.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("path", ["/v1/chat/completions/", "/v1/models/", "/healthz/"])
def test_trailing_slash_is_not_found_and_never_redirected(path: str) -> None:
    with run_proxy(_config(auth=False)) as proxy:
        response = httpx.post(proxy.url + path, json={"messages": MESSAGES}, headers={"host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.json()["error"]["code"] == "request.not_found"


def test_models_needs_a_key_and_lists_what_the_principal_may_use() -> None:
    with run_proxy(_config()) as proxy:
        anonymous = httpx.get(proxy.url + "/v1/models")
        wrong = httpx.get(proxy.url + "/v1/models", headers={"authorization": "Bearer sk-nope"})
        bob = httpx.get(proxy.url + "/v1/models", headers={"authorization": f"Bearer {BOB}"})
        alice = httpx.get(proxy.url + "/v1/models", headers={"x-api-key": ALICE})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "auth.missing_credentials"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "auth.invalid_key")
    assert [m["id"] for m in bob.json()["data"]] == ["demo/demo-echo", "fast"]
    assert [m["id"] for m in alice.json()["data"]] == ["demo/demo-echo", "demo/other", "fast", "big"]


def test_metrics_are_guarded_by_the_listener_auth_and_healthz_stays_open() -> None:
    with run_proxy(_config(metrics={"enabled": True})) as proxy:
        anonymous = httpx.get(proxy.url + "/metrics")
        allowed = httpx.get(proxy.url + "/metrics", headers={"authorization": f"Bearer {ALICE}"})
        health = httpx.get(proxy.url + "/healthz")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "auth.missing_credentials"
    assert allowed.status_code == 200 and "# HELP" in allowed.text
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


def test_without_auth_models_and_metrics_stay_open() -> None:
    with run_proxy(_config(auth=False, metrics={"enabled": True})) as proxy:
        models = httpx.get(proxy.url + "/v1/models")
        metrics = httpx.get(proxy.url + "/metrics")
    assert len(models.json()["data"]) == 4
    assert metrics.status_code == 200
