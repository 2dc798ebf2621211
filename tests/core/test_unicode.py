"""Bodies no filter should ever see, through a real hypercorn with every built-in filter on: lone surrogate
escapes and invalid UTF-8 are a 400 in the API's shape; random JSON and random bytes never get a 5xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from filters.auth import hash_key
from tests.conftest import proxy_config
from tests.harness import Proxy, run_proxy, serve_app
from tests.upstream import Upstream

KEY = "sk-unicode-0123456789"
HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
ENDPOINTS = {"openai": "/v1/chat/completions", "anthropic": "/v1/messages"}


def _services() -> Starlette:
    """The http_filter's service (leaves every request as it is) and the router's model (always `chat`)."""
    async def unchanged(request: Request) -> Response:
        await request.body()
        return Response(status_code=204)

    async def router(request: Request) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"id": "r", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": '{"route": "chat"}'}}]})

    return Starlette(routes=[Route("/filter", unchanged, methods=["POST"]),
                             Route("/v1/chat/completions", router, methods=["POST"])])


def every_filter(base: str, service: str) -> dict[str, Any]:
    raw = proxy_config(base, filters=[
        {"name": "auth", "config": {"keys": [{"name": "team", "sha256": hash_key(KEY)}]}},
        {"name": "rate_cap", "config": {"caps": [{"requests": 1_000_000, "window": "1m", "key": "global"}]}},
        {"name": "guardrails", "config": {}},
        {"name": "session", "config": {}},
        {"name": "http_filter", "config": {"url": f"{service}/filter", "phases": ["request", "response"]}},
        "router",
    ])
    raw["routing"] = {"backend": "http", "http": {"url": f"{service}/v1", "timeout": 1.0}}
    raw["routing_preferences"] = [{"name": "chat", "description": "small talk", "models": ["test/test-model"]}]
    return raw


@pytest.fixture(scope="module")
def proxy() -> Iterator[Proxy]:
    upstream = Upstream()
    with serve_app(upstream.app()) as up, serve_app(_services()) as svc, \
            run_proxy(every_filter(f"http://127.0.0.1:{up}/v1", f"http://127.0.0.1:{svc}")) as running:
        yield running


def assert_error_shape(api: str, response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    if api == "anthropic":
        assert body["type"] == "error" and isinstance(body["error"]["message"], str), body
        assert isinstance(body["error"]["type"], str)
    else:
        assert isinstance(body["error"]["message"], str) and isinstance(body["error"]["type"], str), body
    code: str = body["error"]["code"]
    assert isinstance(code, str) and "." in code, body
    return body


def _body(api: str, content: str, **extra: str) -> bytes:
    """A valid request written by hand, so escapes reach the proxy exactly as written."""
    fields = "".join(f', "{k}": {v}' for k, v in extra.items())
    return (f'{{"model": "test-model", "max_tokens": 16, "messages": [{{"role": "user", "content": {content}}}]'
            f'{fields}}}').encode()


LONE = [
    ("content", lambda api: _body(api, '"a \\ud800 b"')),
    ("content, upper case", lambda api: _body(api, '"\\uDFFF"')),
    ("high then not low", lambda api: _body(api, '"\\ud83d\\u0041"')),
    ("low before high", lambda api: _body(api, '"\\ude00\\ud83d"')),
    ("part", lambda api: _body(api, '[{"type": "text", "text": "x\\udbff"}]')),
    ("model", lambda api: _body(api, '"hi"').replace(b'"test-model"', b'"test-\\ud800"')),
    ("tool argument", lambda api: _body(api, '"hi"', tools='[{"type": "function", "function": {"name": "f", '
                                        '"parameters": {"description": "\\ud800"}}}]')),
    ("key", lambda api: _body(api, '"hi"', metadata='{"\\ud800": 1}')),
    ("unknown field", lambda api: _body(api, '"hi"', x_extra='["\\udc00"]')),
]


@pytest.mark.parametrize("api", ENDPOINTS)
def test_lone_surrogate_escapes_are_a_400_with_every_filter_on(proxy: Proxy, api: str) -> None:
    with httpx.Client(base_url=proxy.url, headers=HEADERS, timeout=10) as client:
        for where, build in LONE:
            response = client.post(ENDPOINTS[api], content=build(api))
            assert response.status_code == 400, (where, response.text)
            assert assert_error_shape(api, response)["error"]["code"] == "request.invalid_unicode", where
        # A surrogate pair is one character (U+1F600) and an escaped backslash is no escape: both are served.
        for content in ('"\\ud83d\\ude00"', '"\\uD83D\\uDE00 ok"', '"\\\\ud800"'):
            response = client.post(ENDPOINTS[api], content=_body(api, content))
            assert response.status_code == 200, (content, response.text)


@pytest.mark.parametrize("api", ENDPOINTS)
def test_invalid_utf8_is_a_400(proxy: Proxy, api: str) -> None:
    with httpx.Client(base_url=proxy.url, headers=HEADERS, timeout=10) as client:
        for raw in (_body(api, '"caf\xe9"').replace("é".encode(), b"\xe9"),  # Latin-1, not UTF-8
                    _body(api, '"x"').replace(b'"x"', b'"\xed\xa0\x80"'),  # an encoded surrogate
                    b"\xff\xfe" + _body(api, '"x"').decode().encode("utf-16-le")):
            response = client.post(ENDPOINTS[api], content=raw)
            assert response.status_code == 400, response.text
            assert assert_error_shape(api, response)["error"]["code"] == "request.invalid_unicode"
        # Header values are bytes the proxy reads as Latin-1: whatever they hold is no 5xx.
        odd: dict[str, str | bytes] = {**HEADERS, "x-session-id": b"\xed\xa0\x80\xff", "x-request-id": b"\xe9"}
        response = client.post(ENDPOINTS[api], content=_body(api, '"hi"'), headers=odd)
        assert response.status_code == 400, response.text
        assert assert_error_shape(api, response)["error"]["code"] == "session.invalid_id"


# --- random bodies through the whole chain ---------------------------------------------------------------------

WORDS = ["messages", "role", "content", "user", "assistant", "system", "tool", "model", "test-model", "auto",
         "max_tokens", "stream", "tools", "type", "text", "function", "tool_calls", "image_url", "url", "name",
         "arguments", "stop", "temperature", "metadata", "tool_choice", "n", "\ud800", "\U0001f600"]
SCALARS = (st.none() | st.booleans() | st.integers(-5, 2**64) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from(WORDS) | st.text(max_size=6))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=4), inner, max_size=5),
                    max_leaves=25)
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool"]) | JSON},
                                optional={"content": JSON, "tool_calls": JSON, "tool_call_id": JSON})
CHAT = st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=3)},
                             optional={k: JSON for k in ("model", "max_tokens", "stream", "tools", "tool_choice",
                                                         "stop", "temperature", "system", "metadata", "n")})


def _encode(value: Any) -> bytes:
    # Lone surrogates are written as the escapes a client would send.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "backslashreplace")


@settings(max_examples=150)
@given(api=st.sampled_from(list(ENDPOINTS)),
       raw=CHAT.map(_encode) | JSON.map(_encode) | st.binary(max_size=80))
def test_random_bodies_never_get_a_5xx(proxy: Proxy, api: str, raw: bytes) -> None:
    with httpx.Client(base_url=proxy.url, headers=HEADERS, timeout=10) as client:
        response = client.post(ENDPOINTS[api], content=raw)
        response.read()
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert_error_shape(api, response)


ITEM = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "item_reference",
                             "web_search_call", "mystery"]) | JSON,
    "role": st.sampled_from(["user", "assistant", "system", "developer"]) | JSON, "content": JSON,
    "call_id": JSON, "name": JSON, "arguments": JSON, "output": JSON, "id": JSON})
RESPONSES = st.fixed_dictionaries({"input": st.lists(ITEM, min_size=0, max_size=3) | JSON}, optional={
    k: JSON for k in ("model", "instructions", "tools", "tool_choice", "parallel_tool_calls", "max_output_tokens",
                      "temperature", "top_p", "metadata", "text", "reasoning", "store", "stream",
                      "previous_response_id", "include", "truncation")})
OTHER_ENDPOINTS = {"/v1/responses": "openai", "/v1/embeddings": "openai", "/v1/messages/count_tokens": "anthropic"}


@settings(max_examples=150)
@given(path=st.sampled_from(list(OTHER_ENDPOINTS)),
       raw=RESPONSES.map(_encode) | CHAT.map(_encode) | JSON.map(_encode) | st.binary(max_size=80))
def test_random_bodies_on_responses_embeddings_and_count_tokens_never_get_a_5xx(
        proxy: Proxy, path: str, raw: bytes) -> None:
    with httpx.Client(base_url=proxy.url, headers=HEADERS, timeout=10) as client:
        response = client.post(path, content=raw)
        response.read()
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert_error_shape(OTHER_ENDPOINTS[path], response)
