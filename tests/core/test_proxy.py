"""The proxy end to end: official SDKs and httpx through a real hypercorn to a local upstream."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import openai
import pytest

from tests.conftest import proxy_config
from tests.harness import free_port, run_proxy
from tests.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


def test_sync_sdk_non_streaming(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        answer = client.chat.completions.create(model="test/test-model", messages=MESSAGES)  # type: ignore[arg-type]
        client.close()
    assert answer.choices[0].message.content == "Hello from the test upstream."
    assert answer.usage is not None and answer.usage.total_tokens == 12
    seen = server.seen[-1]
    # provider/id resolves to the upstream's own id; the provider's key replaces the client's.
    assert seen.json["model"] == "test-model"
    assert seen.headers["authorization"] == "Bearer sk-upstream-secret"


def test_unmodified_body_is_forwarded_byte_for_byte(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = b'{"model": "test-model",   "messages": [{"role": "user", "content": "caf\\u00e9"}], "x_extra": [1, 2.50]}'
    with run_proxy(proxy_config(base)) as proxy:
        response = httpx.post(proxy.url + "/v1/chat/completions", content=raw,
                              headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert server.seen[-1].body == raw


def test_sync_sdk_streaming(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        stream = client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True,  # type: ignore[arg-type]
                                                stream_options={"include_usage": True})
        chunks = list(stream)
        client.close()
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the test upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


def test_async_sdk_streaming_and_not(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream

    async def main(url: str) -> tuple[str, str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)
        whole = await client.chat.completions.create(model="test-model", messages=MESSAGES)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(model="test-model", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return whole.choices[0].message.content or "", "".join(parts)

    with run_proxy(proxy_config(base)) as proxy:
        whole, streamed = asyncio.run(main(proxy.url))
    assert whole == streamed == "Hello from the test upstream."


def test_streaming_is_not_buffered(upstream: tuple[Upstream, str]) -> None:
    """The upstream sends a chunk, waits 300 ms, sends the next: the client has the first well before."""
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        stream = client.chat.completions.create(model="slow", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
        arrivals = [time.monotonic() for _ in stream]
        client.close()
    sent = server.sent_at[-1]
    assert len(sent) == 5
    # The first chunk reached the client before the upstream even produced the second one.
    assert arrivals[0] < sent[1]
    assert sent[1] - arrivals[0] > 0.2


def test_httpx_http2_prior_knowledge(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        with httpx.Client(http1=False, http2=True) as client:
            response = client.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
            with client.stream("POST", proxy.url + "/v1/chat/completions",
                               json={"messages": MESSAGES, "stream": True}) as streamed:
                body = b"".join(streamed.iter_raw())
                stream_version = streamed.http_version
    assert response.http_version == "HTTP/2"
    assert stream_version == "HTTP/2"
    assert response.json()["choices"][0]["message"]["content"] == "Hello from the test upstream."
    assert body.endswith(b"data: [DONE]\n\n")


def test_models_and_health(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base, model_aliases={"fast": "test/test-model"})
    with run_proxy(raw) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        ids = [m.id for m in client.models.list()]
        client.close()
        health = httpx.get(proxy.url + "/healthz")
    assert "test/test-model" in ids and "fast" in ids
    assert health.json() == {"status": "ok"}


def test_alias_bare_id_and_default_resolve(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base, model_aliases={"fast": "test/test-model"})
    with run_proxy(raw) as proxy:
        for model in ("fast", "test-model", "test/test-model", None, "auto"):
            body: dict[str, object] = {"messages": MESSAGES}
            if model:
                body["model"] = model
            response = httpx.post(proxy.url + "/v1/chat/completions", json=body)
            assert response.status_code == 200, model
            assert response.headers["x-outerloop-model"] == "test/test-model"
            assert server.seen[-1].json["model"] == "test-model"


def _post(url: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(url + "/v1/chat/completions", content=content,
                      headers={"content-type": "application/json", **(headers or {})}, timeout=10)


def _error(response: httpx.Response) -> dict[str, object]:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}, body
    return body["error"]  # type: ignore[no-any-return]


def test_error_statuses(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base, limits={"max_request_body_bytes": 2048})
    with run_proxy(raw) as proxy:
        url = proxy.url
        bad_json = _post(url, "{not json")
        assert bad_json.status_code == 400 and _error(bad_json)["code"] == "request.invalid_json"

        not_utf8 = _post(url, b'{"messages": "\xff\xfe"}')
        assert not_utf8.status_code == 400

        wrong_type = _post(url, json.dumps({"messages": MESSAGES, "temperature": "hot"}))
        assert wrong_type.status_code == 400
        assert _error(wrong_type)["param"] == "temperature"
        assert "temperature" in str(_error(wrong_type)["message"])

        bad_role = _post(url, json.dumps({"messages": [{"role": 7, "content": "x"}]}))
        assert bad_role.status_code == 400 and _error(bad_role)["param"] == "messages[0].role"

        big = _post(url, json.dumps({"messages": [{"role": "user", "content": "x" * 4096}]}))
        assert big.status_code == 413 and _error(big)["code"] == "request.too_large"

        wrong_method = httpx.get(url + "/v1/chat/completions")
        assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
        assert _error(wrong_method)["code"] == "request.method_not_allowed"

        unknown = _post(url, json.dumps({"model": "gpt-9", "messages": MESSAGES}))
        assert unknown.status_code == 404 and _error(unknown)["code"] == "model.not_found"
        assert "sk-upstream-secret" not in unknown.text

        upstream_400 = _post(url, json.dumps({"model": "fail-400", "messages": MESSAGES}))
        assert upstream_400.status_code == 400 and _error(upstream_400)["code"] == "upstream.http_400"
        upstream_500 = _post(url, json.dumps({"model": "fail-500", "messages": MESSAGES}))
        assert upstream_500.status_code == 500
        assert _error(upstream_500)["message"] == "upstream says 500 (upstream code: test_500)"

        timeout = _post(url, json.dumps({"model": "hang", "messages": MESSAGES}))
        assert timeout.status_code == 504 and _error(timeout)["code"] == "upstream.timeout"

        no_route = httpx.get(url + "/v2/nothing")
        assert no_route.status_code == 404 and _error(no_route)["code"] == "request.not_found"


def test_deeply_nested_json_is_a_400(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        nested = _post(proxy.url, "[" * 100_000 + "]" * 100_000)
    assert nested.status_code == 400 and _error(nested)["code"] == "request.invalid_json"


def test_upstream_connect_failure_is_502() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with run_proxy(proxy_config(dead)) as proxy:
        response = _post(proxy.url, json.dumps({"messages": MESSAGES}))
    assert response.status_code == 502
    error = _error(response)
    assert error["code"] == "upstream.unavailable" and error["type"] == "upstream_error"


def test_sdk_sees_its_own_exception_types(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        with pytest.raises(openai.NotFoundError) as not_found:
            client.chat.completions.create(model="gpt-9", messages=MESSAGES)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="test-model", messages=[{"role": "user", "content": 5}])  # type: ignore[list-item]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="fail-429", messages=MESSAGES)  # type: ignore[arg-type]
        client.close()
    assert not_found.value.code == "model.not_found"


def test_client_disconnect_closes_upstream_stream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    server.words = [f" w{i}" for i in range(40)]
    with run_proxy(proxy_config(base)) as proxy:
        with httpx.Client() as client:
            with client.stream("POST", proxy.url + "/v1/chat/completions",
                               json={"model": "slow", "messages": MESSAGES, "stream": True}) as response:
                first = next(response.iter_raw())
                assert first.startswith(b"data: ")
        # The client is gone after one chunk; the upstream stream must be cancelled, not run to the end.
        deadline = time.monotonic() + 5
        while server.streams_cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert server.streams_cancelled == 1
    assert len(server.sent_at[-1]) < 10


def test_keys_and_headers_sent_the_way_each_provider_expects(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base)
    raw["model_providers"] += [
        {"model": "own/passthrough", "base_url": base, "passthrough_auth": True},
        {"model": "org/with-headers", "base_url": base, "access_key": "sk-org",
         "headers": {"OpenAI-Organization": "org-123"}},
    ]
    client_auth = {"authorization": "Bearer sk-client-own"}
    with run_proxy(raw) as proxy:
        for model in ("test-model", "passthrough", "with-headers"):
            response = httpx.post(proxy.url + "/v1/chat/completions", headers=client_auth,
                                  json={"model": model, "messages": MESSAGES})
            assert response.status_code == 200
    configured, passed, organised = (seen.headers for seen in server.seen)
    # the client's own key reaches the upstream only where the provider says so
    assert configured["authorization"] == "Bearer sk-upstream-secret"
    assert passed["authorization"] == "Bearer sk-client-own"
    assert organised["authorization"] == "Bearer sk-org" and organised["openai-organization"] == "org-123"
