"""The ext_proc service on `grpc.aio`: the same per-stream handlers as `extproc.grpc_h2`, served
by grpcio instead — a fallback (`GATEZ_EXTPROC_SERVER=grpcio`) for a proxy or a gRPC feature the
lean server does not speak. Measured on the chat path (`bench.chat`, 2-core VM) it adds ~2.0 ms
at one connection and costs ~1.2 ms of CPU per request (the lean server: ~0.95 ms, ~0.25 ms), so
it is not the default.

Messages stay bytes (identity serialisers), so the handlers are exactly those `grpc_h2` serves,
with the same message and stream limits, and a handler that raises fails its own call only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import grpc

from extproc.grpc_h2 import GRPC_INTERNAL, GRPC_OK, MAX_MESSAGE_BYTES, Limits, StreamHandler

log = logging.getLogger("gatez.grpcio_server")

# A handler factory that takes any CallStream (the ext_proc adapter's `open`).
Factory = Any

_FINISH = object()
# What the peer of a failed call is told: nothing of the exception.
FAILED_DETAILS = "data plane error"
# The data plane's gRPC client of the control service (extproc.server): a policy snapshot can be
# larger than any ext_proc message.
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]
EXTPROC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_concurrent_streams", Limits().max_concurrent_streams),
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
        try:
            handler: StreamHandler = factory(stream)
        except Exception:
            log.exception("ext_proc call failed")
            await context.abort(grpc.StatusCode.INTERNAL, FAILED_DETAILS)

        def failed() -> None:
            """The handler raised: its call ends with INTERNAL, the server goes on."""
            log.exception("ext_proc call failed")
            if stream.finished:
                return
            stream.finish(GRPC_INTERNAL, FAILED_DETAILS)
            _notify_reset(handler)

        async def read() -> None:
            async for message in requests:
                try:
                    handler.on_message(message)
                except Exception:
                    failed()
                    return
            stream.remote_closed = True
            try:
                handler.on_end()
            except Exception:
                failed()

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
                _notify_reset(handler)  # cancelled or broken before the handler finished
        code, message = stream.status
        if code != GRPC_OK:
            await context.abort(_STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN), message)

    return process


def _notify_reset(handler: StreamHandler) -> None:
    try:
        handler.on_reset()
    except Exception:
        log.exception("stream reset handler failed")


_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


async def serve_grpcio(methods: Mapping[str, Factory], address: str) -> grpc.aio.Server:
    """Starts a grpc.aio server for `methods` (full `/package.Service/Method` paths)."""
    services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}
    for path, factory in methods.items():
        service, _, method = path.strip("/").rpartition("/")
        services.setdefault(service, {})[method] = grpc.stream_stream_rpc_method_handler(
            _behaviour(factory)
        )
    server = grpc.aio.server(options=EXTPROC_OPTIONS)
    for service, handlers in services.items():
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_insecure_port(address)
    await server.start()
    return server
