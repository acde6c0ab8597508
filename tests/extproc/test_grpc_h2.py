"""The lean gRPC server (`extproc.grpc_h2`), driven two ways.

The official grpcio client does what Envoy's gRPC client does: many messages and many streams,
messages of several MB through flow control, status details, cancellation, shutdown. A client
that writes HTTP/2 frames by hand reaches what grpcio never sends: padding, CONTINUATION, PING,
small windows and frame sizes, compressed messages, protocol errors. It checks every frame the
server sends against the limits it advertised. The `h2` library, an independent HTTP/2
implementation, checks one mixed exchange end to end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import socket
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import pytest
from grpc.aio import EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

from extproc.grpc_h2 import (
    ENVOY_BODY_LIMIT,
    GRPC_INTERNAL,
    HEADER_CACHE_BYTES,
    HEADER_CACHE_ENTRIES,
    MAX_MESSAGE_BYTES,
    GrpcServer,
    H2Connection,
    Limits,
    MethodFactory,
    ServerStream,
    StreamHandler,
    remove_stale_socket,
)

# Every test is bounded by this; the slowest (several MB through grpcio) needs well under it.
TIMEOUT_S = 10.0

ECHO = "/test.Probe/Echo"
FAIL = "/test.Probe/Fail"
SLOW = "/test.Probe/Slow"
HELD = "/test.Probe/Held"
SIZED = "/test.Probe/Sized"
PROBE = "/test.Probe/Header"
RAISE_ON_OPEN = "/test.Probe/RaiseOnOpen"
RAISE_ON_MESSAGE = "/test.Probe/RaiseOnMessage"
RAISE_ON_END = "/test.Probe/RaiseOnEnd"

# HTTP/2 as RFC 9113 numbers it, spelled out here rather than imported from the code under test.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
HEADER_TABLE_SIZE, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 4, 5
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR = 0, 1, 3, 6
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 7, 8, 9, 11
MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE = 3, 6
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = 2**31 - 1

GRPC_UNIMPLEMENTED = 12
GRPC_RESOURCE_EXHAUSTED = 8
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    ("grpc.enable_http_proxy", 0),
]
LATE_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]


# --- handlers the tests serve ---


@dataclass
class Calls:
    """What the test handlers saw; tests await the events instead of sleeping."""

    opened: int = 0
    messages: list[bytes] = field(default_factory=list)
    ends: int = 0
    resets: int = 0
    cancelled: int = 0
    started: asyncio.Event = field(default_factory=asyncio.Event)
    reset: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)


class Recording:
    """Counts a stream's lifecycle into `Calls`."""

    def __init__(self, stream: ServerStream, calls: Calls) -> None:
        self._stream = stream
        self._calls = calls
        calls.opened += 1

    def on_message(self, message: bytes) -> None:
        self._calls.messages.append(message)

    def on_end(self) -> None:
        self._calls.ends += 1

    def on_reset(self) -> None:
        self._calls.resets += 1
        self._calls.reset.set()


class Echo(Recording):
    """Answers each message with itself; finishes OK when the client half-closes."""

    def on_message(self, message: bytes) -> None:
        super().on_message(message)
        self._stream.send_message(message)

    def on_end(self) -> None:
        super().on_end()
        self._stream.finish()


class Fail(Recording):
    """Finishes with the status in the first message: one byte of code, then UTF-8 details."""

    def on_message(self, message: bytes) -> None:
        super().on_message(message)
        self._stream.finish(message[0], message[1:].decode())


class Sized(Recording):
    """Answers a 4-byte size with that many bytes of `payload` and finishes: big responses."""

    def on_message(self, message: bytes) -> None:
        super().on_message(message)
        self._stream.send_message(payload(int.from_bytes(message, "big")))
        self._stream.finish()


class Deferred(Recording):
    """Answers each message from a task of its own after `wait()`: a stage that awaits I/O."""

    def __init__(
        self, stream: ServerStream, calls: Calls, wait: Callable[[], Awaitable[object]]
    ) -> None:
        super().__init__(stream, calls)
        self._wait = wait
        self._pending = 0
        self._ended = False
        self._tasks: list[asyncio.Task[bytes]] = []

    def on_message(self, message: bytes) -> None:
        super().on_message(message)
        self._pending += 1
        task = asyncio.ensure_future(self._answer(message))
        task.add_done_callback(self._answered)
        self._tasks.append(task)
        self._calls.started.set()

    async def _answer(self, message: bytes) -> bytes:
        try:
            await self._wait()
        except asyncio.CancelledError:
            self._calls.cancelled += 1
            raise
        return message

    def _answered(self, task: asyncio.Task[bytes]) -> None:
        self._pending -= 1
        if task.cancelled():
            return  # counted as it happened, in _answer
        if (error := task.exception()) is not None:
            self._stream.finish(GRPC_INTERNAL, repr(error))
        else:
            self._stream.send_message(task.result())
            self._finish_when_done()

    def on_end(self) -> None:
        super().on_end()
        self._ended = True
        self._finish_when_done()

    def _finish_when_done(self) -> None:
        if self._ended and not self._pending:
            self._stream.finish()

    def on_reset(self) -> None:
        for task in self._tasks:
            task.cancel()
        super().on_reset()


class HeaderProbe(Recording):
    """Answers with the request's `x-probe` header as soon as the stream opens."""

    def __init__(self, stream: ServerStream, calls: Calls) -> None:
        super().__init__(stream, calls)
        stream.send_message(stream.headers.get("x-probe", "").encode())
        stream.finish()


# What a failing handler's exception says; the peer must never see it.
SECRET = "secret detail of a failure"


class RaiseOn(Echo):
    """An echo that raises where `where` says: when opened, on the message b"raise", or on the
    client's half-close."""

    def __init__(self, stream: ServerStream, calls: Calls, where: str) -> None:
        if where == "open":
            raise RuntimeError(SECRET)
        super().__init__(stream, calls)
        self._where = where

    def on_message(self, message: bytes) -> None:
        if message == b"raise":
            raise RuntimeError(SECRET)
        super().on_message(message)

    def on_end(self) -> None:
        if self._where == "end":
            raise RuntimeError(SECRET)
        super().on_end()


def methods(calls: Calls) -> dict[str, MethodFactory]:
    def factory(make: Callable[[ServerStream], StreamHandler]) -> MethodFactory:
        return make

    return {
        ECHO: factory(lambda stream: Echo(stream, calls)),
        FAIL: factory(lambda stream: Fail(stream, calls)),
        SIZED: factory(lambda stream: Sized(stream, calls)),
        PROBE: factory(lambda stream: HeaderProbe(stream, calls)),
        SLOW: factory(lambda stream: Deferred(stream, calls, lambda: asyncio.sleep(0.01))),
        HELD: factory(lambda stream: Deferred(stream, calls, calls.release.wait)),
        RAISE_ON_OPEN: factory(lambda stream: RaiseOn(stream, calls, "open")),
        RAISE_ON_MESSAGE: factory(lambda stream: RaiseOn(stream, calls, "message")),
        RAISE_ON_END: factory(lambda stream: RaiseOn(stream, calls, "end")),
    }


def payload(size: int) -> bytes:
    """Bytes no two offsets of which repeat in step, so a misplaced frame cannot go unnoticed."""
    return random.Random(size).randbytes(size)


# --- fixtures ---


@dataclass
class Served:
    server: GrpcServer
    path: str
    calls: Calls

    @property
    def address(self) -> str:
        return f"unix:{self.path}"


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Not tmp_path: a Unix socket path must stay under ~107 bytes, and test ids are long.
    with tempfile.TemporaryDirectory(prefix="h2-") as name:
        yield Path(name)


@pytest.fixture
async def served(socket_dir: Path) -> AsyncIterator[Served]:
    calls = Calls()
    server = GrpcServer(methods(calls))
    path = str(socket_dir / "grpc.sock")
    await server.listen(f"unix:{path}")
    yield Served(server, path, calls)
    connections = list(server.connections)
    await server.stop(0)
    async with asyncio.timeout(TIMEOUT_S):
        for connection in connections:
            await connection.closed.wait()
    # Whatever a test did, everything it made the server hold was given back.
    assert (server.streams, server.held_bytes) == (0, 0)


@pytest.fixture
async def channel(served: Served) -> AsyncIterator[grpc.aio.Channel]:
    channel = grpc.aio.insecure_channel(served.address, options=CHANNEL_OPTIONS)
    yield channel
    await channel.close(None)


# --- the grpcio client ---


def open_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.StreamStreamCall[Any, Any]:
    return channel.stream_stream(method, request_serializer=None, response_deserializer=None)(None)


