"""A local OpenAI- and Anthropic-shaped upstream for tests: streams chunk by chunk, fails on request.

The model name picks the behaviour: `fail-<status>` answers that status with an OpenAI error body,
`hang` never answers, `slow` streams with `slow_delay` between chunks; anything else answers normally.
Every request is recorded (headers and raw body) so tests can see what the proxy sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


#: What the upstream answers every embeddings input with (exact in float32), and every token count with.
EMBEDDING = [0.5, -0.25, 0.125]
COUNTED_TOKENS = 42


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Upstream:
    words: list[str] = field(default_factory=lambda: ["Hello", " from", " the", " test", " upstream."])
    chunk_delay: float = 0.0
    slow_delay: float = 0.3
    seen: list[Seen] = field(default_factory=list)
    #: Times (monotonic) at which each streamed chunk was handed to the server, per request.
    sent_at: list[list[float]] = field(default_factory=list)
    streams_open: int = 0
    streams_cancelled: int = 0

    def app(self) -> Starlette:
        return Starlette(routes=[
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/messages", self.messages, methods=["POST"]),
            Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            Route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"]),
            Route("/v1/models", self.models, methods=["GET"]),
        ])

    async def _record(self, request: Request) -> dict[str, Any]:
        body = await request.body()
        self.seen.append(Seen(request.url.path, dict(request.headers), body))
        return json.loads(body)  # type: ignore[no-any-return]

    async def models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "test-model", "object": "model", "created": 0,
                                                         "owned_by": "test"}]})

    async def chat(self, request: Request) -> Response:
        body = await self._record(request)
        model = body.get("model", "")
        if model.startswith("fail-"):
            return _failure(model)
        if model == "hang":
            await asyncio.sleep(3600)
        text = "".join(self.words)
        usage = {"prompt_tokens": 7, "completion_tokens": len(self.words), "total_tokens": 7 + len(self.words)}
        if not body.get("stream"):
            return JSONResponse({
                "id": "chatcmpl-test", "object": "chat.completion", "created": 1, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage,
            })
        delay = self.slow_delay if model == "slow" else self.chunk_delay
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self._stream(model, delay, include_usage, usage), media_type="text/event-stream")

    async def _stream(self, model: str, delay: float, include_usage: bool, usage: dict[str, int]) -> Any:
        times: list[float] = []
        self.sent_at.append(times)
        self.streams_open += 1
        base = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": 1, "model": model}
        try:
            for i, word in enumerate(self.words):
                if i and delay:
                    await asyncio.sleep(delay)
                delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
                times.append(time.monotonic())
                yield _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"
        except asyncio.CancelledError:
            self.streams_cancelled += 1
            raise
        finally:
            self.streams_open -= 1

    async def embeddings(self, request: Request) -> Response:
        """One vector, EMBEDDING, per input (floats, or base64 float32 as OpenAI sends them); 5 tokens."""
        body = await self._record(request)
        model = body.get("model", "")
        if model.startswith("fail-"):
            return _failure(model)
        given = body.get("input")
        count = len(given) if isinstance(given, list) and not all(isinstance(i, int) for i in given) else 1
        vector: Any = EMBEDDING
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(EMBEDDING)}f", *EMBEDDING)).decode()
        return JSONResponse({"object": "list", "model": model,
                             "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
                             "usage": {"prompt_tokens": 5, "total_tokens": 5}})

    async def count_tokens(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"input_tokens": COUNTED_TOKENS})

    async def messages(self, request: Request) -> Response:
        body = await self._record(request)
        model = body.get("model", "")
        if model.startswith("fail-"):
            status = int(model.split("-")[1])
            return JSONResponse({"type": "error", "error": {"type": "api_error", "message": f"upstream says {status}"}},
                                status_code=status)
        text = "".join(self.words)
        usage = {"input_tokens": 7, "output_tokens": len(self.words)}
        if not body.get("stream"):
            return JSONResponse({"id": "msg_test", "type": "message", "role": "assistant", "model": model,
                                 "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                 "stop_sequence": None, "usage": usage})
        return StreamingResponse(self._anthropic_stream(model, usage), media_type="text/event-stream")

    async def _anthropic_stream(self, model: str, usage: dict[str, int]) -> Any:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        yield event("message_start", {"type": "message_start", "message": {
            "id": "msg_test", "type": "message", "role": "assistant", "model": model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 7, "output_tokens": 0}}})
        yield event("content_block_start", {"type": "content_block_start", "index": 0,
                                            "content_block": {"type": "text", "text": ""}})
        for word in self.words:
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            yield event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                "delta": {"type": "text_delta", "text": word}})
        yield event("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield event("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn",
                                                                          "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        yield event("message_stop", {"type": "message_stop"})


def _failure(model: str) -> Response:
    """The OpenAI error a `fail-<status>` model answers with."""
    status = int(model.split("-")[1])
    return JSONResponse({"error": {"message": f"upstream says {status}", "type": "upstream_test",
                                   "param": None, "code": f"test_{status}"}}, status_code=status)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"
