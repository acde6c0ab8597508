"""`make bench`: plain Envoy vs Envoy + Gatez on the chat path, measured in one run.

Both proxies forward `POST /v1/chat/completions` to the same canned upstream. Gatez does the
whole chat path: API-key auth, per-tenant rate limit (one Redis round trip), model routing with a
body rewrite, usage metering of the buffered response, and request/AI log rows. wrk drives each
at 1 and 16 connections; the table shows requests/s, p50/p99 and Gatez's ratios to plain Envoy.

`--tracing` runs Gatez with traces on (Envoy's tracer and the data plane exporting over OTLP to a
local endpoint that discards them; `--sampled-percent` of requests sampled, default all), for
what tracing adds to the latency.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from string import Template

import grpc

from bench.otlp_sink import OtlpSink
from gatez.processes import free_port, require_binary, stop_process, wait_for_port
from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

HERE = Path(__file__).resolve().parent
BODY = '{"model":"bench","messages":[{"role":"user","content":"hello benchmark"}]}'


@dataclass(frozen=True)
class Result:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU the data-plane process spent per request (0 for plain Envoy).
    data_plane_cpu_ms: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, api_key: str, connections: int, seconds: int, script_dir: Path, body: str = BODY
) -> Result:
    script = script_dir / "chat.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = '{body}'\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {api_key}"\n'
    )
    threads = 1 if connections == 1 else 2
    output = subprocess.run(
        [
            require_binary("wrk"),
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: .*", output)
    if socket_errors:
        print(f"  wrk: {socket_errors.group(0)}", file=sys.stderr)
    return Result(
        requests_per_s=float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        p50_ms=_latency(output, "50%"),
        p99_ms=_latency(output, "99%"),
        errors=int(errors.group(1)) if errors else 0,
    )


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s*{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    assert match, f"no {percentile} latency in wrk output:\n{output}"
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def start_plain(
    work: Path, upstream_args: tuple[str, ...] = ()
) -> tuple[int, int, tuple[subprocess.Popen[bytes], ...]]:
    """The canned upstream (given `upstream_args`) and a plain Envoy in front of it, both
    ready: their ports, and the processes to stop."""
    upstream_port, plain_port = free_port(), free_port()
    upstream = subprocess.Popen(
        [sys.executable, str(HERE / "upstream.py"), str(upstream_port), *upstream_args]
    )
    plain_config = work / "plain.yaml"
    plain_config.write_text(
        Template((HERE / "plain-envoy.yaml").read_text()).substitute(
            LISTEN_PORT=plain_port, ADMIN_PORT=free_port(), UPSTREAM_PORT=upstream_port
        )
    )
    plain = subprocess.Popen(
        [require_binary("envoy"), "-c", str(plain_config), "--log-level", "error",
         "--concurrency", "1", "--base-id", str(plain_port)],
    )  # fmt: skip
    try:
        wait_for_port(upstream_port)
        wait_for_port(plain_port, timeout_s=30)
    except BaseException:
        stop_process(plain)
        stop_process(upstream)
        raise
    return upstream_port, plain_port, (upstream, plain)


def wait_applied(
    control: control_pb2_grpc.ControlServiceStub, md: tuple[tuple[str, str], ...], version: int
) -> None:
    """Waits (up to 30 s) until a data plane has applied policy `version`."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = control.GetPolicyStatus(control_pb2.GetPolicyStatusRequest(), metadata=md)
        if any(p.applied_version >= version for p in status.data_planes):
            return
        time.sleep(0.05)


