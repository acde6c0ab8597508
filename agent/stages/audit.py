"""The agent audit log: one row per agent action, written when the exchange ends.

Every MCP exchange that reached a server's routing (an authenticated caller, a known server)
is one row: the JSON-RPC method (or GET/DELETE), the tool, prompt or resource it named, what the
gateway decided and why, who approved a held call, a digest of the arguments (the arguments
themselves only when the policy says so), the status, the latency and the bytes answered. Rows
are batched with the other logs (`LogSink`: spooled when the store is away, never lost).
"""

from __future__ import annotations

import datetime as dt
import time

from extproc.logsink import LogSink
from gatez.logrows import AgentLogRow
from gatez.pipeline import Flow, Stage


class AgentAudit(Stage):
    """Turns a finished MCP exchange into its audit row."""

    def __init__(self, sink: LogSink, node_id: str) -> None:
        self._sink = sink
        self._node_id = node_id

    def on_done(self, flow: Flow) -> None:
        mcp = flow.mcp
        principal = flow.principal
        if mcp is None or principal is None:
            return
        finished_ns = flow.finished_ns or time.monotonic_ns()
        decision = mcp.decision
        if not decision:
            status = flow.response_status
            decision = "allowed" if 200 <= status < 400 and not flow.error else "error"
        reason = mcp.reason or (flow.error if decision == "error" else "")
        self._sink.add_agent(
            AgentLogRow(
                time=dt.datetime.fromtimestamp(flow.started_at, dt.UTC),
                request_id=flow.request_id,
                tenant_id=principal.tenant_id,
                caller=principal.key_id,
                session_id_digest=mcp.session_digest,
                server=mcp.server.name,
                method=mcp.method,
                tool=mcp.name,
                decision=decision,
                reason=reason,
                approver=mcp.approver,
                arguments_digest=mcp.arguments_digest,
                arguments_json=mcp.arguments_json,
                status=flow.response_status,
                latency_ms=(finished_ns - flow.started_ns) / 1e6,
                result_bytes=mcp.result_bytes,
                protocol_version=mcp.protocol_version,
                node_id=self._node_id,
            )
        )
