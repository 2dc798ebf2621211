"""Adapters that cross API shapes: OpenAI clients on Anthropic upstreams, Anthropic clients on either."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from core.errors import RequestError
from core.flow import Flow
from core.providers import Adapter
from core.providers.anthropic import (
    ANTHROPIC_VERSION,
    TranslationError,
    anthropic_to_openai_request,
    openai_to_anthropic_request,
)
from core.providers.anthropic_response import (
    anthropic_error_to_openai,
    anthropic_to_openai_response,
    openai_error_to_anthropic,
    openai_to_anthropic_response,
)
from core.providers.anthropic_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from core.providers.openai import bearer_headers, upstream_body
from core.upstream import Target

# Anthropic request headers a client may set that change behaviour upstream (betas, versions).
_ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")


class _StreamTranslator(Protocol):
    usage: dict[str, Any] | None

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


def _encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _translated(flow: Flow, translate: Any, model_id: str) -> bytes:
    try:
        return _encode(translate(flow.json, model_id))
    except TranslationError as exc:
        raise RequestError(400, str(exc), "invalid_request", exc.field) from None


def anthropic_headers(flow: Flow, target: Target) -> list[tuple[str, str]]:
    provider = target.provider
    headers = [("content-type", "application/json"), ("x-request-id", flow.request_id)]
    if flow.api == "anthropic":
        headers += [(name, flow.headers[name]) for name in _ANTHROPIC_CLIENT_HEADERS if name in flow.headers]
    if not any(name == "anthropic-version" for name, _ in headers):
        headers.append(("anthropic-version", ANTHROPIC_VERSION))
    key: str | None = None
    if provider.passthrough_auth:
        key = flow.headers.get("x-api-key")
        auth = flow.headers.get("authorization", "")
        if key is None and auth[:7].lower() == "bearer ":
            key = auth[7:].strip()
    elif provider.access_key is not None:
        key = provider.access_key.get_secret_value()
    if key:
        headers.append(("x-api-key", key))
    headers.extend(provider.headers.items())
    return headers


async def _whole(response: httpx.Response) -> bytes:
    data = bytearray()
    async for chunk in response.aiter_raw():
        data += chunk
    return bytes(data)


async def _translate_stream(response: httpx.Response, translator: _StreamTranslator,
                            flow: Flow) -> AsyncIterator[bytes]:
    async for chunk in response.aiter_raw():
        out = translator.feed(chunk)
        if out:
            yield out
    tail = translator.close()
    flow.usage = translator.usage
    if tail:
        yield tail


class OpenAIClientAnthropicUpstream:
    """OpenAI chat completions in, Anthropic messages upstream, OpenAI shapes back."""

    rewrites_body = True

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        body = _translated(flow, openai_to_anthropic_request, target.model_id)
        return httpx.Request("POST", target.upstream.url("/messages"), headers=anthropic_headers(flow, target),
                             content=body)

    async def body(self, flow: Flow, response: httpx.Response) -> AsyncIterator[bytes]:
        model = flow.served_by.model_id if flow.served_by else flow.model or ""
        if flow.stream:
            options = flow.json.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            async for out in _translate_stream(response, AnthropicToOpenAIStream(model, include_usage), flow):
                yield out
            return
        translated = anthropic_to_openai_response(json.loads(await _whole(response)), model)
        flow.usage = translated.get("usage")
        yield _encode(translated)

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes:
        return anthropic_error_to_openai(body, status)


class AnthropicPassthrough:
    """Anthropic client, Anthropic upstream: bytes pass unchanged (the model id substituted if needed)."""

    rewrites_body = False

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        return httpx.Request("POST", target.upstream.url("/messages"), headers=anthropic_headers(flow, target),
                             content=upstream_body(flow, target.model_id))

    def body(self, flow: Flow, response: httpx.Response) -> AsyncIterator[bytes]:
        return response.aiter_raw()

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes:
        return body


class AnthropicClientOpenAIUpstream:
    """Anthropic messages in, OpenAI-shaped upstream (OpenAI, vLLM, Ollama, demo), Anthropic shapes back."""

    rewrites_body = True

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        body = _translated(flow, anthropic_to_openai_request, target.model_id)
        return httpx.Request("POST", target.upstream.url("/chat/completions"), headers=bearer_headers(flow, target),
                             content=body)

    async def body(self, flow: Flow, response: httpx.Response) -> AsyncIterator[bytes]:
        model = flow.served_by.model_id if flow.served_by else flow.model or ""
        if flow.stream:
            async for out in _translate_stream(response, OpenAIToAnthropicStream(model), flow):
                yield out
            return
        completion = json.loads(await _whole(response))
        flow.usage = completion.get("usage")
        yield _encode(openai_to_anthropic_response(completion, model))

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes:
        return openai_error_to_anthropic(body, status)

