"""Which agents serve a request on an agent listener: a pin, or the router's choice over the agents' descriptions."""

from __future__ import annotations

import asyncio
import logging

from router_model.routes import RouteSet

from core.config import AGENT_PROVIDER, Listener
from core.flow import Flow
from plugins.routing.backends import SharedBackend
from plugins.routing.config import Routing
from plugins.routing.filter import FALLBACK_HEADER

log = logging.getLogger("outerloop.agents")

#: Response header naming the agents a request ran, in order, comma-separated.
AGENT_HEADER = "x-outerloop-agent"
_PINNED = AGENT_PROVIDER + "/"


class Selector:
    """One agent listener's selection. Never fails a request: no match, a router error or the router's budget
    exceeded select the default agent, and say so (``x-outerloop-route-fallback``, ``router.fallback``)."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener.name
        self.ids = tuple(agent.id for agent in listener.agents)
        self.default = next((agent.id for agent in listener.agents if agent.default), self.ids[0])
        routing: Routing | None = listener.router
        #: Only a list-answering profile may run several agents; a single-route one runs one.
        self.lists = routing is not None and routing.profile == "plano-orchestrator"
        self.budget = routing.budget_ms / 1000 if routing is not None else 0.0
        self.shared: SharedBackend | None = None
        self._logged: set[str] = set()
        if routing is not None and len(self.ids) > 1:
            routes = RouteSet.of([{"name": a.id, "description": a.description} for a in listener.agents])
            # The router of this listener alone: its routes are these agents (models' routes are another set).
            self.shared = SharedBackend(routing, routes, max_routes=len(self.ids) if self.lists else 1)

    async def start(self) -> None:
        if self.shared is not None:
            await self.shared.acquire()

    async def close(self) -> None:
        if self.shared is not None:
            await self.shared.release()

    async def select(self, flow: Flow) -> tuple[str, ...]:
        """The agents to run in order (at least one), stated in the flow's headers and annotations."""
        fallback: str | None = None
        pinned = flow.pin[len(_PINNED):] if flow.pin is not None and flow.pin.startswith(_PINNED) else None
        if pinned in self.ids:
            # A conversation in a tool loop stays with the agent that answered it (the session filter's pin).
            chosen: tuple[str, ...] = (pinned,)
            flow.annotations["agents.pinned"] = True
        elif self.shared is None:
            chosen = (self.default,)
        else:
            chosen, fallback = await self._decide(flow)
        flow.annotations["agents.selected"] = ",".join(chosen)
        flow.extra_headers[AGENT_HEADER] = ",".join(chosen)
        if fallback is not None:
            flow.annotations["router.fallback"] = fallback
            flow.extra_headers[FALLBACK_HEADER] = fallback
        return chosen

    async def _decide(self, flow: Flow) -> tuple[tuple[str, ...], str | None]:
        assert self.shared is not None
        backend = self.shared.backend
        if backend is None:
            return self._fallback(self.shared.unavailable or "model_missing", "no router backend")
        try:
            decision = await asyncio.wait_for(backend.decide(flow.json.get("messages") or []), self.budget)
        except asyncio.TimeoutError:
            return self._fallback("budget_exceeded", f"no decision within {self.budget * 1000:g} ms")
        except Exception as exc:
            return self._fallback("engine_error", f"{type(exc).__name__}: {exc}")
        flow.annotations["router.latency_ms"] = decision.latency_ms
        chosen: list[str] = []
        for name in decision.routes:
            if name in self.ids and name not in chosen:
                chosen.append(name)
        if not chosen:
            return (self.default,), "no_match"
        return tuple(chosen if self.lists else chosen[:1]), None

    def _fallback(self, reason: str, detail: str) -> tuple[tuple[str, ...], str]:
        # Logged the first time per reason; the header, the span and the metrics carry every one.
        if reason not in self._logged:
            self._logged.add(reason)
            log.warning("listener %s: the router fell back to the default agent %s (%s): %s; further ones are not "
                        "logged", self.listener, self.default, reason, detail)
        return (self.default,), reason
