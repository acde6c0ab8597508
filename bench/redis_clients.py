"""`python -m bench.redis_clients`: the hot-path Redis client against redis-py, per rate-limit call.

The data plane's call pattern: the rate limit's GCRA script (EVALSHA, one key per tenant)
submitted from plain callbacks, a fixed number of calls in flight (as many as requests wait on
Redis), under uvloop. Each client runs the same calls against a private redis-server (over its
Unix socket, as the stack's processes reach it) and a private 3-node Redis Cluster, both with a
password. Printed per client: CPU time of this process per call (the client's own cost; Redis
runs in other processes), calls per second, and calls that failed.

redis-py runs each call as a task (`evalsha`, EVAL after NOSCRIPT), its pool growing to the
calls in flight: the plain way to use it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from redis.exceptions import NoScriptError

from extproc.redis_pipe import Arg, Script, ScriptClient, hot_path_client
from extproc.stages.rate_limit import GCRA_SCRIPT, bucket_key
from gatez.redis_client import RedisClient, RedisTarget, connect
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster


class RedisPyScripts:
    """redis-py behind the rate limit's `ScriptClient` contract: one task per call."""

    def __init__(self, client: RedisClient) -> None:
        self._client = client
        self.errors = 0

    def submit_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        return asyncio.ensure_future(self._run(script, keys, args))

    async def _run(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        try:
            return await self._client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self._client.eval(script.source, len(keys), *keys, *args)

    async def close(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class Result:
    cpu_us_per_call: float
    calls_per_s: float
    failed: int


async def drive(client: ScriptClient, calls: int, in_flight: int, tenants: int) -> int:
    """Runs `calls` GCRA calls, `in_flight` at a time, each sent from the previous one's
    callback; returns how many failed."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    sent = done = failed = 0
    # Limits far above what the run takes: every call is let through and does the full work.
    args = (1, 10**9, 1)

    def send() -> None:
        nonlocal sent
        reply = client.submit_script(GCRA_SCRIPT, (bucket_key(f"t{sent % tenants}"),), args)
        sent += 1
        reply.add_done_callback(answered)

    def answered(reply: asyncio.Future[Any]) -> None:
        nonlocal done, failed
        done += 1
        if reply.cancelled() or reply.exception() is not None:
            failed += 1
        if sent < calls:
            send()
        elif done == calls and not finished.done():
            finished.set_result(None)

    for _ in range(min(in_flight, calls)):
        send()
    await finished
    return failed


async def measure(client: ScriptClient, calls: int, in_flight: int, tenants: int) -> Result:
    failed = await drive(client, 2_000, in_flight, tenants)  # connections, scripts, pool
    cpu, wall = time.process_time(), time.perf_counter()
    failed += await drive(client, calls, in_flight, tenants)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return Result(cpu / calls * 1e6, calls / wall, failed)


async def run(
    server: RedisServer, cluster: LocalRedisCluster, calls: int, in_flight: int, tenants: int
) -> dict[str, Result]:
    single = RedisTarget.parse(server.unix_url)
    clustered = RedisTarget.parse(cluster.url)
    clients: dict[str, ScriptClient] = {
        "PipelinedRedis, one redis-server": hot_path_client(single),
        "redis-py Redis, one redis-server": RedisPyScripts(await connect(single)),
        "PipelinedRedisCluster, 3 nodes": hot_path_client(clustered),
        "redis-py RedisCluster, 3 nodes": RedisPyScripts(await connect(clustered)),
    }
    results = {}
    for name, client in clients.items():
        results[name] = await measure(client, calls, in_flight, tenants)
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--tenants", type=int, default=100)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="gatez-bench-redis-") as scratch,
        RedisServer(Path(scratch) / "redis") as server,
        LocalRedisCluster(Path(scratch) / "cluster") as cluster,
    ):
        results = uvloop.run(run(server, cluster, args.calls, args.in_flight, args.tenants))
    print(f"\nGCRA calls, {args.in_flight} in flight, {args.tenants} tenants:")
    print(f"{'':36}{'CPU us/call':>12}{'calls/s':>10}{'failed':>8}")
    for name, result in results.items():
        print(
            f"{name:36}{result.cpu_us_per_call:>12.1f}{result.calls_per_s:>10,.0f}"
            f"{result.failed:>8}"
        )


if __name__ == "__main__":
    main()
