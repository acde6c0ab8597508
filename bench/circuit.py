"""`python -m bench.circuit`: the circuit pick's latency against the rate limit's GCRA call.

One call in flight at a time, under uvloop, with the hot-path client, against a private
redis-server (over its Unix socket, as the stack's processes reach it) and a private 3-node
Redis Cluster. Printed per call kind: wall-clock latency p50 and p99 (µs) and this process's
CPU per call. The pick reads a 3-target chain with one target open (the common fallback case)
and one with counted failures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop

from extproc.circuit import Attempt, CircuitBreaker, CircuitConfig
from extproc.redis_pipe import ScriptClient, hot_path_client
from extproc.stages.rate_limit import GCRA_SCRIPT, bucket_key
from gatez.redis_client import RedisTarget
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster

CHAIN = ("openai-primary", "anthropic-backup", "ollama-local")


@dataclass(frozen=True, slots=True)
class Latency:
    p50_us: float
    p99_us: float
    cpu_us: float


async def time_calls(call: Callable[[], Awaitable[Any]], calls: int) -> Latency:
    for _ in range(500):
        await call()  # connection, script cache
    samples = []
    cpu = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1e6)
    cpu = time.process_time() - cpu
    samples.sort()
    return Latency(statistics.median(samples), samples[int(len(samples) * 0.99)], cpu / calls * 1e6)


async def record_failure(breaker: CircuitBreaker, target: str) -> bool:
    recorded = breaker.record(Attempt(target), success=False)
    assert recorded is not None  # a failure is always sent
    return await recorded


async def measure(client: ScriptClient, calls: int) -> dict[str, Latency]:
    breaker = CircuitBreaker(client, CircuitConfig(failure_threshold=3, cooldown_s=3600))
    for _ in range(3):
        await record_failure(breaker, CHAIN[0])
    await record_failure(breaker, CHAIN[1])
    limits = (1, 10**9, 1)  # every call let through: the full work
    return {
        "rate limit (GCRA)": await time_calls(
            lambda: client.submit_script(GCRA_SCRIPT, (bucket_key("tenant"),), limits), calls
        ),
        "circuit pick, 3 targets": await time_calls(lambda: breaker.pick(CHAIN), calls),
        "circuit record, failure": await time_calls(
            lambda: record_failure(breaker, CHAIN[2]), calls
        ),
    }


async def run(server: RedisServer, cluster: LocalRedisCluster, calls: int) -> dict[str, Any]:
    results = {}
    for name, target in (
        ("one redis-server (Unix socket)", RedisTarget.parse(server.unix_url)),
        ("3-node Redis Cluster (TCP)", RedisTarget.parse(cluster.url)),
    ):
        client = hot_path_client(target)
        results[name] = await measure(client, calls)
        await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=5_000)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="gatez-bench-circuit-") as scratch,
        RedisServer(Path(scratch) / "redis") as server,
        LocalRedisCluster(Path(scratch) / "cluster") as cluster,
    ):
        results = uvloop.run(run(server, cluster, args.calls))
    for store, latencies in results.items():
        print(f"\n{store}, one call in flight:")
        print(f"{'':28}{'p50 us':>8}{'p99 us':>8}{'CPU us':>8}")
        for name, latency in latencies.items():
            print(f"{name:28}{latency.p50_us:>8.0f}{latency.p99_us:>8.0f}{latency.cpu_us:>8.1f}")


if __name__ == "__main__":
    main()
