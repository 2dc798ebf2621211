"""Both API shapes through the proxy: the anthropic SDK on either upstream shape, openai SDK on Anthropic."""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream


def _config(base: str) -> dict[str, Any]:
    raw = proxy_config(base)
    raw["model_providers"].append({"model": "anthropic/claude-test", "base_url": base, "access_key": "sk-ant-up"})
    raw["model_providers"].append({"model": "anthropic/fail-429", "base_url": base})
    return raw


def test_anthropic_sdk_on_anthropic_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
        message = client.messages.create(model="claude-test", max_tokens=50,
                                         messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="claude-test", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            streamed = "".join(stream.text_stream)
        client.close()
    assert message.content[0].text == "Hello from the test upstream."  # type: ignore[union-attr]
    assert streamed == "Hello from the test upstream."
    seen = server.seen[-1]
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == "sk-ant-up"
    assert seen.headers["anthropic-version"]


def test_anthropic_sdk_on_openai_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
        message = client.messages.create(model="test-model", max_tokens=50, system="be brief",
                                         messages=[{"role": "user", "content": "hi"}])
        with client.messages.stream(model="test-model", max_tokens=50,
                                    messages=[{"role": "user", "content": "hi"}]) as stream:
            streamed = "".join(stream.text_stream)
            final = stream.get_final_message()
        with pytest.raises(anthropic.NotFoundError):
            client.messages.create(model="nope", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert message.content[0].text == "Hello from the test upstream."  # type: ignore[union-attr]
    assert message.usage.output_tokens == 5
    assert streamed == "Hello from the test upstream."
    assert final.stop_reason == "end_turn"
    assert server.seen[0].path == "/v1/chat/completions"
    assert server.seen[0].json["messages"][0] == {"role": "system", "content": "be brief"}


def test_openai_sdk_on_anthropic_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        whole = client.chat.completions.create(model="anthropic/claude-test",
                                               messages=[{"role": "user", "content": "hi"}])
        chunks = list(client.chat.completions.create(
            model="anthropic/claude-test", messages=[{"role": "user", "content": "hi"}], stream=True,
            stream_options={"include_usage": True}))
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="anthropic/fail-429", messages=[{"role": "user", "content": "x"}])
        client.close()
    assert whole.choices[0].message.content == "Hello from the test upstream."
    assert whole.choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from the test upstream."
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5
    assert server.seen[0].json["max_tokens"] > 0
    assert server.seen[0].headers["x-api-key"] == "sk-ant-up"


def test_anthropic_errors_in_anthropic_shape(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_config(base)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
        with pytest.raises(anthropic.BadRequestError) as caught:
            client.messages.create(model="test-model", max_tokens=5,
                                   messages=[{"role": "robot", "content": "x"}])  # type: ignore[misc,list-item]
        client.close()
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
