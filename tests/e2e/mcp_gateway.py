"""Helpers of the MCP end-to-end tests (`tests/e2e/test_mcp*.py`): a tenant with MCP servers and
an agent policy, set up through the control API as an operator would, and waits for what the
control API reports a little later (held approvals, audit rows)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gatez.stack import Stack
from gatez.v1 import control_pb2, logs_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.support.mcp_servers import McpUpstream

UPSTREAM_TOKEN = "mcp-upstream-token-for-tests"
ALLOW = policy_pb2.TOOL_ACTION_ALLOW
DENY = policy_pb2.TOOL_ACTION_DENY
REQUIRE_APPROVAL = policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL
PENDING = control_pb2.APPROVAL_STATE_PENDING


@dataclass(frozen=True)
class McpTenant:
    """A tenant with MCP servers: its first API key and where its servers are."""

    access: TenantAccess
    gateway_url: str

    @property
    def tenant_id(self) -> str:
        return self.access.tenant_id

    @property
    def api_key(self) -> str:
        return self.access.api_key

    def url(self, server: str) -> str:
        """The server's MCP URL through the gateway."""
        return f"{self.gateway_url}/mcp/{self.tenant_id}/{server}"


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


def add_api_key(admin: Admin, tenant_id: str) -> tuple[str, str, int]:
    """Another API key of the tenant: (secret, id, policy version)."""
    key = admin.control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name="e2e-more"),
        metadata=admin.metadata,
    )
    return key.secret, key.api_key.id, int(key.policy_version)


def agent_policy(
    tenant_id: str, *rules: policy_pb2.ToolRule, **fields: Any
) -> policy_pb2.AgentPolicy:
    """An agent policy of the tenant with these tool rules and other fields."""
    return policy_pb2.AgentPolicy(
        id=f"p-{uuid.uuid4().hex[:8]}", tenant_id=tenant_id, tools=list(rules), **fields
    )


def rule(tool: str, action: policy_pb2.ToolAction = ALLOW, **fields: Any) -> policy_pb2.ToolRule:
    return policy_pb2.ToolRule(tool=tool, action=action, **fields)


def mcp_tenant(
    admin: Admin,
    stack: Stack,
    servers: Mapping[str, McpUpstream],
    *rules: policy_pb2.ToolRule,
    **policy_fields: Any,
) -> McpTenant:
    """A fresh tenant with these servers (each with the upstream's credential) and one agent
    policy for everyone, applied on the data planes."""
    access = provision(admin)
    for name, upstream in servers.items():
        add_mcp_server(admin, access, name, upstream, UPSTREAM_TOKEN)
    admin.wait_applied(
        set_agent_policy(admin, agent_policy(access.tenant_id, *rules, **policy_fields))
    )
    return McpTenant(access, stack.config.gateway_url)


def wait_for_approvals(
    admin: Admin,
    tenant_id: str,
    accept: Callable[[control_pb2.Approval], bool],
    count: int = 1,
    timeout_s: float = 10.0,
) -> list[control_pb2.Approval]:
    """Polls ListApprovals (as an operator would) until `count` approvals pass `accept`."""
    deadline = time.monotonic() + timeout_s
    while True:
        approvals = admin.control.ListApprovals(
            control_pb2.ListApprovalsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).approvals
        found = [a for a in approvals if accept(a)]
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"no approval as wanted for {tenant_id}: {list(approvals)}")
        time.sleep(0.02)


def decide(
    admin: Admin, approval: control_pb2.Approval, *, approve: bool, approver: str, reason: str = ""
) -> control_pb2.Approval:
    response = admin.control.DecideApproval(
        control_pb2.DecideApprovalRequest(
            tenant_id=approval.tenant_id,
            approval_id=approval.id,
            approve=approve,
            approver=approver,
            reason=reason,
        ),
        metadata=admin.metadata,
    )
    approval_now: control_pb2.Approval = response.approval
    return approval_now


def tool_pins(admin: Admin, tenant_id: str, server: str) -> dict[str, control_pb2.ToolPin]:
    """The server's tool pins by tool name."""
    pins = admin.control.ListToolPins(
        control_pb2.ListToolPinsRequest(tenant_id=tenant_id, server=server),
        metadata=admin.metadata,
    ).tool_pins
    return {pin.tool: pin for pin in pins}


def audit_row(**fields: object) -> Callable[[logs_pb2.AgentLog], bool]:
    """Matches an audit row whose fields have these values."""
    return lambda row: all(getattr(row, name) == value for name, value in fields.items())


def wait_for_audit(
    admin: Admin,
    tenant_id: str,
    wanted: Sequence[Callable[[logs_pb2.AgentLog], bool]],
    timeout_s: float = 10.0,
) -> list[logs_pb2.AgentLog]:
    """Polls ListAgentAudit until each of `wanted` matches a row (rows are batched, so they
    arrive a little after the exchange ends); the rows then."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = list(
            admin.control.ListAgentAudit(
                control_pb2.ListAgentAuditRequest(tenant_id=tenant_id, limit=1000),
                metadata=admin.metadata,
            ).agent_logs
        )
        if all(any(match(row) for row in rows) for match in wanted):
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"audit rows of {tenant_id} as wanted did not arrive: {rows}")
        time.sleep(0.1)
