"""The MCP agent gateway end to end: the official `mcp` SDK as the client, real MCP servers built
with the same SDK behind Gatez, through each proxy (Envoy and APISIX).

This module: deny-by-default tools (allowed, denied, hidden — with the server answering in SSE
and in JSON), the prompt and resource allowlists, the upstream credential, the login challenge
and its metadata, and the audit rows. The other themes are in `test_mcp_*.py`."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import orjson
import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin
from tests.e2e.mcp_gateway import (
    DENY,
    UPSTREAM_TOKEN,
    McpTenant,
    mcp_tenant,
    rule,
    wait_for_audit,
)
from tests.support.mcp_servers import (
    ClientWire,
    McpUpstream,
    McpUpstreams,
    mcp_client,
    post_jsonrpc,
)
from tests.support.oidc import OidcIssuer

pytestmark = pytest.mark.e2e

ANSWER_MODES = ("sse", "json")


@pytest.fixture(scope="module")
def workbenches(mcp_upstreams: McpUpstreams) -> dict[str, McpUpstream]:
    """The workbench answering requests as SSE streams, and as JSON."""
    return {
        "sse": mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN),
        "json": mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN, json_response=True),
    }


@pytest.fixture(scope="module")
def tenants(
    admin: Admin, stack: Stack, workbenches: dict[str, McpUpstream], oidc: OidcIssuer
) -> dict[str, McpTenant]:
    """By answer mode, a tenant whose policy allows `echo` and `add`, denies `delete_repo` (and
    by default every other tool), the `greeting` prompt and the readme resource. (One tenant per
    mode: the same tools on two servers of one tenant would collide.)"""
    made = {}
    for mode, upstream in workbenches.items():
        tenant = mcp_tenant(
            admin,
            stack,
            {"workbench": upstream},
            rule("echo"),
            rule("add"),
            rule("delete_repo", DENY),
            prompts=["greeting"],
            resources=["workbench://readme"],
        )
        made[mode] = tenant
    # The SSE tenant also logs in with OAuth: its issuer is in the protected-resource metadata.
    created = admin.control.CreateIdentityProvider(
        control_pb2.CreateIdentityProviderRequest(
            identity_provider=policy_pb2.IdentityProvider(
                tenant_id=made["sse"].tenant_id,
                issuer=oidc.issuer,
                jwks_url=oidc.jwks_url,
                audience=oidc.audience,
                tenant_claim="tenant_id",
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    return made


def tools_calls(upstream: McpUpstream, tool: str) -> int:
    """How many tools/call requests for `tool` reached the upstream."""
    return sum(
        1
        for r in upstream.received_mcp()
        if r.jsonrpc_method == "tools/call" and r.json["params"]["name"] == tool
    )


@pytest.mark.parametrize("mode", ANSWER_MODES)
async def test_allowed_tools_run_and_others_are_denied_and_hidden(
    mode: str, tenants: dict[str, McpTenant], workbenches: dict[str, McpUpstream]
) -> None:
    tenant, upstream = tenants[mode], workbenches[mode]
    wire = ClientWire()
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key, wire=wire) as client:
        listed = await client.list_tools()
        # Denied and unlisted tools vanish: only the allowed ones are left of the server's ten.
        assert sorted(t.name for t in listed.tools) == ["add", "echo"]
        result = await client.call_tool("echo", {"text": "hello"})
        assert result.content[0].text == "hello"  # type: ignore[union-attr]
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert added.content[0].text == "5"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not allowed") as denied:
            await client.call_tool("delete_repo", {"name": "prod"})
        assert denied.value.code == -32001
        # No rule names `search`: denied by default.
        with pytest.raises(MCPError, match="not allowed"):
            await client.call_tool("search", {"query": "anything"})
    # The list came in the upstream's own answer mode, and was filtered all the same.
    listing = next(e for e in wire.exchanges if e.jsonrpc_method == "tools/list")
    content_type = listing.response_headers.get("content-type", "")
    assert content_type.startswith("text/event-stream" if mode == "sse" else "application/json")
    # Refused calls never reached the server.
    assert tools_calls(upstream, "delete_repo") == 0
    assert tools_calls(upstream, "search") == 0
    assert tools_calls(upstream, "echo") >= 1


async def test_prompts_and_resources_follow_their_allowlists(tenants: dict[str, McpTenant]) -> None:
    tenant = tenants["sse"]
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as client:
        prompts = await client.list_prompts()
        assert [p.name for p in prompts.prompts] == ["greeting"]
        greeting = await client.get_prompt("greeting", {"name": "Ada"})
        assert "Ada" in greeting.messages[0].content.text  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not allowed"):
            await client.get_prompt("review_code", {"code": "x = 1"})
        resources = await client.list_resources()
        assert [str(r.uri) for r in resources.resources] == ["workbench://readme"]
        readme = await client.read_resource("workbench://readme")
        assert readme.contents[0].text == "The workbench readme."  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not allowed"):
            await client.read_resource("workbench://secrets")


async def test_the_upstream_gets_its_credential_never_the_clients(
    tenants: dict[str, McpTenant], workbenches: dict[str, McpUpstream]
) -> None:
    tenant, upstream = tenants["json"], workbenches["json"]
    upstream.clear_received()
    async with mcp_client(
        tenant.url("workbench"),
        bearer=tenant.api_key,
        headers={"cookie": "session=client-secret", "x-api-key": "client-key"},
    ) as client:
        await client.call_tool("echo", {"text": "credential"})
    seen = upstream.received_mcp()
    assert seen
    # The upstream requires its token (401 without it): every request carried it.
    assert all(r.header_values("authorization") == [f"Bearer {UPSTREAM_TOKEN}"] for r in seen)
    for request in seen:
        headers = str(request.headers)
        assert tenant.api_key not in headers
        assert "client-secret" not in headers and "client-key" not in headers


async def test_unauthenticated_requests_get_the_login_challenge_and_its_metadata(
    tenants: dict[str, McpTenant], oidc: OidcIssuer, workbenches: dict[str, McpUpstream]
) -> None:
    tenant, upstream = tenants["sse"], workbenches["sse"]
    upstream.clear_received()
    url = tenant.url("workbench")
    for bearer in (None, "not-a-gatez-key"):
        reply = await post_jsonrpc(
            url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, bearer=bearer
        )
        assert reply.status == 401
        assert reply.message["error"]["code"] == -32001
        challenge = reply.headers.get("www-authenticate", "")
        prefix = 'Bearer resource_metadata="'
        assert challenge.startswith(prefix) and challenge.endswith('"')
    metadata_url = challenge[len(prefix) : -1]
    assert metadata_url.endswith(
        f"/.well-known/oauth-protected-resource/mcp/{tenant.tenant_id}/workbench"
    )
    async with httpx.AsyncClient(timeout=10) as http:
        document = await http.get(metadata_url)
    assert document.status_code == 200
    metadata = document.json()
    assert metadata["resource"] == url
    assert metadata["authorization_servers"] == [oidc.issuer]
    assert metadata["bearer_methods_supported"] == ["header"]
    assert upstream.received_mcp() == []


async def test_every_agent_action_has_an_audit_row(
    admin: Admin, tenants: dict[str, McpTenant]
) -> None:
    tenant = tenants["json"]
    text = f"audit-{uuid.uuid4().hex}"
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as client:
        await client.list_tools()
        await client.call_tool("echo", {"text": text})
        with pytest.raises(MCPError):
            await client.call_tool("delete_repo", {"name": text})
    echo_digest = hashlib.sha256(orjson.dumps({"text": text})).hexdigest()
    delete_digest = hashlib.sha256(orjson.dumps({"name": text})).hexdigest()
    rows = wait_for_audit(
        admin,
        tenant.tenant_id,
        [
            lambda r: r.arguments_digest == echo_digest,
            lambda r: r.arguments_digest == delete_digest,
        ],
    )
    echo = next(r for r in rows if r.arguments_digest == echo_digest)
    assert (echo.method, echo.tool, echo.decision, echo.status) == (
        "tools/call",
        "echo",
        "allowed",
        200,
    )
    assert echo.server == "workbench" and echo.caller == tenant.access.api_key_id
    assert echo.session_id_digest and echo.protocol_version == "2025-11-25"
    assert echo.result_bytes > 0 and echo.latency_ms > 0
    # Raw arguments only when the policy says so.
    assert echo.arguments_json == ""
    delete = next(r for r in rows if r.arguments_digest == delete_digest)
    assert (delete.tool, delete.decision) == ("delete_repo", "denied")
    assert "delete_repo" in delete.reason
    session = [r for r in rows if r.session_id_digest == echo.session_id_digest]
    listing = next(r for r in session if r.method == "tools/list")
    assert listing.decision == "allowed" and "hidden" in listing.reason
    assert any(r.method == "initialize" for r in session)
