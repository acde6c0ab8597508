"""Envoy's access log to the data plane: entries for requests Envoy answered itself become
request-log rows without a tenant; a flow Envoy reset before applying its first answer takes
Envoy's status and reason instead of adding a second row. Driven over real gRPC streams (both
servers), with the real pipeline and log store behind them."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from extproc.envoy_access_log import (
    NO_RESPONSE,
    PATH_LOG_LIMIT,
    STREAM_ACCESS_LOGS_METHOD,
    EnvoyAccessLog,
    request_row,
)
from extproc.envoy_adapter import ABORTED, ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from extproc.grpcio_server import serve_grpcio
from extproc.jwks import JwksCache
from extproc.logsink import ClickHouseLogWriter, LogSink
from extproc.redis_pipe import PipelinedRedis
from extproc.server import build_dispatcher
from gatez.logrows import RequestLogRow
from gatez.logstore import LogStore
from tests.extproc.test_envoy_adapter import AUTH, _request_id, policy, request_headers
from tests.support.redis import RedisServer

START = dt.datetime(2026, 12, 1, 8, 0, 0, 250_000, tzinfo=dt.UTC)


def entry(
    *,
    request_id: str = "",
    status: int = 400,
    details: str = "http1.codec_error",
    path: str = "",
    method: int = base_pb2.METHOD_UNSPECIFIED,
) -> accesslog_pb2.HTTPAccessLogEntry:
    message = accesslog_pb2.HTTPAccessLogEntry()
    message.common_properties.start_time.FromDatetime(START)
    message.common_properties.time_to_last_downstream_tx_byte.FromMilliseconds(3)
    message.request.request_id = request_id
    message.request.path = path
    message.request.request_method = method
    if status:
        message.response.response_code.value = status
    message.response.response_code_details = details
    return message


def test_an_entry_becomes_a_row_without_a_tenant() -> None:
    row = request_row(
        entry(
            request_id="9f1c-envoy",
            status=403,
            details="upgrade_failed",
            path="/v1/models?x=1",
            method=base_pb2.GET,
        ),
        "n1",
    )
    assert row == RequestLogRow(
        time=START,
        request_id="9f1c-envoy",
        tenant_id="",
        key_id="",
        method="GET",
        path="/v1/models",
        status=403,
        latency_ms=3.0,
        error="upgrade_failed",
        node_id="n1",
    )


def test_what_an_entry_may_lack_or_overdo_is_bounded() -> None:
    # A codec error before the headers were whole: no id, no method, no path.
    bare = request_row(entry(), "n1")
    assert (bare.method, bare.path, bare.status, bare.error) == ("", "", 400, "http1.codec_error")
    assert len(bare.request_id) == 32  # one of ours, never empty
    long = request_row(
        entry(path="/" + "a" * 100_000, details="upstream_reset{connection_failure," + "x" * 500),
        "n1",
    )
    assert len(long.path) == PATH_LOG_LIMIT
    assert long.error == "upstream_reset"  # the static part: LowCardinality stays low
    # A client that went away before any answer.
    assert request_row(entry(status=0, details=""), "n1").error == NO_RESPONSE


@pytest.fixture(scope="module")
def log_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    store = LogStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    yield store
    store.close()


@dataclass
class Served:
    channel: grpc.aio.Channel
    ext_proc: ext_proc_grpc.ExternalProcessorStub
    access_log: als_pb2_grpc.AccessLogServiceStub
    service: EnvoyAccessLog
    sink: LogSink
    store: LogStore
    node_id: str

    async def rows(self, tenant_id: str) -> list[RequestLogRow]:
        await self.sink.flush()
        return [
            row
            for row in self.store.recent_request_logs(tenant_id, 1000)
            if row.node_id == self.node_id
        ]

    async def send_entries(self, *entries: accesslog_pb2.HTTPAccessLogEntry) -> None:
        """One StreamAccessLogs call as Envoy makes it: an identifier, then the entries."""
        call = self.access_log.StreamAccessLogs()
        message = als_pb2.StreamAccessLogsMessage()
        message.identifier.log_name = "gatez"
        message.http_logs.log_entry.extend(entries)
        await call.write(message)
        await call.done_writing()
        assert await call == als_pb2.StreamAccessLogsResponse()


@pytest.fixture(params=["h2", "grpcio"])
async def served(
    request: pytest.FixtureRequest, tmp_path: Path, redis_server: RedisServer, log_store: LogStore
) -> AsyncIterator[Served]:
    http = aiohttp.ClientSession()
    redis = PipelinedRedis.from_url(redis_server.url)
    node_id = f"als-{request.param}-{uuid.uuid4().hex[:6]}"
    sink = LogSink(ClickHouseLogWriter(log_store))
    compiled = policy()
    dispatcher = build_dispatcher(
        lambda: compiled, jwks=JwksCache(http), redis=redis, sink=sink, node_id=node_id
    )
    service = EnvoyAccessLog(sink, node_id, wait_s=0.4)
    methods = {**ExternalProcessor(dispatcher, service).methods(), **service.methods()}
    socket = f"unix:{tmp_path}/ep.sock"
    server: GrpcServer | grpc.aio.Server
    if request.param == "grpcio":
        server = await serve_grpcio(methods, socket)
    else:
        server = GrpcServer(methods)
        await server.listen(socket)
    channel = grpc.aio.insecure_channel(socket)
    yield Served(
        channel,
        ext_proc_grpc.ExternalProcessorStub(channel),
        als_pb2_grpc.AccessLogServiceStub(channel),
        service,
        sink,
        log_store,
        node_id,
    )
    service.close()
    await channel.close(None)
    await server.stop(None)
    await http.close()
    await redis.close()


async def test_requests_envoy_answered_itself_are_logged_without_a_tenant(
    served: Served,
) -> None:
    ids = [uuid.uuid4().hex for _ in range(3)]
    await served.send_entries(
        entry(request_id=ids[0], status=400, details="http1.codec_error"),
        entry(request_id=ids[1], status=431, details="http1.headers_too_large"),
        entry(request_id=ids[2], status=403, details="upgrade_failed", path="/v1/models"),
    )
    rows = {row.request_id: row for row in await served.rows("")}
    assert {(rows[i].status, rows[i].error) for i in ids} == {
        (400, "http1.codec_error"), (431, "http1.headers_too_large"), (403, "upgrade_failed")
    }  # fmt: skip


async def _reset_after_first_answer(served: Served, path: str) -> str:
    """Opens a flow as Envoy would, reads the first answer, then resets the stream (Envoy gave
    up on the request); returns the request id."""
    start = request_headers(path, AUTH, method="GET")
    request_id = _request_id(start)
    call = served.ext_proc.Process()
    await call.write(start)
    first = await call.read()
    assert first.WhichOneof("response") == "request_headers"
    call.cancel()
    return request_id


async def test_a_flow_envoy_reset_takes_envoys_answer_and_has_one_row(served: Served) -> None:
    request_id = await _reset_after_first_answer(served, "/api/orders/1")
    await asyncio.sleep(0.1)  # the reset reaches the data plane before Envoy's entry
    assert served.service.waiting == 1
    await served.send_entries(
        entry(request_id=request_id, status=400, details="http1.codec_error{bad chunk}")
    )
    rows = [r for r in await served.rows("acme") if r.request_id == request_id]
    # The tenant and key from the flow, what the client got from Envoy.
    assert [(r.key_id, r.status, r.error) for r in rows] == [("key-1", 400, "http1.codec_error")]
    assert not [r for r in await served.rows("") if r.request_id == request_id]
    assert served.service.waiting == 0


async def test_a_reset_flow_without_envoys_entry_is_logged_as_aborted(served: Served) -> None:
    request_id = await _reset_after_first_answer(served, "/api/orders/2")
    await asyncio.sleep(0.6)  # past the wait: Envoy had marked it handled, no entry comes
    rows = [r for r in await served.rows("acme") if r.request_id == request_id]
    assert [(r.status, r.error) for r in rows] == [(0, ABORTED)]
    assert served.service.waiting == 0


async def test_an_undecodable_message_ends_the_call_and_loses_nothing_queued(
    served: Served,
) -> None:
    request_id = uuid.uuid4().hex
    await served.send_entries(entry(request_id=request_id))
    # No serialisers: bytes in, bytes out.
    call = served.channel.stream_unary(STREAM_ACCESS_LOGS_METHOD, None, None)(None)
    await call.write(b"\xff\xff not protobuf")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [r.request_id for r in await served.rows("") if r.request_id == request_id] == [
        request_id
    ]
