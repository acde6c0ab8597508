"""What a token budget is, shared by the data plane (which enforces budgets, `extproc.budgets`)
and the control service (which sets them, reads their spend and resets it): owners, periods,
units, limits, the Redis key of each budget, and the Lua that reads and resets spend.

Key layout (the whole of it, and the scripts that keep it, are described in `extproc.budgets`):
`{t}:budget:tenant:day:YYYY-MM-DD`, `{t}:budget:tenant:month:YYYY-MM`, and the same with
`key:<key_id>` for `tenant`: hashes of `tokens_spent`, `tokens_held`, `usd_spent`, `usd_held`
(USD in integer micro-dollars) and the soft-threshold flags `tokens_soft`, `usd_soft`.
`{t}` is the tenant's Redis Cluster hash tag.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Final


class Scope(StrEnum):
    """Whose budget: the tenant's, or one API key's."""

    TENANT = "tenant"
    KEY = "key"


class Period(StrEnum):
    """A calendar period in UTC."""

    DAY = "day"
    MONTH = "month"


class Unit(StrEnum):
    """What a budget counts: tokens, or USD (kept in integer micro-dollars)."""

    TOKENS = "tokens"
    USD = "usd"


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """One owner's limits (a tenant's or a key's); None: no limit of that kind."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    usd_micros_per_day: int | None = None
    usd_micros_per_month: int | None = None

    def for_period(self, period: Period) -> tuple[int | None, int | None]:
        """(token limit, USD limit) over `period`."""
        if period is Period.DAY:
            return self.tokens_per_day, self.usd_micros_per_day
        return self.tokens_per_month, self.usd_micros_per_month


@dataclass(frozen=True, slots=True)
class Spend:
    """One budget's figures now (USD in micro-dollars)."""

    scope: Scope
    period: Period
    period_label: str
    tokens_spent: int
    tokens_held: int
    usd_micros_spent: int
    usd_micros_held: int


def budget_prefix(tenant_id: str) -> str:
    """Every budget key of a tenant starts so; `{tenant_id}` is its Redis Cluster hash tag."""
    if "{" in tenant_id or "}" in tenant_id:
        raise ValueError("a tenant id with braces cannot be a Redis Cluster hash tag")
    return f"{{{tenant_id}}}:budget:"


def holds_key(tenant_id: str) -> str:
    """The tenant's sorted set of held reservations, scored by lapse time (ms)."""
    return budget_prefix(tenant_id) + "holds"


def record_key(tenant_id: str, reservation_id: str) -> str:
    """One reservation's record."""
    return budget_prefix(tenant_id) + "hold:" + reservation_id


def period_label(period: Period, now: datetime) -> str:
    """`2026-12-02` for a day, `2026-12` for a month (UTC)."""
    return now.strftime("%Y-%m-%d" if period is Period.DAY else "%Y-%m")


def period_end(period: Period, now: datetime) -> datetime:
    """When the period holding `now` ends (the next one starts), UTC."""
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period is Period.DAY:
        return start + timedelta(days=1)
    days = calendar.monthrange(now.year, now.month)[1]
    return start.replace(day=1) + timedelta(days=days)


def budget_key(tenant_id: str, key_id: str | None, period: Period, now: datetime) -> str:
    """The hash of the tenant's (key_id None) or a key's budget in the period holding `now`."""
    if key_id is not None and "\n" in key_id:
        raise ValueError("a key id with a newline cannot be listed in a hold's record")
    owner = "tenant" if key_id is None else f"key:{key_id}"
    return f"{budget_prefix(tenant_id)}{owner}:{period}:{period_label(period, now)}"


# KEYS: budgets. Replies: per budget {tokens_spent, tokens_held, usd_spent, usd_held}.
READ_SOURCE: Final = """
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], 'tokens_spent', 'tokens_held', 'usd_spent', 'usd_held')
  out[i] = {tonumber(v[1] or '0'), tonumber(v[2] or '0'), tonumber(v[3] or '0'),
    tonumber(v[4] or '0')}
end
return out
"""

# KEYS: budgets. Forgets what each has spent: the spent figures go to 0 and the soft flags go
# (a threshold crossed again is reported again). What calls in flight hold stays, and so does
# each hash's expiry: their settle gives the hold back and charges their usage as usual. A budget
# with no hash is left alone (writing one would make a key that never expires). One script, so
# no settle lands halfway. Reply: how many budgets were reset.
RESET_SPENT_SOURCE: Final = """
local reset = 0
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    redis.call('HSET', KEYS[i], 'tokens_spent', 0, 'usd_spent', 0)
    redis.call('HDEL', KEYS[i], 'tokens_soft', 'usd_soft')
    reset = reset + 1
  end
end
return reset
"""
