"""The filter contract: a filter's phases, the LocalReply that stops a request, and what a factory is given."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from core.state import State

if TYPE_CHECKING:
    from core.config import Config, Listener
    from core.flow import Flow
    from core.target import Target


@dataclass(frozen=True)
class LocalReply:
    """Returned by a filter to answer a request itself (Envoy's local reply).

    ``body`` is a message (rendered in the API's own error shape, with ``details`` as its code) or a dict
    sent as JSON as it is. ``details`` is a stable dotted code (``auth.invalid_key``) that also reaches the
    access log and the span.
    """

    status: int
    body: str | Mapping[str, Any]
    details: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FilterContext:
    """What a filter factory may look at: the whole validated config and the listener it is built for."""

    config: Config
    listener: Listener
    #: Resolves a model name (provider/id, bare id, alias) to its upstream target, None when unknown.
    resolve_model: Callable[[str | None], Target | None]
    #: The runtime's state, one per loaded config: where filters of several listeners share what they build
    #: (``context.state.get("routing.backend", build)``) and the plugin's hooks find it again.
    state: State = field(default_factory=State)


class Filter:
    """Base class for filters. Override the phases you need; every phase is optional.

    One instance serves every request of its listener (build shared resources in ``start``); per-request
    data lives on the flow, under ``flow.state[self.name]`` by convention.
    """

    name: str = ""
    #: Set when the filter must see whole response bodies (to block output); the core then buffers the
    #: upstream body up to ``limits.max_buffered_response_bytes`` before calling ``on_response_chunk``.
    buffers_response: bool = False
    #: Set by filters that authenticate callers (set ``flow.principal``). On their listeners a request that
    #: has no principal learns no model names (a 404 lists none).
    authenticates: bool = False

    async def start(self) -> None:
        """Open resources (connections, models). Called once per worker before serving."""

    async def close(self) -> None:
        """Release what ``start`` opened. Called once per worker after draining."""

    async def on_request(self, flow: Flow) -> LocalReply | None:
        """Inspect or change the request (``flow.json``, ``flow.headers``); runs in YAML order, before any model
        is resolved. State where the request should go on the flow's intent fields (``flow.principal``,
        ``flow.pin``, ``flow.route``, or the model in ``flow.json``); the core turns them into
        ``flow.targets`` after the last filter (``core.resolve`` documents the precedence).
        """
        return None

    async def on_upstream_request(self, flow: Flow, target: Target) -> LocalReply | None:
        """Just before each upstream attempt, after routing (Envoy's upstream filters), in YAML order.

        The route (``flow.route``) and the model and deployment this attempt goes to (``target``: a retry,
        another deployment or a fallback model each call this again) are known here. A LocalReply before the
        request's first attempt stops it; after an attempt failed, it skips this model (the core tries the next
        target, notes ``flow.annotations["skipped"]``, and the last upstream answer stays the client's).
        """
        return None

    async def on_response(self, flow: Flow) -> LocalReply | None:
        """The upstream's status and headers are known (``flow.response_status``); runs in reverse order."""
        return None

    async def on_response_chunk(self, flow: Flow, chunk: bytes, end: bool) -> bytes | LocalReply:
        """Each body chunk as it arrives, in reverse order; return the bytes to pass on (b"" holds them back).

        Returning a LocalReply stops the response: before any byte reached the client it becomes the
        response; on a stream already started the core ends it with an error event.
        """
        return chunk

    async def on_complete(self, flow: Flow, error: BaseException | None) -> None:
        """Always called once the request is over, in reverse order, also after errors and local replies."""
