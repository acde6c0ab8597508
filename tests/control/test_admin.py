"""ControlService: tenants, API keys, identity providers, providers and model routes."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from gatez import keys
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, DATAPLANE_AUTH, Api, rpc_error

PROVIDER_SECRET = "sk-provider-secret-do-not-leak"


async def create_tenant(api: Api, tenant_id: str) -> None:
    await api.control.CreateTenant(
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id=tenant_id)), metadata=AUTH
    )


async def create_provider(api: Api, name: str = "openai", api_key: str = "") -> Any:
    return await api.control.CreateProvider(
        api_pb.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=name,
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            ),
            api_key=api_key,
        ),
        metadata=AUTH,
    )


def identity_provider(tenant_id: str, **overrides: Any) -> policy_pb2.IdentityProvider:
    fields: dict[str, Any] = {
        "tenant_id": tenant_id,
        "issuer": "https://idp.example.com/realms/acme",
        "jwks_url": "https://idp.example.com/realms/acme/certs",
        "audience": "gatez",
    }
    return policy_pb2.IdentityProvider(**(fields | overrides))


async def policy_version(api: Api) -> int:
    status = await api.control.GetPolicyStatus(api_pb.GetPolicyStatusRequest(), metadata=AUTH)
    version: int = status.version
    return version


async def current_snapshot(api: Api) -> policy_pb2.PolicySnapshot:
    """The snapshot a data plane receives (the only place key digests travel)."""
    call = api.data_plane.Watch(metadata=DATAPLANE_AUTH)
    await call.write(api_pb.WatchRequest(node_id="dp-test"))
    response = await call.read()
    call.cancel()
    snapshot: policy_pb2.PolicySnapshot = response.snapshot
    return snapshot


async def test_tenant_crud(api: Api) -> None:
    created = await api.control.CreateTenant(
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id="acme", display_name="Acme")),
        metadata=AUTH,
    )
    assert created.policy_version == 1
    assert created.tenant.id == "acme"
    assert created.tenant.HasField("create_time")

    got = await api.control.GetTenant(api_pb.GetTenantRequest(tenant_id="acme"), metadata=AUTH)
    assert got.tenant == created.tenant
    await create_tenant(api, "globex")
    listed = await api.control.ListTenants(api_pb.ListTenantsRequest(), metadata=AUTH)
    assert [t.id for t in listed.tenants] == ["acme", "globex"]

    limited = await api.control.SetRateLimit(
        api_pb.SetRateLimitRequest(
            tenant_id="acme", rate_limit=policy_pb2.RateLimit(requests_per_minute=60, burst=10)
        ),
        metadata=AUTH,
    )
    assert limited.policy_version == 3
    assert limited.tenant.rate_limit.requests_per_minute == 60
    cleared = await api.control.SetRateLimit(
        api_pb.SetRateLimitRequest(tenant_id="acme"), metadata=AUTH
    )
    assert not cleared.tenant.HasField("rate_limit")

    deleted = await api.control.DeleteTenant(
        api_pb.DeleteTenantRequest(tenant_id="acme"), metadata=AUTH
    )
    assert deleted.policy_version == 5
    error = await rpc_error(
        api.control.GetTenant(api_pb.GetTenantRequest(tenant_id="acme"), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "acme" in (error.details() or "")


async def test_duplicate_tenant_already_exists(api: Api) -> None:
    await create_tenant(api, "acme")
    error = await rpc_error(create_tenant(api, "acme"))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert await policy_version(api) == 1


async def test_deleting_a_tenant_deletes_what_it_owns(api: Api) -> None:
    for tenant_id in ("acme", "globex"):
        await create_tenant(api, tenant_id)
        await api.control.CreateApiKey(
            api_pb.CreateApiKeyRequest(tenant_id=tenant_id, name="ci"), metadata=AUTH
        )
        await api.control.CreateIdentityProvider(
            api_pb.CreateIdentityProviderRequest(identity_provider=identity_provider(tenant_id)),
            metadata=AUTH,
        )
    await create_provider(api)
    for tenant_id in ("acme", "globex", ""):
        await api.control.CreateModelRoute(
            api_pb.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    tenant_id=tenant_id, alias="gpt", provider="openai", upstream_model="gpt-4o"
                )
            ),
            metadata=AUTH,
        )

    await api.control.DeleteTenant(api_pb.DeleteTenantRequest(tenant_id="acme"), metadata=AUTH)

    idps = await api.control.ListIdentityProviders(
        api_pb.ListIdentityProvidersRequest(), metadata=AUTH
    )
    assert [i.tenant_id for i in idps.identity_providers] == ["globex"]
    routes = await api.control.ListModelRoutes(api_pb.ListModelRoutesRequest(), metadata=AUTH)
    assert sorted(r.tenant_id for r in routes.model_routes) == ["", "globex"]
    globex_keys = await api.control.ListApiKeys(
        api_pb.ListApiKeysRequest(tenant_id="globex"), metadata=AUTH
    )
    assert len(globex_keys.api_keys) == 1
    error = await rpc_error(
        api.control.ListApiKeys(api_pb.ListApiKeysRequest(tenant_id="acme"), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    providers = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert [p.name for p in providers.providers] == ["openai"]


# (method, request, expected code, words the message must contain)
REFUSED: list[tuple[str, Message, grpc.StatusCode, str]] = [
    (
        "CreateTenant",
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id="Acme_Corp")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant.id 'Acme_Corp' is not valid",
    ),
    ("CreateTenant", api_pb.CreateTenantRequest(), grpc.StatusCode.INVALID_ARGUMENT, "tenant"),
    (
        "CreateTenant",
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(display_name="x")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant.id is required",
    ),
    (
        "CreateModelRoute",
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias="gpt", provider="nowhere", upstream_model="gpt-4o"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown provider 'nowhere'",
    ),
    (
        "CreateModelRoute",
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(alias="gpt", provider="openai")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_route.upstream_model is required",
    ),
    (
        "CreateIdentityProvider",
        api_pb.CreateIdentityProviderRequest(
            identity_provider=identity_provider("acme", algorithms=["HS256"])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "HS256",
    ),
    (
        "CreateIdentityProvider",
        api_pb.CreateIdentityProviderRequest(
            identity_provider=identity_provider("acme", jwks_url="not a url")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "jwks_url",
    ),
    (
        "CreateIdentityProvider",
        api_pb.CreateIdentityProviderRequest(identity_provider=identity_provider("nobody")),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nobody' not found",
    ),
    (
        "SetRateLimit",
        api_pb.SetRateLimitRequest(tenant_id="acme", rate_limit=policy_pb2.RateLimit()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "requests_per_minute",
    ),
    (
        "CreateApiKey",
        api_pb.CreateApiKeyRequest(name="ci"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id is required",
    ),
    (
        "CreateApiKey",
        api_pb.CreateApiKeyRequest(tenant_id="nobody"),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nobody' not found",
    ),
    (
        "CreateApiKey",
        api_pb.CreateApiKeyRequest(tenant_id="acme", secret="too-short"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "secret must be 20 to 256 characters",
    ),
    (
        "CreateApiKey",
        api_pb.CreateApiKeyRequest(tenant_id="acme", secret="has a space in the middle"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "printable ASCII",
    ),
    (
        "RevokeApiKey",
        api_pb.RevokeApiKeyRequest(api_key_id="key-000000000000"),
        grpc.StatusCode.NOT_FOUND,
        "key-000000000000",
    ),
    (
        "CreateProvider",
        api_pb.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name="local", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="ftp://x"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "base_url",
    ),
    (
        "CreateProvider",
        api_pb.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name="openai", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="http://x"
            )
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "openai",
    ),
    (
        "SetProviderCredential",
        api_pb.SetProviderCredentialRequest(provider="openai"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "api_key is required",
    ),
    (
        "SetProviderCredential",
        api_pb.SetProviderCredentialRequest(provider="nowhere", api_key="sk-1"),
        grpc.StatusCode.NOT_FOUND,
        "provider 'nowhere' not found",
    ),
    (
        "DeleteProvider",
        api_pb.DeleteProviderRequest(name="openai"),
        grpc.StatusCode.FAILED_PRECONDITION,
        "used by model routes",
    ),
    (
        "DeleteModelRoute",
        api_pb.DeleteModelRouteRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model_route_id is required",
    ),
    (
        "DeleteIdentityProvider",
        api_pb.DeleteIdentityProviderRequest(identity_provider_id="idp-missing"),
        grpc.StatusCode.NOT_FOUND,
        "idp-missing",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "code", "words"),
    REFUSED,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(REFUSED)],
)
async def test_refused_changes_name_the_problem_and_save_nothing(
    api: Api, method: str, request_message: Message, code: grpc.StatusCode, words: str
) -> None:
    await create_tenant(api, "acme")
    await create_provider(api)
    await api.control.CreateModelRoute(
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias="gpt", provider="openai", upstream_model="gpt-4o"
            )
        ),
        metadata=AUTH,
    )
    before = await policy_version(api)

    error = await rpc_error(getattr(api.control, method)(request_message, metadata=AUTH))

    assert error.code() == code, error.details()
    assert words in (error.details() or "")
    assert await policy_version(api) == before


async def test_api_key_secret_is_shown_once(api: Api) -> None:
    await create_tenant(api, "acme")
    created = await api.control.CreateApiKey(
        api_pb.CreateApiKeyRequest(tenant_id="acme", name="ci"), metadata=AUTH
    )
    secret: str = created.secret
    assert secret.startswith(keys.SECRET_PREFIX)
    assert created.api_key.id.startswith("key-") and len(created.api_key.id) == len("key-") + 12
    assert created.api_key.secret_prefix == keys.display_prefix(secret)
    assert created.api_key.secret_sha256 == ""
    assert created.policy_version == 2

    listed = await api.control.ListApiKeys(
        api_pb.ListApiKeysRequest(tenant_id="acme"), metadata=AUTH
    )
    assert [k.id for k in listed.api_keys] == [created.api_key.id]
    wire = listed.SerializeToString()
    assert keys.digest(secret).encode() not in wire
    assert secret.encode() not in wire

    revoked = await api.control.RevokeApiKey(
        api_pb.RevokeApiKeyRequest(api_key_id=created.api_key.id), metadata=AUTH
    )
    assert revoked.policy_version == 3
    listed = await api.control.ListApiKeys(
        api_pb.ListApiKeysRequest(tenant_id="acme"), metadata=AUTH
    )
    assert list(listed.api_keys) == []


async def test_an_imported_secret_is_kept_once_and_never_shared(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    known = "gz-imported-0123456789abcdef"
    created = await api.control.CreateApiKey(
        api_pb.CreateApiKeyRequest(tenant_id="acme", name="migrated", secret=known),
        metadata=AUTH,
    )
    assert created.secret == known
    assert created.api_key.secret_prefix == keys.display_prefix(known)
    snapshot = await current_snapshot(api)
    assert [k.secret_sha256 for k in snapshot.api_keys] == [keys.digest(known)]
    before = snapshot.version

    # The same secret under another tenant would make one credential mean two tenants.
    error = await rpc_error(
        api.control.CreateApiKey(
            api_pb.CreateApiKeyRequest(tenant_id="globex", secret=known), metadata=AUTH
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "acme" not in (error.details() or "")
    assert await policy_version(api) == before


async def test_data_planes_get_the_key_digest(api: Api) -> None:
    await create_tenant(api, "acme")
    created = await api.control.CreateApiKey(
        api_pb.CreateApiKeyRequest(tenant_id="acme"), metadata=AUTH
    )
    snapshot = await current_snapshot(api)
    assert [k.secret_sha256 for k in snapshot.api_keys] == [keys.digest(created.secret)]


async def test_provider_credential_is_write_only(api: Api) -> None:
    created = await create_provider(api, api_key=PROVIDER_SECRET)
    assert created.provider.has_credential
    first_set = created.provider.credential_update_time.ToDatetime()
    listed = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert listed.providers[0].has_credential
    assert listed.providers[0].credential_update_time.ToDatetime() == first_set

    replaced = await api.control.SetProviderCredential(
        api_pb.SetProviderCredentialRequest(provider="openai", api_key=PROVIDER_SECRET + "-2"),
        metadata=AUTH,
    )
    assert replaced.provider.credential_update_time.ToDatetime() >= first_set
    status = await api.control.GetPolicyStatus(api_pb.GetPolicyStatusRequest(), metadata=AUTH)
    listed = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    for response in (created, replaced, status, listed):
        assert PROVIDER_SECRET.encode() not in response.SerializeToString()


async def test_provider_without_credential(api: Api) -> None:
    created = await create_provider(api)
    assert not created.provider.has_credential
    assert not created.provider.HasField("credential_update_time")


async def test_provider_in_use_cannot_be_deleted_until_its_routes_are(api: Api) -> None:
    await create_provider(api, api_key=PROVIDER_SECRET)
    route = await api.control.CreateModelRoute(
        api_pb.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias="gpt", provider="openai", upstream_model="gpt-4o"
            )
        ),
        metadata=AUTH,
    )
    route_id: str = route.model_route.id
    assert route_id.startswith("route-")
    error = await rpc_error(
        api.control.DeleteProvider(api_pb.DeleteProviderRequest(name="openai"), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert route_id in (error.details() or "")

    await api.control.DeleteModelRoute(
        api_pb.DeleteModelRouteRequest(model_route_id=route_id), metadata=AUTH
    )
    deleted = await api.control.DeleteProvider(
        api_pb.DeleteProviderRequest(name="openai"), metadata=AUTH
    )
    assert deleted.policy_version == 4
    providers = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert list(providers.providers) == []


async def test_identity_providers_and_routes_list_by_tenant(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    created = await api.control.CreateIdentityProvider(
        api_pb.CreateIdentityProviderRequest(identity_provider=identity_provider("acme")),
        metadata=AUTH,
    )
    assert created.identity_provider.id.startswith("idp-")
    await api.control.CreateIdentityProvider(
        api_pb.CreateIdentityProviderRequest(
            identity_provider=identity_provider("globex", id="globex-keycloak")
        ),
        metadata=AUTH,
    )
    acme = await api.control.ListIdentityProviders(
        api_pb.ListIdentityProvidersRequest(tenant_id="acme"), metadata=AUTH
    )
    assert [i.id for i in acme.identity_providers] == [created.identity_provider.id]
    every = await api.control.ListIdentityProviders(
        api_pb.ListIdentityProvidersRequest(), metadata=AUTH
    )
    assert len(every.identity_providers) == 2
    error = await rpc_error(
        api.control.CreateIdentityProvider(
            api_pb.CreateIdentityProviderRequest(
                identity_provider=identity_provider("globex", id="globex-keycloak")
            ),
            metadata=AUTH,
        )
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS

    await api.control.DeleteIdentityProvider(
        api_pb.DeleteIdentityProviderRequest(identity_provider_id="globex-keycloak"),
        metadata=AUTH,
    )
    every = await api.control.ListIdentityProviders(
        api_pb.ListIdentityProvidersRequest(), metadata=AUTH
    )
    assert [i.tenant_id for i in every.identity_providers] == ["acme"]

    await create_provider(api)
    for tenant_id in ("acme", ""):
        await api.control.CreateModelRoute(
            api_pb.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    tenant_id=tenant_id, alias="gpt", provider="openai", upstream_model="gpt-4o"
                )
            ),
            metadata=AUTH,
        )
    acme_routes = await api.control.ListModelRoutes(
        api_pb.ListModelRoutesRequest(tenant_id="acme"), metadata=AUTH
    )
    assert [r.tenant_id for r in acme_routes.model_routes] == ["acme"]
    error = await rpc_error(
        api.control.CreateModelRoute(
            api_pb.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    alias="gpt", provider="openai", upstream_model="gpt-4o-mini"
                )
            ),
            metadata=AUTH,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "routed twice" in (error.details() or "")
