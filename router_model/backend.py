"""The contract every routing backend implements, and the decision it returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from router_model.routes import RouteSet

Message = Mapping[str, Any]


class RouterError(Exception):
    """A backend could not produce a decision (model missing, engine failure, upstream error)."""


class RouterModelMissing(RouterError):
    """The model files a backend needs are not there."""


class RouterUpstreamError(RouterError):
    """An HTTP router endpoint failed (connect error, timeout, non-2xx status, unreadable body)."""


@dataclass(frozen=True)
class Decision:
    """One routing decision. `routes` is every route the answer names, in order (several only from a profile
    whose answers are lists, e.g. an agent sequence); `route` is the first of them, None when the model answered
    `other` or nothing usable. Built with `route` alone, `routes` is that one route."""

    route: str | None
    latency_ms: float
    backend: str
    prompt_tokens: int = 0
    cached_tokens: int = 0
    steps: int = 0
    raw: str | None = None
    scores: Mapping[str, float] = field(default_factory=dict)
    routes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.routes and self.route is not None:
            object.__setattr__(self, "routes", (self.route,))
        elif self.routes and self.route != self.routes[0]:
            raise ValueError(f"route {self.route!r} is not the first of routes {self.routes!r}")


#: What in-process backends decide once at startup (`warm_up`): the route set's caches get filled and the
#: runtime makes its first-run allocations, which would otherwise land on the first request (on a GPU, far past
#: any decision budget).
WARM_UP_CONVERSATION: tuple[Message, ...] = ({"role": "user", "content": "hello"},)


@runtime_checkable
class RouterBackend(Protocol):
    """What the proxy's routing plugin calls. Implementations never block the event loop."""

    name: str

    async def decide(self, messages: Sequence[Message], routes: RouteSet | None = None) -> Decision:
        """Picks a route (a sequence in `Decision.routes`, where the backend is built for lists) for the
        conversation; `routes` overrides the set the backend was built with."""
        ...

    def warm_up(self) -> None:
        """Blocking: brings the backend to its steady state (caches filled, runtime allocations made) so the
        first request is not the one that pays for it. Called once, off the event loop, after construction."""
        ...

    async def aclose(self) -> None: ...
