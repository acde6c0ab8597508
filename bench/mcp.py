"""`python -m bench.mcp`: an MCP `tools/call` through Gatez beside the same call made straight to
the MCP server, measured in one run.

The upstream is a real MCP server built with the official `mcp` SDK (one `echo` tool, Streamable
HTTP with sessions, served by uvicorn in a process of its own), answering in JSON mode (and in
SSE mode with `--modes json sse`). Gatez has it registered for a tenant whose agent policy allows
`echo`, with an upstream credential to inject; every Gatez call runs the whole MCP pipeline (API
key, rate limit, routing, the session binding in Redis, JSON-RPC checks, tool policy, the pin
check, blast-radius limits, the result scan, the audit row and the access-log row).

The client drives it as a platform team would measure it: one warm session per path (`initialize`
and `notifications/initialized` once; through Gatez a `tools/list` first, which pins the tool),
then raw JSON-RPC `tools/call` POSTs with the session's headers over one keep-alive aiohttp
connection, so the client's own cost is small and the same on every path. Sequential calls run in
alternating blocks (direct, then each gateway path, repeated), so drift hits every path alike;
then `--concurrency` calls in flight for `--seconds`, each path in turn.

It prints p50/p90/p99 per path, the latency Gatez adds, calls/s, the CPU per call of the Gatez
process (the ext_proc data plane behind Envoy, the runner under APISIX) and of the proxy, and the
Redis commands per call. Behind Envoy, a plain Envoy (no ext_proc, one thread as the stack's) to
the same server shows what Envoy itself adds. APISIX runs when it is installed
($GATEZ_APISIX_PREFIX, as `make apisix` does), beside a plain APISIX route (no plugin) to the same
server.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any, Final

import aiohttp
import grpc
import orjson
import redis
import uvloop

from bench.chat import cpu_seconds, wait_applied
from gatez.apisix_process import ApisixInstall, descendants
from gatez.processes import free_port, require_binary, stop_process, wait_for_port
from gatez.redis_client import read_password
from gatez.stack import Stack, StackConfig, default_apisix_prefix
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

MCP_PATH: Final = "/mcp"
PROTOCOL: Final = "2025-11-25"
UPSTREAM_TOKEN: Final = "mcp-bench-upstream-token"
ACCEPT: Final = "application/json, text/event-stream"
ARGUMENT: Final = "hello benchmark"
DIRECT: Final = "direct"


# -- the MCP server (its own process) ------------------------------------------------------------


def serve_upstream(port: int, json_response: bool) -> None:
    """A minimal MCP server of the official SDK: `echo` only, sessions on, at `/mcp`."""
    import uvicorn
    from mcp.server.mcpserver import MCPServer

    server: MCPServer[Any] = MCPServer("bench", version="1.0.0", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    app = server.streamable_http_app(
        streamable_http_path=MCP_PATH, json_response=json_response, stateless_http=False
    )
    uvicorn.run(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop"
    )


def start_upstream(mode: str) -> tuple[int, subprocess.Popen[bytes]]:
    """The MCP server in `mode` ("json" or "sse") on a free port, ready."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.mcp", "--serve-upstream", mode, "--port", str(port)]
    )
    try:
        wait_for_port(port, timeout_s=30)
    except BaseException:
        stop_process(process)
        raise
    return port, process


# -- provisioning --------------------------------------------------------------------------------


