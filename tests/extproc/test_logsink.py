"""LogSink: batched writes off the hot path that lose nothing on failure and drop only the
oldest rows, counted, when full. ClickHouseLogWriter against the real embedded ClickHouse."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from extproc.logsink import ClickHouseLogWriter, LogSink
from gatez.logrows import AiLogRow, RequestLogRow
from gatez.logstore import LogStore

T0 = dt.datetime(2025, 3, 10, 9, 30, tzinfo=dt.UTC)


def request_row(n: int, tenant: str = "acme") -> RequestLogRow:
    return RequestLogRow(
        time=T0 + dt.timedelta(milliseconds=n),
        request_id=f"req-{n}",
        tenant_id=tenant,
        key_id="key-1",
        method="POST",
        path="/v1/chat/completions",
        status=200,
        latency_ms=812.5,
        error="",
        node_id="node-a",
    )


def ai_row(n: int, tenant: str = "acme") -> AiLogRow:
    return AiLogRow(
        time=T0 + dt.timedelta(milliseconds=n),
        request_id=f"req-{n}",
        tenant_id=tenant,
        key_id="key-1",
        provider="openai",
        model_alias="fast",
        upstream_model="gpt-4o-mini",
        input_tokens=19 + n,
        output_tokens=10,
        status=200,
        latency_ms=812.5,
        ttft_ms=240.25,
        streamed=n % 2 == 0,
        node_id="node-a",
    )


def ids(rows: Sequence[RequestLogRow | AiLogRow]) -> list[str]:
    return [r.request_id for r in rows]


def numbered(count: int, start: int = 0) -> list[str]:
    return [f"req-{n}" for n in range(start, start + count)]


class RecordingWriter:
    """Keeps every batch; fails the first `failures` writes, and every write while `broken`."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.broken = False
        self.attempts = 0
        self.batches: list[tuple[list[str], list[str]]] = []
        self.requests: list[RequestLogRow] = []
        self.ai: list[AiLogRow] = []
        self.wrote = asyncio.Event()

    async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
        self.attempts += 1
        if self.broken or self.attempts <= self.failures:
            raise ConnectionError("clickhouse is away")
        self.batches.append((ids(requests), ids(ai)))
        self.requests.extend(requests)
        self.ai.extend(ai)
        self.wrote.set()


async def wait_for_rows(writer: RecordingWriter, rows: int) -> None:
    async with asyncio.timeout(5):
        while len(writer.requests) + len(writer.ai) < rows:
            writer.wrote.clear()
            await writer.wrote.wait()


async def test_flush_writes_batches_in_order() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_size=3)
    for n in range(7):
        sink.add_request(request_row(n))
    for n in range(4):
        sink.add_ai(ai_row(n))
    await sink.flush()
    # One table per write, so a retried batch can never duplicate the other table's rows.
    assert writer.batches == [
        (numbered(3), []),
        ([], numbered(3)),
        (numbered(3, 3), []),
        ([], ["req-3"]),
        (["req-6"], []),
    ]
    assert sink.written == 11
    assert sink.dropped == 0


async def test_flush_with_nothing_queued_does_not_write() -> None:
    writer = RecordingWriter()
    await LogSink(writer).flush()
    assert writer.attempts == 0


async def test_a_failed_flush_keeps_the_batch_in_front_in_order() -> None:
    writer = RecordingWriter(failures=1)
    sink = LogSink(writer, batch_size=2)
    for n in range(5):
        sink.add_request(request_row(n))
        sink.add_ai(ai_row(n))
    with pytest.raises(ConnectionError):
        await sink.flush()
    assert sink.written == 0
    # Rows that arrive after the failure queue up behind the ones that failed.
    sink.add_request(request_row(5))
    await sink.flush()
    assert ids(writer.requests) == numbered(6)
    assert ids(writer.ai) == numbered(5)
    assert sink.written == 11


async def test_a_writer_failing_twice_then_succeeding_loses_nothing() -> None:
    writer = RecordingWriter(failures=2)
    sink = LogSink(writer, batch_size=4, interval_s=0.01)
    sink.start()
    try:
        for n in range(10):
            sink.add_request(request_row(n))
            if n % 3 == 0:
                sink.add_ai(ai_row(n))
            await asyncio.sleep(0)
        await wait_for_rows(writer, 14)
    finally:
        await sink.close()
    assert writer.attempts >= 3
    assert ids(writer.requests) == numbered(10)
    assert ids(writer.ai) == ["req-0", "req-3", "req-6", "req-9"]
    assert (sink.written, sink.dropped) == (14, 0)


async def test_a_full_batch_is_written_before_the_interval() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_size=5, interval_s=60)
    sink.start()
    try:
        for n in range(5):
            sink.add_request(request_row(n))
        await asyncio.wait_for(writer.wrote.wait(), 5)
    finally:
        await sink.close()
    assert writer.batches[0] == (numbered(5), [])


async def test_rows_are_written_on_the_interval_below_a_batch() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_size=1000, interval_s=0.01)
    sink.start()
    try:
        sink.add_ai(ai_row(1))
        await asyncio.wait_for(writer.wrote.wait(), 5)
    finally:
        await sink.close()
    assert writer.batches == [([], ["req-1"])]


