"""`python -m bench.apisix`: the APISIX runner's cost per call, measured with the harness.

The runner runs in its own process (uvloop, like `python -m extproc.apisix`) with the real chat
pipeline: API-key auth, a per-tenant rate limit (one Redis round trip), model routing with a
body rewrite, usage metering of the buffered response, and log rows (written to a chDB store).
The harness's runner client plays APISIX: per request one HTTPReqCall (answering the ExtraInfo
frames for `$request_id` and the body) and one HTTPRespCall (`$request_id` and the response
body), each timed from the first frame sent to the reply read. At 1 and 16 connections it
prints calls/s and p50/p99 per call type.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from extproc.apisix.frames import HttpRequestCall, HttpResponseCall, Rewrite
from gatez import keys
from gatez.policy import compile_policy
from gatez.testing.apisix import RequestContext, RunnerConnection
from gatez.testing.processes import RedisServer
from gatez.v1 import policy_pb2

API_KEY = "gz-bench-key-00000000000000000000"
LOOPBACK = bytes([127, 0, 0, 1])
LLM_CONF = (("gatez", '{"route":"llm"}'),)
BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello bench"}]})
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


def snapshot() -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        version=1,
        tenants=[
            policy_pb2.Tenant(
                id="bench", rate_limit=policy_pb2.RateLimit(requests_per_minute=10**9, burst=10**6)
            )
        ],
        api_keys=[policy_pb2.ApiKey(id="k", tenant_id="bench", secret_sha256=keys.digest(API_KEY))],
        providers=[
            policy_pb2.Provider(
                name="p", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="http://127.0.0.1:9/v1"
            )
        ],
        provider_credentials=[policy_pb2.ProviderCredential(provider="p", api_key="sk-bench")],
        model_routes=[policy_pb2.ModelRoute(alias="bench", provider="p", upstream_model="m")],
    )


# -- the runner process ------------------------------------------------------------------------


async def serve(socket: Path, redis_url: str, clickhouse_dir: Path) -> None:
    import aiohttp

    from extproc.apisix.runner import ExtPluginRunner, RouteKind
    from extproc.jwks import JwksCache
    from extproc.logsink import ClickHouseLogWriter, LogSink
    from extproc.redis_pipe import PipelinedRedis
    from extproc.server import build_pipeline
    from gatez.logstore import LogStore

    redis = PipelinedRedis.from_url(redis_url)
    http = aiohttp.ClientSession()
    store = LogStore(f"chdb://{clickhouse_dir}")
    sink = LogSink(ClickHouseLogWriter(store))
    sink.start()
    pipeline = build_pipeline(jwks=JwksCache(http), redis=redis, sink=sink, node_id="bench")
    compiled = compile_policy(snapshot())
    runner = ExtPluginRunner({"llm": RouteKind(pipeline, response_phase=True)}, lambda: compiled)
    server = await asyncio.start_unix_server(runner.serve_connection, path=str(socket))
    async with server:
        await server.serve_forever()


# -- the client --------------------------------------------------------------------------------


async def client(socket: Path, requests: int, samples: dict[str, list[float]], n: int) -> None:
    connection = await RunnerConnection.open(socket)
    token = await connection.prepare_conf(LLM_CONF, "route#llm#ext-plugin-pre-req#1")
    headers = (
        ("authorization", f"Bearer {API_KEY}"),
        ("content-type", "application/json"),
        ("content-length", str(len(BODY))),
        ("host", "gateway.local"),
    )
    for i in range(requests):
        context = RequestContext(vars={"request_id": f"{n}-{i}"}, request_body=BODY)
        call = HttpRequestCall(
            i, b"\x7f\x00\x00\x01", "POST", "/v1/chat/completions", (), headers, token
        )
        started = time.perf_counter()
        reply = await connection.request_call(call, context)
        samples["HTTPReqCall"].append(time.perf_counter() - started)
        assert isinstance(reply.action, Rewrite), reply
        context.response_body = REPLY
        response = HttpResponseCall(i, 200, (("content-type", "application/json"),), token)
        started = time.perf_counter()
        await connection.response_call(response, context)
        samples["HTTPRespCall"].append(time.perf_counter() - started)
    await connection.close()


async def measure(socket: Path, connections: int, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {"HTTPReqCall": [], "HTTPRespCall": []}
    await asyncio.gather(*(client(socket, requests, samples, n) for n in range(connections)))
    return samples


def report(connections: int, elapsed_s: float, samples: dict[str, list[float]]) -> None:
    for name, values in samples.items():
        quantiles = statistics.quantiles(values, n=100)
        print(
            f"{connections:>5} conn  {name:<13} {len(values) / elapsed_s:>9,.0f} calls/s"
            f"  p50 {quantiles[49] * 1000:6.2f} ms  p99 {quantiles[98] * 1000:6.2f} ms"
        )
    total = sum(len(v) for v in samples.values()) // 2
    print(f"{connections:>5} conn  {'request':<13} {total / elapsed_s:>9,.0f} req/s (both calls)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="per connection at 1 conn")
    parser.add_argument("--serve", nargs=3, metavar=("SOCKET", "REDIS_URL", "CH_DIR"))
    args = parser.parse_args()
    if args.serve:
        socket, redis_url, clickhouse_dir = args.serve
        uvloop.run(serve(Path(socket), redis_url, Path(clickhouse_dir)))
        return

    with tempfile.TemporaryDirectory() as scratch, RedisServer(Path(scratch) / "redis") as redis:
        socket = Path(scratch) / "runner.sock"
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.apisix",
                "--serve",
                str(socket),
                redis.url,
                f"{scratch}/ch",
            ],
            env=os.environ,
        )
        try:
            deadline = time.monotonic() + 60
            while not socket.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the runner did not start")
                time.sleep(0.05)
            uvloop.run(measure(socket, 1, 200))  # warm-up
            for connections, requests in ((1, args.requests), (16, max(1, args.requests // 8))):
                started = time.perf_counter()
                samples = uvloop.run(measure(socket, connections, requests))
                report(connections, time.perf_counter() - started, samples)
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
