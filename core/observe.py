"""What a finished request leaves behind: its JSON access-log line and the attributes of its spans."""

from __future__ import annotations

import json
import logging
import logging.handlers
import sys
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from core.asgi import Message, Send
    from core.config import AccessLog
    from core.flow import Flow

access_log = logging.getLogger("outerloop.access")


def record(flow: Flow, error: BaseException | None) -> dict[str, Any]:
    """The facts of one request. Never headers or bodies: nothing here can carry a secret or a prompt."""
    elapsed = time.perf_counter() - flow.started
    served = flow.served_by
    usage = flow.usage or {}
    return {
        # When the request arrived, in UTC.
        "time": datetime.fromtimestamp(time.time() - elapsed, UTC).isoformat(timespec="milliseconds"),
        "request_id": flow.request_id,
        "listener": flow.listener,
        "method": flow.method,
        "path": flow.path,
        "status": flow.response_status,
        "duration_ms": round(elapsed * 1000, 3),
        "model": flow.model,
        "served_by": served.model if served is not None else None,
        "route": flow.route.name if flow.route is not None else None,
        "principal": flow.principal.name if flow.principal is not None else None,
        "session_id": flow.session_id,
        "prompt_tokens": usage.get("prompt_tokens"),
        "completion_tokens": usage.get("completion_tokens"),
        "total_tokens": usage.get("total_tokens"),
        "ttft_ms": flow.ttft_ms,
        "finish_reason": flow.finish_reason,
        "attempts": flow.attempts,
        "details": flow.details,
        "error": type(error).__name__ if error is not None else None,
    }


def log_access(flow: Flow, error: BaseException | None) -> None:
    access_log.info(json.dumps(record(flow, error), separators=(",", ":")))


def open_access_log(settings: AccessLog) -> logging.Handler:
    """Write the access log as bare JSON lines to stdout or a file, and no longer into the log on stderr.

    Undone by `close_access_log`. Until a server opens it (tests, an embedding app), access lines go
    wherever the application's logging sends the `outerloop.access` logger.
    """
    handler: logging.Handler
    if settings.path == "stdout":
        handler = logging.StreamHandler(sys.stdout)
    else:
        # Reopens the file when logrotate moves it; appends, so worker processes can share one file.
        handler = logging.handlers.WatchedFileHandler(settings.path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False
    return handler


def close_access_log(handler: logging.Handler) -> None:
    access_log.removeHandler(handler)
    handler.close()
    if not access_log.handlers:
        access_log.propagate = True
        access_log.setLevel(logging.NOTSET)


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


def annotate_server_span(flow: Flow, span: Span | None = None) -> None:
    """Puts what filters learned (route, session, principal, flags) on the request's server span (the current
    span unless given)."""
    span = span if span is not None else trace.get_current_span()
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
    # The span current now, as the request arrives: by the last body message another may be (an agent's).
    span = trace.get_current_span()

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            annotate_server_span(flow, span)
        await send(message)

    return wrapped


def start_attempt_span(tracer: Tracer, parent: Span, attempt: int, model: str, host: str) -> Span:
    """One upstream attempt (a retry, a failover), a child of the upstream call's span."""
    # Internal: the upstream call's span stays the one client span, the one the upstream's trace context names.
    span = tracer.start_span(f"attempt {attempt} {model}", context=trace.set_span_in_context(parent),
                             kind=SpanKind.INTERNAL)
    span.set_attribute("outerloop.attempt", attempt)
    span.set_attribute("gen_ai.request.model", model)
    span.set_attribute("server.address", host)
    return span


def end_attempt_span(span: Span, status: int | None, reason: str) -> None:
    """`reason`: what the dispatch did with the attempt's outcome (served, retry, failover, failed...)."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    span.set_attribute("outerloop.attempt.reason", reason)
    if reason not in ("served", "answered"):
        span.set_status(Status(StatusCode.ERROR, reason))
    span.end()
