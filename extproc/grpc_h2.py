"""A lean gRPC server over HTTP/2, for the one peer the data plane serves: Envoy's ext_proc client.

Why not `grpc.aio`: measured on the walking skeleton, a do-nothing `grpc.aio` ExternalProcessor
already added ~0.6 ms per request and capped near 2,500 requests/s, before any policy work — a
completion-queue poller thread and per-message wake-ups. This server is one asyncio Protocol per
connection that parses HTTP/2 frames and gRPC length-prefixed messages itself, decodes request
header blocks with `hpack`, and writes constant header blocks it never indexes. It implements what
a gRPC server needs and no more: streams, CONTINUATION, padding, flow control in both directions,
SETTINGS, PING, RST_STREAM and GOAWAY, trailers with `grpc-status`, and graceful shutdown. It does
no TLS (a Unix socket or loopback) and no compression (refused with UNIMPLEMENTED).

Handlers see bytes: a method is a factory called per stream with a `ServerStream`; the object it
returns gets each request message, the client's half-close, and a reset. A handler that raises
fails its own call (INTERNAL), never the connection.

Whatever a peer can make the server hold is bounded (`Limits`): header blocks, CONTINUATION runs,
streams, connections, unfinished messages and responses waiting for flow-control credit (per
stream, per connection and server-wide), bytes written to a peer that stopped reading, and streams
the peer resets before they were answered. A peer over a stream's bound loses that stream; one
over a connection's bound loses its connection; other streams and connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, NoReturn, Protocol, cast
from urllib.parse import quote

import hpack

from gatez.errors import quoted

log = logging.getLogger("gatez.grpc_h2")

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6) and flags.
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20

# SETTINGS identifiers.
HEADER_TABLE_SIZE, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE = 1, 3, 4, 5
MAX_HEADER_LIST_SIZE = 6

# Error codes (RFC 9113 §7).
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 5, 6, 7, 8, 9
ENHANCE_YOUR_CALM = 11

# gRPC status codes used here.
GRPC_OK, GRPC_CANCELLED, GRPC_UNKNOWN, GRPC_INTERNAL, GRPC_UNIMPLEMENTED = 0, 1, 2, 13, 12
GRPC_RESOURCE_EXHAUSTED, GRPC_UNAVAILABLE = 8, 14

MAX_WINDOW: Final = 2**31 - 1
# The largest frame we accept. A frame is held whole until it is complete, so this bounds a
# connection's input buffer; Envoy (1.40, observed) sends DATA in 16 KiB frames whatever we allow.
OUR_MAX_FRAME: Final = 64 * 1024
# Envoy buffers a request or response body up to the listener's per_connection_buffer_limit_bytes
# (envoy/envoy.yaml) and sends it in one ProcessingRequest; the rest of that message (headers,
# attributes, metadata) is far below the 1 MiB of room on top. A larger message is refused.
ENVOY_BODY_LIMIT: Final = 16 * 1024 * 1024
MAX_MESSAGE_BYTES: Final = ENVOY_BODY_LIMIT + 1024 * 1024
# Replenish receive windows once this much has been consumed (half the window we grant).
REPLENISH_AT: Final = 2**30
# Decoded header blocks are cached for blocks up to this size (Envoy's are ~100 bytes), within
# these totals per connection.
CACHED_BLOCK_BYTES: Final = 4096
HEADER_CACHE_ENTRIES: Final = 64
HEADER_CACHE_BYTES: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    """What peers can make the server hold, and what happens beyond it.

    The defaults fit Envoy: bodies up to `ENVOY_BODY_LIMIT`, a few connections (one per worker,
    more when a connection's streams run out), streams as long as the HTTP requests (the
    `gatez_extproc` cluster's circuit breaker in envoy/envoy.yaml allows `max_streams` at once;
    change both together).
    With every bound reached at once the server holds at most ~210 MiB: streams 4,096 x (~1 KiB
    + a decoded header list of up to ~20 KiB) ~ 85 MiB, message bytes 96 MiB, and per
    connection a partial frame, a header block, the header cache, unread bytes and the
    transport's high-water mark (~260 KiB) x 128 ~ 33 MiB. Envoy's own traffic holds far less.
    """

    # Per connection, advertised in SETTINGS, and server-wide: a stream beyond either is
    # refused (REFUSED_STREAM; Envoy opens another connection for the first).
    max_concurrent_streams: int = 1000
    max_streams: int = 4096
    # A connection beyond it gets GOAWAY(ENHANCE_YOUR_CALM) and is closed.
    max_connections: int = 128
    # A declared message length beyond it: RESOURCE_EXHAUSTED for that stream, nothing buffered.
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # One header block (HEADERS + CONTINUATION) encoded, decoded (RFC 9113 §6.5.2: name + value +
    # 32 per field; advertised as SETTINGS_MAX_HEADER_LIST_SIZE), and its CONTINUATION frames.
    # Beyond them the connection ends: see `H2Connection._header_block_too_large`. 8 KiB is
    # gRPC's own default (grpc.max_metadata_size); Envoy's blocks are ~100 bytes (the proxied
    # request's headers travel in messages), and `hpack` needs ~2 ms to decode 8 KiB of
    # Huffman-coded fields (64 KiB: ~15 ms of the event loop).
    max_header_block_bytes: int = 8 * 1024
    max_header_list_bytes: int = 8 * 1024
    max_continuation_frames: int = 16
    # Bytes held for a peer: unfinished request messages plus responses waiting for flow-control
    # credit. A stream that would take a connection or the server past its budget is refused
    # (RESOURCE_EXHAUSTED while receiving; RST_STREAM ENHANCE_YOUR_CALM while sending). Bodies
    # cross the socket in milliseconds, so a few largest ones at a time are plenty.
    connection_held_bytes: int = 64 * 1024 * 1024
    server_held_bytes: int = 96 * 1024 * 1024
    # Responses of one stream waiting for credit: one largest message and its trailers.
    stream_outbox_bytes: int = MAX_MESSAGE_BYTES + 64 * 1024
    # Bytes written (PING and SETTINGS acknowledgements, resets, headers) while the transport's
    # buffer is full because the peer does not read; beyond it the connection is dropped.
    # (Envoy's own bound for its peers: 1,000 control frames, ~17 KB.)
    unread_bytes: int = 64 * 1024
    # A connection whose peer reset this many streams before they were answered, and at least
    # half of the streams it opened, is drained with GOAWAY(ENHANCE_YOUR_CALM): the "rapid
    # reset" attack. Envoy's own defaults for its clients (premature_reset_total_stream_count).
    premature_resets: int = 500
    # A closing connection whose peer does not read what is left is dropped after this.
    close_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        # A message that arrives whole in one frame is delivered without a length check.
        if self.max_message_bytes < OUR_MAX_FRAME:
            raise ValueError(f"max_message_bytes must be at least {OUR_MAX_FRAME}")


@dataclass(frozen=True, slots=True)
class ConnectionUsage:
    """What one connection holds now (for tests and metrics)."""

    streams: int
    held_bytes: int
    input_bytes: int
    header_cache_entries: int
    header_cache_bytes: int
    unread_bytes: int
    write_buffer_bytes: int


GRPC_PREFIX = struct.Struct(">BI")


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _hpack_int(value: int, prefix_bits: int, first_byte: int) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with the given prefix and the high bits of byte one."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, new name, no Huffman: stateless to encode."""
    return b"\x00" + _hpack_int(len(name), 7, 0) + name + _hpack_int(len(value), 7, 0) + value


