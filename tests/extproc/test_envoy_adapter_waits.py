"""The Envoy adapter's waits and failures, over a real gRPC stream with scripted stages: a Hold
tells Envoy to wait (override_message_timeout), a failure answers its own request only, and a
backlog of streamed chunks drains in order however long it grows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from extproc.envoy_adapter import HOLD_MARGIN_S, ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from gatez.pipeline import (
    CONTINUE,
    BodyMode,
    Continue,
    Dispatcher,
    Flow,
    Hold,
    NoPolicy,
    NoRoute,
    Outcome,
    Pipeline,
    Respond,
    Stage,
    Verdict,
)
from gatez.policy import RouteKind
from tests.extproc.test_envoy_adapter import headers, policy, request_headers

Serve = Callable[[Pipeline], Awaitable[ext_proc_grpc.ExternalProcessorStub]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    """Serves a processor whose LLM route runs `pipeline`; yields a stub for it."""
    servers: list[GrpcServer] = []
    channels: list[grpc.aio.Channel] = []
    compiled = policy()

    async def start(pipeline: Pipeline) -> ext_proc_grpc.ExternalProcessorStub:
        dispatcher = Dispatcher(
            lambda: compiled,
            {RouteKind.LLM: pipeline},
            unrouted=Pipeline([NoRoute()]),
            unavailable=Pipeline([NoPolicy()]),
        )
        server = GrpcServer(ExternalProcessor(dispatcher).methods())
        address = f"unix:{tmp_path}/ep{len(servers)}.sock"
        await server.listen(address)
        servers.append(server)
        channel = grpc.aio.insecure_channel(address)
        channels.append(channel)
        return ext_proc_grpc.ExternalProcessorStub(channel)

    yield start
    for channel in channels:
        await channel.close(None)
    for server in servers:
        await server.stop(None)


class Approval(Stage):
    """Holds every request until the test decides."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.decision: asyncio.Future[Continue | Respond] | None = None

    def on_request_headers(self, flow: Flow) -> Verdict:
        self.decision = asyncio.get_running_loop().create_future()
        return Hold(self.decision, self.timeout_s)


async def test_a_hold_tells_envoy_to_wait_then_answers_with_the_decision(
    serve: Serve,
) -> None:
    approval = Approval(timeout_s=240.0)
    stub = await serve(Pipeline([approval]))
    call = stub.Process()
    await call.write(request_headers("/v1/chat/completions"))

    extend = await asyncio.wait_for(call.read(), 2)
    # Only the timer: Envoy keeps waiting for this message's real answer.
    assert extend.WhichOneof("response") is None
    assert extend.override_message_timeout.ToNanoseconds() == int((240 + HOLD_MARGIN_S) * 1e9)

    assert approval.decision is not None
    approval.decision.set_result(
        Respond(403, b'{"error":{"message":"denied by an operator"}}', reason="approval_denied")
    )
    answer = await asyncio.wait_for(call.read(), 2)
    await call.done_writing()
    assert answer.immediate_response.status.code == 403


async def test_a_hold_that_times_out_is_a_504_before_envoy_gives_up(
    serve: Serve,
) -> None:
    stub = await serve(Pipeline([Approval(0.05)]))
    call = stub.Process()
    await call.write(request_headers("/v1/chat/completions"))
    await call.read()  # the timer
    answer = await asyncio.wait_for(call.read(), 2)
    await call.done_writing()
    assert answer.immediate_response.status.code == 504
    assert orjson.loads(answer.immediate_response.body)["error"]["type"] == "decision_timeout"


class BrokenPipeline(Pipeline):
    """Breaks outside any stage (a bug in the machinery, not a stage error)."""

    def start_request_headers(self, flow: Flow) -> Outcome:
        if flow.path.endswith("/boom"):
            raise RuntimeError("a bug with a secret: hunter2")
        return CONTINUE

    def start_response_headers(self, flow: Flow) -> Outcome:
        async def later() -> Continue:
            raise RuntimeError("a bug later")

        return later()


async def test_a_failure_outside_the_stages_answers_its_own_request_with_a_500(
    serve: Serve,
) -> None:
    stub = await serve(BrokenPipeline([]))
    healthy = stub.Process()
    await healthy.write(request_headers("/v1/chat/completions"))
    assert (await healthy.read()).WhichOneof("response") == "request_headers"

    broken = stub.Process()
    await broken.write(request_headers("/v1/boom"))
    answer = (await broken.read()).immediate_response
    assert answer.status.code == 500
    assert b"hunter2" not in answer.body
    assert orjson.loads(answer.body)["error"]["message"] == "internal gateway error"
    await broken.done_writing()

    # The other request on the same connection goes on; a failure in a later, awaited phase is
    # answered the same way.
    await healthy.write(ext_proc.ProcessingRequest(response_headers=headers((":status", "200"))))
    assert (await healthy.read()).immediate_response.status.code == 500
    await healthy.done_writing()


class SlowFirstChunk(Stage):
    """Waits on the first response chunk, so the chunks after it pile up in the backlog; records
    the order chunks are seen in."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []

    def on_request_headers(self, flow: Flow) -> Verdict:
        return CONTINUE

    def on_response_headers(self, flow: Flow) -> Verdict:
        flow.response_body_mode = BodyMode.STREAMED
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict | asyncio.Future[Verdict]:
        self.seen.append(flow.response_chunk)
        flow.replace_response_chunk(flow.response_chunk.upper())
        if len(self.seen) == 1:
            later: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.2, later.set_result, CONTINUE)
            return later
        return CONTINUE


async def test_a_long_backlog_drains_in_order(serve: Serve) -> None:
    stage = SlowFirstChunk()
    stub = await serve(Pipeline([stage]))
    call = stub.Process()
    await call.write(request_headers("/v1/chat/completions", method="GET"))
    await call.read()
    await call.write(ext_proc.ProcessingRequest(response_headers=headers((":status", "200"))))
    await call.read()

    count = 3000  # deeper than Python's recursion limit
    chunks = [f"chunk-{i};".encode() for i in range(count)]
    for chunk in chunks:
        await call.write(ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=chunk)))
    answers = [(await call.read()).response_body.response.body_mutation.body for _ in range(count)]
    await call.done_writing()
    assert stage.seen == chunks
    assert answers == [chunk.upper() for chunk in chunks]