def provision(stack: Stack, upstream_port: int) -> str:
    channel = grpc.insecure_channel(stack.config.control_address)
    control = control_pb2_grpc.ControlServiceStub(channel)
    md = (("authorization", f"Bearer {stack.config.admin_token}"),)
    control.CreateTenant(
        control_pb2.CreateTenantRequest(
            tenant=policy_pb2.Tenant(
                id="bench",
                rate_limit=policy_pb2.RateLimit(requests_per_minute=100_000_000, burst=1_000_000),
            )
        ),
        metadata=md,
    )
    key = control.CreateApiKey(control_pb2.CreateApiKeyRequest(tenant_id="bench"), metadata=md)
    control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name="bench-upstream",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url=f"http://127.0.0.1:{upstream_port}/v1",
            ),
            api_key="sk-bench",
        ),
        metadata=md,
    )
    route = control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias="bench", provider="bench-upstream", upstream_model="bench-model"
            )
        ),
        metadata=md,
    )
    wait_applied(control, md, route.policy_version)
    channel.close()
    return str(key.secret)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--tracing", action="store_true", help="Gatez with traces exported")
    parser.add_argument("--sampled-percent", type=float, default=100.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gatez-bench-") as tmp, OtlpSink() as sink:
        work = Path(tmp)
        upstream_port, plain_port, (upstream, plain) = start_plain(work)
        config = StackConfig.ephemeral(work / "stack")
        config.log_level = "WARNING"
        if args.tracing:
            # Envoy samples at this ratio too (gatez.envoy_config); the data plane follows it.
            config.extra_env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG=str(args.sampled_percent / 100),
            )
        stack = Stack(config)
        try:
            stack.start()
            api_key = provision(stack, upstream_port)
            targets = {
                "envoy": f"http://127.0.0.1:{plain_port}/v1/chat/completions",
                "gatez": f"{config.gateway_url}/v1/chat/completions",
            }
            results: dict[tuple[str, int], Result] = {}
            data_plane = stack.processes["dataplane"].pid
            for connections in args.connections:
                for name, url in targets.items():
                    wrk(url, api_key, connections, args.warmup, work)
                    cpu_before = cpu_seconds(data_plane)
                    result = wrk(url, api_key, connections, args.seconds, work)
                    if name == "gatez":
                        spent = cpu_seconds(data_plane) - cpu_before
                        requests = result.requests_per_s * args.seconds
                        result = dataclasses.replace(
                            result, data_plane_cpu_ms=spent / requests * 1000
                        )
                    results[name, connections] = result
            report(results, args.connections)
            if args.tracing:
                print(
                    f"tracing on, {args.sampled_percent:g}% sampled: "
                    f"{sink.exports} exports, {sink.received_bytes / 1e6:.1f} MB of spans received"
                )
        finally:
            stack.stop()
            stop_process(plain)
            stop_process(upstream)


def report(results: dict[tuple[str, int], Result], connection_counts: list[int]) -> None:
    print(f"\n{'':14}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for (name, connections), r in results.items():
        print(
            f"{name:>6} c={connections:<5}{r.requests_per_s:>10.0f}{r.p50_ms:>10.3f}"
            f"{r.p99_ms:>10.3f}{r.errors:>10}"
        )
    print()
    for connections in connection_counts:
        plain, gatez = results["envoy", connections], results["gatez", connections]
        throughput = gatez.requests_per_s / plain.requests_per_s
        print(
            f"c={connections:<3} gatez/envoy: throughput {throughput:.2f}x, "
            f"p50 {gatez.p50_ms / plain.p50_ms:.2f}x (+{gatez.p50_ms - plain.p50_ms:.3f} ms), "
            f"p99 {gatez.p99_ms / plain.p99_ms:.2f}x (+{gatez.p99_ms - plain.p99_ms:.3f} ms)"
        )
    busiest = max(connection_counts)
    cpu_ms = results["gatez", busiest].data_plane_cpu_ms
    print(
        f"\ndata plane: {cpu_ms:.3f} ms CPU per request at c={busiest}, i.e. at most "
        f"{1000 / cpu_ms:.0f} req/s for one process on a core of its own"
        "\ntargets: added p50 <= 1.0 ms at c=1; >= 2000 req/s per data-plane process"
    )


if __name__ == "__main__":
    main()
