"""PolicyStore replicas sharing one Redis, on a single redis-server and on a 3-node Redis
Cluster alike: no change lost to a race, every replica sees every version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from control.store import SNAPSHOT_KEY, PolicyStore
from gatez.redis_client import RedisClient
from gatez.v1 import policy_pb2


@pytest.fixture(params=["redis", "cluster"])
def redis(request: pytest.FixtureRequest) -> RedisClient:
    """A flushed Redis: the session's redis-server, or the session's Redis Cluster."""
    fixture = "redis_client" if request.param == "redis" else "redis_cluster_client"
    client: RedisClient = request.getfixturevalue(fixture)
    return client


@pytest.fixture
async def replicas(redis: RedisClient) -> AsyncIterator[tuple[PolicyStore, PolicyStore]]:
    """Two control-service replicas on the same Redis, catching up every 0.2 s."""
    stores = (PolicyStore(redis, catch_up_s=0.2), PolicyStore(redis, catch_up_s=0.2))
    for store in stores:
        await store.start()
    yield stores
    for store in stores:
        await store.stop()


def add_tenant(tenant_id: str) -> Callable[[policy_pb2.PolicySnapshot], None]:
    def change(draft: policy_pb2.PolicySnapshot) -> None:
        draft.tenants.add(id=tenant_id)

    return change


async def newer_than(store: PolicyStore, version: int) -> policy_pb2.PolicySnapshot:
    """The store's snapshot once its version is above `version`."""
    while store.current.version <= version:
        await store.wait_change(store.current)
    return store.current


async def test_concurrent_changes_from_two_replicas_are_all_kept(
    replicas: tuple[PolicyStore, PolicyStore],
) -> None:
    results = await asyncio.gather(
        *(
            store.update(add_tenant(f"{n}-{i}"))
            for n, store in enumerate(replicas)
            for i in range(6)
        )
    )

    assert sorted(version for _, version in results) == list(range(1, 13))
    for store in replicas:
        newest = await asyncio.wait_for(newer_than(store, 11), timeout=5)
        assert {t.id for t in newest.tenants} == {f"{n}-{i}" for n in range(2) for i in range(6)}


async def test_a_change_reaches_the_other_replicas_watchers(
    replicas: tuple[PolicyStore, PolicyStore],
) -> None:
    first, second = replicas
    watch = second.watch()
    assert (await anext(watch)).version == 0

    await first.update(add_tenant("acme"))

    seen = await asyncio.wait_for(anext(watch), timeout=2)
    assert seen.version == 1 and [t.id for t in seen.tenants] == ["acme"]


async def test_a_replica_catches_up_without_an_announcement(
    redis: RedisClient, replicas: tuple[PolicyStore, PolicyStore]
) -> None:
    # As if the writer died between its write and its announcement.
    snapshot = policy_pb2.PolicySnapshot(version=5, tenants=[policy_pb2.Tenant(id="quiet")])
    await redis.set(SNAPSHOT_KEY, snapshot.SerializeToString())

    for store in replicas:
        newest = await asyncio.wait_for(newer_than(store, 0), timeout=2)
        assert newest.version == 5


async def test_the_snapshot_lives_on_one_cluster_node(
    redis_cluster_client: aioredis.RedisCluster,
) -> None:
    store = PolicyStore(redis_cluster_client)
    await store.start()
    await store.update(add_tenant("acme"))
    await store.stop()

    # One key, so the WATCH/MULTI transaction runs on the one node serving its slot.
    node = redis_cluster_client.get_node_from_key(SNAPSHOT_KEY)
    assert await redis_cluster_client.exists(SNAPSHOT_KEY) == 1
    assert await redis_cluster_client.dbsize(target_nodes=node) == 1
