"""The grpc.aio fallback (`extproc.grpcio_server`), driven by the official grpcio client: a
handler that raises fails its own call, never the others on the channel."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio
import pytest

from extproc.grpc_h2 import MAX_MESSAGE_BYTES, CallStream
from extproc.grpcio_server import EXTPROC_OPTIONS, serve_grpcio

TIMEOUT_S = 10.0
ECHO = "/test.Probe/Echo"
RAISE_ON_OPEN = "/test.Probe/RaiseOnOpen"
RAISE_ON_MESSAGE = "/test.Probe/RaiseOnMessage"
RAISE_ON_END = "/test.Probe/RaiseOnEnd"
SECRET = "secret detail of a failure"


@dataclass
class Calls:
    messages: list[bytes] = field(default_factory=list)
    resets: int = 0


class RaiseOn:
    """Echoes each message and finishes OK on half-close, except that it raises where `where`
    says: when opened, on the message b"raise", or on the half-close."""

    def __init__(self, stream: CallStream, calls: Calls, where: str) -> None:
        if where == "open":
            raise RuntimeError(SECRET)
        self._stream = stream
        self._calls = calls
        self._where = where

    def on_message(self, message: bytes) -> None:
        if message == b"raise":
            raise RuntimeError(SECRET)
        self._calls.messages.append(message)
        self._stream.send_message(message)

    def on_end(self) -> None:
        if self._where == "end":
            raise RuntimeError(SECRET)
        self._stream.finish()

    def on_reset(self) -> None:
        self._calls.resets += 1


@dataclass
class Served:
    channel: grpc.aio.Channel
    calls: Calls


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    calls = Calls()

    def method(where: str) -> Any:
        return lambda stream: RaiseOn(stream, calls, where)

    methods = {
        ECHO: method("nowhere"),
        RAISE_ON_OPEN: method("open"),
        RAISE_ON_MESSAGE: method("message"),
        RAISE_ON_END: method("end"),
    }
    with tempfile.TemporaryDirectory(prefix="grpcio-") as directory:
        address = f"unix:{directory}/grpc.sock"
        server = await serve_grpcio(methods, address)
        channel = grpc.aio.insecure_channel(address)
        yield Served(channel, calls)
        await channel.close(None)
        await server.stop(0)


def open_call(channel: grpc.aio.Channel, method: str) -> grpc.aio.StreamStreamCall[Any, Any]:
    return channel.stream_stream(method, request_serializer=None, response_deserializer=None)(None)


@pytest.mark.parametrize(
    ("path", "messages", "answers", "resets"),
    [
        (RAISE_ON_OPEN, [b"before"], [], 0),
        (RAISE_ON_MESSAGE, [b"before", b"raise", b"after"], [b"before"], 1),
        (RAISE_ON_END, [b"before"], [b"before"], 1),
    ],
    ids=["open", "message", "end"],
)
async def test_a_handler_that_raises_fails_its_own_call_and_no_other(
    served: Served, path: str, messages: list[bytes], answers: list[bytes], resets: int
) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        survivor = open_call(served.channel, ECHO)
        await survivor.write(b"first")
        assert await survivor.read() == b"first"

        async def requests() -> AsyncIterator[bytes]:
            for message in messages:
                yield message

        failing = served.channel.stream_stream(
            path, request_serializer=None, response_deserializer=None
        )(requests())
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            async for answer in failing:
                received.append(answer)
        assert failure.value.code() == grpc.StatusCode.INTERNAL
        assert failure.value.details() == "data plane error"

        await survivor.write(b"second")
        assert await survivor.read() == b"second"
        await survivor.done_writing()
        assert await survivor.code() == grpc.StatusCode.OK
    assert received == answers
    assert SECRET not in str(failure.value)
    assert b"after" not in served.calls.messages
    assert served.calls.resets == resets


def test_the_fallback_takes_the_lean_servers_message_bound() -> None:
    options = dict(EXTPROC_OPTIONS)
    assert options["grpc.max_receive_message_length"] == MAX_MESSAGE_BYTES
    assert options["grpc.max_concurrent_streams"] == 1000
