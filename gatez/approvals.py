"""Tool calls held for a human decision, kept in Redis where the control service and every data
plane see them.

A data plane that holds a call `create`s an approval and waits; an operator `decide`s it through
the control service; the holder marks it `expire`d when its time is up, or `abandon`ed when the
client leaves or the data plane stops. Every change of state is one Lua script, so the first
transition out of PENDING wins and the rest see it: an operator approving at the very instant the
holder's timer fires either wins (the call runs) or is told the call timed out, never both.
Scripts read the time from Redis (`TIME`), so the deadline means the same to every process.

Idempotent by `call_key` (the holder's digest of tenant, caller, server, tool, arguments and
session): a client retrying the same call, say after the data plane holding it crashed, is
re-attached to the same approval while it is PENDING (it waits again, until the same deadline)
and for `reuse_after_decision_s` after it was APPROVED or DENIED (it proceeds, or is refused, at
once). A call that TIMED_OUT or was ABANDONED, or a decision older than that window, leaves no
trace on a retry: the retry is a new PENDING approval, and an operator is asked again. A PENDING
approval past its deadline (its holder died without marking it) is marked TIMED_OUT by the next
create for its call_key.

Keys (the tenant id is a Redis Cluster hash tag, so one tenant's keys share a slot and a script
may touch them together):
- `gatez:approval:{<tenant>}:<id>`: a hash, the record; expires `retention_s` after creation.
- `gatez:approvals:{<tenant>}:index`: a sorted set of the tenant's ids by creation time (ms);
  members older than the retention are trimmed by each create.
- `gatez:approvals:{<tenant>}:pending`: a sorted set of the ids still PENDING, by creation time.
- `gatez:approvals:{<tenant>}:call:<call_key>`: the id of the latest approval for that call.
Each change is published on the channel `gatez:approvals:{<tenant>}` as `<id> <state>`, inside
the script that made it. Pub/Sub delivers at most once: watchers re-read the record, and waiters
also poll it.
"""

from __future__ import annotations

import builtins
import datetime as dt
import enum
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from redis.commands.core import AsyncScript

from gatez.errors import FailedPrecondition, InvalidRequest, NotFound, quoted
from gatez.redis_client import RedisClient

RETENTION_S: Final = 7 * 24 * 3600
# How long after its decision a retry of the same call is still answered by it.
REUSE_AFTER_DECISION_S: Final = 300
# The most approvals `list` returns, and how many index entries it reads to find them.
LIST_LIMIT: Final = 500
LIST_SCAN_LIMIT: Final = 10_000
# The operator sees this much of the arguments (the API's own limit).
MAX_ARGUMENTS_CHARS: Final = 16 * 1024
MAX_REASON_CHARS: Final = 1000
CHANNEL_PREFIX: Final = "gatez:approvals:"
# Subscribes to every tenant's channel (a data plane serves many tenants).
CHANNEL_PATTERN: Final = CHANNEL_PREFIX + "{*}"
APPROVAL_ID_PATTERN: Final = re.compile(r"apr-[0-9a-f]{16}")
# Tenant ids are checked where policies compile; this only keeps key names well-formed.
_TENANT_IN_KEY: Final = re.compile(r"[^{}\s]{1,128}")
_CHANNEL: Final = re.compile(r"gatez:approvals:\{([^{}\s]+)\}")

IdGenerator = Callable[[], str]


class ApprovalState(enum.Enum):
    """Where a held call stands; the values are what Redis stores."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    # No decision came before the deadline: denied.
    TIMED_OUT = "timed_out"
    # The client left, or the data plane holding the call stopped, before a decision.
    ABANDONED = "abandoned"

    @property
    def final(self) -> bool:
        return self is not ApprovalState.PENDING


@dataclass(frozen=True, slots=True)
class Approval:
    """One held tool call, as stored. Times are UTC; `decide_time` is None while PENDING (and set
    for every later state, by whoever ended it: an operator, the timer, a leaving client)."""

    id: str
    tenant_id: str
    caller: str
    server: str
    tool: str
    arguments_json: str
    session_digest: str
    held_because: str
    call_key: str
    state: ApprovalState
    create_time: dt.datetime
    expire_time: dt.datetime
    decide_time: dt.datetime | None = None
    approver: str = ""
    reason: str = ""

    def remaining_s(self, now: dt.datetime) -> float:
        """Seconds until the deadline from `now` (0 once past it)."""
        return max(0.0, (self.expire_time - now).total_seconds())


@dataclass(frozen=True, slots=True)
class ApprovalEvent:
    """An approval changed: it was created, or left PENDING. Re-read it for the rest."""

    tenant_id: str
    approval_id: str
    state: ApprovalState


def random_approval_id() -> str:
    """`apr-<16 hex digits>`: 64 random bits."""
    return f"apr-{secrets.token_hex(8)}"


def record_key(tenant_id: str, approval_id: str) -> str:
    return f"gatez:approval:{{{tenant_id}}}:{approval_id}"


def index_key(tenant_id: str) -> str:
    return f"gatez:approvals:{{{tenant_id}}}:index"


def pending_key(tenant_id: str) -> str:
    return f"gatez:approvals:{{{tenant_id}}}:pending"


def call_key_key(tenant_id: str, call_key: str) -> str:
    return f"gatez:approvals:{{{tenant_id}}}:call:{call_key}"


def channel(tenant_id: str) -> str:
    """The Pub/Sub channel of a tenant's approval changes."""
    return f"{CHANNEL_PREFIX}{{{tenant_id}}}"


