"""Built-in telemetry plugin: the `tracing:` section and the OpenTelemetry tracer provider it describes."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from core.config import Config
from core.hookspecs import RegisterConfig, State, hookimpl

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider

log = logging.getLogger("outerloop.telemetry")


class Tracing(BaseModel):
    """OpenTelemetry traces: a server span per request, child spans per filter and for the upstream call."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    service_name: str = "outerloop"
    exporter: Literal["otlp", "console"] = "otlp"
    endpoint: str = Field(default="http://127.0.0.1:4318/v1/traces", description="OTLP/HTTP traces endpoint")
    headers: dict[str, str] = Field(default={}, description="sent with each export, e.g. a collector's API key")
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


@hookimpl
def outerloop_register_config(register: RegisterConfig) -> None:
    register("tracing", Tracing)


@hookimpl
def outerloop_tracer_provider(config: Config, state: State) -> TracerProvider | None:
    tracing: Tracing = config.section("tracing")
    if tracing is None or not tracing.enabled:
        return None
    return state.get("telemetry.provider", lambda: _provider(tracing))


def _provider(tracing: Tracing) -> TracerProvider:
    """One provider per loaded config and process, flushed and shut down with it."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(resource=Resource.create({"service.name": tracing.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(tracing.sample_ratio)))
    exporter: SpanExporter
    if tracing.exporter == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=tracing.endpoint, headers=dict(tracing.headers), timeout=5)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    log.info("tracing to %s (%s), sample ratio %s", tracing.exporter,
             tracing.endpoint if tracing.exporter == "otlp" else "stdout", tracing.sample_ratio)
    return provider


@hookimpl
def outerloop_shutdown(state: State) -> None:
    from opentelemetry.sdk.trace import TracerProvider

    provider = state.pop("telemetry.provider", TracerProvider)
    if provider is not None:
        provider.shutdown()
