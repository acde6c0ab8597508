"""Fixtures of the agent stage tests: the data plane's Redis client on the test Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from extproc.redis_pipe import PipelinedRedis
from gatez.processes import free_port
from tests.support.redis import RedisServer


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    """The data plane's client on the test Redis (flushed by `redis_client`)."""
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


@pytest.fixture
async def dead_redis() -> AsyncIterator[PipelinedRedis]:
    """A client for a Redis that is not there (nothing listens on its port)."""
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    yield client
    await client.close()
