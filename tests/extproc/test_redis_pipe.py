"""The hot-path Redis client against a real redis-server: pipelining, errors, scripts,
cancellation, lost connections, credentials and database selection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from extproc.redis_pipe import (
    PipelinedRedis,
    RedisAddress,
    RedisReplyError,
    Script,
    encode_command,
)
from gatez.processes import free_port
from tests.support.redis import RedisServer


@pytest.fixture
async def client(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    pipelined = PipelinedRedis.from_url(redis_server.url)
    yield pipelined
    await pipelined.close()


async def test_commands_round_trip_with_their_reply_types(client: PipelinedRedis) -> None:
    assert await client.execute("SET", "k", "v") == b"OK"
    assert await client.execute("GET", "k") == b"v"
    assert await client.execute("GET", "missing") is None
    assert await client.execute("INCRBY", "n", 41) == 41
    assert await client.execute("RPUSH", "l", b"\x00\xff", "two") == 2
    assert await client.execute("LRANGE", "l", 0, -1) == [b"\x00\xff", b"two"]


async def test_concurrent_commands_are_pipelined_and_answered_in_order(
    client: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    replies = await asyncio.gather(*(client.execute("INCR", "counter") for _ in range(500)))

    # One connection, commands in the order they were sent: each caller got its own count.
    assert replies == list(range(1, 501))
    clients = await redis_client.client_list()
    assert len(clients) == 2  # this test's redis-py client and the pipelined one


async def test_error_reply_raises_and_leaves_the_connection_usable(
    client: PipelinedRedis,
) -> None:
    await client.execute("SET", "k", "not a number")
    with pytest.raises(RedisReplyError, match="not an integer"):
        await client.execute("INCR", "k")
    with pytest.raises(RedisReplyError, match="unknown command"):
        await client.execute("NO-SUCH-COMMAND")
    assert await client.execute("GET", "k") == b"not a number"


async def test_script_runs_by_sha_and_is_reloaded_after_a_flush(
    client: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    script = Script("return {KEYS[1], ARGV[1] + 1}")
    assert await client.run_script(script, ["key"], [1]) == [b"key", 2]
    assert await redis_client.script_exists(script.sha) == [True]

    await redis_client.script_flush()  # as after a Redis restart or failover

    assert await client.run_script(script, ["key"], [2]) == [b"key", 3]
    assert await redis_client.script_exists(script.sha) == [True]


async def test_script_errors_other_than_noscript_are_raised(client: PipelinedRedis) -> None:
    with pytest.raises(RedisReplyError, match="boom"):
        await client.run_script(Script("return redis.error_reply('boom')"), [], [])


async def test_a_cancelled_command_does_not_shift_later_replies(client: PipelinedRedis) -> None:
    await client.execute("SET", "k", "after")
    blocked = asyncio.ensure_future(client.execute("BLPOP", "empty-list", "0.3"))
    await asyncio.sleep(0.05)
    blocked.cancel()

    # The BLPOP's late reply (nil) is read and dropped; GET gets its own reply.
    assert await client.execute("GET", "k") == b"after"


async def test_a_lost_connection_fails_waiters_and_the_next_command_reconnects(
    client: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    await client.execute("CLIENT", "SETNAME", "hot-path")
    blocked = asyncio.ensure_future(client.execute("BLPOP", "empty-list", "5"))
    await asyncio.sleep(0.05)

    assert await redis_client.client_kill_filter(_type=None, skipme=True) >= 1

    with pytest.raises(ConnectionError):
        await blocked
    assert await client.execute("PING") == b"PONG"


async def test_unreachable_redis_raises_oserror() -> None:
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(OSError):
        await client.execute("PING")
    await client.close()


async def test_credentials_and_database_from_the_url(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    await redis_client.acl_setuser(
        "hotpath", enabled=True, passwords=["+s3cret:pass"], keys=["*"], commands=["+@all"]
    )
    try:
        client = PipelinedRedis.from_url(
            f"redis://hotpath:s3cret%3Apass@127.0.0.1:{redis_server.port}/3"
        )
        await client.execute("SET", "where", "db3")
        await client.close()
        assert await redis_client.get("where") is None
        other_db = aioredis.Redis(port=redis_server.port, db=3)
        assert await other_db.get("where") == b"db3"
        await other_db.delete("where")
        await other_db.aclose()

        wrong = PipelinedRedis.from_url(f"redis://hotpath:wrong@127.0.0.1:{redis_server.port}")
        with pytest.raises(RedisReplyError, match="WRONGPASS"):
            await wrong.execute("PING")
        await wrong.close()
    finally:
        await redis_client.acl_deluser("hotpath")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://10.0.0.5:6390/2", RedisAddress(host="10.0.0.5", port=6390, db=2)),
        ("redis://localhost", RedisAddress(host="localhost")),
        ("rediss://:pw@cache.example", RedisAddress(host="cache.example", password="pw", tls=True)),
        ("unix:///run/redis.sock?db=4", RedisAddress(unix_path="/run/redis.sock", db=4)),
    ],
)
def test_urls(url: str, address: RedisAddress) -> None:
    assert RedisAddress.from_url(url) == address


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        RedisAddress.from_url("http://127.0.0.1:6379")


def test_commands_are_encoded_as_resp_arrays_of_bulk_strings() -> None:
    assert encode_command(["SET", b"k\r\n", 7, 1.5]) == (
        b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$1\r\n7\r\n$3\r\n1.5\r\n"
    )


async def test_submitted_scripts_reply_through_a_future_connected_or_not(
    client: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    script = Script("return tonumber(ARGV[1]) * 2")
    # Not connected yet: the first call connects (in a task) and still replies.
    assert await client.submit_script(script, [], [21]) == 42

    await redis_client.script_flush()
    # Connected: sent at once as EVALSHA; NOSCRIPT is answered by an EVAL retry.
    assert await client.submit_script(script, [], [5]) == 10
    assert await redis_client.script_exists(script.sha) == [True]


async def test_a_submitted_script_given_up_on_does_not_shift_later_replies(
    client: PipelinedRedis,
) -> None:
    await client.execute("SET", "k", "v")
    slow = Script("redis.call('BLPOP', 'never', '0.01') return 'slow'")
    reply = client.submit_script(slow, [], [])
    reply.cancel()

    assert await client.execute("GET", "k") == b"v"
