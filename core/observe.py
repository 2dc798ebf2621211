"""What a finished request leaves behind: its JSON access-log line and the attributes of its spans."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from core.asgi import Message, Send
    from core.flow import Flow

access_log = logging.getLogger("outerloop.access")


def record(flow: Flow, error: BaseException | None) -> dict[str, Any]:
    """The facts of one request. Never headers or bodies: nothing here can carry a secret or a prompt."""
    principal = getattr(flow.principal, "name", None)
    served = flow.served_by
    usage = flow.usage or {}
    return {
        "request_id": flow.request_id,
        "listener": flow.listener,
        "api": flow.api,
        "path": flow.path,
        "status": flow.response_status,
        "details": flow.details,
        "model": flow.model,
        "served_by": served.model if served is not None else None,
        "route": flow.route,
        "session_id": flow.session_id,
        "principal": principal,
        "stream": flow.stream,
        "attempts": flow.attempts,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "duration_ms": round((time.perf_counter() - flow.started) * 1000, 3),
        "error": type(error).__name__ if error is not None else None,
    }


def log_access(flow: Flow, error: BaseException | None) -> None:
    access_log.info(json.dumps(record(flow, error), separators=(",", ":")))


def start_upstream_span(tracer: Tracer, flow: Flow) -> Span:
    """The upstream call's span (GenAI semantic conventions), from dispatch to the last byte."""
    span = tracer.start_span(f"chat {flow.model or 'default'}", kind=SpanKind.CLIENT)
    span.set_attribute("gen_ai.operation.name", "chat")
    if flow.model:
        span.set_attribute("gen_ai.request.model", flow.model)
    return span


def propagate(span: Span, headers: MutableMapping[str, str]) -> None:
    """W3C trace context on the upstream request, so a traced upstream joins the same trace."""
    from opentelemetry.propagate import inject

    inject(headers, context=trace.set_span_in_context(span))


def end_upstream_span(span: Span, flow: Flow, error: BaseException | None) -> None:
    served = flow.served_by
    if served is not None:
        span.set_attribute("gen_ai.system", served.provider.provider)
        span.set_attribute("gen_ai.response.model", served.model_id)
        span.set_attribute("server.address", served.upstream.base_url)
    usage = flow.usage or {}
    for key, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                           ("completion_tokens", "gen_ai.usage.output_tokens")):
        if isinstance(usage.get(key), int):
            span.set_attribute(attribute, usage[key])
    if flow.response_status is not None:
        span.set_attribute("http.response.status_code", flow.response_status)
    span.set_attribute("outerloop.attempts", flow.attempts)
    if error is not None:
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
    span.end()


def annotate_server_span(flow: Flow) -> None:
    """Puts what filters learned (route, session, principal, flags) on the request's server span."""
    span = trace.get_current_span()
    if not span.is_recording():
        return
    facts = record(flow, None)
    for key in ("listener", "details", "route", "session_id", "principal", "served_by", "request_id"):
        if facts[key] is not None:
            span.set_attribute(f"outerloop.{key}", facts[key])
    for key, value in flow.annotations.items():
        if isinstance(value, (str, bool, int, float)):
            span.set_attribute(f"outerloop.{key}", value)


def annotating(send: Send, flow: Flow) -> Send:
    """`send`, annotating the server span just before the last body message ends it."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            annotate_server_span(flow)
        await send(message)

    return wrapped
