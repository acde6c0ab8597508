"""The hot-path Redis clients against a real redis-server (pipelining, errors, scripts,
cancellation, lost connections, credentials and database selection) and a real 3-node Redis
Cluster (routing by hash slot, MOVED and ASK redirections, per-node script cache)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from extproc.redis_pipe import (
    PipelinedRedis,
    PipelinedRedisCluster,
    RedisAddress,
    RedisReplyError,
    Script,
    encode_command,
    hot_path_client,
)
from extproc.stages.rate_limit import GCRA_SCRIPT, bucket_key
from gatez.processes import free_port
from gatez.redis_client import RedisTarget
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster


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
        other_db = aioredis.Redis.from_url(redis_server.url.removesuffix("/0") + "/3")
        assert await other_db.get("where") == b"db3"
        await other_db.delete("where")
        await other_db.aclose()

        wrong = PipelinedRedis.from_url(f"redis://hotpath:wrong@127.0.0.1:{redis_server.port}")
        with pytest.raises(RedisReplyError, match="WRONGPASS"):
            await wrong.execute("PING")
        await wrong.close()
    finally:
        await redis_client.acl_deluser("hotpath")


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_without_the_password_every_command_is_refused(
    redis_server: RedisServer, redis_client: aioredis.Redis, transport: str
) -> None:
    url = (
        f"redis://127.0.0.1:{redis_server.port}"
        if transport == "tcp"
        else f"unix://{redis_server.socket}"
    )
    client = PipelinedRedis.from_url(url)
    script = Script("return redis.call('SET', KEYS[1], 'x')")
    with pytest.raises(RedisReplyError, match="NOAUTH"):
        await client.submit_script(script, ["k"], [])
    await client.close()
    assert await redis_client.exists("k") == 0

    # With it, over the same transport:
    client = PipelinedRedis.from_url(
        redis_server.url if transport == "tcp" else redis_server.unix_url
    )
    assert await client.submit_script(script, ["k"], []) == b"OK"
    await client.close()


def test_the_hot_path_client_takes_the_password_from_the_target(
    redis_server: RedisServer,
) -> None:
    target = RedisTarget.parse(f"unix://{redis_server.socket}?db=2", redis_server.password)
    client = hot_path_client(target)
    assert isinstance(client, PipelinedRedis)
    assert client.address == RedisAddress(
        unix_path=str(redis_server.socket), password=redis_server.password, db=2
    )
    cluster = hot_path_client(RedisTarget.parse("redis+cluster://10.0.0.5:7000", "pw"))
    assert isinstance(cluster, PipelinedRedisCluster)


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


# --- Redis Cluster ---------------------------------------------------------------------------

INCR_SCRIPT = Script("return redis.call('INCR', KEYS[1])")


@pytest.fixture
async def cluster_client(
    redis_cluster: LocalRedisCluster, redis_cluster_client: aioredis.RedisCluster
) -> AsyncIterator[PipelinedRedisCluster]:
    """The data plane's cluster client, on a freshly flushed cluster."""
    client = hot_path_client(RedisTarget.parse(redis_cluster.url))
    assert isinstance(client, PipelinedRedisCluster)
    yield client
    await client.close()


def error_count(cluster: LocalRedisCluster, node: int, prefix: str) -> int:
    """How many error replies starting with `prefix` (MOVED, ASK) a node has sent."""
    with cluster.node(node) as client:
        stats = client.info("errorstats")
    return int(stats.get(f"errorstat_{prefix}", {}).get("count", 0))


async def test_each_call_runs_on_the_node_serving_its_slot(
    redis_cluster: LocalRedisCluster, cluster_client: PipelinedRedisCluster
) -> None:
    keys = [bucket_key(f"tenant-{n}") for n in range(30)]
    replies = await asyncio.gather(
        *(cluster_client.submit_script(INCR_SCRIPT, [key], []) for key in keys * 2)
    )

    assert replies == [1] * 30 + [2] * 30
    owners = {redis_cluster.owner(key_slot(key.encode())) for key in keys}
    assert owners == {0, 1, 2}  # thirty tenants land on every node
    for key in keys:
        with redis_cluster.node(redis_cluster.owner(key_slot(key.encode()))) as node:
            assert node.get(key) == b"2"  # on its owner, not redirected there
    assert sum(error_count(redis_cluster, n, "MOVED") for n in range(3)) == 0


