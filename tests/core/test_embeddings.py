"""`POST /v1/embeddings` through a real hypercorn: passed through by model name, metered, capped and guarded."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from filters.auth import hash_key
from filters.rate_cap.usage import estimate_input_tokens
from tests.conftest import proxy_config
from tests.harness import FlowRecorder, eventually, free_port, run_proxy
from tests.upstream import EMBEDDING, Upstream

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-alice-0123456789"


def test_openai_sdk_embeddings_pass_through_with_the_model_id_substituted(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    recorder = FlowRecorder()
    with run_proxy(proxy_config(base), plugins=(recorder,)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            one = client.embeddings.create(model="test/test-model", input="hello")  # the SDK asks for base64
            many = client.embeddings.create(model="test/test-model", input=["a", "b"], encoding_format="float")
            tokens = client.embeddings.create(model="test/test-model", input=[[1, 2], [3]], dimensions=3,
                                              user="u-1", encoding_format="base64")
    assert [d.embedding for d in one.data] == [EMBEDDING]
    assert [d.embedding for d in many.data] == [EMBEDDING, EMBEDDING] and many.usage.prompt_tokens == 5
    assert len(tokens.data) == 2 and tokens.model == "test-model"  # the upstream's answer, as it was
    assert [s.path for s in server.seen] == ["/v1/embeddings"] * 3
    assert server.seen[0].json == {"model": "test-model", "input": "hello", "encoding_format": "base64"}
    assert server.seen[1].json == {"model": "test-model", "input": ["a", "b"], "encoding_format": "float"}
    assert server.seen[2].json == {"model": "test-model", "input": [[1, 2], [3]], "dimensions": 3, "user": "u-1",
                                   "encoding_format": "base64"}
    assert server.seen[0].headers["authorization"] == "Bearer sk-upstream-secret"
    for flow in recorder.wait(3):
        assert flow.endpoint == "embeddings" and flow.stream is False
        assert flow.usage == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}


def test_the_clients_bytes_go_upstream_when_they_name_the_upstream_id(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = b'{"input":  ["x", "y"], "model": "test-model", "extra": {"kept": true}}'
    with run_proxy(proxy_config(base)) as proxy:
        for path in ("/v1/embeddings", "/embeddings"):
            answer = httpx.post(proxy.url + path, content=raw, headers={"content-type": "application/json"})
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-outerloop-model"] == "test/test-model"
            assert [d["embedding"] for d in answer.json()["data"]] == [EMBEDDING, EMBEDDING]
        # `stream` is no embeddings field: it goes to the upstream to judge, and the answer is read whole.
        streamed = httpx.post(proxy.url + "/v1/embeddings", json={"model": "test-model", "input": "x",
                                                                  "stream": True})
    assert [s.body for s in server.seen[:2]] == [raw, raw]
    assert streamed.status_code == 200 and streamed.json()["usage"]["total_tokens"] == 5


def test_a_token_cap_counts_the_embeddings_input(upstream: tuple[Upstream, str]) -> None:
    _, base = upstream
    cap = {"name": "rate_cap", "config": {"caps": [{"name": "tokens", "tokens": 10_000, "window": 360_000,
                                                    "key": "global"}]}}
    text = "a" * 4000
    estimate = estimate_input_tokens({"input": text})
    assert estimate == 1000 + 3
    assert estimate_input_tokens({"input": [[1, 2, 3], [4]]}) == 4 + 3
    assert estimate_input_tokens({"input": [1, 2, 3]}) == 3 + 3
    with run_proxy(proxy_config(base, filters=[cap])) as proxy:
        backend = proxy.runtime.chains[0].chain.filters[0].backend
        first = httpx.post(proxy.url + "/v1/embeddings", json={"model": "test-model", "input": text})
        assert first.status_code == 200
        assert int(first.headers["x-ratelimit-remaining"]) == 10_000 - estimate
        # Settled with the upstream's usage (5 tokens): the estimate is corrected.
        assert eventually(lambda: backend.levels["test:tokens:*"][0] == pytest.approx(10_000 - 5, abs=1))


def test_auth_guards_embeddings(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    auth = {"name": "auth", "config": {"keys": [{"name": "alice", "sha256": hash_key(KEY)}]}}
    with run_proxy(proxy_config(base, filters=[auth])) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-wrong-0123456789", max_retries=0) as client:
            with pytest.raises(openai.AuthenticationError) as refused:
                client.embeddings.create(model="test/test-model", input="hi")
        bare = httpx.post(proxy.url + "/v1/embeddings", json={"model": "test/test-model", "input": "hi"})
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key=KEY, max_retries=0) as client:
            served = client.embeddings.create(model="test/test-model", input="hi", encoding_format="float")
    assert refused.value.status_code == 401 and str(refused.value.code).startswith("auth.")
    assert bare.status_code == 401 and bare.json()["error"]["code"] == "auth.missing_credentials"
    assert served.data[0].embedding == EMBEDDING and len(server.seen) == 1


def test_unknown_and_anthropic_models_are_clean_openai_errors(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    config = proxy_config(base)
    config["model_providers"].append({"model": "anthropic/claude-test", "base_url": base})
    with run_proxy(config) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk", max_retries=0) as client:
            with pytest.raises(openai.NotFoundError) as missing:
                client.embeddings.create(model="nope", input="hi")
            with pytest.raises(openai.BadRequestError) as cannot:
                client.embeddings.create(model="anthropic/claude-test", input="hi")
    assert missing.value.code == "model.not_found" and "test/test-model" in str(missing.value.body)
    error = cannot.value.body
    assert isinstance(error, dict)
    assert cannot.value.code == "model.unsupported_endpoint" and error["param"] == "model"
    assert error["type"] == "invalid_request_error"
    assert "anthropic/claude-test" in error["message"] and "cannot make embeddings" in error["message"]
    assert server.seen == []


@pytest.mark.parametrize(("body", "param", "code"), [
    ([1], None, "request.invalid_json"),
    ({"model": "test-model"}, "input", "request.missing_field"),
    ({"model": 3, "input": "x"}, "model", "request.invalid_type"),
    ({"input": 3}, "input", "request.invalid_type"),
    ({"input": {"text": "x"}}, "input", "request.invalid_type"),
    ({"input": ""}, "input", "request.invalid_value"),
    ({"input": []}, "input", "request.invalid_value"),
    ({"input": [None]}, "input[0]", "request.invalid_type"),
    ({"input": ["a", 2]}, "input[1]", "request.invalid_type"),
    ({"input": [1, "a"]}, "input[1]", "request.invalid_type"),
    ({"input": [1, True]}, "input[1]", "request.invalid_type"),
    ({"input": [1.5]}, "input[0]", "request.invalid_type"),
    ({"input": [[1], 2]}, "input[1]", "request.invalid_type"),
    ({"input": [[1], []]}, "input[1]", "request.invalid_value"),
    ({"input": [[1], [2, "x"]]}, "input[1][1]", "request.invalid_type"),
    ({"input": "x", "encoding_format": 1}, "encoding_format", "request.invalid_type"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format", "request.invalid_value"),
    ({"input": "x", "dimensions": "8"}, "dimensions", "request.invalid_type"),
    ({"input": "x", "dimensions": True}, "dimensions", "request.invalid_type"),
    ({"input": "x", "dimensions": 1.5}, "dimensions", "request.invalid_type"),
    ({"input": "x", "dimensions": 0}, "dimensions", "request.invalid_value"),
    ({"input": "x", "user": ["u"]}, "user", "request.invalid_type"),
])
def test_wrong_types_are_400s_naming_the_field(upstream: tuple[Upstream, str], body: Any, param: str | None,
                                               code: str) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        answer = httpx.post(proxy.url + "/v1/embeddings", content=json.dumps(body))
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert server.seen == []


def test_the_router_leaves_embeddings_to_the_model_they_name(upstream: tuple[Upstream, str],
                                                            tmp_path: Path) -> None:
    server, base = upstream
    raw = proxy_config(base, filters=["router"])
    raw["routing"] = {"backend": "onnx", "model_path": str(tmp_path / "absent")}
    raw["routing_preferences"] = [{"name": "chat", "description": "small talk", "models": ["test/slow"]}]
    with run_proxy(raw) as proxy:
        chat = httpx.post(proxy.url + "/v1/chat/completions",
                          json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]})
        named = httpx.post(proxy.url + "/v1/embeddings", json={"model": "test/test-model", "input": "hi"})
        auto = httpx.post(proxy.url + "/v1/embeddings", json={"model": "auto", "input": "hi"})
    assert chat.headers["x-outerloop-route"] == "other"  # the router ran (and fell back) for the conversation
    for answer in (named, auto):
        assert answer.status_code == 200, answer.text
        assert "x-outerloop-route" not in answer.headers and "x-outerloop-route-fallback" not in answer.headers
    assert [s.json["model"] for s in server.seen[1:]] == ["test-model", "test-model"]  # auto: the default


def test_guardrails_pass_embeddings(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    guard = {"name": "guardrails", "config": {"output": {"pii": "redact"}}}
    with run_proxy(proxy_config(base, filters=[guard])) as proxy:
        answer = httpx.post(proxy.url + "/v1/embeddings",
                            json={"model": "test-model", "input": ["mail bob@example.com", "hi"]})
    assert answer.status_code == 200, answer.text
    assert [d["embedding"] for d in answer.json()["data"]] == [EMBEDDING, EMBEDDING]
    assert server.seen[0].json["input"] == ["mail bob@example.com", "hi"]  # embeddings' input is not checked


def test_the_demo_provider_of_make_run_serves_embeddings() -> None:
    config = yaml.safe_load((ROOT / "configs/default.yaml").read_text())
    config["listeners"][0]["port"] = free_port()
    recorder = FlowRecorder()
    with run_proxy(config, plugins=(recorder,)) as proxy:
        with openai.OpenAI(base_url=proxy.url + "/v1", api_key="unused", max_retries=0) as client:
            floats = client.embeddings.create(model="demo-echo", input=["same text", "other text", "same text"],
                                              encoding_format="float")
            decoded = client.embeddings.create(model="fast", input="same text")  # base64, decoded by the SDK
            short = client.embeddings.create(model="demo-echo", input=[[1, 2, 3]], dimensions=8,
                                             encoding_format="float")
    first, other, again = (d.embedding for d in floats.data)
    assert len(first) == 64 and first == again and first != other
    assert math.isclose(sum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert decoded.data[0].embedding == first and decoded.model == "demo/demo-echo"
    assert len(short.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 6  # two words each
    assert short.usage.total_tokens == 3
    assert [f.usage for f in recorder.wait(3)] == [
        {"prompt_tokens": 6, "completion_tokens": 0, "total_tokens": 6},
        {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2},
        {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3},
    ]


def test_embeddings_neither_follow_nor_set_a_sessions_pin(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    session = {"name": "session", "config": {"pinning": True}}
    header = {"x-session-id": "agent-1"}
    turn: Any = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]  # a continuation
    with run_proxy(proxy_config(base, filters=[session])) as proxy:
        first = httpx.post(proxy.url + "/v1/chat/completions", headers=header,
                           json={"model": "test/test-model", "messages": turn})
        embedded = httpx.post(proxy.url + "/v1/embeddings", headers=header, json={"model": "test/slow", "input": "x"})
        again = httpx.post(proxy.url + "/v1/chat/completions", headers=header, json={"messages": turn})
    assert first.status_code == embedded.status_code == again.status_code == 200
    assert "x-session-id" not in embedded.headers
    assert [s.json["model"] for s in server.seen] == ["test-model", "slow", "test-model"]
    assert again.headers["x-outerloop-model"] == "test/test-model"
