"""GetUsage: one tenant's LLM usage and cost by day and model, summed in ClickHouse from the AI
rows data planes shipped; never another tenant's; bounded, well-formed date ranges only."""

from __future__ import annotations

import dataclasses
import datetime as dt

import grpc
import pytest
from google.protobuf import json_format

from extproc.logsink import Batch, ControlLogWriter
from gatez.logrows import AiLogRow
from gatez.v1 import control_pb2
from tests.control.support import AUTH, DATAPLANE_TOKEN, Api, rpc_error


def call(
    tenant: str, when: dt.datetime, model: str, alias: str = "fast", **changes: object
) -> AiLogRow:
    row = AiLogRow(
        time=when,
        request_id=f"{tenant}-{when.isoformat()}-{model}",
        tenant_id=tenant,
        key_id="key-1",
        provider="openai",
        model_alias=alias,
        upstream_model=model,
        input_tokens=1_000,
        output_tokens=200,
        status=200,
        latency_ms=100.0,
        ttft_ms=50.0,
        streamed=False,
        node_id="dp-1",
        cached_input_tokens=600,
        cost_usd=0.0025,
        price_known=True,
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]  # test data


def at(day: int, hour: int = 12) -> dt.datetime:
    return dt.datetime(2026, 11, day, hour, tzinfo=dt.UTC)


async def usage(
    api: Api, tenant: str, start: str = "", end: str = ""
) -> control_pb2.GetUsageResponse:
    request = control_pb2.GetUsageRequest(tenant_id=tenant, start_date=start, end_date=end)
    response: control_pb2.GetUsageResponse = await api.control.GetUsage(request, metadata=AUTH)
    return response


async def test_usage_is_summed_by_day_and_model_for_one_tenant_only(
    channel: grpc.aio.Channel, api: Api
) -> None:
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(
        Batch(
            ai=[
                call("acme", at(2, 0), "gpt-4o"),
                call("acme", at(2, 23), "gpt-4o", usage_estimated=True),
                call("acme", at(2), "gpt-4o", alias="smart"),
                call("acme", at(2), "acme-finetune", cost_usd=0.0, price_known=False),
                call("acme", at(3, 1), "gpt-4o"),
                call("acme", at(4, 0), "gpt-4o"),  # after the range
                call("globex", at(2), "gpt-4o", cost_usd=7.0),
                call("globex", at(3), "claude-sonnet-4-5", cost_usd=3.0),
            ]
        )
    )

    acme = await usage(api, "acme", "2026-11-02", "2026-11-03")
    assert (acme.start_date, acme.end_date, acme.truncated) == ("2026-11-02", "2026-11-03", False)
    assert [(r.day, r.upstream_model, r.model_alias, r.requests) for r in acme.rows] == [
        ("2026-11-02", "acme-finetune", "fast", 1),
        ("2026-11-02", "gpt-4o", "fast", 2),
        ("2026-11-02", "gpt-4o", "smart", 1),
        ("2026-11-03", "gpt-4o", "fast", 1),
    ]
    unpriced, fast = acme.rows[0], acme.rows[1]
    assert (unpriced.cost_usd, unpriced.unpriced_requests) == (0.0, 1)
    assert (fast.input_tokens, fast.output_tokens, fast.cached_input_tokens) == (2000, 400, 1200)
    assert fast.cost_usd == pytest.approx(0.005)
    assert (fast.estimated_requests, fast.unpriced_requests, fast.provider) == (1, 0, "openai")
    totals = acme.totals
    assert (totals.requests, totals.input_tokens, totals.unpriced_requests) == (5, 5000, 1)
    assert totals.cost_usd == pytest.approx(4 * 0.0025)
    # Nothing of globex's in acme's report, and the other way round.
    assert "claude-sonnet-4-5" not in {r.upstream_model for r in acme.rows}
    globex = await usage(api, "globex", "2026-11-01", "2026-11-30")
    assert [(r.day, r.upstream_model, r.cost_usd) for r in globex.rows] == [
        ("2026-11-02", "gpt-4o", 7.0),
        ("2026-11-03", "claude-sonnet-4-5", 3.0),
    ]
    assert globex.totals.requests == 2

    # As grpcurl shows it: zero counts are printed, not left out.
    shown = json_format.MessageToDict(unpriced)
    assert shown["costUsd"] == 0 and shown["estimatedRequests"] == "0"


async def test_the_default_range_is_the_last_30_days(channel: grpc.aio.Channel, api: Api) -> None:
    now = dt.datetime.now(dt.UTC)
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(
        Batch(
            ai=[
                call("acme", now, "gpt-4o"),
                call("acme", now - dt.timedelta(days=29), "gpt-4o"),
                call("acme", now - dt.timedelta(days=31), "gpt-4o"),
            ]
        )
    )
    report = await usage(api, "acme")
    today = now.date()
    assert (report.start_date, report.end_date) == (
        (today - dt.timedelta(days=29)).isoformat(),
        today.isoformat(),
    )
    assert report.totals.requests == 2
    # A start alone reaches today; an end alone covers the 30 days up to it.
    assert (
        await usage(api, "acme", start=(today - dt.timedelta(days=40)).isoformat())
    ).totals.requests == 3
    assert (
        await usage(api, "acme", end=(today - dt.timedelta(days=1)).isoformat())
    ).totals.requests == 1


async def test_a_tenant_without_calls_has_zero_usage(api: Api) -> None:
    report = await usage(api, "initech", "2026-11-01", "2026-11-30")
    assert list(report.rows) == []
    assert (report.totals.requests, report.totals.cost_usd) == (0, 0.0)
    assert json_format.MessageToDict(report.totals)["requests"] == "0"


@pytest.mark.parametrize(
    ("tenant", "start", "end", "says"),
    [
        ("", "", "", "tenant_id is required"),
        ("Acme' OR 1=1", "", "", "tenant_id"),
        ("acme", "2026-13-01", "", "start_date '2026-13-01' is not a date"),
        ("acme", "", "20261101", "end_date '20261101' is not a date"),
        ("acme", "yesterday", "", "YYYY-MM-DD"),
        ("acme", "2026-11-02", "2026-11-01", "start_date is after end_date"),
        ("acme", "2025-01-01", "2026-01-02", "more than 366 days"),
    ],
)
async def test_bad_input_is_invalid_argument(
    api: Api, tenant: str, start: str, end: str, says: str
) -> None:
    error = await rpc_error(
        api.control.GetUsage(
            control_pb2.GetUsageRequest(tenant_id=tenant, start_date=start, end_date=end),
            metadata=AUTH,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert says in (error.details() or "")


async def test_a_full_leap_year_is_not_too_long(api: Api) -> None:
    report = await usage(api, "acme", "2028-01-01", "2028-12-31")
    assert report.totals.requests == 0


async def test_usage_needs_the_admin_token(api: Api) -> None:
    error = await rpc_error(api.control.GetUsage(control_pb2.GetUsageRequest(tenant_id="acme")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
