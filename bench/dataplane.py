"""`python -m bench.dataplane`: requests/s one data-plane process serves, driven directly.

`bench.chat` measures through Envoy, where on a small machine Envoy, wrk, the upstream and Redis
share the cores with the data plane, so the end-to-end rate says little about the data plane's
own capacity. Here a lean client plays Envoy's ext_proc side over the data plane's Unix socket —
per request one gRPC stream with the four messages of the chat path (request headers, the
buffered request body, response headers, the buffered response body), each sent after the
previous answer, as Envoy does — against the real stack (control service, Redis, the full
pipeline: API-key auth, the Redis rate limit, model routing, usage, log rows shipped to the
control service). It prints requests/s and the data plane's CPU per request.

It measures twice by default (`--tracing both`): with tracing off (no OTEL endpoint: what every
request pays for the pipeline's own counters), and on — the data plane exporting over OTLP to a
local endpoint that accepts and discards, every request sampled, each ext_proc stream carrying a
`traceparent` of its own as Envoy's tracer sends it (which also defeats the HTTP/2 server's
decoded-header-block cache) — and prints what tracing adds per request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import struct
import tempfile
import time
from pathlib import Path
from typing import cast

import uvloop
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from bench.chat import BODY, cpu_seconds, provision
from bench.otlp_sink import OtlpSink
from bench.upstream import BODY as REPLY
from gatez.stack import Stack, StackConfig
from tests.support.redis_cluster import LocalRedisCluster

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
END_STREAM, END_HEADERS, ACK = 0x1, 0x4, 0x1


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def literal(name: bytes, value: bytes) -> bytes:
    # Literal without indexing, new name, lengths < 127: the block is the same for every stream.
    return bytes((0, len(name))) + name + bytes((len(value),)) + value


GRPC_HEADERS = (
    b"\x83\x86"  # :method POST, :scheme http
    + literal(b":path", b"/envoy.service.ext_proc.v3.ExternalProcessor/Process")
    + literal(b":authority", b"gatez_extproc")
    + literal(b"content-type", b"application/grpc")
    + literal(b"te", b"trailers")
)


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> ext_proc.HttpHeaders:
    return ext_proc.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        ),
        end_of_stream=end_of_stream,
    )


def messages(api_key: str, body: str = BODY, reply: bytes = REPLY) -> list[bytes]:
    """The chat path's four ext_proc messages, each as a gRPC length-prefixed message: the
    request `body`, answered with the JSON `reply`."""
    requests = [
        ext_proc.ProcessingRequest(
            request_headers=headers(
                (":method", "POST"),
                (":path", "/v1/chat/completions"),
                (":authority", "127.0.0.1:9080"),
                (":scheme", "http"),
                ("x-request-id", "bench-request"),
                ("content-type", "application/json"),
                ("authorization", f"Bearer {api_key}"),
                ("content-length", str(len(body))),
            )
        ),
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=body.encode(), end_of_stream=True)
        ),
        ext_proc.ProcessingRequest(
            response_headers=headers(
                (":status", "200"),
                ("content-type", "application/json"),
                ("content-length", str(len(reply))),
            )
        ),
        ext_proc.ProcessingRequest(response_body=ext_proc.HttpBody(body=reply, end_of_stream=True)),
    ]
    out = []
    for request in requests:
        payload = request.SerializeToString()
        out.append(struct.pack(">BI", 0, len(payload)) + payload)
    return out


# What the data plane must answer to each message when the request passes every stage.
EXPECTED = ("request_headers", "request_body", "response_headers", "response_body")


class ExtProcClient(asyncio.Protocol):
    """One HTTP/2 connection playing Envoy's ext_proc client, just enough of it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.streams: dict[int, asyncio.Queue[bytes | int]] = {}
        self.next_id = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        settings = struct.pack(">HIHI", 4, 2**31 - 1, 5, 16_384)
        self.write(
            PREFACE
            + frame(SETTINGS, 0, 0, settings)
            + frame(WINDOW_UPDATE, 0, 0, (2**31 - 1 - 65_535).to_bytes(4, "big"))
        )

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= 9:
            length = int.from_bytes(buffer[offset : offset + 3], "big")
            if len(buffer) - offset < 9 + length:
                break
            kind, flags = buffer[offset + 3], buffer[offset + 4]
            stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
            payload = bytes(buffer[offset + 9 : offset + 9 + length])
            offset += 9 + length
            if kind == SETTINGS and not flags & ACK:
                self.write(frame(SETTINGS, ACK, 0))
            elif kind == PING and not flags & ACK:
                self.write(frame(PING, ACK, 0, payload))
            elif kind == DATA and stream_id in self.streams:
                self.streams[stream_id].put_nowait(payload[5:])  # one message per frame here
            elif kind in (HEADERS, RST_STREAM) and stream_id in self.streams:
                ended = kind == RST_STREAM or flags & END_STREAM
                if ended:
                    self.streams.pop(stream_id).put_nowait(kind)
            elif kind == GOAWAY:
                raise RuntimeError(f"data plane sent GOAWAY: {payload!r}")
        del buffer[:offset]

    async def request(self, parts: list[bytes], traceparent: bytes | None = None) -> None:
        """One ext_proc stream: each message after the previous answer, then the trailers."""
        stream_id, self.next_id = self.next_id, self.next_id + 2
        events: asyncio.Queue[bytes | int] = asyncio.Queue()
        self.streams[stream_id] = events
        block = GRPC_HEADERS
        if traceparent is not None:
            block += literal(b"traceparent", traceparent)
        self.write(frame(HEADERS, END_HEADERS, stream_id, block))
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            self.write(frame(DATA, END_STREAM if last else 0, stream_id, part))
            answer = await events.get()
            if not isinstance(answer, bytes):
                raise RuntimeError(f"stream {stream_id} ended before its answer {index}")
            # Checked, so a refused request (an immediate 401/429) cannot pass for a fast one.
            phase = ext_proc.ProcessingResponse.FromString(answer).WhichOneof("response")
            if phase != EXPECTED[index]:
                raise RuntimeError(f"answer {index} was {phase}, not {EXPECTED[index]}")
        if await events.get() != HEADERS:
            raise RuntimeError(f"stream {stream_id} was reset")


