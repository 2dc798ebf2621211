"""The proxy endpoint (Envoy's connection manager): body in, filter chain, upstream dispatch, bytes out."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from core import observe
from core.asgi import Receive, Scope, Send
from core.responses_api import call as responses
from core.balancing import Deployment
from core.connection import BODY_TIMED_OUT
from core.dispatch import dispatch
from core.errors import RequestError
from core.exchange import Exchange
from core.filter import LocalReply
from core.flow import Flow, repeated_header
from core.providers import Adapter
from core.resolve import resolve_targets
from core.responses import raw_headers
from core.upstream_errors import MAX_ERROR_BODY, error_answer, invalid_response, parse_object
from core.usage import UsageMeter
from core.validation import parse_body, validate_body

if TYPE_CHECKING:
    from core.chain import Chain
    from core.runtime import Runtime

log = logging.getLogger("outerloop.proxy")

# Connection-specific headers never cross a proxy (RFC 9110 7.6.1), nor lengths we may invalidate.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization", b"content-length", b"date", b"server",
})


class ClientGone(Exception):
    """The client closed the connection; the upstream call is abandoned."""


class ProxyEndpoint:
    """POST endpoint for one client API shape (`openai` chat completions or `anthropic` messages).

    The request path, in this order (docs/request-path.md): read and validate the body -> ``on_request``
    filters -> the core resolves targets from what they stated (``core.resolve``) -> per attempt
    ``on_upstream_request`` and the upstream call -> ``on_response`` -> body or stream, metered for usage,
    through ``on_response_chunk`` -> ``on_complete`` and the observers. Stateless: each request's response
    side is an :class:`~core.exchange.Exchange`.
    """

    def __init__(self, runtime: Runtime, api: str, endpoint: str | None = None) -> None:
        self.runtime = runtime
        self.api = api
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = self.runtime
        chain = runtime.chain_for(scope)
        flow = Flow.of_request(scope, chain.listener, self.api, self.endpoint)
        if runtime.tracer is not None:
            send = observe.annotating(send, flow)
        exchange = Exchange(flow, send)
        try:
            if scope["method"] != "POST":
                raise RequestError(405, f"method {scope['method']} not allowed on {scope['path']}; use POST",
                                   "request.method_not_allowed", headers={"allow": "POST"})
            repeated = repeated_header(scope["headers"], flow.headers)
            if repeated is not None:
                raise RequestError(400, f"header {repeated} is given more than once", "request.duplicate_header")
            raw = await _read_body(receive, runtime.config.limits.max_request_body_bytes,
                                   flow.headers.get("content-length"))
            if flow.endpoint == "responses":
                responses.begin(flow, parse_body(raw), runtime.responses_store)
            else:
                flow.set_request(raw, validate_body(parse_body(raw), flow.endpoint))
        except ClientGone:
            if scope.get(BODY_TIMED_OUT):
                # The server's body deadline answered it (core.connection): one access-log line and one count.
                flow.response_status = 408
                flow.details = "request.body_timeout"
                self._observe(flow, None)
            return
        except RequestError as exc:
            # Refused before any filter ran: still one access-log line and one count.
            await exchange.reply(exc.status, exc.message, exc.code, exc.headers, exc.param)
            self._observe(flow, None)
            return
        serving = asyncio.ensure_future(self._serve(exchange, chain.chain))
        watching = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((serving, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not serving.done():
                # The client left (or we are being cancelled): stop the upstream call and its stream.
                serving.cancel()
            watching.cancel()
            try:
                await serving
            except asyncio.CancelledError:
                pass

    async def _serve(self, exchange: Exchange, chain: Chain) -> None:
        flow = exchange.flow
        runtime = self.runtime
        error: BaseException | None = None
        response: httpx.Response | None = None
        meter: UsageMeter | None = None
        span = None
        deadline: asyncio.Timeout | None = None
        served: Deployment | None = None
        try:
            after_auth = responses.continue_conversation if flow.conversation is not None else None
            reply = await chain.on_request(flow, after_auth)
            # Targets set before the chain ran (an agent listener's agent) stand; else the core resolves them.
            if reply is None and not flow.targets:
                reply = resolve_targets(flow, runtime.upstreams, chain.authenticates, runtime.balancers.fallbacks)
            if reply is not None:
                await exchange.local_reply(reply)
                return
            if runtime.tracer is not None:
                span = observe.start_upstream_span(runtime.tracer, flow)
            # The whole upstream exchange, every attempt and the last byte included, within one deadline.
            deadline = asyncio.timeout(flow.targets[0].provider.timeouts.total)
            async with deadline:
                dispatched = await dispatch(runtime, flow, chain, deadline, span)
                if isinstance(dispatched, LocalReply):
                    await exchange.local_reply(dispatched)
                    return
                response, adapter, served = dispatched
                flow.response_status = response.status_code
                if response.status_code >= 400:
                    await self._upstream_error(exchange, response)
                    return
                reply = await chain.on_response(flow)
                if reply is not None:
                    await exchange.local_reply(reply)
                    return
                meter = UsageMeter(flow, strip=_strips_usage(flow, adapter),
                                   cap=runtime.config.limits.max_buffered_response_bytes)
                await self._relay(exchange, chain, response, adapter, meter)
        except asyncio.CancelledError as exc:
            # A client that hangs up once the stream's last event went out is done, not failed.
            if not (exchange.finished or (meter is not None and meter.ended)):
                error = exc
                flow.details = flow.details or "client.disconnected"
            raise
        except RequestError as exc:
            error = exc
            await exchange.reply(exc.status, exc.message, exc.code, exc.headers, exc.param)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = exc
            timeout = isinstance(exc, httpx.TimeoutException)
            # The log has the detail (host, port, library text); the client gets the request id.
            log.warning("request %s: upstream %s: %s: %s", flow.request_id, "timeout" if timeout else "failure",
                        type(exc).__name__, exc)
            status, code, what = (504, "upstream.timeout", "timed out") if timeout else (
                502, "upstream.unavailable", "could not be reached")
            await exchange.reply(status, f"the upstream {what} (request {flow.request_id})", code)
        except Exception as exc:
            error = exc
            if isinstance(exc, TimeoutError) and deadline is not None and deadline.expired():
                total = flow.targets[0].provider.timeouts.total
                log.warning("request %s: the upstream did not finish within timeouts.total (%gs)",
                            flow.request_id, total)
                await exchange.reply(504, f"the upstream did not finish within {total:g}s (request "
                                          f"{flow.request_id})", "upstream.timeout")
            else:
                log.exception("request %s failed", flow.request_id)
                await exchange.reply(500, f"internal error in the proxy (request {flow.request_id})",
                                     "core.internal_error")
        finally:
            if response is not None:
                await response.aclose()
            if served is not None:
                served.outstanding -= 1
            await chain.on_complete(flow, error)
            if span is not None:
                observe.end_upstream_span(span, flow, error)
            self._observe(flow, error)

    def _observe(self, flow: Flow, error: BaseException | None) -> None:
        if self.runtime.access_log:
            observe.log_access(flow, error)
        for observer in self.runtime.observers:
            try:
                observer(flow, error)
            except Exception:
                log.exception("request observer %r failed", observer)

    async def _relay(self, exchange: Exchange, chain: Chain, response: httpx.Response, adapter: Adapter,
                     meter: UsageMeter) -> None:
        """The upstream's body to the client, metered, through the filters that inspect bodies."""
        flow = exchange.flow
        cap = self.runtime.config.limits.max_buffered_response_bytes
        if flow.stream:
            kind = response.headers.get("content-type", "").lower()
            if "json" in kind or "html" in kind:
                raise invalid_response(flow, f"a stream was answered with content-type {kind[:60]!r}")
            body = adapter.body(flow, meter.wrap(response.aiter_raw()))
        else:
            body = await _whole(flow, adapter, meter, response.aiter_raw(), cap)
        encoder = None
        if flow.conversation is not None:
            body, encoder = await responses.client_stage(flow, exchange, adapter, chain.inspects_body, body)
        rewrites = adapter.rewrites_body or chain.inspects_body or meter.strip or encoder is not None
        headers = _response_headers(response, flow, keep_length=not rewrites)
        if chain.buffers_response:
            body = _buffered(body, cap)
        status = response.status_code
        if not chain.inspects_body:
            await exchange.stream(status, headers, body if encoder is None else encoder.wrap(body))
            return
        end = False
        while not end:
            chunk = await anext(body, b"")
            end = not chunk
            out = await chain.on_response_chunk(flow, chunk, end)
            if isinstance(out, LocalReply):
                await exchange.local_reply(out)
                return
            if encoder is not None:
                out = await encoder.step(out, end)
            if out:
                if not exchange.started:
                    await exchange.start(status, headers)
                await exchange.body(out)
        if not exchange.started:
            await exchange.start(status, headers)
        await exchange.end()

    async def _upstream_error(self, exchange: Exchange, response: httpx.Response) -> None:
        """An upstream 4xx/5xx in the client's API shape, its status and headers (Retry-After) kept."""
        flow = exchange.flow
        status = response.status_code
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) >= MAX_ERROR_BODY:
                break
        encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        body = error_answer(flow.api, status, response.headers.get("content-type"),
                            b"" if encoded else bytes(data[:MAX_ERROR_BODY]), flow.agent)
        headers = [(k, v) for k, v in _response_headers(response, flow, keep_length=False)
                   if k not in (b"content-type", b"content-encoding")]
        flow.details = f"upstream.http_{status}"
        await exchange.whole(status, body, headers)