def parse_event(channel_name: bytes | str, data: bytes | str) -> ApprovalEvent | None:
    """The event a Pub/Sub message carries; None for anything else on the channel."""
    name = channel_name.decode() if isinstance(channel_name, bytes) else channel_name
    text = data.decode() if isinstance(data, bytes) else data
    matched = _CHANNEL.fullmatch(name)
    approval_id, _, state = text.partition(" ")
    if matched is None or not APPROVAL_ID_PATTERN.fullmatch(approval_id):
        return None
    try:
        return ApprovalEvent(matched.group(1), approval_id, ApprovalState(state))
    except ValueError:
        return None


# The current time in ms, by Redis's clock.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# Ends a PENDING record (KEYS[1]) with ARGV state, at `now`, and announces it; KEYS[2] is the
# tenant's pending set.
_FINISH = """
local function finish(record, pending, state, approver, reason, now, channel)
  redis.call('HSET', record, 'state', state, 'decided_ms', now, 'approver', approver,
             'reason', reason)
  local id = redis.call('HGET', record, 'id')
  redis.call('ZREM', pending, id)
  redis.call('PUBLISH', channel, id .. ' ' .. state)
end
"""

# KEYS: 1 call key, 2 index, 3 the record the call key names now (or the new one), 4 the new
# record, 5 pending set. ARGV: 1 the id the caller read from the call key ('' for none), 2 new
# id, 3 retention ms, 4 reuse-after-decision ms, 5 timeout ms, 6 channel, then the fields.
# Returns {'retry'} when the call key changed since the caller read it, else {status, record}.
CREATE_SCRIPT: Final = (
    _NOW
    + _FINISH
    + """
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then return {'retry'} end
if current ~= '' and redis.call('EXISTS', KEYS[3]) == 1 then
  local state = redis.call('HGET', KEYS[3], 'state')
  local expire = tonumber(redis.call('HGET', KEYS[3], 'expire_ms'))
  if state == 'pending' then
    if now < expire then return {'existing', redis.call('HGETALL', KEYS[3])} end
    finish(KEYS[3], KEYS[5], 'timed_out', '', 'no decision in time', now, ARGV[6])
  elseif state == 'approved' or state == 'denied' then
    local decided = tonumber(redis.call('HGET', KEYS[3], 'decided_ms'))
    if now < math.max(expire, decided + tonumber(ARGV[4])) then
      return {'existing', redis.call('HGETALL', KEYS[3])}
    end
  end
end
local retention = tonumber(ARGV[3])
redis.call('HSET', KEYS[4], 'id', ARGV[2], 'state', 'pending', 'created_ms', now,
           'expire_ms', now + tonumber(ARGV[5]), 'decided_ms', 0, 'approver', '', 'reason', '',
           'caller', ARGV[7], 'server', ARGV[8], 'tool', ARGV[9], 'arguments', ARGV[10],
           'session', ARGV[11], 'held_because', ARGV[12], 'call_key', ARGV[13],
           'tenant', ARGV[14])
redis.call('PEXPIRE', KEYS[4], retention)
redis.call('SET', KEYS[1], ARGV[2], 'PX', retention)
redis.call('ZADD', KEYS[2], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - retention)
redis.call('PEXPIRE', KEYS[2], retention)
redis.call('ZADD', KEYS[5], now, ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now - retention)
redis.call('PEXPIRE', KEYS[5], retention)
redis.call('PUBLISH', ARGV[6], ARGV[2] .. ' pending')
return {'created', redis.call('HGETALL', KEYS[4])}
"""
)

