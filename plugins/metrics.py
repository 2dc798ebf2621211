"""Built-in metrics plugin: the `metrics:` section, Prometheus counters fed by a request observer, GET /metrics."""

from __future__ import annotations

import time

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from core.config import Config
from core.flow import Flow
from core.hookspecs import RegisterConfig, RegisterObserver, RegisterRoute, State, hookimpl


class Metrics(BaseModel):
    """Prometheus metrics of this worker process (with `server.workers` > 1, each worker counts its own)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    path: str = Field(default="/metrics", pattern=r"^/")


class RequestMetrics:
    """The counters of one loaded config: requests, latency, upstream fallbacks, outliers, tokens, routing."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("outerloop_requests", "Finished requests", ["listener", "status", "details"],
                                registry=self.registry)
        self.duration = Histogram("outerloop_request_duration_seconds", "Time from request to last byte",
                                  ["listener"], registry=self.registry,
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
        self.served = Counter("outerloop_upstream_served", "Requests served, by model", ["model"],
                              registry=self.registry)
        self.fallbacks = Counter("outerloop_upstream_fallbacks", "Upstream attempts that failed over to the next "
                                 "model", ["listener"], registry=self.registry)
        self.ejections = Counter("outerloop_outlier_ejections", "Deployments ejected by outlier detection, by "
                                 "model", ["model"], registry=self.registry)
        self.probes = Counter("outerloop_outlier_probes", "Ejected deployments tried again, and probes that "
                              "restored one, by model", ["model", "outcome"], registry=self.registry)
        self.tokens = Counter("outerloop_tokens", "Tokens reported by upstreams", ["model", "kind"],
                              registry=self.registry)
        self.routes = Counter("outerloop_router_decisions", "Routing decisions, by route", ["route"],
                              registry=self.registry)
        self.router_fallbacks = Counter("outerloop_router_fallbacks", "Requests the router could not decide "
                                        "and sent to the requested or default model (or agent)", ["reason"],
                                        registry=self.registry)
        self.agent_selections = Counter("outerloop_agent_selections", "Agents run by agent listeners, by "
                                        "agent, and the router's fallback when it could not decide (else empty)",
                                        ["listener", "agent", "fallback"], registry=self.registry)
        self.router_latency = Histogram("outerloop_router_decision_seconds", "Routing decision latency",
                                        registry=self.registry,
                                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1))

    def observe(self, flow: Flow, error: BaseException | None) -> None:
        status = str(flow.response_status) if flow.response_status is not None else "none"
        self.requests.labels(flow.listener, status, flow.details or "").inc()
        self.duration.labels(flow.listener).observe(max(0.0, _elapsed(flow)))
        if flow.served_by is not None:
            self.served.labels(flow.served_by.model).inc()
            usage = flow.usage or {}
            for kind in ("prompt_tokens", "completion_tokens"):
                if isinstance(usage.get(kind), int):
                    self.tokens.labels(flow.served_by.model, kind.split("_")[0]).inc(usage[kind])
        if flow.attempts > 1:
            self.fallbacks.labels(flow.listener).inc(flow.attempts - 1)
        notes = flow.annotations
        for model in str(notes.get("outlier.ejected", "")).split(","):
            if model:
                self.ejections.labels(model).inc()
        for kind, outcome in (("outlier.probe", "tried"), ("outlier.restored", "restored")):
            for model in str(notes.get(kind, "")).split(","):
                if model:
                    self.probes.labels(model, outcome).inc()
        if "router.route" in notes:
            self.routes.labels(str(notes["router.route"])).inc()
        if "router.fallback" in notes:
            self.router_fallbacks.labels(str(notes["router.fallback"])).inc()
        if "agents.selected" in notes:
            fallback = str(notes.get("router.fallback", ""))
            for agent in str(notes["agents.selected"]).split(","):
                self.agent_selections.labels(flow.listener, agent, fallback).inc()
        if isinstance(notes.get("router.latency_ms"), (int, float)):
            self.router_latency.observe(notes["router.latency_ms"] / 1000)

    async def endpoint(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _elapsed(flow: Flow) -> float:
    return time.perf_counter() - flow.started


def _metrics_for(config: Config, state: State) -> RequestMetrics | None:
    """One set of counters per runtime, shared by its observer and its endpoint."""
    settings: Metrics = config.section("metrics")
    if settings is None or not settings.enabled:
        return None
    return state.get("metrics", RequestMetrics)


@hookimpl
def outerloop_register_config(register: RegisterConfig) -> None:
    register("metrics", Metrics)


@hookimpl
def outerloop_register_observers(register: RegisterObserver, config: Config, state: State) -> None:
    metrics = _metrics_for(config, state)
    if metrics is not None:
        register(metrics.observe)


@hookimpl
def outerloop_register_routes(register: RegisterRoute, config: Config, state: State) -> None:
    metrics = _metrics_for(config, state)
    if metrics is not None:
        register(config.section("metrics").path, metrics.endpoint, methods=("GET",))
