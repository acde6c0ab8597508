"""What a fallback chain costs a healthy call behind Envoy: the same chat through an alias without
fallbacks and through one with a fallback (its first target answering), one connection, wrk.

The chain alias pays the circuit pick (one Redis round trip) and its cluster's upstream ext_proc
(request and response headers of the attempt: two more messages to the data plane). Rounds
alternate the aliases so drift on a shared machine hits both alike; the table shows each
round's p50 and the median of the differences.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import grpc

from bench.chat import provision, start_plain, wait_applied, wrk
from gatez.processes import stop_process
from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2


def add_chain(stack: Stack) -> None:
    """Alias `bench-chain`: the bench upstream's model, then another model of it."""
    channel = grpc.insecure_channel(stack.config.control_address)
    control = control_pb2_grpc.ControlServiceStub(channel)
    md = (("authorization", f"Bearer {stack.config.admin_token}"),)
    route = control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias="bench-chain",
                provider="bench-upstream",
                upstream_model="bench-model",
                fallbacks=[
                    policy_pb2.FallbackTarget(
                        provider="bench-upstream", upstream_model="bench-model-2"
                    )
                ],
            )
        ),
        metadata=md,
    )
    wait_applied(control, md, route.policy_version)
    channel.close()
    # Envoy reads the chain clusters' file a moment after the data plane writes it.
    time.sleep(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gatez-bench-chain-") as tmp:
        work = Path(tmp)
        upstream_port, _, processes = start_plain(work)
        config = StackConfig.ephemeral(work / "stack")
        config.log_level = "WARNING"
        stack = Stack(config)
        try:
            stack.start()
            api_key = provision(stack, upstream_port)
            add_chain(stack)
            url = f"{config.gateway_url}/v1/chat/completions"
            bodies = {
                alias: json.dumps({"model": alias, "messages": [{"role": "user", "content": "hi"}]})
                for alias in ("bench", "bench-chain")
            }
            for body in bodies.values():
                wrk(url, api_key, 1, 2, work, body)  # warm-up
            rows: list[tuple[float, float]] = []
            for _ in range(args.rounds):
                plain = wrk(url, api_key, 1, args.seconds, work, bodies["bench"])
                chain = wrk(url, api_key, 1, args.seconds, work, bodies["bench-chain"])
                assert plain.errors == 0 and chain.errors == 0, (plain, chain)
                rows.append((plain.p50_ms, chain.p50_ms))
        finally:
            stack.stop()
            for process in processes:
                stop_process(process)
    print("| round | alias p50 (ms) | chain alias p50 (ms) | added (ms) |")
    print("|---|---|---|---|")
    for index, (plain_ms, chain_ms) in enumerate(rows, 1):
        print(f"| {index} | {plain_ms:.3f} | {chain_ms:.3f} | {chain_ms - plain_ms:+.3f} |")
    added = statistics.median(chain - plain for plain, chain in rows)
    print(f"\nmedian added p50: {added:+.3f} ms")


if __name__ == "__main__":
    main()
