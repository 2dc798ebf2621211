"""Adapters that cross API shapes: OpenAI clients on Anthropic upstreams, Anthropic clients on either."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from core.errors import RequestError
from core.flow import Flow, encode_json
from core.providers import note_dropped
from core.providers.anthropic import (
    ANTHROPIC_FIELDS_FOR_OPENAI,
    ANTHROPIC_VERSION,
    MID_CONVERSATION_SYSTEM_BETA,
    OPENAI_FIELDS_FOR_ANTHROPIC,
    TranslationError,
    anthropic_to_openai_request,
    dropped_fields,
    openai_to_anthropic_request,
)
from core.providers.anthropic_response import anthropic_to_openai_response, openai_to_anthropic_response
from core.providers.anthropic_stream import AnthropicToOpenAIStream, OpenAIToAnthropicStream
from core.providers.openai import Passthrough, openai_headers
from core.target import Target
from core.upstream_errors import invalid_response

# Anthropic request headers a client may set that change behaviour upstream (betas, versions).
_ANTHROPIC_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")


class _StreamTranslator(Protocol):
    def feed(self, data: bytes) -> bytes: ...

    def close(self) -> bytes: ...


async def translated_stream(flow: Flow, translator: _StreamTranslator,
                            chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A stream through ``translator``; what it cannot translate ends it as the upstream's invalid response."""
    try:
        async for chunk in chunks:
            out = translator.feed(chunk)
            if out:
                yield out
        tail = translator.close()
    except TranslationError as exc:
        raise invalid_response(flow, f"the stream cannot be translated: {exc}") from None
    if tail:
        yield tail


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


class _TranslatingAdapter(ABC):
    """Requests and answers cross API shapes: the subclasses say how, this runs it."""

    rewrites_body = True
    #: The translators read the usage chunk themselves; the client never sees an upstream's chunk as it is.
    requests_stream_usage = False
    path = ""
    #: The client's request fields the translation carries over; the others are dropped and named.
    carried: frozenset[str] = frozenset()

    @abstractmethod
    def headers(self, flow: Flow, target: Target, body: dict[str, Any]) -> list[tuple[str, str]]:
        """The upstream request's headers for its translated ``body``."""

    @abstractmethod
    def translate_request(self, body: dict[str, Any], model_id: str, dropped: list[str]) -> dict[str, Any]: ...

    @abstractmethod
    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator: ...

    @abstractmethod
    def translate_response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        """The client's body from the upstream's."""

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        dropped = dropped_fields(flow.json, self.carried)
        try:
            translated = self.translate_request(flow.json, target.model_id, dropped)
        except TranslationError as exc:
            raise RequestError(400, str(exc), exc.code, exc.field) from None
        note_dropped(flow, dropped)
        return httpx.Request("POST", target.upstream.url(self.path), headers=self.headers(flow, target, translated),
                             content=encode_json(translated))

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return translated_stream(flow, self.stream_translator(flow, _model(flow)), chunks)

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        try:
            return encode_json(self.translate_response(body, _model(flow)))
        except TranslationError as exc:
            raise invalid_response(flow, f"the body cannot be translated: {exc}") from None


class OpenAIClientAnthropicUpstream(_TranslatingAdapter):
    """OpenAI chat completions in, Anthropic messages upstream, OpenAI shapes back."""

    path = "/messages"
    carried = OPENAI_FIELDS_FOR_ANTHROPIC
    translate_request = staticmethod(openai_to_anthropic_request)

    def headers(self, flow: Flow, target: Target, body: dict[str, Any]) -> list[tuple[str, str]]:
        headers = anthropic_headers(flow, target)
        if any(turn["role"] == "system" for turn in body["messages"]):
            return _with_beta(headers, flow, MID_CONVERSATION_SYSTEM_BETA)
        return headers

    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator:
        return AnthropicToOpenAIStream(model, flow.wants_stream_usage)

    def translate_response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return anthropic_to_openai_response(body, model)


class AnthropicClientOpenAIUpstream(_TranslatingAdapter):
    """Anthropic messages in, OpenAI-shaped upstream (OpenAI, vLLM, Ollama, demo), Anthropic shapes back."""

    path = "/chat/completions"
    carried = ANTHROPIC_FIELDS_FOR_OPENAI
    translate_request = staticmethod(anthropic_to_openai_request)

    def headers(self, flow: Flow, target: Target, body: dict[str, Any]) -> list[tuple[str, str]]:
        return openai_headers(flow, target)

    def stream_translator(self, flow: Flow, model: str) -> _StreamTranslator:
        return OpenAIToAnthropicStream(model)

    def translate_response(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        return openai_to_anthropic_response(body, model)


def _with_beta(headers: list[tuple[str, str]], flow: Flow, beta: str) -> list[tuple[str, str]]:
    """``headers`` with one ``anthropic-beta`` naming ``beta`` after the betas the client and the provider's
    configured headers already ask for."""
    asked = [value for name, value in headers if name.lower() == "anthropic-beta"]
    asked.append(flow.headers.get("anthropic-beta", ""))
    betas: list[str] = []
    for value in [*asked, beta]:
        betas += [name for name in (part.strip() for part in value.split(",")) if name and name not in betas]
    return [*((name, value) for name, value in headers if name.lower() != "anthropic-beta"),
            ("anthropic-beta", ",".join(betas))]


def _model(flow: Flow) -> str:
    return flow.served_by.model_id if flow.served_by else flow.model or ""


def anthropic_passthrough() -> Passthrough:
    """Anthropic client, Anthropic upstream."""
    return Passthrough("/messages", anthropic_headers)


def anthropic_count_tokens() -> Passthrough:
    """Anthropic client, Anthropic upstream, token counting."""
    return Passthrough("/messages/count_tokens", anthropic_headers)
