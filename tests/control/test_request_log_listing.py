"""Request-log rows are listed per tenant, and the rows of requests that reached no tenant (401s,
requests Envoy refused itself, unrouted paths) through `unauthenticated`."""

from __future__ import annotations

import dataclasses

import grpc

from extproc.logsink import Batch, ControlLogWriter
from gatez.v1 import control_pb2
from tests.control.support import AUTH, DATAPLANE_TOKEN, Api, rpc_error
from tests.control.test_log_ingest import request_row


async def test_unauthenticated_rows_are_listed_apart_from_every_tenants(
    channel: grpc.aio.Channel, api: Api
) -> None:
    tenant_rows = [request_row(n) for n in range(3)]
    anonymous = [
        dataclasses.replace(request_row(10 + n), tenant_id="", key_id="", status=status, error=e)
        for n, (status, e) in enumerate(
            [(401, "authentication_error"), (400, "http1.codec_error"), (431, "http1.headers")]
        )
    ]
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(
        Batch(requests=[*tenant_rows, *anonymous])
    )

    listed = await api.control.ListRequestLogs(
        control_pb2.ListRequestLogsRequest(unauthenticated=True), metadata=AUTH
    )
    assert sorted(r.request_id for r in listed.request_logs) == sorted(
        r.request_id for r in anonymous
    )
    assert {(r.status, r.error) for r in listed.request_logs} == {
        (401, "authentication_error"), (400, "http1.codec_error"), (431, "http1.headers")
    }  # fmt: skip
    tenant = await api.control.ListRequestLogs(
        control_pb2.ListRequestLogsRequest(tenant_id="acme"), metadata=AUTH
    )
    assert sorted(r.request_id for r in tenant.request_logs) == sorted(
        r.request_id for r in tenant_rows
    )


async def test_a_listing_names_a_tenant_or_unauthenticated_not_both_nor_neither(
    api: Api,
) -> None:
    both = await rpc_error(
        api.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(tenant_id="acme", unauthenticated=True),
            metadata=AUTH,
        )
    )
    assert both.code() == grpc.StatusCode.INVALID_ARGUMENT
    neither = await rpc_error(
        api.control.ListRequestLogs(control_pb2.ListRequestLogsRequest(), metadata=AUTH)
    )
    assert neither.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant_id" in (neither.details() or "")


async def test_unauthenticated_rows_need_the_admin_token(api: Api) -> None:
    error = await rpc_error(
        api.control.ListRequestLogs(control_pb2.ListRequestLogsRequest(unauthenticated=True))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
