"""Upstream provider adapters: how each API family is called and how its answers reach the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

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
        """The client's body from the upstream's (already metered) body chunks."""
        ...

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes: ...
