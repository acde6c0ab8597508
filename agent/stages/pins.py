"""Blocked tool definitions stay blocked: a `tools/call` to a tool whose definition changed since
it was pinned ("rug pull"), carries hidden instructions, or collides with another server's tool
of the same name, is refused until an operator approves it (`ListToolPins`,
`ApproveToolDefinition`). What the tenant has seen comes from `tools/list` answers
(`agent.stages.answers`).

A tool no `tools/list` answer has shown yet may be called (as the policy allows): a model only
learns a tool's description from a list, and every list passes through the answers stage, which
scans, pins and hides; so a definition the tenant never saw through the gateway has reached no
model through it. Clients that call tools by a name they know (an SDK's `call_tool` without
listing) keep working, and the next list pins the definition.
"""

from __future__ import annotations

from collections.abc import Awaitable

from agent.jsonrpc import Refused
from gatez.errors import Unavailable, quoted
from gatez.pipeline import CONTINUE, Flow, McpCall, Stage, Verdict
from gatez.tool_pins import PinState, ToolPinStore

_WHY = {
    PinState.CHANGED: "its definition changed since it was approved; an operator must approve "
    "the new one",
    PinState.POISONED: "its definition carries what looks like hidden instructions; an operator "
    "must approve it",
    PinState.COLLISION: "another of this tenant's MCP servers has a tool of the same name",
    PinState.REFUSED: "its definition cannot be pinned",
}


class PinnedTools(Stage):
    """Refuses calls to tools whose definition is not pinned (see the module doc)."""

    def __init__(self, pins: ToolPinStore) -> None:
        self._pins = pins

    def on_request_body(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        mcp = flow.mcp
        if mcp is None or mcp.method != "tools/call" or mcp.kind != "request":
            return CONTINUE
        return self._check(flow, mcp)

    async def _check(self, flow: Flow, mcp: McpCall) -> Verdict:
        try:
            verdict = await self._pins.verdict(flow.caller.tenant_id, mcp.server.name, mcp.name)
        except Exception:
            raise Unavailable("the tool pin store is unavailable, try again") from None
        if verdict is not None and not verdict.allowed:
            mcp.decision, mcp.reason = "denied", f"tool definition {verdict.state.value}"
            raise Refused(f"tool {quoted(mcp.name)} is blocked: {_WHY[verdict.state]}")
        return CONTINUE
