"""What an MCP server answers, judged before the client sees it.

- `tools/list`: a tool the caller's policy does not allow is left out; every other one is
  scanned for hidden instructions (`agent.poisoning`) and checked against its pin (the
  definition the tenant first saw, `gatez.tool_pins`): a changed ("rug pull"), poisoned or
  colliding tool is left out too until an operator approves it (`ListToolPins`,
  `ApproveToolDefinition`). `prompts/list`, `resources/list` and `resources/templates/list` are
  filtered by the policy's prompt names and resource prefixes.
- `tools/call`: the result is scanned for injected instructions and, by policy, passed on and
  flagged, stripped of the offending text, or replaced by an error. A 2026-07-28
  `input_required` result is passed on untouched (its `requestState` is the server's, sealed).
- Every judged answer is bounded by the policy's `max_result_bytes`: beyond it the client gets
  a JSON-RPC error instead.

JSON answers are read whole (they are one message); SSE answers are read event by event, the
response to the request judged when it comes and every other event (progress, logging, a
server's own requests) passed on as it came.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson

from agent.jsonrpc import LIMIT_EXCEEDED, error_body
from agent.poisoning import scan_result, scan_tool, strip_result, tool_digest
from gatez.agent_policy import AgentRules, ResultScan
from gatez.pipeline import CONTINUE, BodyMode, Flow, McpCall, Stage, Verdict
from gatez.sse import SseSplitter, event_data
from gatez.tool_pins import ObservedTool, ToolPinStore

log = logging.getLogger("gatez.agent")

CONTENT_TYPE: Final = "content-type"
CONTENT_LENGTH: Final = "content-length"
LIST_METHODS: Final = frozenset(
    {"tools/list", "prompts/list", "resources/list", "resources/templates/list"}
)
JUDGED_METHODS: Final = LIST_METHODS | {"tools/call"}
BLOCKED_RESULT: Final = (
    "the tool's result was withheld: it carried what looks like injected instructions"
)


class McpAnswers(Stage):
    """Filters lists, scans results, bounds sizes (see the module doc)."""

    def __init__(
        self, pins: ToolPinStore, on_observed: Callable[[str, str], None] | None = None
    ) -> None:
        self._pins = pins
        # Told (tenant, server) after a tools/list answer was judged: what the tool-call
        # admission remembers of its verdicts may be stale now.
        self._on_observed = on_observed

    def on_response_headers(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        if mcp is None or mcp.kind != "request" or mcp.method not in JUDGED_METHODS:
            return CONTINUE
        if not 200 <= flow.response_status < 300:
            return CONTINUE
        content_type = flow.response_headers.get(CONTENT_TYPE, "")
        if content_type.startswith("text/event-stream"):
            flow.response_body_mode = BodyMode.STREAMED
            mcp.events = SseSplitter()
        elif content_type.startswith("application/json"):
            flow.response_body_mode = BodyMode.BUFFERED
        else:
            return CONTINUE
        flow.remove_header(CONTENT_LENGTH)
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        mcp = flow.mcp
        if mcp is None or flow.response_body_mode is BodyMode.NONE:
            return CONTINUE
        if mcp.method not in JUDGED_METHODS or mcp.kind != "request":
            return CONTINUE
        rules = mcp.rules
        assert rules is not None
        chunk = flow.response_chunk
        if mcp.cut:
            # Over the size limit already: the rest of the stream is dropped.
            flow.replace_response_chunk(b"")
            return CONTINUE
        mcp.result_bytes += len(chunk)
        limit = rules.limits.max_result_bytes
        if mcp.result_bytes > limit:
            mcp.cut = True
            mcp.decision, mcp.reason = "blocked", f"result over {limit} bytes"
            error = error_body(
                mcp.rpc_id, LIMIT_EXCEEDED, f"the server's answer is over {limit} bytes"
            )
            flow.replace_response_chunk(
                b"event: message\ndata: " + error + b"\n\n" if mcp.events is not None else error
            )
            return CONTINUE
        if mcp.method == "tools/call":
            # The hot path: a result is judged without the pin store, so without a coroutine.
            _judge_call(flow, mcp, rules, chunk)
            return CONTINUE
        if mcp.events is None:
            return self._judge_json(flow, mcp, rules, chunk)
        return self._judge_events(flow, mcp, rules, chunk)

    async def _judge_json(
        self, flow: Flow, mcp: McpCall, rules: AgentRules, body: bytes
    ) -> Verdict:
        judged = await self._judge_message(flow, mcp, rules, body)
        if judged is not None:
            flow.replace_response_chunk(judged)
        return CONTINUE

    async def _judge_events(
        self, flow: Flow, mcp: McpCall, rules: AgentRules, chunk: bytes
    ) -> Verdict:
        out = bytearray()
        for event in _events(flow, mcp, chunk):
            data = event_data(event)
            judged = None
            if data is not None and b'"result"' in data:
                judged = await self._judge_message(flow, mcp, rules, data)
            if judged is None:
                out += event
            else:
                out += _with_data(event, judged)
        flow.replace_response_chunk(bytes(out))
        return CONTINUE

    async def _judge_message(
        self, flow: Flow, mcp: McpCall, rules: AgentRules, data: bytes
    ) -> bytes | None:
        """The message re-encoded when the gateway changed it; None to pass it as it is."""
        parsed = _our_result(mcp, data)
        if parsed is None:
            return None
        message, result = parsed
        if mcp.method == "tools/list":
            kept = await self._visible_tools(flow, mcp, rules, result.get("tools"))
            result["tools"] = kept
        elif mcp.method == "prompts/list":
            result["prompts"] = [
                p
                for p in _entries(result.get("prompts"))
                if rules.allows_prompt(str(p.get("name", "")))
            ]
        elif mcp.method == "resources/list":
            result["resources"] = [
                r
                for r in _entries(result.get("resources"))
                if rules.allows_resource(str(r.get("uri", "")))
            ]
        else:
            result["resourceTemplates"] = [
                r
                for r in _entries(result.get("resourceTemplates"))
                if rules.allows_resource(str(r.get("uriTemplate", "")))
            ]
        return orjson.dumps(message)

    async def _visible_tools(
        self, flow: Flow, mcp: McpCall, rules: AgentRules, tools: object
    ) -> list[dict[str, Any]]:
        server = mcp.server.name
        allowed = [t for t in _entries(tools) if rules.allows_tool(server, str(t.get("name", "")))]
        if not allowed:
            return []
        observed = [_observed(tool) for tool in allowed]
        verdicts = await self._pins.observe(flow.caller.tenant_id, server, observed)
        if self._on_observed is not None:
            self._on_observed(flow.caller.tenant_id, server)
        kept = [
            tool
            for tool, seen in zip(allowed, observed, strict=True)
            if (verdict := verdicts.get(seen.name)) is not None and verdict.allowed
        ]
        hidden = len(_entries(tools)) - len(kept)
        if hidden:
            mcp.reason = f"{hidden} tools hidden"
        return kept


def _events(flow: Flow, mcp: McpCall, chunk: bytes) -> list[bytes]:
    """The whole SSE events this chunk completes (the rest too at the end of the stream)."""
    assert mcp.events is not None
    events = mcp.events.feed(chunk)
    if flow.end_of_stream:
        tail = mcp.events.flush()
        if tail:
            events.append(tail)
    return events


def _judge_call(flow: Flow, mcp: McpCall, rules: AgentRules, chunk: bytes) -> None:
    """A `tools/call` answer (JSON, or this chunk's SSE events) with its result judged."""
    if mcp.events is None:
        judged = _judged_call_message(mcp, rules, chunk)
        if judged is not None:
            flow.replace_response_chunk(judged)
        return
    out = bytearray()
    for event in _events(flow, mcp, chunk):
        data = event_data(event)
        judged = None
        if data is not None and b'"result"' in data:
            judged = _judged_call_message(mcp, rules, data)
        out += event if judged is None else _with_data(event, judged)
    # Unchanged when the chunk held whole events only and none was judged otherwise.
    if out != chunk:
        flow.replace_response_chunk(bytes(out))


def _judged_call_message(mcp: McpCall, rules: AgentRules, data: bytes) -> bytes | None:
    """The `tools/call` response re-encoded when the gateway changed it; None to pass it on."""
    if rules.result_scan is ResultScan.OFF:
        return None
    parsed = _our_result(mcp, data)
    return None if parsed is None else _judge_result(mcp, rules, *parsed)


def _our_result(mcp: McpCall, data: bytes) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The response to the client's request and its result, when `data` is that response."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or message.get("id") != mcp.rpc_id:
        return None
    result = message.get("result")
    return (message, result) if isinstance(result, dict) else None


def _observed(tool: dict[str, Any]) -> ObservedTool:
    """A listed tool as the pin store records it: its digest, its definition, its findings."""
    findings = tuple(
        f"{finding.kind.value} at {finding.where}: {finding.excerpt}" for finding in scan_tool(tool)
    )
    return ObservedTool(
        name=str(tool.get("name", "")),
        digest=tool_digest(tool),
        definition=orjson.dumps(tool, option=orjson.OPT_SORT_KEYS).decode(),
        findings=findings,
    )


def _judge_result(
    mcp: McpCall, rules: AgentRules, message: dict[str, Any], result: dict[str, Any]
) -> bytes | None:
    findings = scan_result(result)
    if not findings:
        return None
    kinds = sorted({f.kind.value for f in findings})
    if rules.result_scan is ResultScan.FLAG:
        mcp.decision, mcp.reason = "flagged", f"result: {', '.join(kinds)}"
        return None
    if rules.result_scan is ResultScan.STRIP:
        mcp.decision, mcp.reason = "stripped", f"result: {', '.join(kinds)}"
        message["result"] = strip_result(result, findings)
        return orjson.dumps(message)
    mcp.decision, mcp.reason = "blocked", f"result: {', '.join(kinds)}"
    return error_body(mcp.rpc_id, -32001, BLOCKED_RESULT)


def _entries(value: object) -> list[dict[str, Any]]:
    return [entry for entry in value if isinstance(entry, dict)] if isinstance(value, list) else []


def _with_data(event: bytes, data: bytes) -> bytes:
    """The SSE event with its data replaced, its other fields (id, event) kept."""
    lines = [line for line in event.rstrip(b"\n").split(b"\n") if not line.startswith(b"data:")]
    lines.append(b"data: " + data)
    return b"\n".join(lines) + b"\n\n"
