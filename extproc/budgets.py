"""Token budgets in Redis: per tenant and per API key, in tokens and in USD, over the calendar
day and month (UTC), held before a call and settled from its reported usage.

A call RESERVES its worst case (prompt estimate + max_tokens, and that many tokens' worth in
USD at the model's price; the caller computes both) against every budget that applies — tenant
day and month, key day and month, each in tokens and USD — in one script: either all have room
(spent + held + this <= limit) and all are held, or nothing changes and the reply names the
first exhausted budget (its reset time follows from its period). When the response ends the
call is SETTLED (its hold released, its actual usage added to what is spent), or RELEASED when
it never reached the provider. So a budget overshoots by nothing as long as actual usage stays
within what was reserved; by at most the excess of calls that used more than they reserved.

Idempotency. The reservation id is the request id: a reserve re-run with the same id (a
failover re-running the request body phase) while its reservation is held or settled is
admitted again (`replayed`) and holds nothing more; one re-run after a release or a lapse is a
new attempt and holds anew; one after a refusal is judged afresh (refusals leave no trace). A
settle or release that finds the reservation settled or released already changes nothing.

Crash leftovers. A hold is a member of the tenant's `holds` sorted set scored by when it lapses
(`lease_s` after it was taken; longer than any call may run). Every reserve first sweeps lapsed
holds (a bounded number per call) and gives their amounts back, so a data plane that died
holding budget blocks it for at most `lease_s`. A call settled after its hold lapsed is still
charged its actual usage.

Time: the data plane's clock (`clock`, epoch seconds, injected) is the one source of truth. It
names the period keys (`…:day:2026-12-02`, `…:month:2026-12`), their expiry, the reset time
of a refusal and the holds' lapse times, and is passed to the scripts; Redis TIME is not used.
Data planes' clocks disagreeing by a few seconds moves a call across a period boundary at most;
a test passes a fake clock to cross periods. A call is charged in the periods it was reserved
in, even when it settles after midnight.

Soft thresholds: when a budget's spent amount reaches its soft fraction of its limit, the
reserve or settle whose script saw it first reports it (a flag in the period's hash, so once per
budget, unit and period): the caller logs or counts it once. Only spent counts, not held: a
worst case held and then mostly unused is not money spent. The fraction is per owner (a tenant's
policy may say 80 % and one of its keys' 95 %): `reserve` takes each owner's, the store's
`soft_fraction` stands in for an owner that says nothing, and a settle uses the reserve's.

Key layout (all in the tenant's hash slot: `{tenant_id}` is a Redis Cluster hash tag, so a
tenant id must not contain braces):
- `{t}:budget:tenant:day:YYYY-MM-DD`, `{t}:budget:tenant:month:YYYY-MM`,
  `{t}:budget:key:<key_id>:day:…`, `{t}:budget:key:<key_id>:month:…`: hashes of
  `tokens_spent`, `tokens_held`, `usd_spent`, `usd_held` (USD in integer micro-dollars) and the
  soft flags `tokens_soft`, `usd_soft`; they expire `PERIOD_GRACE_S` after their period ends.
- `{t}:budget:holds`: sorted set of held reservation ids, scored by lapse time (ms).
- `{t}:budget:hold:<reservation_id>`: hash `state` (held, settled, released, lapsed), `tokens`,
  `usd`, `keys` (the budget keys held, newline-separated: the sweep reads them); kept
  `KEEP_S` after it ends, for idempotency.

Redis away (no answer within `timeout_s`): `reserve` fails closed by default
(`Admission.UNAVAILABLE`) or open (`fail_open`: `Admission.UNCHECKED`, let through; the settle
still charges the actual usage when Redis is back by then). A reply that comes after the
deadline may have held budget: failing closed, that hold is released as soon as it is known;
failing open, the call's settle settles it. A failed settle or release is reported, not raised:
the usage is then lost, and the hold lapses after `lease_s`. A caller that cancels a `reserve`
should `release` the reservation.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, Final

from extproc.redis_pipe import Arg, RedisReplyError, Script, ScriptClient
from gatez.budgets import READ_SOURCE, BudgetLimits, Period, Scope, Unit
from gatez.budgets import Spend as Spend
from gatez.budgets import budget_key as budget_key
from gatez.budgets import budget_prefix as budget_prefix
from gatez.budgets import holds_key as holds_key
from gatez.budgets import period_end as period_end
from gatez.budgets import period_label as period_label
from gatez.budgets import record_key as record_key

# Key names and Spend live in gatez.budgets, shared with the control service (which reads and
# resets spend); imported `as` themselves, they stay importable from here.

log = logging.getLogger("gatez.budgets")

# A period's hash outlives its period by this much: late settles (charged in the period the
# call was reserved in) still find it, and read_spend can show yesterday's figures.
PERIOD_GRACE_S: Final = 2 * 24 * 3600
# An ended reservation's record is kept this long: a re-run request or a second settle within
# it is recognised.
KEEP_S: Final = 24 * 3600
# Lapsed holds given back per reserve, at most (the rest by the next reserves).
SWEEP_LIMIT: Final = 64

# Shared Lua: gives a held reservation's amounts back to the budgets it holds (those still
# there: a period's hash that expired has nothing to give back to).
_UNHOLD = """
-- Negated as a string (see RESERVE on why strings); Redis refuses '-0' as an integer.
local function negated(amount)
  if amount == '0' then
    return '0'
  end
  return '-' .. amount
