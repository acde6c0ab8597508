"""`python -m bench.apisix_path`: the APISIX path end to end beside plain APISIX and the Envoy
path, measured in one run.

All of them forward `POST /v1/chat/completions` to the same canned upstream (`bench/upstream.py`):

- **plain APISIX**: a route without plugins (`/plain/*`, path rewritten) on the same APISIX that
  serves Gatez, so both share its worker;
- **APISIX + Gatez**: the runner (ext-plugin-pre-req: API-key auth, a per-tenant rate limit in
  Redis, model routing with a body rewrite) and the gatez plugin (the provider call, usage
  metering of the buffered response, log rows);
- **plain Envoy** and **Envoy + Gatez**, as `bench.chat` runs them.

wrk drives each at 1 and 16 connections; the table shows requests/s and p50/p99, and the ratios
of each Gatez path to its plain proxy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench.chat import Result, provision, start_plain, wrk
from gatez.processes import stop_process
from gatez.stack import Stack, StackConfig

CHAT = "/v1/chat/completions"


def plain_route(upstream_port: int) -> dict[str, object]:
    """APISIX proxying `/plain/...` to the upstream with no plugin but the path rewrite."""
    return {
        "id": "plain",
        "uris": ["/plain/*"],
        "priority": 20,
        "upstream": {"type": "roundrobin", "nodes": {f"127.0.0.1:{upstream_port}": 1}},
        "plugins": {"proxy-rewrite": {"regex_uri": ["^/plain(/.*)", "$1"]}},
    }


def measure(
    targets: dict[str, str], api_key: str, args: argparse.Namespace, work: Path
) -> dict[tuple[str, int], Result]:
    results: dict[tuple[str, int], Result] = {}
    for connections in args.connections:
        for name, url in targets.items():
            wrk(url, api_key, connections, args.warmup, work)
            results[name, connections] = wrk(url, api_key, connections, args.seconds, work)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="gatez-bench-") as tmp:
        work = Path(tmp)
        upstream_port, plain_port, (upstream, plain) = start_plain(work)
        results: dict[tuple[str, int], Result] = {}
        try:
            # One proxy's stack at a time, so the other's processes take no CPU.
            for proxy in ("apisix", "envoy"):
                config = StackConfig.ephemeral(work / f"stack-{proxy}")
                config.log_level = "WARNING"
                config.proxy = proxy
                # Under APISIX, a route without plugins beside Gatez's, on the same worker.
                config.apisix_extra_routes = [plain_route(upstream_port)]
                gatez = f"{config.gateway_url}{CHAT}"
                targets = (
                    {"apisix": f"{config.gateway_url}/plain{CHAT}", "apisix+gatez": gatez}
                    if proxy == "apisix"
                    else {"envoy": f"http://127.0.0.1:{plain_port}{CHAT}", "envoy+gatez": gatez}
                )
                with Stack(config) as stack:
                    results |= measure(targets, provision(stack, upstream_port), args, work)
        finally:
            stop_process(plain)
            stop_process(upstream)
    report(results, args.connections)


def report(results: dict[tuple[str, int], Result], connection_counts: list[int]) -> None:
    print(f"\n{'':20}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>10}")
    for (name, connections), r in sorted(results.items(), key=lambda item: item[0][1]):
        print(
            f"{name:>12} c={connections:<5}{r.requests_per_s:>10.0f}{r.p50_ms:>10.3f}"
            f"{r.p99_ms:>10.3f}{r.errors:>10}"
        )
    print()
    for connections in connection_counts:
        for plain_name, gatez_name in (
            ("apisix", "apisix+gatez"),
            ("envoy", "envoy+gatez"),
            ("envoy+gatez", "apisix+gatez"),
        ):
            plain, gatez = results[plain_name, connections], results[gatez_name, connections]
            print(
                f"c={connections:<3} {gatez_name}/{plain_name}: "
                f"throughput {gatez.requests_per_s / plain.requests_per_s:.2f}x, "
                f"p50 {gatez.p50_ms / plain.p50_ms:.2f}x (+{gatez.p50_ms - plain.p50_ms:.3f} ms), "
                f"p99 {gatez.p99_ms / plain.p99_ms:.2f}x (+{gatez.p99_ms - plain.p99_ms:.3f} ms)"
            )


if __name__ == "__main__":
    main()
