"""A minimal keep-alive HTTP/1.1 server with canned LLM answers, so the benchmark measures the
gateway and not the upstream.

By default every request gets one OpenAI `chat.completion`. With `--streams`, it also speaks
Anthropic Messages (a path ending in `/messages`: the recorded JSON answer of
`tests/fakes/recordings/anthropic/`) and streams when the body asks (`"stream": true`): the
recorded SSE events (Anthropic) or OpenAI `chat.completion.chunk`s, with `--chunks` text deltas,
each its own HTTP chunk, `--interval-us` apart. Each delta's text is `@<CLOCK_MONOTONIC ns> `
taken as it is written, so a client on the same machine reads how long every chunk took to reach
it, through whichever proxy and translation (text survives translation).

Requests on one connection are answered in order, but not pipelined while a stream is going
(neither wrk nor `bench.translate` pipelines).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

BODY = orjson.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1_763_800_000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "ok", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
    }
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
    + str(len(BODY)).encode()
    + b"\r\n\r\n"
    + BODY
)


RECORDINGS = Path(__file__).resolve().parent.parent / "tests" / "fakes" / "recordings"
MODEL = "bench-model"
STREAM_REQUESTED = re.compile(rb'"stream"\s*:\s*true')
USAGE_REQUESTED = re.compile(rb'"include_usage"\s*:\s*true')


def _recorded(name: str) -> dict[str, Any]:
    """An Anthropic recording's response, its `{{model}}` filled in."""
    raw = (RECORDINGS / "anthropic" / name).read_text().replace("{{model}}", MODEL)
    response: dict[str, Any] = orjson.loads(raw)["response"]
    return response


def _json_response(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
STAMP = b"@%d "


class StreamScript:
    """One streamed answer: what goes out before the deltas, each delta (with `STAMP` in it to
    fill), and what ends it."""

    def __init__(self, head: bytes, delta: bytes, tail: bytes) -> None:
        self.head, self.delta, self.tail = head, delta, tail

    def delta_chunk(self) -> bytes:
        return _chunk(self.delta % time.monotonic_ns())


def _sse(event: dict[str, Any]) -> bytes:
    name = event.get("event")
    data = orjson.dumps(event["data"])
    return (b"event: " + name.encode() + b"\n" if name else b"") + b"data: " + data + b"\n\n"


def anthropic_stream() -> StreamScript:
    """The recorded Anthropic stream, its text deltas replaced by stamped ones."""
    events = _recorded("messages_stream.json")["stream"]["chunks"]
    deltas = [i for i, e in enumerate(events) if e["event"] == "content_block_delta"]
    template = dict(events[deltas[0]], data=dict(events[deltas[0]]["data"]))
    template["data"]["delta"] = {"type": "text_delta", "text": "STAMP"}
    return StreamScript(
        head=b"".join(_sse(e) for e in events[: deltas[0]]),
        delta=_sse(template).replace(b"STAMP", STAMP),
        tail=b"".join(_sse(e) for e in events[deltas[-1] + 1 :]),
    )


def openai_stream(*, include_usage: bool) -> StreamScript:
    """An OpenAI chat stream as the API sends it (`"usage": null` on every chunk when asked)."""
    base = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1_763_800_000,
        "model": MODEL,
        "system_fingerprint": None,
    }

    def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
        body = dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}])  # fmt: skip
        return dict(body, usage=None) if include_usage else body

    tail = [chunk({}, "stop")]
    if include_usage:
        usage = {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}
        tail.append(dict(base, choices=[], usage=usage))
    return StreamScript(
        head=_sse({"data": chunk({"role": "assistant", "content": ""}, None)}),
        delta=_sse({"data": chunk({"content": "STAMP"}, None)}).replace(b"STAMP", STAMP),
        tail=b"".join(_sse({"data": c}) for c in tail) + b"data: [DONE]\n\n",
    )


ANTHROPIC_RESPONSE = _json_response(orjson.dumps(_recorded("messages.json")["body"]))
ANTHROPIC_STREAM = anthropic_stream()
OPENAI_STREAMS = {usage: openai_stream(include_usage=usage) for usage in (False, True)}


class CannedHttp(asyncio.Protocol):
    """Answers each complete request (headers plus content-length bytes) with RESPONSE, or
    with `streams` as the module doc says."""

    def __init__(self, streams: bool = False, chunks: int = 100, interval_s: float = 0.001) -> None:
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None
        self.streams, self.chunks, self.interval_s = streams, chunks, interval_s
        self.streaming: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but they can write.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            total = _request_length(head, self.buffer, end + 4)
            if total is None:
                return
            request, self.buffer = self.buffer[:total], self.buffer[total:]
            assert self.transport is not None
            if not self.streams:
                self.transport.write(RESPONSE)
                continue
            anthropic = head.split(b" ", 2)[1].split(b"?")[0].endswith(b"/messages")
            body = request[end + 4 :]
            if STREAM_REQUESTED.search(body):
                script = (
                    ANTHROPIC_STREAM
                    if anthropic
                    else OPENAI_STREAMS[bool(USAGE_REQUESTED.search(body))]
                )
                self.streaming = asyncio.ensure_future(self.stream(script, self.streaming))
            else:
                self.transport.write(ANTHROPIC_RESPONSE if anthropic else RESPONSE)

    async def stream(self, script: StreamScript, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await previous
        transport = self.transport
        assert transport is not None
        transport.write(STREAM_HEAD + _chunk(script.head))
        for _ in range(self.chunks):
            if transport.is_closing():
                return
            transport.write(script.delta_chunk())
            await asyncio.sleep(self.interval_s)
        transport.write(_chunk(script.tail) + b"0\r\n\r\n")


def _request_length(head: bytes, buffer: bytes, body_start: int) -> int | None:
    """Bytes of the first request in `buffer` (content-length or chunked), None if incomplete."""
    if b"transfer-encoding: chunked" in head:
        position = body_start
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                return None
            size = int(buffer[position:line_end].split(b";")[0], 16)
            position = line_end + 2 + size + 2
            if position > len(buffer):
                return None
            if size == 0:
                return position
    marker = head.find(b"content-length:")
    length = int(head[marker + 15 :].split(b"\r\n", 1)[0]) if marker >= 0 else 0
    total = body_start + length
    return total if len(buffer) >= total else None


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: CannedHttp(args.streams, args.chunks, args.interval_us / 1e6),
        "127.0.0.1",
        args.port,
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("--streams", action="store_true")
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--interval-us", type=int, default=1000)
    uvloop.run(serve(parser.parse_args()))
