"""The session filter: a session id per conversation, and trajectory pinning of agentic loops to one model."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.filter import Filter, FilterContext, LocalReply
from core.flow import NO_CONVERSATION_ENDPOINTS, Flow, content_text
from filters.session.store import MemoryPinStore, PinStore, RedisPinStore, StoreUnavailable

log = logging.getLogger("outerloop.session")

_VALID_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# A turn that continues an agentic loop: the model's own output or a tool result comes last.
_CONTINUATION_ROLES = frozenset({"tool", "function", "assistant"})


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    header: str = Field(default="x-session-id", min_length=1)
    #: Without the header, derive an id from the first system and first user message (and the principal).
    derive: bool = True
    #: Echo the session id to the client in ``header``.
    echo: bool = True
    pinning: bool = True
    #: Idle time after which a pin is forgotten (every use refreshes it).
    pin_ttl_seconds: float = Field(default=1800.0, gt=0)
    #: When true, a continuation that names a model explicitly (not "auto") is not forced onto the pin.
    respect_explicit_model: bool = False
    backend: Literal["memory", "redis"] = "memory"
    max_sessions: int = Field(default=100_000, gt=0)
    redis_url: str | None = None
    redis_timeout_seconds: float = Field(default=0.25, gt=0)
    key_prefix: str = "outerloop:session:pin:"
    #: Store down: ``fail_open`` serves without the pin, ``fail_closed`` answers 503 ``session.unavailable``.
    on_store_error: Literal["fail_open", "fail_closed"] = "fail_open"

    @model_validator(mode="after")
    def _redis_needs_url(self) -> SessionConfig:
        if self.backend == "redis" and not self.redis_url:
            raise ValueError("backend: redis needs redis_url (redis://host:port/db)")
        return self


class SessionFilter(Filter):
    def __init__(self, settings: SessionConfig, context: FilterContext) -> None:
        self.settings = settings
        self.header = settings.header.lower()
        self.store: PinStore | None = None
        self._last_warning = 0.0

    @classmethod
    def from_config(cls, settings: SessionConfig, context: FilterContext) -> SessionFilter:
        return cls(settings, context)

    async def start(self) -> None:
        s = self.settings
        if not s.pinning:
            return
        if s.backend == "redis":
            assert s.redis_url is not None
            self.store = RedisPinStore(s.redis_url, s.pin_ttl_seconds, s.redis_timeout_seconds, s.key_prefix)
        else:
            self.store = MemoryPinStore(s.pin_ttl_seconds, s.max_sessions)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def on_request(self, flow: Flow) -> LocalReply | None:
        if flow.endpoint in NO_CONVERSATION_ENDPOINTS:
            return None  # an embedding or a count neither follows a session's pin nor sets it
        session_id, derived = self._session_id(flow)
        if session_id is None:
            if derived is False:
                return LocalReply(400, f"header {self.header} must be 1-128 characters of letters, digits and "
                                       "._:@/+=-", "session.invalid_id")
            return None
        flow.session_id = session_id
        if self.settings.echo:
            flow.extra_headers[self.header] = session_id
        continuation = _is_continuation(flow.json.get("messages"))
        state: dict[str, Any] = {"id": session_id, "derived": derived, "continuation": continuation,
                                 "pinned": False}
        flow.state[self.name] = state
        if self.store is None or not continuation:
            return None
        if self.settings.respect_explicit_model and flow.model not in (None, "auto"):
            return None
        try:
            model = await self.store.get(session_id)
        except StoreUnavailable as exc:
            return self._store_failed(flow, exc)
        if model is None:
            return None
        # Intent only: the core puts the pinned model first when it resolves targets (core.resolve).
        flow.pin = model
        state["pinned"] = True
        flow.annotations["session.pinned"] = True
        flow.annotations["session.pinned_model"] = model
        return None

    async def on_response(self, flow: Flow) -> LocalReply | None:
        # Pinned before the client sees a byte: an agent that answers a tool call at once must find the pin.
        state = flow.state.get(self.name)
        served = flow.served_by
        if self.store is None or state is None or served is None:
            return None
        if flow.response_status is not None and flow.response_status >= 400:
            return None
        if state["pinned"] and flow.pin == served.model:
            return None  # the pin was read (and its idle TTL refreshed) for this very request
        try:
            await self.store.set(state["id"], served.model)
        except StoreUnavailable as exc:
            self._warn(f"session store unavailable ({exc}); pin for request {flow.request_id} not saved")
        return None

    def _session_id(self, flow: Flow) -> tuple[str | None, bool | None]:
        """(id, derived); (None, False) for a malformed header, (None, None) when there is no session."""
        given = flow.headers.get(self.header)
        if given is not None:
            given = given.strip()
            return (given, False) if _VALID_ID.fullmatch(given) else (None, False)
        if not self.settings.derive:
            return None, None
        messages = flow.json.get("messages") or []
        system = flow.json.get("system")
        first_system = content_text(system) if system is not None else _first(messages, ("system", "developer"))
        first_user = _first(messages, ("user",))
        if not first_system and not first_user:
            return None, None
        who = flow.principal.name if flow.principal is not None else ""
        digest = hashlib.sha256("\x1f".join((flow.listener, who, first_system, first_user)).encode())
        return "s-" + digest.hexdigest()[:32], True

    def _store_failed(self, flow: Flow, exc: StoreUnavailable) -> LocalReply | None:
        if self.settings.on_store_error == "fail_closed":
            self._warn(f"session store unavailable ({exc}); failing closed with 503")
            return LocalReply(503, "session store unavailable; try again shortly", "session.unavailable")
        flow.annotations["session.store_error"] = True
        self._warn(f"session store unavailable ({exc}); serving without pins (fail_open)")
        return None

    def _warn(self, message: str) -> None:
        # One line per few seconds is clear enough; one per request would flood the log during an outage.
        now = time.monotonic()
        if now - self._last_warning >= 5.0:
            self._last_warning = now
            log.warning(message)


def _first(messages: list[Any], roles: tuple[str, ...]) -> str:
    for message in messages:
        if isinstance(message, dict) and message.get("role") in roles:
            return content_text(message.get("content"))
    return ""


def _is_continuation(messages: Any) -> bool:
    """True when the last message is a tool result or the model's own turn, not a new user turn."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
        return False
    last = messages[-1]
    if last.get("role") in _CONTINUATION_ROLES:
        return True
    content = last.get("content")
    # Anthropic carries tool results in a user message made only of tool_result blocks.
    return (last.get("role") == "user" and isinstance(content, list) and bool(content)
            and all(isinstance(p, dict) and p.get("type") == "tool_result" for p in content))
