"""An upstream that misbehaves the way real ones do, on command, on a raw socket (so it can also reset, stall, trickle).

OpenAI-shaped on `/v1/chat/completions`, Anthropic-shaped on `/v1/messages`. The fault is the request's model
name (or its `x-fault` header, which wins); a name not in `FAULTS` answers normally, streamed or not. Sizes
are part of the name: `big-<bytes>` is a valid body of about that size, `big-reset-<bytes>` declares one and
resets after half of it.

    with serve_faults() as faults:          # faults.url ends in /v1; faults.refusing_url refuses connections
        ...model "html-503"...

Every request is recorded (`seen`), and `open` counts the connections open right now, so a test can assert
that the proxy let go of them.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from tests.harness import LoopThread

#: Every fault by name, and what the upstream does.
FAULTS = {
    "vllm-500": "500 with vLLM's error body {object: error, message, code}",
    "html-503": "503 with nginx's HTML page (text/html)",
    "anthropic-529": "529 with Anthropic's error body (overloaded_error)",
    "openai-400": "400 with OpenAI's error body (param and code)",
    "429": "429 with Retry-After: 7 and OpenAI's error body",
    "429-soon": "429 with Retry-After: 1 and OpenAI's error body",
    "500": "500 with OpenAI's error body",
    "503": "503 with a plain-text body",
    "binary-502": "502 with a binary body (application/octet-stream)",
    "bad-json": "200 application/json whose body does not parse",
    "json-array": "200 application/json whose body is a JSON array",
    "not-sse": "200 text/event-stream whose lines are not SSE events",
    "bad-data": "200 text/event-stream whose first data is not JSON",
    "json-stream": "200 application/json: a whole body on a stream request",
    "html-200": "200 text/html page (a captive portal), stream or not",
    "half-body": "200 declaring a Content-Length, half of it sent, then a reset",
    "close": "the request read, then the connection closed without an answer",
    "hang": "the request read, then nothing",
    "stall-headers": "the headers sent, then nothing",
    "reset-stream": "a stream begun, then a reset",
    "trickle": "a normal answer, one byte a second",
}


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FaultyUpstream:
    url: str = ""
    #: A base URL where nothing accepts connections (a bound port that does not listen).
    refusing_url: str = ""
    seen: list[Seen] = field(default_factory=list)
    #: Connections open now, and ever accepted.
    open: int = 0
    accepted: int = 0
    text: str = "Hello from the faulty upstream."
    #: Off: every answer says `connection: close`, so a test can count on no connection staying pooled.
    keep_alive: bool = False
    #: Faults for the next requests, in order, before the model name or `x-fault` decide (`503` then normal).
    queued: list[str] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.open += 1
        self.accepted += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open -= 1
            writer.transport.abort()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """One request and its answer; False when the connection is done."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.seen.append(Seen(path, headers, body))
        request = json.loads(body) if body else {}
        fault = (self.queued.pop(0) if self.queued else None) or headers.get("x-fault") or str(request.get("model", ""))
        anthropic = path.endswith("/messages")
        stream = bool(request.get("stream"))
        return await self._answer(reader, writer, fault, anthropic, stream)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fault: str, anthropic: bool,
                      stream: bool) -> bool:
        def send(status: int, kind: str, body: bytes, extra: str = "") -> None:
            writer.write(_head(status, kind, len(body), extra + closing) + body)

        closing = "" if self.keep_alive else "connection: close\r\n"

        if fault == "vllm-500":
            send(500, "application/json", json.dumps({"object": "error", "message": "CUDA out of memory",
                                                      "type": "InternalServerError", "param": None,
                                                      "code": 500}).encode())
        elif fault == "html-503":
            send(503, "text/html", NGINX_503)
        elif fault == "anthropic-529":
            send(529, "application/json", json.dumps({"type": "error", "error": {
                "type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}).encode())
        elif fault == "openai-400":
            send(400, "application/json", json.dumps({"error": {
                "message": "This model's maximum context length is 8192 tokens\x00\x1b[31m",
                "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}).encode())
        elif fault in ("429", "429-soon", "500"):
            status = int(fault[:3])
            send(status, "application/json", json.dumps({"error": {
                "message": f"upstream says {status}", "type": "upstream_test", "param": None,
                "code": f"test_{status}"}}).encode(),
                "" if status != 429 else "retry-after: 1\r\n" if fault == "429-soon" else "retry-after: 7\r\n")
        elif fault == "503":
            send(503, "text/plain", b"upstream connect error or disconnect/reset before headers")
        elif fault == "binary-502":
            send(502, "application/octet-stream", bytes(range(256)))
        elif fault == "bad-json":
            send(200, "application/json", b'{"id": "chatcmpl-1", "choices": [{"message": ')
        elif fault == "json-array":
            send(200, "application/json", b'[{"id": "chatcmpl-1"}]')
        elif fault == "not-sse":
            send(200, "text/event-stream", b"hello world\nthis is not an event stream\n\n")
        elif fault == "bad-data":
            send(200, "text/event-stream", b"data: {not json at all\n\ndata: [DONE]\n\n")
        elif fault == "json-stream":
            send(200, "application/json", self.body(anthropic))
        elif fault == "html-200":
            send(200, "text/html", b"<html><body>Please log in to the network</body></html>")
        elif fault == "half-body":
            body = self.body(anthropic)
            writer.write(_head(200, "application/json", len(body)) + body[:len(body) // 2])
            await writer.drain()
            _reset(writer)
            return False
        elif fault.startswith("big-reset-"):
            body = self.body(anthropic, int(fault.rsplit("-", 1)[1]))
            writer.write(_head(200, "application/json", len(body)) + body[:len(body) // 2])
            await writer.drain()
            await asyncio.sleep(0.2)
            _reset(writer)
            return False
        elif fault == "close":
            writer.close()
            return False
        elif fault == "hang":
            await _until_closed(reader)
            return False
        elif fault == "stall-headers":
            writer.write(_head(200, "text/event-stream" if stream else "application/json", None))
            await writer.drain()
            await _until_closed(reader)
            return False
        elif fault == "reset-stream":
            events = self.events(anthropic)
            writer.write(_head(200, "text/event-stream", None) + _chunk(b"".join(events[:2])))
            await writer.drain()
            await asyncio.sleep(0.2)
            _reset(writer)
            return False
        elif fault == "trickle":
            if stream:
                data = _head(200, "text/event-stream", None) + _chunk(b"".join(self.events(anthropic))) + b"0\r\n\r\n"
            else:
                body = self.body(anthropic)
                data = _head(200, "application/json", len(body)) + body
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(1)
        elif stream:
            writer.write(_head(200, "text/event-stream", None, closing))
            for event in self.events(anthropic):
                writer.write(_chunk(event))
            writer.write(b"0\r\n\r\n")
        else:
            size = int(fault.rsplit("-", 1)[1]) if fault.startswith("big-") else 0
            send(200, "application/json", self.body(anthropic, size))
        await writer.drain()
        return self.keep_alive

    def body(self, anthropic: bool, size: int = 0) -> bytes:
        """A valid non-stream answer, padded to about `size` bytes."""
        text = self.text + " " * max(0, size - 300)
        if anthropic:
            return json.dumps({"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                               "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                               "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 4}}).encode()
        return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
                           "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                        "finish_reason": "stop", "logprobs": None}],
                           "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}).encode()

    def events(self, anthropic: bool) -> list[bytes]:
        """A valid stream's events."""
        words = self.text.split(" ")
        if anthropic:
            def event(name: str, data: dict[str, Any]) -> bytes:
                return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

            return [
                event("message_start", {"message": {"id": "msg_1", "type": "message", "role": "assistant",
                                                    "model": "m", "content": [], "stop_reason": None,
                                                    "stop_sequence": None,
                                                    "usage": {"input_tokens": 3, "output_tokens": 0}}}),
                event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
                *(event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": w + " "}})
                  for w in words),
                event("content_block_stop", {"index": 0}),
                event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                        "usage": {"output_tokens": 4}}),
                event("message_stop", {}),
            ]
        base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
        return [
            *(b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {"content": w + " "},
                                                           "finish_reason": None}]}).encode() + b"\n\n"
              for w in words),
            b"data: " + json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode()
            + b"\n\n",
            b"data: [DONE]\n\n",
        ]


NGINX_503 = (b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
             b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n<hr><center>nginx</center>\r\n"
             b"</body>\r\n</html>\r\n")


def _head(status: int, kind: str, length: int | None, extra: str = "") -> bytes:
    framing = f"content-length: {length}" if length is not None else "transfer-encoding: chunked"
    return f"HTTP/1.1 {status} X\r\ncontent-type: {kind}\r\n{framing}\r\n{extra}\r\n".encode()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _until_closed(reader: asyncio.StreamReader) -> None:
    """Holds the connection, answering nothing, until the proxy closes it."""
    while await reader.read(65536):
        pass


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed process or a killed load balancer connection does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextmanager
def serve_faults() -> Iterator[FaultyUpstream]:
    """The faulty upstream on 127.0.0.1 in its own loop thread; its connections are aborted at the end."""
    upstream = FaultyUpstream()
    runner = LoopThread()
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await upstream.handle(reader, writer)
        finally:
            tasks.discard(task)

    async def start() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    async def stop(server: asyncio.Server) -> None:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    server = runner.run(start())
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: connections to it are refused
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    upstream.refusing_url = f"http://127.0.0.1:{refusing.getsockname()[1]}/v1"
    try:
        yield upstream
    finally:
        refusing.close()
        runner.run(stop(server))
        runner.stop()