end

local function unhold(record)
  local f = redis.call('HMGET', record, 'state', 'tokens', 'usd', 'keys')
  if f[1] ~= 'held' then
    return f[1]
  end
  for key in string.gmatch(f[4], '[^\\n]+') do
    if redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, 'tokens_held', negated(f[2]))
      redis.call('HINCRBY', key, 'usd_held', negated(f[3]))
    end
  end
  return 'held'
end
"""

# Reports each budget whose spent amount reached its soft fraction of its limit for the first
# time in its period, as '<budget index>:tokens' or ':usd' appended to `out`. ARGV from `first`:
# per budget its token limit, USD limit (-1: none), expiry and soft fraction (0: none).
_SOFT = """
local function soft_check(first, out)
  for i = 1, #KEYS - 2 do
    local key = KEYS[i + 2]
    local base = first + (i - 1) * 4
    local soft = tonumber(ARGV[base + 3])
    if soft > 0 then
      local limits = {tonumber(ARGV[base]), tonumber(ARGV[base + 1])}
      local spent = redis.call('HMGET', key, 'tokens_spent', 'usd_spent')
      local units = {'tokens', 'usd'}
      for u = 1, 2 do
        if limits[u] > 0 and tonumber(spent[u] or '0') >= limits[u] * soft then
          if redis.call('HSETNX', key, units[u] .. '_soft', 1) == 1 then
            out[#out + 1] = i .. ':' .. units[u]
          end
        end
      end
    end
  end
end
"""

# KEYS: the holds set, the reservation's record, then the budgets. ARGV: now (ms), the record's
# key prefix, the reservation id, its lapse time (ms), how long an ended record is kept (ms),
# tokens, USD (micro), the sweep limit, then per budget: token limit, USD limit (-1: none),
# expiry (ms), soft fraction.
# Replies: {1, soft...}: held; {0, budget index, unit}: refused, nothing changed; {2, state}:
# this reservation is held or settled already (a re-run), nothing changed.
RESERVE: Final = Script(
    _UNHOLD
    + _SOFT
    + """
local now = tonumber(ARGV[1])
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[8]))
for _, id in ipairs(lapsed) do
  local record = ARGV[2] .. id
  if unhold(record) == 'held' then
    redis.call('HSET', record, 'state', 'lapsed')
  end
  redis.call('ZREM', KEYS[1], id)
end
local state = redis.call('HGET', KEYS[2], 'state')
if state == 'held' or state == 'settled' then
  return {2, state}
