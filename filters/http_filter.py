"""The http_filter: an external service in any language inspects, replaces or rejects requests and responses."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.errors import RequestError
from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.hookspecs import RegisterFilter, hookimpl
from core.validation import validate_body

log = logging.getLogger("outerloop.http_filter")

_MAX_MESSAGE = 500


class HttpFilterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(description="the filter service's endpoint; receives a POST per phase")
    phases: list[Literal["request", "response"]] = Field(default=["request"], min_length=1)
    timeout_seconds: float = Field(default=1.0, gt=0, description="whole call: connect, send, answer")
    connect_timeout_seconds: float = Field(default=0.5, gt=0)
    #: Service down, timing out or answering 5xx: ``fail_open`` passes the request on unchanged,
    #: ``fail_closed`` answers 503 ``http_filter.unavailable``.
    on_error: Literal["fail_open", "fail_closed"] = "fail_closed"
    #: Headers sent to the service (credentials for it, for instance).
    headers: dict[str, str] = {}
    #: Client request headers forwarded to the service (lower-case names).
    forward_headers: list[str] = []
    #: Streamed responses pass untouched, or are buffered (core cap) and sent as text/event-stream.
    streams: Literal["passthrough", "buffer"] = "passthrough"
    max_connections: int = Field(default=64, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
        return value


class _Unavailable(Exception):
    """The service gave no usable answer (transport error, timeout, 5xx, malformed reply)."""


class HttpFilter(Filter):
    def __init__(self, settings: HttpFilterConfig, context: FilterContext) -> None:
        self.settings = settings
        self.request_phase = "request" in settings.phases
        self.response_phase = "response" in settings.phases
        self.buffers_response = self.response_phase and settings.streams == "buffer"
        self.json_cap = context.config.limits.max_buffered_response_bytes
        self.forward = [name.lower() for name in settings.forward_headers]
        parts = urlsplit(settings.url)
        # Logged without userinfo or query string, which may hold credentials.
        self.where = f"{parts.scheme}://{parts.hostname}{':' + str(parts.port) if parts.port else ''}{parts.path}"
        self.client: httpx.AsyncClient | None = None

    @classmethod
    def from_config(cls, settings: HttpFilterConfig, context: FilterContext) -> HttpFilter:
        if "response" in settings.phases:
            return HttpResponseFilter(settings, context)
        return cls(settings, context)

    async def start(self) -> None:
        s = self.settings
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout_seconds, connect=s.connect_timeout_seconds),
            limits=httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_connections),
            trust_env=False, follow_redirects=False,
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    async def on_request(self, flow: Flow) -> LocalReply | None:
        if not self.request_phase:
            return None
        body = flow.body
        try:
            answer = await self._call(flow, "request", body, "application/json")
        except _Unavailable as exc:
            return self._unavailable(flow, "request", exc)
        if isinstance(answer, LocalReply) or answer is None:
            return answer
        try:
            replacement = validate_body(json.loads(answer), flow.endpoint)
        except (ValueError, RequestError) as exc:
            return self._unavailable(flow, "request", _Unavailable(f"replacement is not a valid request: {exc}"))
        # A replacement naming another model is served by it: the core resolves targets after the filters.
        flow.json = replacement
        flow.annotations["http_filter.request"] = "replaced"
        return None

    async def _call(self, flow: Flow, phase: str, body: bytes, content_type: str) -> bytes | LocalReply | None:
        """The service's replacement bytes, None for unchanged (204), or the LocalReply its 4xx asks for."""
        assert self.client is not None, "http_filter used before start()"
        headers = {**self.settings.headers, "content-type": content_type, "x-outerloop-request-id": flow.request_id,
                   "x-outerloop-phase": phase, "x-outerloop-listener": flow.listener, "x-outerloop-api": flow.api}
        if flow.model:
            headers["x-outerloop-model"] = flow.model
        if flow.session_id:
            headers["x-outerloop-session-id"] = flow.session_id
        if phase == "response" and flow.response_status is not None:
            headers["x-outerloop-status"] = str(flow.response_status)
        for name in self.forward:
            if name in flow.headers:
                headers[name] = flow.headers[name]
        try:
            response = await self.client.post(self.settings.url, content=body, headers=headers)
        except httpx.TimeoutException:
            raise _Unavailable("timed out") from None
        except httpx.HTTPError as exc:
            raise _Unavailable(type(exc).__name__) from None
        status = response.status_code
        if status == 204:
            return None
        if status == 200:
            return response.content
        if 400 <= status < 500:
            flow.annotations[f"http_filter.{phase}"] = f"rejected {status}"
            return LocalReply(status, _message(response), "http_filter.rejected")
        raise _Unavailable(f"answered {status}")

    def _unavailable(self, flow: Flow, phase: str, exc: _Unavailable) -> LocalReply | None:
        policy = self.settings.on_error
        flow.annotations[f"http_filter.{phase}"] = f"unavailable ({policy})"
        log.warning("http_filter %s: service at %s failed on the %s phase of request %s (%s); %s",
                    self.name, self.where, phase, flow.request_id, exc, policy)
        if policy == "fail_open":
            return None
        return LocalReply(503, f"the filter service did not answer usably ({exc})", "http_filter.unavailable")


class HttpResponseFilter(HttpFilter):
    """Also sends whole responses: JSON bodies are collected here (core cap); streams per ``streams``."""

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        if flow.stream and not self.buffers_response:
            return chunk
        held: bytearray = flow.state.setdefault(self.name, bytearray())
        held += chunk
        if len(held) > self.json_cap:
            return LocalReply(502, f"response exceeds the buffer cap of {self.json_cap} bytes",
                              "upstream.response_too_large")
        if not end:
            return b""
        body = bytes(held)
        content_type = "text/event-stream" if flow.stream else "application/json"
        try:
            answer = await self._call(flow, "response", body, content_type)
        except _Unavailable as exc:
            reply = self._unavailable(flow, "response", exc)
            return body if reply is None else reply
        if answer is None:
            return body
        if isinstance(answer, LocalReply):
            return answer
        if not flow.stream:
            try:
                if not isinstance(json.loads(answer), dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                reply = self._unavailable(flow, "response", _Unavailable(f"replacement is not JSON: {exc}"))
                return body if reply is None else reply
        flow.annotations["http_filter.response"] = "replaced"
        return answer


def _message(response: httpx.Response) -> str:
    """The service's own words: ``{"error": {"message"}}``, ``{"message"}``, ``{"error": "..."}`` or text."""
    text = response.text
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        for candidate in (error.get("message") if isinstance(error, dict) else error, data.get("message")):
            if isinstance(candidate, str) and candidate:
                return candidate[:_MAX_MESSAGE]
    return text.strip()[:_MAX_MESSAGE] or f"rejected by the filter service ({response.status_code})"


@hookimpl
def outerloop_register_filters(register: RegisterFilter) -> None:
    register("http_filter", HttpFilter.from_config, HttpFilterConfig)