# `:status: 200` is static entry 8; content-type (static name 31) as a literal without indexing.
RESPONSE_HEADERS: Final = b"\x88" + b"\x0f\x10" + _hpack_int(16, 7, 0) + b"application/grpc"
OK_TRAILERS: Final = _literal(b"grpc-status", b"0")


def status_trailers(code: int, message: str = "") -> bytes:
    block = _literal(b"grpc-status", str(code).encode())
    if message:
        # gRPC's percent-encoding: everything outside printable ASCII, and '%' itself.
        encoded = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
        block += _literal(b"grpc-message", encoded.encode("ascii"))
    return block


class ProtocolError(Exception):
    """A connection error (RFC 9113 §5.4.1): GOAWAY with `code`, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamHandler(Protocol):
    """What a method's factory returns for one stream. Callbacks run on the event loop."""

    def on_message(self, message: bytes) -> None:
        """One complete request message."""
        ...

    def on_end(self) -> None:
        """The client has half-closed: no more messages will come."""
        ...

    def on_reset(self) -> None:
        """The stream was reset or the connection lost; nothing more can be sent."""
        ...


class CallStream(Protocol):
    """The server side of one call, as a handler uses it (`ServerStream` here; the grpc.aio
    fallback in `extproc.grpcio_server` has its own)."""

    @property
    def remote_closed(self) -> bool:
        """The client has half-closed."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The call's request headers (its metadata: `traceparent` from Envoy's tracer)."""
        ...

    def send_message(self, message: bytes) -> None: ...

    def finish(self, code: int = 0, message: str = "") -> None:
        """Ends the call with a gRPC status; later calls do nothing."""
        ...


MethodFactory = Callable[["ServerStream"], StreamHandler]


