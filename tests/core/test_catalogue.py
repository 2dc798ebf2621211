"""The provider catalogue: default URLs and auth headers, Azure, config errors, `provider/*`, dropped fields."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
import yaml

from core.catalogue import AZURE_API_VERSION, PROVIDERS
from core.config import Config, Listener, ModelProvider
from core.config_loader import load_config
from core.errors import ConfigError
from core.flow import Flow
from core.plugins import build_registry
from core.providers.anthropic import dropped_fields
from core.providers.anthropic_upstream import OpenAIClientAnthropicUpstream
from core.providers.openai import openai_passthrough
from core.upstream import Upstreams
from tests.conftest import proxy_config
from tests.harness import run_proxy
from tests.upstream import Upstream

DEFAULTS = {
    "openai": "https://api.openai.com/v1",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/openai",
    "xai": "https://api.x.ai/v1",
    "groq": "https://api.groq.com/openai/v1",
    "mistral": "https://api.mistral.ai/v1",
    "deepseek": "https://api.deepseek.com/v1",
    "together": "https://api.together.xyz/v1",
    "openrouter": "https://openrouter.ai/api/v1",
    "fireworks": "https://api.fireworks.ai/inference/v1",
    "cerebras": "https://api.cerebras.ai/v1",
    "ollama": "http://127.0.0.1:11434/v1",
    "lmstudio": "http://127.0.0.1:1234/v1",
}


def _flow(body: dict[str, Any], api: str = "openai", headers: dict[str, str] | None = None) -> Flow:
    return Flow(request_id="r1", listener="t", api=api, method="POST", path="/v1/chat/completions",
                headers=dict(headers or {}), body=json.dumps(body).encode(), json_body=body)


def _request(entry: dict[str, Any], body: dict[str, Any] | None = None,
             headers: dict[str, str] | None = None) -> httpx.Request:
    """The request the OpenAI-shaped adapter builds for one config entry, in-process."""
    provider = ModelProvider.model_validate(entry)
    upstreams = Upstreams(Config(listeners=[Listener(name="t", port=1)], model_providers=[provider]))
    try:
        target = upstreams.resolve(provider.model)
        assert target is not None
        adapter = openai_passthrough() if provider.api == "openai" else OpenAIClientAnthropicUpstream()
        body = body or {"model": provider.model, "messages": [{"role": "user", "content": "hi"}]}
        return adapter.request(_flow(body, headers=headers), target)
    finally:
        asyncio.run(upstreams.aclose())


def _problems(tmp_path: Path, providers: list[dict[str, Any]]) -> list[str]:
    path = tmp_path / "x.yaml"
    path.write_text(yaml.safe_dump({"listeners": [{"name": "a", "port": 1}], "model_providers": providers}))
    with pytest.raises(ConfigError) as caught:
        load_config(path, build_registry())
    return [p.replace(str(path), "x.yaml") for p in caught.value.problems]


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_openai_shaped_providers_default_url_and_bearer_key(name: str) -> None:
    assert PROVIDERS[name].api == "openai"
    request = _request({"model": f"{name}/some-model", "access_key": "sk-up"})
    assert str(request.url) == DEFAULTS[name] + "/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-up"
    assert json.loads(request.content)["model"] == "some-model"


def test_anthropic_default_url_and_x_api_key() -> None:
    request = _request({"model": "anthropic/claude-x", "access_key": "sk-ant"})
    assert str(request.url) == "https://api.anthropic.com/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant" and "authorization" not in request.headers


def test_every_catalogue_entry_is_tested() -> None:
    assert set(PROVIDERS) == {*DEFAULTS, "anthropic", "azure_openai", "vllm", "demo"}


def test_azure_url_api_version_and_api_key_header() -> None:
    entry = {"model": "azure_openai/gpt-4o", "resource": "my-res", "deployment": "gpt4o-prod", "access_key": "az-k"}
    request = _request(entry)
    assert str(request.url) == ("https://my-res.openai.azure.com/openai/deployments/gpt4o-prod/chat/completions"
                                f"?api-version={AZURE_API_VERSION}")
    assert request.headers["api-key"] == "az-k" and "authorization" not in request.headers
    request = _request({**entry, "api_version": "2025-01-01-preview"})
    assert request.url.params["api-version"] == "2025-01-01-preview"
    # The client's own key, however it came, goes out as api-key.
    request = _request({**entry, "access_key": None, "passthrough_auth": True},
                       headers={"authorization": "Bearer client-k"})
    assert request.headers["api-key"] == "client-k" and "authorization" not in request.headers


def test_azure_through_the_proxy_sends_api_key(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base)
    raw["model_providers"].append({"model": "azure_openai/gpt-4o", "base_url": base, "access_key": "az-key"})
    with run_proxy(raw) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        answer = client.chat.completions.create(model="azure_openai/gpt-4o",
                                                messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert answer.choices[0].message.content == "Hello from the test upstream."
    seen = server.seen[-1]
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["api-key"] == "az-key" and "authorization" not in seen.headers


def test_config_errors_name_the_file_path_and_what_is_known(tmp_path: Path) -> None:
    assert _problems(tmp_path, [{"model": "vllm/llama"}]) == [
        "x.yaml: model_providers[0].base_url: required for provider 'vllm' (an OpenAI-compatible server's "
        "address, e.g. http://127.0.0.1:8000/v1)"]
    [unknown] = _problems(tmp_path, [{"model": "acme/m1"}])
    assert unknown.startswith("x.yaml: model_providers[0].base_url: required for provider 'acme', which is "
                              "not a known provider (openai, anthropic, azure_openai, gemini, xai, groq,")
    assert "interface: anthropic" in unknown
    assert _problems(tmp_path, [{"model": "azure_openai/gpt-4o", "resource": "r"}]) == [
        "x.yaml: model_providers[0].deployment: required for provider 'azure_openai' (or give base_url)"]
    assert _problems(tmp_path, [{"model": "openai/gpt-4o", "deployment": "d"}]) == [
        "x.yaml: model_providers[0].deployment: only for provider 'azure_openai'"]
    assert _problems(tmp_path, [{"model": "openai/*", "default": True}]) == [
        "x.yaml: model_providers[0].default: openai/* serves the model id a client names, so it cannot serve "
        "requests that name none"]


def test_compatible_server_by_base_url_and_interface() -> None:
    request = _request({"model": "acme/m1", "base_url": "http://127.0.0.1:9/v1", "interface": "anthropic",
                        "access_key": "k"})
    assert str(request.url) == "http://127.0.0.1:9/v1/messages" and request.headers["x-api-key"] == "k"
    request = _request({"model": "vllm/llama", "base_url": "http://127.0.0.1:8000/v1/"})
    assert str(request.url) == "http://127.0.0.1:8000/v1/chat/completions"


def test_wildcard_serves_any_id_of_its_provider(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    raw = proxy_config(base)
    raw["model_providers"].append({"model": "test/*", "base_url": base, "access_key": "sk-wild"})
    with run_proxy(raw) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        raw_answer = client.chat.completions.with_raw_response.create(
            model="test/gpt-5", messages=[{"role": "user", "content": "hi"}])
        answer = raw_answer.parse()
        streamed = list(client.chat.completions.create(model="test/some/nested-id", stream=True,
                                                       messages=[{"role": "user", "content": "hi"}]))
        exact = client.chat.completions.create(model="test/test-model", messages=[{"role": "user", "content": "hi"}])
        listed = [m.id for m in client.models.list()]
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="other/gpt-5", messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert answer.model == "gpt-5"
    assert raw_answer.headers["x-outerloop-model"] == "test/gpt-5"
    assert server.seen[0].json["model"] == "gpt-5"
    assert server.seen[0].headers["authorization"] == "Bearer sk-wild"
    assert streamed[0].model == "some/nested-id" and server.seen[1].json["model"] == "some/nested-id"
    # An exact entry wins over the wildcard.
    assert exact.model == "test-model" and server.seen[2].headers["authorization"] == "Bearer sk-upstream-secret"
    assert "test/*" in listed


def test_dropped_fields_skip_null_and_false() -> None:
    body = {"model": "m", "messages": [], "seed": 1, "logprobs": False, "top_logprobs": None, "logit_bias": {}}
    assert dropped_fields(body, frozenset({"model", "messages"})) == ["seed", "logit_bias"]


def _crossing_config(base: str) -> dict[str, Any]:
    raw = proxy_config(base)
    raw["model_providers"] += [{"model": "anthropic/claude-test", "base_url": base},
                               {"model": "anthropic/fail-400", "base_url": base}]
    return raw


def test_openai_client_on_anthropic_upstream_names_dropped_fields(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    messages: Any = [{"role": "user", "content": "hi"}]
    with run_proxy(_crossing_config(base)) as proxy:
        client = openai.OpenAI(base_url=proxy.url + "/v1", api_key="sk-client", max_retries=0)
        whole = client.chat.completions.with_raw_response.create(
            model="claude-test", messages=messages, logprobs=True, top_logprobs=2, seed=7, presence_penalty=0.5,
            frequency_penalty=0.1, logit_bias={"50256": -100}, n=1, temperature=0.2)
        with client.chat.completions.with_streaming_response.create(
                model="claude-test", messages=messages, stream=True, seed=7) as stream:
            stream_header = stream.headers.get("x-outerloop-dropped")
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream.parse() if chunk.choices)
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model="anthropic/fail-400", messages=messages, seed=7)
        with pytest.raises(openai.BadRequestError) as two:
            client.chat.completions.create(model="claude-test", messages=messages, n=2)
        passthrough = client.chat.completions.with_raw_response.create(model="test-model", messages=messages,
                                                                       seed=7)
        client.close()
    assert set(whole.headers["x-outerloop-dropped"].split(", ")) == {
        "logprobs", "top_logprobs", "seed", "presence_penalty", "frequency_penalty", "logit_bias"}
    assert whole.parse().choices[0].message.content == "Hello from the test upstream."
    sent = server.seen[0].json
    assert "seed" not in sent and "logprobs" not in sent and sent["temperature"] == 0.2
    assert stream_header == "seed" and text == "Hello from the test upstream."
    # An upstream's error carries it too.
    assert refused.value.response.headers["x-outerloop-dropped"] == "seed"
    # n > 1 would change the answer's meaning: still a 400, nothing dropped.
    assert two.value.status_code == 400 and "n: Anthropic returns a single choice" in two.value.message
    assert "x-outerloop-dropped" not in passthrough.headers and server.seen[-1].json["seed"] == 7


def test_anthropic_client_on_openai_upstream_names_dropped_fields(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(_crossing_config(base)) as proxy:
        client = anthropic.Anthropic(base_url=proxy.url, api_key="sk-client", max_retries=0)
        response = client.messages.with_raw_response.create(
            model="test-model", max_tokens=2048, messages=[{"role": "user", "content": "hi"}],
            extra_body={"top_k": 5, "thinking": {"type": "enabled", "budget_tokens": 1024}})
        native = client.messages.with_raw_response.create(model="claude-test", max_tokens=50, extra_body={"top_k": 5},
                                                          messages=[{"role": "user", "content": "hi"}])
        client.close()
    assert set(response.headers["x-outerloop-dropped"].split(", ")) == {"top_k", "thinking"}
    message = response.parse()
    assert message.content[0].text == "Hello from the test upstream."  # type: ignore[union-attr]
    assert "top_k" not in server.seen[0].json and "thinking" not in server.seen[0].json
    assert "x-outerloop-dropped" not in native.headers and server.seen[1].json["top_k"] == 5
