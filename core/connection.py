"""Client connections: sockets closed when the client leaves, deadlines for a request's headers and body."""

from __future__ import annotations

import asyncio
from ssl import SSLError
from typing import Any

import hypercorn.asyncio.run
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config as HypercornConfig
from hypercorn.events import Closed, RawData

from core.asgi import ASGIApp, Message, Receive, Scope, Send
from core.errors import error_body
from core.responses import send_body


class ServerConfig(HypercornConfig):
    """hypercorn's Config plus the header deadline that :class:`ClientConnection` enforces."""

    #: Seconds a request line and its headers may take: from the accept on a new connection, from the
    #: first byte of the next request on a kept-alive one.
    header_timeout: float = 10.0


class ClientConnection(TCPServer):
    """hypercorn's TCP connection (0.18) with what outerloop needs of it; installed by :func:`install`.

    - **The socket closes when the client does.** hypercorn closes a connection's socket only when the
      connection's task group ends, and its keep-alive timer runs in that group: a client closing an idle
      kept-alive connection left the socket in CLOSE_WAIT for the whole keep-alive time (hundreds of fds
      under connection churn). Reading the client's EOF now stops the timer, so the group ends with the
      request it was serving, if any, and the socket closes.
    - **Headers have a deadline.** hypercorn's keep-alive timer runs until a request's headers are parsed,
      so a client trickling header lines held the connection for the keep-alive time. Here the keep-alive
      time covers only the wait for the next request's first byte; the headers then get ``header_timeout``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._received = asyncio.Event()
        self._first_request = True

    async def _read_data(self) -> None:
        # hypercorn's loop, noting each read for the header deadline.
        while not self.reader.at_eof():
            try:
                data = await asyncio.wait_for(self.reader.read(MAX_RECV), self.config.read_timeout)
            except (ConnectionError, OSError, asyncio.TimeoutError, SSLError):
                break
            self._received.set()
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())
        # No request can follow the client's EOF: the keep-alive timer must not hold the socket open.
        await self.idle_task.stop()

    async def _idle_timeout(self) -> None:
        config = self.config
        header_timeout = config.header_timeout if isinstance(config, ServerConfig) else config.keep_alive_timeout
        terminated = self.context.terminated
        first, self._first_request = self._first_request, False
        # Restarted after a response that ended as the client left: nothing to wait for.
        if not self.reader.at_eof():
            if first:
                await _wait_any(header_timeout, terminated.wait())
            else:
                self._received.clear()
                await _wait_any(config.keep_alive_timeout, self._received.wait(), terminated.wait())
                if self._received.is_set() and not terminated.is_set():
                    # hypercorn cancels this task once the request's headers are parsed.
                    await _wait_any(header_timeout, terminated.wait())
        await asyncio.shield(self._initiate_server_close())


async def _wait_any(timeout: float, *waits: Any) -> None:
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def install() -> None:
    """Make hypercorn's asyncio worker serve connections with :class:`ClientConnection` (idempotent).

    hypercorn builds each connection's server from its module global, with no setting to choose another;
    replacing that global is the smallest change that leaves hypercorn's own code as it is.
    """
    hypercorn.asyncio.run.TCPServer = ClientConnection  # type: ignore[attr-defined]


#: The scope key set when the body deadline answered the request with a 408.
BODY_TIMED_OUT = "outerloop.body_timed_out"


class BodyDeadline:
    """Pure ASGI: a request's body must arrive whole within ``timeout`` seconds of its headers.

    A client trickling its body is answered 408 ``request.body_timeout`` (the connection then closes, as its
    unread body leaves it unusable) and the app sees ``http.disconnect``. Reads after the body (an app
    watching for the client leaving) have no deadline.
    """

    def __init__(self, app: ASGIApp, timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _BodyDeadlineResponder(self.app, asyncio.get_running_loop().time() + self.timeout)(scope, receive, send)


class _BodyDeadlineResponder:
    """One request's side of :class:`BodyDeadline`: whether its body is complete, its response started."""

    def __init__(self, app: ASGIApp, deadline: float) -> None:
        self.app = app
        self.deadline = deadline
        self.body_done = False
        self.started = False
        self.timed_out = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        await self.app(scope, self.receive_with_deadline, self.send_unless_timed_out)

    async def receive_with_deadline(self) -> Message:
        if self.body_done:
            return await self.receive()
        try:
            async with asyncio.timeout_at(self.deadline):
                message = await self.receive()
        except TimeoutError:
            self.body_done = True
            if not self.started:
                self.started = self.timed_out = True
                # For the app, which sees the client leave: it logs and counts the request as refused with a 408.
                self.scope[BODY_TIMED_OUT] = True
                path = str(self.scope.get("path", ""))
                api = "anthropic" if path.startswith("/v1/messages") else "openai"
                body = error_body(api, 408, "the request body did not arrive in time", "request.body_timeout")
                await send_body(self.send, 408, body, [(b"connection", b"close")])
            return {"type": "http.disconnect"}
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send_unless_timed_out(self, message: Message) -> None:
        if self.timed_out:
            return
        if message["type"] == "http.response.start":
            self.started = True
        await self.send(message)
