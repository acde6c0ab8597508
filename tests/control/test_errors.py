"""No error message echoes unbounded client input: a 100 KB value comes back quoted, cut short."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from gatez.errors import QUOTED_INPUT_LIMIT
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, DATAPLANE_AUTH, Api, rpc_error

HUGE = "x" * 100_000
# What quoted() leaves of it: the repr of its first characters, then an ellipsis.
QUOTED = repr(HUGE[:QUOTED_INPUT_LIMIT]) + "…"
LONGEST_MESSAGE = 400

CASES: list[tuple[str, Message]] = [
    ("CreateTenant", api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id=HUGE))),
    ("GetTenant", api_pb.GetTenantRequest(tenant_id=HUGE)),
    ("DeleteTenant", api_pb.DeleteTenantRequest(tenant_id=HUGE)),
    ("SetRateLimit", api_pb.SetRateLimitRequest(tenant_id=HUGE)),
    ("CreateApiKey", api_pb.CreateApiKeyRequest(tenant_id=HUGE)),
    ("ListApiKeys", api_pb.ListApiKeysRequest(tenant_id=HUGE)),
    ("RevokeApiKey", api_pb.RevokeApiKeyRequest(api_key_id=HUGE)),
    (
        "CreateIdentityProvider",
        api_pb.CreateIdentityProviderRequest(
            identity_provider=policy_pb2.IdentityProvider(tenant_id=HUGE, issuer="https://i")
        ),
    ),
    (
        "CreateIdentityProvider",
        api_pb.CreateIdentityProviderRequest(
            identity_provider=policy_pb2.IdentityProvider(id=HUGE, tenant_id="acme")
        ),
    ),
    ("ListIdentityProviders", api_pb.ListIdentityProvidersRequest(tenant_id=HUGE)),
    ("DeleteIdentityProvider", api_pb.DeleteIdentityProviderRequest(identity_provider_id=HUGE)),
    (
        "CreateProvider",
        api_pb.CreateProviderRequest(
            provider=policy_pb2.Provider(name=HUGE, kind=policy_pb2.PROVIDER_KIND_OPENAI)
        ),
    ),
    ("DeleteProvider", api_pb.DeleteProviderRequest(name=HUGE)),
    ("SetProviderCredential", api_pb.SetProviderCredentialRequest(provider=HUGE, api_key="k")),
    (
        "CreateModelRoute",
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                tenant_id=HUGE, alias="a", provider="p", upstream_model="m"
            )
        ),
    ),
    (
        "CreateModelRoute",
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(alias="a", provider=HUGE, upstream_model="m")
        ),
    ),
    (
        "CreateModelRoute",
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(id=HUGE, alias="a", provider="p", upstream_model="m")
        ),
    ),
    ("ListModelRoutes", api_pb.ListModelRoutesRequest(tenant_id=HUGE)),
    ("DeleteModelRoute", api_pb.DeleteModelRouteRequest(model_route_id=HUGE)),
    ("AdoptLineage", api_pb.AdoptLineageRequest(lineage=HUGE)),
]


@pytest.mark.parametrize(
    ("method", "request_message"),
    CASES,
    ids=[f"{method}-{index}" for index, (method, _) in enumerate(CASES)],
)
async def test_a_100_kb_value_is_quoted_bounded(
    api: Api, method: str, request_message: Message
) -> None:
    await api.control.CreateTenant(
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id="acme")), metadata=AUTH
    )
    error = await rpc_error(getattr(api.control, method)(request_message, metadata=AUTH))
    details = error.details() or ""
    assert error.code() != grpc.StatusCode.INTERNAL, details
    assert len(details) < LONGEST_MESSAGE, details
    assert QUOTED in details


async def test_a_100_kb_node_id_is_quoted_bounded(api: Api) -> None:
    call: Any = api.data_plane.Watch(metadata=DATAPLANE_AUTH)
    await call.write(api_pb.WatchRequest(node_id=HUGE))
    error = await rpc_error(call.read())
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) < LONGEST_MESSAGE and QUOTED in details
