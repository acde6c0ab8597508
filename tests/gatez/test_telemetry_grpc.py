"""GrpcServerTelemetry: a grpc.aio server's calls counted by method and code, and traced as
SERVER spans continuing the caller's traceparent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from gatez.telemetry import GrpcServerTelemetry, Tracing

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
CHECK = "/grpc.health.v1.Health/Check"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def served(
    exporter: InMemorySpanExporter,
) -> AsyncIterator[tuple[health_pb2_grpc.HealthStub, CollectorRegistry, Tracing]]:
    tracing = Tracing.from_env("gatez-control", environ={}, exporter=exporter)
    assert tracing is not None
    registry = CollectorRegistry()
    server = grpc.aio.server(interceptors=[GrpcServerTelemetry(registry, tracing)])
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield health_pb2_grpc.HealthStub(channel), registry, tracing
    await channel.close(None)
    await server.stop(0)
    tracing.shutdown()


async def test_calls_are_counted_by_method_and_code_and_traced(
    served: tuple[health_pb2_grpc.HealthStub, CollectorRegistry, Tracing],
    exporter: InMemorySpanExporter,
) -> None:
    stub, registry, tracing = served

    await stub.Check(health_pb2.HealthCheckRequest(), metadata=(("traceparent", TRACEPARENT),))
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await stub.Check(health_pb2.HealthCheckRequest(service="nope"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    def calls(code: str) -> float | None:
        return registry.get_sample_value(
            "gatez_grpc_server_calls_total", {"method": CHECK, "code": code}
        )

    assert calls("OK") == 1
    assert calls("NOT_FOUND") == 1
    assert (
        registry.get_sample_value("gatez_grpc_server_duration_seconds_count", {"method": CHECK})
        == 2
    )
    tracing.provider.force_flush()
    continued, fresh = exporter.get_finished_spans()
    assert continued.name == "grpc.health.v1.Health/Check"
    assert continued.kind is SpanKind.SERVER
    assert continued.context is not None and continued.parent is not None
    assert format(continued.context.trace_id, "032x") == TRACE_ID
    assert dict(continued.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": "grpc.health.v1.Health",
        "rpc.method": "Check",
        "rpc.grpc.status_code": 0,
    }
    assert fresh.parent is None
    assert (fresh.attributes or {})["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    # NOT_FOUND is the caller's error, not the server's.
    assert fresh.status.status_code is StatusCode.UNSET
