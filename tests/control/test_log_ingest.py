"""Data planes ship log rows to the control service (which owns the embedded ClickHouse) through
`ControlLogWriter`: every row arrives once, intact, whatever the batch size; rows it cannot take
are refused as such (not retried forever)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest

from extproc.logsink import CONVERT_SLICE, Batch, ControlLogWriter, LogSink
from gatez.logrows import AiLogRow, RequestLogRow
from gatez.logstore import RowsRefused
from gatez.v1 import control_pb2
from tests.control.support import ADMIN_TOKEN, DATAPLANE_TOKEN, Api

START = dt.datetime(2026, 11, 25, 9, 30, 0, 123_000, tzinfo=dt.UTC)


def request_row(n: int) -> RequestLogRow:
    return RequestLogRow(
        time=START + dt.timedelta(milliseconds=n),
        request_id=f"req-{n:04d}",
        tenant_id="acme",
        key_id="key-1",
        method="POST",
        path="/v1/chat/completions",
        status=200 if n % 7 else 429,
        latency_ms=1.5 + n,
        error="" if n % 7 else "rate_limited",
        node_id="dataplane-1",
    )


def ai_row(n: int) -> AiLogRow:
    return AiLogRow(
        time=START + dt.timedelta(milliseconds=n),
        request_id=f"req-{n:04d}",
        tenant_id="acme",
        key_id="key-1",
        provider="openai",
        model_alias="fast",
        upstream_model="gpt-4o-mini",
        input_tokens=n,
        output_tokens=2 * n,
        status=200,
        latency_ms=10.0 + n,
        ttft_ms=5.0,
        streamed=bool(n % 2),
        node_id="dataplane-1",
    )


async def test_batches_larger_than_a_conversion_slice_arrive_whole(
    channel: grpc.aio.Channel, api: Api
) -> None:
    requests = [request_row(n) for n in range(2 * CONVERT_SLICE + 17)]
    ai = [ai_row(n) for n in range(CONVERT_SLICE + 3)]
    writer = ControlLogWriter(channel, DATAPLANE_TOKEN)

    await writer.write(Batch(requests=requests))
    await writer.write(Batch(ai=ai))

    metadata = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
    stored = await api.control.ListRequestLogs(
        control_pb2.ListRequestLogsRequest(tenant_id="acme", limit=1000), metadata=metadata
    )
    by_id = {row.request_id: row for row in stored.request_logs}
    assert sorted(by_id) == sorted(r.request_id for r in requests)
    sample = by_id["req-0007"]
    assert (sample.status, sample.error, sample.latency_ms) == (429, "rate_limited", 8.5)
    # Millisecond timestamps survive the trip (ClickHouse keeps DateTime64(3)).
    assert sample.time.ToDatetime(tzinfo=dt.UTC) == START + dt.timedelta(milliseconds=7)

    stored_ai = await api.control.ListAiLogs(
        control_pb2.ListAiLogsRequest(tenant_id="acme", limit=1000), metadata=metadata
    )
    assert len(stored_ai.ai_logs) == len(ai)
    tokens = {row.request_id: (row.input_tokens, row.output_tokens) for row in stored_ai.ai_logs}
    assert tokens["req-0101"] == (101, 202)


async def test_a_sink_splits_rows_past_the_message_limit_into_batches_that_fit(
    channel: grpc.aio.Channel, api: Api
) -> None:
    # 1000 rows of 5 KB paths: 5 MB, over the control service's 4 MiB receive limit.
    sink = LogSink(ControlLogWriter(channel, DATAPLANE_TOKEN))
    for n in range(1000):
        tenant = "acme" if n % 2 else "globex"
        sink.add_request(
            dataclasses.replace(request_row(n), tenant_id=tenant, path="/" + "p" * 5000)
        )
    await sink.flush()
    assert (sink.rows_written, sink.rows_dropped) == (1000, 0)
    for tenant in ("acme", "globex"):  # read back in halves, each under the limit
        stored = await api.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(tenant_id=tenant, limit=1000),
            metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
        )
        assert len(stored.request_logs) == 500


async def test_what_the_control_service_cannot_take_is_refused_not_retried(
    channel: grpc.aio.Channel,
) -> None:
    writer = ControlLogWriter(channel, DATAPLANE_TOKEN)
    # Over the message limit (RESOURCE_EXHAUSTED), and a status ClickHouse's UInt16 cannot
    # hold (INVALID_ARGUMENT from the store): both fail the same way however often sent.
    huge = [dataclasses.replace(request_row(n), path="/" + "p" * 60_000) for n in range(80)]
    with pytest.raises(RowsRefused):
        await writer.write(Batch(requests=huge))
    with pytest.raises(RowsRefused):
        await writer.write(Batch(requests=[dataclasses.replace(request_row(1), status=70_000)]))


async def test_list_ai_logs_returns_cache_hits_and_pii_counts(
    channel: grpc.aio.Channel, api: Api
) -> None:
    hit = dataclasses.replace(
        ai_row(1),
        input_tokens=0,
        output_tokens=0,
        cache_hit="semantic",
        pii_entities=(("EMAIL_ADDRESS", 2), ("PHONE_NUMBER", 1)),
    )
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(Batch(ai=[ai_row(0), hit]))

    stored = await api.control.ListAiLogs(
        control_pb2.ListAiLogsRequest(tenant_id="acme", limit=10),
        metadata=(("authorization", f"Bearer {ADMIN_TOKEN}"),),
    )
    [listed_hit, listed_call] = stored.ai_logs
    assert (listed_hit.request_id, listed_hit.cache_hit) == ("req-0001", "semantic")
    assert dict(listed_hit.pii_entities) == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
    assert (listed_hit.input_tokens, listed_hit.output_tokens) == (0, 0)
    assert (listed_call.cache_hit, dict(listed_call.pii_entities)) == ("", {})
