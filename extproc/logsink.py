"""Log rows leave the hot path here: appended in memory, written in batches by one task.

Nothing is lost on a failed write: the batch goes back to the front of the queue and the writer
backs off. Only when the queue is full (the store has been away for a long time) are the oldest
rows dropped, and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

import grpc

from gatez.logrows import AiLogRow, RequestLogRow, ai_log_to_proto, request_log_to_proto
from gatez.logstore import LogStore
from gatez.v1 import control_pb2, control_pb2_grpc

log = logging.getLogger("gatez.logsink")


class LogWriter(Protocol):
    async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
        """Stores one batch, or raises and stores none of it. The sink passes one table's rows
        per call (the other sequence empty), so each call is a single insert."""
        ...


class ClickHouseLogWriter:
    """Writes straight to a ClickHouse server (used when ClickHouse is not embedded)."""

    def __init__(self, store: LogStore) -> None:
        self._store = store

    async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
        if requests:
            await asyncio.to_thread(self._store.insert_request_logs, requests)
        if ai:
            await asyncio.to_thread(self._store.insert_ai_logs, ai)


# Rows converted to protobuf between two turns of the event loop (about 0.5 ms of work).
CONVERT_SLICE = 100


class ControlLogWriter:
    """Ships batches to the control service, which owns the embedded ClickHouse (chDB)."""

    def __init__(self, channel: grpc.aio.Channel, admin_token: str) -> None:
        self._stub = control_pb2_grpc.DataPlaneServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)

    async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
        request = control_pb2.IngestLogsRequest()
        # In slices, yielding between them: a batch of thousands of rows converted at once
        # would hold the event loop, and every request in flight, for milliseconds.
        for start in range(0, len(requests), CONVERT_SLICE):
            request.request_logs.extend(
                request_log_to_proto(r) for r in requests[start : start + CONVERT_SLICE]
            )
            await asyncio.sleep(0)
        for start in range(0, len(ai), CONVERT_SLICE):
            request.ai_logs.extend(ai_log_to_proto(r) for r in ai[start : start + CONVERT_SLICE])
            await asyncio.sleep(0)
        await self._stub.IngestLogs(request, metadata=self._metadata, timeout=10)


class LogSink:
    """Collects rows and flushes them every `interval_s`, or sooner when `batch_size` are due."""

    def __init__(
        self,
        writer: LogWriter,
        *,
        batch_size: int = 5000,
        # ClickHouse wants few, large inserts (an embedded chDB insert costs ~15 ms and up).
        interval_s: float = 1.0,
        max_rows: int = 200_000,
    ) -> None:
        self._writer = writer
        self._batch_size = batch_size
        self._interval_s = interval_s
        self._requests: deque[RequestLogRow] = deque(maxlen=max_rows)
        self._ai: deque[AiLogRow] = deque(maxlen=max_rows)
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.written = 0

    def add_request(self, row: RequestLogRow) -> None:
        self._note_full(self._requests)
        self._requests.append(row)
        self._note_due(self._requests)

    def add_ai(self, row: AiLogRow) -> None:
        self._note_full(self._ai)
        self._ai.append(row)
        self._note_due(self._ai)

    def _note_full(self, queue: deque[RequestLogRow] | deque[AiLogRow]) -> None:
        if len(queue) == queue.maxlen:
            self.dropped += 1  # the deque drops its oldest row

    def _note_due(self, queue: deque[RequestLogRow] | deque[AiLogRow]) -> None:
        if len(queue) >= self._batch_size:
            self._due.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="gatez-log-sink")

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stops the flusher and makes a last attempt to write what is left."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        try:
            await asyncio.wait_for(self.flush(), timeout_s)
        except Exception:
            log.warning(
                "log sink closed with %d rows unwritten", len(self._requests) + len(self._ai)
            )

    async def flush(self) -> None:
        """Writes everything queued now, batch by batch; on failure the batch is kept.

        Each write carries one table's rows, so a retry can never store the other table's twice.
        """
        while self._requests or self._ai:
            if self._requests:
                await self._write(self._requests, lambda rows: self._writer.write(rows, ()))
            if self._ai:
                await self._write(self._ai, lambda rows: self._writer.write((), rows))

    async def _write(self, queue: deque[T], write: Callable[[list[T]], Awaitable[None]]) -> None:
        batch = _take(queue, self._batch_size)
        try:
            await write(batch)
        except BaseException:
            self._put_back(queue, batch)
            raise
        self.written += len(batch)

    def _put_back(self, queue: deque[T], batch: list[T]) -> None:
        """Returns a failed batch to the front; if rows arrived meanwhile and the queue is full,
        the oldest rows (the batch's front) are the ones dropped, and counted."""
        room = (queue.maxlen or len(batch)) - len(queue)
        overflow = max(0, len(batch) - room)
        self.dropped += overflow
        queue.extendleft(reversed(batch[overflow:]))

    async def _run(self) -> None:
        backoff = self._interval_s
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            try:
                await self.flush()
                backoff = self._interval_s
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("log write failed (%s); retrying in %.1fs", error, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


T = TypeVar("T")


def _take(queue: deque[T], count: int) -> list[T]:
    return [queue.popleft() for _ in range(min(count, len(queue)))]
