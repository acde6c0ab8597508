"""A small async client for the control service, and the demo seed `make run` applies."""

from __future__ import annotations

import grpc

from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

DEMO_TENANT = "demo"
DEMO_PROVIDER = "demo-upstream"
DEMO_MODELS = {"gpt-4o-mini": "demo-echo-1", "demo": "demo-echo-1"}


class AdminClient:
    """The ControlService stub with the admin token attached to every call."""

    def __init__(self, address: str, admin_token: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.control = control_pb2_grpc.ControlServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {admin_token}"),)

    async def close(self) -> None:
        await self.channel.close(None)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()


async def seed_demo(
    client: AdminClient, *, demo_key: str, upstream_url: str, upstream_key: str
) -> None:
    """Creates the demo tenant, its key, the demo provider and model routes, once."""
    control, md = client.control, client.metadata
    tenants = await control.ListTenants(control_pb2.ListTenantsRequest(), metadata=md)
    if any(t.id == DEMO_TENANT for t in tenants.tenants):
        return
    await control.CreateTenant(
        control_pb2.CreateTenantRequest(
            tenant=policy_pb2.Tenant(
                id=DEMO_TENANT,
                display_name="Demo tenant",
                rate_limit=policy_pb2.RateLimit(requests_per_minute=6000, burst=1000),
            )
        ),
        metadata=md,
    )
    await control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=DEMO_TENANT, name="demo", secret=demo_key),
        metadata=md,
    )
    await control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=DEMO_PROVIDER, kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url=upstream_url
            ),
            api_key=upstream_key,
        ),
        metadata=md,
    )
    for alias, model in DEMO_MODELS.items():
        await control.CreateModelRoute(
            control_pb2.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    alias=alias, provider=DEMO_PROVIDER, upstream_model=model
                )
            ),
            metadata=md,
        )
