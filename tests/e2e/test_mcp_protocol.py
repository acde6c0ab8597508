"""The MCP wire end to end: sessions bound to who opened them (a replay by another tenant or
another API key refused), the 2026-07-28 headers checked against the body, and malformed
JSON-RPC answered with JSON-RPC errors before anything reaches the server."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from tests.e2e.conftest import Admin
from tests.e2e.mcp_gateway import UPSTREAM_TOKEN, McpTenant, add_api_key, mcp_tenant, rule
from tests.support.mcp_servers import (
    MODERN_VERSION,
    ClientWire,
    McpUpstream,
    McpUpstreams,
    mcp_client,
    modern_request,
    post_jsonrpc,
)

pytestmark = pytest.mark.e2e

INVALID_REQUEST = -32600
PARSE_ERROR = -32700
HEADER_MISMATCH = -32020


@dataclass(frozen=True)
class Tenants:
    a: McpTenant
    # Another API key of tenant A.
    a_other_key: str
    b: McpTenant


@pytest.fixture(scope="module")
def workbench(mcp_upstreams: McpUpstreams) -> McpUpstream:
    return mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN)


@pytest.fixture(scope="module")
def tenants(admin: Admin, stack: Stack, workbench: McpUpstream) -> Tenants:
    """Two tenants, each with the same workbench as its server `workbench`."""
    made = [
        mcp_tenant(admin, stack, {"workbench": workbench}, rule("echo"), rule("add"))
        for _ in range(2)
    ]
    secret, _, version = add_api_key(admin, made[0].tenant_id)
    admin.wait_applied(version)
    return Tenants(made[0], secret, made[1])


def echo_call(text: str, request_id: int = 7) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": text}},
    }


def reached_upstream(upstream: McpUpstream, marker: str) -> bool:
    return any(marker in r.body.decode(errors="replace") for r in upstream.received_mcp())


async def test_a_session_replayed_by_another_caller_is_refused(
    tenants: Tenants, workbench: McpUpstream
) -> None:
    a, b = tenants.a, tenants.b
    wire = ClientWire()
    async with mcp_client(a.url("workbench"), bearer=a.api_key, wire=wire) as client:
        await client.call_tool("echo", {"text": "mine"})
        session_id = wire.session_id
        assert session_id
        stolen = f"stolen-{uuid.uuid4().hex}"
        headers = {"mcp-session-id": session_id, "mcp-protocol-version": client.protocol_version}
        replays = {
            "tenant B, its own server": (b.url("workbench"), b.api_key),
            "tenant B, tenant A's server": (a.url("workbench"), b.api_key),
            "tenant A's other API key": (a.url("workbench"), tenants.a_other_key),
        }
        for who, (url, key) in replays.items():
            reply = await post_jsonrpc(url, echo_call(stolen), bearer=key, headers=headers)
            assert reply.status == 404, who
            assert reply.message["error"]["code"] == -32001, who
            # Nor may another caller listen on the session's GET stream, or end the session.
            for method in ("GET", "DELETE"):
                other = await post_jsonrpc(
                    url, None, bearer=key, headers=headers, method=method, timeout_s=3
                )
                assert other.status == 404, (who, method)
        assert not reached_upstream(workbench, stolen)
        # The session is still its owner's.
        result = await client.call_tool("echo", {"text": "still mine"})
        assert result.content[0].text == "still mine"  # type: ignore[union-attr]
    # The client ended its session on leaving (DELETE): the id is dead for its owner too.
    assert any(e.method == "DELETE" and e.status == 200 for e in wire.exchanges)
    gone = await post_jsonrpc(
        a.url("workbench"), echo_call("late"), bearer=a.api_key, headers=headers
    )
    assert gone.status == 404


async def test_2026_headers_must_match_the_body(tenants: Tenants, workbench: McpUpstream) -> None:
    url, key = tenants.a.url("workbench"), tenants.a.api_key
    marker = f"modern-{uuid.uuid4().hex}"
    body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": marker}})
    assert headers["mcp-name"] == "echo"
    for mismatched in ({"mcp-name": "add"}, {"mcp-method": "tools/list"}):
        reply = await post_jsonrpc(url, body, bearer=key, headers={**headers, **mismatched})
        assert reply.status == 400, mismatched
        assert reply.error_code == HEADER_MISMATCH, mismatched
        assert reply.message["id"] == 1
    assert not reached_upstream(workbench, marker)
    matching = await post_jsonrpc(url, body, bearer=key, headers=headers)
    assert matching.status == 200
    assert matching.message["result"]["content"][0]["text"] == marker


async def test_an_sdk_client_speaking_2026(tenants: Tenants) -> None:
    tenant = tenants.a
    wire = ClientWire()
    async with mcp_client(
        tenant.url("workbench"), bearer=tenant.api_key, protocol="2026-07-28", wire=wire
    ) as client:
        assert client.protocol_version == MODERN_VERSION
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["add", "echo"]
        result = await client.call_tool("add", {"a": 40, "b": 2})
        assert result.content[0].text == "42"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="not allowed"):
            await client.call_tool("delete_repo", {"name": "prod"})
    # Stateless: every request named its method in the headers, and no session was made.
    posts = [e for e in wire.exchanges if e.method == "POST"]
    assert posts and all(e.request_headers.get("mcp-method") for e in posts)
    assert wire.session_id is None


@pytest.mark.parametrize("revision", ["2025-03-26", "2025-06-18", "2025-11-25"])
async def test_an_sdk_client_speaking_each_session_revision(
    tenants: Tenants, revision: Literal["2025-03-26", "2025-06-18", "2025-11-25"]
) -> None:
    tenant = tenants.a
    wire = ClientWire()
    async with mcp_client(
        tenant.url("workbench"), bearer=tenant.api_key, protocol=revision, wire=wire
    ) as client:
        assert client.protocol_version == revision
        listed = await client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["add", "echo"]
        result = await client.call_tool("echo", {"text": revision})
        assert result.content[0].text == revision  # type: ignore[union-attr]
    # A session the gateway bound, used, then ended by the SDK's DELETE.
    assert wire.session_id
    deletes = [e.status for e in wire.exchanges if e.method == "DELETE"]
    assert deletes == [200]


MALFORMED: dict[str, tuple[bytes | Any, int]] = {
    "batch": ([{"jsonrpc": "2.0", "id": 1, "method": "ping"}], INVALID_REQUEST),
    "jsonrpc 1.0": ({"jsonrpc": "1.0", "id": 1, "method": "ping"}, INVALID_REQUEST),
    "no jsonrpc": ({"id": 1, "method": "ping"}, INVALID_REQUEST),
    "huge id": ({"jsonrpc": "2.0", "id": 10**30, "method": "ping"}, INVALID_REQUEST),
    "long id": ({"jsonrpc": "2.0", "id": "i" * 300, "method": "ping"}, INVALID_REQUEST),
    "null id": ({"jsonrpc": "2.0", "id": None, "method": "ping"}, INVALID_REQUEST),
    "invalid json": (b'{"jsonrpc": "2.0", "id": 1, "method": ', PARSE_ERROR),
    "params not an object": (
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["echo", {}]},
        INVALID_REQUEST,
    ),
    "method not a string": ({"jsonrpc": "2.0", "id": 1, "method": 42}, INVALID_REQUEST),
}


@pytest.mark.parametrize("case", MALFORMED)
async def test_malformed_jsonrpc_gets_a_jsonrpc_error(
    case: str, tenants: Tenants, workbench: McpUpstream
) -> None:
    body, code = MALFORMED[case]
    workbench.clear_received()
    reply = await post_jsonrpc(tenants.a.url("workbench"), body, bearer=tenants.a.api_key)
    assert reply.status == 400
    assert reply.headers["content-type"].startswith("application/json")
    assert reply.message["jsonrpc"] == "2.0"
    assert reply.message["id"] is None
    assert reply.error_code == code
    assert workbench.received_mcp() == []
