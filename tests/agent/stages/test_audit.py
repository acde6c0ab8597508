"""AgentAudit: one row per agent action with what the stages decided, written when the
exchange ends."""

from __future__ import annotations

import pytest

from agent.jsonrpc import Refused
from agent.stages.audit import AgentAudit
from agent.stages.tools import ToolPolicy
from extproc.logsink import Batch, LogSink
from gatez.logrows import AgentLogRow
from gatez.pipeline import Flow
from tests.agent.stages.flows import (
    APPROVAL,
    DENY,
    agent,
    build_policy,
    call,
    mcp_flow,
    rpc,
    rule,
)

POLICY = build_policy(
    agent(rule("merge", APPROVAL), rule("rm", DENY), rule("*"), audit_raw_arguments=True)
)
QUIET = build_policy(agent(rule("*")))


class RecordingWriter:
    def __init__(self) -> None:
        self.rows: list[AgentLogRow] = []

    async def write(self, batch: Batch) -> None:
        self.rows.extend(batch.rows()[2])


async def audited(flow: Flow, status: int = 200, error: str = "") -> AgentLogRow:
    flow.response_status = status
    flow.error = error
    flow.finished_ns = flow.started_ns + 12_500_000
    writer = RecordingWriter()
    sink = LogSink(writer)
    AgentAudit(sink, "node-a").on_done(flow)
    await sink.flush()
    (row,) = writer.rows
    return row


async def test_an_allowed_call_is_one_row() -> None:
    flow = mcp_flow(POLICY, call("echo", 3, text="hi"), headers={"mcp-session-id": "s-1"})
    ToolPolicy().on_request_body(flow)
    assert flow.mcp is not None
    flow.mcp.result_bytes = 321
    row = await audited(flow)
    assert (row.tenant_id, row.caller, row.server) == ("acme", "key-a1", "github")
    assert (row.method, row.tool, row.decision, row.reason) == ("tools/call", "echo", "allowed", "")
    assert row.session_id_digest == flow.mcp.session_digest != ""
    assert row.arguments_digest == flow.mcp.arguments_digest != ""
    assert row.arguments_json == '{"text":"hi"}'
    assert (row.status, row.result_bytes, row.latency_ms) == (200, 321, 12.5)
    assert row.request_id == flow.request_id
    assert row.protocol_version == "2025-03-26"
    assert row.node_id == "node-a"


async def test_raw_arguments_only_when_the_policy_says_so() -> None:
    flow = mcp_flow(QUIET, call("echo", text="secret"))
    ToolPolicy().on_request_body(flow)
    row = await audited(flow)
    assert row.arguments_json == ""
    assert row.arguments_digest != ""


async def test_a_denied_call_says_why() -> None:
    flow = mcp_flow(POLICY, call("rm", path="/"))
    with pytest.raises(Refused):
        ToolPolicy().on_request_body(flow)
    row = await audited(flow, 200, "refused")
    assert (row.tool, row.decision, row.reason) == ("rm", "denied", "deny */rm")


async def test_an_approved_call_names_its_approver() -> None:
    flow = mcp_flow(POLICY, call("merge"))
    ToolPolicy().on_request_body(flow)
    assert flow.mcp is not None
    flow.mcp.decision, flow.mcp.reason, flow.mcp.approver = "approved", "approval a-1", "alice"
    row = await audited(flow)
    assert (row.decision, row.reason, row.approver) == ("approved", "approval a-1", "alice")


@pytest.mark.parametrize(
    ("status", "error", "decision", "reason"),
    [(200, "", "allowed", ""), (502, "upstream_error", "error", "upstream_error")],
)
async def test_an_unjudged_message_is_recorded_by_its_outcome(
    status: int, error: str, decision: str, reason: str
) -> None:
    flow = mcp_flow(POLICY, rpc("tools/list"))
    row = await audited(flow, status, error)
    assert (row.method, row.tool, row.decision, row.reason) == ("tools/list", "", decision, reason)


async def test_get_streams_are_recorded_by_their_http_method() -> None:
    flow = mcp_flow(POLICY, method="GET", headers={"mcp-session-id": "s-1"})
    row = await audited(flow)
    assert row.method == "GET"


async def test_nothing_is_written_for_an_unauthenticated_request() -> None:
    flow = mcp_flow(POLICY, call("echo"))
    flow.principal = None
    writer = RecordingWriter()
    sink = LogSink(writer)
    AgentAudit(sink, "node-a").on_done(flow)
    await sink.flush()
    assert writer.rows == []
