"""The proxy endpoint (Envoy's connection manager): body in, filter chain, upstream dispatch, bytes out."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx

from core import observe
from core.asgi import Receive, Scope, Send
from core.errors import RequestError, error_body
from core.filter import LocalReply
from core.flow import Flow
from core.providers import Adapter
from core.responses import raw_headers, send_body
from core.upstream import RETRYABLE_STATUSES
from core.validation import validate_chat

if TYPE_CHECKING:
    from opentelemetry.trace import Span

    from core.runtime import Runtime
    from core.chain import Chain

log = logging.getLogger("outerloop.proxy")

# Connection-specific headers never cross a proxy (RFC 9110 7.6.1), nor lengths we may invalidate.
_HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade",
    b"proxy-authenticate", b"proxy-authorization", b"content-length", b"date", b"server",
})
_MAX_ERROR_BODY = 1024 * 1024


class ClientGone(Exception):
    """The client closed the connection; the upstream call is abandoned."""


class ProxyEndpoint:
    """POST endpoint for one client API shape (`openai` chat completions or `anthropic` messages)."""

    def __init__(self, runtime: Runtime, api: str) -> None:
        self.runtime = runtime
        self.api = api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "POST":
            body = error_body(self.api, 405, f"method {scope['method']} not allowed on {scope['path']}; use POST",
                              "method_not_allowed")
            await send_body(send, 405, body, [(b"allow", b"POST")])
            return
        runtime = self.runtime
        chain = runtime.chain_for(scope)
        started = time.perf_counter()
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex
        try:
            raw = await _read_body(receive, runtime.config.limits.max_request_body_bytes,
                                   headers.get("content-length"))
            try:
                parsed = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise RequestError(400, f"request body is not valid JSON: {exc}", "invalid_json") from None
            except RecursionError:
                raise RequestError(400, "request body is nested too deeply", "invalid_json") from None
            request_json = validate_chat(parsed, self.api)
        except ClientGone:
            return
        except RequestError as exc:
            await send_body(send, exc.status, error_body(self.api, exc.status, exc.message, exc.code, exc.param),
                            raw_headers({"x-request-id": request_id, **exc.headers}))
            if runtime.access_log or runtime.observers:
                # Refused before a flow existed: still one access-log line and one count.
                refused = Flow(request_id=request_id, listener=chain.listener, api=self.api, method="POST",
                               path=scope["path"], headers={}, body=b"", json_body={}, client=scope.get("client"),
                               started=started)
                refused.response_status, refused.details = exc.status, exc.code
                self._observe(refused, None)
            return
        flow = Flow(request_id=request_id, listener=chain.listener, api=self.api, method="POST",
                    path=scope["path"], headers=headers, body=raw, json_body=request_json, client=scope.get("client"),
                    started=started)
        if runtime.tracer is not None:
            send = observe.annotating(send, flow)
        serving = asyncio.ensure_future(self._serve(flow, chain.chain, send))
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

    async def _serve(self, flow: Flow, chain: Chain, send: Send) -> None:
        error: BaseException | None = None
        response: httpx.Response | None = None
        state = _Sent()
        tracer = self.runtime.tracer
        span = None
        try:
            target = self.runtime.upstreams.resolve(flow.model)
            if target is None and flow.model is not None and flow.model != "auto":
                names = ", ".join(self.runtime.upstreams.names()) or "none configured"
                await self._reply(flow, send, LocalReply(404, f"model {flow.model!r} is not served here "
                                                         f"(available: {names})", "model_not_found"))
                return
            if target is not None:
                flow.targets = [target]
            reply = await chain.on_request(flow)
            if reply is not None:
                await self._reply(flow, send, reply)
                return
            if not flow.targets:
                await self._reply(flow, send, LocalReply(
                    400, "no model given and no default model is configured", "model_required"))
                return
            if tracer is not None:
                span = observe.start_upstream_span(tracer, flow)
            dispatched = await self._dispatch(flow, chain, span)
            if isinstance(dispatched, LocalReply):
                await self._reply(flow, send, dispatched)
                return
            response, adapter = dispatched
            flow.response_status = response.status_code
            if response.status_code >= 400:
                await self._upstream_error(flow, send, response, adapter)
                return
            reply = await chain.on_response(flow)
            if reply is not None:
                await self._reply(flow, send, reply)
                return
            await self._stream(flow, chain, send, response, adapter, state)
        except asyncio.CancelledError as exc:
            error = exc
            raise
        except RequestError as exc:
            error = exc
            await self._fail(flow, send, state, exc.status, exc.message, exc.code)
        except (httpx.TimeoutException, httpx.TransportError) as exc:
            error = exc
            timeout = isinstance(exc, httpx.TimeoutException)
            status, code = (504, "upstream.timeout") if timeout else (502, "upstream.unavailable")
            log.warning("upstream %s for request %s: %s", "timeout" if timeout else "failure", flow.request_id, exc)
            await self._fail(flow, send, state, status, f"upstream {'timed out' if timeout else 'failed'}: {exc}", code)
        except Exception as exc:
            error = exc
            log.exception("request %s failed", flow.request_id)
            await self._fail(flow, send, state, 500, "internal error in the proxy", "core.internal_error")
        finally:
            if response is not None:
                await response.aclose()
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

    async def _dispatch(self, flow: Flow, chain: Chain,
                        span: Span | None = None) -> tuple[httpx.Response, Adapter] | LocalReply:
        """Try each target in order; the next one gets the request after a connect failure or a 429/5xx."""
        targets = flow.targets
        for i, target in enumerate(targets):
            last = i == len(targets) - 1
            reply = await chain.on_upstream_request(flow, target)
            if reply is not None:
                return reply
            adapter = self.runtime.adapter(flow.api, target.upstream.api)
            request = adapter.request(flow, target)
            request.extensions["timeout"] = self.runtime.timeouts[target.model]
            if span is not None:
                observe.propagate(span, request.headers)
            flow.attempts += 1
            try:
                response = await target.upstream.transport.handle_async_request(request)
            except httpx.TransportError as exc:
                if last:
                    raise
                log.warning("model %s failed (%s); trying %s", target.model, exc, targets[i + 1].model)
                continue
            if response.status_code in RETRYABLE_STATUSES and not last:
                log.warning("model %s answered %d; trying %s", target.model, response.status_code,
                            targets[i + 1].model)
                await response.aclose()
                continue
            flow.served_by = target
            return response, adapter
        raise AssertionError("dispatch called without targets")

    async def _stream(self, flow: Flow, chain: Chain, send: Send, response: httpx.Response,
                      adapter: Adapter, state: _Sent) -> None:
        rewrites = adapter.rewrites_body or chain.inspects_body
        headers = _response_headers(response, flow, keep_length=not rewrites)
        body = adapter.body(flow, response)
        if chain.buffers_response:
            body = _buffered(body, self.runtime.config.limits.max_buffered_response_bytes)
        if not chain.inspects_body:
            async for chunk in body:
                if not state.started:
                    await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
                    state.started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        else:
            async for chunk in body:
                out = await chain.on_response_chunk(flow, chunk, False)
                if not await self._emit(flow, send, state, response.status_code, headers, out):
                    return
            out = await chain.on_response_chunk(flow, b"", True)
            if not await self._emit(flow, send, state, response.status_code, headers, out):
                return
        if not state.started:
            await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
            state.started = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _emit(self, flow: Flow, send: Send, state: _Sent, status: int,
                    headers: list[tuple[bytes, bytes]], out: bytes | LocalReply) -> bool:
        if isinstance(out, LocalReply):
            if state.started:
                await self._end_stream_with_error(flow, send, out.status, _message(out), out.details)
            else:
                await self._reply(flow, send, out)
            return False
        if out:
            if not state.started:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                state.started = True
            await send({"type": "http.response.body", "body": out, "more_body": True})
        return True

    async def _upstream_error(self, flow: Flow, send: Send, response: httpx.Response, adapter: Adapter) -> None:
        """Upstream 4xx/5xx pass through with their body, in the client's API shape."""
        data = bytearray()
        async for chunk in response.aiter_raw():
            data += chunk
            if len(data) > _MAX_ERROR_BODY:
                break
        body = adapter.error_body(flow, response.status_code, bytes(data[:_MAX_ERROR_BODY]))
        headers = _response_headers(response, flow, keep_length=False)
        flow.details = f"upstream.http_{response.status_code}"
        headers = [(k, v) for k, v in headers if k != b"content-type"]
        content_type = response.headers.get("content-type", "application/json").encode("latin-1")
        await send_body(send, response.status_code, body, headers, content_type=content_type)

    async def _reply(self, flow: Flow, send: Send, reply: LocalReply) -> None:
        flow.details = reply.details
        flow.response_status = reply.status
        if isinstance(reply.body, str):
            body = error_body(flow.api, reply.status, reply.body, reply.details)
        else:
            body = json.dumps(reply.body).encode()
        headers = {"x-request-id": flow.request_id, **flow.extra_headers, **reply.headers}
        await send_body(send, reply.status, body, raw_headers(headers))

    async def _fail(self, flow: Flow, send: Send, state: _Sent, status: int, message: str, code: str) -> None:
        flow.details = code
        if state.started:
            await self._end_stream_with_error(flow, send, status, message, code)
        else:
            flow.response_status = status
            await send_body(send, status, error_body(flow.api, status, message, code),
                            raw_headers({"x-request-id": flow.request_id, **flow.extra_headers}))

    async def _end_stream_with_error(self, flow: Flow, send: Send, status: int, message: str, code: str) -> None:
        """Headers are gone: end the SSE stream with an error event the SDKs raise on."""
        payload = error_body(flow.api, status, message, code)
        event = (b"event: error\ndata: " if flow.api == "anthropic" else b"data: ") + payload + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": False})


class _Sent:
    __slots__ = ("started",)

    def __init__(self) -> None:
        self.started = False


def _message(reply: LocalReply) -> str:
    return reply.body if isinstance(reply.body, str) else json.dumps(reply.body)


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


async def _buffered(body: AsyncIterator[bytes], cap: int) -> AsyncIterator[bytes]:
    data = bytearray()
    async for chunk in body:
        data += chunk
        if len(data) > cap:
            raise RequestError(502, f"response exceeds the buffer cap of {cap} bytes", "core.response_too_large")
    yield bytes(data)


async def _read_body(receive: Receive, limit: int, length: str | None) -> bytes:
    if length is not None:
        if not length.isdigit():
            raise RequestError(400, "content-length is not a number", "invalid_content_length")
        if int(length) > limit:
            raise RequestError(413, f"request body is larger than the limit of {limit} bytes", "request_too_large")
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"request body is larger than the limit of {limit} bytes", "request_too_large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
