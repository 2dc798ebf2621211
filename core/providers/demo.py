"""The built-in `demo` provider: an in-process OpenAI-shaped model so the default config works offline.

It answers chat completions, streamed or not, in the exact shapes OpenAI returns (ids, chunk objects,
finish reasons, usage, `data: [DONE]`), so a new user sees the whole path, SDKs included, before
pointing the proxy at a real provider. Its answer is a short echo; it is not a language model. Its
embeddings are unit vectors from a hash of each input: the same text always gets the same vector.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from core.flow import content_text, encode_json
from core.sse import encode_event

DEMO_MODELS = ("demo-echo",)
#: The demo's embeddings have this many dimensions unless the request asks for `dimensions`.
DEMO_DIMENSIONS = 64


def _answer(body: dict[str, Any]) -> str:
    last = ""
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            last = content_text(message.get("content"))
            break
    said = " ".join(last.split())
    if len(said) > 200:
        said = said[:200] + "..."
    return f"Hello from outerloop's demo model. You said: {said}" if said else "Hello from outerloop's demo model."


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _usage(body: dict[str, Any], answer: str) -> dict[str, int]:
    prompt = sum(
        _tokens(content_text(m.get("content"))) for m in body.get("messages") or [] if isinstance(m, dict)
    )
    completion = _tokens(answer)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class _Stream(httpx.AsyncByteStream):
    def __init__(self, body: dict[str, Any], model: str) -> None:
        self._body = body
        self._model = model

    async def __aiter__(self) -> AsyncIterator[bytes]:
        answer = _answer(self._body)
        base = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": self._model, "system_fingerprint": "fp_outerloop_demo"}
        yield encode_event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}]})
        words = answer.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            yield encode_event({**base, "choices": [{"index": 0, "delta": {"content": piece}, "logprobs": None,
                                              "finish_reason": None}]})
        yield encode_event({**base, "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
        options = self._body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            yield encode_event({**base, "choices": [], "usage": _usage(self._body, answer)})
        yield b"data: [DONE]\n\n"


def _embedding_inputs(value: Any) -> list[tuple[bytes, int]]:
    """Each input of an embeddings request (validated by the core) as (its bytes, its token count)."""
    if isinstance(value, str):
        return [(value.encode(), _tokens(value))]
    if value and all(isinstance(item, int) for item in value):
        return [(json.dumps(value).encode(), len(value))]
    return [(item.encode(), _tokens(item)) if isinstance(item, str) else (json.dumps(item).encode(), len(item))
            for item in value]


def _vector(data: bytes, dimensions: int) -> list[float]:
    """A unit vector that depends only on ``data``: the same text embeds the same everywhere, offline."""
    values: list[float] = []
    block = 0
    while len(values) < dimensions:
        digest = hashlib.sha256(block.to_bytes(4, "big") + data).digest()
        values += [(byte - 127.5) / 127.5 for byte in digest]
        block += 1
    values = values[:dimensions]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    # Rounded through float32, as real embeddings are, so base64 and float answers hold the same numbers.
    return [struct.unpack("<f", struct.pack("<f", v / norm))[0] for v in values]


def _embeddings(body: dict[str, Any], model: str) -> dict[str, Any]:
    dimensions = body.get("dimensions") or DEMO_DIMENSIONS
    data: list[dict[str, Any]] = []
    tokens = 0
    for index, (text, count) in enumerate(_embedding_inputs(body.get("input"))):
        vector = _vector(text, dimensions)
        tokens += count
        embedding: list[float] | str = vector
        if body.get("encoding_format") == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class DemoTransport(httpx.AsyncBaseTransport):
    """Serves /chat/completions, /embeddings and /models without a network."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "outerloop-demo"} for m in DEMO_MODELS]
            return _json(request, 200, {"object": "list", "data": data})
        if not path.endswith(("/chat/completions", "/embeddings")):
            return _error(request, 404, f"demo provider has no endpoint {path}", "not_found")
        body = json.loads(await request.aread())
        # Named as the proxy's /v1/models lists it: the proxy sends the bare id upstream.
        model = f"demo/{body.get('model') or DEMO_MODELS[0]}"
        if path.endswith("/embeddings"):
            return _json(request, 200, _embeddings(body, model))
        if body.get("stream") is True:
            return httpx.Response(
                200, headers={"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"},
                stream=_Stream(body, model), request=request,
            )
        answer = _answer(body)
        completion = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_outerloop_demo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer, "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": _usage(body, answer),
        }
        return _json(request, 200, completion)


def _error(request: httpx.Request, status: int, message: str, code: str) -> httpx.Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
    return _json(request, status, body)


def _json(request: httpx.Request, status: int, body: dict[str, Any]) -> httpx.Response:
    # A stream, not `json=`: the proxy reads every upstream body with aiter_raw, like a network response.
    data = encode_json(body)
    headers = {"content-type": "application/json", "content-length": str(len(data))}
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(data), request=request)