async def test_a_moved_slot_is_followed_once_and_the_map_updated(
    redis_cluster: LocalRedisCluster, cluster_client: PipelinedRedisCluster
) -> None:
    key = bucket_key("acme")
    slot = key_slot(key.encode())
    assert await cluster_client.run_script(INCR_SCRIPT, [key], []) == 1
    source = redis_cluster.owner(slot)
    target = (source + 1) % 3
    moved_before = error_count(redis_cluster, source, "MOVED")

    redis_cluster.move_slot(slot, target)  # the client's map is stale now
    try:
        assert await cluster_client.run_script(INCR_SCRIPT, [key], []) == 2
        for _ in range(5):
            await cluster_client.run_script(INCR_SCRIPT, [key], [])

        assert error_count(redis_cluster, source, "MOVED") == moved_before + 1
        with redis_cluster.node(target) as node:
            assert node.get(key) == b"7"
    finally:
        redis_cluster.move_slot(slot, source)


async def test_an_ask_redirection_is_sent_with_asking_to_the_importing_node(
    redis_cluster: LocalRedisCluster, cluster_client: PipelinedRedisCluster
) -> None:
    key = bucket_key("migrating")
    slot = key_slot(key.encode())
    source = redis_cluster.owner(slot)
    target = (source + 1) % 3
    await cluster_client.run_script(INCR_SCRIPT, [bucket_key("warm-up")], [])  # map read

    redis_cluster.start_migration(slot, target)
    try:
        # The key is not on the migrating node: it answers ASK; the importing node takes the
        # call only after ASKING.
        assert await cluster_client.run_script(INCR_SCRIPT, [key], []) == 1
        assert error_count(redis_cluster, source, "ASK") >= 1
        with redis_cluster.node(target) as node:
            assert node.execute_command("ASKING") and node.get(key) == b"1"
        with redis_cluster.node(source) as node:
            assert node.execute_command("CLUSTER COUNTKEYSINSLOT", slot) == 0
    finally:
        with redis_cluster.node(target) as node:
            node.execute_command("ASKING")
            node.delete(key)
        redis_cluster.cancel_migration(slot)


async def test_scripts_are_loaded_on_each_node_that_lost_them(
    redis_cluster: LocalRedisCluster, cluster_client: PipelinedRedisCluster
) -> None:
    keys = [bucket_key(f"tenant-{n}") for n in range(30)]
    await asyncio.gather(*(cluster_client.run_script(INCR_SCRIPT, [k], []) for k in keys))
    for index in range(3):
        with redis_cluster.node(index) as node:
            node.script_flush()

    replies = await asyncio.gather(*(cluster_client.run_script(INCR_SCRIPT, [k], []) for k in keys))

    assert replies == [2] * 30


async def test_keys_of_one_call_must_share_a_slot(cluster_client: PipelinedRedisCluster) -> None:
    with pytest.raises(ValueError, match="hash slot"):
        cluster_client.submit_script(INCR_SCRIPT, ["rl:{a}:x", "rl:{b}:x"], [])
    assert (
        await cluster_client.run_script(
            Script("return redis.call('MSET', KEYS[1], 1, KEYS[2], 2)"), ["{a}:x", "{a}:y"], []
        )
        == b"OK"
    )


async def test_the_gcra_script_runs_on_the_cluster(cluster_client: PipelinedRedisCluster) -> None:
    # 60/min, burst 2: two taken, the third refused with the wait until the next.
    args = (1_000_000, 2, 1)
    replies = [
        await cluster_client.run_script(GCRA_SCRIPT, [bucket_key("acme")], args) for _ in range(3)
    ]
    assert replies[:2] == [[1, 0], [1, 0]]
    assert replies[2][0] == 0 and 900 < replies[2][1] <= 1000


async def test_an_unreachable_cluster_fails_the_call() -> None:
    client = PipelinedRedisCluster.from_url(f"redis://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectionError, match="slot map"):
        await client.run_script(INCR_SCRIPT, ["k"], [])
    await client.close()


async def test_a_wrong_password_fails_the_call(redis_cluster: LocalRedisCluster) -> None:
    client = PipelinedRedisCluster.from_url(f"redis://:wrong@127.0.0.1:{redis_cluster.ports[0]}")
    with pytest.raises(ConnectionError, match="WRONGPASS"):
        await client.run_script(INCR_SCRIPT, ["k"], [])
    await client.close()


async def test_keys_in_different_slots_are_refused_on_one_server_too(
    client: PipelinedRedis,
) -> None:
    # What would fail on a Redis Cluster fails in every test run, not only on a cluster.
    with pytest.raises(ValueError, match="hash slot"):
        client.submit_script(INCR_SCRIPT, ["rl:{a}:x", "rl:{b}:x"], [])
    assert await client.run_script(INCR_SCRIPT, ["rl:{a}:x", "rl:{a}:y"], []) == 1