end
local tokens = tonumber(ARGV[6])
local usd = tonumber(ARGV[7])
local out = {1}
for i = 1, #KEYS - 2 do
  local base = 9 + (i - 1) * 4
  local v = redis.call('HMGET', KEYS[i + 2], 'tokens_spent', 'tokens_held', 'usd_spent', 'usd_held')
  local token_limit = tonumber(ARGV[base])
  local usd_limit = tonumber(ARGV[base + 1])
  if token_limit >= 0 and tonumber(v[1] or '0') + tonumber(v[2] or '0') + tokens > token_limit then
    return {0, i, 'tokens'}
  end
  if usd_limit >= 0 and tonumber(v[3] or '0') + tonumber(v[4] or '0') + usd > usd_limit then
    return {0, i, 'usd'}
  end
end
local keys = {}
local last_expiry = 0
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  local expiry = tonumber(ARGV[9 + (i - 1) * 4 + 2])
  -- Amounts go to Redis as the strings they came as: Lua would print a number past 1e14
  -- in exponent notation, which HINCRBY refuses.
  redis.call('HINCRBY', key, 'tokens_held', ARGV[6])
  redis.call('HINCRBY', key, 'usd_held', ARGV[7])
  redis.call('PEXPIREAT', key, ARGV[9 + (i - 1) * 4 + 2])
  keys[#keys + 1] = key
  if expiry > last_expiry then
    last_expiry = expiry
  end
end
local lapse = tonumber(ARGV[4])
redis.call('HSET', KEYS[2], 'state', 'held', 'tokens', ARGV[6], 'usd', ARGV[7],
  'keys', table.concat(keys, '\\n'))
redis.call('PEXPIRE', KEYS[2], lapse - now + tonumber(ARGV[5]))
redis.call('ZADD', KEYS[1], lapse, ARGV[3])
-- The holds set lives as long as the longest budget it holds for, so no hold is forgotten
-- while its budget is still counted.
local holds_expiry = math.max(last_expiry, lapse)
if redis.call('PEXPIRETIME', KEYS[1]) < holds_expiry then
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', holds_expiry))
end
soft_check(9, out)
return out
"""
)

# KEYS: the holds set, the record, the budgets. ARGV: how long the ended record is kept (ms), the
# reservation id, tokens, USD (micro), then per budget: token limit, USD limit, expiry (ms),
# soft fraction.
# Replies: {1, soft...}: settled; {2, state}: settled or released already, nothing changed.
SETTLE: Final = Script(
    _UNHOLD
    + _SOFT
    + """
local state = unhold(KEYS[2])
if state == 'settled' or state == 'released' then
  return {2, state}
end
redis.call('ZREM', KEYS[1], ARGV[2])
for i = 1, #KEYS - 2 do
  local key = KEYS[i + 2]
  redis.call('HINCRBY', key, 'tokens_spent', ARGV[3])
  redis.call('HINCRBY', key, 'usd_spent', ARGV[4])
  redis.call('PEXPIREAT', key, ARGV[5 + (i - 1) * 4 + 2])
end
redis.call('HSET', KEYS[2], 'state', 'settled')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
local out = {1}
soft_check(5, out)
return out
"""
)

# KEYS: the holds set, the record. ARGV: how long the ended record is kept (ms), the
# reservation id. Replies: {1}: released; {2, state}: not held (nothing changed).
RELEASE: Final = Script(
    _UNHOLD
    + """
local state = unhold(KEYS[2])
if state ~= 'held' then
  return {2, state or 'none'}
end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], 'state', 'released')
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[1]))
return {1}
"""
)

# KEYS: budgets. Replies: per budget {tokens_spent, tokens_held, usd_spent, usd_held}.
READ: Final = Script(READ_SOURCE)


@dataclass(frozen=True, slots=True)
class Cost:
    """Tokens and USD (micro-dollars) a call holds or used."""

    tokens: int
    usd_micros: int

    def __post_init__(self) -> None:
        # Whole non-negative amounts: the scripts add them with HINCRBY.
        if self.tokens < 0 or self.usd_micros < 0:
            raise ValueError("a cost is never negative")


@dataclass(frozen=True, slots=True)
class Budget:
    """One budget a call counts against, in one period."""

    scope: Scope
    period: Period
    key: str
    token_limit: int | None
    usd_limit: int | None
    resets_at: datetime
    expires_at_ms: int
    # Of a limit, the spent part reported as a soft threshold (0: none).
    soft_fraction: float

    @property
    def name(self) -> str:
        """`tenant:day`, `key:month`, ... (for logs and metrics)."""
        return f"{self.scope}:{self.period}"


@dataclass(frozen=True, slots=True)
class BudgetMark:
    """A budget and unit: the one exhausted, or one that crossed its soft threshold."""

    scope: Scope
    period: Period
    unit: Unit
    resets_at: datetime


class Admission(StrEnum):
    """How a reserve ended."""

    ADMITTED = "admitted"  # held against every budget (or no budget applies)
    REFUSED = "refused"  # a budget is exhausted: `exhausted` says which
    UNCHECKED = "unchecked"  # Redis away, fail open: let through, nothing held
    UNAVAILABLE = "unavailable"  # Redis away, fail closed: refused


@dataclass(frozen=True, slots=True)
class Reservation:
    """What `reserve` answered; passed back to `settle` or `release`."""

    reservation_id: str
    tenant_id: str
    admission: Admission
    cost: Cost
    budgets: tuple[Budget, ...]
    exhausted: BudgetMark | None = None
    soft_crossed: tuple[BudgetMark, ...] = ()
    # A re-run of a reservation already held or settled: its answer, nothing held again.
    replayed: bool = False
    # Seconds until the exhausted budget resets (for Retry-After; 0 when admitted).
    retry_after_s: int = 0

    @property
    def admitted(self) -> bool:
        """The call may go on (held, or unchecked when failing open)."""
        return self.admission in (Admission.ADMITTED, Admission.UNCHECKED)


class Settlement(StrEnum):
    """How a settle or release ended."""

    DONE = "done"
    ALREADY = "already"  # settled or released before (or, for a release, never held)
    FAILED = "failed"  # Redis away: usage not recorded (the hold lapses by itself)
    NOTHING = "nothing"  # no budget applies


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """What `settle` or `release` answered."""

    settlement: Settlement
    soft_crossed: tuple[BudgetMark, ...] = ()


Clock = Callable[[], float]


class BudgetStore:
    """Reserve, settle, release and read token budgets (see the module docstring). Built once
    per data plane on its hot-path Redis client; `clock` gives epoch seconds."""

    def __init__(
        self,
        redis: ScriptClient,
        *,
        clock: Clock = time.time,
        lease_s: float = 900.0,
        soft_fraction: float = 0.8,
        timeout_s: float = 0.5,
    ) -> None:
        self._redis = redis
        self._clock = clock
        # How long a hold counts without a settle or release (a crashed data plane's holds).
        self._lease_ms = round(lease_s * 1000)
        # For an owner whose policy gives none; 0 or less: no soft threshold reported.
        self._soft_fraction = soft_fraction
        # A deadline of our own: a Redis that stopped answering must not hold requests.
        self._timeout_s = timeout_s

    def budgets(
        self,
        tenant_id: str,
        tenant_limits: BudgetLimits | None,
        key_id: str | None = None,
        key_limits: BudgetLimits | None = None,
        *,
        tenant_soft_fraction: float | None = None,
        key_soft_fraction: float | None = None,
    ) -> tuple[Budget, ...]:
        """The budgets a call counts against now: each (owner, period) with any limit. The
        soft fractions are the owners' (None: the store's)."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        owners: list[tuple[Scope, str | None, BudgetLimits, float | None]] = []
        if tenant_limits is not None:
            owners.append((Scope.TENANT, None, tenant_limits, tenant_soft_fraction))
        if key_id is not None and key_limits is not None:
            owners.append((Scope.KEY, key_id, key_limits, key_soft_fraction))
        budgets = []
        for scope, owner_key, limits, soft_fraction in owners:
            for period in (Period.DAY, Period.MONTH):
                token_limit, usd_limit = limits.for_period(period)
                if token_limit is None and usd_limit is None:
                    continue
                end = period_end(period, now)
                budgets.append(
                    Budget(
                        scope=scope,
                        period=period,
                        key=budget_key(tenant_id, owner_key, period, now),
                        token_limit=token_limit,
                        usd_limit=usd_limit,
                        resets_at=end,
                        expires_at_ms=round((end.timestamp() + PERIOD_GRACE_S) * 1000),
                        soft_fraction=self._soft_fraction
                        if soft_fraction is None
                        else soft_fraction,
                    )
                )
        return tuple(budgets)

    async def reserve(
        self,
        reservation_id: str,
        tenant_id: str,
        cost: Cost,
        *,
        tenant_limits: BudgetLimits | None,
        key_id: str | None = None,
        key_limits: BudgetLimits | None = None,
        fail_open: bool = False,
        tenant_soft_fraction: float | None = None,
        key_soft_fraction: float | None = None,
    ) -> Reservation:
        """Holds `cost` (the call's worst case) against every budget that applies, or none.
        `reservation_id` is the request id: a re-run replays the first answer. The soft
        fractions are the owners' (None: the store's)."""
        budgets = self.budgets(
            tenant_id,
            tenant_limits,
            key_id,
            key_limits,
            tenant_soft_fraction=tenant_soft_fraction,
            key_soft_fraction=key_soft_fraction,
        )
        if not budgets:
            return Reservation(reservation_id, tenant_id, Admission.ADMITTED, cost, budgets)
        keys, args = self.reserve_call(reservation_id, tenant_id, cost, budgets)
        try:
            # Refused for want of an answer, the call must not keep a hold taken by a reply
            # that comes too late; let through unchecked, that hold is what its settle settles.
            late = None if fail_open else partial(self._release_late, reservation_id, tenant_id)
            reply = await self._run(RESERVE, keys, args, late)
        except (OSError, RedisReplyError, TimeoutError) as error:
            admission = Admission.UNCHECKED if fail_open else Admission.UNAVAILABLE
            log.warning("token budgets unavailable (%s): %r", admission, error)
            return Reservation(reservation_id, tenant_id, admission, cost, budgets)
        return reservation_from_reply(
            reservation_id, tenant_id, cost, budgets, reply, self._clock()
        )

    def reserve_call(
        self, reservation_id: str, tenant_id: str, cost: Cost, budgets: Sequence[Budget]
    ) -> tuple[list[Arg], list[Arg]]:
        """RESERVE's keys and arguments, for a caller that sends it itself (`defer_script`) and
        reads the reply with `reservation_from_reply`."""
        now_ms = round(self._clock() * 1000)
        lapse_ms = now_ms + self._lease_ms
        keys: list[Arg] = [holds_key(tenant_id), record_key(tenant_id, reservation_id)]
        args: list[Arg] = [
            now_ms,
            budget_prefix(tenant_id) + "hold:",
            reservation_id,
            lapse_ms,
            KEEP_S * 1000,
            cost.tokens,
            cost.usd_micros,
            SWEEP_LIMIT,
        ]
        for budget in budgets:
            keys.append(budget.key)
            args += _limit_args(budget)
        return keys, args

    async def settle(self, reservation: Reservation, actual: Cost) -> SettleOutcome:
        """Gives the hold back and charges `actual`; a second settle changes nothing. Charged
        also when the hold lapsed, or when the reserve was unchecked (failing open)."""
        if not reservation.budgets:
            return SettleOutcome(Settlement.NOTHING)
        keys: list[Arg] = [
            holds_key(reservation.tenant_id),
            record_key(reservation.tenant_id, reservation.reservation_id),
        ]
        args: list[Arg] = [
            KEEP_S * 1000,
            reservation.reservation_id,
            actual.tokens,
            actual.usd_micros,
        ]
        for budget in reservation.budgets:
            keys.append(budget.key)
            args += _limit_args(budget)
        try:
            reply = await self._run(SETTLE, keys, args)
        except (OSError, RedisReplyError, TimeoutError):
            return SettleOutcome(Settlement.FAILED)
        if int(reply[0]) == 2:
            return SettleOutcome(Settlement.ALREADY)
        return SettleOutcome(Settlement.DONE, _marks(reply[1:], reservation.budgets))

    async def release(self, reservation: Reservation) -> SettleOutcome:
        """Gives the hold back, charging nothing (the call never reached the provider)."""
        if not reservation.budgets:
            return SettleOutcome(Settlement.NOTHING)
        keys: list[Arg] = [
            holds_key(reservation.tenant_id),
            record_key(reservation.tenant_id, reservation.reservation_id),
        ]
        try:
            reply = await self._run(RELEASE, keys, [KEEP_S * 1000, reservation.reservation_id])
        except (OSError, RedisReplyError, TimeoutError):
            return SettleOutcome(Settlement.FAILED)
        return SettleOutcome(Settlement.DONE if int(reply[0]) == 1 else Settlement.ALREADY)

    async def read_spend(self, tenant_id: str, key_id: str | None = None) -> tuple[Spend, ...]:
        """The current day's and month's figures of the tenant, or of one of its keys (zeros
        where nothing was spent). Raises when Redis cannot answer."""
        now = datetime.fromtimestamp(self._clock(), UTC)
        scope = Scope.TENANT if key_id is None else Scope.KEY
        periods = (Period.DAY, Period.MONTH)
        keys: list[Arg] = [budget_key(tenant_id, key_id, period, now) for period in periods]
        reply = await self._run(READ, keys, [])
        return tuple(
            Spend(scope, period, period_label(period, now), *(int(v) for v in values))
            for period, values in zip(periods, reply, strict=True)
        )

    async def _run(
        self,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        late: Callable[[asyncio.Future[Any]], None] | None = None,
    ) -> Any:
        """The script's reply within `timeout_s`; past it, TimeoutError, and `late` gets the
        reply if it comes after all (a script sent is not taken back by giving up on it)."""
        reply = self._redis.submit_script(script, keys, args)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await asyncio.shield(reply)
        except TimeoutError:
            if late is not None:
                reply.add_done_callback(late)
            raise

    def _release_late(
        self, reservation_id: str, tenant_id: str, reply: asyncio.Future[Any]
    ) -> None:
        if reply.cancelled() or reply.exception() is not None or int(reply.result()[0]) != 1:
            return
        keys: list[Arg] = [holds_key(tenant_id), record_key(tenant_id, reservation_id)]
        released = self._redis.submit_script(RELEASE, keys, [KEEP_S * 1000, reservation_id])
        released.add_done_callback(_log_release_failure)


