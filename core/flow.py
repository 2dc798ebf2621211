"""The per-request object every filter sees: the request, what filters learned, and the response so far."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.upstream import Target


class Flow:
    """One request through one listener. Filters share state on it, never through each other."""

    __slots__ = (
        "request_id", "listener", "api", "method", "path", "client", "headers", "_body", "_json",
        "model", "stream", "targets", "served_by", "principal", "session_id", "route", "annotations",
        "state", "extra_headers", "response_status", "response_headers", "usage", "details", "attempts",
        "started",
    )

    def __init__(
        self,
        *,
        request_id: str,
        listener: str,
        api: str,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        json_body: dict[str, Any],
        client: tuple[str, int] | None = None,
        started: float = 0.0,
    ) -> None:
        self.request_id = request_id
        self.listener = listener
        #: The API shape the client speaks ("openai" or "anthropic"): errors are rendered in it.
        self.api = api
        self.method = method
        self.path = path
        self.client = client
        #: Request headers, lower-cased names. Filters may change them before dispatch.
        self.headers = headers
        self._body: bytes | None = body
        self._json = json_body
        model = json_body.get("model")
        #: The model the client asked for, as written ("auto" and None mean: let the router decide).
        self.model: str | None = model if isinstance(model, str) and model else None
        self.stream = json_body.get("stream") is True
        #: Upstream candidates in the order they are tried; set by model resolution and the router.
        self.targets: list[Target] = []
        self.served_by: Target | None = None
        #: Who is calling (set by auth), the session (set by session), the chosen route (set by router).
        self.principal: Any = None
        self.session_id: str | None = None
        self.route: str | None = None
        #: Facts for traces, metrics and the access log (guardrail flags, router fallbacks...).
        self.annotations: dict[str, Any] = {}
        #: Per-filter scratch space, keyed by filter name.
        self.state: dict[str, Any] = {}
        #: Headers added to whatever response the client gets (also local replies and errors).
        self.extra_headers: dict[str, str] = {}
        self.response_status: int | None = None
        self.response_headers: dict[str, str] = {}
        #: OpenAI-shaped usage of the response, when a filter or the core parsed it.
        self.usage: dict[str, Any] | None = None
        #: The details code of the outcome when it was not a plain upstream answer.
        self.details: str | None = None
        self.attempts = 0
        self.started = started

    @property
    def json(self) -> dict[str, Any]:
        """The parsed request body. After changing it in place, call ``json_changed()``."""
        return self._json

    @json.setter
    def json(self, value: dict[str, Any]) -> None:
        self._json = value
        self.json_changed()

    def json_changed(self) -> None:
        self._body = None
        model = self._json.get("model")
        self.model = model if isinstance(model, str) and model else None
        self.stream = self._json.get("stream") is True

    @property
    def body_modified(self) -> bool:
        return self._body is None

    @property
    def body(self) -> bytes:
        """The bytes to send upstream: the client's own bytes unless a filter changed the JSON."""
        if self._body is None:
            self._body = encode_json(self._json)
        return self._body

    def last_user_text(self) -> str:
        """Text of the latest user message (OpenAI or Anthropic shape), for filters that inspect prompts."""
        for message in reversed(self._json.get("messages") or []):
            if isinstance(message, dict) and message.get("role") == "user":
                return content_text(message.get("content"))
        return ""


def encode_json(value: Any) -> bytes:
    """The wire form of every JSON body and event the proxy writes itself: compact UTF-8."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def content_text(content: Any) -> str:
    """The text of a message content given as a string or a list of parts (OpenAI and Anthropic)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""
