"""`POST /v1/messages/count_tokens` through a real hypercorn: passed to Anthropic upstreams, a count not usage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from filters.auth import hash_key
from tests.conftest import proxy_config
from tests.harness import FlowRecorder, eventually, run_proxy
from tests.upstream import COUNTED_TOKENS, Upstream

MESSAGES: Any = [{"role": "user", "content": "hi"}]
KEY = "sk-alice-0123456789"
PATH = "/v1/messages/count_tokens"


def _config(base: str, filters: list[Any] | None = None) -> dict[str, Any]:
    config = proxy_config(base, filters=filters)
    config["model_providers"].append({"model": "anthropic/claude-test", "base_url": base,
                                      "access_key": "sk-ant-upstream"})
    return config


def test_anthropic_sdk_counts_tokens_on_an_anthropic_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    recorder = FlowRecorder()
    with run_proxy(_config(base), plugins=(recorder,)) as proxy:
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk", max_retries=0) as client:
            counted = client.messages.count_tokens(model="anthropic/claude-test", messages=MESSAGES,
                                                   system="be brief")
    assert counted.input_tokens == COUNTED_TOKENS
    seen = server.seen[0]
    assert seen.path == PATH
    assert seen.json == {"model": "claude-test", "messages": MESSAGES, "system": "be brief"}
    assert seen.headers["x-api-key"] == "sk-ant-upstream" and "anthropic-version" in seen.headers
    flow = recorder.wait(1)[0]
    assert flow.endpoint == "count_tokens" and flow.api == "anthropic" and flow.stream is False
    assert flow.response_status == 200 and flow.usage is None  # a count the client asked for, not tokens spent


def test_the_clients_bytes_go_upstream_when_they_name_the_upstream_id(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = b'{"model": "claude-test",  "messages": [{"role": "user", "content": "hi"}], "stream": true}'
    with run_proxy(_config(base)) as proxy:
        answer = httpx.post(proxy.url + PATH, content=raw, headers={"anthropic-beta": "some-beta"})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"input_tokens": COUNTED_TOKENS}
    assert server.seen[0].body == raw and server.seen[0].headers["anthropic-beta"] == "some-beta"


def test_an_openai_model_cannot_count_tokens(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk", max_retries=0) as client:
            with pytest.raises(anthropic.BadRequestError) as cannot:
                client.messages.count_tokens(model="test/test-model", messages=MESSAGES)
            with pytest.raises(anthropic.NotFoundError) as missing:
                client.messages.count_tokens(model="nope", messages=MESSAGES)
            default = httpx.post(proxy.url + PATH, json={"messages": MESSAGES})  # the default is an OpenAI model
    body = cannot.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    error = body["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "model.unsupported_endpoint")
    assert "test/test-model" in error["message"] and "cannot count tokens" in error["message"]
    missing_body = missing.value.body
    assert isinstance(missing_body, dict) and missing_body["error"]["code"] == "model.not_found"
    assert "anthropic/claude-test" in missing_body["error"]["message"]
    assert default.status_code == 400 and default.json()["error"]["code"] == "model.unsupported_endpoint"
    assert server.seen == []


@pytest.mark.parametrize(("body", "code"), [
    ([], "request.invalid_json"),
    ({"model": "anthropic/claude-test"}, "request.missing_field"),
    ({"model": 1, "messages": MESSAGES}, "request.invalid_type"),
    ({"messages": []}, "request.invalid_type"),
    ({"messages": "hi"}, "request.invalid_type"),
    ({"messages": ["hi"]}, "request.invalid_type"),
    ({"messages": [{"role": 1, "content": "hi"}]}, "request.invalid_type"),
    ({"messages": [{"role": "user", "content": 1}]}, "request.invalid_type"),
    ({"messages": MESSAGES, "system": 1}, "request.invalid_type"),
    ({"messages": MESSAGES, "tools": {}}, "request.invalid_type"),
    ({"messages": MESSAGES, "tool_choice": 1}, "request.invalid_type"),
    ({"messages": MESSAGES, "metadata": "x"}, "request.invalid_type"),
    ({"messages": MESSAGES, "max_tokens": "5"}, "request.invalid_type"),
])
def test_wrong_types_are_400s_in_anthropics_shape(upstream: tuple[Upstream, str], body: Any, code: str) -> None:
    server, base = upstream
    if isinstance(body, dict):
        body = {"model": "anthropic/claude-test", **body}
    with run_proxy(_config(base)) as proxy:
        answer = httpx.post(proxy.url + PATH, content=json.dumps(body))
    assert answer.status_code == 400, answer.text
    assert answer.json()["type"] == "error"
    assert (answer.json()["error"]["type"], answer.json()["error"]["code"]) == ("invalid_request_error", code)
    assert server.seen == []


def test_no_max_tokens_is_needed(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    with run_proxy(_config(base)) as proxy:
        counted = httpx.post(proxy.url + PATH, json={"model": "anthropic/claude-test", "messages": MESSAGES})
        message = httpx.post(proxy.url + "/v1/messages", json={"model": "anthropic/claude-test",
                                                               "messages": MESSAGES})
    assert counted.status_code == 200 and counted.json() == {"input_tokens": COUNTED_TOKENS}
    assert message.status_code == 400 and message.json()["error"]["code"] == "request.missing_field"


def test_auth_guards_count_tokens(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    auth = {"name": "auth", "config": {"keys": [{"name": "alice", "sha256": hash_key(KEY)}]}}
    with run_proxy(_config(base, filters=[auth])) as proxy:
        bare = httpx.post(proxy.url + PATH, json={"model": "anthropic/claude-test", "messages": MESSAGES})
        with anthropic.Anthropic(base_url=proxy.url, api_key=KEY, max_retries=0) as client:
            counted = client.messages.count_tokens(model="anthropic/claude-test", messages=MESSAGES)
    assert bare.status_code == 401
    assert bare.json()["type"] == "error" and bare.json()["error"]["code"] == "auth.missing_credentials"
    assert counted.input_tokens == COUNTED_TOKENS and len(server.seen) == 1


def test_counting_is_a_request_to_rate_caps_but_spends_no_tokens(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    cap = {"name": "rate_cap", "config": {"caps": [
        {"name": "tokens", "tokens": 10_000, "window": 360_000, "key": "global"},
        {"name": "requests", "requests": 1, "window": 360_000, "key": "global"},
    ]}}
    long: Any = [{"role": "user", "content": "a" * 4000}]
    with run_proxy(_config(base, filters=[cap])) as proxy:
        backend = proxy.runtime.chains[0].chain.filters[0].backend
        first = httpx.post(proxy.url + PATH, json={"model": "anthropic/claude-test", "messages": long})
        second = httpx.post(proxy.url + PATH, json={"model": "anthropic/claude-test", "messages": MESSAGES})
        assert eventually(lambda: "test:tokens:*" in backend.levels)
        tokens_left = backend.levels["test:tokens:*"][0]
    assert first.status_code == 200, first.text
    assert second.status_code == 429 and second.json()["error"]["code"] == "rate_cap.exceeded"
    assert tokens_left == pytest.approx(10_000, abs=1)


def test_router_and_guardrails_leave_counting_alone(upstream: tuple[Upstream, str], tmp_path: Path) -> None:
    server, base = upstream
    raw = _config(base, filters=[{"name": "guardrails", "config": {"output": {"pii": "redact"}}}, "router"])
    raw["routing"] = {"backend": "onnx", "model_path": str(tmp_path / "absent")}
    raw["routing_preferences"] = [{"name": "chat", "description": "small talk", "models": ["test/slow"]}]
    with run_proxy(raw) as proxy:
        with anthropic.Anthropic(base_url=proxy.url, api_key="sk", max_retries=0) as client:
            response = client.messages.with_raw_response.count_tokens(model="anthropic/claude-test",
                                                                      messages=MESSAGES)
    assert response.parse().input_tokens == COUNTED_TOKENS
    assert "x-outerloop-route" not in response.headers
    assert server.seen[0].path == PATH and server.seen[0].json["model"] == "claude-test"
