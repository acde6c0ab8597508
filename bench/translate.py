"""`python -m bench.translate`: what schema translation costs, against plain Envoy in one run.

One canned upstream (`bench/upstream.py --streams`) answers OpenAI Chat Completions and
Anthropic Messages, plain and streamed. Measured in one run, on one machine:

- **passthrough**: an OpenAI client to an OpenAI provider through Envoy + Gatez, beside plain
  Envoy forwarding the same request to the same OpenAI answer (wrk, 1 and 16 connections);
- **translated**: an OpenAI client to an Anthropic provider (the request translated to Messages,
  the recorded Messages answer translated back), beside plain Envoy forwarding to the same
  Anthropic answer (wrk);
- **streamed**: each of those streamed, `--chunks` text deltas a stream, `--interval-us` apart,
  one stream at a time; the client reads each delta's send time from its text (the upstream
  stamps it; text survives translation), so it gets time to first token and every chunk's
  latency, and reports what Gatez adds to plain Envoy's (p50) and what translation adds to the
  passthrough stream.

`--rounds N` measures every target N times, alternating, and reports each figure's median: on a
shared machine, a neighbour's load then weighs on each target alike.

The data plane's CPU time (from /proc) over each Gatez run, divided by the requests (or the
chunks) it served, is the cost per request (per chunk); translation's share is translated minus
passthrough. Two cross-checks: the data plane driven directly over its ext_proc socket with each
path's messages (`bench.dataplane`'s client: no Envoy, wrk or upstream competing for the cores),
and a micro-benchmark of the translation functions alone (decode + encode of the request, the
answer, and one streamed delta).

Targets (issue 9): translation adds <= 0.15 ms of data-plane CPU per request and <= 50 µs per
streamed chunk.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
import statistics
import tempfile
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import aiohttp
import grpc
import uvloop

from bench.chat import BODY, Result, cpu_seconds, provision, start_plain, wait_applied, wrk
from bench.dataplane import drive
from bench.upstream import ANTHROPIC_RESPONSE, ANTHROPIC_STREAM
from bench.upstream import BODY as OPENAI_ANSWER
from gatez.processes import stop_process
from gatez.stack import Stack, StackConfig
from gatez.translate.schemas import ANTHROPIC_MESSAGES, OPENAI_CHAT, with_model
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

CHAT = "/v1/chat/completions"
MESSAGES = "/v1/messages"
TRANSLATED_ALIAS = "bench-anthropic"
TRANSLATED_BODY = BODY.replace('"model":"bench"', f'"model":"{TRANSLATED_ALIAS}"')
STAMP = re.compile(rb"@(\d+) ")


def provision_anthropic(stack: Stack, upstream_port: int) -> None:
    """An Anthropic provider on the canned upstream, and the alias that reaches it."""
    channel = grpc.insecure_channel(stack.config.control_address)
    control = control_pb2_grpc.ControlServiceStub(channel)
    md = (("authorization", f"Bearer {stack.config.admin_token}"),)
    control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=TRANSLATED_ALIAS,
                kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
                base_url=f"http://127.0.0.1:{upstream_port}",
            ),
            api_key="sk-ant-bench",
        ),
        metadata=md,
    )
    route = control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                alias=TRANSLATED_ALIAS, provider=TRANSLATED_ALIAS, upstream_model="bench-model"
            )
        ),
        metadata=md,
    )
    wait_applied(control, md, route.policy_version)
    channel.close()


# -- streams -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamResult:
    streams: int
    chunks: int
    ttft_p50_ms: float
    chunk_p50_ms: float
    chunk_p99_ms: float
    # Data-plane CPU per stream and per chunk (0 for plain Envoy).
    data_plane_cpu_ms: float = 0.0
    data_plane_cpu_per_chunk_us: float = 0.0


async def _streams(url: str, body: bytes, api_key: str, count: int, chunks: int) -> StreamResult:
    """`count` streams one after another: time to the first delta, and every delta's latency
    (arrival minus the upstream's stamp)."""
    headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    ttft: list[int] = []
    latencies: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(count):
            seen = 0
            buffer = b""
            started = time.monotonic_ns()
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"{url}: {response.status} {await response.read()!r}")
                async for data in response.content.iter_any():
                    now = time.monotonic_ns()
                    buffer += data
                    end = 0
                    for match in STAMP.finditer(buffer):
                        if not seen:
                            ttft.append(now - started)
                        latencies.append(now - int(match.group(1)))
                        seen += 1
                        end = match.end()
                    buffer = buffer[end:]
            if seen != chunks:
                raise RuntimeError(f"{url}: {seen} deltas in a stream, expected {chunks}")
    latencies.sort()
    return StreamResult(
        streams=count,
        chunks=count * chunks,
        ttft_p50_ms=statistics.median(ttft) / 1e6,
        chunk_p50_ms=statistics.median(latencies) / 1e6,
        chunk_p99_ms=latencies[int(len(latencies) * 0.99)] / 1e6,
    )


