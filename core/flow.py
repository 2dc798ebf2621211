"""The per-request object every filter sees: the request, what filters learned, and the response so far."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.target import Target


class Principal(Protocol):
    """Who is calling, as an authenticating filter (``auth``) sets it on ``flow.principal``.

    The core asks it which models the caller may use: when it resolves targets, when it filters a route's
    models, and when it lists models in a 404.
    """

    @property
    def name(self) -> str: ...

    def may_use(self, model: str) -> bool: ...


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """A router's choice for a request: the route's name and its models, in the order they are tried."""

    name: str
    models: tuple[str, ...]


class Flow:
    """One request through one listener. Filters share state on it, never through each other."""

    __slots__ = (
        "request_id", "listener", "api", "endpoint", "method", "path", "client", "headers", "_body", "_json",
        "model", "stream", "targets", "served_by", "principal", "session_id", "pin", "route", "annotations",
        "state", "extra_headers", "response_status", "response_headers", "usage", "finish_reason", "ttft_ms",
        "details", "attempts", "started", "agent", "conversation",
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
        endpoint: str | None = None,
    ) -> None:
        self.request_id = request_id
        self.listener = listener
        #: The API shape of ``json`` and of the response bodies filters see ("openai" or "anthropic"); errors
        #: are rendered in it.
        self.api = api
        #: The client's endpoint ("chat", "messages", "responses", "embeddings", "count_tokens"): which
        #: adapters serve it. A Responses request is an "openai" flow: ``json`` is its chat-completions form.
        self.endpoint = endpoint or ("messages" if api == "anthropic" else "chat")
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
        self.stream = json_body.get("stream") is True and self.endpoint not in NO_CONVERSATION_ENDPOINTS
        #: Upstream candidates in the order they are tried. Written by the core alone, after the
        #: ``on_request`` filters, from the intent they stated below (see ``core.resolve``).
        self.targets: list[Target] = []
        self.served_by: Target | None = None
        #: Intent stated by filters. Who is calling (auth); the session (session); the model the session is
        #: pinned to (session); the route chosen (router). The core turns these into ``targets``.
        self.principal: Principal | None = None
        self.session_id: str | None = None
        self.pin: str | None = None
        self.route: RouteDecision | None = None
        #: Facts for traces, metrics and the access log (guardrail flags, router fallbacks...).
        self.annotations: dict[str, Any] = {}
        #: Per-filter scratch space, keyed by filter name.
        self.state: dict[str, Any] = {}
        #: Headers added to whatever response the client gets (also local replies and errors).
        self.extra_headers: dict[str, str] = {}
        self.response_status: int | None = None
        self.response_headers: dict[str, str] = {}
        #: Recorded by the core from every response, before its last event reaches the client:
        #: OpenAI-shaped usage, the finish reason (OpenAI's words), and ms to the first body byte sent.
        self.usage: dict[str, int] | None = None
        self.finish_reason: str | None = None
        self.ttft_ms: float | None = None
        #: The details code of the outcome when it was not a plain upstream answer.
        self.details: str | None = None
        self.attempts = 0
        self.started = started
        #: On an agent listener, the agent this flow calls: errors name it.
        self.agent: str | None = None
        #: A Responses request's state (core.responses_api): the client's body, its conversation, the store.
        self.conversation: Any = None

    @classmethod
    def of_request(cls, scope: Mapping[str, Any], listener: str, api: str, endpoint: str | None = None) -> Flow:
        """The flow of an ASGI HTTP request, made as it arrives (before its body is read)."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        return cls(request_id=headers.get("x-request-id") or uuid.uuid4().hex, listener=listener, api=api,
                   method=scope["method"], path=scope["path"], headers=headers, body=b"", json_body={},
                   client=scope.get("client"), started=time.perf_counter(), endpoint=endpoint)

    def set_request(self, body: bytes, json_body: dict[str, Any]) -> None:
        """The client's body, read and validated (the flow exists before, so a refusal is logged like any)."""
        self._json = json_body
        self.json_changed()
        self._body = body

    @property
    def wants_stream_usage(self) -> bool:
        """True when an OpenAI client asked for the usage chunk at the end of its stream."""
        options = self._json.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True

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
        self.stream = self._json.get("stream") is True and self.endpoint not in NO_CONVERSATION_ENDPOINTS

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


#: Endpoints without a conversation (embeddings, token counts): answered whole (a `stream` field is the
#: upstream's to judge), neither routed nor pinned to a session: they go to the model they name.
NO_CONVERSATION_ENDPOINTS = frozenset({"embeddings", "count_tokens"})
#: Headers a request may carry once: with two, the proxy, its filters and the upstream could each read another.
SINGLE_VALUE_HEADERS = frozenset({b"authorization", b"x-api-key", b"content-length"})


def repeated_header(raw: Sequence[tuple[bytes, bytes]], decoded: Mapping[str, str]) -> str | None:
    """The first of ``SINGLE_VALUE_HEADERS`` that the ASGI headers ``raw`` repeat, None when none is.

    ``decoded`` is the same headers as a dict: only when a name collapsed there is there anything to find.
    """
    if len(decoded) == len(raw):
        return None
    seen: set[bytes] = set()
    for name, _ in raw:
        name = name.lower()
        if name in SINGLE_VALUE_HEADERS:
            if name in seen:
                return name.decode("latin-1")
            seen.add(name)
    return None


def encode_json(value: Any) -> bytes:
    """The wire form of every JSON body and event the proxy writes itself: compact UTF-8."""
    # An upstream's lone surrogate (JSON "\ud800") cannot be UTF-8: written back as the same JSON escape.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "backslashreplace")


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
