"""Tool-poisoning defence end to end: a rug pull (a definition changed after it was pinned)
hidden and refused until an operator approves the new one; a poisoned description hidden; a
name collision across a tenant's servers refused; tool results scanned and flagged, stripped or
blocked by policy."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin
from tests.e2e.mcp_gateway import (
    UPSTREAM_TOKEN,
    McpTenant,
    add_api_key,
    add_mcp_server,
    agent_policy,
    audit_row,
    mcp_tenant,
    rule,
    set_agent_policy,
    tool_pins,
    wait_for_audit,
)
from tests.support.mcp_servers import (
    INJECTION_PHRASE,
    PULLED_LOOKUP_DESCRIPTION,
    McpUpstream,
    McpUpstreams,
    mcp_client,
)

pytestmark = pytest.mark.e2e

PINNED = control_pb2.TOOL_PIN_STATE_PINNED
CHANGED = control_pb2.TOOL_PIN_STATE_CHANGED
POISONED = control_pb2.TOOL_PIN_STATE_POISONED
COLLISION = control_pb2.TOOL_PIN_STATE_COLLISION


@dataclass(frozen=True)
class PinsTenant:
    tenant: McpTenant
    # API keys whose own policies strip, or block, results carrying injected instructions (the
    # tenant's policy flags them).
    strip_key: str
    block_key: str


@pytest.fixture(scope="module")
def servers(mcp_upstreams: McpUpstreams) -> dict[str, McpUpstream]:
    return {
        "workbench": mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN),
        "notes": mcp_upstreams.notes(require_token=UPSTREAM_TOKEN),
        "poisoned": mcp_upstreams.poisoned(require_token=UPSTREAM_TOKEN, json_response=True),
    }


@pytest.fixture(scope="module")
def pins(admin: Admin, stack: Stack, servers: dict[str, McpUpstream]) -> PinsTenant:
    """Every tool allowed: what hides or refuses one here is its definition."""
    tenant = mcp_tenant(
        admin, stack, servers, rule("*"), result_scan=policy_pb2.RESULT_SCAN_ACTION_FLAG
    )
    keys = []
    for scan in (policy_pb2.RESULT_SCAN_ACTION_STRIP, policy_pb2.RESULT_SCAN_ACTION_BLOCK):
        secret, key_id, _ = add_api_key(admin, tenant.tenant_id)
        policy = agent_policy(tenant.tenant_id, rule("*"), api_key_ids=[key_id], result_scan=scan)
        admin.wait_applied(set_agent_policy(admin, policy))
        keys.append(secret)
    return PinsTenant(tenant, *keys)


def approve_definition(
    admin: Admin, pin: control_pb2.ToolPin, approver: str
) -> control_pb2.ToolPin:
    response = admin.control.ApproveToolDefinition(
        control_pb2.ApproveToolDefinitionRequest(
            tenant_id=pin.tenant_id,
            server=pin.server,
            tool=pin.tool,
            digest=pin.observed_digest,
            approver=approver,
        ),
        metadata=admin.metadata,
    )
    approved: control_pb2.ToolPin = response.tool_pin
    return approved


async def test_a_rug_pull_is_hidden_and_refused_until_approved(
    admin: Admin, stack: Stack, pins: PinsTenant, mcp_upstreams: McpUpstreams
) -> None:
    tenant = pins.tenant
    # Its own server: the rug is pulled on it (other stacks' runs get a fresh one).
    mutable = mcp_upstreams.mutable(require_token=UPSTREAM_TOKEN)
    admin.wait_applied(add_mcp_server(admin, tenant.access, "mutable", mutable, UPSTREAM_TOKEN))
    url = tenant.url("mutable")
    async with mcp_client(url, bearer=tenant.api_key) as client:
        first = await client.list_tools()
        assert [t.name for t in first.tools] == ["lookup"]
        looked_up = await client.call_tool("lookup", {"word": "cat"})
        assert looked_up.content[0].text == "cat: a word"  # type: ignore[union-attr]
        await asyncio.to_thread(mutable.pull_rug)
        again = await client.list_tools()
        assert again.tools == []
        with pytest.raises(MCPError, match="definition changed") as refused:
            await client.call_tool("lookup", {"word": "cat"})
        assert refused.value.code == -32001
    pin = tool_pins(admin, tenant.tenant_id, "mutable")["lookup"]
    assert pin.state == CHANGED
    assert pin.pinned_digest != pin.observed_digest
    assert any(change.startswith("/description") for change in pin.changes), pin.changes
    assert any("context" in change for change in pin.changes), pin.changes
    assert PULLED_LOOKUP_DESCRIPTION in pin.observed_definition_json
    approved = await asyncio.to_thread(approve_definition, admin, pin, "dave@example.com")
    assert approved.state == PINNED and approved.pinned_digest == pin.observed_digest
    async with mcp_client(url, bearer=tenant.api_key) as client:
        back = await client.list_tools()
        assert [t.description for t in back.tools] == [PULLED_LOOKUP_DESCRIPTION]
        result = await client.call_tool("lookup", {"word": "dog", "context": ""})
        assert result.content[0].text == "dog: a word"  # type: ignore[union-attr]


async def test_a_poisoned_description_is_hidden(admin: Admin, pins: PinsTenant) -> None:
    tenant = pins.tenant
    async with mcp_client(tenant.url("poisoned"), bearer=tenant.api_key) as client:
        listed = await client.list_tools()
        assert [t.name for t in listed.tools] == ["get_time"]
        assert (await client.call_tool("get_time", {})).content[0].text == "12:00"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="hidden instructions"):
            await client.call_tool("get_weather", {"city": "Paris"})
    found = tool_pins(admin, tenant.tenant_id, "poisoned")
    assert found["get_time"].state == PINNED
    for poisoned in ("get_weather", "translate"):
        assert found[poisoned].state == POISONED
        assert found[poisoned].findings and not found[poisoned].pinned_digest
    assert any("/description" in f for f in found["get_weather"].findings)


async def test_a_tool_name_colliding_across_servers_is_refused(
    admin: Admin, pins: PinsTenant
) -> None:
    tenant = pins.tenant
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as workbench:
        assert "search" in [t.name for t in (await workbench.list_tools()).tools]
        async with mcp_client(tenant.url("notes"), bearer=tenant.api_key) as notes:
            # The workbench showed `search` first: it owns the name in this tenant.
            assert [t.name for t in (await notes.list_tools()).tools] == ["note"]
            with pytest.raises(MCPError, match="same name"):
                await notes.call_tool("search", {"query": "x"})
            assert (await notes.call_tool("note", {"text": "n"})).content[0].text == "noted n"  # type: ignore[union-attr]
        found = await workbench.call_tool("search", {"query": "x"})
        assert found.content[0].text == "workbench results for x"  # type: ignore[union-attr]
    collision = tool_pins(admin, tenant.tenant_id, "notes")["search"]
    assert collision.state == COLLISION


async def test_tool_results_are_scanned_for_injected_instructions(
    admin: Admin, pins: PinsTenant
) -> None:
    tenant = pins.tenant
    url = tenant.url("workbench")
    async with mcp_client(url, bearer=tenant.api_key) as client:
        flagged = await client.call_tool("inject", {})
        assert INJECTION_PHRASE in flagged.content[0].text  # type: ignore[union-attr]
    async with mcp_client(url, bearer=pins.strip_key) as client:
        stripped = await client.call_tool("inject", {})
        text = stripped.content[0].text  # type: ignore[union-attr]
        assert "Ignore all previous instructions" not in text and "evil.example" not in text
        assert text
    async with mcp_client(url, bearer=pins.block_key) as client:
        with pytest.raises(MCPError, match="withheld"):
            await client.call_tool("inject", {})
    rows = await asyncio.to_thread(
        wait_for_audit,
        admin,
        tenant.tenant_id,
        [audit_row(tool="inject", decision=d) for d in ("flagged", "stripped", "blocked")],
    )
    assert all("injection" in r.reason for r in rows if r.tool == "inject")