def streams(url: str, body: str, api_key: str, count: int, chunks: int) -> StreamResult:
    streamed = body[:-1] + ',"stream":true}'
    return asyncio.run(_streams(url, streamed.encode(), api_key, count, chunks))


def direct_cpu(stack: Stack, api_key: str, args: argparse.Namespace) -> tuple[float, float]:
    """Data-plane CPU µs per request, passthrough and translated, with no Envoy, wrk or
    upstream beside it: `bench.dataplane`'s client plays Envoy over the ext_proc socket, with
    each path's request and the upstream's answer."""
    socket = str(stack.config.extproc_socket)
    pid = stack.processes["dataplane"].pid
    paths = {
        "passthrough": (BODY, OPENAI_ANSWER),
        "translated": (TRANSLATED_BODY, ANTHROPIC_RESPONSE.split(b"\r\n\r\n", 1)[1]),
    }
    spent: dict[str, list[float]] = {}
    for body, reply in paths.values():
        uvloop.run(drive(socket, api_key, 1, 8, 1.0, body=body, reply=reply))
    for _ in range(args.rounds):
        for name, (body, reply) in paths.items():
            cpu_before = cpu_seconds(pid)
            done = uvloop.run(drive(socket, api_key, 1, 8, args.direct_seconds, body=body,
                                    reply=reply))  # fmt: skip
            spent.setdefault(name, []).append((cpu_seconds(pid) - cpu_before) / done * 1e6)
    return statistics.median(spent["passthrough"]), statistics.median(spent["translated"])


Measured = TypeVar("Measured", Result, StreamResult)


# -- the translation alone ---------------------------------------------------------------------


def micro(calls: int) -> dict[str, float]:
    """µs per call of what the data plane's translation does, best of 5."""
    request = BODY.encode()
    answer = ANTHROPIC_RESPONSE.split(b"\r\n\r\n", 1)[1]
    delta = ANTHROPIC_STREAM.delta % time.monotonic_ns()

    def translate_request() -> bytes:
        decoded = OPENAI_CHAT.decode_request(request, model="", stream=False)
        return ANTHROPIC_MESSAGES.encode_request(with_model(decoded, "bench-model"))

    def translate_response() -> bytes:
        decoded = ANTHROPIC_MESSAGES.decode_response(answer, model="bench-model")
        return OPENAI_CHAT.encode_response(decoded)

    decoder = ANTHROPIC_MESSAGES.stream_decoder(model="bench-model")
    encoder = OPENAI_CHAT.stream_encoder(include_usage=False)
    encoder.encode(decoder.feed(ANTHROPIC_STREAM.head))

    def translate_chunk() -> bytes:
        return encoder.encode(decoder.feed(delta))

    def best(call: Callable[[], object]) -> float:
        return min(timeit.repeat(call, number=calls, repeat=5)) / calls * 1e6

    return {
        "request (OpenAI -> Anthropic)": best(translate_request),
        "answer (Anthropic -> OpenAI)": best(translate_response),
        "stream delta (Anthropic -> OpenAI)": best(translate_chunk),
    }


