"""OpenAI-shaped upstreams (OpenAI, vLLM, Ollama, the demo model...) for OpenAI-speaking clients: bytes pass through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from core.flow import Flow, encode_json
from core.providers import DROPPED_HEADER, note_dropped
from core.target import Target

_ASK_USAGE = b'"stream_options":{"include_usage":true}'


def upstream_body(flow: Flow, model_id: str, stream_usage: bool = False) -> bytes:
    """The client's own bytes when they already name the upstream's model id; else the JSON re-encoded.

    With ``stream_usage`` a stream asks for OpenAI's usage chunk (``stream_options.include_usage``), so the
    core can count every request; it removes the chunk again when the client did not ask for it.
    """
    ask = stream_usage and flow.stream and not flow.wants_stream_usage
    if flow.json.get("model") == model_id:
        if not ask:
            return flow.body
        body = flow.body
        if body[:1] == b"{" and "stream_options" not in flow.json:
            # Spliced into the client's bytes (a validated object: it has messages, so a comma follows):
            # re-encoding a long agent conversation would cost about 1 ms per 100 KB.
            return b"{" + _ASK_USAGE + b"," + body[1:]
    changed = dict(flow.json)
    changed["model"] = model_id
    if ask:
        options = changed.get("stream_options")
        changed["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    return encode_json(changed)


def openai_headers(flow: Flow, target: Target) -> list[tuple[str, str]]:
    """Headers for an OpenAI-shaped upstream: the key as `authorization: Bearer`, or Azure's `api-key`."""
    provider = target.provider
    accept = "text/event-stream" if flow.stream else "application/json"
    headers = [("content-type", "application/json"), ("accept", accept),
               ("x-request-id", flow.request_id)]
    if provider.auth == "api-key":
        key = _client_key(flow) if provider.passthrough_auth else _configured_key(target)
        if key:
            headers.append(("api-key", key))
    elif provider.passthrough_auth:
        auth = flow.headers.get("authorization")
        if auth:
            headers.append(("authorization", auth))
        elif "x-api-key" in flow.headers:
            headers.append(("authorization", "Bearer " + flow.headers["x-api-key"]))
    elif provider.access_key is not None:
        headers.append(("authorization", "Bearer " + provider.access_key.get_secret_value()))
    headers.extend(provider.headers.items())
    return headers


def _configured_key(target: Target) -> str | None:
    key = target.provider.access_key
    return key.get_secret_value() if key is not None else None


def _client_key(flow: Flow) -> str | None:
    """The client's own key, however it sent it (`api-key`, `x-api-key` or `authorization: Bearer`)."""
    key = flow.headers.get("api-key") or flow.headers.get("x-api-key")
    auth = flow.headers.get("authorization", "")
    if key is None and auth[:7].lower() == "bearer ":
        key = auth[7:].strip()
    return key


class Passthrough:
    """Client and upstream speak the same API: the request and every response byte pass unchanged (the model id
    substituted where the client named another), to `path` with the provider's `headers`."""

    rewrites_body = False

    def __init__(self, path: str, headers: Callable[[Flow, Target], list[tuple[str, str]]],
                 requests_stream_usage: bool = False) -> None:
        self.path = path
        self.headers = headers
        self.requests_stream_usage = requests_stream_usage

    def request(self, flow: Flow, target: Target) -> httpx.Request:
        if DROPPED_HEADER in flow.extra_headers:
            note_dropped(flow, [])
        return httpx.Request("POST", target.upstream.url(self.path), headers=self.headers(flow, target),
                             content=upstream_body(flow, target.model_id, self.requests_stream_usage))

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return chunks

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        return raw


def openai_passthrough() -> Passthrough:
    """OpenAI client, OpenAI-shaped upstream."""
    return Passthrough("/chat/completions", openai_headers, requests_stream_usage=True)


def openai_embeddings() -> Passthrough:
    """OpenAI client, OpenAI-shaped upstream, embeddings."""
    return Passthrough("/embeddings", openai_headers)
