"""A held tool call and a data plane that stops or dies: never silently lost.

A stack of its own (the data plane is stopped and killed here), behind Envoy: the official `mcp`
SDK as the client, a real MCP server built with the same SDK behind Gatez, the approvals decided
through the control API as an operator would.

- Stopped (SIGTERM): the held call is answered at once with a JSON-RPC error saying the gateway
  stopped, and its approval is ABANDONED; the client's retry, once a data plane serves again,
  is held anew and runs when approved.
- Killed (SIGKILL): the proxy answers the client with an error; the approval stays PENDING and
  an operator may still decide it; the client's retry of the same call is re-attached to that
  decision and runs at once.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, admin_of, provision, running
from tests.e2e.mcp_gateway import add_mcp_server, set_agent_policy
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.mcp_servers import McpUpstream, McpUpstreams, mcp_client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamServer) -> Iterator[Stack]:
    config = StackConfig.ephemeral(Path(tmp_path_factory.mktemp("mcp-restart-stack")))
    with running(Stack(config)) as started:
        yield started


@pytest.fixture(scope="module")
def admin(stack: Stack, upstream: UpstreamServer) -> Iterator[Admin]:
    with admin_of(stack, upstream) as client:
        yield client


@pytest.fixture(scope="module")
def workbench(mcp_upstreams: McpUpstreams) -> McpUpstream:
    return mcp_upstreams.workbench()


@pytest.fixture
def tenant(admin: Admin, workbench: McpUpstream) -> TenantAccess:
    access = provision(admin)
    add_mcp_server(admin, access, "workbench", workbench)
    version = set_agent_policy(
        admin,
        policy_pb2.AgentPolicy(
            id=f"p-{uuid.uuid4().hex[:8]}",
            tenant_id=access.tenant_id,
            tools=[
                policy_pb2.ToolRule(
                    tool="delete_repo", action=policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL
                ),
                policy_pb2.ToolRule(tool="*", action=policy_pb2.TOOL_ACTION_ALLOW),
            ],
            approval_timeout_s=120,
        ),
    )
    admin.wait_applied(version)
    return access


def approvals(admin: Admin, tenant_id: str) -> list[control_pb2.Approval]:
    return list(
        admin.control.ListApprovals(
            control_pb2.ListApprovalsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).approvals
    )


async def pending(admin: Admin, tenant_id: str, count: int = 1) -> control_pb2.Approval:
    """The newest pending approval, once `count` approvals exist."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = await asyncio.to_thread(approvals, admin, tenant_id)
        waiting = [a for a in listed if a.state == control_pb2.APPROVAL_STATE_PENDING]
        if len(listed) >= count and waiting:
            return waiting[0]
        await asyncio.sleep(0.05)
    raise TimeoutError("no pending approval")


def decide(admin: Admin, tenant_id: str, approval_id: str) -> None:
    admin.control.DecideApproval(
        control_pb2.DecideApprovalRequest(
            tenant_id=tenant_id, approval_id=approval_id, approve=True, approver="oncall"
        ),
        metadata=admin.metadata,
    )


async def restart_data_plane(stack: Stack, admin: Admin) -> None:
    """The data plane started again, serving through Envoy with the current policy. Started from
    the test's own thread: the stack's processes die with the thread that started them (their
    parent-death signal), and `asyncio.to_thread`'s threads end with the test's loop."""
    stack.start_data_plane()
    await asyncio.to_thread(wait_serving, stack, admin)


def wait_serving(stack: Stack, admin: Admin) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = httpx.get(f"{stack.config.gateway_url}/v1/models", timeout=5)
        if reply.status_code == 401:  # answered by the data plane, not Envoy alone
            break
        time.sleep(0.1)
    else:
        raise TimeoutError("the data plane does not serve again")
    status = admin.control.GetPolicyStatus(
        control_pb2.GetPolicyStatusRequest(), metadata=admin.metadata
    )
    admin.wait_applied(status.version, timeout_s=30)


def url(stack: Stack, tenant: TenantAccess) -> str:
    return f"{stack.config.gateway_url}/mcp/{tenant.tenant_id}/workbench"


async def test_a_data_plane_that_stops_answers_its_held_calls_and_the_retry_runs(
    stack: Stack, admin: Admin, tenant: TenantAccess
) -> None:
    async with mcp_client(url(stack, tenant), bearer=tenant.api_key) as client:
        held = asyncio.create_task(client.call_tool("delete_repo", {"name": "legacy"}))
        first = await pending(admin, tenant.tenant_id)

        await asyncio.to_thread(stack.stop_process, "dataplane")
        with pytest.raises(MCPError, match="abandoned"):
            await asyncio.wait_for(held, 30)
        (stopped,) = await asyncio.to_thread(approvals, admin, tenant.tenant_id)
        assert (stopped.id, stopped.state) == (first.id, control_pb2.APPROVAL_STATE_ABANDONED)

        await restart_data_plane(stack, admin)
        retry = asyncio.create_task(client.call_tool("delete_repo", {"name": "legacy"}))
        again = await pending(admin, tenant.tenant_id, count=2)
        assert again.id != first.id
        await asyncio.to_thread(decide, admin, tenant.tenant_id, again.id)
        result = await asyncio.wait_for(retry, 30)
        assert result.content[0].text == "deleted legacy"  # type: ignore[union-attr]


async def test_a_call_held_by_a_killed_data_plane_keeps_its_approval_for_the_retry(
    stack: Stack, admin: Admin, tenant: TenantAccess
) -> None:
    async with mcp_client(url(stack, tenant), bearer=tenant.api_key) as client:
        held = asyncio.create_task(client.call_tool("delete_repo", {"name": "attic"}))
        waiting = await pending(admin, tenant.tenant_id)

        process = stack.processes["dataplane"]
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        await asyncio.to_thread(stack.stop_process, "dataplane")
        # The proxy answers: the call is not left hanging.
        with pytest.raises(Exception):  # noqa: B017 — the SDK's error for Envoy's 5xx
            await asyncio.wait_for(held, 30)

        # The operator still decides it, while no data plane runs...
        await asyncio.to_thread(decide, admin, tenant.tenant_id, waiting.id)
        await restart_data_plane(stack, admin)
        # ... and the client's retry of the same call runs on that decision, held no more.
        started = time.monotonic()
        result = await asyncio.wait_for(client.call_tool("delete_repo", {"name": "attic"}), 30)
        assert result.content[0].text == "deleted attic"  # type: ignore[union-attr]
        assert time.monotonic() - started < 5
        assert [a.id for a in await asyncio.to_thread(approvals, admin, tenant.tenant_id)] == [
            waiting.id
        ]
