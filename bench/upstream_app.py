"""The benchmark's upstream: a minimal OpenAI-shaped chat completion server, as cheap per request as starlette allows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

WORDS = ["Hello", " from", " the", " benchmark", " upstream."]
USAGE = {"prompt_tokens": 250, "completion_tokens": len(WORDS), "total_tokens": 250 + len(WORDS)}
_BASE = {"id": "chatcmpl-bench", "created": 1, "model": "m"}


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


# Answers are built once: the upstream should cost as little as possible, so the rows measure the proxies.
COMPLETION = json.dumps({
    **_BASE, "object": "chat.completion",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(WORDS)},
                 "finish_reason": "stop", "logprobs": None}],
    "usage": USAGE,
}, separators=(",", ":")).encode()

_CHUNK = {**_BASE, "object": "chat.completion.chunk"}
CHUNKS = [
    *(_sse({**_CHUNK, "choices": [{"index": 0, "delta": ({"role": "assistant", "content": w} if i == 0
                                                         else {"content": w}), "finish_reason": None}]})
      for i, w in enumerate(WORDS)),
    _sse({**_CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
]
USAGE_CHUNK = _sse({**_CHUNK, "choices": [], "usage": USAGE})
DONE = b"data: [DONE]\n\n"


async def _stream(include_usage: bool) -> AsyncIterator[bytes]:
    for chunk in CHUNKS:
        yield chunk
    if include_usage:
        yield USAGE_CHUNK
    yield DONE


# The soak bench (bench/soak.py) asks for faults by model name: dash-separated key-value pairs, e.g.
# `status-500` (an OpenAI-shaped error), `status-429` (with Retry-After), `chunks-64-delay-5` (a stream of
# 64 content chunks of about 400 bytes, 5 ms apart). Model `m` (every overhead.py request) takes none of this.
_FILLER = (" The upstream keeps talking so that the stream outlasts the socket buffers of a slow reader, and a"
           " client that leaves early leaves in the middle of it rather than after the last event arrived. ")


@dataclass(frozen=True)
class Behaviour:
    status: int = 200
    chunks: int = 0
    delay_ms: int = 0


@lru_cache(maxsize=64)
def behaviour(model: str) -> Behaviour:
    parts = model.split("-")
    if len(parts) < 2 or len(parts) % 2:
        return Behaviour()
    pairs = dict(zip(parts[::2], parts[1::2]))
    try:
        return Behaviour(status=int(pairs.get("status", 200)), chunks=int(pairs.get("chunks", 0)),
                         delay_ms=int(pairs.get("delay", 0)))
    except ValueError:
        return Behaviour()


@lru_cache(maxsize=64)
def _long_chunks(count: int) -> list[bytes]:
    return [_sse({**_CHUNK, "choices": [{"index": 0, "delta": {"content": _FILLER}, "finish_reason": None}]})
            for _ in range(count)]


async def _long_stream(how: Behaviour, include_usage: bool) -> AsyncIterator[bytes]:
    yield CHUNKS[0]
    for chunk in _long_chunks(how.chunks):
        if how.delay_ms:
            await asyncio.sleep(how.delay_ms / 1000)
        yield chunk
    for chunk in CHUNKS[1:]:
        yield chunk
    if include_usage:
        yield USAGE_CHUNK
    yield DONE


def _error(status: int) -> Response:
    kind = "rate_limit_exceeded" if status == 429 else "server_error"
    body = {"error": {"message": f"bench upstream answers {status} on request", "type": kind, "param": None,
                      "code": kind}}
    headers = {"retry-after": "1"} if status == 429 else None
    return Response(json.dumps(body).encode(), status_code=status, media_type="application/json", headers=headers)


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
    model = body.get("model")
    if model != "m" and isinstance(model, str):
        how = behaviour(model)
        if how.status != 200:
            return _error(how.status)
        if how.chunks and body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(_long_stream(how, include_usage), media_type="text/event-stream")
    if not body.get("stream"):
        return Response(COMPLETION, media_type="application/json")
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return StreamingResponse(_stream(include_usage), media_type="text/event-stream")


async def models(request: Request) -> Response:
    return Response(b'{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"bench"}]}',
                    media_type="application/json")


app = Starlette(routes=[
    Route("/v1/chat/completions", chat, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
])