def reservation_from_reply(
    reservation_id: str,
    tenant_id: str,
    cost: Cost,
    budgets: tuple[Budget, ...],
    reply: Any,
    now_s: float,
) -> Reservation:
    """RESERVE's reply read as a Reservation (`now_s`: the clock when it was sent)."""
    status = int(reply[0])
    if status == 0:
        budget = budgets[int(reply[1]) - 1]
        unit = Unit(_text(reply[2]))
        mark = BudgetMark(budget.scope, budget.period, unit, budget.resets_at)
        return Reservation(
            reservation_id,
            tenant_id,
            Admission.REFUSED,
            cost,
            budgets,
            exhausted=mark,
            retry_after_s=max(1, math.ceil(budget.resets_at.timestamp() - now_s)),
        )
    if status == 2:
        return Reservation(
            reservation_id, tenant_id, Admission.ADMITTED, cost, budgets, replayed=True
        )
    return Reservation(
        reservation_id,
        tenant_id,
        Admission.ADMITTED,
        cost,
        budgets,
        soft_crossed=_marks(reply[1:], budgets),
    )


def _log_release_failure(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled() and (error := reply.exception()) is not None:
        log.warning("could not release a budget hold that came too late: %r", error)


def _limit_args(budget: Budget) -> list[Arg]:
    return [
        -1 if budget.token_limit is None else budget.token_limit,
        -1 if budget.usd_limit is None else budget.usd_limit,
        budget.expires_at_ms,
        repr(budget.soft_fraction),
    ]


def _marks(items: Sequence[Any], budgets: Sequence[Budget]) -> tuple[BudgetMark, ...]:
    marks = []
    for item in items:
        index, unit = _text(item).split(":")
        budget = budgets[int(index) - 1]
        marks.append(BudgetMark(budget.scope, budget.period, Unit(unit), budget.resets_at))
    return tuple(marks)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
