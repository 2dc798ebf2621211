"""OpenAI-shaped upstreams (OpenAI, vLLM, Ollama, the demo model...) for OpenAI-speaking clients: bytes pass through."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from core.flow import Flow, encode_json
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


def bearer_headers(flow: Flow, target: Target) -> list[tuple[str, str]]:
    provider = target.provider
    accept = "text/event-stream" if flow.stream else "application/json"
    headers = [("content-type", "application/json"), ("accept", accept),
               ("x-request-id", flow.request_id)]
    if provider.passthrough_auth:
        auth = flow.headers.get("authorization")
        if auth:
            headers.append(("authorization", auth))
        elif "x-api-key" in flow.headers:
            headers.append(("authorization", "Bearer " + flow.headers["x-api-key"]))
    elif provider.access_key is not None:
        headers.append(("authorization", "Bearer " + provider.access_key.get_secret_value()))
    headers.extend(provider.headers.items())
    return headers


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
        return httpx.Request("POST", target.upstream.url(self.path), headers=self.headers(flow, target),
                             content=upstream_body(flow, target.model_id, self.requests_stream_usage))

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        return chunks

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        return raw


def openai_passthrough() -> Passthrough:
    """OpenAI client, OpenAI-shaped upstream."""
    return Passthrough("/chat/completions", bearer_headers, requests_stream_usage=True)