def provision(stack: Stack, upstreams: dict[str, int]) -> dict[str, str]:
    """One tenant per mode (one tenant's two servers with the same tool would collide), each
    with its MCP server registered as "bench" and a policy allowing `echo`, with limits no run
    reaches. The tenants' API keys by mode."""
    channel = grpc.insecure_channel(stack.config.control_address)
    control = control_pb2_grpc.ControlServiceStub(channel)
    md = (("authorization", f"Bearer {stack.config.admin_token}"),)
    keys: dict[str, str] = {}
    version = 0
    for mode, port in upstreams.items():
        tenant = f"bench-{mode}"
        limit = policy_pb2.RateLimit(requests_per_minute=100_000_000, burst=1_000_000)
        control.CreateTenant(
            control_pb2.CreateTenantRequest(tenant=policy_pb2.Tenant(id=tenant, rate_limit=limit)),
            metadata=md,
        )
        key = control.CreateApiKey(control_pb2.CreateApiKeyRequest(tenant_id=tenant), metadata=md)
        server = policy_pb2.McpServer(
            tenant_id=tenant, name="bench", url=f"http://127.0.0.1:{port}{MCP_PATH}"
        )
        control.CreateMcpServer(
            control_pb2.CreateMcpServerRequest(mcp_server=server, credential=UPSTREAM_TOKEN),
            metadata=md,
        )
        policy = policy_pb2.AgentPolicy(
            id=tenant,
            tenant_id=tenant,
            tools=[policy_pb2.ToolRule(tool="echo", action=policy_pb2.TOOL_ACTION_ALLOW)],
            limits=policy_pb2.AgentLimits(
                calls_per_session=4_000_000_000,
                concurrent_calls_per_session=1024,
                concurrent_calls_per_tenant=1024,
            ),
        )
        applied = control.SetAgentPolicy(
            control_pb2.SetAgentPolicyRequest(agent_policy=policy), metadata=md
        )
        keys[mode] = str(key.secret)
        version = int(applied.policy_version)
    wait_applied(control, md, version)
    channel.close()
    return keys


def plain_apisix_route(mode: str, upstream_port: int) -> dict[str, object]:
    """APISIX proxying `/plain-<mode>/mcp` to the MCP server, no plugin but the path rewrite."""
    return {
        "id": f"plain-{mode}",
        "uris": [f"/plain-{mode}/*"],
        "priority": 20,
        "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream_port}": 1}},
        "plugins": {"proxy-rewrite": {"regex_uri": [f"^/plain-{mode}(/.*)", "$1"]}},
    }


# -- the client ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Route:
    """One way to reach the MCP server: its URL, the bearer token the client sends, and whether
    Gatez is on it (then a `tools/list` comes first, to pin the tool)."""

    name: str
    url: str
    bearer: str
    gatez: bool


class Session:
    """A warm MCP session on one route: the headers every call carries, over keep-alive
    connections (as many as calls in flight)."""

    def __init__(self, route: Route, connections: int) -> None:
        self.route = route
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=30),
            skip_auto_headers=("User-Agent",),
        )
        self.headers = {
            "content-type": "application/json",
            "accept": ACCEPT,
            "authorization": f"Bearer {route.bearer}",
        }
        self._ids = iter(range(10, 2**62))

    async def post(self, message: dict[str, Any]) -> tuple[int, Any, bytes]:
        """One JSON-RPC POST: status, headers, body."""
        async with self.http.post(
            self.route.url, data=orjson.dumps(message), headers=self.headers
        ) as response:
            return response.status, response.headers, await response.read()

    async def open(self) -> Session:
        """`initialize`, `notifications/initialized` and (through Gatez) `tools/list`."""
        name = self.route.name
        status, headers, body = await self.post(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "gatez-bench", "version": "1.0"},
                },
            }
        )
        session_id = headers.get("mcp-session-id")
        if status != 200 or not session_id:
            raise RuntimeError(f"{name}: initialize got {status} (session {session_id}): {body!r}")
        self.headers["mcp-session-id"] = session_id
        self.headers["mcp-protocol-version"] = PROTOCOL
        status, _, body = await self.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        if status != 202:
            raise RuntimeError(f"{name}: notifications/initialized got {status}: {body!r}")
        if self.route.gatez:
            status, _, body = await self.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
            listed = [
                tool.get("name")
                for message in _messages(body)
                for tool in message.get("result", {}).get("tools", [])
            ]
            if status != 200 or listed != ["echo"]:
                raise RuntimeError(f"{name}: tools/list got {status}: {body!r}")
        return self

    async def call_echo(self) -> float:
        """One `tools/call` of `echo`, checked (an error cannot pass for a fast answer); its
        latency in seconds, from the request written to the answer read whole."""
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": next(self._ids),
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": ARGUMENT}},
            }
        )
        started = time.perf_counter()
        async with self.http.post(self.route.url, data=body, headers=self.headers) as response:
            reply = await response.read()
        elapsed = time.perf_counter() - started
        if response.status != 200 or ECHOED not in reply or b'"isError":false' not in reply:
            raise RuntimeError(f"{self.route.name}: tools/call got {response.status}: {reply!r}")
        return elapsed

    async def close(self) -> None:
        await self.http.close()


