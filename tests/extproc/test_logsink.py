"""LogSink: batched writes off the hot path, cut so none outgrows the store's limits; rows a
store refuses set aside, not retried forever; the store's absence spilled to a real spool on
disk and replayed; memory bounded; nothing lost on close. ClickHouseLogWriter against the real
embedded ClickHouse."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from extproc.logsink import Batch, ClickHouseLogWriter, LogSink
from extproc.spool import Spool, parse_segment
from gatez.logrows import (
    ARGUMENTS_LIMIT,
    PATH_LIMIT,
    AgentLogRow,
    AiLogRow,
    RequestLogRow,
    batch_from_proto,
    encoded_size,
)
from gatez.logstore import LogStore, RowsRefused
from gatez.v1 import control_pb2, logs_pb2

T0 = dt.datetime(2025, 3, 10, 9, 30, tzinfo=dt.UTC)


def request_row(n: int, tenant: str = "acme", path: str = "/v1/chat/completions") -> RequestLogRow:
    return RequestLogRow(
        time=T0 + dt.timedelta(milliseconds=n),
        request_id=f"req-{n}",
        tenant_id=tenant,
        key_id="key-1",
        method="POST",
        path=path,
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
        usage_estimated=n % 3 == 0,
        cache_hit="exact" if n % 4 == 1 else "",
        pii_entities=(("EMAIL_ADDRESS", n + 1), ("PHONE_NUMBER", 1)) if n % 2 == 0 else (),
    )


def agent_row(n: int, tenant: str = "acme", arguments: str = '{"title": "t"}') -> AgentLogRow:
    return AgentLogRow(
        time=T0 + dt.timedelta(milliseconds=n),
        request_id=f"req-{n}",
        tenant_id=tenant,
        caller="key-1",
        session_id_digest="5d41402abc4b2a76b9719d911017c592",
        server="github",
        method="tools/call",
        tool="create_issue",
        decision="allowed" if n % 2 else "denied",
        reason="" if n % 2 else "no rule allows tool create_issue",
        approver="",
        arguments_digest="9b" * 32,
        arguments_json=arguments,
        status=200,
        latency_ms=12.5,
        result_bytes=100 + n,
        protocol_version="2025-11-25",
        node_id="node-a",
    )


def ids(rows: Sequence[RequestLogRow | AiLogRow | AgentLogRow]) -> list[str]:
    return [r.request_id for r in rows]


def numbered(count: int, start: int = 0) -> list[str]:
    return [f"req-{n}" for n in range(start, start + count)]


class RecordingWriter:
    """Keeps every batch; fails the first `failures` writes, every write while `broken`, and
    refuses (as invalid) any batch holding a row whose request id is in `poison`."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.broken = False
        self.poison: set[str] = set()
        self.attempts = 0
        self.batches: list[tuple[list[str], list[str]]] = []
        self.requests: list[RequestLogRow] = []
        self.ai: list[AiLogRow] = []
        self.agents: list[AgentLogRow] = []
        # Request ids of each batch of agent rows (`batches` has the two other tables').
        self.agent_batches: list[list[str]] = []
        self.wrote = asyncio.Event()

    async def write(self, batch: Batch) -> None:
        self.attempts += 1
        if self.broken or self.attempts <= self.failures:
            raise ConnectionError("clickhouse is away")
        requests, ai, agents = batch.rows()
        if self.poison & set(ids(requests) + ids(ai) + ids(agents)):
            raise RowsRefused()
        if agents:
            self.agent_batches.append(ids(agents))
        else:
            self.batches.append((ids(requests), ids(ai)))
        self.requests.extend(requests)
        self.ai.extend(ai)
        self.agents.extend(agents)
        self.wrote.set()


async def wait_for_rows(writer: RecordingWriter, rows: int) -> None:
    async with asyncio.timeout(5):
        while len(writer.requests) + len(writer.ai) + len(writer.agents) < rows:
            writer.wrote.clear()
            await writer.wrote.wait()