# KEYS: 1 the record, 2 pending set. ARGV: 1 the new state, 2 approver, 3 reason, 4 '1' when an
# operator decides (refused past the deadline, which then times the call out), 5 channel.
# Returns {'missing'}, or {status, record}: 'done' (this call moved it), 'final' (it had left
# PENDING already), 'late' (an operator came after the deadline).
TRANSITION_SCRIPT: Final = (
    _NOW
    + _FINISH
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then
  return {'final', redis.call('HGETALL', KEYS[1])}
end
if ARGV[4] == '1' and now >= tonumber(redis.call('HGET', KEYS[1], 'expire_ms')) then
  finish(KEYS[1], KEYS[2], 'timed_out', '', 'no decision in time', now, ARGV[5])
  return {'late', redis.call('HGETALL', KEYS[1])}
end
finish(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], now, ARGV[5])
return {'done', redis.call('HGETALL', KEYS[1])}
"""
)


class ApprovalStore:
    """Approvals in Redis (see the module docstring for the layout); shared by the control
    service and the data planes. `redis` must reply with bytes (the default)."""

    def __init__(
        self,
        redis: RedisClient,
        *,
        retention_s: int = RETENTION_S,
        reuse_after_decision_s: int = REUSE_AFTER_DECISION_S,
        new_id: IdGenerator = random_approval_id,
    ) -> None:
        self._redis = redis
        self._retention_ms = retention_s * 1000
        self._reuse_ms = reuse_after_decision_s * 1000
        self._new_id = new_id
        self._create: AsyncScript = redis.register_script(CREATE_SCRIPT)
        self._transition: AsyncScript = redis.register_script(TRANSITION_SCRIPT)

    @property
    def redis(self) -> RedisClient:
        """The client this store uses (watchers subscribe through it)."""
        return self._redis

    async def create(
        self,
        tenant_id: str,
        *,
        caller: str,
        server: str,
        tool: str,
        arguments_json: str,
        session_digest: str,
        held_because: str,
        timeout_s: float,
        call_key: str,
    ) -> Approval:
        """A new PENDING approval deciding by `timeout_s` from now, or the one a retry of the
        same `call_key` re-attaches to (see the module docstring); check its `state`."""
        _check_tenant(tenant_id)
        if not call_key or not call_key.isascii() or len(call_key) > 128:
            raise ValueError("call_key must be 1 to 128 ASCII characters (a digest)")
        new_id = self._new_id()
        fields = (
            caller,
            server,
            tool,
            _clipped(arguments_json, MAX_ARGUMENTS_CHARS),
            session_digest,
            held_because,
            call_key,
            tenant_id,
        )
        pointer = call_key_key(tenant_id, call_key)
        for _ in range(8):
            current = _text(await self._redis.get(pointer))
            existing = current if APPROVAL_ID_PATTERN.fullmatch(current) else new_id
            keys = (
                pointer,
                index_key(tenant_id),
                record_key(tenant_id, existing),
                record_key(tenant_id, new_id),
                pending_key(tenant_id),
            )
            args = (
                current,
                new_id,
                self._retention_ms,
                self._reuse_ms,
                max(1, round(timeout_s * 1000)),
                channel(tenant_id),
                *fields,
            )
            reply = await self._create(keys, args)
            if reply[0] != b"retry":
                return _record(tenant_id, reply[1])
        raise RuntimeError("the approval's call key kept changing; giving up")

    async def get(self, tenant_id: str, approval_id: str) -> Approval | None:
        """The approval, or None when it is unknown to this tenant (or gone after retention)."""
        if not _valid_tenant(tenant_id) or not APPROVAL_ID_PATTERN.fullmatch(approval_id):
            return None
        fields = await self._redis.hgetall(record_key(tenant_id, approval_id))
        return _record(tenant_id, fields) if fields else None

    async def decide(
        self, tenant_id: str, approval_id: str, *, approve: bool, approver: str, reason: str = ""
    ) -> Approval:
        """Moves a PENDING approval to APPROVED or DENIED and announces it. Raises
        InvalidRequest without an approver, NotFound for an id the tenant does not have, and
        FailedPrecondition when it left PENDING already or its deadline passed (it is then
        TIMED_OUT)."""
        if not approver.strip():
            raise InvalidRequest("approver is required")
        if not _valid_tenant(tenant_id) or not APPROVAL_ID_PATTERN.fullmatch(approval_id):
            raise NotFound(f"approval {quoted(approval_id)} not found")
        state = ApprovalState.APPROVED if approve else ApprovalState.DENIED
        status, record = await self._finish(
            tenant_id, approval_id, state, approver, _clipped(reason, MAX_REASON_CHARS), True
        )
        if record is None:
            raise NotFound(f"approval {quoted(approval_id)} not found")
        if status == b"late":
            raise FailedPrecondition(f"approval {approval_id} timed out before the decision")
        if status == b"final":
            raise FailedPrecondition(
                f"approval {approval_id} is {record.state.value} already; it cannot be decided"
            )
        return record

    async def expire(self, tenant_id: str, approval_id: str) -> Approval | None:
        """Marks a PENDING approval TIMED_OUT (its holder's time is up), and returns it as it
        stands: a decision that came first wins. None when it is gone."""
        _, record = await self._finish(
            tenant_id, approval_id, ApprovalState.TIMED_OUT, "", "no decision in time", False
        )
        return record

    async def abandon(self, tenant_id: str, approval_id: str, reason: str) -> Approval | None:
        """Marks a PENDING approval ABANDONED (the client left, the data plane stops), and
        returns it as it stands: a decision that came first wins. None when it is gone."""
        _, record = await self._finish(
            tenant_id, approval_id, ApprovalState.ABANDONED, "", reason, False
        )
        return record

    async def list(
        self, tenant_id: str, state: ApprovalState | None = None, limit: int = LIST_LIMIT
    ) -> list[Approval]:
        """The tenant's approvals, newest first, at most `limit` (and `LIST_LIMIT`), only those
        in `state` when given. A filter other than PENDING reads at most `LIST_SCAN_LIMIT` of
        the newest entries to find them."""
        _check_tenant(tenant_id)
        limit = max(0, min(limit, LIST_LIMIT))
        source = pending_key(tenant_id) if state is ApprovalState.PENDING else index_key(tenant_id)
        found: list[Approval] = []
        start = 0
        while len(found) < limit and start < LIST_SCAN_LIMIT:
            ids = await self._redis.zrevrange(source, start, start + LIST_LIMIT - 1)
            if not ids:
                break
            start += len(ids)
            for record in await self._read(tenant_id, ids):
                if state is None or record.state is state:
                    found.append(record)
        return found[:limit]

    async def _read(self, tenant_id: str, ids: Sequence[object]) -> builtins.list[Approval]:
        # One slot (the tenant's hash tag): a plain pipeline works on a cluster too.
        async with self._redis.pipeline(transaction=False) as pipe:
            for approval_id in ids:
                pipe.hgetall(record_key(tenant_id, _text(approval_id)))
            replies = await pipe.execute()
        # Records past their retention are gone before the index is trimmed: skip them.
        return [_record(tenant_id, fields) for fields in replies if fields]

    async def _finish(
        self,
        tenant_id: str,
        approval_id: str,
        state: ApprovalState,
        approver: str,
        reason: str,
        by_operator: bool,
    ) -> tuple[bytes, Approval | None]:
        if not _valid_tenant(tenant_id) or not APPROVAL_ID_PATTERN.fullmatch(approval_id):
            return b"missing", None
        reply = await self._transition(
            (record_key(tenant_id, approval_id), pending_key(tenant_id)),
            (state.value, approver, reason, "1" if by_operator else "0", channel(tenant_id)),
        )
        if reply[0] == b"missing":
            return b"missing", None
        return reply[0], _record(tenant_id, reply[1])


def _record(tenant_id: str, raw: object) -> Approval:
    """A record from HGETALL: a dict (a command's reply) or a flat list (a script's)."""
    if isinstance(raw, dict):
        items = {_text(k): _text(v) for k, v in raw.items()}
    elif isinstance(raw, list):
        items = {_text(raw[i]): _text(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}
    else:
        raise TypeError(f"an approval record from Redis must be a hash, not {type(raw)}")
    decided_ms = int(items.get("decided_ms") or 0)
    return Approval(
        id=items["id"],
        tenant_id=tenant_id,
        caller=items.get("caller", ""),
        server=items.get("server", ""),
        tool=items.get("tool", ""),
        arguments_json=items.get("arguments", ""),
        session_digest=items.get("session", ""),
        held_because=items.get("held_because", ""),
        call_key=items.get("call_key", ""),
        state=ApprovalState(items["state"]),
        create_time=_time(int(items["created_ms"])),
        expire_time=_time(int(items["expire_ms"])),
        decide_time=_time(decided_ms) if decided_ms else None,
        approver=items.get("approver", ""),
        reason=items.get("reason", ""),
    )


def _time(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    return str(value)


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _valid_tenant(tenant_id: str) -> bool:
    return _TENANT_IN_KEY.fullmatch(tenant_id) is not None


def _check_tenant(tenant_id: str) -> None:
    if not _valid_tenant(tenant_id):
        raise InvalidRequest(f"tenant_id {quoted(tenant_id)} is not valid")