ECHOED: Final = orjson.dumps({"text": ARGUMENT})[1:-1]


def _messages(body: bytes) -> list[Any]:
    """A reply's JSON-RPC messages: the JSON body, or the SSE events' data."""
    if body.lstrip().startswith(b"{"):
        return [orjson.loads(body)]
    return [
        orjson.loads(line[5:].strip()) for line in body.splitlines() if line.startswith(b"data:")
    ]


# -- measuring -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Watched:
    """The processes whose CPU is measured: Gatez's own (the ext_proc data plane, or APISIX's
    runner), the proxy's (Envoy, or APISIX's nginx workers) and the MCP server's."""

    gatez: tuple[int, ...]
    proxy: tuple[int, ...]
    server: tuple[int, ...]

    def cpu(self) -> tuple[float, float, float]:
        return (_cpu(self.gatez), _cpu(self.proxy), _cpu(self.server))


def _cpu(pids: Sequence[int]) -> float:
    return sum(cpu_seconds(pid) for pid in pids)


@dataclass(slots=True)
class Samples:
    """What one route did in one phase (sequential or concurrent)."""

    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    gatez_cpu_s: float = 0.0
    proxy_cpu_s: float = 0.0
    server_cpu_s: float = 0.0
    redis_commands: dict[str, int] = field(default_factory=dict)
    # Round trips to Redis (MONITOR) over `traced_calls` sequential calls.
    redis_round_trips: dict[str, int] = field(default_factory=dict)
    traced_calls: int = 0

    @property
    def calls(self) -> int:
        return len(self.latencies)

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def per_call_ms(self, seconds: float) -> float:
        return seconds / self.calls * 1000

    @property
    def rate(self) -> float:
        return self.calls / self.wall_s