@pytest.mark.parametrize("kind", ["request", "ai"])
async def test_a_full_queue_drops_the_oldest_and_counts(kind: str) -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_size=100, max_rows=3)
    for n in range(5):
        if kind == "request":
            sink.add_request(request_row(n))
        else:
            sink.add_ai(ai_row(n))
    assert sink.dropped == 2
    await sink.flush()
    written = writer.requests if kind == "request" else writer.ai
    assert ids(written) == ["req-2", "req-3", "req-4"]


async def test_the_queues_fill_independently() -> None:
    sink = LogSink(RecordingWriter(), max_rows=2)
    for n in range(3):
        sink.add_request(request_row(n))
    sink.add_ai(ai_row(0))
    sink.add_ai(ai_row(1))
    assert sink.dropped == 1


async def test_rows_added_during_a_failing_write_do_not_vanish_uncounted() -> None:
    release = asyncio.Event()
    attempts = 0

    class SlowFailingWriter:
        async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                await release.wait()
                raise ConnectionError("clickhouse is away")

    sink = LogSink(SlowFailingWriter(), batch_size=2, max_rows=4)
    for n in range(4):
        sink.add_request(request_row(n))
    flushing = asyncio.create_task(sink.flush())
    await asyncio.sleep(0)  # the write of req-0, req-1 is in flight
    sink.add_request(request_row(4))
    sink.add_request(request_row(5))  # queue: req-2 .. req-5, full, nothing dropped yet
    release.set()
    with pytest.raises(ConnectionError):
        await flushing
    # Six rows into four places: two are dropped, the two oldest, and counted.
    assert sink.dropped == 2
    recorder = RecordingWriter()
    sink._writer = recorder
    await sink.flush()
    assert ids(recorder.requests) == numbered(4, start=2)


async def test_close_flushes_what_is_left() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, interval_s=60)
    sink.start()
    sink.add_request(request_row(1))
    sink.add_ai(ai_row(1))
    await sink.close()
    assert writer.batches == [(["req-1"], []), ([], ["req-1"])]


async def test_close_with_the_store_away_returns_and_keeps_the_rows() -> None:
    writer = RecordingWriter()
    writer.broken = True
    sink = LogSink(writer, interval_s=0.01)
    sink.start()
    sink.add_request(request_row(1))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sink.close(timeout_s=1), 5)
    assert writer.attempts >= 2
    writer.broken = False
    await sink.flush()
    assert ids(writer.requests) == ["req-1"]


async def test_close_cancels_a_hanging_write_and_keeps_its_rows() -> None:
    class HangingWriter:
        async def write(self, requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> None:
            await asyncio.Event().wait()

    sink = LogSink(HangingWriter(), interval_s=0.01)
    sink.start()
    sink.add_request(request_row(1))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sink.close(timeout_s=0.1), 5)
    recorder = RecordingWriter()
    sink._writer = recorder
    await sink.flush()
    assert ids(recorder.requests) == ["req-1"]


# --- ClickHouseLogWriter, real embedded ClickHouse ---------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    # chDB allows one embedded engine per process at a time: close it after each test.
    log_store = LogStore(f"chdb://{tmp_path / 'clickhouse'}")
    yield log_store
    log_store.close()


async def test_rows_land_in_clickhouse_and_read_back_per_tenant(store: LogStore) -> None:
    sink = LogSink(ClickHouseLogWriter(store), batch_size=3, interval_s=60)
    sink.start()
    for n in range(5):
        sink.add_request(request_row(n, "acme"))
        sink.add_request(request_row(100 + n, "globex"))
        sink.add_ai(ai_row(n, "acme"))
    await sink.close()
    assert (sink.written, sink.dropped) == (15, 0)

    acme = store.recent_request_logs("acme", 100)
    assert acme == [request_row(n, "acme") for n in reversed(range(5))]
    globex = store.recent_request_logs("globex", 2)
    assert globex == [request_row(104, "globex"), request_row(103, "globex")]
    assert store.recent_ai_logs("acme", 100) == [ai_row(n, "acme") for n in reversed(range(5))]
    assert store.recent_ai_logs("globex", 100) == []


async def test_a_failed_ai_insert_does_not_duplicate_request_rows(tmp_path: Path) -> None:
    class AiInsertFailsOnce(LogStore):
        failed = False

        def insert_ai_logs(self, rows: Sequence[AiLogRow]) -> None:
            if not self.failed:
                self.failed = True
                raise ConnectionError("connection reset by peer")
            super().insert_ai_logs(rows)

    store = AiInsertFailsOnce(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        sink = LogSink(ClickHouseLogWriter(store))
        sink.add_request(request_row(1))
        sink.add_ai(ai_row(1))
        with pytest.raises(ConnectionError):
            await sink.flush()
        await sink.flush()
        assert store.recent_ai_logs("acme", 10) == [ai_row(1)]
        assert store.recent_request_logs("acme", 10) == [request_row(1)]
    finally:
        store.close()
