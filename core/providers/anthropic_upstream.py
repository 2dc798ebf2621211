"""Adapters that cross API shapes: OpenAI clients on Anthropic upstreams, Anthropic clients on either."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from core.errors import RequestError
from core.flow import Flow, encode_json
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
from core.providers.openai import Passthrough, bearer_headers, upstream_body
from core.upstream import Target

# Anthropic request headers a client may set that change behaviour upstream (betas, versions).
_ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")


class _StreamTranslator(Protocol):
    usage: dict[str, Any] | None

    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


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


class _TranslatingAdapter(ABC):
    """Requests and answers cross API shapes: the subclasses say how, this runs it."""

    rewrites_body = True
    path = ""

    @abstractmethod
    def headers(self, flow: Flow, target: Target) -> list[tuple[str, str]]: ...

    @abstractmethod
    def translate_request(self, body: dict[str, Any], model_id: str) -> dict[str, Any]: ...

    @abstractmethod
    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator: ...

    @abstractmethod
    def translate_response(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], Any]:
        """The client's body, and the OpenAI-shaped usage (kept on the flow for filters and metrics)."""

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        try:
            body = encode_json(self.translate_request(flow.json, target.model_id))
        except TranslationError as exc:
            raise RequestError(400, str(exc), "invalid_request", exc.field) from None
        return httpx.Request("POST", target.upstream.url(self.path), headers=self.headers(flow, target),
                             content=body)

    async def body(self, flow: Flow, response: httpx.Response) -> AsyncIterator[bytes]:
        model = flow.served_by.model_id if flow.served_by else flow.model or ""
        if flow.stream:
            translator = self.stream_translator(flow, model)
            async for chunk in response.aiter_raw():
                out = translator.feed(chunk)
                if out:
                    yield out
            tail = translator.close()
            flow.usage = translator.usage
            if tail:
                yield tail
            return
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
        translated, usage = self.translate_response(json.loads(data), model)
        flow.usage = usage if isinstance(usage, dict) else None
        yield encode_json(translated)


class OpenAIClientAnthropicUpstream(_TranslatingAdapter):
    """OpenAI chat completions in, Anthropic messages upstream, OpenAI shapes back."""

    path = "/messages"
    headers = staticmethod(anthropic_headers)
    translate_request = staticmethod(openai_to_anthropic_request)

    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator:
        options = flow.json.get("stream_options")
        return AnthropicToOpenAIStream(model, isinstance(options, dict) and options.get("include_usage") is True)

    def translate_response(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], Any]:
        translated = anthropic_to_openai_response(body, model)
        return translated, translated.get("usage")

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes:
        return anthropic_error_to_openai(body, status)


class AnthropicClientOpenAIUpstream(_TranslatingAdapter):
    """Anthropic messages in, OpenAI-shaped upstream (OpenAI, vLLM, Ollama, demo), Anthropic shapes back."""

    path = "/chat/completions"
    headers = staticmethod(bearer_headers)
    translate_request = staticmethod(anthropic_to_openai_request)

    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator:
        return OpenAIToAnthropicStream(model)

    def translate_response(self, body: dict[str, Any], model: str) -> tuple[dict[str, Any], Any]:
        return openai_to_anthropic_response(body, model), body.get("usage")

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes:
        return openai_error_to_anthropic(body, status)


def anthropic_passthrough() -> Passthrough:
    """Anthropic client, Anthropic upstream."""
    return Passthrough("/messages", anthropic_headers)
