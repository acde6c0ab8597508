"""A small async client for the control service, and the demo seed `make run` applies."""

from __future__ import annotations

import grpc

from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

DEMO_TENANT = "demo"
DEMO_PROVIDER = "demo-upstream"
DEMO_KEY_NAME = "demo"
DEMO_MODELS = {"gpt-4o-mini": "demo-echo-1", "demo": "demo-echo-1"}
DEMO_MCP_SERVER = "workbench"
DEMO_AGENT_POLICY = "demo-agents"


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
    client: AdminClient,
    *,
    demo_key: str,
    upstream_url: str,
    upstream_key: str,
    mcp_url: str | None = None,
) -> None:
    """Brings the demo tenant, its key, the demo provider and its model routes to the state
    `make run` prints, whatever an earlier run left: the tenant and routes are created when
    missing, the provider is re-pointed at `upstream_url`, and the key named `demo` is replaced
    by one with `demo_key` as its secret (so a changed `$GATEZ_DEMO_KEY` takes effect). With
    `mcp_url`, the demo MCP server is registered at it, with an agent policy: its harmless tools
    allowed, `delete_repo` held for approval, everything else denied."""
    control, md = client.control, client.metadata
    tenants = await control.ListTenants(control_pb2.ListTenantsRequest(), metadata=md)
    if not any(t.id == DEMO_TENANT for t in tenants.tenants):
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

    listed = await control.ListApiKeys(
        control_pb2.ListApiKeysRequest(tenant_id=DEMO_TENANT), metadata=md
    )
    for key in listed.api_keys:
        if key.name == DEMO_KEY_NAME:
            await control.RevokeApiKey(
                control_pb2.RevokeApiKeyRequest(api_key_id=key.id), metadata=md
            )
    await control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=DEMO_TENANT, name=DEMO_KEY_NAME, secret=demo_key),
        metadata=md,
    )

    routes = await control.ListModelRoutes(control_pb2.ListModelRoutesRequest(), metadata=md)
    for route in routes.model_routes:
        if route.provider == DEMO_PROVIDER:
            await control.DeleteModelRoute(
                control_pb2.DeleteModelRouteRequest(model_route_id=route.id), metadata=md
            )
    providers = await control.ListProviders(control_pb2.ListProvidersRequest(), metadata=md)
    if any(p.name == DEMO_PROVIDER for p in providers.providers):
        await control.DeleteProvider(
            control_pb2.DeleteProviderRequest(name=DEMO_PROVIDER), metadata=md
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
                    tenant_id=DEMO_TENANT,
                    alias=alias,
                    provider=DEMO_PROVIDER,
                    upstream_model=model,
                )
            ),
            metadata=md,
        )
    if mcp_url is not None:
        await _seed_mcp(client, mcp_url)


async def _seed_mcp(client: AdminClient, mcp_url: str) -> None:
    control, md = client.control, client.metadata
    servers = await control.ListMcpServers(
        control_pb2.ListMcpServersRequest(tenant_id=DEMO_TENANT), metadata=md
    )
    if any(s.name == DEMO_MCP_SERVER for s in servers.mcp_servers):
        await control.DeleteMcpServer(
            control_pb2.DeleteMcpServerRequest(tenant_id=DEMO_TENANT, name=DEMO_MCP_SERVER),
            metadata=md,
        )
    await control.CreateMcpServer(
        control_pb2.CreateMcpServerRequest(
            mcp_server=policy_pb2.McpServer(
                tenant_id=DEMO_TENANT, name=DEMO_MCP_SERVER, url=mcp_url
            )
        ),
        metadata=md,
    )
    allow, hold = policy_pb2.TOOL_ACTION_ALLOW, policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL
    await control.SetAgentPolicy(
        control_pb2.SetAgentPolicyRequest(
            agent_policy=policy_pb2.AgentPolicy(
                id=DEMO_AGENT_POLICY,
                tenant_id=DEMO_TENANT,
                tools=[
                    *(
                        policy_pb2.ToolRule(tool=tool, action=allow)
                        for tool in ("echo", "add", "search", "fetch_url", "read_file")
                    ),
                    policy_pb2.ToolRule(tool="delete_repo", action=hold),
                ],
                prompts=["greeting"],
                resources=["workbench://readme"],
                allowed_path_roots=["/srv/demo"],
                approval_timeout_s=120,
            )
        ),
        metadata=md,
    )