class RedisCounter:
    """Commands the stack's Redis ran (`INFO commandstats`), by command."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self._client = redis.Redis(
            unix_socket_path=str(config.redis_socket.resolve()),
            password=read_password(config.redis_password_file),
        )

    def snapshot(self) -> dict[str, int]:
        stats: dict[str, Any] = self._client.info("commandstats")
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in stats.items()
            if name not in ("cmdstat_info",)
        }

    def close(self) -> None:
        self._client.close()


KEY_PARTS: Final = re.compile(r"[0-9a-f]{16,}|(?<=:)[0-9]+(?=:|$)")


class RedisTrace:
    """The round trips one route's calls make to Redis, from `MONITOR`: each command a client
    sent (not those its scripts ran), named by command and first key (the tenant and digests
    masked), so EVALSHAs read as what they touch."""

    STOP: Final = "gatez-bench-trace-stop"

    def __init__(self, config: StackConfig) -> None:
        self._config = config
        self.commands: dict[str, int] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def _client(self) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self._config.redis_socket.resolve()),
            password=read_password(self._config.redis_password_file),
        )

    def _run(self) -> None:
        client = self._client()
        with client.monitor() as monitor:  # type: ignore[no-untyped-call]
            self._ready.set()
            while True:
                seen = monitor.next_command()
                command = str(seen["command"])
                if self.STOP in command:
                    break
                if seen.get("client_type") == "lua" or command.startswith(
                    ("MONITOR", "INFO", "HELLO", "AUTH")
                ):
                    continue
                name = self._name(command)
                self.commands[name] = self.commands.get(name, 0) + 1
        client.close()

    @staticmethod
    def _name(command: str) -> str:
        words = command.split()
        verb = words[0].upper() if words else "?"
        key_at = 3 if verb in ("EVALSHA", "EVAL") else 1
        key = words[key_at] if len(words) > key_at else ""
        return (
            f"{verb} {KEY_PARTS.sub('*', key.replace('bench-json', 't').replace('bench-sse', 't'))}"
        )

    def __enter__(self) -> RedisTrace:
        self._thread = threading.Thread(target=self._run, name="redis-monitor", daemon=True)
        self._thread.start()
        self._ready.wait(5)
        time.sleep(0.1)  # MONITOR registered before the traced calls start
        return self

    def __exit__(self, *_: object) -> None:
        time.sleep(0.2)  # the slot releases (after each answer) reach Redis
        client = self._client()
        client.echo(self.STOP)
        client.close()
        if self._thread is not None:
            self._thread.join(5)


async def _block(
    session: Session, samples: Samples, watched: Watched, calls: int, in_flight: int, seconds: float
) -> None:
    """`calls` sequential calls (`in_flight` 1), or `in_flight` at a time for `seconds`, into
    `samples`, with the CPU they cost."""
    before = watched.cpu()
    started = time.perf_counter()
    if in_flight == 1:
        for _ in range(calls):
            samples.latencies.append(await session.call_echo())
    else:
        deadline = started + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                samples.latencies.append(await session.call_echo())

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    samples.wall_s += time.perf_counter() - started
    after = watched.cpu()
    samples.gatez_cpu_s += after[0] - before[0]
    samples.proxy_cpu_s += after[1] - before[1]
    samples.server_cpu_s += after[2] - before[2]


def _add(into: dict[str, int], before: dict[str, int], after: dict[str, int]) -> None:
    for name, count in after.items():
        spent = count - before.get(name, 0)
        if spent:
            into[name] = into.get(name, 0) + spent


async def measure(
    routes: Sequence[Route],
    watched: dict[str, Watched],
    counter: RedisCounter,
    args: argparse.Namespace,
) -> dict[tuple[str, int], Samples]:
    """Sequential calls in alternating blocks, then `args.concurrency` in flight per route."""
    sessions = [await Session(r, max(1, args.concurrency)).open() for r in routes]
    results: dict[tuple[str, int], Samples] = {}
    try:
        for session in sessions:  # warm-up: connections, caches, the JIT-less interpreter's
            for _ in range(args.warmup):
                await session.call_echo()
        per_block = max(1, args.calls // args.rounds)
        for _ in range(args.rounds):
            for session in sessions:
                samples = results.setdefault((session.route.name, 1), Samples())
                redis_before = counter.snapshot()
                await _block(session, samples, watched[session.route.name], per_block, 1, 0)
                _add(samples.redis_commands, redis_before, counter.snapshot())
        for session in sessions:
            if session.route.gatez and args.trace_calls:
                samples = results[session.route.name, 1]
                with RedisTrace(counter.config) as trace:
                    for _ in range(args.trace_calls):
                        await session.call_echo()
                samples.redis_round_trips = trace.commands
                samples.traced_calls = args.trace_calls
        if args.concurrency > 1:
            for session in sessions:
                samples = results.setdefault((session.route.name, args.concurrency), Samples())
                name = session.route.name
                await _block(session, Samples(), watched[name], 0, args.concurrency, 1.0)
                redis_before = counter.snapshot()
                await _block(session, samples, watched[name], 0, args.concurrency, args.seconds)
                _add(samples.redis_commands, redis_before, counter.snapshot())
    finally:
        for session in sessions:
            await session.close()
    return results


# -- the stacks ----------------------------------------------------------------------------------


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class ProfiledStack(Stack):
    """The stack with its ext_proc data plane run under cProfile, writing `profile` when it
    stops (SIGTERM stops it cleanly)."""

    def __init__(self, config: StackConfig, profile: Path) -> None:
        super().__init__(config)
        self.profile = profile

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        if name == "dataplane":
            argv = [argv[0], "-m", "cProfile", "-o", str(self.profile), *argv[1:]]
        super().spawn(name, argv, env)


def print_profile(profile: Path, lines: int = 40) -> None:
    """The profile's functions by own time, then by cumulative time."""
    import pstats

    stats = pstats.Stats(str(profile))
    stats.sort_stats("tottime").print_stats(lines)
    stats.sort_stats("cumulative").print_stats(lines)


def start_plain_envoy(work: Path, upstream_port: int) -> tuple[int, subprocess.Popen[bytes]]:
    """A plain Envoy (no ext_proc, the same one thread as the stack's) straight to the MCP
    server: what Envoy itself adds, measured beside what Gatez adds."""
    port = free_port()
    config = work / f"plain-envoy-{port}.yaml"
    config.write_text(
        Template((Path(__file__).parent / "plain-envoy.yaml").read_text()).substitute(
            LISTEN_PORT=port, ADMIN_PORT=free_port(), UPSTREAM_PORT=upstream_port
        )
    )
    process = subprocess.Popen(
        [require_binary("envoy"), "-c", str(config), "--log-level", "error",
         "--concurrency", "1", "--base-id", str(port)],
    )  # fmt: skip
    try:
        wait_for_port(port, timeout_s=30)
    except BaseException:
        stop_process(process)
        raise
    return port, process