def traceparent(sampled_percent: float) -> bytes:
    """A W3C trace context as Envoy's tracer puts on an ext_proc stream."""
    flags = "01" if random.random() * 100 < sampled_percent else "00"
    return f"00-{random.getrandbits(128):032x}-{random.getrandbits(64):016x}-{flags}".encode()


async def drive(
    socket: str,
    api_key: str,
    connections: int,
    streams: int,
    seconds: float,
    sampled_percent: float | None = None,
    body: str = BODY,
    reply: bytes = REPLY,
) -> int:
    """Requests done in `seconds`; with `sampled_percent`, each stream carries a traceparent."""
    parts = messages(api_key, body, reply)
    loop = asyncio.get_running_loop()
    clients = [
        (await loop.create_unix_connection(ExtProcClient, socket))[1] for _ in range(connections)
    ]
    deadline = time.monotonic() + seconds
    done = 0

    async def worker(client: ExtProcClient) -> None:
        nonlocal done
        while time.monotonic() < deadline:
            context = None if sampled_percent is None else traceparent(sampled_percent)
            await client.request(parts, context)
            done += 1

    await asyncio.gather(*(worker(c) for c in clients for _ in range(streams)))
    for client in clients:
        if client.transport is not None:
            client.transport.close()
    return done


def measure(args: argparse.Namespace, traced: bool) -> tuple[float, float]:
    """Requests/s and data-plane CPU ms per request, tracing off or on."""
    with (
        tempfile.TemporaryDirectory(prefix="gatez-bench-dp-") as tmp,
        OtlpSink() as sink,
        contextlib.ExitStack() as on_exit,
    ):
        # The cluster runs before the stack picks its free ports, so none of them collide.
        cluster = (
            on_exit.enter_context(LocalRedisCluster(Path(tmp) / "redis-cluster"))
            if args.redis_cluster
            else None
        )
        config = StackConfig.ephemeral(Path(tmp) / "stack")
        config.log_level = "WARNING"
        if cluster is not None:
            config.external_redis_url = cluster.seed_url
            config.redis_password = cluster.password
        sampled: float | None = None
        if traced:
            config.extra_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink.endpoint
            sampled = args.sampled_percent
        stack = Stack(config)
        try:
            stack.start()
            # Routed to a port nobody serves: the client answers for the upstream.
            api_key = provision(stack, upstream_port=9)
            socket = str(config.extproc_socket)
            pid = stack.processes["dataplane"].pid
            drive_for = (args.connections, args.streams)
            uvloop.run(drive(socket, api_key, *drive_for, 1.0, sampled))  # warm-up
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            requests = uvloop.run(drive(socket, api_key, *drive_for, args.seconds, sampled))
            elapsed = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
        finally:
            stack.stop()
        if traced and args.sampled_percent > 0 and not sink.exports:
            raise RuntimeError("tracing was on, but no span reached the OTLP endpoint")
    return requests / elapsed, cpu / requests * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=2, help="as Envoy's workers")
    parser.add_argument("--streams", type=int, default=8, help="concurrent streams each")
    parser.add_argument(
        "--redis-cluster", action="store_true", help="Redis as a local 3-node Redis Cluster"
    )
    parser.add_argument("--tracing", choices=("off", "on", "both"), default="both")
    parser.add_argument(
        "--sampled-percent",
        type=float,
        default=100.0,
        help="with tracing on: the share of requests whose traceparent says sampled",
    )
    args = parser.parse_args()
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.tracing]
    results = {traced: measure(args, traced) for traced in modes}
    print(
        f"\none data-plane process, {args.connections} connections x {args.streams} streams"
        f"{', Redis Cluster' if args.redis_cluster else ''}:"
    )
    for traced, (rate, cpu_ms) in results.items():
        label = f"tracing on ({args.sampled_percent:g}% sampled)" if traced else "tracing off"
        print(f"  {label:<28} {rate:>7,.0f} requests/s, {cpu_ms:.3f} ms CPU per request")
    if len(results) == 2:
        (off_rate, off_cpu), (on_rate, on_cpu) = results[False], results[True]
        print(
            f"  tracing adds {on_cpu - off_cpu:+.3f} ms CPU per request "
            f"({on_rate / off_rate - 1:+.0%} requests/s)"
        )
    print("target: >= 2000 requests/s per data-plane process (tracing off)")


if __name__ == "__main__":
    main()
