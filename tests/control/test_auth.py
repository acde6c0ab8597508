"""Each credential opens its own service: the admin token `ControlService`, a data-plane token
`DataPlaneService` (Watch, IngestLogs); reflection and health need none."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from control.auth import (
    ADMIN_TOKEN_REFUSED,
    DATAPLANE_TOKEN_REFUSED,
    MISSING_TOKEN,
    WRONG_TOKEN,
    CredentialInterceptor,
    Role,
)
from control.server import CONTROL_SERVICE, DATA_PLANE_SERVICE
from gatez.v1 import control_pb2
from tests.control.support import (
    ADMIN_TOKEN,
    AUTH,
    DATAPLANE_AUTH,
    Api,
    rpc_error,
)

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


# (metadata, expected code, expected message) on DataPlaneService.
DATA_PLANE_REFUSED = [
    pytest.param((), grpc.StatusCode.UNAUTHENTICATED, MISSING_TOKEN, id="no-metadata"),
    pytest.param(
        (("authorization", "Bearer nope"),),
        grpc.StatusCode.UNAUTHENTICATED,
        WRONG_TOKEN,
        id="wrong-token",
    ),
    pytest.param(
        AUTH, grpc.StatusCode.PERMISSION_DENIED, ADMIN_TOKEN_REFUSED, id="the-admin-token"
    ),
]


@pytest.mark.parametrize(("metadata", "code", "message"), DATA_PLANE_REFUSED)
async def test_watch_takes_only_a_data_plane_token(
    api: Api, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode, message: str
) -> None:
    call = api.data_plane.Watch(metadata=metadata)

    async def watch() -> None:
        # The refusal may end the call before the first write lands: either step may raise.
        await call.write(control_pb2.WatchRequest(node_id="intruder"))
        await call.read()

    error = await rpc_error(watch())
    assert (error.code(), error.details()) == (code, message)


@pytest.mark.parametrize(("metadata", "code", "message"), DATA_PLANE_REFUSED)
async def test_ingest_takes_only_a_data_plane_token(
    api: Api, metadata: tuple[tuple[str, str], ...], code: grpc.StatusCode, message: str
) -> None:
    error = await rpc_error(
        api.data_plane.IngestLogs(control_pb2.IngestLogsRequest(), metadata=metadata)
    )
    assert (error.code(), error.details()) == (code, message)


async def test_a_data_plane_token_cannot_call_the_admin_service(api: Api) -> None:
    for call in (
        api.control.ListTenants(control_pb2.ListTenantsRequest(), metadata=DATAPLANE_AUTH),
        api.control.GetPolicyStatus(control_pb2.GetPolicyStatusRequest(), metadata=DATAPLANE_AUTH),
        api.control.CreateTenant(control_pb2.CreateTenantRequest(), metadata=DATAPLANE_AUTH),
    ):
        error = await rpc_error(call)
        assert (error.code(), error.details()) == (
            grpc.StatusCode.PERMISSION_DENIED,
            DATAPLANE_TOKEN_REFUSED,
        )


async def test_each_token_lets_its_own_calls_in(api: Api) -> None:
    response = await api.control.ListTenants(control_pb2.ListTenantsRequest(), metadata=AUTH)
    assert list(response.tenants) == []
    await api.data_plane.IngestLogs(control_pb2.IngestLogsRequest(), metadata=DATAPLANE_AUTH)
    call = api.data_plane.Watch(metadata=DATAPLANE_AUTH)
    await call.write(control_pb2.WatchRequest(node_id="dp-1"))
    response = await call.read()
    assert response.snapshot.version == 0
    call.cancel()


@pytest.mark.parametrize(
    ("admin", "data_plane", "problem"),
    [
        ([""], ["dp"], "empty admin token"),
        (["admin"], [], "empty data plane token"),
        (["admin"], ["dp", ""], "empty data plane token"),
        (["same"], ["same"], "must differ"),
    ],
)
def test_credentials_that_would_blur_the_roles_are_refused_at_start(
    admin: list[str], data_plane: list[str], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        CredentialInterceptor(
            {CONTROL_SERVICE: Role.ADMIN}, admin_tokens=admin, dataplane_tokens=data_plane
        )


async def test_a_service_without_a_role_is_closed_to_every_token(api: Api) -> None:
    for metadata in (AUTH, DATAPLANE_AUTH):
        unknown = api.channel.unary_unary(
            "/gatez.v1.Unknown/Call",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=control_pb2.ListTenantsResponse.FromString,
        )
        error = await rpc_error(unknown(control_pb2.ListTenantsRequest(), metadata=metadata))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED


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
