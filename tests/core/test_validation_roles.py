"""Message roles: a same-shape upstream judges them, a crossing translates them in place or refuses them by name."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import openai
import pytest

from core.errors import RequestError
from core.providers.anthropic import (
    MID_CONVERSATION_SYSTEM_BETA,
    TranslationError,
    anthropic_to_openai_request,
    openai_to_anthropic_request,
)
from core.validation import validate_chat
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream

BETA = {"anthropic-beta": MID_CONVERSATION_SYSTEM_BETA}


def _config(base: str) -> dict[str, Any]:
    raw = proxy_config(base)
    raw["model_providers"].append({"model": "anthropic/claude-test", "base_url": base, "access_key": "sk-ant-up"})
    return raw


# Validation


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_validation_takes_any_role_but_keeps_its_type_checks(api: str) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "critic", "content": "x"}, {"role": "system", "content": []}]}
    assert validate_chat(body, api) is body
    for messages, param in [([], "messages"), (["x"], "messages[0]"), ([{"role": 3}], "messages[0].role"),
                            ([{"role": "user", "content": 5}], "messages[0].content")]:
        with pytest.raises(RequestError) as caught:
            validate_chat({"max_tokens": 5, "messages": messages}, api)
        assert caught.value.param == param and caught.value.code == "request.invalid_type"


# Translations


def test_mid_conversation_system_to_openai_stays_in_place() -> None:
    body = {"system": "Lead.", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "system", "content": [{"type": "text", "text": "Now"}, {"type": "text", "text": "be terse."}]},
        {"role": "assistant", "content": "ok"},
    ]}
    dropped: list[str] = []
    assert anthropic_to_openai_request(body, "m", dropped)["messages"] == [
        {"role": "system", "content": "Lead."}, {"role": "user", "content": "hi"},
        {"role": "system", "content": "Now\nbe terse."}, {"role": "assistant", "content": "ok"},
    ]
    assert dropped == []


def test_leading_system_messages_go_top_level_later_ones_stay_in_place() -> None:
    body = {"messages": [
        {"role": "system", "content": "Lead."}, {"role": "developer", "content": "Also."},
        {"role": "user", "content": "hi"}, {"role": "developer", "content": "Now be terse."},
        {"role": "system", "content": "And polite."}, {"role": "user", "content": "again"},
    ]}
    out = openai_to_anthropic_request(body, "m")
    assert out["system"] == [{"type": "text", "text": "Lead."}, {"type": "text", "text": "Also."}]
    assert out["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "system",
         "content": [{"type": "text", "text": "Now be terse."}, {"type": "text", "text": "And polite."}]},
        {"role": "user", "content": "again"},
    ]


@pytest.mark.parametrize("translate", [openai_to_anthropic_request, anthropic_to_openai_request])
def test_an_unknown_role_across_shapes_is_an_invalid_value(translate: Any) -> None:
    with pytest.raises(TranslationError) as caught:
        translate({"messages": [{"role": "user", "content": "hi"}, {"role": "critic", "content": "x"}]}, "m")
    assert caught.value.field == "messages[1].role" and caught.value.code == "request.invalid_value"


def test_message_fields_without_a_place_are_named() -> None:
    dropped: list[str] = []
    openai_to_anthropic_request({"messages": [
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "ok", "refusal": None, "annotations": []},
        {"role": "system", "content": "terse", "name": "ops"},
    ]}, "m", dropped)
    assert dropped == ["messages[0].name", "messages[2].name"]


# Through the proxy: same shape


def test_unknown_roles_reach_an_openai_upstream_as_sent(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = json.dumps({"model": "test-model", "messages": [
        {"role": "critic", "content": "x"}, {"role": "user", "content": "hi"}]}).encode()
    with run_proxy(_config(base)) as proxy:
        answer = httpx.post(proxy.url + "/v1/chat/completions", content=raw,
                            headers={"content-type": "application/json"})
    assert answer.status_code == 200
    assert server.seen[0].body == raw


def test_unknown_and_system_roles_reach_an_anthropic_upstream_as_sent(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = json.dumps({"model": "claude-test", "max_tokens": 20, "messages": [
        {"role": "user", "content": "hi"}, {"role": "system", "content": [{"type": "text", "text": "Be terse."}]},
        {"role": "critic", "content": "x"}]}).encode()
    with run_proxy(_config(base)) as proxy:
        answer = httpx.post(proxy.url + "/v1/messages", content=raw,
                            headers={"content-type": "application/json", **BETA})
    assert answer.status_code == 200
    assert server.seen[0].body == raw
    assert server.seen[0].headers["anthropic-beta"] == MID_CONVERSATION_SYSTEM_BETA
    assert "x-outerloop-dropped" not in answer.headers


# Through the proxy: across shapes


def test_anthropic_sdk_mid_conversation_system_on_openai_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    messages: Any = [{"role": "user", "content": "hi"}, {"role": "system", "content": "Be terse."},
                     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "again"}]
    with run_proxy(_config(base)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
        whole = client.messages.with_raw_response.create(model="test-model", max_tokens=20, system="Lead.",
                                                         messages=messages, extra_body={"top_k": 3},
                                                         extra_headers=BETA)
        with client.messages.stream(model="test-model", max_tokens=20, messages=messages,
                                    extra_headers=BETA) as stream:
            streamed = "".join(stream.text_stream)
        client.close()
    assert whole.parse().content[0].text == streamed == "Hello from the test upstream."  # type: ignore[union-attr]
    assert [(m["role"], m["content"]) for m in server.seen[0].json["messages"]] == [
        ("system", "Lead."), ("user", "hi"), ("system", "Be terse."), ("assistant", "ok"), ("user", "again")]
    assert [m["role"] for m in server.seen[1].json["messages"]] == ["user", "system", "assistant", "user"]
    assert whole.headers["x-outerloop-dropped"] == "top_k"


def test_openai_sdk_mid_conversation_system_on_anthropic_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    messages: Any = [{"role": "system", "content": "Lead."}, {"role": "user", "content": "hi"},
                     {"role": "assistant", "content": "ok"}, {"role": "developer", "content": "Be terse.",
                                                              "name": "ops"},
                     {"role": "user", "content": "again"}]
    with run_proxy(_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        whole = client.chat.completions.with_raw_response.create(
            model="anthropic/claude-test", messages=messages, seed=7,
            extra_headers={"anthropic-beta": "files-api-2025-04-14"})
        plain = client.chat.completions.create(model="anthropic/claude-test", messages=messages[:3])
        client.close()
    assert whole.parse().choices[0].message.content == plain.choices[0].message.content
    sent = server.seen[0]
    assert sent.json["system"] == "Lead."
    assert sent.json["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                                     {"role": "system", "content": "Be terse."}, {"role": "user", "content": "again"}]
    assert sent.headers["anthropic-beta"] == f"files-api-2025-04-14,{MID_CONVERSATION_SYSTEM_BETA}"
    assert whole.headers["x-outerloop-dropped"] == "seed, messages[3].name"
    # Only a system entry inside `messages` needs the beta.
    assert "anthropic-beta" not in server.seen[1].headers


def test_unknown_role_across_shapes_is_a_400_naming_it(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            critic: Any = [{"role": "user", "content": "hi"}, {"role": "critic", "content": "x"}]
            client.chat.completions.create(model="anthropic/claude-test", messages=critic)
        client.close()
        answer = httpx.post(proxy.url + "/v1/messages", json={"model": "test-model", "max_tokens": 5, "messages": [
            {"role": "critic", "content": "x"}]})
    assert refused.value.code == "request.invalid_value" and refused.value.param == "messages[1].role"
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "request.invalid_value"
    assert "messages[0].role" in error["message"]
    assert server.seen == []
