"""A listener's filter chain: requests forward in YAML order, responses in reverse, on_complete always."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from core.filter import Filter, LocalReply
from core.flow import Flow

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from core.target import Target

log = logging.getLogger("outerloop.chain")

#: Core work between the authenticating filters and the others (``Chain.on_request``).
AfterAuth = Callable[[Flow], Awaitable[LocalReply | None]]


def _overrides(flt: Filter, phase: str) -> bool:
    return getattr(type(flt), phase) is not getattr(Filter, phase)


class Chain:
    """Runs each phase over only the filters that implement it, so unused phases cost nothing."""

    def __init__(self, filters: Sequence[Filter], tracer: Tracer | None = None) -> None:
        self.filters = list(filters)
        #: With a tracer, each filter's request phase gets its own span (the untraced path stays bare).
        self.tracer = tracer
        backwards = self.filters[::-1]
        self._request = [f for f in self.filters if _overrides(f, "on_request")]
        self._upstream = [f for f in self.filters if _overrides(f, "on_upstream_request")]
        self._response = [f for f in backwards if _overrides(f, "on_response")]
        self._chunk = [f for f in backwards if _overrides(f, "on_response_chunk")]
        self._complete = [f for f in backwards if _overrides(f, "on_complete")]
        # The request phase split after the last authenticating filter (``on_request``'s ``after_auth``).
        split = max((i + 1 for i, f in enumerate(self._request) if f.authenticates), default=0)
        self._until_auth, self._after_auth = self._request[:split], self._request[split:]
        #: True when some filter must see whole response bodies (the core buffers under a cap).
        self.buffers_response = any(f.buffers_response for f in self.filters)
        #: True when some filter sets ``flow.principal``: a request without one learns no model names.
        self.authenticates = any(f.authenticates for f in self.filters)

    @property
    def inspects_body(self) -> bool:
        return bool(self._chunk)

    async def on_request(self, flow: Flow, after_auth: AfterAuth | None = None) -> LocalReply | None:
        """The request phase in order. ``after_auth`` runs once the authenticating filters did (at once on a
        listener without them): for what the core may do only for a known caller (a stored conversation)."""
        if after_auth is None:
            return await self._on_request(flow, self._request)
        reply = await self._on_request(flow, self._until_auth)
        if reply is None:
            reply = await after_auth(flow)
            if reply is not None:
                flow.details = reply.details
                return reply
            reply = await self._on_request(flow, self._after_auth)
        return reply

    async def _on_request(self, flow: Flow, filters: Sequence[Filter]) -> LocalReply | None:
        if self.tracer is not None:
            return await self._on_request_traced(flow, self.tracer, filters)
        for flt in filters:
            reply = await flt.on_request(flow)
            if reply is not None:
                flow.details = reply.details
                return reply
        return None

    async def _on_request_traced(self, flow: Flow, tracer: Tracer, filters: Sequence[Filter]) -> LocalReply | None:
        for flt in filters:
            with tracer.start_as_current_span(f"filter {flt.name}") as span:
                span.set_attribute("outerloop.filter", flt.name)
                reply = await flt.on_request(flow)
                if reply is not None:
                    flow.details = reply.details
                    span.set_attribute("outerloop.details", reply.details)
                    span.set_attribute("http.response.status_code", reply.status)
                    return reply
        return None

    async def authenticate(self, flow: Flow) -> LocalReply | None:
        """Only the authenticating filters' ``on_request``: for endpoints beside the proxy's (``/v1/models``,
        ``/metrics``), which a listener's auth guards like the proxy endpoints."""
        for flt in self._request:
            if flt.authenticates:
                reply = await flt.on_request(flow)
                if reply is not None:
                    flow.details = reply.details
                    return reply
        return None

    async def on_upstream_request(self, flow: Flow, target: Target) -> LocalReply | None:
        for flt in self._upstream:
            reply = await flt.on_upstream_request(flow, target)
            if reply is not None:
                flow.details = reply.details
                return reply
        return None

    async def on_response(self, flow: Flow) -> LocalReply | None:
        for flt in self._response:
            reply = await flt.on_response(flow)
            if reply is not None:
                flow.details = reply.details
                return reply
        return None

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        for flt in self._chunk:
            out = await flt.on_response_chunk(flow, chunk, end)
            if isinstance(out, LocalReply):
                flow.details = out.details
                return out
            chunk = out
            # A filter holding bytes back still gets later filters' end-of-stream call.
            if not chunk and not end:
                return b""
        return chunk

    async def on_complete(self, flow: Flow, error: BaseException | None) -> None:
        for flt in self._complete:
            try:
                await flt.on_complete(flow, error)
            except Exception:
                # on_complete is bookkeeping: one failing filter must not skip the others' cleanup.
                log.exception("filter %s failed in on_complete (request %s)", flt.name, flow.request_id)

    async def start(self) -> None:
        for flt in self.filters:
            await flt.start()

    async def close(self) -> None:
        for flt in self.filters:
            try:
                await flt.close()
            except Exception:
                log.exception("filter %s failed to close", flt.name)
