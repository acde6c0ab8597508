"""Log rows for the requests Envoy answered without the data plane: its gRPC access log.

Envoy answers some requests itself before any filter runs — an HTTP/1 codec error (a bad header,
Transfer-Encoding with Content-Length, headers too large), a refused Upgrade — or while the data
plane never answered (it was unreachable). Those requests never open a Flow, so the pipeline
cannot log them. Envoy's `envoy.access_loggers.http_grpc` sends them here instead
(`envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`, served next to ext_proc on the
same socket), filtered in `envoy/envoy.yaml` to requests without the `gatez.handled` metadata that
the Envoy adapter's first answer sets — so a request the pipeline logged is not logged twice, and
a normal request costs Envoy one metadata lookup and the data plane nothing.

The rows go through the same LogSink, with no tenant (nobody was authenticated), the status Envoy
answered with, the path cut to `PATH_LOG_LIMIT`, and Envoy's response code details as the error.

One race remains for the filter to miss: Envoy may answer a request itself while the data plane
is still on its first message (a codec error in a body sent right behind the headers, or the data
plane too slow: Envoy's 504), so Envoy never applies the answer that marks it handled. The Envoy
adapter then hands the reset flow here (`await_entry`) instead of logging it at once: when Envoy's
entry for the same request id arrives, the flow's row takes Envoy's status and reason, and it is
the only row; without one within `ENTRY_WAIT_S` the flow's row is written as it is.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import uuid
from collections.abc import Callable
from typing import Final

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf.message import DecodeError

from extproc.grpc_h2 import CallStream, MethodFactory
from extproc.logsink import LogSink
from gatez.logrows import RequestLogRow

log = logging.getLogger("gatez.envoy.access_log")

STREAM_ACCESS_LOGS_METHOD: Final = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
# How much of a path a row keeps: the request was refused, often for being malformed or huge.
PATH_LOG_LIMIT: Final = 1024
# How much of Envoy's response code details a row keeps (its static part is much shorter).
ERROR_LOG_LIMIT: Final = 64
# A request Envoy dropped without any answer (the client went away first, say).
NO_RESPONSE: Final = "no_response"
_METHODS: Final = {
    value: name
    for name, value in base_pb2.RequestMethod.items()
    if value != base_pb2.METHOD_UNSPECIFIED
}
# Envoy sends its entries every `buffer_flush_interval` (0.5 s in envoy/envoy.yaml).
ENTRY_WAIT_S: Final = 2.0
# Reset flows waiting for Envoy's entry, at most; beyond, a flow is logged at once.
MAX_WAITING: Final = 10_000
GRPC_INVALID_ARGUMENT: Final = 3
_STREAM_ANSWER: Final = als_pb2.StreamAccessLogsResponse().SerializeToString()


# Called with Envoy's row for a request, or None when none came in time.
Settle = Callable[[RequestLogRow | None], None]


class EnvoyAccessLog:
    """Envoy's `AccessLogService`: every HTTP entry it sends becomes a request-log row, unless a
    flow of the same request waits for it (`await_entry`)."""

    def __init__(
        self,
        sink: LogSink,
        node_id: str,
        *,
        wait_s: float = ENTRY_WAIT_S,
        max_waiting: int = MAX_WAITING,
    ) -> None:
        self._sink = sink
        self._node_id = node_id
        self._wait_s = wait_s
        self._max_waiting = max_waiting
        self._waiting: dict[str, tuple[Settle, asyncio.TimerHandle]] = {}

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def await_entry(self, request_id: str, settle: Settle) -> bool:
        """Calls `settle` with Envoy's row for `request_id` when it arrives within the wait, else
        with None; False (and no call) when too many flows wait already or this one does."""
        if len(self._waiting) >= self._max_waiting or request_id in self._waiting:
            return False
        timer = asyncio.get_running_loop().call_later(self._wait_s, self._expire, request_id)
        self._waiting[request_id] = (settle, timer)
        return True

    def close(self) -> None:
        """Settles every waiting flow without Envoy's entry (the data plane is stopping)."""
        waiting, self._waiting = self._waiting, {}
        for settle, timer in waiting.values():
            timer.cancel()
            _settle_safely(settle, None)

    def _expire(self, request_id: str) -> None:
        waiter = self._waiting.pop(request_id, None)
        if waiter is not None:
            _settle_safely(waiter[0], None)

    def methods(self) -> dict[str, MethodFactory]:
        """What to serve on a `GrpcServer`, next to the ext_proc service."""
        return {STREAM_ACCESS_LOGS_METHOD: self.open}

    def open(self, stream: CallStream) -> AccessLogStream:
        return AccessLogStream(self, stream)

    def add(self, message: als_pb2.StreamAccessLogsMessage) -> None:
        """One row per HTTP entry of a message (TCP entries are not ours): queued, or handed to
        the flow that waits for it."""
        for entry in message.http_logs.log_entry:
            row = request_row(entry, self._node_id)
            waiter = self._waiting.pop(row.request_id, None)
            if waiter is None:
                self._sink.add_request(row)
                continue
            settle, timer = waiter
            timer.cancel()
            _settle_safely(settle, row)


def _settle_safely(settle: Settle, row: RequestLogRow | None) -> None:
    try:
        settle(row)
    except Exception:
        log.exception("access log: finishing a reset flow failed")


class AccessLogStream:
    """One StreamAccessLogs call: Envoy streams messages and never expects an answer until it
    closes its side (the call is client-streaming)."""

    __slots__ = ("_service", "_stream")

    def __init__(self, service: EnvoyAccessLog, stream: CallStream) -> None:
        self._service = service
        self._stream = stream

    def on_message(self, message: bytes) -> None:
        try:
            decoded = als_pb2.StreamAccessLogsMessage.FromString(message)
        except DecodeError:
            log.warning("access log: undecodable StreamAccessLogsMessage; stream ended")
            self._stream.finish(GRPC_INVALID_ARGUMENT, "undecodable StreamAccessLogsMessage")
            return
        self._service.add(decoded)

    def on_end(self) -> None:
        self._stream.send_message(_STREAM_ANSWER)
        self._stream.finish()

    def on_reset(self) -> None:
        """Rows of messages already received are queued; nothing else is held."""


def request_row(entry: accesslog_pb2.HTTPAccessLogEntry, node_id: str) -> RequestLogRow:
    """The request-log row of a request Envoy answered itself."""
    common = entry.common_properties
    request = entry.request
    response = entry.response
    started = (
        common.start_time.ToDatetime(tzinfo=dt.UTC)
        if common.HasField("start_time")
        else dt.datetime.now(dt.UTC)
    )
    duration = common.time_to_last_downstream_tx_byte
    if not common.HasField("time_to_last_downstream_tx_byte"):
        duration = common.duration
    error = response.response_code_details.partition("{")[0][:ERROR_LOG_LIMIT]
    return RequestLogRow(
        time=started,
        # Envoy's own id when it got as far as minting one (it never keeps a client's).
        request_id=request.request_id or uuid.uuid4().hex,
        tenant_id="",
        key_id="",
        method=_METHODS.get(request.request_method, ""),
        path=request.path.partition("?")[0][:PATH_LOG_LIMIT],
        status=response.response_code.value,
        latency_ms=duration.ToNanoseconds() / 1e6,
        error=error or NO_RESPONSE,
        node_id=node_id,
    )