class ServerStream:
    """One gRPC call as a handler sees it: send messages, then finish with a status."""

    __slots__ = (
        "_connection",
        "buffer",
        "closed",
        "handler",
        "headers",
        "headers_sent",
        "id",
        "outbox",
        "queued",
        "recv_unacked",
        "remote_closed",
        "send_window",
    )

    def __init__(
        self,
        connection: H2Connection,
        stream_id: int,
        window: int,
        headers: Mapping[str, str],
    ) -> None:
        self._connection = connection
        self.id = stream_id
        # The request's headers; shared with other streams that sent the same block: read only.
        self.headers = headers
        self.handler: StreamHandler | None = None
        self.buffer = bytearray()
        self.headers_sent = False
        self.remote_closed = False
        # Set once trailers went out or the stream was reset.
        self.closed = False
        self.send_window = window
        self.recv_unacked = 0
        # Frames waiting for flow-control credit: (kind, flags, payload); `queued` DATA bytes.
        self.outbox: deque[tuple[int, int, bytes]] = deque()
        self.queued = 0

    def send_message(self, message: bytes) -> None:
        if self.closed:
            return
        if not self.headers_sent:
            self.headers_sent = True
            self._connection.send_headers(self, RESPONSE_HEADERS, end_stream=False)
        self._connection.send_data(self, GRPC_PREFIX.pack(0, len(message)) + message)

    def finish(self, code: int = GRPC_OK, message: str = "") -> None:
        """Ends the call with trailers (or a trailers-only response when nothing was sent)."""
        if self.closed:
            return
        block = OK_TRAILERS if code == GRPC_OK and not message else status_trailers(code, message)
        if not self.headers_sent:
            self.headers_sent = True
            block = RESPONSE_HEADERS + block
        # The call is over for the handler: no more messages, no reset reaches it; a client
        # still sending is told to stop (RST_STREAM NO_ERROR) once the trailers are out.
        self.handler = None
        self._connection.send_headers(self, block, end_stream=True)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection from a gRPC client (server side)."""

    # Slots, not a __dict__: past 30 attributes CPython 3.11 stops sharing instance dict keys
    # and every attribute access on the hot path gets slower (~1.5 µs per request, measured).
    __slots__ = (
        "_blocks",
        "_blocks_bytes",
        "_buffer",
        "_close_timer",
        "_continuations",
        "_decoder",
        "_going_away",
        "_header_block",
        "_header_flags",
        "_header_stream",
        "_held",
        "_last_stream_id",
        "_limits",
        "_opened",
        "_out",
        "_paused",
        "_peer_initial_window",
        "_peer_max_frame",
        "_preface_seen",
        "_premature_resets",
        "_receiving",
        "_recv_unacked",
        "_send_window",
        "_server",
        "_streams",
        "_table_size_update",
        "_transport",
        "_unread",
        "_waiting",
        "closed",
    )

    def __init__(self, server: GrpcServer) -> None:
        self._server = server
        self._limits = server.limits
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface_seen = False
        self._decoder = hpack.Decoder(max_header_list_size=self._limits.max_header_list_bytes)
        # Decoded header blocks by their bytes, with the table state they are valid for.
        self._blocks: dict[bytes, tuple[tuple[int, int, int], Mapping[str, str]]] = {}
        self._blocks_bytes = 0
        self._streams: dict[int, ServerStream] = {}
        # Streams with frames waiting for flow-control credit, so a WINDOW_UPDATE or SETTINGS
        # frame costs what is waiting, not every open stream.
        self._waiting: dict[int, ServerStream] = {}
        self._last_stream_id = 0
        # The header block being assembled across CONTINUATION frames.
        self._header_stream: int = 0
        self._header_flags: int = 0
        self._header_block = bytearray()
        self._continuations = 0
        # What the client lets us send.
        self._peer_initial_window = 65_535
        self._peer_max_frame = 16_384
        self._send_window = 65_535
        # A table-size change from the peer must be acknowledged in our next header block.
        self._table_size_update = False
        self._recv_unacked = 0
        self._going_away = False
        # Bytes held for the peer: unfinished messages and DATA waiting for credit.
        self._held = 0
        # Streams opened, and those the peer reset before we answered (`Limits.premature_resets`).
        self._opened = 0
        self._premature_resets = 0
        # Outgoing bytes of this loop turn (see `_write`); True while input is being handled.
        self._out = bytearray()
        self._receiving = False
        # The transport's buffer is full (the peer reads slower than we write): DATA waits in
        # outboxes, and what is written anyway is counted against `Limits.unread_bytes`.
        self._paused = False
        self._unread = 0
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed = asyncio.Event()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self._transport = cast(asyncio.Transport, transport)
        limits = self._limits
        settings = struct.pack(
            ">HIHIHIHIHI",
            MAX_CONCURRENT_STREAMS,
            limits.max_concurrent_streams,
            INITIAL_WINDOW_SIZE,
            MAX_WINDOW,
            MAX_FRAME_SIZE,
            OUR_MAX_FRAME,
            HEADER_TABLE_SIZE,
            4096,
            MAX_HEADER_LIST_SIZE,
            limits.max_header_list_bytes,
        )
        if len(self._server.connections) >= limits.max_connections:
            log.warning("ext_proc connection refused: %d are open", len(self._server.connections))
            self._going_away = True
            self._transport.write(_frame(SETTINGS, 0, 0, settings))
            self._goaway(ENHANCE_YOUR_CALM, "too many connections")
            return
        self._server.connections.add(self)
        self._transport.write(
            _frame(SETTINGS, 0, 0, settings)
            + _frame(WINDOW_UPDATE, 0, 0, (MAX_WINDOW - 65_535).to_bytes(4, "big"))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        streams, self._streams = self._streams, {}
        self._server.streams -= len(streams)
        for stream in streams.values():
            self._discard(stream)
            self._reset_handler(stream)
        self._server.held_bytes -= self._held
        self._held = 0
        self._blocks.clear()
        self._buffer.clear()
        self.closed.set()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._unread = 0
        self._flush_all()

    def data_received(self, data: bytes) -> None:
        self._receiving = True
        try:
            self._receive(data)
        finally:
            self._receiving = False
            self._flush_out()

    def usage(self) -> ConnectionUsage:
        """What this connection holds now."""
        return ConnectionUsage(
            streams=len(self._streams),
            held_bytes=self._held,
            input_bytes=len(self._buffer) + len(self._header_block),
            header_cache_entries=len(self._blocks),
            header_cache_bytes=self._blocks_bytes,
            unread_bytes=self._unread,
            write_buffer_bytes=self._transport.get_write_buffer_size() if self._transport else 0,
        )

    def _receive(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface_seen:
                if len(buffer) < len(PREFACE):
                    return
                if buffer[: len(PREFACE)] != PREFACE:
                    raise ProtocolError(PROTOCOL_ERROR, "not an HTTP/2 client")
                del buffer[: len(PREFACE)]
                self._preface_seen = True
            offset = 0
            end = len(buffer)
            while end - offset >= 9:
                length = int.from_bytes(buffer[offset : offset + 3], "big")
                if length > OUR_MAX_FRAME:
                    raise ProtocolError(FRAME_SIZE_ERROR, "frame too large")
                if end - offset < 9 + length:
                    break
                kind = buffer[offset + 3]
                flags = buffer[offset + 4]
                stream_id = int.from_bytes(buffer[offset + 5 : offset + 9], "big") & 0x7FFFFFFF
                payload = bytes(buffer[offset + 9 : offset + 9 + length])
                offset += 9 + length
                self._on_frame(kind, flags, stream_id, payload)
            if offset:
                del buffer[:offset]
        except ProtocolError as error:
            log.warning("HTTP/2 protocol error from ext_proc client: %s", error)
            self._goaway(error.code, str(error))
        except Exception:
            log.exception("HTTP/2 connection failed")
            self._goaway(INTERNAL_ERROR, "internal error")

    # --- frames in ---

    def _on_frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self._header_stream and kind != CONTINUATION:
            raise ProtocolError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._on_data(flags, stream_id, payload)
        elif kind == HEADERS:
            self._on_headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            if stream_id != self._header_stream or not stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            self._continuations += 1
            if self._continuations > self._limits.max_continuation_frames:
                self._header_block_too_large("too many CONTINUATION frames")
            if len(self._header_block) + len(payload) > self._limits.max_header_block_bytes:
                self._header_block_too_large("header block too large")
            self._header_block += payload
            if flags & END_HEADERS:
                self._end_headers()
        elif kind == SETTINGS:
            if stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._on_settings(payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if len(payload) != 8 or stream_id:
                raise ProtocolError(
                    FRAME_SIZE_ERROR if stream_id == 0 else PROTOCOL_ERROR, "bad PING"
                )
            if not flags & ACK:
                self._write(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if len(payload) != 4 or not 0 < stream_id <= self._last_stream_id:
                self._bad_rst_stream(payload)
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                # Envoy (1.40, observed) ends every ext_proc stream so, without a half-close.
                self._reset_by_peer(stream)
        elif kind == GOAWAY:
            self._going_away = True
            self._check_idle()
        elif kind == PUSH_PROMISE:
            raise ProtocolError(PROTOCOL_ERROR, "clients do not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks.

    def _header_block_too_large(self, message: str) -> NoReturn:
        """A header block beyond `Limits` ends the connection.

        RFC 9113 §10.5.1: a header block must be decoded to keep the compression context in
        step unless the connection is closed, and decoding is the cost we refuse, so this is a
        connection error. ENHANCE_YOUR_CALM says why: the block broke no rule of the protocol
        (our SETTINGS_MAX_HEADER_LIST_SIZE is advisory, §6.5.2), so PROTOCOL_ERROR would
        mislead, and it was not malformed, which COMPRESSION_ERROR would say; it was more than
        we are willing to process.
        """
        raise ProtocolError(ENHANCE_YOUR_CALM, message)

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            raise ProtocolError(PROTOCOL_ERROR, "bad stream id for HEADERS")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise ProtocolError(PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ProtocolError(PROTOCOL_ERROR, "bad padding")
        if end - start > self._limits.max_header_block_bytes:
            self._header_block_too_large("header block too large")
        self._header_stream = stream_id
        self._header_flags = flags
        self._header_block = bytearray(payload[start:end])
        self._continuations = 0
        if flags & END_HEADERS:
            self._end_headers()

    def _decode(self, block: bytes) -> Mapping[str, str]:
        """A header block's fields (shared, read-only), decoded at most once while the same
        bytes mean the same thing.

        Envoy opens a stream per request with the very same block (indexed fields and literals
        that are not added to the table); decoding it costs ~30 µs in `hpack`. A block whose
        decoding left the dynamic table as it was decodes the same way for as long as the
        table stays so, which `_table_state` tells.
        """
        state = self._table_state()
        cached = self._blocks.get(block)
        if cached is not None and state is not None and cached[0] == state:
            return cached[1]
        try:
            fields = self._decoder.decode(block, raw=True)
        except hpack.OversizedHeaderListError:
            self._header_block_too_large("header list too large")
        except Exception as error:
            raise ProtocolError(COMPRESSION_ERROR, f"bad header block: {error}") from None
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in fields}
        if state is not None and self._table_state() == state and len(block) <= CACHED_BLOCK_BYTES:
            # What an entry holds: its key and its fields (counted as RFC 9113 counts them).
            size = len(block) + sum(len(name) + len(value) + 32 for name, value in fields)
            if (
                len(self._blocks) >= HEADER_CACHE_ENTRIES
                or self._blocks_bytes + size > HEADER_CACHE_BYTES
            ):
                self._blocks.clear()
                self._blocks_bytes = 0
            if size <= HEADER_CACHE_BYTES:
                self._blocks[block] = (state, headers)
                self._blocks_bytes += size
        return headers

    def _table_state(self) -> tuple[int, int, int] | None:
        """Changes whenever the decoder's dynamic table does: an insertion puts a new entry
        first, an eviction or resize changes the length or the size limit."""
        table = self._decoder.header_table
        entries = getattr(table, "dynamic_entries", None)
        if entries is None:
            return None  # an hpack without this attribute: no caching
        return (id(entries[0]) if entries else 0, len(entries), table.maxsize)

    def _end_headers(self) -> None:
        stream_id, flags = self._header_stream, self._header_flags
        block = bytes(self._header_block)
        self._header_stream, self._header_block = 0, bytearray()
        headers = self._decode(block)
        stream = self._streams.get(stream_id)
        if stream is not None:
            # Request trailers: gRPC clients send none, but they end the stream when they do.
            if flags & END_STREAM:
                self._remote_end(stream)
            return
        if stream_id <= self._last_stream_id:
            # A frame on a stream we closed already (a late trailer after our reset): ignore.
            return
        self._last_stream_id = stream_id
        self._opened += 1
        stream = ServerStream(self, stream_id, self._peer_initial_window, headers)
        self._streams[stream_id] = stream
        server = self._server
        server.streams += 1
        if (
            self._going_away
            or len(self._streams) > self._limits.max_concurrent_streams
            or server.streams > self._limits.max_streams
        ):
            self._refuse(stream, REFUSED_STREAM)
            return
        refusal = self._check_request(stream.headers)
        factory = self._server.methods.get(stream.headers.get(":path", ""))
        if refusal is None and factory is None:
            path = quoted(stream.headers.get(":path", ""))
            refusal = (GRPC_UNIMPLEMENTED, f"unknown method {path}")
        if refusal is not None:
            stream.finish(*refusal)
            if flags & END_STREAM:
                self._remote_end(stream)
            return
        assert factory is not None
        try:
            stream.handler = factory(stream)
        except Exception:
            self._handler_failed(stream)
        if flags & END_STREAM:
            self._remote_end(stream)

    @staticmethod
    def _check_request(headers: Mapping[str, str]) -> tuple[int, str] | None:
        if headers.get(":method") != "POST":
            return GRPC_UNIMPLEMENTED, "gRPC needs POST"
        if not headers.get("content-type", "").startswith("application/grpc"):
            return GRPC_UNIMPLEMENTED, "not a gRPC request"
        encoding = headers.get("grpc-encoding", "identity")
        if encoding != "identity":
            return GRPC_UNIMPLEMENTED, f"grpc-encoding {quoted(encoding)} is not supported"
        return None

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolError(PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        self._recv_unacked += size
        if self._recv_unacked >= REPLENISH_AT:
            self._write(_frame(WINDOW_UPDATE, 0, 0, self._recv_unacked.to_bytes(4, "big")))
            self._recv_unacked = 0
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self._last_stream_id:
                raise ProtocolError(PROTOCOL_ERROR, "DATA on an idle stream")
            return  # closed or reset by us: credit counted above, data dropped
        stream.recv_unacked += size
        if stream.recv_unacked >= REPLENISH_AT:
            self._write(_frame(WINDOW_UPDATE, 0, stream_id, stream.recv_unacked.to_bytes(4, "big")))
            stream.recv_unacked = 0
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ProtocolError(PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : size - payload[0]]
        if stream.handler is not None and payload:
            try:
                self._deliver(stream, payload)
            except Exception:
                self._handler_failed(stream)
        if flags & END_STREAM:
            self._remote_end(stream)

    def _deliver(self, stream: ServerStream, payload: bytes) -> None:
        handler = stream.handler
        assert handler is not None
        if not stream.buffer and len(payload) >= 5:
            # The common case: whole messages in one frame, no copy into the stream buffer.
            # (A frame is below `max_message_bytes`, see `Limits`: its message is not too large.)
            compressed, length = GRPC_PREFIX.unpack_from(payload)
            if not compressed and len(payload) == 5 + length:
                handler.on_message(payload[5:])
                return
        self._reassemble(stream, handler, payload)

    def _reassemble(self, stream: ServerStream, handler: StreamHandler, data: bytes) -> None:
        """Cuts messages out of DATA that does not carry exactly one: the start or the rest of
        a message, or several. Only an unfinished message's bytes are kept, and only once its
        declared length passed the limit and they fit the connection's and server's budget."""
        buffer = stream.buffer
        offset, end = 0, len(data)
        while offset < end:
            if buffer:
                # The rest of a message begun in an earlier frame.
                if len(buffer) < 5:
                    take = min(5 - len(buffer), end - offset)
                    if not self._hold(stream, data[offset : offset + take]):
                        return
                    offset += take
                    if len(buffer) < 5 or not self._check_prefix(stream, buffer, 0):
                        return
                length = GRPC_PREFIX.unpack_from(buffer)[1]
                take = min(5 + length - len(buffer), end - offset)
                if not self._hold(stream, data[offset : offset + take]):
                    return
                offset += take
                if len(buffer) < 5 + length:
                    return
                with memoryview(buffer) as view:
                    message = bytes(view[5:])
                self._release_buffer(stream)
            else:
                if end - offset < 5:
                    self._hold(stream, data[offset:])
                    return
                if not self._check_prefix(stream, data, offset):
                    return
                length = GRPC_PREFIX.unpack_from(data, offset)[1]
                if end - offset - 5 < length:
                    self._hold(stream, data[offset:])
                    return
                message = data[offset + 5 : offset + 5 + length]
                offset += 5 + length
            handler.on_message(message)
            if stream.handler is not handler:
                return  # finished, failed or reset meanwhile

    def _check_prefix(self, stream: ServerStream, source: bytes | bytearray, offset: int) -> bool:
        """Whether the message whose prefix starts at `offset` may be received; if not, the
        call ends (and nothing of it is kept)."""
        compressed, length = GRPC_PREFIX.unpack_from(source, offset)
        if compressed:
            self._fail_stream(stream, GRPC_UNIMPLEMENTED, "compressed messages")
            return False
        if length > self._limits.max_message_bytes:
            log.warning("ext_proc stream %d: refused a %d-byte message", stream.id, length)
            self._fail_stream(
                stream,
                GRPC_RESOURCE_EXHAUSTED,
                f"message larger than {self._limits.max_message_bytes} bytes",
            )
            return False
        return True

    def _hold(self, stream: ServerStream, chunk: bytes) -> bool:
        """Keeps bytes of an unfinished message if the connection's and the server's budgets
        allow; otherwise the call ends with RESOURCE_EXHAUSTED."""
        size = len(chunk)
        server = self._server
        limits = self._limits
        if (
            self._held + size > limits.connection_held_bytes
            or server.held_bytes + size > limits.server_held_bytes
        ):
            log.warning("ext_proc stream %d: buffer budget exhausted", stream.id)
            self._fail_stream(stream, GRPC_RESOURCE_EXHAUSTED, "too many bytes buffered")
            return False
        stream.buffer += chunk
        self._held += size
        server.held_bytes += size
        return True

    def _release_buffer(self, stream: ServerStream) -> None:
        size = len(stream.buffer)
        if size:
            stream.buffer.clear()
            self._held -= size
            self._server.held_bytes -= size

    def _remote_end(self, stream: ServerStream) -> None:
        stream.remote_closed = True
        if stream.buffer:
            self._release_buffer(stream)  # an unfinished message that will not be finished
        if stream.handler is not None and not stream.closed:
            try:
                stream.handler.on_end()
            except Exception:
                self._handler_failed(stream)
        if stream.closed:
            self._forget(stream)

    @staticmethod
    def _bad_rst_stream(payload: bytes) -> NoReturn:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "bad RST_STREAM length")
        raise ProtocolError(PROTOCOL_ERROR, "RST_STREAM on an idle stream")

    def _reset_by_peer(self, stream: ServerStream) -> None:
        self._server.streams -= 1
        if not stream.headers_sent:
            self._count_premature_reset()
        if stream.buffer or stream.queued:
            self._discard(stream)
        self._reset_handler(stream)
        self._check_idle()

    def _count_premature_reset(self) -> None:
        """Drains a connection whose peer resets most streams before they are answered: the
        "rapid reset" attack (CVE-2023-44487) makes a server start work it never finishes.
        "Unanswered", not "not half-closed": Envoy resets every stream without a half-close."""
        self._premature_resets += 1
        if (
            self._premature_resets >= self._limits.premature_resets
            and 2 * self._premature_resets >= self._opened
            and not self._going_away
        ):
            log.warning(
                "ext_proc client reset %d of %d streams unanswered: draining the connection",
                self._premature_resets,
                self._opened,
            )
            self._drain(ENHANCE_YOUR_CALM)

    def _on_settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise ProtocolError(FRAME_SIZE_ERROR, "bad SETTINGS length")
        credit_changed = False
        for offset in range(0, len(payload), 6):
            identifier, value = struct.unpack_from(">HI", payload, offset)
            if identifier == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(FLOW_CONTROL_ERROR, "window too large")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                if delta:
                    credit_changed = True
                    for stream in self._streams.values():
                        stream.send_window += delta
            elif identifier == MAX_FRAME_SIZE:
                if not 16_384 <= value <= 2**24 - 1:
                    raise ProtocolError(PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                credit_changed = credit_changed or value != self._peer_max_frame
                self._peer_max_frame = value
            elif identifier == HEADER_TABLE_SIZE and value < 4096:
                # We never index, so the table is empty; a size update of 0 acknowledges it.
                self._table_size_update = True
        self._write(_frame(SETTINGS, ACK, 0))
        if credit_changed:
            self._flush_all()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(FRAME_SIZE_ERROR, "bad WINDOW_UPDATE length")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if stream_id == 0:
            if not increment:
                raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(FLOW_CONTROL_ERROR, "connection window overflow")
            self._flush_all()
            return
        if stream_id > self._last_stream_id:
            raise ProtocolError(PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
        stream = self._streams.get(stream_id)
        if stream is not None:
            if not increment:
                # A stream error (RFC 9113 §6.9): this call ends, the connection goes on.
                self._fail_stream(stream, GRPC_INTERNAL, "WINDOW_UPDATE of 0")
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                # A stream error (RFC 9113 §6.9.1): this call ends, the connection goes on.
                self._fail_stream(stream, GRPC_INTERNAL, "stream window overflow")
                return
            if stream.outbox:
                self._flush(stream)

    # --- frames out ---

    def _write(self, data: bytes) -> None:
        """Queues bytes for the socket: everything one loop turn produces goes in one write.

        Writes are the data plane's largest cost after the event loop itself (each one wakes
        Envoy), so frames produced while handling input, or by many streams' tasks in the same
        turn, leave together.
        """
        if not self._out and not self._receiving:
            asyncio.get_running_loop().call_soon(self._flush_out)
        self._out += data

    def _flush_out(self) -> None:
        if not self._out:
            return
        data, self._out = bytes(self._out), bytearray()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._paused:
            # Only frames that are not DATA get here while paused (DATA waits in outboxes).
            if self._unread + len(data) > self._limits.unread_bytes:
                log.warning("ext_proc client stopped reading: connection dropped")
                transport.abort()
                return
            self._unread += len(data)
        transport.write(data)

    def _close_transport(self) -> None:
        self._flush_out()
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()
            # close() waits for the buffer to drain, which a peer that does not read prevents.
            if transport.get_write_buffer_size():
                self._close_timer = asyncio.get_running_loop().call_later(
                    self._limits.close_timeout_s, transport.abort
                )

    def send_headers(self, stream: ServerStream, block: bytes, *, end_stream: bool) -> None:
        if end_stream:
            stream.closed = True
            if stream.buffer:
                self._release_buffer(stream)  # the call is over: no more messages are read
        if stream.outbox:
            stream.outbox.append((HEADERS, END_STREAM if end_stream else 0, block))
        else:
            self._write_headers(stream.id, block, end_stream)
        if end_stream and not stream.outbox:
            self._after_close(stream)

    def _write_headers(self, stream_id: int, block: bytes, end_stream: bool) -> None:
        if self._table_size_update:
            self._table_size_update = False
            block = b"\x20" + block
        flags = END_STREAM if end_stream else 0
        limit = self._peer_max_frame
        if len(block) <= limit:
            self._write(_frame(HEADERS, flags | END_HEADERS, stream_id, block))
            return
        frames = [_frame(HEADERS, flags, stream_id, block[:limit])]
        for start in range(limit, len(block), limit):
            last = start + limit >= len(block)
            frames.append(
                _frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[start:][:limit])
            )
        self._write(b"".join(frames))

    def send_data(self, stream: ServerStream, data: bytes) -> None:
        if not stream.outbox and len(data) <= self._peer_max_frame and not self._paused:
            size = len(data)
            if size <= self._send_window and size <= stream.send_window:
                self._send_window -= size
                stream.send_window -= size
                self._write(_frame(DATA, 0, stream.id, data))
                return
        self._queue(stream, data)

    def _queue(self, stream: ServerStream, data: bytes) -> None:
        """Sends what the windows allow and keeps the rest, within the stream's, connection's
        and server's budget: a stream over it is reset (ENHANCE_YOUR_CALM, which a gRPC client
        reports as RESOURCE_EXHAUSTED)."""
        size = len(data)
        stream.outbox.append((DATA, 0, data))
        stream.queued += size
        self._held += size
        self._server.held_bytes += size
        self._waiting[stream.id] = stream
        self._flush(stream)
        limits = self._limits
        if stream.queued and (
            stream.queued > limits.stream_outbox_bytes
            or self._held > limits.connection_held_bytes
            or self._server.held_bytes > limits.server_held_bytes
        ):
            log.warning("ext_proc stream %d reset: its response waits for credit", stream.id)
            self._write(_frame(RST_STREAM, 0, stream.id, ENHANCE_YOUR_CALM.to_bytes(4, "big")))
            self._remove(stream)
            self._discard(stream)
            handler, stream.handler = stream.handler, None
            stream.closed = True
            if handler is not None:
                # Later, not inside the handler's own send_message call.
                asyncio.get_running_loop().call_soon(self._notify_reset, handler)
            self._check_idle()

    def _flush_all(self) -> None:
        for stream in list(self._waiting.values()):
            self._flush(stream)

    def _flush(self, stream: ServerStream) -> None:
        """Sends queued frames as far as the flow-control windows allow."""
        outbox = stream.outbox
        while outbox:
            kind, flags, payload = outbox[0]
            if kind == HEADERS:
                outbox.popleft()
                self._write_headers(stream.id, payload, bool(flags & END_STREAM))
                continue
            if self._paused:
                return
            size = min(len(payload), self._peer_max_frame)
            credit = min(self._send_window, stream.send_window)
            if credit <= 0 and size:
                return
            size = min(size, credit)
            self._send_window -= size
            stream.send_window -= size
            stream.queued -= size
            self._held -= size
            self._server.held_bytes -= size
            self._write(_frame(DATA, 0, stream.id, payload[:size]))
            if size == len(payload):
                outbox.popleft()
            else:
                outbox[0] = (kind, flags, payload[size:])
        self._waiting.pop(stream.id, None)
        if stream.closed:
            self._after_close(stream)

    def _after_close(self, stream: ServerStream) -> None:
        """Our side is done; the stream is forgotten once the client's side is done too."""
        if stream.remote_closed:
            self._forget(stream)
        elif stream.handler is None:
            # Refused before a handler existed: stop the client sending (RFC 9113 §8.1).
            self._write(_frame(RST_STREAM, 0, stream.id, NO_ERROR.to_bytes(4, "big")))
            self._forget(stream)

    def _forget(self, stream: ServerStream) -> None:
        # Both sides are done, so it holds nothing: its buffer went when either side ended,
        # its outbox is empty.
        if stream.outbox:
            return
        self._remove(stream)
        self._check_idle()

    def _remove(self, stream: ServerStream) -> None:
        if self._streams.pop(stream.id, None) is not None:
            self._server.streams -= 1

    def _discard(self, stream: ServerStream) -> None:
        """Gives back what a stream that is gone held against the budgets."""
        self._release_buffer(stream)
        if stream.queued:
            self._held -= stream.queued
            self._server.held_bytes -= stream.queued
            stream.queued = 0
        stream.outbox.clear()
        self._waiting.pop(stream.id, None)

    def _refuse(self, stream: ServerStream, code: int) -> None:
        stream.closed = True
        self._write(_frame(RST_STREAM, 0, stream.id, code.to_bytes(4, "big")))
        self._remove(stream)
        self._check_idle()

    def _fail_stream(self, stream: ServerStream, code: int, message: str) -> None:
        """Ends a call the client broke: its handler sees a reset, the client gets the status
        (after any response data still waiting for window) and then RST_STREAM."""
        handler = stream.handler
        self._release_buffer(stream)
        stream.finish(code, message)
        if handler is not None:
            self._notify_reset(handler)

    def _handler_failed(self, stream: ServerStream) -> None:
        """A handler (or anything in its stream's processing) raised: that call alone ends with
        INTERNAL and no detail for the peer; the connection and its other streams go on."""
        log.exception("ext_proc stream %d failed", stream.id)
        self._fail_stream(stream, GRPC_INTERNAL, "data plane error")

    def _reset_handler(self, stream: ServerStream) -> None:
        stream.closed = True
        handler, stream.handler = stream.handler, None
        if handler is not None:
            self._notify_reset(handler)

    @staticmethod
    def _notify_reset(handler: StreamHandler) -> None:
        try:
            handler.on_reset()
        except Exception:
            log.exception("stream reset handler failed")

    def _check_idle(self) -> None:
        if not self._streams and self._going_away:
            self._close_transport()

    def _goaway(self, code: int, message: str) -> None:
        self._write(
            _frame(
                GOAWAY,
                0,
                0,
                struct.pack(">II", self._last_stream_id, code) + message.encode()[:200],
            )
        )
        self._close_transport()

    def _drain(self, code: int) -> None:
        """Stops new streams (GOAWAY with `code`); the connection closes when the running ones
        are done."""
        self._going_away = True
        self._write(_frame(GOAWAY, 0, 0, struct.pack(">II", self._last_stream_id, code)))
        self._check_idle()

    def shutdown(self) -> None:
        """Stops new streams; the connection closes when the running ones are done."""
        if not self._going_away:
            self._drain(NO_ERROR)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class GrpcServer:
    """Serves gRPC methods (full `/package.Service/Method` paths) on a Unix socket or TCP."""

    def __init__(self, methods: Mapping[str, MethodFactory], *, limits: Limits = Limits()) -> None:
        self.methods = dict(methods)
        self.limits = limits
        self.connections: set[H2Connection] = set()
        # What all connections hold (see `Limits.max_streams` and `Limits.server_held_bytes`).
        self.streams = 0
        self.held_bytes = 0
        self._servers: list[asyncio.base_events.Server] = []

    async def listen(self, address: str) -> None:
        """`unix:/path` (a stale socket file is replaced) or `host:port`."""
        loop = asyncio.get_running_loop()
        if address.startswith("unix:"):
            path = address.removeprefix("unix:").removeprefix("//")
            remove_stale_socket(path)
            server = await loop.create_unix_server(lambda: H2Connection(self), str(path))
            os.chmod(path, 0o660)
        else:
            host, _, port = address.rpartition(":")
            server = await loop.create_server(
                lambda: H2Connection(self), host.strip("[]") or None, int(port)
            )
            for sock in server.sockets:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._servers.append(server)

    async def stop(self, grace: float | None = 2.0) -> None:
        """Stops listening, lets running streams finish for `grace` seconds (None: none), then
        drops the rest — the same call as `grpc.aio.Server.stop`, so either server stops alike."""
        for server in self._servers:
            server.close()
        connections = list(self.connections)
        for connection in connections:
            connection.shutdown()
        if connections and grace:
            # Closed, not merely idle: a going-away connection closes itself once idle, and its
            # last responses may still sit in the transport's buffer, which abort() would drop.
            waits = [asyncio.ensure_future(c.closed.wait()) for c in connections]
            await asyncio.wait(waits, timeout=grace)
            for wait in waits:
                wait.cancel()
        for connection in list(self.connections):
            connection.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()


def remove_stale_socket(path: str | os.PathLike[str]) -> None:
    """Removes a socket file left by a process that died, so bind() can succeed; refuses to
    remove anything else (checked without following a symlink)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    os.unlink(path)
