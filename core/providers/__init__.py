"""Upstream provider adapters: how each API family is called and how its answers reach the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import httpx

    from core.flow import Flow
    from core.target import Target


class Adapter(Protocol):
    """Translates between the API a client speaks and the API an upstream speaks."""

    #: True when bodies are rewritten, so the upstream's content-length no longer applies.
    rewrites_body: bool
    #: True when the request asks an OpenAI-shaped stream for a usage chunk the client then must not see.
    requests_stream_usage: bool

    def request(self, flow: Flow, target: Target) -> httpx.Request: ...

    def body(self, flow: Flow, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The client's stream from the upstream's (already metered) stream chunks; a passthrough adapter
        also gets the chunks of a whole body too large to be read (``limits.max_buffered_response_bytes``)."""
        ...

    def whole(self, flow: Flow, body: dict[str, Any], raw: bytes) -> bytes:
        """The client's body from the upstream's whole body, parsed once by the core (``raw`` as received)."""
        ...


#: The response header naming the request fields an adapter left out: the upstream's API cannot express them.
DROPPED_HEADER = "x-outerloop-dropped"


def note_dropped(flow: Flow, dropped: list[str]) -> None:
    """States an attempt's dropped fields on the flow: ``annotations["dropped"]`` (spans, access log) and the
    header every response of the request carries (``flow.extra_headers``); an attempt that drops none, after
    one that did (a fallback to another API shape), clears them."""
    if dropped:
        names = ", ".join(dropped)
        flow.annotations["dropped"] = names
        flow.extra_headers[DROPPED_HEADER] = names
    elif DROPPED_HEADER in flow.extra_headers:
        del flow.extra_headers[DROPPED_HEADER]
        flow.annotations.pop("dropped", None)
