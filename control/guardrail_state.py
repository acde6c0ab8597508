"""What the data planes' guardrails keep in Redis, as the control service reads and clears it:
what token budgets have spent (`extproc.budgets` writes it; the key names and scripts are
shared in `gatez.budgets`) and the answer cache's entries.

Every key here carries its tenant as a Redis Cluster hash tag, so all of a tenant's keys sit in
one slot, on one node: a script touches one slot, and a tenant's keys are found by a SCAN of the
node that owns the slot (on one Redis, of that Redis). SCAN is not atomic: a key written while
the scan runs may be missed, and a slot moved to another node mid-scan (a resharding) leaves
the keys already moved unseen; a second purge picks them up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import redis.asyncio as aioredis

from gatez.budgets import (
    READ_SOURCE,
    RESET_SPENT_SOURCE,
    Period,
    Scope,
    Spend,
    budget_key,
    budget_prefix,
    period_label,
)
from gatez.redis_client import RedisClient
from gatez.tool_pins import LuaScript, RedisPyScripts

READ: Final = LuaScript(READ_SOURCE)
RESET_SPENT: Final = LuaScript(RESET_SPENT_SOURCE)
# Keys asked for per SCAN call (a hint to Redis), and so at most deleted per UNLINK.
SCAN_COUNT: Final = 500
_GLOB_SPECIAL: Final = re.compile(r"([*?\[\]\\])")


def answer_prefix(tenant_id: str) -> str:
    """Every cached answer of a tenant is a key starting so (the contract with the cache stage:
    `{<tenant_id>}:cache:answer:<digest>`)."""
    if "{" in tenant_id or "}" in tenant_id:
        raise ValueError("a tenant id with braces cannot be a Redis Cluster hash tag")
    return f"{{{tenant_id}}}:cache:answer:"


@dataclass(frozen=True, slots=True)
class Owner:
    """A budget's owner: the tenant (key_id None) or one of its API keys."""

    tenant_id: str
    key_id: str | None = None

    @property
    def scope(self) -> Scope:
        return Scope.TENANT if self.key_id is None else Scope.KEY


class GuardrailState:
    """Budget spend and cached answers in Redis, over the control service's redis-py client
    (one Redis or a cluster, replying with bytes)."""

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._scripts = RedisPyScripts(redis)

    async def read_spend(
        self, owners: Sequence[Owner], now: datetime
    ) -> dict[Owner, tuple[Spend, ...]]:
        """Each owner's figures for the day and the month holding `now` (zeros where nothing
        was spent), in one script per tenant. The owners of one call share a tenant."""
        if not owners:
            return {}
        _one_tenant(owners)
        periods = (Period.DAY, Period.MONTH)
        keys = [budget_key(o.tenant_id, o.key_id, p, now) for o in owners for p in periods]
        reply = await self._scripts.run_script(READ, keys, [])
        figures = iter(reply)
        return {
            owner: tuple(
                Spend(owner.scope, period, period_label(period, now), *map(int, next(figures)))
                for period in periods
            )
            for owner in owners
        }

    async def reset_spend(self, owner: Owner, periods: Sequence[Period], now: datetime) -> int:
        """Forgets what `owner` spent in the `periods` holding `now`; what calls in flight hold
        stays held (see `gatez.budgets.RESET_SPENT_SOURCE`). Returns how many budgets had
        figures to reset."""
        keys = [budget_key(owner.tenant_id, owner.key_id, p, now) for p in periods]
        return int(await self._scripts.run_script(RESET_SPENT, keys, []))

    async def purge_answers(self, tenant_id: str) -> int:
        """Deletes every cached answer of the tenant; returns how many there were."""
        return await self._delete_matching(answer_prefix(tenant_id))

    async def forget_tenant(self, tenant_id: str) -> int:
        """Deletes the tenant's cached answers and budget figures, so a tenant made again under
        the id starts with none. Returns how many keys went."""
        answers = await self._delete_matching(answer_prefix(tenant_id))
        return answers + await self._delete_matching(budget_prefix(tenant_id))

    async def _delete_matching(self, prefix: str) -> int:
        """Deletes the keys starting with `prefix`, which starts with its hash tag: SCAN of the
        one node that holds them (redis-py's cluster SCAN otherwise walks every primary), and
        UNLINK page by page (freed in the background: an answer can be large)."""
        target: dict[str, Any] = {}
        if isinstance(self._redis, aioredis.RedisCluster):
            target["target_nodes"] = self._redis.get_node_from_key(prefix)
        pattern = _GLOB_SPECIAL.sub(r"\\\1", prefix) + "*"
        deleted = 0
        page: list[bytes] = []
        async for key in self._redis.scan_iter(match=pattern, count=SCAN_COUNT, **target):
            page.append(key)
            if len(page) >= SCAN_COUNT:
                deleted += await self._redis.unlink(*page)
                page = []
        if page:
            deleted += await self._redis.unlink(*page)
        return deleted


def _one_tenant(owners: Sequence[Owner]) -> None:
    # One script touches one hash slot: every key of a call must share the tenant's hash tag.
    if len({o.tenant_id for o in owners}) > 1:
        raise ValueError("the owners of one read must share a tenant")
