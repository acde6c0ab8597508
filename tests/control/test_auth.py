"""The admin token guards every call except reflection and health."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control.auth import MISSING_TOKEN, WRONG_TOKEN
from control.server import CONTROL_SERVICE, DATA_PLANE_SERVICE
from gatez.v1 import control_pb2
from tests.control.support import ADMIN_TOKEN, AUTH, Api, rpc_error

REFUSED = [
    pytest.param((), MISSING_TOKEN, id="no-metadata"),
    pytest.param((("authorization", "Bearer wrong-token"),), WRONG_TOKEN, id="wrong-token"),
    pytest.param((("authorization", f"Bearer {ADMIN_TOKEN}x"),), WRONG_TOKEN, id="longer-token"),
    pytest.param((("authorization", f"Basic {ADMIN_TOKEN}"),), MISSING_TOKEN, id="not-bearer"),
    pytest.param((("authorization", "Bearer "),), MISSING_TOKEN, id="empty-bearer"),
]


@pytest.mark.parametrize(("metadata", "message"), REFUSED)
async def test_admin_call_without_the_token_is_unauthenticated(
    api: Api, metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    error = await rpc_error(
        api.control.ListTenants(control_pb2.ListTenantsRequest(), metadata=metadata)
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error.details() == message
    assert ADMIN_TOKEN not in (error.details() or "")


async def test_watch_stream_without_the_token_is_unauthenticated(api: Api) -> None:
    call = api.data_plane.Watch(metadata=(("authorization", "Bearer nope"),))
    await call.write(control_pb2.WatchRequest(node_id="intruder"))
    error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_ingest_without_the_token_is_unauthenticated(api: Api) -> None:
    error = await rpc_error(api.data_plane.IngestLogs(control_pb2.IngestLogsRequest()))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_the_token_lets_a_call_in(api: Api) -> None:
    response = await api.control.ListTenants(control_pb2.ListTenantsRequest(), metadata=AUTH)
    assert list(response.tenants) == []


@pytest.mark.parametrize("service", ["", CONTROL_SERVICE, DATA_PLANE_SERVICE])
async def test_health_needs_no_token(api: Api, service: str) -> None:
    health = health_pb2_grpc.HealthStub(api.channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=service))
    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_needs_no_token(api: Api) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(api.channel)
    call = reflection.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {service.name for service in response.list_services_response.service}
    assert {CONTROL_SERVICE, DATA_PLANE_SERVICE} <= names
