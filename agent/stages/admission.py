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

A call need not wait for Redis (the round trip is most of what admission costs): each call a
data plane counts also counts one call ahead for the session when the budget allows (a credit),
and the tool's "pinned" verdict is remembered for `PINNED_FOR_S`. The session's next call on
this data plane is then admitted at once — on its credit, its tool known pinned a moment ago,
the session's and the tenant's calls running here within the concurrency limits — and Redis
records its slot and counts the following call ahead meanwhile. The budget stays exact: a credit
is a call counted in Redis, so calls never exceed `calls_per_session`; a credit left unused
(the session ended) is a call the session does not get. What only Redis sees is checked late for
a call admitted at once: another data plane's calls running in the same session or tenant (the
concurrency limits may be exceeded by the calls other data planes admit at the same moment), and
a definition another data plane found changed within the last `PINNED_FOR_S` (a list judged on
this data plane is seen at once). A Redis outage lets at most the one call a credit covers
through; the next waits, and is refused.

The sizes of arguments and results are checked where the bodies are read (`McpMessage`, and
the answers stage).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, NoReturn

from agent.jsonrpc import LimitExceeded, Refused
from agent.stages.routing import digest
from extproc.deferred import defer_script
from extproc.redis_pipe import Arg, Script, ScriptClient
from gatez.agent_policy import AgentLimits
from gatez.errors import Unavailable, quoted
from gatez.pipeline import CONTINUE, Decision, Flow, McpCall, Stage, Verdict
from gatez.tool_pins import PinState, parse_verdict, pins_key, verdict_field

# Longer than the longest approval wait (900 s) plus a long tool call.
SLOT_LEASE_S: Final = 1800
# A call counted ahead and not used within this long is given up (the session spent it).
CREDIT_LAPSE_S: Final = 60.0
# How long a tool's "pinned" verdict is trusted without asking Redis again; sessions and tools
# remembered at most.
PINNED_FOR_S: Final = 1.0
LEASES_LIMIT: Final = 100_000
# How long a session's call count is kept (a session idle this long starts afresh anyway).
CALLS_TTL_S: Final = 24 * 3600
STATELESS_WINDOW_S: Final = 3600