async def read(call: grpc.aio.StreamStreamCall[Any, Any]) -> bytes:
    message = await call.read()
    assert isinstance(message, bytes), message
    return message


async def test_grpcio_echoes_many_messages_on_one_stream(channel: grpc.aio.Channel) -> None:
    messages = [b"", b"x", *(f"message {n}".encode() * (n % 7) for n in range(500))]
    async with asyncio.timeout(TIMEOUT_S):
        call = open_call(channel, ECHO)

        async def write_all() -> None:
            for message in messages:
                await call.write(message)
            await call.done_writing()

        writer = asyncio.create_task(write_all())
        answers = [await read(call) for _ in messages]
        await writer
        assert answers == messages
        assert await call.read() is EOF
        assert await call.code() == grpc.StatusCode.OK


async def test_grpcio_runs_many_streams_at_once(channel: grpc.aio.Channel, served: Served) -> None:
    async def one(n: int) -> tuple[bytes, grpc.StatusCode]:
        call = open_call(channel, SLOW)
        await call.write(f"stream {n}".encode())
        await call.done_writing()
        return await read(call), await call.code()

    async with asyncio.timeout(TIMEOUT_S):
        results = await asyncio.gather(*(one(n) for n in range(200)))
    assert results == [(f"stream {n}".encode(), grpc.StatusCode.OK) for n in range(200)]
    assert served.calls.opened == 200
    assert served.calls.ends == 200
    assert served.calls.resets == 0


@pytest.mark.parametrize("streams", [1, 3])
async def test_grpcio_round_trips_messages_of_several_megabytes(
    channel: grpc.aio.Channel, streams: int
) -> None:
    # Far over 65,535 and grpcio's windows: DATA is split at the peer's frame size and the
    # response waits for WINDOW_UPDATEs; with 3 streams they share the connection window.
    async def one(size: int) -> None:
        message = payload(size)
        call = open_call(channel, ECHO)
        await call.write(message)
        await call.done_writing()
        assert await read(call) == message
        assert await call.code() == grpc.StatusCode.OK

    async with asyncio.timeout(TIMEOUT_S):
        await asyncio.gather(*(one(6_000_000 + n) for n in range(streams)))


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (grpc.StatusCode.PERMISSION_DENIED, "100% denied"),
        (grpc.StatusCode.INVALID_ARGUMENT, "naïve café ☃ — 日本語"),
        (grpc.StatusCode.INTERNAL, "%41%%25 stays literal"),
        (grpc.StatusCode.NOT_FOUND, "tab\tnewline\ndelete\x7f"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, " ~!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}"),
        (grpc.StatusCode.UNAVAILABLE, ""),
    ],
)
async def test_grpcio_receives_status_and_percent_encoded_details(
    channel: grpc.aio.Channel, code: grpc.StatusCode, details: str
) -> None:
    number = code.value[0]
    assert isinstance(number, int)
    async with asyncio.timeout(TIMEOUT_S):
        call = open_call(channel, FAIL)
        await call.write(bytes((number,)) + details.encode())
        assert await call.code() == code
        assert await call.details() == details


async def test_grpcio_gets_unimplemented_for_an_unknown_method(
    channel: grpc.aio.Channel, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        # No write: grpcio can report INTERNAL ("Internal error from Core") instead of the status
        # when a write is in flight as the server ends the call, whatever the server.
        call = open_call(channel, "/test.Probe/Missing")
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await call.details() == "unknown method '/test.Probe/Missing'"
    assert served.calls.opened == 0


async def test_grpcio_cancellation_resets_the_handler(
    channel: grpc.aio.Channel, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        call = open_call(channel, HELD)
        await call.write(b"never answered")
        await served.calls.started.wait()
        call.cancel()
        await served.calls.reset.wait()
    assert served.calls.cancelled == 1
    assert await call.code() == grpc.StatusCode.CANCELLED


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("transport", ["unix", "tcp"])
async def test_stop_lets_the_stream_in_flight_finish_and_refuses_new_ones(
    socket_dir: Path, transport: str
) -> None:
    calls = Calls()
    server = GrpcServer(methods(calls))
    address = f"unix:{socket_dir}/stop.sock" if transport == "unix" else f"127.0.0.1:{free_port()}"
    await server.listen(address)
    try:
        async with (
            asyncio.timeout(TIMEOUT_S),
            grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
        ):
            held = open_call(channel, HELD)
            await held.write(b"in flight")
            await calls.started.wait()
            # A grace far beyond the test's timeout: stop() must return when the stream is done.
            stopping = asyncio.create_task(server.stop(60))
            await asyncio.sleep(0)  # stop() closes the listener before its first await

            # Refused on the channel that saw GOAWAY, and on a new one (its own subchannel
            # pool, or grpcio would share the draining connection). No writes: see above.
            assert await open_call(channel, ECHO).code() == grpc.StatusCode.UNAVAILABLE
            async with grpc.aio.insecure_channel(address, options=LATE_OPTIONS) as late:
                assert await open_call(late, ECHO).code() == grpc.StatusCode.UNAVAILABLE

            calls.release.set()
            assert await read(held) == b"in flight"
            await held.done_writing()
            assert await held.code() == grpc.StatusCode.OK
            await stopping
        assert calls.opened == 1
        assert calls.resets == 0
    finally:
        await server.stop(0)


async def test_stop_drops_a_stream_that_outlives_the_grace(
    channel: grpc.aio.Channel, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        held = open_call(channel, HELD)
        await held.write(b"stuck")
        await served.calls.started.wait()
        await served.server.stop(0.05)
        await served.calls.reset.wait()
        assert await held.code() == grpc.StatusCode.UNAVAILABLE
    assert served.calls.cancelled == 1
    assert not served.server.connections


async def test_listen_replaces_a_stale_socket_file(socket_dir: Path) -> None:
    path = socket_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(path))  # a socket file nobody listens on, as a crashed process leaves
    server = GrpcServer(methods(Calls()))
    await server.listen(f"unix:{path}")
    try:
        async with (
            asyncio.timeout(TIMEOUT_S),
            grpc.aio.insecure_channel(f"unix:{path}", options=CHANNEL_OPTIONS) as channel,
        ):
            call = open_call(channel, ECHO)
            await call.write(b"served")
            assert await read(call) == b"served"
    finally:
        await server.stop(0)


async def test_listen_refuses_to_remove_a_file_that_is_not_a_socket(socket_dir: Path) -> None:
    path = socket_dir / "precious.txt"
    path.write_text("keep me")
    with pytest.raises(FileExistsError):
        await GrpcServer({}).listen(f"unix:{path}")
    assert path.read_text() == "keep me"


def test_remove_stale_socket_ignores_a_missing_path(socket_dir: Path) -> None:
    remove_stale_socket(str(socket_dir / "absent.sock"))
    assert not (socket_dir / "absent.sock").exists()


# --- a client that writes frames by hand ---


class Frame(NamedTuple):
    kind: int
    flags: int
    stream_id: int
    payload: bytes


def encode_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes((kind, flags))
        + struct.pack(">I", stream_id)
        + payload
    )


def grpc_message(body: bytes, *, compressed: bool = False) -> bytes:
    return struct.pack(">BI", int(compressed), len(body)) + body


def size_request(size: int) -> bytes:
    return grpc_message(size.to_bytes(4, "big"))


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[start:end] for start, end in itertools.pairwise(bounds)]


def error_code(goaway: Frame) -> int:
    return int.from_bytes(goaway.payload[4:8], "big")


