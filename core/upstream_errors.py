"""Upstream answers the client cannot use as they are: errors reshaped to the client's API, garbage refused."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from core.errors import RequestError, error_body
from core.flow import Flow

log = logging.getLogger("outerloop.proxy")

#: The most of an upstream's error message passed on; the log line has the request id for the rest.
MAX_MESSAGE = 300
#: The most of an upstream's error body read: enough for any JSON error, bounded for a runaway one.
MAX_ERROR_BODY = 64 * 1024
# Control characters (C0 but tab and newline, DEL, C1) never reach a client's terminal or log.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def error_answer(api: str, status: int, content_type: str | None, body: bytes, agent: str | None = None) -> bytes:
    """An upstream's 4xx/5xx in the client's API shape, details ``upstream.http_<status>``.

    The upstream's own message is kept when it is text in a JSON error (OpenAI's ``error.message``,
    Anthropic's, vLLM's ``message``, FastAPI's ``detail``), control characters removed and truncated;
    an HTML page or a binary body is named by its content type, never echoed.
    """
    message, param = _message(body)
    if message is None:
        message = f"the upstream answered {status} ({content_type or 'no content type'})"
    return error_body(api, status, message, f"upstream.http_{status}", param, agent)


def _message(body: bytes) -> tuple[str | None, str | None]:
    if body.lstrip()[:1] != b"{":
        return None, None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(data, dict):
        return None, None
    error = data.get("error")
    param = code = None
    if isinstance(error, dict):
        message: object = error.get("message")
        param = error.get("param")
        code = error.get("code") or error.get("type")
    else:
        message = error
    for key in ("message", "detail"):
        if not isinstance(message, str) or not message.strip():
            message = data.get(key)
    if not isinstance(message, str) or not message.strip():
        return None, None
    if isinstance(code, str) and code.strip():
        # Clients that act on the provider's code (context_length_exceeded) still find it in the message.
        message = f"{message} (upstream code: {code})"
    return _safe(message), (_safe(param) if isinstance(param, str) and param else None)


def _safe(text: str) -> str:
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE - 1] + "…"


def invalid_response(flow: Flow, what: str) -> RequestError:
    """A 502 ``upstream.invalid_response`` for an upstream answer the proxy cannot read; one log line says why."""
    log.warning("request %s: invalid upstream response: %s", flow.request_id, what)
    return RequestError(502, f"the upstream's response could not be read (request {flow.request_id})",
                        "upstream.invalid_response")


def parse_object(flow: Flow, body: bytes) -> dict[str, Any]:
    """A whole JSON body the proxy must read, parsed once; anything but a JSON object is a 502."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise invalid_response(flow, f"the body is not JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(obj, dict):
        raise invalid_response(flow, f"the body is JSON but not an object ({type(obj).__name__})")
    return obj
