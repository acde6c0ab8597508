"""Tool-call admission: blocked tool definitions and blast-radius limits, shared by every data
plane through Redis, in one round trip.

Per `tools/call`, one script (one round trip, one hash slot: the tenant's tag) first reads the
tool's pin verdict (`gatez.tool_pins`): a tool whose definition changed since it was pinned ("rug
pull"), carries hidden instructions, or collides with another server's tool of the same name, is
refused until an operator approves it (`ListToolPins`, `ApproveToolDefinition`). A tool no
`tools/list` answer has shown yet may be called (as the policy allows): a model only learns a
tool's description from a list, and every list passes through the answers stage, which scans,
pins and hides; so a definition the tenant never saw through the gateway has reached no model
through it, and clients that call a tool by a name they know keep working (the next list pins
it).

Then the script counts the call against the session's budget (`calls_per_session`; for the
sessionless 2026-07-28 revision the budget is the caller's on that server per hour) and takes a
slot in two in-flight sets, the session's and the tenant's, each bounded by the policy. A call
over any limit is refused with a JSON-RPC error and counts for nothing. Slots are sorted-set
members scored by when they lapse, so a slot a dying data plane never gave back frees itself
after `SLOT_LEASE_S` (longer than any call may be held and run); the slot is given back when the
exchange ends.

The sizes of arguments and results are checked where the bodies are read (`McpMessage`, and
the answers stage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from functools import partial
from typing import Any, Final

from agent.jsonrpc import LimitExceeded, Refused
from agent.stages.routing import digest
from extproc.deferred import defer_script
from extproc.redis_pipe import Script, ScriptClient
from gatez.agent_policy import AgentLimits
from gatez.errors import Unavailable, quoted
from gatez.pipeline import CONTINUE, Decision, Flow, McpCall, Stage, Verdict
from gatez.tool_pins import PinState, parse_verdict, pins_key, verdict_field

# Longer than the longest approval wait (900 s) plus a long tool call.
SLOT_LEASE_S: Final = 1800
# How long a session's call count is kept (a session idle this long starts afresh anyway).
CALLS_TTL_S: Final = 24 * 3600
STATELESS_WINDOW_S: Final = 3600

# KEYS: the server's pins, the session's call count, the session's and the tenant's in-flight
# sets. ARGV: the tool's verdict field, the three limits, the slot's member, its lease, the call
# count's expiry. {0}: admitted; {1}: calls per session spent; {2}: session concurrency; {3}:
# tenant concurrency; {4, line}: the tool's definition is blocked (its verdict line).
ADMIT: Final = Script(
    """
local verdict = redis.call('HGET', KEYS[1], ARGV[1])
if verdict and cjson.decode(verdict)[1] ~= 'pinned' then return {4, verdict} end
local calls = redis.call('INCR', KEYS[2])
if calls == 1 then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
if calls > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[2])
  return {1}
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
  redis.call('DECR', KEYS[2])
  return {2}
end
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[4]) then
  redis.call('DECR', KEYS[2])
  return {3}
end
local lapse = now_ms + tonumber(ARGV[6]) * 1000
redis.call('ZADD', KEYS[3], lapse, ARGV[5])
redis.call('ZADD', KEYS[4], lapse, ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[6])
return {0}
"""
)
RELEASE: Final = Script(
    """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""
)

# By the script's answer: the limit's name, its AgentLimits field, the message.
_REFUSALS: Final = {
    1: (
        "calls_per_session",
        "calls_per_session",
        "this session has used all its tool calls ({limit})",
    ),
    2: (
        "concurrent_calls_per_session",
        "concurrent_per_session",
        "too many tool calls at once in this session ({limit})",
    ),
    3: (
        "concurrent_calls_per_tenant",
        "concurrent_per_tenant",
        "too many tool calls at once for this tenant ({limit})",
    ),
}


_BLOCKED: Final = {
    PinState.CHANGED: "its definition changed since it was approved; an operator must approve "
    "the new one",
    PinState.POISONED: "its definition carries what looks like hidden instructions; an operator "
    "must approve it",
    PinState.COLLISION: "another of this tenant's MCP servers has a tool of the same name",
    PinState.REFUSED: "its definition cannot be pinned",
}


class ToolCallAdmission(Stage):
    """Refuses blocked tool definitions, counts tool calls and holds their in-flight slots
    (see the module doc)."""

    def __init__(self, redis: ScriptClient) -> None:
        self._redis = redis

    def on_request_body(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        if mcp is None or mcp.method != "tools/call" or mcp.kind != "request":
            return CONTINUE
        rules = mcp.rules
        assert rules is not None
        limits = rules.limits
        tenant = flow.caller.tenant_id
        session = mcp.limits_scope = _session_scope(flow, mcp)
        # Deferred, not awaited: the stages after this one judge the call meanwhile (a call the
        # approval gate would hold waits for this check first), and no task is made for it.
        defer_script(
            flow,
            self,
            self._redis,
            ADMIT,
            [
                pins_key(tenant, mcp.server.name),
                f"{{{tenant}}}:mcp:calls:{session}",
                f"{{{tenant}}}:mcp:inflight:{session}",
                f"{{{tenant}}}:mcp:inflight",
            ],
            [
                verdict_field(mcp.name),
                limits.calls_per_session,
                limits.concurrent_per_session,
                limits.concurrent_per_tenant,
                flow.request_id,
                SLOT_LEASE_S,
                CALLS_TTL_S if not mcp.stateless else STATELESS_WINDOW_S,
            ],
            partial(_admitted, mcp, limits),
            # Fail closed: an uncounted call is an unbounded one.
            _limits_unavailable,
        )
        return CONTINUE

    def on_done(self, flow: Flow) -> Awaitable[None] | None:
        mcp = flow.mcp
        if mcp is None or not mcp.slots_taken:
            return None
        mcp.slots_taken = False
        tenant = flow.caller.tenant_id
        session = mcp.limits_scope
        released = self._redis.submit_script(
            RELEASE,
            [f"{{{tenant}}}:mcp:inflight:{session}", f"{{{tenant}}}:mcp:inflight"],
            [flow.request_id],
        )
        # The slot lapses by itself should this fail; nothing to wait for.
        released.add_done_callback(_ignore)
        return None


def _admitted(mcp: McpCall, limits: AgentLimits, reply: Any) -> Decision:
    refused = int(reply[0])
    if refused == 4:
        verdict = parse_verdict(reply[1])
        mcp.decision, mcp.reason = "denied", f"tool definition {verdict.state.value}"
        raise Refused(f"tool {quoted(mcp.name)} is blocked: {_BLOCKED[verdict.state]}")
    if refused:
        name, field, message = _REFUSALS[refused]
        mcp.decision, mcp.reason = "denied", f"limit {name}"
        raise LimitExceeded(message.format(limit=getattr(limits, field)))
    mcp.slots_taken = True
    return CONTINUE


def _limits_unavailable() -> Unavailable:
    return Unavailable("tool-call limits unavailable, try again")


def _session_scope(flow: Flow, mcp: McpCall) -> str:
    """What a session's limits count under: the session, or (sessionless) the caller on the
    server in this hour."""
    if mcp.session_digest:
        return mcp.session_digest
    hour = int(time.time() // STATELESS_WINDOW_S)
    return digest(f"{flow.caller.key_id}\n{mcp.server.name}\n{hour}")


def _ignore(future: asyncio.Future[object]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not report it as never seen
