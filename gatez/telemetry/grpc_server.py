"""A gRPC server's calls, counted and traced (the control service): one interceptor.

Each call is counted by method and status code and timed; when tracing is on it is also a SERVER
span (`{service}/{method}`, RPC semantic conventions) continuing the caller's `traceparent`
metadata, if any. A streaming call ends when its stream does (a data plane's Watch lasts as long
as the data plane).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import grpc
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, Counter, Histogram

from gatez.telemetry.metrics import LATENCY_BUCKETS
from gatez.telemetry.tracing import Tracing

Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
if TYPE_CHECKING:
    ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor

# Ends a call's observation with the call's context and the exception it ended with, if any.
EndCall = Callable[[Any, BaseException | None], None]

# The codes for which a server span is an error (the RPC semantic conventions).
SERVER_ERRORS: Final = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_CODES: Final = {code.value[0]: code for code in grpc.StatusCode}


class GrpcServerTelemetry(ServerInterceptor):
    """Counts, times and (with `tracing`) traces every call of a grpc.aio server."""

    def __init__(self, registry: CollectorRegistry, tracing: Tracing | None = None) -> None:
        self._calls = Counter(
            "gatez_grpc_server_calls",
            "gRPC calls handled, by method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self._latency = Histogram(
            "gatez_grpc_server_duration_seconds",
            "gRPC call duration by method (a Watch stream lasts as long as its data plane).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._tracer = tracing.tracer if tracing is not None else None
        self._propagator = TraceContextTextMapPropagator()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            self._calls.labels(method, grpc.StatusCode.UNIMPLEMENTED.name).inc()
            return handler
        metadata = handler_call_details.invocation_metadata or ()
        traceparent = next((str(v) for k, v in metadata if k == "traceparent"), None)

        def begin() -> EndCall:
            return self._begin(method, traceparent)

        return _observed(handler, begin)

    def _begin(self, method: str, traceparent: str | None) -> EndCall:
        began = time.monotonic()
        span = None
        if self._tracer is not None:
            service, _, name = method.lstrip("/").partition("/")
            parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
            span = self._tracer.start_span(
                f"{service}/{name}",
                context=parent,
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )

        def end(context: Any, error: BaseException | None) -> None:
            code = _status_code(context, error)
            self._calls.labels(method, code.name).inc()
            self._latency.labels(method).observe(time.monotonic() - began)
            if span is not None:
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in SERVER_ERRORS:
                    span.set_status(Status(StatusCode.ERROR))
                span.end()

        return end


def _status_code(context: Any, error: BaseException | None) -> grpc.StatusCode:
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int) and code != 0:
        return _CODES.get(code, grpc.StatusCode.UNKNOWN)
    if error is not None:
        if isinstance(error, asyncio.CancelledError):
            return grpc.StatusCode.CANCELLED
        return grpc.StatusCode.UNKNOWN
    return grpc.StatusCode.OK


def _observed(handler: Handler, begin: Callable[[], EndCall]) -> Handler:
    """The same handler, observing each call from its start to its end (a streaming one until
    its stream ends), whichever of the four shapes it has."""
    for shape, make in (
        ("unary_unary", grpc.unary_unary_rpc_method_handler),
        ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ("stream_unary", grpc.stream_unary_rpc_method_handler),
        ("stream_stream", grpc.stream_stream_rpc_method_handler),
    ):
        behaviour = getattr(handler, shape)
        if behaviour is not None:
            return make(
                _wrapped(behaviour, begin),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


def _wrapped(behaviour: Callable[..., Any], begin: Callable[[], EndCall]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: Any) -> Any:
            end, error = begin(), None
            try:
                async for response in behaviour(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                end(context, error)

        return stream

    async def call(request: Any, context: Any) -> Any:
        end, error = begin(), None
        try:
            return await behaviour(request, context)
        except BaseException as raised:
            error = raised
            raise
        finally:
            end(context, error)

    return call
