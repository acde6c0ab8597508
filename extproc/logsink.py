"""Log rows leave the hot path here: queued in memory, written in batches by one task, and kept
on disk while the log store is away.

- **Batches** are cut by row count and by encoded size (`logrows.encoded_size`), so none outgrows
  what the control service (gRPC's 4 MiB message limit) or ClickHouse accept; a row too large
  on its own is clipped to fit. A batch is the unit of retry: it is written again exactly as it
  was, so when a write that seemed to fail went through, the store drops the second copy (see
  `logrows.DEDUPLICATION_WINDOW`).
- **Refused rows**: a batch the store refuses as invalid (`RowsRefused`) is halved until the rows
  it refuses are alone; those are set aside in the quarantine spool (counted, never retried on
  their own) and every other row is written. One bad row never stops the rows behind it.
- **Bounded memory, spool on disk**: whenever the store is failing, and whenever more than
  `memory_rows` rows wait, queued rows are spilled to the spool. Spooled batches are replayed
  oldest first, one segment per turn alongside new rows, and a segment is removed once its rows
  are stored. On close, rows that could not be written in time go to the spool, which the next
  start replays. A `kill -9` loses what is only in memory: about the last `interval_s` of rows
  (each turn writes them, or spills them while the store is away); writing each row to disk on
  the hot path would cost every request a write.
- **Dropped rows** (counted): only when the spool's disk bound is reached (its oldest segments),
  or when rows arrive faster than even the spool takes them (`max_rows` in memory).

Counters, for metrics: `rows_written`, `rows_spooled`, `rows_replayed` (written from the spool;
also counted as written), `rows_quarantined`, `rows_dropped`; `queued_rows` is the memory depth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, TypeVar

import grpc

from extproc.spool import Segment, Spool
from gatez.logrows import (
    AgentLogRow,
    AiLogRow,
    RequestLogRow,
    agent_log_from_proto,
    agent_log_to_proto,
    ai_log_from_proto,
    ai_log_to_proto,
    clip_row,
    encoded_size,
    request_log_from_proto,
    request_log_to_proto,
)
from gatez.logstore import LogStore, RowsRefused
from gatez.v1 import control_pb2, control_pb2_grpc, logs_pb2

log = logging.getLogger("gatez.logsink")

# Half of gRPC's default 4 MiB receive limit on the control service: room for the envelope and
# for `encoded_size` being a bound, not an exact size.
BATCH_BYTES: Final = 2 * 1024 * 1024
# Rows converted or sized between two turns of the event loop (about 0.5 ms of work).
CONVERT_SLICE: Final = 100
SIZE_SLICE: Final = 1000
MAX_BACKOFF_S: Final = 5.0
# A failed write of the control service with one of these codes will fail again with the same
# rows: INVALID_ARGUMENT is RowsRefused on the control side, RESOURCE_EXHAUSTED a message over
# its size limit, OUT_OF_RANGE a value it cannot take.
REFUSED_CODES: Final = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.OUT_OF_RANGE,
    }
)


@dataclass(frozen=True, slots=True)
class Batch:
    """Rows of one table, stored in one insert. A batch read back from the spool keeps its rows
    as the protobuf it was read as (`spooled`) until a writer needs them as rows."""

    requests: Sequence[RequestLogRow] = ()
    ai: Sequence[AiLogRow] = ()
    agents: Sequence[AgentLogRow] = ()
    spooled: logs_pb2.LogBatch | None = field(default=None, compare=False)

    def __len__(self) -> int:
        if self.spooled is not None:
            message = self.spooled
            return len(message.request_logs) + len(message.ai_logs) + len(message.agent_logs)
        return len(self.requests) + len(self.ai) + len(self.agents)

    def rows(
        self,
    ) -> tuple[Sequence[RequestLogRow], Sequence[AiLogRow], Sequence[AgentLogRow]]:
        """The batch as row dataclasses (converting a spooled batch)."""
        if self.spooled is None:
            return self.requests, self.ai, self.agents
        return (
            [request_log_from_proto(m) for m in self.spooled.request_logs],
            [ai_log_from_proto(m) for m in self.spooled.ai_logs],
            [agent_log_from_proto(m) for m in self.spooled.agent_logs],
        )

    def halves(self) -> tuple[Batch, Batch]:
        if self.spooled is not None:
            message = self.spooled
            requests, ai = list(message.request_logs), list(message.ai_logs)
            agents = list(message.agent_logs)
            cut_requests, cut_ai, cut_agents = len(requests) // 2, len(ai) // 2, len(agents) // 2
            return (
                Batch(spooled=_spooled(requests[:cut_requests], ai[:cut_ai], agents[:cut_agents])),
                Batch(spooled=_spooled(requests[cut_requests:], ai[cut_ai:], agents[cut_agents:])),
            )
        cut_requests, cut_ai = len(self.requests) // 2, len(self.ai) // 2
        cut_agents = len(self.agents) // 2
        return (
            Batch(self.requests[:cut_requests], self.ai[:cut_ai], self.agents[:cut_agents]),
            Batch(self.requests[cut_requests:], self.ai[cut_ai:], self.agents[cut_agents:]),
        )


def _spooled(
    requests: list[logs_pb2.RequestLog],
    ai: list[logs_pb2.AiLog],
    agents: list[logs_pb2.AgentLog],
) -> logs_pb2.LogBatch:
    message = logs_pb2.LogBatch()
    message.request_logs.extend(requests)
    message.ai_logs.extend(ai)
    message.agent_logs.extend(agents)
    return message


async def encode(batch: Batch) -> bytes:
    """The batch as a serialised LogBatch (a spool record)."""
    if batch.spooled is not None:
        return batch.spooled.SerializeToString()
    message = logs_pb2.LogBatch()
    await fill(message, batch)
    return message.SerializeToString()


async def fill(message: logs_pb2.LogBatch | control_pb2.IngestLogsRequest, batch: Batch) -> None:
    """Converts the batch's rows into `message`, in slices, yielding between them: thousands of
    rows converted at once would hold the event loop, and every request in flight, for ms.
    Values protobuf cannot hold (a negative count) raise RowsRefused."""
    try:
        if batch.spooled is not None:
            message.request_logs.extend(batch.spooled.request_logs)
            message.ai_logs.extend(batch.spooled.ai_logs)
            message.agent_logs.extend(batch.spooled.agent_logs)
            return
        requests, ai, agents = batch.requests, batch.ai, batch.agents
        for start in range(0, len(requests), CONVERT_SLICE):
            message.request_logs.extend(
                request_log_to_proto(r) for r in requests[start : start + CONVERT_SLICE]
            )
            await asyncio.sleep(0)
        for start in range(0, len(ai), CONVERT_SLICE):
            message.ai_logs.extend(ai_log_to_proto(r) for r in ai[start : start + CONVERT_SLICE])
            await asyncio.sleep(0)
        for start in range(0, len(agents), CONVERT_SLICE):
            message.agent_logs.extend(
                agent_log_to_proto(r) for r in agents[start : start + CONVERT_SLICE]
            )
            await asyncio.sleep(0)
    except (ValueError, TypeError) as error:
        raise RowsRefused(f"rows that cannot be encoded: {error}") from error


class LogWriter(Protocol):
    async def write(self, batch: Batch) -> None:
        """Stores one batch in one insert, or raises and stores none of it: `RowsRefused` when
        the same rows would fail again, anything else when a retry may succeed."""
        ...


class ClickHouseLogWriter:
    """Writes straight to a ClickHouse server (used when ClickHouse is not embedded)."""

    def __init__(self, store: LogStore) -> None:
        self._store = store

    async def write(self, batch: Batch) -> None:
        await asyncio.to_thread(self._insert, batch)

    def _insert(self, batch: Batch) -> None:
        requests, ai, agents = batch.rows()
        if requests:
            self._store.insert_request_logs(requests)
        if ai:
            self._store.insert_ai_logs(ai)
        if agents:
            self._store.insert_agent_logs(agents)


class ControlLogWriter:
    """Ships batches to the control service, which owns the embedded ClickHouse (chDB)."""

    def __init__(
        self, channel: grpc.aio.Channel, dataplane_token: str, timeout_s: float = 10
    ) -> None:
        self._stub = control_pb2_grpc.DataPlaneServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {dataplane_token}"),)
        self._timeout_s = timeout_s

    async def write(self, batch: Batch) -> None:
        request = control_pb2.IngestLogsRequest()
        await fill(request, batch)
        try:
            await self._stub.IngestLogs(request, metadata=self._metadata, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() in REFUSED_CODES:
                raise RowsRefused(f"control service: {error.details()}") from error
            raise


T = TypeVar("T", RequestLogRow, AiLogRow, AgentLogRow)


class LogSink:
    """Collects rows and stores them every `interval_s`, or sooner when `batch_rows` are due.

    Two tasks: the writer stores batches (replaying the spool first); the spiller moves rows
    to the spool when the writer reports the store away, or when memory passes `memory_rows`
    while the writer is held up (a write can hang up to its timeout). Both cut batches from
    the same queues, one at a time (`_cut_lock`).
    """

    def __init__(
        self,
        writer: LogWriter,
        *,
        spool: Spool | None = None,
        quarantine: Spool | None = None,
        batch_rows: int = 5000,
        batch_bytes: int = BATCH_BYTES,
        # ClickHouse wants few, large inserts (an embedded chDB insert costs ~15 ms and up).
        interval_s: float = 1.0,
        memory_rows: int = 20_000,
        max_rows: int = 200_000,
    ) -> None:
        self._writer = writer
        self._spool = spool
        self._quarantine = quarantine
        self._batch_rows = batch_rows
        self._batch_bytes = batch_bytes
        self._interval_s = interval_s
        self._memory_rows = memory_rows
        self._max_rows = max_rows
        self._requests: deque[RequestLogRow] = deque(maxlen=max_rows)
        self._ai: deque[AiLogRow] = deque(maxlen=max_rows)
        self._agents: deque[AgentLogRow] = deque(maxlen=max_rows)
        # Batches cut from the queues and not yet stored; each is written (or spooled) whole.
        self._pending: deque[Batch] = deque()
        # The batch being written; back to the front of `_pending` if the write fails.
        self._writing: Batch | None = None
        # Rows being cut into a batch (between two slices of the work).
        self._cutting: list[RequestLogRow] | list[AiLogRow] | list[AgentLogRow] = []
        self._cut_lock = asyncio.Lock()
        # The spool segment being replayed and its batches not yet stored.
        self._replay: tuple[Segment, deque[Batch]] | None = None
        # A spill handed to a worker thread: the batches, and the append's outcome.
        self._spilling: list[Batch] = []
        self._spill_job: asyncio.Future[int] | None = None
        self._spill_lock = asyncio.Lock()
        self._store_ok = True
        self._retry_at = 0.0
        self._backoff_s = interval_s
        self._due = asyncio.Event()
        self._spill_due = asyncio.Event()
        self._closing = False
        self._tasks: list[asyncio.Task[None]] = []
        self.rows_written = 0
        self.rows_spooled = 0
        self.rows_replayed = 0
        self.rows_quarantined = 0
        self.rows_dropped = 0

    @property
    def queued_rows(self) -> int:
        """Rows in memory, not yet stored or spooled."""
        spilling = sum(len(b) for b in self._spilling)
        return self._unspilled_rows() + spilling + len(self._writing or ())

    # -- the hot path: appending only ---------------------------------------------------------

    def add_request(self, row: RequestLogRow) -> None:
        self._add(self._requests, row)

    def add_ai(self, row: AiLogRow) -> None:
        self._add(self._ai, row)

    def add_agent(self, row: AgentLogRow) -> None:
        """Queues one agent action's row, its text clipped to its bounds (`logrows.clip_row`:
        the row itself when it fits, as it almost always does)."""
        self._add(self._agents, clip_row(row))

    def _add(self, queue: deque[T], row: T) -> None:
        if len(queue) == self._max_rows:
            self.rows_dropped += 1  # the deque drops its oldest row
        queue.append(row)
        if len(queue) >= self._batch_rows:
            self._due.set()
            if len(queue) > self._memory_rows:
                self._spill_due.set()

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._due.set()  # a first turn now: what an earlier run spooled is replayed at once
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="gatez-log-writer"),
            asyncio.create_task(self._spill_loop(), name="gatez-log-spiller"),
        ]

    async def close(self, timeout_s: float = 2.0) -> None:
        """Stores what is left if the store takes it within `timeout_s`; spools the rest."""
        self._closing = True
        self._due.set()
        self._spill_due.set()
        if self._tasks:
            _, running = await asyncio.wait(self._tasks, timeout=timeout_s)
            for task in running:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks = []
        try:
            await self._spill(everything=True)
        except Exception:
            log.exception("log sink: spooling on close failed")
        if self.queued_rows:
            log.warning("log sink closed with %d rows unwritten", self.queued_rows)
        for spool in (self._spool, self._quarantine):
            if spool is not None:
                await asyncio.to_thread(spool.close)

    async def _write_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), self._interval_s)
            self._due.clear()
            try:
                await self._turn()
            except Exception:
                log.exception("log sink turn failed")
        # One last attempt to store what is in memory (not while the store is known to be away;
        # the spool waits for the next start).
        if self._store_ok:
            with contextlib.suppress(Exception):
                await self._store_queued(limit=None)

    async def _spill_loop(self) -> None:
        while not self._closing:
            await self._spill_due.wait()
            self._spill_due.clear()
            if self._closing:
                return  # close() spills what is left
            try:
                if not self._store_ok:
                    await self._spill(everything=True)
                elif self.queued_rows > self._memory_rows:
                    await self._spill(everything=False)
            except Exception:
                log.exception("log sink spill failed")

    async def _turn(self) -> None:
        """One turn of the writer: replay a spooled segment and store the queued rows while the
        store works; when it fails, the spiller takes the rows to disk until the next try."""
        loop = asyncio.get_running_loop()
        if self._store_ok or loop.time() >= self._retry_at:
            try:
                await self._replay_segment()
                await self._store_queued(limit=self.queued_rows)
            except Exception as error:
                self._store_failed(error, loop.time())
            else:
                self._store_ok = True
                self._backoff_s = self._interval_s
        if not self._store_ok or self.queued_rows > self._memory_rows:
            self._spill_due.set()
        elif self._replay is not None or self._spool:
            self._due.set()  # more to replay: go on without waiting for the interval

    def _store_failed(self, error: Exception, now: float) -> None:
        if self._store_ok:
            log.warning("log store unavailable (%s); spooling rows", error)
        else:
            log.debug("log store still unavailable: %s", error)
        self._store_ok = False
        self._retry_at = now + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)

    async def flush(self) -> None:
        """Stores everything spooled and everything queued now, batch by batch. Raises the
        writer's error on a failure that may pass; the batch it was writing is kept whole."""
        while self._replay is not None or self._spool:
            await self._replay_segment()
        await self._store_queued(limit=None)

    # -- storing ------------------------------------------------------------------------------

    async def _store_queued(self, limit: int | None) -> None:
        """Stores pending batches, then batches cut from the queues, up to `limit` rows (the
        rows queued when the turn began: under a flood, a turn still ends)."""
        stored = 0
        while limit is None or stored < limit:
            if not self._pending:
                async with self._cut_lock:
                    if not await self._cut_next():
                        return
            if not self._pending:
                continue  # the spiller took the batch meanwhile
            batch = self._pending.popleft()
            self._writing = batch
            try:
                stored += await self._store(batch, self._pending)
            except BaseException:
                self._pending.appendleft(batch)
                raise
            finally:
                self._writing = None

    async def _store(self, batch: Batch, rest: deque[Batch]) -> int:
        """Writes a batch taken from the front of `rest`; a refused batch goes back to `rest`
        halved, or is set aside when it is a single row. Returns the rows disposed of."""
        try:
            await self._writer.write(batch)
        except RowsRefused as error:
            if len(batch) > 1:
                first, second = batch.halves()
                rest.extendleft((second, first))
                return 0
            await self._set_aside(batch, error)
            return 1
        self.rows_written += len(batch)
        return len(batch)

    async def _set_aside(self, batch: Batch, error: RowsRefused) -> None:
        if self._quarantine is None:
            log.warning("log store refused a row (%s); dropped", error.public_message)
            self.rows_dropped += len(batch)
            return
        try:
            record = await encode(batch)
        except RowsRefused:
            # Not even protobuf can hold it (a number out of range): nothing to keep it as.
            log.warning("log store refused a row it cannot encode either; dropped")
            self.rows_dropped += len(batch)
            return
        log.warning("log store refused a row (%s); quarantined", error.public_message)
        dropped = await asyncio.to_thread(self._quarantine.append, [(record, len(batch))])
        self.rows_quarantined += len(batch)
        self.rows_dropped += dropped

    async def _replay_segment(self) -> None:
        """Stores the batches of the oldest spooled segment, then removes it."""
        spool = self._spool
        if spool is None:
            return
        if self._replay is None:
            segment = await asyncio.to_thread(spool.oldest)
            if segment is None:
                return
            try:
                contents = await asyncio.to_thread(spool.read, segment)
            except OSError:
                # Not the store's failure: an unreadable segment must not hold up the rest.
                log.exception("spool segment %s unreadable; set aside", segment.path.name)
                await asyncio.to_thread(spool.set_aside, segment)
                return
            batches = deque(
                Batch(spooled=logs_pb2.LogBatch.FromString(record)) for record in contents.records
            )
            self._replay = (segment, batches)
        segment, batches = self._replay
        while batches:
            # Left at the front until stored: a failed replay resumes with it.
            batch = batches.popleft()
            try:
                written = self.rows_written
                await self._store(batch, batches)
                self.rows_replayed += self.rows_written - written
            except BaseException:
                batches.appendleft(batch)
                raise
        await asyncio.to_thread(spool.remove, segment)
        self._replay = None

    # -- cutting batches ----------------------------------------------------------------------

    async def _cut_next(self, rows_left: int | None = None) -> bool:
        """Cuts the next batch from the queues into `_pending`; False when all are empty.
        Callers hold `_cut_lock`."""
        if self._requests:
            batch = Batch(requests=await self._cut(self._requests, rows_left))
        elif self._ai:
            batch = Batch(ai=await self._cut(self._ai, rows_left))
        elif self._agents:
            batch = Batch(agents=await self._cut(self._agents, rows_left))
        else:
            return False
        self._pending.append(batch)
        return True

    async def _cut(self, queue: deque[T], rows_left: int | None) -> list[T]:
        """Takes rows from the front of `queue` up to `batch_rows` (or `rows_left`) rows and
        `batch_bytes` bytes. Sized in slices: the rows taken so far wait in `_cutting`."""
        cutting: list[T] = []
        self._cutting = cutting
        limit = min(self._batch_rows, rows_left) if rows_left is not None else self._batch_rows
        size = 0
        while queue and len(cutting) < limit:
            for _ in range(min(SIZE_SLICE, limit - len(cutting), len(queue))):
                row_size = encoded_size(queue[0])
                if cutting and size + row_size > self._batch_bytes:
                    self._cutting = []
                    return cutting
                row = queue.popleft()
                if row_size > self._batch_bytes:
                    row = clip_row(row)
                    row_size = encoded_size(row)
                cutting.append(row)
                size += row_size
            await asyncio.sleep(0)
        self._cutting = []
        return cutting

    # -- spilling to the spool ----------------------------------------------------------------

    async def _spill(self, *, everything: bool) -> None:
        """Moves pending batches and queued rows to the spool: all of them, or (with the store
        working but behind) the oldest, until half of `memory_rows` are left in memory. The
        batch being written stays: its write decides where it goes."""
        if self._spool is None:
            return
        async with self._spill_lock:
            await self._spill_locked(everything)

    async def _spill_locked(self, everything: bool) -> None:
        assert self._spool is not None
        if self._spill_job is not None:
            await self._finish_spill()  # cut short by a cancelled spiller: its append runs on
        elif self._spilling:
            # Cut short before its append began: the batches go back, oldest first.
            self._pending.extendleft(reversed(self._spilling))
            self._spilling = []
        if self._cutting and not self._cut_lock.locked():
            self._pending.appendleft(_batch_of(self._cutting))  # a cut that was cancelled
            self._cutting = []
        keep = 0 if everything else self._memory_rows // 2
        spilling = self._spilling
        while self._pending and self._unspilled_rows() > keep:
            spilling.append(self._pending.popleft())
        async with self._cut_lock:
            while (excess := self._unspilled_rows() - keep) > 0:
                # Cut only what must go, so what stays in memory is whole rows, not a fraction.
                if not await self._cut_next(rows_left=excess):
                    break
                spilling.append(self._pending.pop())
        if not spilling:
            return
        records = [(await encode(batch), len(batch)) for batch in spilling]
        self._spill_job = asyncio.ensure_future(asyncio.to_thread(self._spool.append, records))
        await self._finish_spill()

    async def _finish_spill(self) -> None:
        job = self._spill_job
        assert job is not None
        # Shielded: a cancelled spiller leaves the append running; close() waits for it here.
        with contextlib.suppress(Exception):
            await asyncio.shield(job)
        batches, self._spilling, self._spill_job = self._spilling, [], None
        error = job.exception()
        if error is None:
            self.rows_spooled += sum(len(b) for b in batches)
            self.rows_dropped += job.result()
            return
        log.error("log spool append failed (%s); rows stay in memory", error)
        self._pending.extendleft(reversed(batches))
        # Memory stays bounded even with the disk failing: the oldest batches go first.
        while len(self._pending) > 1 and self._unspilled_rows() > self._max_rows:
            self.rows_dropped += len(self._pending.popleft())

    def _unspilled_rows(self) -> int:
        return (
            len(self._requests)
            + len(self._ai)
            + len(self._agents)
            + len(self._cutting)
            + sum(len(b) for b in self._pending)
        )


def _batch_of(rows: list[RequestLogRow] | list[AiLogRow] | list[AgentLogRow]) -> Batch:
    return Batch(
        [r for r in rows if isinstance(r, RequestLogRow)],
        [r for r in rows if isinstance(r, AiLogRow)],
        [r for r in rows if isinstance(r, AgentLogRow)],
    )
