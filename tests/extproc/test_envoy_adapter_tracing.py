"""The Envoy adapter hands the pipeline the trace context to continue: the ext_proc stream's own
`traceparent` (Envoy's tracer puts it there, as the child of its request span) before one the
client sent in the request's headers — through both ext_proc servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from extproc.envoy_adapter import ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from extproc.grpcio_server import serve_grpcio
from gatez.errors import Unauthenticated
from gatez.pipeline import Dispatcher, Flow, NoPolicy, NoRoute, Pipeline, Stage, Verdict
from gatez.policy import EMPTY_POLICY, RouteKind

ENVOY_SPAN = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CLIENT_SPAN = "00-11111111111111111111111111111111-2222222222222222-01"


class Refuses(Stage):
    def on_request_headers(self, flow: Flow) -> Verdict:
        raise Unauthenticated("no key")


class Observer:
    def __init__(self) -> None:
        self.traceparents: list[str | None] = []

    def opened(self, flow: Flow, pipeline: str, traceparent: str | None) -> None:
        self.traceparents.append(traceparent)

    def finished(self, flow: Flow, pipeline: str) -> None:
        pass


@pytest.fixture(params=["h2", "grpcio"])
async def served(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[ext_proc_grpc.ExternalProcessorStub, Observer]]:
    observer = Observer()
    dispatcher = Dispatcher(
        lambda: EMPTY_POLICY,
        {RouteKind.LLM: Pipeline([Refuses()])},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
        observer=observer,
    )
    methods = ExternalProcessor(dispatcher).methods()
    socket = f"unix:{tmp_path}/ep.sock"
    server: GrpcServer | grpc.aio.Server
    if request.param == "grpcio":
        server = await serve_grpcio(methods, socket)
    else:
        server = GrpcServer(methods)
        await server.listen(socket)
    channel = grpc.aio.insecure_channel(socket)
    yield ext_proc_grpc.ExternalProcessorStub(channel), observer
    await channel.close(None)
    await server.stop(None)


def request_headers(*extra: tuple[str, str]) -> ext_proc.ProcessingRequest:
    pairs = [(":method", "GET"), (":path", "/v1/models"), *extra]
    return ext_proc.ProcessingRequest(
        request_headers=ext_proc.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
            ),
            end_of_stream=True,
        )
    )


async def exchange(
    stub: ext_proc_grpc.ExternalProcessorStub,
    message: ext_proc.ProcessingRequest,
    metadata: tuple[tuple[str, str], ...] = (),
) -> None:
    call = stub.Process(metadata=metadata)
    await call.write(message)
    answer = await call.read()
    assert isinstance(answer, ext_proc.ProcessingResponse)
    assert answer.immediate_response.status.code == 401
    await call.done_writing()


async def test_the_streams_trace_context_wins_over_the_clients(
    served: tuple[ext_proc_grpc.ExternalProcessorStub, Observer],
) -> None:
    stub, observer = served

    await exchange(
        stub, request_headers(("traceparent", CLIENT_SPAN)), (("traceparent", ENVOY_SPAN),)
    )
    await exchange(stub, request_headers(("traceparent", CLIENT_SPAN)))
    await exchange(stub, request_headers())

    assert observer.traceparents == [ENVOY_SPAN, CLIENT_SPAN, None]