# KEYS: the server's pins, the session's call count, the session's and the tenant's in-flight
# sets. ARGV: the tool's verdict field, the three limits, the slot's member, its lease, the call
# count's expiry, the mode ("count": the call is counted and checked; "check": it was counted
# ahead, its concurrency is checked; "record": it was counted ahead and admitted by the data plane
# already, only its slot is recorded), whether to count one call ahead.
# Replies: {0, ahead}: admitted (ahead: 1 when a call was counted ahead for the data plane);
# {1}: calls per session spent; {2}: session concurrency; {3}: tenant concurrency; {4, line}: the
# tool's definition is blocked (its verdict line).
ADMIT: Final = Script(
    """
local verdict = redis.call('HGET', KEYS[1], ARGV[1])
if verdict and cjson.decode(verdict)[1] ~= 'pinned' then return {4, verdict} end
local limit = tonumber(ARGV[2])
local mode = ARGV[8]
local counted = 0
if mode == 'count' then
  local calls = redis.call('INCR', KEYS[2])
  if calls == 1 then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
  if calls > limit then
    redis.call('DECR', KEYS[2])
    return {1}
  end
  counted = 1
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now_ms)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
if mode ~= 'record' then
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[3]) then
    if counted == 1 then redis.call('DECR', KEYS[2]) end
    return {2}
  end
  if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[4]) then
    if counted == 1 then redis.call('DECR', KEYS[2]) end
    return {3}
  end
end
local lapse = now_ms + tonumber(ARGV[6]) * 1000
redis.call('ZADD', KEYS[3], lapse, ARGV[5])
redis.call('ZADD', KEYS[4], lapse, ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
redis.call('EXPIRE', KEYS[4], ARGV[6])
local ahead = 0
if ARGV[9] == '1' then
  local calls = redis.call('INCR', KEYS[2])
  if calls == 1 then redis.call('EXPIRE', KEYS[2], ARGV[7]) end
  if calls > limit then redis.call('DECR', KEYS[2]) else ahead = 1 end
end
return {0, ahead}
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


@dataclass(slots=True)
class _Lease:
    """What a data plane holds of one session's limits: calls counted in Redis ahead of use
    (`credit`, usable without waiting) and the session's calls running here."""

    credit: int = 0
    running: int = 0
    # When an unused credit is given up (monotonic seconds).
    lapses: float = 0.0
    # The reply that will bring the next credit, while it is on its way.
    refill: asyncio.Future[Any] | None = None


class ToolCallAdmission(Stage):
    """Refuses blocked tool definitions, counts tool calls and holds their in-flight slots
    (see the module doc)."""

    def __init__(self, redis: ScriptClient, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._clock = clock
        # (tenant, session scope) → the lease; tenant → its calls running here.
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._running: dict[str, int] = {}
        # (tenant, server, tool) → until when the tool is known pinned (monotonic seconds).
        self._pinned_until: dict[tuple[str, str, str], float] = {}

    def forget_pins(self, tenant_id: str, server: str) -> None:
        """A tools/list answer of `server` was just judged here: its verdicts are asked again."""
        for key in [k for k in self._pinned_until if k[0] == tenant_id and k[1] == server]:
            del self._pinned_until[key]

    def on_request_body(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        if mcp is None or mcp.method != "tools/call" or mcp.kind != "request":
            return CONTINUE
        rules = mcp.rules
        assert rules is not None
        limits = rules.limits
        tenant = flow.caller.tenant_id
        session = mcp.limits_scope = _session_scope(flow, mcp)
        now = self._clock()
        lease = self._leases.get((tenant, session))
        if lease is None or (lease.lapses <= now and not lease.running):
            if len(self._leases) >= LEASES_LIMIT:
                self._sweep(now)
            lease = self._leases[(tenant, session)] = _Lease()
        lease.lapses = now + CREDIT_LAPSE_S
        # The calls running here are a lower bound of those running anywhere: over a limit
        # here is over it everywhere, refused without asking Redis.
        if lease.running >= limits.concurrent_per_session:
            _refuse(mcp, limits, 2)
        if self._running.get(tenant, 0) >= limits.concurrent_per_tenant:
            _refuse(mcp, limits, 3)
        pin = (tenant, mcp.server.name, mcp.name)
        if self._admit_ahead(flow, mcp, limits, tenant, lease, pin):
            return CONTINUE
        if lease.refill is not None:
            # A credit is on its way: the call waits for it rather than counting itself anew
            # (which the credit's own count would make look like one call too many).
            flow.defer(self, asyncio.ensure_future(self._after_refill(flow, mcp, lease, pin)))
            return CONTINUE
        self._count(flow, mcp, lease, pin)
        return CONTINUE

    def _admit_ahead(
        self,
        flow: Flow,
        mcp: McpCall,
        limits: AgentLimits,
        tenant: str,
        lease: _Lease,
        pin: tuple[str, str, str],
    ) -> bool:
        """Admits the call on a credit, without waiting, when the data plane may."""
        if not (
            lease.credit > 0
            and self._pinned_until.get(pin, 0.0) > self._clock()
            and lease.running < limits.concurrent_per_session
            and self._running.get(tenant, 0) < limits.concurrent_per_tenant
        ):
            return False
        # Counted ahead, pinned a moment ago, within the concurrency limits as this data plane
        # sees them: admitted now. Redis records the slot and counts the next call ahead
        # meanwhile.
        lease.credit -= 1
        self._take(mcp, tenant, lease)
        reply = self._redis.submit_script(
            ADMIT, _keys(tenant, mcp.server.name, mcp.limits_scope), _args(flow, mcp, "record")
        )
        lease.refill = reply
        reply.add_done_callback(partial(self._refilled, lease, pin))
        return True

    async def _after_refill(
        self, flow: Flow, mcp: McpCall, lease: _Lease, pin: tuple[str, str, str]
    ) -> Decision:
        refill = lease.refill
        if refill is not None:
            await asyncio.wait([refill])
        assert mcp.rules is not None
        if self._admit_ahead(flow, mcp, mcp.rules.limits, flow.caller.tenant_id, lease, pin):
            return CONTINUE
        mode = _use_credit(lease)
        try:
            reply = await self._redis.submit_script(
                ADMIT,
                _keys(flow.caller.tenant_id, mcp.server.name, mcp.limits_scope),
                _args(flow, mcp, mode),
            )
        except Exception:
            _give_back(lease, mode)
            raise _limits_unavailable() from None
        return self._admitted(mcp, mcp.rules.limits, flow.caller.tenant_id, lease, pin, mode, reply)

    def _count(self, flow: Flow, mcp: McpCall, lease: _Lease, pin: tuple[str, str, str]) -> None:
        """Counts the call in Redis (and one ahead), deferred: settled before the server."""
        assert mcp.rules is not None
        limits = mcp.rules.limits
        tenant = flow.caller.tenant_id
        session = mcp.limits_scope
        # A credit this data plane holds is used (its call is counted already); the pin
        # verdict and the concurrency are still asked of Redis, as the fast path could not.
        mode = _use_credit(lease)
        defer_script(
            flow,
            self,
            self._redis,
            ADMIT,
            _keys(tenant, mcp.server.name, session),
            _args(flow, mcp, mode),
            partial(self._admitted, mcp, limits, tenant, lease, pin, mode),
            # Fail closed: an uncounted call is an unbounded one.
            partial(_unavailable_giving_back, lease, mode),
        )

    def _admitted(
        self,
        mcp: McpCall,
        limits: AgentLimits,
        tenant: str,
        lease: _Lease,
        pin: tuple[str, str, str],
        mode: str,
        reply: Any,
    ) -> Decision:
        refused = int(reply[0])
        if refused:
            # A refused call spent nothing: a credit it took goes back.
            _give_back(lease, mode)
        if refused == 4:
            self._pinned_until.pop(pin, None)
            verdict = parse_verdict(reply[1])
            mcp.decision, mcp.reason = "denied", f"tool definition {verdict.state.value}"
            raise Refused(f"tool {quoted(mcp.name)} is blocked: {_BLOCKED[verdict.state]}")
        if refused:
            _refuse(mcp, limits, refused)
        self._pinned_until[pin] = self._clock() + PINNED_FOR_S
        lease.credit += int(reply[1])
        self._take(mcp, tenant, lease)
        return CONTINUE

    def _refilled(
        self, lease: _Lease, pin: tuple[str, str, str], reply: asyncio.Future[Any]
    ) -> None:
        """The reply for a call admitted ahead: the next call's credit, or news of a block."""
        if lease.refill is reply:
            lease.refill = None
        if reply.cancelled() or reply.exception() is not None:
            return  # the next call waits for Redis, and fails closed if it is still away
        answer = reply.result()
        if int(answer[0]) == 0:
            lease.credit += int(answer[1])
            self._pinned_until[pin] = self._clock() + PINNED_FOR_S
        elif int(answer[0]) == 4:
            self._pinned_until.pop(pin, None)

    def _take(self, mcp: McpCall, tenant: str, lease: _Lease) -> None:
        mcp.slots_taken = True
        mcp.lease = lease
        lease.running += 1
        self._running[tenant] = self._running.get(tenant, 0) + 1

    def _sweep(self, now: float) -> None:
        for key in [k for k, held in self._leases.items() if held.lapses <= now]:
            if not self._leases[key].running:
                del self._leases[key]
        if len(self._leases) >= LEASES_LIMIT:
            self._leases.clear()
        if len(self._pinned_until) >= LEASES_LIMIT:
            self._pinned_until.clear()

    def on_done(self, flow: Flow) -> Awaitable[None] | None:
        mcp = flow.mcp
        if mcp is None or not mcp.slots_taken:
            return None
        mcp.slots_taken = False
        tenant = flow.caller.tenant_id
        lease = mcp.lease
        if isinstance(lease, _Lease):
            lease.running -= 1
        left = self._running.get(tenant, 1) - 1
        if left > 0:
            self._running[tenant] = left
        else:
            self._running.pop(tenant, None)
        session = mcp.limits_scope
        released = self._redis.submit_script(
            RELEASE,
            [f"{{{tenant}}}:mcp:inflight:{session}", f"{{{tenant}}}:mcp:inflight"],
            [flow.request_id],
        )
        # The slot lapses by itself should this fail; nothing to wait for.
        released.add_done_callback(_ignore)
        return None


def _keys(tenant: str, server: str, session: str) -> list[Arg]:
    return [
        pins_key(tenant, server),
        f"{{{tenant}}}:mcp:calls:{session}",
        f"{{{tenant}}}:mcp:inflight:{session}",
        f"{{{tenant}}}:mcp:inflight",
    ]


def _use_credit(lease: _Lease) -> str:
    """Takes a credit for a call Redis will check: "check" when there was one, else "count"."""
    if lease.credit > 0:
        lease.credit -= 1
        return "check"
    return "count"


def _give_back(lease: _Lease, mode: str) -> None:
    if mode == "check":
        lease.credit += 1


def _unavailable_giving_back(lease: _Lease, mode: str) -> Unavailable:
    _give_back(lease, mode)
    return _limits_unavailable()


def _args(flow: Flow, mcp: McpCall, mode: str) -> list[Arg]:
    assert mcp.rules is not None
    limits = mcp.rules.limits
    return [
        verdict_field(mcp.name),
        limits.calls_per_session,
        limits.concurrent_per_session,
        limits.concurrent_per_tenant,
        flow.request_id,
        SLOT_LEASE_S,
        CALLS_TTL_S if not mcp.stateless else STATELESS_WINDOW_S,
        mode,
        1,
    ]


def _refuse(mcp: McpCall, limits: AgentLimits, code: int) -> NoReturn:
    name, field, message = _REFUSALS[code]
    mcp.decision, mcp.reason = "denied", f"limit {name}"
    raise LimitExceeded(message.format(limit=getattr(limits, field)))


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
