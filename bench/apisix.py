"""`python -m bench.apisix`: the APISIX runner's cost per request, measured on its socket.

The runner runs in its own process (uvloop, like `python -m extproc.apisix`) with the real chat
pipeline: API-key auth, a per-tenant rate limit (one Redis round trip), model routing with a
body rewrite, usage metering of the buffered response, and log rows (written to a chDB store).
The client plays both of APISIX's sides on one connection (`tests.support.apisix`), in the order
of one non-streamed LLM request: ext-plugin-pre-req's HTTPReqCall (answering the ExtraInfo frame
for the body) and then the Gatez plugin's UPSTREAM_REQUEST, RESPONSE_START and the buffered
RESPONSE_CHUNK (the provider call itself is not made). Each call is timed from its first frame
sent to its answer read. At 1 and 16 connections it prints calls/s, p50/p99 per call type, and
the CPU time (user + system, from /proc) the runner process and the client spent per request, so
the runner's own cost is not hidden by the client's.
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
from dataclasses import dataclass
from pathlib import Path

import orjson
import uvloop

from extproc.apisix.frames import (
    HttpRequestCall,
    Rewrite,
    RpcType,
    decode_http_request_call_reply,
    encode_http_request_call,
)
from extproc.apisix.plugin_wire import PluginRpc
from extproc.apisix.runner import FLOW_HEADER
from gatez import keys
from gatez.policy import compile_policy
from gatez.v1 import policy_pb2
from tests.support.apisix import PluginConnection, RequestContext, RunnerConnection
from tests.support.redis import RedisServer

API_KEY = "gz-bench-key-00000000000000000000"
LOOPBACK = bytes([127, 0, 0, 1])
LLM_CONF = (("gatez", "{}"),)
BODY = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello bench"}]})
REPLY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
)


# What OpenAI sends with a chat completion (names as lua-resty-http gives them, lower-cased).
REPLY_HEADERS = [
    ["content-type", "application/json"],
    ["content-length", str(len(REPLY))],
    ["date", "Wed, 02 Dec 2026 04:22:08 GMT"],
    ["connection", "keep-alive"],
    ["openai-organization", "org-bench"],
    ["openai-processing-ms", "312"],
    ["openai-version", "2020-10-01"],
    ["x-ratelimit-limit-requests", "10000"],
    ["x-ratelimit-remaining-requests", "9999"],
    ["x-ratelimit-limit-tokens", "10000000"],
    ["x-ratelimit-remaining-tokens", "9999990"],
    ["x-request-id", "req_0123456789abcdef0123456789abcdef"],
]


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

    from extproc.apisix.runner import ExtPluginRunner
    from extproc.jwks import JwksCache
    from extproc.logsink import ClickHouseLogWriter, LogSink
    from extproc.redis_pipe import PipelinedRedis
    from extproc.server import build_dispatcher
    from gatez.logstore import LogStore

    redis = PipelinedRedis.from_url(redis_url)
    http = aiohttp.ClientSession()
    store = LogStore(f"chdb://{clickhouse_dir}")
    sink = LogSink(ClickHouseLogWriter(store))
    sink.start()
    compiled = compile_policy(snapshot())
    dispatcher = build_dispatcher(
        lambda: compiled, jwks=JwksCache(http), redis=redis, sink=sink, node_id="bench"
    )
    runner = ExtPluginRunner(dispatcher)
    server = await asyncio.start_unix_server(runner.serve_connection, path=str(socket))
    async with server:
        await server.serve_forever()


# -- the client --------------------------------------------------------------------------------


async def client(socket: Path, requests: int, samples: dict[str, list[float]], n: int) -> None:
    connection = await RunnerConnection.open(socket, read_timeout_s=None)
    plugin = PluginConnection.sharing(connection)
    token = await connection.prepare_conf(LLM_CONF, "route#llm#ext-plugin-pre-req#1")
    headers = (
        ("authorization", f"Bearer {API_KEY}"),
        ("content-type", "application/json"),
        ("content-length", str(len(BODY))),
        ("host", "gateway.local"),
    )
    # Encoded once: the harness's flatc-generated encoder would cost the client more than the
    # runner spends decoding. The runner echoes the id, which nothing here checks.
    request_call = encode_http_request_call(
        HttpRequestCall(n, LOOPBACK, "POST", "/v1/chat/completions", (), headers, token)
    )
    for _ in range(requests):
        context = RequestContext(request_body=BODY)
        started = time.perf_counter()
        reply = await connection.call(RpcType.HTTP_REQ_CALL, request_call, context)
        samples["HTTPReqCall"].append(time.perf_counter() - started)
        action = decode_http_request_call_reply(reply).action
        assert isinstance(action, Rewrite), action
        flow = dict(action.headers)[FLOW_HEADER]

        started = time.perf_counter()
        target = await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": flow})
        samples["UPSTREAM_REQUEST"].append(time.perf_counter() - started)
        assert "error" not in target.meta, target.meta

        started = time.perf_counter()
        plan = await plugin.ask(
            PluginRpc.RESPONSE_START, {"flow": flow, "status": 200, "headers": REPLY_HEADERS}
        )
        samples["RESPONSE_START"].append(time.perf_counter() - started)
        assert plan.meta.get("body") == "buffered", plan.meta

        started = time.perf_counter()
        answer = await plugin.ask(PluginRpc.RESPONSE_CHUNK, {"flow": flow, "eos": True}, REPLY)
        samples["RESPONSE_CHUNK"].append(time.perf_counter() - started)
        assert answer.data == REPLY, answer.meta
        plugin.sent.clear()
    await connection.close()


CALLS = ("HTTPReqCall", "UPSTREAM_REQUEST", "RESPONSE_START", "RESPONSE_CHUNK")


async def measure(socket: Path, connections: int, requests: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in CALLS}
    await asyncio.gather(*(client(socket, requests, samples, n) for n in range(connections)))
    return samples


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of one process, or of one of its threads, from /proc."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class CpuSpent:
    """CPU seconds over one measurement: the runner's event-loop thread (the adapter and the
    pipeline), the whole runner process (adding the log writer's chDB threads), the client."""

    runner_loop_s: float
    runner_process_s: float
    client_s: float


def cpu_now(pid: int) -> CpuSpent:
    # The loop runs on the main thread, whose thread id is the process id.
    return CpuSpent(cpu_seconds(pid, pid), cpu_seconds(pid), time.process_time())


def cpu_since(pid: int, before: CpuSpent) -> CpuSpent:
    now = cpu_now(pid)
    return CpuSpent(
        now.runner_loop_s - before.runner_loop_s,
        now.runner_process_s - before.runner_process_s,
        now.client_s - before.client_s,
    )


def report(
    connections: int,
    elapsed_s: float,
    samples: dict[str, list[float]],
    cpu: CpuSpent,
) -> None:
    for name, values in samples.items():
        quantiles = statistics.quantiles(values, n=100)
        print(
            f"{connections:>5} conn  {name:<16} {len(values) / elapsed_s:>9,.0f} calls/s"
            f"  p50 {quantiles[49] * 1000:6.2f} ms  p99 {quantiles[98] * 1000:6.2f} ms"
        )
    total = len(samples[CALLS[0]])
    print(f"{connections:>5} conn  {'request':<16} {total / elapsed_s:>9,.0f} req/s (all calls)")
    print(
        f"{connections:>5} conn  CPU per request: runner loop"
        f" {cpu.runner_loop_s / total * 1000:.3f} ms,"
        f" runner process {cpu.runner_process_s / total * 1000:.3f} ms,"
        f" client {cpu.client_s / total * 1000:.3f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=2000, help="per connection at 1 conn")
    # The runner process; Redis from $GATEZ_REDIS_URL (its password kept off the command line).
    parser.add_argument("--serve", nargs=2, metavar=("SOCKET", "CH_DIR"))
    args = parser.parse_args()
    if args.serve:
        socket, clickhouse_dir = args.serve
        uvloop.run(serve(Path(socket), os.environ["GATEZ_REDIS_URL"], Path(clickhouse_dir)))
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
                f"{scratch}/ch",
            ],
            env={**os.environ, "GATEZ_REDIS_URL": redis.url},
        )
        try:
            deadline = time.monotonic() + 60
            while not socket.exists():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the runner did not start")
                time.sleep(0.05)
            uvloop.run(measure(socket, 1, 200))  # warm-up
            for connections, requests in ((1, args.requests), (16, max(1, args.requests // 8))):
                before = cpu_now(process.pid)
                started = time.perf_counter()
                samples = uvloop.run(measure(socket, connections, requests))
                elapsed = time.perf_counter() - started
                report(connections, elapsed, samples, cpu_since(process.pid, before))
        finally:
            process.terminate()
            process.wait(10)


if __name__ == "__main__":
    main()
