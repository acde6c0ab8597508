"""Fixtures shared by every test: a real redis-server for the session, flushed per test, and a
real 3-node Redis Cluster, started only when a test asks for it. Both require a password."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatez.redis_client import RedisTarget, connect
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(Path(tmp_path_factory.mktemp("redis"))) as server:
        yield server


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    with LocalRedisCluster(Path(tmp_path_factory.mktemp("redis-cluster"))) as cluster:
        yield cluster


@pytest.fixture
async def redis_cluster_client(
    redis_cluster: LocalRedisCluster,
) -> AsyncIterator[aioredis.RedisCluster]:
    """A redis-py cluster client; every primary is flushed first."""
    client = await connect(RedisTarget.parse(redis_cluster.url))
    assert isinstance(client, aioredis.RedisCluster)
    await client.flushdb(target_nodes=aioredis.RedisCluster.PRIMARIES)
    yield client
    await client.aclose()