async def until(condition: Callable[[], bool]) -> None:
    """Waits for a counter the sink's tasks move (they signal nothing a test could await)."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool", max_bytes=64 * 1024 * 1024)
    yield spool
    spool.close()


def spooled_ids(directory: Path) -> list[str]:
    """Request ids of every row in a spool directory, oldest first (read as another process
    would, without taking the spool)."""
    found: list[str] = []
    for path in sorted(directory.glob("*.seg")):
        for record in parse_segment(path.read_bytes()).records:
            requests, ai, agents = batch_from_proto(logs_pb2.LogBatch.FromString(record))
            found += ids(requests) + ids(ai) + ids(agents)
    return found


# --- batches -----------------------------------------------------------------------------


async def test_flush_writes_batches_in_order() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_rows=3)
    for n in range(7):
        sink.add_request(request_row(n))
    for n in range(4):
        sink.add_ai(ai_row(n))
    await sink.flush()
    # One table per write, so a retried batch can never duplicate the other table's rows.
    assert writer.batches == [
        (numbered(3), []),
        (numbered(3, 3), []),
        (["req-6"], []),
        ([], numbered(3)),
        ([], ["req-3"]),
    ]
    assert (sink.rows_written, sink.rows_dropped) == (11, 0)


async def test_flush_with_nothing_queued_does_not_write() -> None:
    writer = RecordingWriter()
    await LogSink(writer).flush()
    assert writer.attempts == 0


async def test_batches_are_cut_by_encoded_size() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_bytes=64 * 1024)
    rows = [request_row(n, path="/v1/" + "p" * 2000) for n in range(100)]
    for row in rows:
        sink.add_request(row)
    await sink.flush()
    assert ids(writer.requests) == numbered(100)
    assert len(writer.batches) == 4
    for requests, _ in writer.batches:
        message = control_pb2.IngestLogsRequest(
            request_logs=[
                logs_pb2.RequestLog(request_id=r.request_id, path=r.path)
                for r in rows
                if r.request_id in requests
            ]
        )
        assert sum(encoded_size(r) for r in rows if r.request_id in requests) <= 64 * 1024
        assert message.ByteSize() <= 64 * 1024


async def test_a_row_too_large_for_any_batch_is_clipped_to_fit() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_bytes=64 * 1024)
    sink.add_request(request_row(0, path="/" + "p" * 200_000))
    sink.add_request(request_row(1))
    await sink.flush()
    assert ids(writer.requests) == numbered(2)
    assert len(writer.requests[0].path) == PATH_LIMIT


async def test_agent_rows_are_batched_apart_from_the_other_tables() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_rows=3)
    sink.add_request(request_row(0))
    for n in range(4):
        sink.add_agent(agent_row(n))
    sink.add_ai(ai_row(0))
    await sink.flush()
    assert writer.batches == [(["req-0"], []), ([], ["req-0"])]
    assert writer.agent_batches == [numbered(3), ["req-3"]]
    assert writer.agents == [agent_row(n) for n in range(4)]
    assert (sink.rows_written, sink.rows_dropped) == (6, 0)


async def test_an_agent_row_is_clipped_as_it_enters_the_sink() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer)
    # Arguments of 1 MiB, far below a batch's limit: clipped all the same.
    sink.add_agent(agent_row(0, arguments='{"body": "' + "x" * (1 << 20) + '"}'))
    sink.add_agent(agent_row(1))
    await sink.flush()
    clipped, whole = writer.agents
    assert clipped.arguments_json == '{"body": "' + "x" * (ARGUMENTS_LIMIT - 10)
    assert whole == agent_row(1)


# --- failures that pass ------------------------------------------------------------------


async def test_a_failed_flush_keeps_the_batch_and_writes_it_whole_later() -> None:
    writer = RecordingWriter(failures=1)
    sink = LogSink(writer, batch_rows=2)
    for n in range(3):
        sink.add_request(request_row(n))
    with pytest.raises(ConnectionError):
        await sink.flush()
    assert sink.rows_written == 0
    # Rows that arrive after the failure queue up behind it; the failed batch is not re-cut
    # (a batch written again must be the same block for the store to drop a second copy).
    sink.add_request(request_row(3))
    await sink.flush()
    assert writer.batches == [(numbered(2), []), (["req-2", "req-3"], [])]
    assert sink.rows_written == 4


async def test_a_writer_failing_twice_then_succeeding_loses_nothing() -> None:
    writer = RecordingWriter(failures=2)
    sink = LogSink(writer, batch_rows=4, interval_s=0.01)
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
    assert (sink.rows_written, sink.rows_dropped) == (14, 0)


async def test_a_full_batch_is_written_before_the_interval() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_rows=5, interval_s=60)
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
    sink = LogSink(writer, batch_rows=1000, interval_s=0.01)
    sink.start()
    try:
        sink.add_ai(ai_row(1))
        await asyncio.wait_for(writer.wrote.wait(), 5)
    finally:
        await sink.close()
    assert writer.batches == [([], ["req-1"])]


# --- refused rows ------------------------------------------------------------------------


async def test_a_refused_row_is_quarantined_and_every_other_row_written(
    tmp_path: Path,
) -> None:
    writer = RecordingWriter()
    writer.poison = {"req-5"}
    quarantine = Spool(tmp_path / "quarantine", max_bytes=1 << 20)
    sink = LogSink(writer, quarantine=quarantine, batch_rows=8)
    for n in range(20):
        sink.add_request(request_row(n))
    await sink.flush()
    assert ids(writer.requests) == [i for i in numbered(20) if i != "req-5"]
    assert (sink.rows_written, sink.rows_quarantined, sink.rows_dropped) == (19, 1, 0)
    quarantine.close()
    assert spooled_ids(tmp_path / "quarantine") == ["req-5"]


async def test_without_a_quarantine_a_refused_row_is_dropped_and_counted() -> None:
    writer = RecordingWriter()
    writer.poison = {"req-0", "req-3"}
    sink = LogSink(writer)
    for n in range(4):
        sink.add_ai(ai_row(n))
    await sink.flush()
    assert ids(writer.ai) == ["req-1", "req-2"]
    assert (sink.rows_written, sink.rows_dropped) == (2, 2)


# --- memory bounds -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["request", "ai"])
async def test_without_a_spool_a_full_queue_drops_the_oldest_and_counts(kind: str) -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, batch_rows=100, max_rows=3)
    for n in range(5):
        if kind == "request":
            sink.add_request(request_row(n))
        else:
            sink.add_ai(ai_row(n))
    assert sink.rows_dropped == 2
    await sink.flush()
    written = writer.requests if kind == "request" else writer.ai
    assert ids(written) == ["req-2", "req-3", "req-4"]


async def test_past_memory_rows_the_oldest_rows_go_to_the_spool(
    spool: Spool, tmp_path: Path
) -> None:
    release = asyncio.Event()

    class SlowWriter(RecordingWriter):
        async def write(self, batch: Batch) -> None:
            await release.wait()
            await super().write(batch)

    writer = SlowWriter()
    sink = LogSink(writer, spool=spool, batch_rows=10, memory_rows=40, interval_s=0.01)
    sink.start()
    try:
        for n in range(200):
            sink.add_request(request_row(n))
        await until(lambda: sink.rows_spooled > 0)
        # The store is slow, not away: memory is cut down to half of memory_rows.
        assert sink.queued_rows <= 40
        release.set()
        await wait_for_rows(writer, 200)
    finally:
        await sink.close()
    assert sorted(ids(writer.requests), key=lambda i: int(i[4:])) == numbered(200)
    assert sink.rows_written == 200 and sink.rows_dropped == 0
    assert sink.rows_replayed == sink.rows_spooled > 0
    assert not spool


# --- the store away: spool and replay ----------------------------------------------------


async def test_rows_spill_to_the_spool_while_the_store_is_away_and_replay_in_order(
    spool: Spool, tmp_path: Path
) -> None:
    writer = RecordingWriter()
    writer.broken = True
    sink = LogSink(writer, spool=spool, batch_rows=4, interval_s=0.01)
    sink.start()
    try:
        for n in range(10):
            sink.add_request(request_row(n))
        sink.add_ai(ai_row(0))
        await until(lambda: sink.rows_spooled >= 11)
        assert sorted(spooled_ids(tmp_path / "spool")) == sorted([*numbered(10), "req-0"])
        assert sink.queued_rows == 0
        # New rows while the store is still away follow them to disk.
        sink.add_request(request_row(10))
        await until(lambda: sink.rows_spooled >= 12)
        writer.broken = False
        await wait_for_rows(writer, 12)
    finally:
        await sink.close()
    assert ids(writer.requests) == numbered(11)
    assert ids(writer.ai) == ["req-0"]
    assert (sink.rows_spooled, sink.rows_replayed, sink.rows_written) == (12, 12, 12)
    assert not spool and spooled_ids(tmp_path / "spool") == []


async def test_close_with_the_store_away_spools_and_the_next_sink_replays(
    tmp_path: Path,
) -> None:
    writer = RecordingWriter()
    writer.broken = True
    first = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    first.start()
    for n in range(5):
        first.add_request(request_row(n))
        first.add_ai(ai_row(n))
    await asyncio.wait_for(first.close(timeout_s=0.5), 5)
    assert (first.rows_spooled, first.rows_written, first.queued_rows) == (10, 0, 0)

    # The next start, with the store back: the spool first, then what arrives.
    writer.broken = False
    second = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    second.add_request(request_row(5))
    second.start()
    await wait_for_rows(writer, 11)
    await second.close()
    assert ids(writer.requests) == numbered(6)
    assert ids(writer.ai) == numbered(5)
    assert second.rows_replayed == 10


async def test_ai_rows_keep_cache_hits_and_pii_counts_through_the_spool(tmp_path: Path) -> None:
    writer = RecordingWriter()
    writer.broken = True
    first = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    rows = [ai_row(n) for n in range(4)]
    for row in rows:
        first.add_ai(row)
    await asyncio.wait_for(first.close(timeout_s=0.5), 5)
    assert first.rows_spooled == 4

    writer.broken = False
    second = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    await second.flush()
    await second.close()
    assert writer.ai == rows
    assert [(r.cache_hit, r.pii_entities) for r in writer.ai[:2]] == [
        ("", (("EMAIL_ADDRESS", 1), ("PHONE_NUMBER", 1))),
        ("exact", ()),
    ]


async def test_close_cancels_a_hanging_write_and_spools_its_rows(tmp_path: Path) -> None:
    class HangingWriter:
        async def write(self, batch: Batch) -> None:
            await asyncio.Event().wait()

    sink = LogSink(
        HangingWriter(), spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=0.01
    )
    sink.start()
    sink.add_request(request_row(1))
    await asyncio.sleep(0.05)
    await asyncio.wait_for(sink.close(timeout_s=0.1), 5)
    assert spooled_ids(tmp_path / "spool") == ["req-1"]
    assert sink.rows_spooled == 1


async def test_close_with_the_store_up_writes_everything() -> None:
    writer = RecordingWriter()
    sink = LogSink(writer, interval_s=60)
    sink.start()
    sink.add_request(request_row(1))
    sink.add_ai(ai_row(1))
    await sink.close()
    assert writer.batches == [(["req-1"], []), ([], ["req-1"])]


async def test_a_spooled_row_the_store_refuses_is_quarantined_and_the_rest_replayed(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    quarantine = Spool(tmp_path / "quarantine", max_bytes=1 << 20)
    writer = RecordingWriter()
    writer.broken = True
    sink = LogSink(writer, spool=spool, quarantine=quarantine, interval_s=60)
    for n in range(6):
        sink.add_request(request_row(n))
    await sink.close(timeout_s=0.5)
    writer.broken = False
    writer.poison = {"req-2"}
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
    quarantine = Spool(tmp_path / "quarantine", max_bytes=1 << 20)
    sink = LogSink(writer, spool=spool, quarantine=quarantine)
    await sink.flush()
    await sink.close()
    assert ids(writer.requests) == ["req-0", "req-1", "req-3", "req-4", "req-5"]
    assert (sink.rows_replayed, sink.rows_quarantined) == (5, 1)
    assert spooled_ids(tmp_path / "quarantine") == ["req-2"]


async def test_the_spool_bound_drops_the_oldest_rows_and_the_sink_counts_them(
    tmp_path: Path,
) -> None:
    writer = RecordingWriter()
    writer.broken = True
    spool = Spool(tmp_path / "spool", max_bytes=4000, segment_bytes=1000)
    sink = LogSink(writer, spool=spool, batch_rows=5, interval_s=60)
    for n in range(100):
        sink.add_request(request_row(n))
    await sink.close(timeout_s=0.5)
    kept = spooled_ids(tmp_path / "spool")
    assert sink.rows_dropped == 100 - len(kept) > 0
    assert kept == numbered(len(kept), start=100 - len(kept))


async def test_agent_rows_spill_while_the_store_is_away_and_replay_in_order(
    spool: Spool, tmp_path: Path
) -> None:
    writer = RecordingWriter()
    writer.broken = True
    sink = LogSink(writer, spool=spool, batch_rows=4, interval_s=0.01)
    sink.start()
    try:
        for n in range(10):
            sink.add_agent(agent_row(n))
        sink.add_request(request_row(0))
        await until(lambda: sink.rows_spooled >= 11)
        assert sorted(spooled_ids(tmp_path / "spool")) == sorted([*numbered(10), "req-0"])
        assert sink.queued_rows == 0
        writer.broken = False
        await wait_for_rows(writer, 11)
    finally:
        await sink.close()
    # Every field back as it was, through the spool's protobuf.
    assert writer.agents == [agent_row(n) for n in range(10)]
    assert ids(writer.requests) == ["req-0"]
    assert (sink.rows_spooled, sink.rows_replayed, sink.rows_written) == (11, 11, 11)
    assert not spool and spooled_ids(tmp_path / "spool") == []


async def test_agent_rows_spooled_on_close_are_replayed_by_the_next_sink(tmp_path: Path) -> None:
    writer = RecordingWriter()
    writer.broken = True
    first = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    first.start()
    for n in range(5):
        first.add_agent(agent_row(n))
    await asyncio.wait_for(first.close(timeout_s=0.5), 5)
    assert (first.rows_spooled, first.rows_written, first.queued_rows) == (5, 0, 0)
    assert spooled_ids(tmp_path / "spool") == numbered(5)

    writer.broken = False
    second = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    second.add_agent(agent_row(5))
    second.start()
    await wait_for_rows(writer, 6)
    await second.close()
    assert writer.agents == [agent_row(n) for n in range(6)]
    assert second.rows_replayed == 5


async def test_a_refused_spooled_agent_row_is_quarantined_and_the_rest_replayed(
    tmp_path: Path,
) -> None:
    writer = RecordingWriter()
    writer.broken = True
    sink = LogSink(writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), interval_s=60)
    for n in range(6):
        sink.add_agent(agent_row(n))
    await sink.close(timeout_s=0.5)
    writer.broken = False
    writer.poison = {"req-4"}
    quarantine = Spool(tmp_path / "quarantine", max_bytes=1 << 20)
    sink = LogSink(
        writer, spool=Spool(tmp_path / "spool", max_bytes=1 << 20), quarantine=quarantine
    )
    await sink.flush()
    await sink.close()
    # Halved until the refused row is alone: the spooled batch's agent rows split too.
    assert ids(writer.agents) == ["req-0", "req-1", "req-2", "req-3", "req-5"]
    assert (sink.rows_replayed, sink.rows_quarantined) == (5, 1)
    assert spooled_ids(tmp_path / "quarantine") == ["req-4"]


# --- ClickHouseLogWriter, real embedded ClickHouse ---------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    # chDB allows one embedded engine per process at a time: close it after each test.
    log_store = LogStore(f"chdb://{tmp_path / 'clickhouse'}")
    yield log_store
    log_store.close()


async def test_rows_land_in_clickhouse_and_read_back_per_tenant(store: LogStore) -> None:
    sink = LogSink(ClickHouseLogWriter(store), batch_rows=3, interval_s=60)
    sink.start()
    for n in range(5):
        sink.add_request(request_row(n, "acme"))
        sink.add_request(request_row(100 + n, "globex"))
        sink.add_ai(ai_row(n, "acme"))
    await sink.close()
    assert (sink.rows_written, sink.rows_dropped) == (15, 0)

    acme = store.recent_request_logs("acme", 100)
    assert acme == [request_row(n, "acme") for n in reversed(range(5))]
    globex = store.recent_request_logs("globex", 2)
    assert globex == [request_row(104, "globex"), request_row(103, "globex")]
    assert store.recent_ai_logs("acme", 100) == [ai_row(n, "acme") for n in reversed(range(5))]
    assert store.recent_ai_logs("globex", 100) == []


async def test_agent_rows_land_in_clickhouse_and_read_back_per_tenant(store: LogStore) -> None:
    sink = LogSink(ClickHouseLogWriter(store), batch_rows=3, interval_s=60)
    sink.start()
    for n in range(5):
        sink.add_agent(agent_row(n, "acme"))
        sink.add_agent(agent_row(100 + n, "globex"))
    await sink.close()
    assert (sink.rows_written, sink.rows_dropped) == (10, 0)
    assert store.recent_agent_logs("acme", 100) == [agent_row(n) for n in reversed(range(5))]
    assert store.recent_agent_logs("globex", 1) == [agent_row(104, "globex")]
    assert store.recent_agent_logs("initech", 100) == []


async def test_agent_rows_spooled_while_clickhouse_failed_are_stored_once(
    tmp_path: Path,
) -> None:
    """Inserts fail after storing (the answer lost), the sink spools on close, and the next
    sink replays: the agent rows are in ClickHouse once."""

    class StoresThenFails(LogStore):
        failures = 2

        def insert_agent_logs(self, rows: Sequence[AgentLogRow]) -> None:
            super().insert_agent_logs(rows)
            if self.failures:
                self.failures -= 1
                raise ConnectionError("connection reset by peer")

    store = StoresThenFails(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        sink = LogSink(ClickHouseLogWriter(store), spool=Spool(tmp_path / "s", max_bytes=1 << 20))
        for n in range(3):
            sink.add_agent(agent_row(n))
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await sink.flush()
        await sink.close(timeout_s=1)
        assert sink.rows_spooled == 3
        sink = LogSink(ClickHouseLogWriter(store), spool=Spool(tmp_path / "s", max_bytes=1 << 20))
        await sink.flush()
        await sink.close()
        assert sink.rows_replayed == 3
        assert store.recent_agent_logs("acme", 10) == [agent_row(n) for n in reversed(range(3))]
    finally:
        store.close()


async def test_a_write_that_failed_after_storing_is_not_stored_twice(tmp_path: Path) -> None:
    """The answer of a write is lost (a timeout after ClickHouse took the rows): the batch is
    written again, from memory or from the spool, and stored once."""

    class StoresThenFails(LogStore):
        failures = 2

        def insert_ai_logs(self, rows: Sequence[AiLogRow]) -> None:
            super().insert_ai_logs(rows)
            if self.failures:
                self.failures -= 1
                raise ConnectionError("connection reset by peer")

    store = StoresThenFails(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        sink = LogSink(ClickHouseLogWriter(store), spool=Spool(tmp_path / "s", max_bytes=1 << 20))
        for n in range(3):
            sink.add_request(request_row(n))
            sink.add_ai(ai_row(n))
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await sink.flush()  # AI rows stored, the answer lost; then again from memory
        await sink.close(timeout_s=1)  # the store seems away: spooled
        assert sink.rows_spooled == 3
        sink = LogSink(ClickHouseLogWriter(store), spool=Spool(tmp_path / "s", max_bytes=1 << 20))
        await sink.flush()  # replayed: the third copy of the same block
        await sink.close()
        assert store.recent_ai_logs("acme", 10) == [ai_row(n) for n in reversed(range(3))]
        assert len(store.recent_request_logs("acme", 10)) == 3
    finally:
        store.close()


async def test_a_row_clickhouse_refuses_is_quarantined_not_retried(
    store: LogStore, tmp_path: Path
) -> None:
    quarantine = Spool(tmp_path / "quarantine", max_bytes=1 << 20)
    sink = LogSink(ClickHouseLogWriter(store), quarantine=quarantine)
    for n in range(10):
        row = ai_row(n)
        if n == 7:
            row = dataclasses.replace(row, status=70_000)  # a uint32, not a UInt16
        if n == 8:
            row = dataclasses.replace(row, output_tokens=-1)  # not even a uint32
        sink.add_ai(row)
    await sink.flush()
    await sink.close()
    assert len(store.recent_ai_logs("acme", 100)) == 8
    assert (sink.rows_written, sink.rows_quarantined, sink.rows_dropped) == (8, 1, 1)
    assert spooled_ids(tmp_path / "quarantine") == ["req-7"]
