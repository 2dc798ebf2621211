"""The `router` filter: picks a route for the conversation and sets the flow's targets to its models."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from router_model.backend import Decision

from core.errors import ConfigError
from core.filter import Filter, FilterContext, LocalReply
from core.flow import Flow
from core.upstream import Target
from plugins.routing.backends import SharedBackend
from plugins.routing.config import Routing, preferences

#: Requests to this path get the decision as the answer instead of a model call.
DECISION_PATH = "/routing/v1/chat/completions"
#: Response headers of a routed request: the route chosen (`other` when none), and why the router fell back.
ROUTE_HEADER = "x-outerloop-route"
FALLBACK_HEADER = "x-outerloop-route-fallback"


class RouterFilter(Filter):
    """Terminal filter (like Envoy's router). Never fails a request: a router failure means the default."""

    def __init__(self, shared: SharedBackend, routing: Routing, targets: dict[str, list[Target]]) -> None:
        self.shared = shared
        self.routing = routing
        self.targets = targets
        self.budget = routing.budget_ms / 1000

    async def start(self) -> None:
        await self.shared.acquire()

    async def close(self) -> None:
        await self.shared.release()

    async def on_request(self, flow: Flow) -> LocalReply | None:
        decision_only = flow.path == DECISION_PATH
        started = time.perf_counter()
        decision: Decision | None = None
        pinned = bool(flow.annotations.get("session.pinned"))
        if pinned:
            flow.annotations["router.skipped"] = "pinned"
        elif decision_only or self.routing.route_named_models or flow.model in (None, "auto"):
            decision = await self._decide(flow)
            if decision is not None and decision.route in self.targets:
                allowed = _allowed(flow, self.targets[decision.route])
                if allowed:
                    flow.route = decision.route
                    flow.targets = allowed
                else:
                    flow.annotations["router.skipped"] = "models_forbidden"
            flow.annotations["router.route"] = flow.route or "other"
            # Clients see what the router did, as they see the model that served them (x-outerloop-model).
            flow.extra_headers[ROUTE_HEADER] = flow.route or "other"
            if "router.fallback" in flow.annotations:
                flow.extra_headers[FALLBACK_HEADER] = flow.annotations["router.fallback"]
        if not decision_only:
            return None
        body: dict[str, Any] = {
            "route": flow.route,
            "models": [t.model for t in flow.targets],
            "session_id": flow.session_id,
            "pinned": pinned,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "backend": self.routing.backend,
        }
        if "router.fallback" in flow.annotations:
            body["fallback"] = flow.annotations["router.fallback"]
        return LocalReply(200, body, "router.decision")

    async def _decide(self, flow: Flow) -> Decision | None:
        backend = self.shared.backend
        if backend is None:
            self._fallback(flow, self.shared.unavailable or "model_missing", "no router backend")
            return None
        messages = flow.json.get("messages") or []
        try:
            decision = await asyncio.wait_for(backend.decide(messages), self.budget)
        except asyncio.TimeoutError:
            self._fallback(flow, "budget_exceeded", f"no decision within {self.routing.budget_ms} ms")
            return None
        except Exception as exc:
            self._fallback(flow, "engine_error", f"{type(exc).__name__}: {exc}")
            return None
        flow.annotations["router.latency_ms"] = decision.latency_ms
        return decision

    def _fallback(self, flow: Flow, reason: str, detail: str) -> None:
        flow.annotations["router.fallback"] = reason
        self.shared.log_once(reason, detail)


def _allowed(flow: Flow, targets: list[Target]) -> list[Target]:
    """The route's models the caller may use: auth checked the requested model, the router checks its own."""
    may_use = getattr(flow.principal, "may_use", None)
    if may_use is None:
        return list(targets)
    return [t for t in targets if may_use(t.model) or may_use(t.model_id)]


def build_router(settings: Any, context: FilterContext) -> RouterFilter:
    config = context.config
    routing: Routing = config.section("routing")
    prefs = preferences(config)
    problems: list[str] = []
    targets: dict[str, list[Target]] = {}
    for i, pref in enumerate(prefs):
        resolved = []
        for j, name in enumerate(pref.models):
            target = context.resolve_model(name)
            if target is None:
                problems.append(f"{config.source}: routing_preferences[{i}].models[{j}]: "
                                f"{name!r} is not a configured model")
            else:
                resolved.append(target)
        targets[pref.name] = resolved
    if not prefs:
        problems.append(f"{config.source}: routing_preferences: the router filter needs at least one route")
    if problems:
        raise ConfigError(problems)
    from router_model.routes import RouteSet

    routes = RouteSet.of([{"name": p.name, "description": p.description} for p in prefs])
    # One backend (one loaded model) per config, shared by every listener's router filter.
    shared = config.state("routing.backend", lambda: SharedBackend(routing, routes))
    return RouterFilter(shared, routing, targets)