def _median(rounds: list[Measured]) -> Measured:
    """Each figure's (low) median over the rounds (the figures of one result need not be one
    round's)."""
    fields = {
        field.name: statistics.median_low(getattr(r, field.name) for r in rounds)
        for field in dataclasses.fields(rounds[0])
    }
    return dataclasses.replace(rounds[0], **fields)


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--streams", type=int, default=100, help="streams per target")
    parser.add_argument("--chunks", type=int, default=100, help="text deltas per stream")
    parser.add_argument("--interval-us", type=int, default=1000, help="between deltas")
    parser.add_argument("--rounds", type=int, default=1, help="alternating; median reported")
    parser.add_argument("--direct-seconds", type=float, default=5)
    parser.add_argument("--micro-calls", type=int, default=20_000)
    args = parser.parse_args()

    upstream_args = ("--streams", f"--chunks={args.chunks}", f"--interval-us={args.interval_us}")
    with tempfile.TemporaryDirectory(prefix="gatez-bench-") as tmp:
        work = Path(tmp)
        upstream_port, plain_port, (upstream, plain) = start_plain(work, upstream_args)
        config = StackConfig.ephemeral(work / "stack")
        config.log_level = "WARNING"
        stack = Stack(config)
        try:
            stack.start()
            api_key = provision(stack, upstream_port)
            provision_anthropic(stack, upstream_port)
            envoy, gatez = f"http://127.0.0.1:{plain_port}", config.gateway_url
            # name -> (url, body, through Gatez)
            targets = {
                "envoy openai": (envoy + CHAT, BODY, False),
                "gatez passthrough": (gatez + CHAT, BODY, True),
                "envoy anthropic": (envoy + MESSAGES, BODY, False),
                "gatez translated": (gatez + CHAT, TRANSLATED_BODY, True),
            }
            data_plane = stack.processes["dataplane"].pid
            rounds: dict[tuple[str, int], list[Result]] = {}
            for connections in args.connections:
                for url, body, _ in targets.values():
                    wrk(url, api_key, connections, args.warmup, work, body)
                # Rounds alternate the targets, so a neighbour's load drifting on a shared
                # machine hits each of them alike; the median round is reported.
                for _ in range(args.rounds):
                    for name, (url, body, through_gatez) in targets.items():
                        cpu_before = cpu_seconds(data_plane)
                        result = wrk(url, api_key, connections, args.seconds, work, body)
                        if through_gatez:
                            spent = cpu_seconds(data_plane) - cpu_before
                            requests = result.requests_per_s * args.seconds
                            result = dataclasses.replace(
                                result, data_plane_cpu_ms=spent / requests * 1000
                            )
                        rounds.setdefault((name, connections), []).append(result)
            results = {key: _median(values) for key, values in rounds.items()}
            stream_rounds: dict[str, list[StreamResult]] = {}
            for url, body, _ in targets.values():
                streams(url, body, api_key, max(args.streams // 10, 2), args.chunks)
            for _ in range(args.rounds):
                for name, (url, body, through_gatez) in targets.items():
                    cpu_before = cpu_seconds(data_plane)
                    result_stream = streams(url, body, api_key, args.streams, args.chunks)
                    if through_gatez:
                        spent_ms = (cpu_seconds(data_plane) - cpu_before) * 1000
                        result_stream = dataclasses.replace(
                            result_stream,
                            data_plane_cpu_ms=spent_ms / result_stream.streams,
                            data_plane_cpu_per_chunk_us=spent_ms * 1000 / result_stream.chunks,
                        )
                    stream_rounds.setdefault(name, []).append(result_stream)
            streamed = {name: _median(values) for name, values in stream_rounds.items()}
            direct = direct_cpu(stack, api_key, args)
        finally:
            stack.stop()
            stop_process(plain)
            stop_process(upstream)
    report(results, streamed, args)
    passthrough_us, translated_us = direct
    print(
        f"\ndata plane driven directly (bench.dataplane's client, 1 connection x 8 streams, "
        f"{args.rounds} x {args.direct_seconds} s alternating, median): CPU per request "
        f"passthrough {passthrough_us:.0f} µs, translated {translated_us:.0f} µs: "
        f"translation adds {translated_us - passthrough_us:+.0f} µs (target <= 150)"
    )
    print(f"\ntranslation alone, µs per call (best of 5, {args.micro_calls} calls):")
    for what, micros in micro(args.micro_calls).items():
        print(f"  {what:36}{micros:8.1f}")


def report(
    results: dict[tuple[str, int], Result],
    streamed: dict[str, StreamResult],
    args: argparse.Namespace,
) -> None:
    print(f"\n{'':24}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'non-2xx':>9}{'DP CPU ms':>11}")
    for (name, connections), r in sorted(results.items(), key=lambda item: item[0][1]):
        cpu = f"{r.data_plane_cpu_ms:11.3f}" if r.data_plane_cpu_ms else ""
        print(
            f"{name:>17} c={connections:<4}{r.requests_per_s:>10.0f}{r.p50_ms:>10.3f}"
            f"{r.p99_ms:>10.3f}{r.errors:>9}{cpu}"
        )
    print()
    for connections in args.connections:
        for plain_name, gatez_name in (
            ("envoy openai", "gatez passthrough"),
            ("envoy anthropic", "gatez translated"),
        ):
            plain, gatez = results[plain_name, connections], results[gatez_name, connections]
            print(
                f"c={connections:<3} {gatez_name}/{plain_name}: "
                f"throughput {gatez.requests_per_s / plain.requests_per_s:.2f}x, "
                f"p50 {gatez.p50_ms / plain.p50_ms:.2f}x ({gatez.p50_ms - plain.p50_ms:+.3f} ms)"
            )
    for connections in args.connections:
        passthrough_ms = results["gatez passthrough", connections].data_plane_cpu_ms
        translated_ms = results["gatez translated", connections].data_plane_cpu_ms
        print(
            f"c={connections:<3} data-plane CPU per request: passthrough {passthrough_ms:.3f} ms,"
            f" translated {translated_ms:.3f} ms: translation adds "
            f"{translated_ms - passthrough_ms:+.3f} ms (target <= 0.15)"
        )

    print(
        f"\nstreams: {args.streams} a target, one at a time, {args.chunks} deltas each,"
        f" {args.interval_us} µs apart"
    )
    print(
        f"{'':20}{'TTFT p50':>10}{'chunk p50':>11}{'chunk p99':>11}"
        f"{'DP CPU/stream':>15}{'DP CPU/chunk':>14}"
    )
    for name, s in streamed.items():
        cpu = (
            f"{s.data_plane_cpu_ms:12.3f} ms{s.data_plane_cpu_per_chunk_us:11.1f} µs"
            if s.data_plane_cpu_ms
            else ""
        )
        print(
            f"{name:>20}{s.ttft_p50_ms:>7.3f} ms{s.chunk_p50_ms:>8.3f} ms"
            f"{s.chunk_p99_ms:>8.3f} ms{cpu}"
        )
    print()
    for plain_name, gatez_name in (
        ("envoy openai", "gatez passthrough"),
        ("envoy anthropic", "gatez translated"),
    ):
        base, through = streamed[plain_name], streamed[gatez_name]
        print(
            f"{gatez_name}/{plain_name}: TTFT {through.ttft_p50_ms / base.ttft_p50_ms:.2f}x "
            f"({through.ttft_p50_ms - base.ttft_p50_ms:+.3f} ms), chunk p50 "
            f"{through.chunk_p50_ms / base.chunk_p50_ms:.2f}x "
            f"({(through.chunk_p50_ms - base.chunk_p50_ms) * 1000:+.0f} µs)"
        )
    same, other = streamed["gatez passthrough"], streamed["gatez translated"]
    print(
        "translation (translated - passthrough stream): "
        f"TTFT {(other.ttft_p50_ms - same.ttft_p50_ms) * 1000:+.0f} µs, "
        f"chunk p50 {(other.chunk_p50_ms - same.chunk_p50_ms) * 1000:+.0f} µs, "
        "data-plane CPU per chunk "
        f"{other.data_plane_cpu_per_chunk_us - same.data_plane_cpu_per_chunk_us:+.1f}"
        " µs (target <= 50)"
    )


if __name__ == "__main__":
    main()
