"""The stack's Redis end to end: the rate limit's buckets and the control state are where the
stack's processes were told Redis is (its own redis-server, or a 3-node Redis Cluster), reached
with the password from the stack's password file."""

from __future__ import annotations

from typing import Any

import openai

from control.store import SNAPSHOT_KEY
from extproc.stages.rate_limit import bucket_key
from gatez.redis_client import RedisTarget, connect
from gatez.settings import Settings
from gatez.stack import Stack
from gatez.v1 import policy_pb2
from tests.e2e.conftest import Admin, provision

MESSAGES: list[Any] = [{"role": "user", "content": "where is my bucket"}]


async def test_buckets_and_policy_are_in_the_stacks_redis(
    stack: Stack, gateway_url: str, admin: Admin
) -> None:
    access = provision(admin, rate_limit=policy_pb2.RateLimit(requests_per_minute=6, burst=3))
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    await client.close()

    redis = await connect(RedisTarget.from_settings(Settings.from_env(stack.config.environment())))
    try:
        # On a cluster, redis-py looks each key up on the node serving its slot: found there
        # only if the data plane and the control service wrote it there.
        assert await redis.exists(bucket_key(access.tenant_id)) == 1
        assert await redis.exists(SNAPSHOT_KEY) == 1
    finally:
        await redis.aclose()
