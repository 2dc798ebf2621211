"""The built-in `demo` provider: an in-process OpenAI-shaped model so the default config works offline.

It answers chat completions, streamed or not, in the exact shapes OpenAI returns (ids, chunk objects,
finish reasons, usage, `data: [DONE]`), so a new user sees the whole path, SDKs included, before
pointing the proxy at a real provider. Its answer is a short echo; it is not a language model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx

from core.flow import content_text, encode_json
from core.sse import encode_event

DEMO_MODELS = ("demo-echo",)


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


class DemoTransport(httpx.AsyncBaseTransport):
    """Serves /chat/completions and /models without a network."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "outerloop-demo"} for m in DEMO_MODELS]
            return _json(request, 200, {"object": "list", "data": data})
        if not path.endswith("/chat/completions"):
            return _error(request, 404, f"demo provider has no endpoint {path}", "not_found")
        body = json.loads(await request.aread())
        # Named as the proxy's /v1/models lists it: the proxy sends the bare id upstream.
        model = f"demo/{body.get('model') or DEMO_MODELS[0]}"
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
