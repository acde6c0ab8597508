"""Human approval gates end to end: an SDK client's tool call held while an operator lists (or
watches) it through the control API and approves or denies it; the approver recorded; a call
no one decides in time denied; `approve_when` holding only the calls whose arguments match."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin
from tests.e2e.mcp_gateway import (
    PENDING,
    REQUIRE_APPROVAL,
    McpTenant,
    add_api_key,
    agent_policy,
    audit_row,
    decide,
    mcp_tenant,
    rule,
    set_agent_policy,
    wait_for_approvals,
    wait_for_audit,
)
from tests.support.mcp_servers import McpUpstream, McpUpstreams, mcp_client

pytestmark = pytest.mark.e2e

APPROVED = control_pb2.APPROVAL_STATE_APPROVED
DENIED = control_pb2.APPROVAL_STATE_DENIED
TIMED_OUT = control_pb2.APPROVAL_STATE_TIMED_OUT


@dataclass(frozen=True)
class ApprovalTenant:
    tenant: McpTenant
    # A second API key whose own policy gives up on approvals after 1 s.
    impatient_key: str


@pytest.fixture(scope="module")
def workbench(mcp_upstreams: McpUpstreams) -> McpUpstream:
    return mcp_upstreams.workbench(require_token="mcp-upstream-token-for-tests")


@pytest.fixture(scope="module")
def approvals(admin: Admin, stack: Stack, workbench: McpUpstream) -> ApprovalTenant:
    tenant = mcp_tenant(
        admin,
        stack,
        {"workbench": workbench},
        rule("delete_repo", REQUIRE_APPROVAL),
        rule(
            "echo",
            REQUIRE_APPROVAL,
            approve_when=[policy_pb2.ArgumentMatch(argument="text", pattern="danger.*")],
        ),
        rule("add"),
    )
    secret, key_id, _ = add_api_key(admin, tenant.tenant_id)
    impatient = agent_policy(
        tenant.tenant_id,
        rule("delete_repo", REQUIRE_APPROVAL),
        api_key_ids=[key_id],
        approval_timeout_s=1,
    )
    admin.wait_applied(set_agent_policy(admin, impatient))
    return ApprovalTenant(tenant, secret)


def pending_call(tool: str, marker: str) -> Callable[[control_pb2.Approval], bool]:
    """Matches the pending approval of a call to `tool` whose arguments hold `marker`."""
    return lambda a: a.state == PENDING and a.tool == tool and marker in a.arguments_json


def watch_for(
    admin: Admin,
    tenant_id: str,
    accept: Callable[[control_pb2.Approval], bool],
    timeout_s: float = 10.0,
) -> control_pb2.Approval:
    """The first approval WatchApprovals streams that `accept` takes (as `grpcurl` would show
    it)."""
    stream = admin.control.WatchApprovals(
        control_pb2.WatchApprovalsRequest(tenant_id=tenant_id),
        metadata=admin.metadata,
        timeout=timeout_s,
    )
    try:
        for response in stream:
            if accept(response.approval):
                approval: control_pb2.Approval = response.approval
                return approval
    finally:
        stream.cancel()
    raise AssertionError("WatchApprovals ended without the approval")


def calls_of(upstream: McpUpstream, tool: str, marker: str) -> int:
    return sum(
        1
        for r in upstream.received_mcp()
        if r.jsonrpc_method == "tools/call"
        and r.json["params"]["name"] == tool
        and marker in str(r.json["params"]["arguments"])
    )


async def test_an_approved_call_runs_after_the_operator_approves_it(
    admin: Admin, approvals: ApprovalTenant, workbench: McpUpstream
) -> None:
    tenant = approvals.tenant
    repo = f"repo-{uuid.uuid4().hex[:8]}"
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as client:
        call = asyncio.create_task(client.call_tool("delete_repo", {"name": repo}))
        [held] = await asyncio.to_thread(
            wait_for_approvals, admin, tenant.tenant_id, pending_call("delete_repo", repo)
        )
        # The client just waits; the server has not seen the call.
        await asyncio.sleep(0.2)
        assert not call.done()
        assert calls_of(workbench, "delete_repo", repo) == 0
        assert held.server == "workbench" and held.caller == tenant.access.api_key_id
        assert held.held_because and held.session_id_digest
        decided = await asyncio.to_thread(
            decide, admin, held, approve=True, approver="alice@example.com", reason="planned"
        )
        assert decided.state == APPROVED
        result = await asyncio.wait_for(call, 10)
    assert result.content[0].text == f"deleted {repo}"  # type: ignore[union-attr]
    assert calls_of(workbench, "delete_repo", repo) == 1
    [listed] = await asyncio.to_thread(
        wait_for_approvals, admin, tenant.tenant_id, lambda a: a.id == held.id
    )
    assert listed.state == APPROVED and listed.approver == "alice@example.com"
    assert listed.decide_time.seconds > 0
    rows = await asyncio.to_thread(
        wait_for_audit,
        admin,
        tenant.tenant_id,
        [lambda r: r.tool == "delete_repo" and r.decision == "approved"],
    )
    row = next(r for r in rows if r.tool == "delete_repo" and r.decision == "approved")
    assert row.approver == "alice@example.com" and held.id in row.reason


async def test_a_denied_call_is_refused_naming_the_denial(
    admin: Admin, approvals: ApprovalTenant, workbench: McpUpstream
) -> None:
    tenant = approvals.tenant
    repo = f"repo-{uuid.uuid4().hex[:8]}"
    # The operator watches the stream of approvals rather than polling the list.
    watching = asyncio.create_task(
        asyncio.to_thread(watch_for, admin, tenant.tenant_id, pending_call("delete_repo", repo))
    )
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as client:
        call = asyncio.create_task(client.call_tool("delete_repo", {"name": repo}))
        held = await asyncio.wait_for(watching, 15)
        assert not call.done()
        await asyncio.to_thread(
            decide, admin, held, approve=False, approver="bob@example.com", reason="not today"
        )
        with pytest.raises(MCPError, match=re.escape("denied by bob@example.com: not today")):
            await asyncio.wait_for(call, 10)
    assert calls_of(workbench, "delete_repo", repo) == 0
    [listed] = await asyncio.to_thread(
        wait_for_approvals, admin, tenant.tenant_id, lambda a: a.id == held.id
    )
    assert listed.state == DENIED and listed.approver == "bob@example.com"


async def test_an_undecided_call_times_out(
    admin: Admin, approvals: ApprovalTenant, workbench: McpUpstream
) -> None:
    tenant = approvals.tenant
    repo = f"repo-{uuid.uuid4().hex[:8]}"
    async with mcp_client(tenant.url("workbench"), bearer=approvals.impatient_key) as client:
        with pytest.raises(MCPError, match="none came in time"):
            await asyncio.wait_for(client.call_tool("delete_repo", {"name": repo}), 10)
    assert calls_of(workbench, "delete_repo", repo) == 0
    [listed] = await asyncio.to_thread(
        wait_for_approvals, admin, tenant.tenant_id, lambda a: repo in a.arguments_json
    )
    assert listed.state == TIMED_OUT and listed.approver == ""
    rows = await asyncio.to_thread(
        wait_for_audit, admin, tenant.tenant_id, [audit_row(decision="approval_timeout")]
    )
    row = next(r for r in rows if r.decision == "approval_timeout")
    assert row.tool == "delete_repo" and listed.id in row.reason


async def test_approve_when_holds_only_the_calls_whose_arguments_match(
    admin: Admin, approvals: ApprovalTenant
) -> None:
    tenant = approvals.tenant
    marker = uuid.uuid4().hex[:8]
    async with mcp_client(tenant.url("workbench"), bearer=tenant.api_key) as client:
        # Not matching: runs at once, nothing to approve.
        plain = await asyncio.wait_for(client.call_tool("echo", {"text": f"calm {marker}"}), 5)
        assert plain.content[0].text == f"calm {marker}"  # type: ignore[union-attr]
        call = asyncio.create_task(client.call_tool("echo", {"text": f"danger {marker}"}))
        [held] = await asyncio.to_thread(
            wait_for_approvals, admin, tenant.tenant_id, pending_call("echo", marker)
        )
        assert "text" in held.held_because
        await asyncio.to_thread(decide, admin, held, approve=True, approver="carol")
        result = await asyncio.wait_for(call, 10)
    assert result.content[0].text == f"danger {marker}"  # type: ignore[union-attr]
    every = await asyncio.to_thread(
        wait_for_approvals, admin, tenant.tenant_id, lambda a: marker in a.arguments_json
    )
    assert len(every) == 1
