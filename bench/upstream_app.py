"""The benchmark's upstream: a minimal OpenAI-shaped chat completion server, as cheap per request as starlette allows."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
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


async def chat(request: Request) -> Response:
    body = json.loads(await request.body())
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
