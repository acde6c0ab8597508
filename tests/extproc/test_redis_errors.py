"""The hot-path Redis client counts the commands that failed (for `gatez_redis_errors_total`):
error replies and unreachable servers, never the NOSCRIPT it recovers from itself."""

from __future__ import annotations

import uuid

import pytest

from extproc.redis_pipe import PipelinedRedis, RedisReplyError, Script
from gatez.processes import free_port
from tests.support.redis import RedisServer


async def test_error_replies_count_and_a_recovered_noscript_does_not(
    redis_server: RedisServer,
) -> None:
    client = PipelinedRedis.from_url(redis_server.url)
    try:
        # A script Redis has never seen: NOSCRIPT, then EVAL — a success, both ways.
        fresh = Script(f"return '{uuid.uuid4().hex}'")
        await client.run_script(fresh, [], [])
        await client.submit_script(Script(f"return '{uuid.uuid4().hex}'"), [], [])
        assert client.errors == 0

        with pytest.raises(RedisReplyError):
            await client.execute("NO-SUCH-COMMAND")
        with pytest.raises(RedisReplyError):
            await client.submit_script(Script("return redis.error_reply('boom')"), [], [])
        assert client.errors == 2
    finally:
        await client.close()


async def test_an_unreachable_redis_counts() -> None:
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    try:
        with pytest.raises(OSError):
            await client.execute("PING")
        with pytest.raises(OSError):
            await client.submit_script(Script("return 1"), [], [])
        assert client.errors == 2
    finally:
        await client.close()
