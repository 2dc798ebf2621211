"""Upstream provider adapters: how each API family is called and how its answers reach the client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import httpx

    from core.flow import Flow
    from core.upstream import Target


class Adapter(Protocol):
    """Translates between the API a client speaks and the API an upstream speaks."""

    #: True when bodies are rewritten, so the upstream's content-length no longer applies.
    rewrites_body: bool

    def request(self, flow: Flow, target: Target) -> httpx.Request: ...

    def body(self, flow: Flow, response: httpx.Response) -> AsyncIterator[bytes]: ...

    def error_body(self, flow: Flow, status: int, body: bytes) -> bytes: ...
