"""The MCP agent gateway end to end: the official `mcp` SDK as the client, real MCP servers built
with the same SDK behind Gatez, through each proxy (Envoy and APISIX)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.support.mcp_servers import McpUpstream, McpUpstreams, mcp_client, post_jsonrpc

pytestmark = pytest.mark.e2e

UPSTREAM_TOKEN = "mcp-upstream-token-for-tests"
ALLOW = policy_pb2.TOOL_ACTION_ALLOW
DENY = policy_pb2.TOOL_ACTION_DENY


@pytest.fixture(scope="module")
def workbench(mcp_upstreams: McpUpstreams) -> McpUpstream:
    return mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN)


@dataclass(frozen=True)
class McpTenant:
    access: TenantAccess
    url: str


def add_mcp_server(
    admin: Admin, access: TenantAccess, name: str, upstream: McpUpstream, credential: str = ""
) -> int:
    response = admin.control.CreateMcpServer(
        control_pb2.CreateMcpServerRequest(
            mcp_server=policy_pb2.McpServer(
                tenant_id=access.tenant_id, name=name, url=upstream.url
            ),
            credential=credential,
        ),
        metadata=admin.metadata,
    )
    return int(response.policy_version)


def set_agent_policy(admin: Admin, policy: policy_pb2.AgentPolicy) -> int:
    response = admin.control.SetAgentPolicy(
        control_pb2.SetAgentPolicyRequest(agent_policy=policy), metadata=admin.metadata
    )
    return int(response.policy_version)


@pytest.fixture
def mcp_tenant(admin: Admin, stack: Stack, workbench: McpUpstream) -> Iterator[McpTenant]:
    access = provision(admin)
    add_mcp_server(admin, access, "workbench", workbench, UPSTREAM_TOKEN)
    version = set_agent_policy(
        admin,
        policy_pb2.AgentPolicy(
            id=f"p-{uuid.uuid4().hex[:8]}",
            tenant_id=access.tenant_id,
            tools=[
                policy_pb2.ToolRule(tool="echo", action=ALLOW),
                policy_pb2.ToolRule(tool="add", action=ALLOW),
                policy_pb2.ToolRule(tool="delete_repo", action=DENY),
            ],
        ),
    )
    admin.wait_applied(version)
    yield McpTenant(access, f"{stack.config.gateway_url}/mcp/{access.tenant_id}/workbench")


async def test_allowed_tools_run_and_others_are_denied(
    mcp_tenant: McpTenant, workbench: McpUpstream
) -> None:
    async with mcp_client(mcp_tenant.url, bearer=mcp_tenant.access.api_key) as client:
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.content[0].text == "hello"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not allowed"):
            await client.call_tool("delete_repo", {"name": "prod"})
    # The upstream saw the server's credential, never the client's key.
    seen = workbench.received_mcp()
    assert seen
    assert all(r.header("authorization") == f"Bearer {UPSTREAM_TOKEN}" for r in seen)
    assert not any(mcp_tenant.access.api_key in str(r.headers) for r in seen)


async def test_unauthenticated_requests_get_the_login_challenge(mcp_tenant: McpTenant) -> None:
    reply = await post_jsonrpc(
        mcp_tenant.url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, bearer=None
    )
    assert reply.status == 401
    challenge = reply.headers.get("www-authenticate", "")
    assert challenge.startswith('Bearer resource_metadata="')
    assert "/.well-known/oauth-protected-resource/mcp/" in challenge