def _strips_usage(flow: Flow, adapter: Adapter) -> bool:
    """True when the proxy asked an OpenAI-shaped stream for usage the client did not ask for."""
    return flow.stream and adapter.requests_stream_usage and not flow.wants_stream_usage


def _response_headers(response: httpx.Response, flow: Flow, keep_length: bool) -> list[tuple[bytes, bytes]]:
    out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in _HOP_BY_HOP]
    if keep_length and "content-length" in response.headers:
        out.append((b"content-length", response.headers["content-length"].encode()))
    if b"x-request-id" not in (k for k, _ in out):
        out.append((b"x-request-id", flow.request_id.encode()))
    if flow.served_by is not None:
        out.append((b"x-outerloop-model", flow.served_by.model.encode()))
    if flow.extra_headers:
        out.extend(raw_headers(flow.extra_headers))
    return out


async def _whole(flow: Flow, adapter: Adapter, meter: UsageMeter, chunks: AsyncIterator[bytes],
                 cap: int) -> AsyncIterator[bytes]:
    """A whole body, read before its headers go out and parsed once: its usage to the meter, the object to the
    adapter, a 502 for garbage. Past the cap a passthrough body goes on unread; a translated one cannot."""
    seen: list[bytes] = []
    size = 0
    async for chunk in chunks:
        seen.append(chunk)
        size += len(chunk)
        if size > cap:
            if adapter.rewrites_body:
                log.warning("request %s: a response body to translate is larger than %d bytes", flow.request_id, cap)
                raise RequestError(502, f"the upstream's response is larger than the cap of {cap} bytes (request "
                                        f"{flow.request_id})", "upstream.response_too_large")
            log.warning("request %s: a response body is larger than %d bytes: passed on unread, its usage not "
                        "counted", flow.request_id, cap)
            return _continued(seen, chunks)
    raw = b"".join(seen)
    body = parse_object(flow, raw)
    meter.whole(body)
    return _once(adapter.whole(flow, body, raw))


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _continued(seen: list[bytes], rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    for chunk in seen:
        yield chunk
    async for chunk in rest:
        yield chunk


async def _buffered(body: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    data = bytearray()
    async for chunk in body:
        data += chunk
        if len(data) > cap:
            raise RequestError(502, f"response exceeds the buffer cap of {cap} bytes", "upstream.response_too_large")
    yield bytes(data)


async def _read_body(receive: Receive, limit: int, length: str | None) -> bytes:
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, "content-length is not a number", "request.invalid_content_length")
        if int(length) > limit:
            raise RequestError(413, f"request body is larger than the limit of {limit} bytes", "request.too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is larger than the limit of {limit} bytes", "request.too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
