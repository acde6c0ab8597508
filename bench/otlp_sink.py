"""An OTLP/gRPC trace endpoint for benchmarks: accepts every export and only counts the bytes,
so tracing costs what exporting costs the gateway's processes, not what storing would."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc

from gatez.processes import free_port

EXPORT_METHOD = "Export"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


class OtlpSink:
    """`TraceService/Export` on a free local port; `exports` and `received_bytes` count."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.exports = 0
        self.received_bytes = 0
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        # Raw bytes in (no deserializer), an empty ExportTraceServiceResponse out.
        handler = grpc.method_handlers_generic_handler(
            TRACE_SERVICE,
            {EXPORT_METHOD: grpc.unary_unary_rpc_method_handler(self._export)},
        )
        self._server.add_generic_rpc_handlers((handler,))
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")

    def _export(self, request: bytes, context: Any) -> bytes:
        self.exports += 1
        self.received_bytes += len(request)
        return b""

    def __enter__(self) -> OtlpSink:
        self._server.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.stop(0)
