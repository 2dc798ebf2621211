"""One request's response side (starlette's GZipResponder is the model): it owns `send` and knows what went out."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping

from core.asgi import Send
from core.errors import error_body
from core.filter import LocalReply
from core.flow import Flow, encode_json
from core.responses import raw_headers, send_body

log = logging.getLogger("outerloop.proxy")


class Exchange:
    """Writes one response: headers once, body chunks, the end; and one ``reply()`` for every error.

    Before the headers went out, ``reply()`` answers with a JSON error in the client's API shape. After
    them, it ends the stream with that API's error event, which the SDKs raise on.
    """

    __slots__ = ("flow", "_send", "started", "finished", "error_event")

    def __init__(self, flow: Flow, send: Send) -> None:
        self.flow = flow
        self._send = send
        #: True once the response's headers were sent.
        self.started = False
        #: True once the response's last byte was sent.
        self.finished = False
        #: The stream's error event for (status, message, details) when the client's API has its own
        #: (the Responses API's ``response.failed``, numbered in its sequence); else the chat or messages one.
        self.error_event: Callable[[int, str, str], bytes] | None = None

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.flow.response_status = status
        await self._send({"type": "http.response.start", "status": status, "headers": headers})
        self.started = True

    async def body(self, chunk: bytes) -> None:
        if self.flow.ttft_ms is None:
            self.flow.ttft_ms = round((time.perf_counter() - self.flow.started) * 1000, 3)
        await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def stream(self, status: int, headers: list[tuple[bytes, bytes]], chunks: AsyncIterator[bytes]) -> None:
        """Headers at the first chunk, then every chunk as it comes, then the end: the path with no filter
        looking at bodies, so one loop with nothing else in it."""
        send = self._send
        async for chunk in chunks:
            if not self.started:
                await self.start(status, headers)
                self.flow.ttft_ms = round((time.perf_counter() - self.flow.started) * 1000, 3)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not self.started:
            await self.start(status, headers)
        await self.end()

    async def end(self) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})
        self.finished = True

    async def whole(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]],
                    content_type: bytes = b"application/json") -> None:
        """A complete response in one go (a local answer or an error passed on)."""
        self.flow.response_status = status
        await send_body(self._send, status, body, headers, content_type=content_type)
        self.started = self.finished = True

    async def reply(self, status: int, message: str, details: str,
                    headers: Mapping[str, str] | None = None, param: str | None = None) -> None:
        """The one way to answer with an error: JSON before the headers, the API's error event after them."""
        flow = self.flow
        flow.details = details
        if self.finished:
            return
        payload = error_body(flow.api, status, message, details, param, flow.agent)
        if not self.started:
            await self.whole(status, payload, self._headers(headers))
            return
        if not flow.stream:
            # A body under way cannot take an error event, and ending it would pass a truncated body off as
            # whole: nothing more is sent, and the server closes the connection when the app returns with the
            # body unfinished (hypercorn: no end of message, so no h11 length error and no traceback).
            log.warning("request %s: response failed after its headers were sent (%s): connection aborted",
                        flow.request_id, details)
            return
        if self.error_event is not None:
            event = self.error_event(status, message, details)
        else:
            event = (b"event: error\ndata: " if flow.api == "anthropic" else b"data: ") + payload + b"\n\n"
        await self._send({"type": "http.response.body", "body": event, "more_body": False})
        self.finished = True

    async def local_reply(self, reply: LocalReply) -> None:
        """A filter's answer: its message in the API's error shape, or its dict as JSON as it is."""
        if isinstance(reply.body, str):
            await self.reply(reply.status, reply.body, reply.details, reply.headers)
            return
        if self.started:
            await self.reply(reply.status, encode_json(dict(reply.body)).decode(), reply.details)
            return
        self.flow.details = reply.details
        await self.whole(reply.status, encode_json(dict(reply.body)), self._headers(reply.headers))

    def _headers(self, extra: Mapping[str, str] | None) -> list[tuple[bytes, bytes]]:
        flow = self.flow
        return raw_headers({"x-request-id": flow.request_id, **flow.extra_headers, **(extra or {})})
