"""OpenTelemetry tracing, propagated across every gRPC hop.

Servers get the OpenTelemetry aio server interceptor and clients the client
interceptors, so a CLI call into one service and that service's call into
another share one trace. The exporter is chosen by DISTILLERY_TRACING: "none"
(default: spans are made and dropped), "console" or "otlp".
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter


def setup_tracing(service: str, exporter: str) -> None:
    """Install a global tracer provider for this process (once)."""
    if exporter == "none":
        return
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()  # reads OTEL_EXPORTER_OTLP_ENDPOINT
    provider = TracerProvider(resource=Resource.create({"service.name": f"distillery-{service}"}))
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def server_interceptor() -> object:
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return aio_server_interceptor()


def aio_client_interceptors() -> list[object]:
    from opentelemetry.instrumentation.grpc import aio_client_interceptors as make

    return list(make())