def run_proxy(
    proxy: str, upstreams: dict[str, tuple[int, int]], work: Path, args: argparse.Namespace
) -> dict[tuple[str, str, int], Samples]:
    """One stack behind `proxy`, every mode's routes measured on it."""
    config = StackConfig.ephemeral(work / f"stack-{proxy}")
    config.log_level = "WARNING"
    config.proxy = proxy
    if proxy == "apisix":
        config.apisix_extra_routes = [
            plain_apisix_route(mode, port) for mode, (port, _) in upstreams.items()
        ]
    results: dict[tuple[str, str, int], Samples] = {}
    plain_envoys: dict[str, tuple[int, subprocess.Popen[bytes]]] = {}
    if proxy == "envoy":
        for mode, (port, _) in upstreams.items():
            plain_envoys[mode] = start_plain_envoy(work, port)
    try:
        run_stack(proxy, config, upstreams, plain_envoys, results, args)
    finally:
        for _, process in plain_envoys.values():
            stop_process(process)
    return results


def run_stack(
    proxy: str,
    config: StackConfig,
    upstreams: dict[str, tuple[int, int]],
    plain_envoys: dict[str, tuple[int, subprocess.Popen[bytes]]],
    results: dict[tuple[str, str, int], Samples],
    args: argparse.Namespace,
) -> None:
    """Measures every mode's routes on one running stack, into `results`."""
    profiled = args.profile is not None and proxy == "envoy"
    with ProfiledStack(config, args.profile) if profiled else Stack(config) as stack:
        keys = provision(stack, {mode: port for mode, (port, _) in upstreams.items()})
        if proxy == "apisix":
            assert stack.apisix is not None
            family = descendants(stack.apisix.master_pid)
            gatez = tuple(p for p in family if "extproc" in _cmdline(p))
            workers = tuple(p for p in family if _cmdline(p).startswith("nginx: worker"))
            if not gatez or not workers:
                raise RuntimeError("APISIX's runner or workers not found")
        else:
            gatez = (stack.processes["dataplane"].pid,)
            workers = (stack.processes["envoy"].pid,)
        counter = RedisCounter(config)
        try:
            for mode, (port, server_pid) in upstreams.items():
                server = (server_pid,)
                routes = [
                    Route(DIRECT, f"http://127.0.0.1:{port}{MCP_PATH}", UPSTREAM_TOKEN, False)
                ]
                watched = {DIRECT: Watched((), (), server)}
                if proxy == "apisix":
                    plain = f"{config.gateway_url}/plain-{mode}{MCP_PATH}"
                    routes.append(Route("apisix", plain, UPSTREAM_TOKEN, False))
                    watched["apisix"] = Watched((), workers, server)
                else:
                    plain_port, plain_envoy = plain_envoys[mode]
                    plain = f"http://127.0.0.1:{plain_port}{MCP_PATH}"
                    routes.append(Route("envoy", plain, UPSTREAM_TOKEN, False))
                    watched["envoy"] = Watched((), (plain_envoy.pid,), server)
                name = f"{proxy}+gatez"
                url = f"{config.gateway_url}/mcp/bench-{mode}/bench"
                routes.append(Route(name, url, keys[mode], True))
                watched[name] = Watched(gatez, workers, server)
                measured = uvloop.run(measure(routes, watched, counter, args))
                results |= {(mode, route, c): s for (route, c), s in measured.items()}
        finally:
            counter.close()


