"""The ext_proc service on `grpc.aio`: the same per-stream handlers as `extproc.grpc_h2`, served
by grpcio instead — a fallback (`GATEZ_EXTPROC_SERVER=grpcio`) for a proxy or a gRPC feature the
lean server does not speak. Measured on the chat path (`bench.chat`, 2-core VM) it adds ~2.0 ms
at one connection and costs ~1.2 ms of CPU per request (the lean server: ~0.95 ms, ~0.25 ms), so
it is not the default.

Messages stay bytes (identity serialisers), so the handlers are exactly those `grpc_h2` serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from extproc.grpc_h2 import GRPC_OK, MAX_MESSAGE_BYTES, StreamHandler

# A handler factory that takes any CallStream (the ext_proc adapter's `open`).
Factory = Any

_FINISH = object()
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


class QueuedStream:
    """A call as a handler sees it, feeding the response iterator grpc.aio drains."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = headers
        self.outbox: asyncio.Queue[bytes | object] = asyncio.Queue()
        self.remote_closed = False
        self.status: tuple[int, str] = (GRPC_OK, "")
        self.finished = False

    def send_message(self, message: bytes) -> None:
        if not self.finished:
            self.outbox.put_nowait(message)

    def finish(self, code: int = GRPC_OK, message: str = "") -> None:
        if not self.finished:
            self.finished = True
            self.status = (code, message)
            self.outbox.put_nowait(_FINISH)


def _behaviour(factory: Factory) -> Any:
    async def process(
        requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        metadata = context.invocation_metadata() or ()
        stream = QueuedStream({key: value for key, value in metadata if isinstance(value, str)})
        handler: StreamHandler = factory(stream)

        async def read() -> None:
            async for message in requests:
                handler.on_message(message)
            stream.remote_closed = True
            handler.on_end()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await stream.outbox.get()
                if item is _FINISH:
                    break
                assert isinstance(item, bytes)
                yield item
        finally:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
            if not stream.finished:
                handler.on_reset()  # cancelled or broken before the handler finished
        code, message = stream.status
        if code != GRPC_OK:
            await context.abort(_STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN), message)

    return process


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def serve_grpcio(methods: Mapping[str, Factory], address: str) -> grpc.aio.Server:
    """Starts a grpc.aio server for `methods` (full `/package.Service/Method` paths)."""
    services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for path, factory in methods.items():
        service, _, method = path.strip("/").rpartition("/")
        services.setdefault(service, {})[method] = grpc.stream_stream_rpc_method_handler(
            _behaviour(factory)
        )
    server = grpc.aio.server(options=GRPC_OPTIONS)
    for service, handlers in services.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(address)
    await server.start()
    return server
