"""Traces and metrics for every Gatez process (OpenTelemetry and prometheus-client).

The pipeline is observed through one door (`gatez.pipeline.observe`): `DataPlaneTelemetry` is
the data plane's `FlowObserver`, counting every finished flow and tracing the sampled ones.
Processes build their telemetry in their wiring function and pass it in; nothing here is global.
"""

from __future__ import annotations

from gatez.pipeline import Flow
from gatez.telemetry.grpc_server import GrpcServerTelemetry
from gatez.telemetry.metrics import (
    DataPlaneMetrics,
    LateMetricsServer,
    MetricsServer,
    StageCollector,
    ValueCollector,
    new_registry,
)
from gatez.telemetry.tracing import (
    FlowTracing,
    RequestTrace,
    Tracing,
    gen_ai_attributes,
    otlp_protocol,
    tracing_enabled,
)

__all__ = [
    "DataPlaneMetrics",
    "DataPlaneTelemetry",
    "FlowTracing",
    "GrpcServerTelemetry",
    "LateMetricsServer",
    "MetricsServer",
    "RequestTrace",
    "StageCollector",
    "Tracing",
    "ValueCollector",
    "gen_ai_attributes",
    "new_registry",
    "otlp_protocol",
    "tracing_enabled",
]


class DataPlaneTelemetry:
    """A data plane's flow observer: request metrics for every flow, a trace for each flow the
    sampler keeps when tracing is on (with tracing off, opening a flow costs one test)."""

    def __init__(self, metrics: DataPlaneMetrics, tracing: FlowTracing | None = None) -> None:
        self.metrics = metrics
        self._tracing = tracing

    def opened(self, flow: Flow, pipeline: str, traceparent: str | None) -> None:
        if self._tracing is not None:
            flow.trace = self._tracing.start(flow, pipeline, traceparent)

    def finished(self, flow: Flow, pipeline: str) -> None:
        self.metrics.finished(flow, pipeline)