@dataclass
class Response:
    """One stream's response as the raw client saw it."""

    header_frames: list[Frame] = field(default_factory=list)
    header_blocks: list[dict[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    data_frames: list[int] = field(default_factory=list)
    ended: bool = False
    reset: int | None = None

    @property
    def trailers(self) -> dict[str, str]:
        assert self.ended, "the stream did not end"
        return self.header_blocks[-1]

    @property
    def status(self) -> int:
        return int(self.trailers["grpc-status"])

    @property
    def details(self) -> str:
        return unquote(self.trailers.get("grpc-message", ""))

    @property
    def messages(self) -> list[bytes]:
        data, messages = bytes(self.data), []
        while data:
            compressed, length = struct.unpack_from(">BI", data)
            assert not compressed
            messages.append(data[5 : 5 + length])
            data = data[5 + length :]
        return messages


class RawClient:
    """An HTTP/2 client driven frame by frame over a Unix socket.

    A reader task takes every frame the server sends, checks it against the limits this client
    advertised (MAX_FRAME_SIZE, the flow-control windows), acknowledges SETTINGS, gives back
    window credit when `replenish` is set, and queues the frame for the test.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        settings: Mapping[int, int],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.initial_window = settings.get(INITIAL_WINDOW_SIZE, 65_535)
        self.max_frame = settings.get(MAX_FRAME_SIZE, 16_384)
        self.windows: dict[int, int] = {0: 65_535}
        self.replenish = True
        self.frames: asyncio.Queue[Frame | BaseException | None] = asyncio.Queue()
        self._reading = asyncio.get_running_loop().create_task(self._read_frames())

    @classmethod
    async def connect(
        cls, path: str, settings: Mapping[int, int] | None = None, *, preface: bytes = PREFACE
    ) -> RawClient:
        settings = dict(settings or {})
        reader, writer = await asyncio.open_unix_connection(path)
        client = cls(reader, writer, settings)
        if preface == PREFACE:
            body = b"".join(struct.pack(">HI", key, value) for key, value in settings.items())
            writer.write(preface + encode_frame(SETTINGS, 0, 0, body))
        else:
            writer.write(preface)
        return client

    async def close(self) -> None:
        self._reading.cancel()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()

    async def _read_frames(self) -> None:
        try:
            while True:
                head = await self._reader.readexactly(9)
                length = int.from_bytes(head[:3], "big")
                if length > self.max_frame:
                    raise AssertionError(f"a {length}-byte frame exceeds our {self.max_frame}")
                frame = Frame(
                    head[3],
                    head[4],
                    int.from_bytes(head[5:9], "big") & 0x7FFFFFFF,
                    await self._reader.readexactly(length),
                )
                if frame.kind == DATA:
                    self._account(frame)
                elif frame.kind == SETTINGS and not frame.flags & ACK:
                    self.send(SETTINGS, ACK, 0)
                self.frames.put_nowait(frame)
        except asyncio.IncompleteReadError as error:
            if error.partial:
                self.frames.put_nowait(AssertionError("connection closed mid-frame"))
            self.frames.put_nowait(None)
        except ConnectionError:
            self.frames.put_nowait(None)
        except AssertionError as error:
            self.frames.put_nowait(error)

    def _account(self, frame: Frame) -> None:
        size = len(frame.payload)
        self.windows[0] -= size
        window = self.windows.setdefault(frame.stream_id, self.initial_window) - size
        self.windows[frame.stream_id] = window
        if self.windows[0] < 0 or window < 0:
            raise AssertionError(f"DATA overran the window: {self.windows}")
        if self.replenish and size:
            self.grant(frame.stream_id, size)
            self.grant(0, size)

    def send(self, kind: int, flags: int, stream_id: int, payload: bytes = b"") -> None:
        self._writer.write(encode_frame(kind, flags, stream_id, payload))

    def grant(self, stream_id: int, increment: int) -> None:
        self.windows[stream_id] = self.windows.get(stream_id, self.initial_window) + increment
        self.send(WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big"))

    def change_initial_window(self, value: int) -> None:
        delta, self.initial_window = value - self.initial_window, value
        for stream_id in self.windows:
            if stream_id:
                self.windows[stream_id] += delta
        self.send(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, value))

    def request_headers(
        self,
        path: str = ECHO,
        *,
        method: str = "POST",
        content_type: str | None = "application/grpc",
        extra: Sequence[tuple[str, str]] = (),
    ) -> bytes:
        fields = [(":method", method), (":scheme", "http"), (":path", path)]
        fields += [(":authority", "gatez.test"), ("te", "trailers")]
        if content_type is not None:
            fields.append(("content-type", content_type))
        return self.encoder.encode([*fields, *extra])

    def open_stream(self, stream_id: int, path: str = ECHO, *, end_stream: bool = False) -> None:
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.send(HEADERS, flags, stream_id, self.request_headers(path))

    def send_data(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """DATA in 16 KiB frames, as Envoy sends it."""
        pieces = [data[start : start + 16_384] for start in range(0, len(data), 16_384)] or [b""]
        for piece in pieces[:-1]:
            self.send(DATA, 0, stream_id, piece)
        self.send(DATA, END_STREAM if end_stream else 0, stream_id, pieces[-1])

    def call(self, stream_id: int, path: str, *messages: bytes) -> None:
        """Opens a stream, sends the messages in one DATA frame and half-closes."""
        self.open_stream(stream_id, path)
        self.send(DATA, END_STREAM, stream_id, b"".join(grpc_message(m) for m in messages))

    async def next_frame(self) -> Frame:
        item = await self.frames.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise EOFError("the server closed the connection")
        return item

    async def frame_of(self, kind: int) -> Frame:
        """The next frame of `kind`, skipping the rest."""
        while (frame := await self.next_frame()).kind != kind:
            pass
        return frame

    async def until_closed(self) -> list[Frame]:
        frames = []
        while (item := await self.frames.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            frames.append(item)
        return frames

    async def response(self, stream_id: int) -> Response:
        """Frames of `stream_id` until it ends or is reset; a GOAWAY fails the test."""
        response, block = Response(), bytearray()
        while True:
            frame = await self.next_frame()
            assert frame.kind != GOAWAY, f"GOAWAY: {frame}"
            if frame.stream_id != stream_id:
                continue
            if frame.kind == RST_STREAM:
                response.reset = int.from_bytes(frame.payload, "big")
                return response
            if frame.kind == DATA:
                assert not response.ended
                response.data += frame.payload
                response.data_frames.append(len(frame.payload))
                response.ended = bool(frame.flags & END_STREAM)
            elif frame.kind in (HEADERS, CONTINUATION):
                response.header_frames.append(frame)
                response.ended = response.ended or bool(frame.flags & END_STREAM)
                block += frame.payload
                if not frame.flags & END_HEADERS:
                    continue
                fields = self.decoder.decode(bytes(block))
                response.header_blocks.append({str(name): str(value) for name, value in fields})
                block.clear()
            if response.ended:
                return response

    def quiet(self) -> bool:
        """Nothing has arrived that the test has not read."""
        return self.frames.empty()


@pytest.fixture
async def raw(served: Served) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(served.path)
    yield client
    await client.close()


async def test_ping_is_acknowledged_with_its_payload(raw: RawClient) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        raw.send(PING, ACK, 0, b"not-mine")  # an ACK is not answered
        raw.send(PING, 0, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")
        pong = await raw.frame_of(PING)
    assert pong == Frame(PING, ACK, 0, b"\x00\x01\x02\x03\xfc\xfd\xfe\xff")


@pytest.mark.parametrize(
    "flags", [PADDED, PRIORITY_FLAG, PADDED | PRIORITY_FLAG], ids=["padded", "priority", "both"]
)
@pytest.mark.parametrize("pad", [0, 1, 255])
async def test_padded_and_prioritised_frames_are_unwrapped(
    raw: RawClient, flags: int, pad: int
) -> None:
    block = raw.request_headers(ECHO)
    if flags & PRIORITY_FLAG:
        block = struct.pack(">IB", 0, 200) + block
    if flags & PADDED:
        block = bytes((pad,)) + block + b"\xee" * pad
    raw.send(HEADERS, flags | END_HEADERS, 1, block)
    raw.send(PRIORITY, 0, 1, struct.pack(">IB", 0, 16))  # ignored
    raw.send(DATA, PADDED, 1, bytes((pad,)) + grpc_message(b"padded") + b"\xee" * pad)
    raw.send(DATA, PADDED | END_STREAM, 1, bytes((pad,)) + b"\xee" * pad)
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.messages == [b"padded"]
    assert response.status == 0


async def test_a_header_block_continues_in_continuation_frames(
    raw: RawClient, served: Served
) -> None:
    block = raw.request_headers(ECHO, extra=[("x-long", "v" * 300)])
    first, middle, last = split(block, [3, 40])
    raw.send(HEADERS, PADDED, 1, b"\x04" + first + b"\x00" * 4)
    raw.send(CONTINUATION, 0, 1, middle)
    raw.send(CONTINUATION, END_HEADERS, 1, last)
    raw.send(DATA, END_STREAM, 1, grpc_message(b"continued"))
    # The encoder indexed the first block's fields: this one only decodes if that one did.
    raw.call(3, ECHO, b"indexed")
    async with asyncio.timeout(TIMEOUT_S):
        first_response = await raw.response(1)
        second_response = await raw.response(3)
    assert first_response.messages == [b"continued"]
    assert second_response.messages == [b"indexed"]
    assert served.calls.opened == 2


@pytest.mark.parametrize(
    "cuts",
    [[1], [4], [5], [1, 2, 3, 4, 5, 6], [12], [20, 21, 26], list(range(1, 32))],
    ids=str,
)
async def test_messages_are_reassembled_however_data_frames_cut_them(
    raw: RawClient, cuts: list[int]
) -> None:
    messages = [b"first message", b"", b"third"]
    wire = b"".join(grpc_message(message) for message in messages)
    raw.open_stream(1, ECHO)
    for piece in split(wire, cuts):
        raw.send(DATA, 0, 1, piece)
    raw.send(DATA, END_STREAM, 1)
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.messages == messages
    assert response.status == 0


async def test_a_small_stream_window_holds_the_response_until_window_updates(
    served: Served,
) -> None:
    raw = await RawClient.connect(served.path, {INITIAL_WINDOW_SIZE: 1_000})
    raw.replenish = False
    total = 5 + 100_000
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, SIZED, (100_000).to_bytes(4, "big"))
            received = bytearray()
            first_stall = True
            while len(received) < total:
                frame = await raw.next_frame()
                if frame.kind != DATA:
                    continue
                received += frame.payload
                if len(received) == 1_000 and first_stall:
                    # Exactly the window came; nothing more may come until credit is given.
                    first_stall = False
                    await asyncio.sleep(0.05)
                    assert raw.quiet()
                if raw.quiet() and 0 in (raw.windows[0], raw.windows[1]):
                    raw.grant(1, 7_000)
                    raw.grant(0, 7_000)
            trailers = await raw.response(1)
        assert not first_stall
        assert bytes(received[5:]) == payload(100_000)
        assert trailers.status == 0
    finally:
        await raw.close()


async def test_the_connection_window_holds_the_response_until_window_updates(
    served: Served,
) -> None:
    raw = await RawClient.connect(served.path, {INITIAL_WINDOW_SIZE: MAX_WINDOW})
    raw.replenish = False
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, SIZED, (200_000).to_bytes(4, "big"))
            sent = 0
            while sent < 65_535:
                frame = await raw.frame_of(DATA)
                sent += len(frame.payload)
            await asyncio.sleep(0.05)
            assert raw.quiet()
            assert raw.windows[0] == 0
            raw.grant(0, 1_000_000)
            response = await raw.response(1)
        assert sent + len(response.data) == 5 + 200_000
        assert response.status == 0
    finally:
        await raw.close()


async def test_a_larger_initial_window_releases_a_held_response(served: Served) -> None:
    raw = await RawClient.connect(served.path, {INITIAL_WINDOW_SIZE: 1_000})
    raw.replenish = False
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.grant(0, 1_000_000)
            raw.call(1, SIZED, (50_000).to_bytes(4, "big"))
            first = await raw.frame_of(DATA)
            assert len(first.payload) == 1_000
            await asyncio.sleep(0.05)
            assert raw.quiet()
            # SETTINGS, not WINDOW_UPDATE: the change applies to the open stream's window too.
            raw.change_initial_window(100_000)
            rest = await raw.response(1)
        assert first.payload[5:] + rest.data == payload(50_000)
        assert rest.status == 0
    finally:
        await raw.close()


@pytest.mark.parametrize("max_frame", [None, 20_000, 70_000])
async def test_data_frames_respect_the_peers_max_frame_size(
    served: Served, max_frame: int | None
) -> None:
    settings = {INITIAL_WINDOW_SIZE: MAX_WINDOW}
    if max_frame is not None:
        settings[MAX_FRAME_SIZE] = max_frame
    raw = await RawClient.connect(served.path, settings)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.grant(0, 10_000_000)
            raw.call(1, SIZED, (300_000).to_bytes(4, "big"))
            response = await raw.response(1)
        # Every frame fit (the reader checks); the big ones are exactly the limit.
        assert max(response.data_frames) == (max_frame or 16_384)
        assert response.messages == [payload(300_000)]
    finally:
        await raw.close()


async def test_long_trailers_continue_in_continuation_frames(raw: RawClient) -> None:
    details = "é%" * 5_000  # 45,000 bytes percent-encoded: three frames at 16,384
    raw.call(1, FAIL, bytes((9,)) + details.encode())
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    kinds = [
        (frame.kind, frame.flags & (END_HEADERS | END_STREAM)) for frame in response.header_frames
    ]
    assert kinds == [
        (HEADERS, END_STREAM),
        (CONTINUATION, 0),
        (CONTINUATION, END_HEADERS),
    ]
    assert response.status == 9
    assert response.details == details


async def test_a_smaller_header_table_is_acknowledged_in_the_next_header_block(
    served: Served,
) -> None:
    raw = await RawClient.connect(served.path, {HEADER_TABLE_SIZE: 0})
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, ECHO, b"one")
            first = await raw.response(1)
            raw.call(3, ECHO, b"two")
            second = await raw.response(3)
        # A dynamic table size update to 0 (RFC 7541 §6.3), once, at the start of a block.
        assert first.header_frames[0].payload[:1] == b"\x20"
        assert second.header_frames[0].payload[:1] != b"\x20"
        assert (first.messages, second.messages) == ([b"one"], [b"two"])
    finally:
        await raw.close()


@pytest.mark.parametrize(
    "data",
    [
        grpc_message(b"squeezed", compressed=True),
        grpc_message(b"plain") + grpc_message(b"squeezed", compressed=True),
        grpc_message(b"plain") + grpc_message(b"squeezed", compressed=True)[:3],
    ],
    ids=["alone", "after-a-message", "prefix-only"],
)
async def test_a_compressed_message_is_refused_with_unimplemented(
    raw: RawClient, served: Served, data: bytes
) -> None:
    raw.open_stream(1, ECHO)
    raw.send(DATA, 0, 1, data)
    if data.endswith(b"squeezed"):
        raw.send(DATA, END_STREAM, 1)
    else:
        raw.send(DATA, END_STREAM, 1, grpc_message(b"squeezed", compressed=True)[3:])
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.status == GRPC_UNIMPLEMENTED
    assert "compressed" in response.details
    assert b"squeezed" not in b"".join(served.calls.messages)
    assert response.messages == served.calls.messages
    assert served.calls.resets == 1


async def test_a_message_over_the_limit_is_refused_with_resource_exhausted(
    raw: RawClient, served: Served
) -> None:
    raw.open_stream(1, ECHO)
    raw.send(DATA, 0, 1, struct.pack(">BI", 0, MAX_MESSAGE_BYTES + 1) + b"start of a huge body")
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.status == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert served.calls.messages == []


@pytest.mark.parametrize(
    ("method", "content_type", "extra", "details"),
    [
        ("GET", "application/grpc", (), "POST"),
        ("POST", "application/json", (), "not a gRPC request"),
        ("POST", None, (), "not a gRPC request"),
        ("POST", "application/grpc", (("grpc-encoding", "gzip"),), "gzip"),
    ],
    ids=["get", "json", "no-content-type", "gzip"],
)
async def test_a_request_that_is_not_plain_grpc_gets_a_trailers_only_unimplemented(
    raw: RawClient,
    served: Served,
    method: str,
    content_type: str | None,
    extra: tuple[tuple[str, str], ...],
    details: str,
) -> None:
    block = raw.request_headers(ECHO, method=method, content_type=content_type, extra=extra)
    raw.send(HEADERS, END_HEADERS, 1, block)
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
        # Stop the client sending a body nobody will read (RFC 9113 §8.1).
        after = await raw.response(1)
    assert len(response.header_frames) == 1
    assert response.header_frames[0].flags & END_STREAM
    assert response.data == b""
    only = response.header_blocks[0]
    assert only[":status"] == "200"
    assert only["content-type"] == "application/grpc"
    assert response.status == GRPC_UNIMPLEMENTED
    assert details in response.details
    assert after.reset == NO_ERROR
    assert served.calls.opened == 0


async def test_rst_stream_mid_call_resets_the_handler(raw: RawClient, served: Served) -> None:
    raw.open_stream(1, HELD)
    raw.send(DATA, 0, 1, grpc_message(b"pending"))
    async with asyncio.timeout(TIMEOUT_S):
        await served.calls.started.wait()
        raw.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
        await served.calls.reset.wait()
        assert served.calls.cancelled == 1
        # The connection lives on; a late DATA frame on the reset stream is dropped.
        raw.send(DATA, END_STREAM, 1, grpc_message(b"late"))
        raw.call(3, ECHO, b"still serving")
        response = await raw.response(3)
    assert response.messages == [b"still serving"]
    assert served.calls.messages == [b"pending", b"still serving"]


async def test_a_client_goaway_closes_the_connection_once_its_streams_are_done(
    raw: RawClient, served: Served
) -> None:
    raw.open_stream(1, HELD)
    raw.send(DATA, END_STREAM, 1, grpc_message(b"last one"))
    async with asyncio.timeout(TIMEOUT_S):
        await served.calls.started.wait()
        raw.send(GOAWAY, 0, 0, struct.pack(">II", 0, NO_ERROR))
        served.calls.release.set()
        response = await raw.response(1)
        await raw.until_closed()
    assert response.messages == [b"last one"]


async def test_streams_over_the_concurrency_limit_are_refused(socket_dir: Path) -> None:
    calls = Calls()
    server = GrpcServer(methods(calls), limits=Limits(max_concurrent_streams=1))
    path = str(socket_dir / "one.sock")
    await server.listen(f"unix:{path}")
    raw = await RawClient.connect(path)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, HELD, b"occupying")
            await calls.started.wait()
            raw.call(3, ECHO, b"one too many")
            refused = await raw.response(3)
            calls.release.set()
            served = await raw.response(1)
        assert refused.reset == REFUSED_STREAM
        assert served.messages == [b"occupying"]
        assert calls.opened == 1
    finally:
        await raw.close()
        await server.stop(0)


async def test_stop_refuses_new_streams_on_open_connections(served: Served) -> None:
    raw = await RawClient.connect(served.path)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, HELD, b"in flight")
            await served.calls.started.wait()
            stopping = asyncio.create_task(served.server.stop(60))
            goaway = await raw.frame_of(GOAWAY)
            assert struct.unpack(">II", goaway.payload[:8]) == (1, NO_ERROR)
            raw.call(3, ECHO, b"after goaway")
            refused = await raw.response(3)
            served.calls.release.set()
            finished = await raw.response(1)
            await raw.until_closed()
            await stopping
        assert refused.reset == REFUSED_STREAM
        assert finished.messages == [b"in flight"]
        assert finished.status == 0
    finally:
        await raw.close()


async def test_stop_delivers_a_response_still_in_the_socket_buffer(served: Served) -> None:
    raw = await RawClient.connect(served.path, {INITIAL_WINDOW_SIZE: MAX_WINDOW})
    raw.replenish = False
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.grant(0, MAX_WINDOW - 65_535)
            # Far more than a socket buffer holds: most of it waits in the transport.
            raw.call(1, SIZED, (8_000_000).to_bytes(4, "big"))
            await raw.frame_of(HEADERS)
            await served.server.stop(5)
            response = await raw.response(1)
        assert response.messages == [payload(8_000_000)]
        assert response.status == 0
    finally:
        await raw.close()


def open_and_send_data(client: RawClient, flags: int, payload: bytes) -> None:
    client.open_stream(1, ECHO)
    client.send(DATA, flags, 1, payload)


CONNECTION_ERRORS: list[Any] = [
    pytest.param(
        lambda c: c.send(HEADERS, END_HEADERS, 2, c.request_headers()),
        PROTOCOL_ERROR,
        id="headers-on-even-stream",
    ),
    pytest.param(
        lambda c: c.send(HEADERS, END_HEADERS, 0, c.request_headers()),
        PROTOCOL_ERROR,
        id="headers-on-stream-0",
    ),
    pytest.param(lambda c: c.send(DATA, 0, 0, b"x"), PROTOCOL_ERROR, id="data-on-stream-0"),
    pytest.param(lambda c: c.send(DATA, 0, 5, b"x"), PROTOCOL_ERROR, id="data-on-idle-stream"),
    pytest.param(
        lambda c: open_and_send_data(c, PADDED, b"\x05abcd"), PROTOCOL_ERROR, id="data-overpadded"
    ),
    pytest.param(
        lambda c: c.send(HEADERS, PADDED | END_HEADERS, 1, b"\x32ab"),
        PROTOCOL_ERROR,
        id="headers-overpadded",
    ),
    pytest.param(
        lambda c: c.send(CONTINUATION, END_HEADERS, 1, c.request_headers()),
        PROTOCOL_ERROR,
        id="continuation-without-headers",
    ),
    pytest.param(
        lambda c: (c.send(HEADERS, 0, 1, c.request_headers()), c.send(PING, 0, 0, b"8 bytes!")),
        PROTOCOL_ERROR,
        id="frame-inside-a-header-block",
    ),
    pytest.param(
        lambda c: c.send(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02"),
        PROTOCOL_ERROR,
        id="push-promise",
    ),
    pytest.param(lambda c: c.send(SETTINGS, 0, 0, b"\x00" * 5), FRAME_SIZE_ERROR, id="settings-5"),
    pytest.param(
        lambda c: c.send(SETTINGS, 0, 0, struct.pack(">HI", MAX_FRAME_SIZE, 1_000)),
        PROTOCOL_ERROR,
        id="max-frame-size-too-small",
    ),
    pytest.param(
        lambda c: c.send(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 2**31)),
        FLOW_CONTROL_ERROR,
        id="window-too-large",
    ),
    pytest.param(
        lambda c: c.send(WINDOW_UPDATE, 0, 0, b"\x00\x01\x00"),
        FRAME_SIZE_ERROR,
        id="window-update-3-bytes",
    ),
    pytest.param(
        lambda c: c.send(HEADERS, END_HEADERS, 1, b"\xbf"),
        COMPRESSION_ERROR,
        id="undecodable-header-block",
    ),
    pytest.param(
        lambda c: c.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")),
        PROTOCOL_ERROR,
        id="rst-stream-on-idle-stream",
    ),
    pytest.param(
        lambda c: c.send(RST_STREAM, 0, 0, CANCEL.to_bytes(4, "big")),
        PROTOCOL_ERROR,
        id="rst-stream-on-stream-0",
    ),
    pytest.param(
        lambda c: (c.call(1, ECHO, b"x"), c.send(RST_STREAM, 0, 1, b"\x00\x08")),
        FRAME_SIZE_ERROR,
        id="rst-stream-2-bytes",
    ),
    pytest.param(
        lambda c: c.send(WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"),
        PROTOCOL_ERROR,
        id="window-update-of-0",
    ),
    pytest.param(
        lambda c: c.send(WINDOW_UPDATE, 0, 7, b"\x00\x00\x01\x00"),
        PROTOCOL_ERROR,
        id="window-update-on-idle-stream",
    ),
]


@pytest.mark.parametrize(("provoke", "code"), CONNECTION_ERRORS)
async def test_a_protocol_violation_ends_the_connection_with_goaway(
    raw: RawClient, provoke: Callable[[RawClient], object], code: int
) -> None:
    provoke(raw)
    async with asyncio.timeout(TIMEOUT_S):
        frames = await raw.until_closed()
    goaways = [frame for frame in frames if frame.kind == GOAWAY]
    assert len(goaways) == 1
    assert error_code(goaways[0]) == code
    assert frames[-1] == goaways[0]


async def test_a_client_without_the_preface_gets_goaway_and_a_close(served: Served) -> None:
    raw = await RawClient.connect(served.path, preface=b"GET / HTTP/1.1\r\nHost: gatez\r\n\r\n")
    try:
        async with asyncio.timeout(TIMEOUT_S):
            frames = await raw.until_closed()
        assert [frame.kind for frame in frames] == [SETTINGS, WINDOW_UPDATE, GOAWAY]
        assert error_code(frames[-1]) == PROTOCOL_ERROR
    finally:
        await raw.close()


# --- the h2 library as an independent checker ---


@dataclass
class H2Stream:
    headers: list[dict[str, str]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


async def test_the_h2_library_accepts_a_mixed_exchange(served: Served) -> None:
    """h2 validates every frame: windows, frame sizes, stream states, header blocks."""
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    connection.local_settings = h2.settings.Settings(
        client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 4_096}
    )
    connection.initiate_connection()
    reader, writer = await asyncio.open_unix_connection(served.path)

    def request(stream_id: int, path: str, *, method: str = "POST") -> None:
        headers = [(":method", method), (":scheme", "http"), (":path", path)]
        headers += [(":authority", "gatez.test"), ("content-type", "application/grpc")]
        connection.send_headers(stream_id, headers, end_stream=method != "POST")

    request(1, ECHO)
    connection.send_data(1, grpc_message(b"padded by h2"), end_stream=True, pad_length=17)
    request(3, ECHO, method="GET")
    request(5, SIZED)
    connection.send_data(5, size_request(50_000), end_stream=True)
    request(7, ECHO)
    connection.send_data(7, grpc_message(b"zip", compressed=True), end_stream=True)
    streams = {stream_id: H2Stream() for stream_id in (1, 3, 5, 7)}
    async with asyncio.timeout(TIMEOUT_S):
        while not all(stream.ended or stream.reset is not None for stream in streams.values()):
            writer.write(connection.data_to_send())
            chunk = await reader.read(65_536)
            assert chunk, "the server closed the connection"
            for event in connection.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    assert event.stream_id is not None
                    headers = {str(name): str(value) for name, value in event.headers or []}
                    streams[event.stream_id].headers.append(headers)
                elif isinstance(event, h2.events.DataReceived):
                    assert event.stream_id is not None and event.data is not None
                    streams[event.stream_id].data += event.data
                    length = event.flow_controlled_length or 0
                    connection.acknowledge_received_data(length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    assert event.stream_id is not None
                    streams[event.stream_id].ended = True
                elif isinstance(event, h2.events.StreamReset):
                    assert event.stream_id is not None
                    streams[event.stream_id].reset = event.error_code
                elif isinstance(event, h2.events.ConnectionTerminated):
                    raise AssertionError(f"connection terminated: {event}")
    writer.close()
    await writer.wait_closed()

    def status(stream: H2Stream) -> str:
        return stream.headers[-1]["grpc-status"]

    assert streams[1].data == grpc_message(b"padded by h2")
    assert status(streams[1]) == "0"
    assert status(streams[3]) == str(GRPC_UNIMPLEMENTED)
    assert streams[5].data == grpc_message(payload(50_000))
    assert status(streams[5]) == "0"
    assert status(streams[7]) == str(GRPC_UNIMPLEMENTED)
    assert all(stream.headers[0][":status"] == "200" for stream in streams.values())


async def test_a_call_finished_early_gets_no_more_messages_and_stops_the_client(
    raw: RawClient, served: Served
) -> None:
    # FAIL finishes on its first message, while the client still has its side open.
    raw.open_stream(1, FAIL)
    raw.send(DATA, 0, 1, grpc_message(bytes([GRPC_INTERNAL]) + b"done early"))
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
        assert response.status == GRPC_INTERNAL
        # Then RST_STREAM(NO_ERROR): stop sending (RFC 9113 section 8.1).
        reset = await raw.frame_of(RST_STREAM)
        assert (reset.stream_id, int.from_bytes(reset.payload, "big")) == (1, NO_ERROR)
        raw.send(DATA, END_STREAM, 1, grpc_message(b"too late"))
        raw.call(3, ECHO, b"next")
        assert (await raw.response(3)).messages == [b"next"]
    # The finished handler saw neither the late message nor a reset.
    assert served.calls.messages == [bytes([GRPC_INTERNAL]) + b"done early", b"next"]
    assert served.calls.resets == 0


async def test_a_ping_of_the_wrong_length_ends_the_connection(raw: RawClient) -> None:
    raw.send(PING, 0, 0, b"short")
    async with asyncio.timeout(TIMEOUT_S):
        goaway = await raw.frame_of(GOAWAY)
    assert error_code(goaway) == FRAME_SIZE_ERROR


def literal(name: bytes, value: bytes, *, indexed: bool) -> bytes:
    """A literal header field with a new name: added to the table (0x40) or not (0x00)."""
    assert len(name) < 127 and len(value) < 127
    return bytes((0x40 if indexed else 0x00, len(name))) + name + bytes((len(value),)) + value


async def test_a_repeated_header_block_follows_changes_of_the_dynamic_table(
    raw: RawClient,
) -> None:
    # Hand-made blocks, so the test controls the decoder's table exactly.
    base = (
        b"\x83\x86"  # :method POST, :scheme http (static table)
        + literal(b":path", PROBE.encode(), indexed=False)
        + literal(b"content-type", b"application/grpc", indexed=False)
    )
    newest = b"\xbe"  # index 62: the newest entry of the dynamic table
    blocks = [
        base + literal(b"x-probe", b"one", indexed=True),
        base + newest,  # "one"; decoded once, then reused while the table stays the same
        base + newest,
        base + literal(b"x-probe", b"two", indexed=True),
        base + newest,  # the same bytes as before, now meaning "two"
    ]
    answers = []
    async with asyncio.timeout(TIMEOUT_S):
        for number, block in enumerate(blocks):
            stream_id = 2 * number + 1
            raw.send(HEADERS, END_HEADERS | END_STREAM, stream_id, block)
            answers.append((await raw.response(stream_id)).messages)
    assert answers == [[b"one"], [b"one"], [b"one"], [b"two"], [b"two"]]


# --- a failing handler fails its own call only ---


@pytest.mark.parametrize("where", ["open", "message", "end"])
async def test_a_handler_that_raises_fails_its_own_call_and_no_other(
    raw: RawClient, served: Served, where: str
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        # A call in flight on the same connection, before and after the failure.
        raw.open_stream(1, ECHO)
        raw.send(DATA, 0, 1, grpc_message(b"first"))
        first = await raw.frame_of(DATA)
        path = {"open": RAISE_ON_OPEN, "message": RAISE_ON_MESSAGE, "end": RAISE_ON_END}[where]
        raw.open_stream(3, path)
        if where == "message":
            # One whole message (one frame), then two in one frame: both ways of delivery.
            raw.send(DATA, 0, 3, grpc_message(b"before"))
            raw.send(DATA, END_STREAM, 3, grpc_message(b"raise") + grpc_message(b"after"))
        else:
            raw.send(DATA, END_STREAM, 3, grpc_message(b"before"))
        failed = await raw.response(3)
        raw.send(DATA, END_STREAM, 1, grpc_message(b"second"))
        survivor = await raw.response(1)
        raw.call(5, ECHO, b"next")
        after = await raw.response(5)
    assert failed.status == GRPC_INTERNAL
    assert failed.details == "data plane error"
    assert failed.messages == ([] if where == "open" else [b"before"])
    assert SECRET not in repr(failed)
    assert b"after" not in served.calls.messages
    # The handler that raised is told its call is over; one never built is not.
    assert served.calls.resets == (0 if where == "open" else 1)
    assert (first.stream_id, first.payload) == (1, grpc_message(b"first"))
    assert (survivor.status, survivor.messages) == (0, [b"second"])
    assert (after.status, after.messages) == (0, [b"next"])


# --- bounds: what a peer can make the server hold ---


def only_connection(server: GrpcServer) -> H2Connection:
    (connection,) = server.connections
    return connection


async def assert_serving(served: Served) -> None:
    """A new connection gets an answer: the server is healthy."""
    client = await RawClient.connect(served.path)
    try:
        client.call(1, ECHO, b"still serving")
        response = await client.response(1)
        assert (response.status, response.messages) == (0, [b"still serving"])
    finally:
        await client.close()


async def round_trip(client: RawClient) -> None:
    """Returns once the server has handled everything the client sent before."""
    client.send(PING, 0, 0, b"roundtrp")
    while (await client.frame_of(PING)).payload != b"roundtrp":
        pass


async def bounded_server(socket_dir: Path, limits: Limits) -> Served:
    calls = Calls()
    server = GrpcServer(methods(calls), limits=limits)
    path = str(socket_dir / "bounded.sock")
    await server.listen(f"unix:{path}")
    return Served(server, path, calls)


@pytest.fixture
async def small_budget(socket_dir: Path) -> AsyncIterator[Served]:
    """A server whose byte budgets are a few hundred KiB, so tests reach them quickly."""
    served = await bounded_server(
        socket_dir,
        Limits(
            connection_held_bytes=1_000_000,
            server_held_bytes=1_500_000,
            stream_outbox_bytes=1_000_000,
            max_message_bytes=900_000,
        ),
    )
    yield served
    await served.server.stop(0)


async def test_the_advertised_settings_are_the_limits(raw: RawClient) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        settings = await raw.frame_of(SETTINGS)
    values = dict(struct.iter_unpack(">HI", settings.payload))
    assert values[MAX_CONCURRENT_STREAMS] == Limits().max_concurrent_streams == 1000
    assert values[MAX_HEADER_LIST_SIZE] == Limits().max_header_list_bytes == 8 * 1024
    assert values[MAX_FRAME_SIZE] == 64 * 1024


def test_a_whole_envoy_body_fits_in_a_message() -> None:
    # The bound follows Envoy's buffer limit; raising one without the other fails here.
    config = (Path(__file__).parents[2] / "envoy" / "envoy.yaml").read_text()
    limits = {
        int(value) for value in re.findall(r"per_connection_buffer_limit_bytes: (\d+)", config)
    }
    assert limits == {ENVOY_BODY_LIMIT}
    assert MAX_MESSAGE_BYTES == ENVOY_BODY_LIMIT + 1024 * 1024


def test_limits_refuse_a_message_bound_below_a_frame() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        Limits(max_message_bytes=1_000)


async def test_a_header_block_at_the_limit_is_served(raw: RawClient) -> None:
    value = "v" * 7_900  # with the other fields, just below the decoded limit
    block = UNINDEXED_PROBE + hpack.Encoder().encode([("x-probe", value)], huffman=False)
    assert len(block) <= Limits().max_header_block_bytes
    raw.send(HEADERS, 0, 1, block[:5_000])
    raw.send(CONTINUATION, END_HEADERS, 1, block[5_000:])
    raw.send(DATA, END_STREAM, 1)
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.messages == [value.encode()]


def unindexed_request(path: str) -> bytes:
    """Request headers that leave the decoder's dynamic table as it is."""
    return (
        b"\x83\x86"  # :method POST, :scheme http (static table)
        + literal(b":path", path.encode(), indexed=False)
        + literal(b"content-type", b"application/grpc", indexed=False)
    )


UNINDEXED_ECHO = unindexed_request(ECHO)
UNINDEXED_PROBE = unindexed_request(PROBE)
BIG = ("x-big", "b" * 4_000)  # added to the dynamic table: 4,037 of its 4,096 bytes

HEADER_FLOODS: list[Any] = [
    pytest.param(lambda c: c.send(HEADERS, 0, 1, b"\x00" * 8_193), id="headers-over-8-KiB"),
    pytest.param(
        lambda c: (
            c.send(HEADERS, 0, 1, b"\x00" * 5_000),
            c.send(CONTINUATION, 0, 1, b"\x00" * 5_000),
        ),
        id="continued-block-over-8-KiB",
    ),
    pytest.param(
        lambda c: (
            c.send(HEADERS, 0, 1, c.request_headers()),
            *(c.send(CONTINUATION, 0, 1) for _ in range(17)),
        ),
        id="17-continuation-frames",
    ),
    pytest.param(
        # An HPACK bomb: 20 one-byte references to a 4,000-byte table entry decode to ~80 KB.
        lambda c: (
            c.send(HEADERS, END_HEADERS, 1, UNINDEXED_ECHO + hpack.Encoder().encode([BIG])),
            c.send(HEADERS, END_HEADERS, 3, UNINDEXED_ECHO + b"\xbe" * 20),
        ),
        id="decoded-list-over-8-KiB",
    ),
]


@pytest.mark.parametrize("provoke", HEADER_FLOODS)
async def test_a_header_block_over_the_limits_ends_the_connection_only(
    raw: RawClient, served: Served, provoke: Callable[[RawClient], object]
) -> None:
    provoke(raw)
    async with asyncio.timeout(TIMEOUT_S):
        frames = await raw.until_closed()
        goaways = [frame for frame in frames if frame.kind == GOAWAY]
        assert [error_code(goaway) for goaway in goaways] == [ENHANCE_YOUR_CALM]
        opened = served.calls.opened
        await assert_serving(served)
    assert opened <= 1  # the bomb's first, harmless, block opens a stream


async def test_sixteen_continuation_frames_are_accepted(raw: RawClient) -> None:
    block = raw.request_headers(ECHO, extra=[("x-long", "w" * 1_000)])
    pieces = split(block, list(range(64, 64 * 17, 64)))
    assert len(pieces) == 17
    raw.send(HEADERS, 0, 1, pieces[0])
    for piece in pieces[1:-1]:
        raw.send(CONTINUATION, 0, 1, piece)
    raw.send(CONTINUATION, END_HEADERS, 1, pieces[-1])
    raw.send(DATA, END_STREAM, 1, grpc_message(b"long headers"))
    async with asyncio.timeout(TIMEOUT_S):
        response = await raw.response(1)
    assert response.messages == [b"long headers"]


async def test_the_decoded_header_cache_stays_within_its_bounds(
    raw: RawClient, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        for number in range(100):
            # Never indexed, so the table stays as it is and each block is cached when it fits.
            probe = hpack.NeverIndexedHeaderTuple("x-probe", f"{number:04}" * (number * 10))
            fields = [(":method", "POST"), (":scheme", "http"), (":path", PROBE)]
            block = raw.encoder.encode([*fields, probe, ("content-type", "application/grpc")])
            raw.send(HEADERS, END_HEADERS | END_STREAM, 2 * number + 1, block)
            response = await raw.response(2 * number + 1)
            assert response.messages == [f"{number:04}".encode() * (number * 10)]
            usage = only_connection(served.server).usage()
            assert usage.header_cache_entries <= HEADER_CACHE_ENTRIES
            assert usage.header_cache_bytes <= HEADER_CACHE_BYTES
        assert only_connection(served.server).usage().header_cache_entries > 0


async def test_a_declared_length_over_the_limit_is_refused_before_anything_is_buffered(
    raw: RawClient, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        raw.open_stream(1, ECHO)
        raw.send(DATA, 0, 1, struct.pack(">BI", 0, MAX_MESSAGE_BYTES) + b"a body at the limit")
        raw.open_stream(3, ECHO)
        raw.send(DATA, 0, 3, struct.pack(">BI", 0, MAX_MESSAGE_BYTES + 1))
        refused = await raw.response(3)
        # The stream at the limit holds just what arrived; the refused one holds nothing.
        assert only_connection(served.server).usage().held_bytes == 5 + len(b"a body at the limit")
        raw.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
        raw.call(5, ECHO, b"next")
        after = await raw.response(5)
    assert refused.status == GRPC_RESOURCE_EXHAUSTED
    assert after.messages == [b"next"]
    assert only_connection(served.server).usage().held_bytes == 0
    assert served.server.held_bytes == 0


async def test_unfinished_messages_beyond_the_connection_budget_fail_that_stream(
    small_budget: Served,
) -> None:
    raw = await RawClient.connect(small_budget.path)
    body = payload(800_000)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.open_stream(1, ECHO)
            raw.send_data(1, grpc_message(body)[:600_000])
            raw.open_stream(3, ECHO)
            raw.send_data(3, grpc_message(body)[:600_000])
            refused = await raw.response(3)
            assert only_connection(small_budget.server).usage().held_bytes == 600_000
            raw.send_data(1, grpc_message(body)[600_000:], end_stream=True)
            served = await raw.response(1)
        assert refused.status == GRPC_RESOURCE_EXHAUSTED
        assert (served.status, served.messages) == (0, [body])
        assert small_budget.server.held_bytes == 0
        assert small_budget.calls.resets == 1
    finally:
        await raw.close()


async def test_unfinished_messages_beyond_the_server_budget_fail_that_stream(
    small_budget: Served,
) -> None:
    first = await RawClient.connect(small_budget.path)
    second = await RawClient.connect(small_budget.path)
    body = payload(800_000)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            first.open_stream(1, ECHO)
            first.send_data(1, grpc_message(body)[:800_000])
            await round_trip(first)
            assert small_budget.server.held_bytes == 800_000
            second.open_stream(1, ECHO)
            second.send_data(1, grpc_message(body)[:800_000])
            refused = await second.response(1)
            assert small_budget.server.held_bytes == 800_000
            first.send_data(1, grpc_message(body)[800_000:], end_stream=True)
            served = await first.response(1)
        assert refused.status == GRPC_RESOURCE_EXHAUSTED
        assert (served.status, served.messages) == (0, [body])
        assert small_budget.server.held_bytes == 0
    finally:
        await first.close()
        await second.close()


async def test_a_response_backlog_over_the_stream_bound_resets_that_stream(
    raw: RawClient, served: Served
) -> None:
    raw.replenish = False  # the client reads, but grants no credit: responses wait
    size = Limits().stream_outbox_bytes + 100_000  # the first 65,535 bytes leave
    async with asyncio.timeout(TIMEOUT_S):
        raw.call(1, SIZED, size.to_bytes(4, "big"))
        reset = await raw.response(1)
        await served.calls.reset.wait()
        assert only_connection(served.server).usage().held_bytes == 0
        raw.grant(0, 1_000_000)
        raw.call(3, ECHO, b"next")
        after = await raw.response(3)
    assert reset.reset == ENHANCE_YOUR_CALM
    assert len(reset.data) == 65_535  # what the initial windows allowed
    assert after.messages == [b"next"]
    assert served.server.held_bytes == 0


async def test_response_backlogs_over_the_connection_budget_reset_the_stream_that_overflows(
    small_budget: Served,
) -> None:
    raw = await RawClient.connect(small_budget.path, {INITIAL_WINDOW_SIZE: 0})
    raw.replenish = False
    try:
        async with asyncio.timeout(TIMEOUT_S):
            raw.call(1, SIZED, (600_000).to_bytes(4, "big"))
            await raw.frame_of(HEADERS)
            held = only_connection(small_budget.server).usage().held_bytes
            assert held == 5 + 600_000
            raw.call(3, SIZED, (600_000).to_bytes(4, "big"))
            reset = await raw.response(3)
            assert only_connection(small_budget.server).usage().held_bytes == held
            raw.replenish = True
            raw.grant(0, 1_000_000)
            raw.grant(1, 1_000_000)
            served = await raw.response(1)
        assert reset.reset == ENHANCE_YOUR_CALM
        assert served.messages == [payload(600_000)]
        assert small_budget.server.held_bytes == 0
    finally:
        await raw.close()


async def test_streams_over_the_default_concurrency_limit_are_refused(
    raw: RawClient, served: Served
) -> None:
    limit = Limits().max_concurrent_streams
    for number in range(limit):
        raw.open_stream(2 * number + 1, HELD)
    raw.call(2 * limit + 1, ECHO, b"one too many")
    async with asyncio.timeout(TIMEOUT_S):
        refused = await raw.response(2 * limit + 1)
        assert refused.reset == REFUSED_STREAM
        assert only_connection(served.server).usage().streams == limit
        raw.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
        raw.call(2 * limit + 3, ECHO, b"room again")
        assert (await raw.response(2 * limit + 3)).messages == [b"room again"]
    assert served.calls.opened == limit + 1


async def test_streams_over_the_server_wide_limit_are_refused(socket_dir: Path) -> None:
    served = await bounded_server(socket_dir, Limits(max_streams=3))
    first = await RawClient.connect(served.path)
    second = await RawClient.connect(served.path)
    try:
        async with asyncio.timeout(TIMEOUT_S):
            first.open_stream(1, HELD)
            first.open_stream(3, HELD)
            second.open_stream(1, HELD)
            second.call(3, ECHO, b"one too many")
            refused = await second.response(3)
            assert served.server.streams == 3
            first.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
            await round_trip(first)
            second.call(5, ECHO, b"room again")
            answered = await second.response(5)
        assert refused.reset == REFUSED_STREAM
        assert answered.messages == [b"room again"]
    finally:
        await first.close()
        await second.close()
        await served.server.stop(0)


async def test_connections_over_the_limit_are_refused(socket_dir: Path) -> None:
    served = await bounded_server(socket_dir, Limits(max_connections=2))
    clients = [await RawClient.connect(served.path) for _ in range(2)]
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for client in clients:
                await client.frame_of(SETTINGS)
            extra = await RawClient.connect(served.path)
            frames = await extra.until_closed()
            assert [frame.kind for frame in frames] == [SETTINGS, GOAWAY]
            assert error_code(frames[-1]) == ENHANCE_YOUR_CALM
            await extra.close()
            clients[0].call(1, ECHO, b"still served")
            assert (await clients[0].response(1)).messages == [b"still served"]
            connections = list(served.server.connections)
            await clients.pop().close()
            closing = [asyncio.ensure_future(c.closed.wait()) for c in connections]
            _, pending = await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
            for wait in pending:
                wait.cancel()
            await assert_serving(served)
    finally:
        for client in clients:
            await client.close()
        await served.server.stop(0)


@pytest.mark.parametrize(
    "frame",
    [encode_frame(PING, 0, 0, b"12345678"), encode_frame(SETTINGS, 0, 0)],
    ids=["ping", "settings"],
)
async def test_a_peer_that_floods_without_reading_is_dropped(served: Served, frame: bytes) -> None:
    reader, writer = await asyncio.open_unix_connection(served.path)
    largest_buffer = largest_unread = sent = 0
    async with asyncio.timeout(TIMEOUT_S):
        writer.write(PREFACE + encode_frame(SETTINGS, 0, 0))
        await reader.readexactly(9)  # the server's SETTINGS: the connection is up; no more reads
        connection = only_connection(served.server)
        with contextlib.suppress(ConnectionError):
            while not connection.closed.is_set():
                writer.write(frame * 256)
                await writer.drain()
                sent += len(frame) * 256
                usage = connection.usage()
                largest_buffer = max(largest_buffer, usage.write_buffer_bytes)
                largest_unread = max(largest_unread, usage.unread_bytes)
        await connection.closed.wait()
        writer.close()
        await assert_serving(served)
    # What the server kept for this peer stayed small: its buffer's high-water mark, one read's
    # answers, and `unread_bytes` once it knew the peer was not reading.
    assert largest_unread <= Limits().unread_bytes
    assert largest_buffer < 1024 * 1024
    assert sent > Limits().unread_bytes


async def test_a_closing_connection_that_is_never_read_is_dropped(socket_dir: Path) -> None:
    served = await bounded_server(socket_dir, Limits(unread_bytes=2**30, close_timeout_s=0.1))
    try:
        reader, writer = await asyncio.open_unix_connection(served.path)
        async with asyncio.timeout(TIMEOUT_S):
            writer.write(PREFACE + encode_frame(SETTINGS, 0, 0))
            await reader.readexactly(9)
            connection = only_connection(served.server)
            while not connection.usage().unread_bytes:  # until the transport's buffer is full
                writer.write(encode_frame(PING, 0, 0, b"12345678") * 4_096)
                await writer.drain()
            writer.write(encode_frame(DATA, 0, 0, b"x"))  # a protocol error: GOAWAY and close
            await connection.closed.wait()
        writer.close()
    finally:
        await served.server.stop(0)


@pytest.mark.parametrize("step", [2, 2_000], ids=["consecutive-ids", "skipping-ids"])
async def test_rapid_resets_drain_the_connection(raw: RawClient, served: Served, step: int) -> None:
    premature = Limits().premature_resets
    async with asyncio.timeout(TIMEOUT_S):
        raw.call(1, HELD, b"in flight")
        await served.calls.started.wait()
        for number in range(1, premature + 100):
            raw.open_stream(step * number + 1, ECHO)
            raw.send(RST_STREAM, 0, step * number + 1, CANCEL.to_bytes(4, "big"))
        goaway = await raw.frame_of(GOAWAY)
        assert struct.unpack(">II", goaway.payload[:8]) == (step * premature + 1, ENHANCE_YOUR_CALM)
        # Drained, not dropped: the call in flight finishes, then the connection closes.
        served.calls.release.set()
        finished = await raw.response(1)
        await raw.until_closed()
        opened = served.calls.opened
        await assert_serving(served)
    assert finished.messages == [b"in flight"]
    assert opened == 1 + premature  # the rest were refused


async def test_resets_of_answered_streams_are_how_envoy_ends_them(
    raw: RawClient, served: Served
) -> None:
    count = 2 * Limits().premature_resets
    async with asyncio.timeout(TIMEOUT_S):
        for number in range(count):
            raw.open_stream(2 * number + 1, ECHO)
            raw.send(DATA, 0, 2 * number + 1, grpc_message(b"answered"))
            raw.send(RST_STREAM, 0, 2 * number + 1, CANCEL.to_bytes(4, "big"))
        raw.call(2 * count + 1, ECHO, b"still open")
        response = await raw.response(2 * count + 1)
    assert response.messages == [b"still open"]
    assert served.calls.resets == count
    assert only_connection(served.server).usage().streams == 0


async def test_window_updates_and_resets_on_closed_streams_hold_nothing(
    raw: RawClient, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        raw.call(1, ECHO, b"closed now")
        await raw.response(1)
        for _ in range(5_000):
            raw.send(WINDOW_UPDATE, 0, 1, (1_000).to_bytes(4, "big"))
            raw.send(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))
            raw.send(PRIORITY, 0, 1, struct.pack(">IB", 0, 16))
        raw.call(3, ECHO, b"after the flood")
        assert (await raw.response(3)).messages == [b"after the flood"]
    usage = only_connection(served.server).usage()
    assert (usage.streams, usage.held_bytes, usage.input_bytes) == (0, 0, 0)


async def test_a_stream_window_update_of_zero_ends_that_stream_only(
    raw: RawClient, served: Served
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        raw.open_stream(1, ECHO)
        raw.send(WINDOW_UPDATE, 0, 1, b"\x00\x00\x00\x00")
        failed = await raw.response(1)
        raw.call(3, ECHO, b"next")
        assert (await raw.response(3)).messages == [b"next"]
    assert failed.status == GRPC_INTERNAL
