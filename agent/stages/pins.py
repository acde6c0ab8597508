"""Only pinned tools run: a `tools/call` to a tool whose definition the tenant has not seen, or
whose definition changed ("rug pull"), carries hidden instructions, or collides with another
server's tool of the same name, is refused until an operator approves it (`ListToolPins`,
`ApproveToolDefinition`). What the tenant has seen comes from `tools/list` answers
(`agent.stages.answers`), so a client lists the tools before it calls them, as MCP clients do.
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
        if verdict is None:
            mcp.decision, mcp.reason = "denied", "tool definition never listed"
            raise Refused(
                f"tool {quoted(mcp.name)} has not been listed through this gateway yet: "
                "call tools/list first"
            )
        if not verdict.allowed:
            mcp.decision, mcp.reason = "denied", f"tool definition {verdict.state.value}"
            raise Refused(f"tool {quoted(mcp.name)} is blocked: {_WHY[verdict.state]}")
        return CONTINUE