def report(
    proxy: str, mode: str, results: dict[tuple[str, str, int], Samples], args: argparse.Namespace
) -> None:
    rows = [(route, c, s) for (m, route, c), s in results.items() if m == mode]
    print(
        f"\n{proxy}, {mode.upper()} responses: {args.calls} sequential calls per route in "
        f"{args.rounds} alternating blocks; {args.concurrency} in flight for {args.seconds:g} s"
    )
    print(
        f"{'':20}{'calls':>7}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'calls/s':>9}"
        f"{'gatez CPU':>11}{'proxy CPU':>11}{'server CPU':>12}   (CPU: ms per call)"
    )
    for route, c, s in sorted(rows, key=lambda row: row[1]):
        print(
            f"{route:>13} c={c:<3}{s.calls:>7}{s.percentile_ms(0.5):>9.3f}"
            f"{s.percentile_ms(0.9):>9.3f}{s.percentile_ms(0.99):>9.3f}{s.rate:>9.0f}"
            f"{s.per_call_ms(s.gatez_cpu_s):>11.3f}{s.per_call_ms(s.proxy_cpu_s):>11.3f}"
            f"{s.per_call_ms(s.server_cpu_s):>12.3f}"
        )
    by = {(route, c): s for route, c, s in rows}
    gatez_name = f"{proxy}+gatez"
    bases = [DIRECT, proxy]
    for c in sorted({c for _, c, _ in rows}):
        gatez = by[gatez_name, c]
        for base_name in bases:
            base = by[base_name, c]
            added = [
                f"p{q * 100:g} +{gatez.percentile_ms(q) - base.percentile_ms(q):.3f} ms "
                f"({gatez.percentile_ms(q) / base.percentile_ms(q):.2f}x)"
                for q in (0.5, 0.9, 0.99)
            ]
            print(
                f"c={c:<3} {gatez_name} vs {base_name}: {', '.join(added)}, "
                f"throughput {gatez.rate / base.rate:.2f}x"
            )
    sequential = by[gatez_name, 1]
    commands = sorted(sequential.redis_commands.items(), key=lambda item: -item[1])
    per_call = ", ".join(f"{name} {count / sequential.calls:.2f}" for name, count in commands)
    total = sum(sequential.redis_commands.values()) / sequential.calls
    print(f"Redis commands run per {gatez_name} call (scripts' own included): {total:.2f}")
    print(f"  {per_call}")
    if sequential.traced_calls:
        trips = sorted(sequential.redis_round_trips.items(), key=lambda item: -item[1])
        total = sum(sequential.redis_round_trips.values()) / sequential.traced_calls
        print(
            f"Redis round trips per {gatez_name} call (MONITOR, {sequential.traced_calls} calls):"
        )
        print(
            f"  {total:.2f}: "
            + ", ".join(f"{name} {count / sequential.traced_calls:.2f}" for name, count in trips)
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--proxies", nargs="+", choices=("envoy", "apisix"), default=None)
    parser.add_argument("--modes", nargs="+", choices=("json", "sse"), default=["json"])
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls per route")
    parser.add_argument("--rounds", type=int, default=10, help="alternating blocks")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8, help="calls in flight (0: none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="of the concurrent run")
    parser.add_argument(
        "--trace-calls", type=int, default=100, help="calls traced with Redis MONITOR (0: none)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="run the Envoy stack's data plane under cProfile, its stats written here "
        "(latencies then include the profiler's cost: for where the time goes, not how much)",
    )
    parser.add_argument("--serve-upstream", choices=("json", "sse"), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.port, args.serve_upstream == "json")
        return
    proxies: list[str] = args.proxies or ["envoy", "apisix"]
    if args.proxies is None and ApisixInstall(default_apisix_prefix()).version() is None:
        print(f"APISIX is not installed in {default_apisix_prefix()}: Envoy only", file=sys.stderr)
        proxies = ["envoy"]
    started = {mode: start_upstream(mode) for mode in args.modes}
    results: dict[str, dict[tuple[str, str, int], Samples]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="gatez-bench-mcp-") as tmp:
            upstreams = {mode: (port, process.pid) for mode, (port, process) in started.items()}
            for proxy in proxies:  # one stack at a time: the other's processes take no CPU
                results[proxy] = run_proxy(proxy, upstreams, Path(tmp), args)
    finally:
        for _, process in started.values():
            stop_process(process)
    for proxy, measured in results.items():
        for mode in args.modes:
            report(proxy, mode, measured, args)
    if args.profile is not None and "envoy" in proxies:
        print_profile(args.profile)
    print("\ntarget: added p50 <= 1.5 ms per tools/call (sequential, c=1)")


if __name__ == "__main__":
    main()
