"""Traces and access logs: OpenTelemetry spans per request, filter and upstream call; OTLP export; JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.trace import SpanKind
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from core.filter import Filter, LocalReply
from core.flow import Flow, RouteDecision
from core.hookspecs import hookimpl
from tests.conftest import proxy_config
from tests.harness import MemoryTracing, run_proxy, serve_app
from tests.upstream import Upstream

MESSAGES = [{"role": "user", "content": "hi"}]


class TaggedTracing(MemoryTracing):
    """Spans kept in memory, and a filter that annotates the flow."""

    @hookimpl
    def outerloop_register_filters(self, register: Any) -> None:
        class Tag(Filter):
            async def on_request(self, flow: Flow) -> LocalReply | None:
                flow.route = RouteDecision("tagged_route", ("test/test-model",))
                flow.annotations["guardrails.flagged"] = True
                if "stop" in flow.last_user_text():
                    return LocalReply(403, "stopped", "tag.stopped")
                return None

        register("tag", lambda config, context: Tag())


def test_spans_for_request_filters_and_upstream(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    tracing = TaggedTracing()
    with run_proxy(proxy_config(base, filters=["tag"]), plugins=(tracing,)) as proxy:
        ok = httpx.post(proxy.url + "/v1/chat/completions", json={"model": "test-model", "messages": MESSAGES},
                        headers={"authorization": "Bearer sk-client-secret"})
        stopped = httpx.post(proxy.url + "/v1/chat/completions",
                             json={"messages": [{"role": "user", "content": "stop"}]})
    assert ok.status_code == 200 and stopped.status_code == 403
    spans = tracing.exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER]
    assert len(servers) == 2
    first = servers[0]
    assert first.attributes["outerloop.route"] == "tagged_route"
    assert first.attributes["outerloop.guardrails.flagged"] is True
    assert first.attributes["outerloop.served_by"] == "test/test-model"
    filters = [s for s in spans if s.name == "filter tag"]
    assert len(filters) == 2 and filters[0].parent is not None
    assert filters[0].parent.span_id == first.context.span_id
    assert filters[1].attributes["outerloop.details"] == "tag.stopped"
    (chat,) = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert chat.name == "chat test-model"
    assert chat.attributes["gen_ai.request.model"] == "test-model"
    assert chat.attributes["gen_ai.response.model"] == "test-model"
    assert chat.attributes["gen_ai.system"] == "test"
    assert chat.attributes["http.response.status_code"] == 200
    assert chat.parent is not None and chat.parent.trace_id == first.context.trace_id
    # the upstream got W3C trace context naming the client span
    traceparent = server.seen[0].headers["traceparent"]
    assert traceparent.split("-")[1] == format(chat.context.trace_id, "032x")
    assert traceparent.split("-")[2] == format(chat.context.span_id, "016x")
    everything = json.dumps([dict(s.attributes or {}) for s in spans])
    assert "sk-client-secret" not in everything and "sk-upstream-secret" not in everything


class Collector:
    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []

    def app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            self.requests.append(ExportTraceServiceRequest.FromString(await request.body()))
            return Response(b"", media_type="application/x-protobuf")
        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])


@pytest.fixture
def collector() -> Iterator[tuple[Collector, str]]:
    found = Collector()
    with serve_app(found.app()) as port:
        yield found, f"http://127.0.0.1:{port}/v1/traces"


def test_tracing_section_exports_otlp(upstream: tuple[Upstream, str], collector: tuple[Collector, str]) -> None:
    server, base = upstream
    received, endpoint = collector
    raw = proxy_config(base, tracing={"enabled": True, "endpoint": endpoint, "service_name": "edge-proxy"})
    with run_proxy(raw) as proxy:
        assert httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES}).status_code == 200
    # shutdown flushed the batch processor to the collector
    names = [span.name for req in received.requests for rs in req.resource_spans
             for ss in rs.scope_spans for span in ss.spans]
    services = {attr.value.string_value for req in received.requests for rs in req.resource_spans
                for attr in rs.resource.attributes if attr.key == "service.name"}
    assert "chat default" in names and any(name.startswith("POST") for name in names)
    assert services == {"edge-proxy"}


def test_tracing_off_by_default_adds_no_middleware(upstream: tuple[Upstream, str]) -> None:
    server, base = upstream
    with run_proxy(proxy_config(base)) as proxy:
        assert proxy.runtime.tracer is None
        assert type(proxy.app).__name__ == "App"


def test_access_log_line_per_request(upstream: tuple[Upstream, str], caplog: pytest.LogCaptureFixture) -> None:
    server, base = upstream
    caplog.set_level(logging.INFO, logger="outerloop.access")
    with run_proxy(proxy_config(base, server={"access_log": True})) as proxy:
        httpx.post(proxy.url + "/v1/chat/completions", json={"model": "fail-429", "messages": MESSAGES},
                   headers={"authorization": "Bearer sk-client-secret"})
        httpx.post(proxy.url + "/v1/chat/completions", json={"messages": MESSAGES})
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "outerloop.access"]
    assert [line["status"] for line in lines] == [429, 200]
    assert lines[0]["details"] == "upstream.http_429" and lines[0]["model"] == "fail-429"
    assert lines[1]["served_by"] == "test/test-model" and lines[1]["duration_ms"] > 0
    assert "sk-" not in caplog.text
