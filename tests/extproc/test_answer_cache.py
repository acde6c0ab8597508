"""The exact tier in a real redis-server: one key per answer, its TTL, tenants apart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from extproc.answer_cache import AnswerStore
from extproc.redis_pipe import PipelinedRedis
from gatez.answer_cache import CachedAnswer, answer_key
from gatez.translate.model import ChatResponse, StopReason, Text, Usage
from tests.support.redis import RedisServer

DIGEST = "5e" * 32
ANSWER = CachedAnswer(
    ChatResponse("id-1", "gpt-4o-mini", (Text("Paris."),), StopReason.END_TURN, Usage(12, 2))
)


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


async def test_an_answer_is_one_key_with_the_ttl_and_reads_back(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    store = AnswerStore(pipelined)
    assert await store.get("acme", DIGEST) is None

    await store.put("acme", DIGEST, ANSWER, ttl_s=90)

    assert await redis_client.keys("*") == [answer_key("acme", DIGEST).encode()]
    assert 89_000 < await redis_client.pttl(answer_key("acme", DIGEST)) <= 90_000
    raw = await store.get("acme", DIGEST)
    assert CachedAnswer.from_bytes(raw) == ANSWER
    assert await store.get("globex", DIGEST) is None


async def test_an_answer_is_gone_when_it_expires(pipelined: PipelinedRedis) -> None:
    store = AnswerStore(pipelined)
    await store.put("acme", DIGEST, ANSWER.to_bytes(), ttl_s=0.001)
    await asyncio.sleep(0.01)
    assert await store.get("acme", DIGEST) is None
