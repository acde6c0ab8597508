"""MCP sessions, bound to who opened them.

A session id is not a credential (the MCP specification says so): a server that mints one
knows nothing of tenants, and an id seen by one client can be replayed by another. So when a
server answers `initialize` with an `Mcp-Session-Id`, the gateway binds it in Redis to the
tenant, the caller and the server, before the client gets the id; every later request that
carries it must come from the same caller for the same server, else it is answered 404
"session not found" — the same answer as an unknown id, so nothing is learnt by probing, and
standard clients start a new session. `DELETE` ends the binding with the session.

Keys: `{tenant}:mcp:session:<sha256(id)>` (the tenant's hash tag: one slot per tenant on a Redis
Cluster; the id itself is never stored), holding "<caller>\\n<server>", with a sliding expiry.

A data plane remembers a session it checked for `CHECKED_FOR_S`: a binding never moves to
another owner (binding refuses that), so a remembered "yes" can only outlive a `DELETE` made
through another data plane by that long — and the server itself refuses an ended session. The
sliding expiry is pushed forward when the memory lapses, so an active session never expires.
2026-07-28 has no sessions: nothing is bound, and a stray Mcp-Session-Id is dropped (routing).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

from agent.jsonrpc import RpcError
from agent.protocol import SESSION_HEADER
from agent.stages.routing import digest
from extproc.deferred import defer_script
from extproc.redis_pipe import Script, ScriptClient
from gatez.errors import InvalidRequest, Unavailable
from gatez.pipeline import CONTINUE, Decision, Flow, McpCall, Stage, Verdict

# How long a session lives unused; each use extends it.
SESSION_TTL_S: Final = 24 * 3600
# How long a data plane trusts a session check it made (see the module doc), and how many
# sessions it remembers at most.
CHECKED_FOR_S: Final = 10.0
CHECKED_LIMIT: Final = 100_000
SESSION_ID_LIMIT: Final = 1024

# 1: the caller's own session (expiry extended); 0: unknown, or someone else's.
CHECK: Final = Script(
    """
local owner = redis.call('GET', KEYS[1])
if owner ~= ARGV[1] then return 0 end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)
# 1: bound (or already bound to this caller); 0: the id is bound to someone else.
BIND: Final = Script(
    """
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
)
END: Final = Script(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
)


class SessionNotFound(RpcError):
    http_status = 404
    rpc_code = -32001
    kind = "session_not_found"


def session_key(tenant_id: str, session_digest: str) -> str:
    return f"{{{tenant_id}}}:mcp:session:{session_digest}"


class McpSessions(Stage):
    """Checks and binds `Mcp-Session-Id` sessions (see the module doc)."""

    def __init__(
        self,
        redis: ScriptClient,
        ttl_s: int = SESSION_TTL_S,
        *,
        checked_for_s: float = CHECKED_FOR_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._checked_for_s = checked_for_s
        self._clock = clock
        # (session key, owner) → when the check lapses.
        self._checked: dict[tuple[str, str], float] = {}

    def on_request_headers(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        mcp = flow.mcp
        if mcp is None or mcp.stateless:
            return CONTINUE
        if not mcp.session_id:
            if flow.method != "POST":
                # A GET stream or a DELETE names a session, always.
                raise InvalidRequest(f"{flow.method} needs the {SESSION_HEADER} header")
            return CONTINUE
        if len(mcp.session_id) > SESSION_ID_LIMIT or not mcp.session_id.isascii():
            raise SessionNotFound("session not found")
        key = session_key(flow.caller.tenant_id, mcp.session_digest)
        owner = _owner(flow, mcp)
        now = self._clock()
        if self._checked.get((key, owner), 0.0) > now:
            return CONTINUE
        # Checked while the proxy sends the body; settled before anything reaches the server.
        defer_script(
            flow,
            self,
            self._redis,
            CHECK,
            [key],
            [owner, self._ttl_s],
            partial(self._owned, (key, owner), now + self._checked_for_s),
            _store_unavailable,
        )
        return CONTINUE

    def _owned(self, checked: tuple[str, str], until: float, reply: object) -> Decision:
        if reply != 1:
            self._checked.pop(checked, None)
            raise SessionNotFound("session not found")
        if len(self._checked) >= CHECKED_LIMIT:
            self._checked.clear()
        self._checked[checked] = until
        return CONTINUE

    def on_response_headers(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        mcp = flow.mcp
        if mcp is None or mcp.stateless:
            return CONTINUE
        status = flow.response_status
        if flow.method == "DELETE" and mcp.session_id and (200 <= status < 300 or status == 404):
            key = session_key(flow.caller.tenant_id, mcp.session_digest)
            self._checked.pop((key, _owner(flow, mcp)), None)
            return self._run(END, flow, mcp.session_digest)
        minted = flow.response_headers.get(SESSION_HEADER)
        if minted and minted != mcp.session_id and 200 <= status < 300:
            if len(minted) > SESSION_ID_LIMIT or not minted.isascii():
                raise Unavailable("the MCP server sent an unusable session id")
            mcp.session_id = minted
            mcp.session_digest = digest(minted)
            return self._run(BIND, flow, mcp.session_digest)
        return CONTINUE

    async def _run(self, script: Script, flow: Flow, session_digest: str) -> Verdict:
        mcp = flow.mcp
        assert mcp is not None
        try:
            result = await self._redis.submit_script(
                script,
                [session_key(flow.caller.tenant_id, session_digest)],
                [_owner(flow, mcp), self._ttl_s],
            )
        except Exception:
            # Without a binding the session could not be used safely: the client is told now.
            raise Unavailable("session store unavailable, try again") from None
        if result != 1:
            # A server that hands out an id already bound to someone else: never pass it on.
            raise Unavailable("the MCP server reused another caller's session id")
        return CONTINUE


def _store_unavailable() -> Unavailable:
    return Unavailable("session store unavailable, try again")


def _owner(flow: Flow, mcp: McpCall) -> str:
    return f"{flow.caller.key_id}\n{mcp.server.name}"
