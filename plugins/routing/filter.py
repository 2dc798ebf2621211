"""The `router` filter: picks a route for the conversation and states it on the flow (`flow.route`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from router_model.backend import Decision

from core.errors import ConfigError
from core.filter import Filter, FilterContext, LocalReply
from core.flow import NO_CONVERSATION_ENDPOINTS, Flow, RouteDecision
from core.target import Target
from plugins.routing.backends import SharedBackend
from plugins.routing.config import Routing, preferences

#: Requests to this path get the decision as the answer instead of a model call.
DECISION_PATH = "/routing/v1/chat/completions"
#: Response headers of a routed request: the route chosen (`other` when none), and why the router fell back.
ROUTE_HEADER = "x-outerloop-route"
FALLBACK_HEADER = "x-outerloop-route-fallback"


class RouterFilter(Filter):
    """Terminal filter (like Envoy's router). Never fails a request: a router failure means the default."""

    def __init__(self, shared: SharedBackend, routing: Routing, models: dict[str, tuple[str, ...]],
                 resolve_model: Callable[[str | None], Target | None]) -> None:
        self.shared = shared
        self.resolve_model = resolve_model
        self.routing = routing
        #: Each route's models (configured provider/id names), in the order they are tried.
        self.models = models
        self.budget = routing.budget_ms / 1000

    async def start(self) -> None:
        await self.shared.acquire()

    async def close(self) -> None:
        await self.shared.release()

    async def on_request(self, flow: Flow) -> LocalReply | None:
        if flow.endpoint in NO_CONVERSATION_ENDPOINTS:
            return None  # nothing to route: the model named (or the default) serves it, as without a router
        decision_only = flow.path == DECISION_PATH
        started = time.perf_counter()
        decision: Decision | None = None
        pinned = flow.pin is not None
        if pinned:
            flow.annotations["router.skipped"] = "pinned"
        elif decision_only or self.routing.route_named_models or flow.model in (None, "auto"):
            decision = await self._decide(flow)
            if decision is not None and decision.route in self.models:
                allowed = _allowed(flow, self.models[decision.route])
                if allowed:
                    flow.route = RouteDecision(decision.route, allowed)
                else:
                    flow.annotations["router.skipped"] = "models_forbidden"
            name = flow.route.name if flow.route is not None else "other"
            flow.annotations["router.route"] = name
            # Clients see what the router did, as they see the model that served them (x-outerloop-model).
            flow.extra_headers[ROUTE_HEADER] = name
            if "router.fallback" in flow.annotations:
                flow.extra_headers[FALLBACK_HEADER] = flow.annotations["router.fallback"]
        if not decision_only:
            return None
        route = flow.route
        if route is not None:
            models = list(route.models)
        else:  # what the core will serve: the named model, or the default
            target = self.resolve_model(flow.model)
            models = [target.model] if target is not None else []
        body: dict[str, Any] = {
            "route": route.name if route is not None else None,
            "models": models,
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


def _allowed(flow: Flow, models: tuple[str, ...]) -> tuple[str, ...]:
    """The route's models the caller may use (the core checks again; choosing among them is the router's)."""
    principal = flow.principal
    if principal is None:
        return models
    return tuple(m for m in models if principal.may_use(m) or principal.may_use(m.partition("/")[2]))


def build_router(settings: Any, context: FilterContext) -> RouterFilter:
    config = context.config
    routing: Routing = config.section("routing")
    prefs = preferences(config)
    problems: list[str] = []
    models: dict[str, tuple[str, ...]] = {}
    for i, pref in enumerate(prefs):
        resolved = []
        for j, name in enumerate(pref.models):
            target = context.resolve_model(name)
            if target is None:
                problems.append(f"{config.source}: routing_preferences[{i}].models[{j}]: "
                                f"{name!r} is not a configured model")
            else:
                resolved.append(target.model)
        models[pref.name] = tuple(resolved)
    if not prefs:
        problems.append(f"{config.source}: routing_preferences: the router filter needs at least one route")
    if problems:
        raise ConfigError(problems)
    from router_model.routes import RouteSet

    routes = RouteSet.of([{"name": p.name, "description": p.description} for p in prefs])
    # One backend (one loaded model) per config, shared by every listener's router filter.
    shared = context.state.get("routing.backend", lambda: SharedBackend(routing, routes))
    return RouterFilter(shared, routing, models, context.resolve_model)
