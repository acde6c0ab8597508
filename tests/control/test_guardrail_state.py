"""GuardrailState on one Redis and on a Redis Cluster: spend as the data plane's BudgetStore wrote
it, resets, and purges that find a tenant's keys on the node owning its slot only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from control.guardrail_state import SCAN_COUNT, GuardrailState, Owner, answer_prefix
from extproc.budgets import BudgetStore, Cost
from extproc.redis_pipe import ScriptClient, hot_path_client
from gatez.budgets import BudgetLimits, Period, Scope, Spend, budget_key
from gatez.redis_client import RedisClient, RedisTarget
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
LIMITS = BudgetLimits(tokens_per_day=10**6, tokens_per_month=10**6)


@dataclass(frozen=True, slots=True)
class Stores:
    """The control service's view and a data plane's store, on one Redis or cluster."""

    redis: RedisClient
    state: GuardrailState
    budgets: BudgetStore


@pytest.fixture(params=["redis", "cluster"])
def redis_at(request: pytest.FixtureRequest) -> tuple[RedisClient, str]:
    """A flushed Redis (the session's redis-server, or its Redis Cluster) and its URL."""
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        client: RedisClient = request.getfixturevalue("redis_client")
        return client, server.url
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    return request.getfixturevalue("redis_cluster_client"), cluster.url


@pytest.fixture
async def stores(redis_at: tuple[RedisClient, str]) -> AsyncIterator[Stores]:
    redis, url = redis_at
    hot_path: ScriptClient = hot_path_client(RedisTarget.parse(url))
    try:
        yield Stores(redis, GuardrailState(redis), BudgetStore(hot_path, clock=NOW.timestamp))
    finally:
        await hot_path.close()


async def spend_on(stores: Stores, tenant_id: str, tokens: int, key_id: str = "k1") -> None:
    reservation = await stores.budgets.reserve(
        f"r-{tenant_id}-{tokens}",
        tenant_id,
        Cost(tokens, tokens * 10),
        tenant_limits=LIMITS,
        key_id=key_id,
        key_limits=LIMITS,
    )
    assert reservation.admitted
    await stores.budgets.settle(reservation, Cost(tokens, tokens * 10))


async def test_reads_what_the_data_plane_spent(stores: Stores) -> None:
    await spend_on(stores, "acme", 7)
    held = await stores.budgets.reserve(
        "held", "acme", Cost(3, 30), tenant_limits=LIMITS, key_id="k1", key_limits=LIMITS
    )
    assert held.admitted

    read = await stores.state.read_spend([Owner("acme"), Owner("acme", "k1")], NOW)

    assert read == {
        Owner("acme"): (
            Spend(Scope.TENANT, Period.DAY, "2026-12-02", 7, 3, 70, 30),
            Spend(Scope.TENANT, Period.MONTH, "2026-12", 7, 3, 70, 30),
        ),
        Owner("acme", "k1"): (
            Spend(Scope.KEY, Period.DAY, "2026-12-02", 7, 3, 70, 30),
            Spend(Scope.KEY, Period.MONTH, "2026-12", 7, 3, 70, 30),
        ),
    }
    # What the data plane's own reader says, figure for figure.
    assert read[Owner("acme")] == await stores.budgets.read_spend("acme")
    assert await stores.state.read_spend([], NOW) == {}
    with pytest.raises(ValueError, match="share a tenant"):
        await stores.state.read_spend([Owner("acme"), Owner("globex")], NOW)


async def test_a_reset_zeroes_spent_keeps_held_and_makes_no_key(stores: Stores) -> None:
    await spend_on(stores, "acme", 7)
    held = await stores.budgets.reserve("held", "acme", Cost(3, 30), tenant_limits=LIMITS)
    assert held.admitted

    assert await stores.state.reset_spend(Owner("acme"), [Period.DAY, Period.MONTH], NOW) == 2
    # The key's day and month exist; a reset of an owner never charged makes nothing.
    assert await stores.state.reset_spend(Owner("acme", "k9"), [Period.DAY], NOW) == 0
    assert not await stores.redis.exists(budget_key("acme", "k9", Period.DAY, NOW))

    tenant = (await stores.state.read_spend([Owner("acme")], NOW))[Owner("acme")]
    assert [(s.tokens_spent, s.tokens_held, s.usd_micros_spent) for s in tenant] == [(0, 3, 0)] * 2
    await stores.budgets.settle(held, Cost(2, 20))
    tenant = (await stores.state.read_spend([Owner("acme")], NOW))[Owner("acme")]
    assert [(s.tokens_spent, s.tokens_held, s.usd_micros_spent) for s in tenant] == [(2, 0, 20)] * 2


async def test_purge_and_forget_touch_one_tenant_only(stores: Stores) -> None:
    tenants = ("acme", "globex", "initech", "umbrella")
    for tenant_id in tenants:
        await spend_on(stores, tenant_id, 5)
        # One slot holds all of a tenant's keys: one MSET per tenant works on a cluster too.
        await stores.redis.mset(
            {f"{answer_prefix(tenant_id)}{i}": b"answer" for i in range(SCAN_COUNT + 7)}
        )
    if isinstance(stores.redis, aioredis.RedisCluster):
        # The tenants are spread over nodes: a purge must scan the right one.
        owners = [stores.redis.get_node_from_key(answer_prefix(t)) for t in tenants]
        assert len({node.name for node in owners if node is not None}) > 1

    assert await stores.state.purge_answers("acme") == SCAN_COUNT + 7
    assert await stores.state.purge_answers("acme") == 0
    assert await stores.state.purge_answers("nobody") == 0
    # Its budget figures stay; other tenants' answers too.
    assert (await stores.budgets.read_spend("acme"))[0].tokens_spent == 5
    for tenant_id in tenants[1:]:
        assert len(await keys_of(stores.redis, answer_prefix(tenant_id))) == SCAN_COUNT + 7

    budget_keys = await keys_of(stores.redis, "{globex}:budget:")
    assert len(budget_keys) == 5  # tenant and key, day and month; the settled call's record

    forgotten = await stores.state.forget_tenant("globex")

    assert forgotten == SCAN_COUNT + 7 + 5
    assert await keys_of(stores.redis, "{globex}") == []
    assert (await stores.budgets.read_spend("globex"))[0].tokens_spent == 0
    assert (await stores.budgets.read_spend("initech"))[0].tokens_spent == 5


async def keys_of(redis: RedisClient, prefix: str) -> list[bytes]:
    if isinstance(redis, aioredis.RedisCluster):
        node = redis.get_node_from_key(prefix)
        return [k async for k in redis.scan_iter(match=prefix + "*", target_nodes=node)]
    return [k async for k in redis.scan_iter(match=prefix + "*")]
