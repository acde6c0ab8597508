"""LogStore on the real embedded ClickHouse (chDB): rows in, rows back out, per tenant; a batch
inserted twice stored once; rows it cannot hold refused; older tables migrated. The agent log
filtered by server, session and decision, never across tenants."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import grpc
import pytest

from gatez.logrows import (
    AGENT_LOG_TABLE,
    AI_LOG_COLUMNS,
    AI_LOG_TABLE,
    AgentLogRow,
    AiLogRow,
    RequestLogRow,
)
from gatez.logstore import LogStore, RowsRefused

T0 = dt.datetime(2025, 3, 10, 9, 30, 15, 123000, tzinfo=dt.UTC)


def request_row(n: int, tenant: str = "acme") -> RequestLogRow:
    return RequestLogRow(
        time=T0 + dt.timedelta(seconds=n),
        request_id=f"9f1c2d3e-{n:04d}",
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
        time=T0 + dt.timedelta(seconds=n),
        request_id=f"9f1c2d3e-{n:04d}",
        tenant_id=tenant,
        key_id="jwt:alice",
        provider="openai",
        model_alias="fast",
        upstream_model="gpt-4o-mini",
        input_tokens=1_900_000 + n,
        output_tokens=10,
        status=200,
        latency_ms=812.5,
        ttft_ms=240.25,
        streamed=n % 2 == 1,
        node_id="node-a",
    )


def open_store(path: Path) -> LogStore:
    return LogStore(f"chdb://{path}")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    # chDB allows one embedded engine per process at a time: close it after each test.
    log_store = open_store(tmp_path / "clickhouse")
    yield log_store
    log_store.close()


def test_request_rows_read_back_newest_first_for_their_tenant(store: LogStore) -> None:
    acme = [request_row(n) for n in range(4)]
    globex = [
        dataclasses.replace(request_row(n, "globex"), status=429, error="rate_limit_error")
        for n in range(2)
    ]
    store.insert_request_logs([acme[2], globex[0], acme[0], acme[3]])
    store.insert_request_logs([globex[1], acme[1]])
    assert store.recent_request_logs("acme", 100) == list(reversed(acme))
    assert store.recent_request_logs("globex", 100) == list(reversed(globex))
    assert store.recent_request_logs("initech", 100) == []


def test_ai_rows_read_back_newest_first_for_their_tenant(store: LogStore) -> None:
    store.insert_ai_logs([ai_row(n) for n in range(3)] + [ai_row(9, "globex")])
    assert store.recent_ai_logs("acme", 100) == [ai_row(2), ai_row(1), ai_row(0)]
    assert store.recent_ai_logs("globex", 100) == [ai_row(9, "globex")]
    [row] = store.recent_ai_logs("acme", 1)
    assert isinstance(row.streamed, bool) and isinstance(row.input_tokens, int)


def test_limit_keeps_the_newest(store: LogStore) -> None:
    store.insert_request_logs([request_row(n) for n in range(10)])
    assert store.recent_request_logs("acme", 3) == [request_row(9), request_row(8), request_row(7)]
    assert store.recent_request_logs("acme", 0) == []


def test_times_come_back_in_utc_to_the_millisecond(store: LogStore) -> None:
    local = dt.timezone(dt.timedelta(hours=2))
    stamp = dt.datetime(2025, 3, 10, 11, 30, 15, 123456, tzinfo=local)
    store.insert_request_logs([dataclasses.replace(request_row(0), time=stamp)])
    [row] = store.recent_request_logs("acme", 1)
    assert row.time == dt.datetime(2025, 3, 10, 9, 30, 15, 123000, tzinfo=dt.UTC)
    assert row.time.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    "tenant", ["acme' OR '1'='1", "acme\\", "{tenant:String}", "acme\n", "ACME", ""]
)
def test_the_tenant_filter_is_a_parameter_not_sql(store: LogStore, tenant: str) -> None:
    store.insert_request_logs([request_row(0), request_row(1, "globex")])
    assert store.recent_request_logs(tenant, 100) == []


def test_text_round_trips_unchanged(store: LogStore) -> None:
    row = dataclasses.replace(
        request_row(0), path="/v1/chat/completions/ünïcødé 'quoted' \"double\"", error="x\ty"
    )
    store.insert_request_logs([row])
    assert store.recent_request_logs("acme", 1) == [row]


def test_empty_inserts_are_no_ops(store: LogStore) -> None:
    store.insert_request_logs([])
    store.insert_ai_logs([])
    assert store.recent_request_logs("acme", 10) == []
    assert store.recent_ai_logs("acme", 10) == []


def test_rows_survive_reopening_the_store(tmp_path: Path) -> None:
    first = open_store(tmp_path / "clickhouse")
    try:
        first.insert_request_logs([request_row(1)])
        first.insert_ai_logs([ai_row(1)])
    finally:
        first.close()
    # Opening again re-runs CREATE TABLE IF NOT EXISTS over the existing tables.
    second = open_store(tmp_path / "clickhouse")
    try:
        assert second.recent_request_logs("acme", 10) == [request_row(1)]
        assert second.recent_ai_logs("acme", 10) == [ai_row(1)]
    finally:
        second.close()


def test_the_same_batch_inserted_twice_is_stored_once(store: LogStore) -> None:
    # A retry after a write whose answer was lost, or a spool segment replayed after a crash.
    batch = [request_row(n) for n in range(3)]
    store.insert_request_logs(batch)
    store.insert_request_logs(batch)
    store.insert_ai_logs([ai_row(1)])
    store.insert_ai_logs([ai_row(1)])
    assert len(store.recent_request_logs("acme", 100)) == 3
    assert store.recent_ai_logs("acme", 100) == [ai_row(1)]
    # A different batch with some of the same rows is a different block: stored.
    store.insert_request_logs(batch[:2])
    assert len(store.recent_request_logs("acme", 100)) == 5


def test_estimated_usage_round_trips(store: LogStore) -> None:
    row = dataclasses.replace(ai_row(1), usage_estimated=True)
    store.insert_ai_logs([row, ai_row(2)])
    assert store.recent_ai_logs("acme", 10) == [ai_row(2), row]


@pytest.mark.parametrize("tokens", [-1, 2**32])
def test_rows_the_table_cannot_hold_are_refused(store: LogStore, tokens: int) -> None:
    with pytest.raises(RowsRefused) as refused:
        store.insert_ai_logs([dataclasses.replace(ai_row(1), input_tokens=tokens)])
    # Reaches the control service's callers as INVALID_ARGUMENT, without the rows' content.
    assert refused.value.grpc_code is grpc.StatusCode.INVALID_ARGUMENT
    assert str(tokens) not in refused.value.public_message
    store.insert_ai_logs([ai_row(2)])
    assert store.recent_ai_logs("acme", 10) == [ai_row(2)]


# The AI log as earlier versions created it: first without usage_estimated, then without costs,
# then without cache hits and PII counts.
_FIRST_AI_COLUMNS = """time DateTime64(3, 'UTC'), request_id String,
        tenant_id LowCardinality(String), key_id String, provider LowCardinality(String),
        model_alias LowCardinality(String),
        upstream_model LowCardinality(String), input_tokens UInt32, output_tokens UInt32,
        status UInt16, latency_ms Float64, ttft_ms Float64, streamed Bool,
        node_id LowCardinality(String)"""
OLDER_AI_TABLES = {
    "without usage_estimated": (_FIRST_AI_COLUMNS, AI_LOG_COLUMNS[:14]),
    "without costs": (
        _FIRST_AI_COLUMNS + ", usage_estimated Bool DEFAULT false",
        AI_LOG_COLUMNS[:15],
    ),
    "without cache hits and pii counts": (
        _FIRST_AI_COLUMNS
        + """, usage_estimated Bool DEFAULT false, cached_input_tokens UInt32 DEFAULT 0,
        cost_usd Float64 DEFAULT 0, price_known Bool DEFAULT false,
        attempts Array(String) DEFAULT []""",
        AI_LOG_COLUMNS[:19],
    ),
}


@pytest.mark.parametrize("version", OLDER_AI_TABLES)
def test_tables_of_an_older_version_are_brought_up_to_date(tmp_path: Path, version: str) -> None:
    columns, names = OLDER_AI_TABLES[version]
    directory = tmp_path / "clickhouse"
    directory.mkdir()
    client = clickhouse_connect.get_client(dsn=f"chdb://{directory}")
    client.command(
        f"CREATE TABLE {AI_LOG_TABLE} ({columns}) ENGINE = MergeTree ORDER BY (tenant_id, time)"
    )
    old = ai_row(1)
    client.insert(AI_LOG_TABLE, [dataclasses.astuple(old)[: len(names)]], column_names=list(names))
    client.close()

    store = open_store(directory)
    try:
        new = dataclasses.replace(
            ai_row(2),
            usage_estimated=True,
            cached_input_tokens=7,
            cost_usd=0.5,
            price_known=True,
            attempts=("openai/gpt-4o=503",),
            cache_hit="exact",
            pii_entities=(("EMAIL_ADDRESS", 1),),
        )
        store.insert_ai_logs([new])
        store.insert_ai_logs([new])
        # The old row reads back unpriced (cost 0, its price unknown), no hit, nothing found.
        assert store.recent_ai_logs("acme", 10) == [new, old]
        assert (old.cost_usd, old.price_known) == (0.0, False)
        assert (old.cache_hit, old.pii_entities) == ("", ())
        report = store.usage("acme", T0.date(), T0.date())
        assert (report.totals.requests, report.totals.unpriced_requests) == (2, 1)
    finally:
        store.close()
    # Opening it again finds the columns there: the migration is a no-op.
    again = open_store(directory)
    try:
        assert again.recent_ai_logs("acme", 10) == [new, old]
    finally:
        again.close()


def test_cache_hits_and_pii_counts_round_trip(store: LogStore) -> None:
    hit = dataclasses.replace(
        ai_row(1),
        input_tokens=0,
        output_tokens=0,
        cache_hit="semantic",
        pii_entities=(("EMAIL_ADDRESS", 2), ("US_SSN", 2**32 - 1)),
    )
    exact = dataclasses.replace(ai_row(2), cache_hit="exact")
    found = dataclasses.replace(ai_row(3), pii_entities=(("PHONE_NUMBER", 1),))
    store.insert_ai_logs([hit, exact, found, ai_row(4)])
    assert store.recent_ai_logs("acme", 10) == [ai_row(4), found, exact, hit]
    [back] = store.recent_ai_logs("acme", 1)
    assert isinstance(back.pii_entities, tuple) and back.cache_hit == ""


def test_costs_round_trip(store: LogStore) -> None:
    row = dataclasses.replace(ai_row(1), cached_input_tokens=1_800_000, cost_usd=0.123456789)
    store.insert_ai_logs([dataclasses.replace(row, price_known=True)])
    [back] = store.recent_ai_logs("acme", 1)
    assert (back.cached_input_tokens, back.cost_usd, back.price_known) == (
        1_800_000,
        0.123456789,
        True,
    )


def usage_row(tenant: str, day: int, hour: int, model: str, **changes: object) -> AiLogRow:
    row = dataclasses.replace(
        ai_row(day * 100 + hour, tenant),
        time=dt.datetime(2025, 3, day, hour, 0, 0, tzinfo=dt.UTC),
        upstream_model=model,
        input_tokens=1000,
        output_tokens=100,
        cached_input_tokens=400,
        cost_usd=0.01,
        price_known=True,
    )
    return dataclasses.replace(row, **changes)  # type: ignore[arg-type]  # test data


def test_usage_sums_by_day_and_model_for_one_tenant(store: LogStore) -> None:
    store.insert_ai_logs(
        [
            usage_row("acme", 10, 0, "gpt-4o"),
            usage_row("acme", 10, 23, "gpt-4o", usage_estimated=True),
            usage_row("acme", 10, 12, "gpt-4o-mini", cost_usd=0.0, price_known=False),
            usage_row("acme", 11, 0, "gpt-4o"),
            usage_row("acme", 12, 9, "gpt-4o"),  # after the range
            usage_row("acme", 9, 23, "gpt-4o"),  # before it
            usage_row("globex", 10, 1, "gpt-4o", cost_usd=5.0),
        ]
    )
    report = store.usage("acme", dt.date(2025, 3, 10), dt.date(2025, 3, 11))
    assert [(g.day, g.upstream_model, g.counts.requests) for g in report.groups] == [
        (dt.date(2025, 3, 10), "gpt-4o", 2),
        (dt.date(2025, 3, 10), "gpt-4o-mini", 1),
        (dt.date(2025, 3, 11), "gpt-4o", 1),
    ]
    first = report.groups[0].counts
    assert (first.input_tokens, first.output_tokens, first.cached_input_tokens) == (2000, 200, 800)
    assert first.cost_usd == pytest.approx(0.02)
    assert (first.estimated_requests, first.unpriced_requests) == (1, 0)
    assert report.groups[1].counts.unpriced_requests == 1
    assert (report.totals.requests, report.totals.input_tokens) == (4, 4000)
    assert report.totals.cost_usd == pytest.approx(0.03)
    assert not report.truncated
    assert store.usage("globex", dt.date(2025, 3, 10), dt.date(2025, 3, 10)).totals.cost_usd == 5.0
    empty = store.usage("initech", dt.date(2025, 3, 10), dt.date(2025, 3, 11))
    assert (empty.groups, empty.totals.requests, empty.totals.cost_usd) == ((), 0, 0.0)


def test_usage_counts_cache_hits_as_requests_without_tokens_or_cost(store: LogStore) -> None:
    answered = dict(input_tokens=0, output_tokens=0, cached_input_tokens=0, cost_usd=0.0)
    store.insert_ai_logs(
        [
            usage_row("acme", 10, 0, "gpt-4o"),
            usage_row("acme", 10, 1, "gpt-4o", cache_hit="exact", **answered),
            # Its model has no price: a cached answer is not an unpriced call all the same.
            usage_row("acme", 10, 2, "gpt-4o", cache_hit="semantic", price_known=False, **answered),
        ]
    )
    report = store.usage("acme", dt.date(2025, 3, 10), dt.date(2025, 3, 10))
    [group] = report.groups
    for counts in (group.counts, report.totals):
        assert (counts.requests, counts.input_tokens, counts.output_tokens) == (3, 1000, 100)
        assert (counts.cached_input_tokens, counts.unpriced_requests) == (400, 0)
        assert counts.cache_hits == 2
        assert counts.cost_usd == pytest.approx(0.01)


# --- the agent log -------------------------------------------------------------------------


def agent_row(
    n: int,
    tenant: str = "acme",
    *,
    server: str = "github",
    session: str = "5d41402abc4b2a76b9719d911017c592",
    decision: str = "allowed",
) -> AgentLogRow:
    return AgentLogRow(
        time=T0 + dt.timedelta(seconds=n),
        request_id=f"9f1c2d3e-{n:04d}",
        tenant_id=tenant,
        caller="jwt:alice",
        session_id_digest=session,
        server=server,
        method="tools/call",
        tool="delete_repo",
        decision=decision,
        reason="" if decision == "allowed" else f"{decision}: tool delete_repo",
        approver="ops@example.com" if decision == "approved" else "",
        arguments_digest="9b" * 32,
        arguments_json='{"repo": "acme/site"}',
        status=200,
        latency_ms=30_512.25,
        result_bytes=2**40 + n,
        protocol_version="2025-11-25",
        node_id="node-a",
    )


# Two tenants with the same servers, sessions and decisions: filters never cross tenants.
AGENT_ROWS = [
    agent_row(0),
    agent_row(1, decision="denied"),
    agent_row(2, server="jira", session="1" * 32),
    agent_row(3, decision="approved"),
    agent_row(4, server="jira", session="1" * 32, decision="denied"),
    agent_row(5, session=""),
    agent_row(10, "globex"),
    agent_row(11, "globex", decision="denied"),
    agent_row(12, "globex", server="jira", session="1" * 32, decision="denied"),
]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, [5, 4, 3, 2, 1, 0]),
        ({"server": "jira"}, [4, 2]),
        ({"session_id_digest": "1" * 32}, [4, 2]),
        ({"decision": "denied"}, [4, 1]),
        ({"server": "github", "decision": "denied"}, [1]),
        ({"server": "jira", "session_id_digest": "1" * 32, "decision": "denied"}, [4]),
        ({"server": "gitlab"}, []),
        ({"decision": "allowed' OR '1'='1"}, []),
        ({"server": "{server:String}"}, []),
    ],
)
def test_agent_rows_read_back_newest_first_filtered_within_their_tenant(
    store: LogStore, filters: dict[str, str], expected: list[int]
) -> None:
    store.insert_agent_logs(AGENT_ROWS)
    assert store.recent_agent_logs("acme", 100, **filters) == [agent_row_of(n) for n in expected]
    # The other tenant's rows, under the same filters, are its own only.
    for row in store.recent_agent_logs("globex", 100, **filters):
        assert row.tenant_id == "globex"


def agent_row_of(n: int) -> AgentLogRow:
    return next(row for row in AGENT_ROWS if row.time == T0 + dt.timedelta(seconds=n))


@pytest.mark.parametrize("tenant", ["acme' OR '1'='1", "{tenant:String}", "ACME", ""])
def test_the_agent_log_tenant_filter_is_a_parameter_not_sql(store: LogStore, tenant: str) -> None:
    store.insert_agent_logs(AGENT_ROWS)
    assert store.recent_agent_logs(tenant, 100) == []
    assert store.recent_agent_logs(tenant, 100, decision="denied") == []


def test_agent_rows_keep_the_limit_and_their_whole_text(store: LogStore) -> None:
    arguments = '{"body": "' + "ünïcødé 'q' \"d\"\t" * 1000 + '"}'
    rows = [dataclasses.replace(agent_row(n), arguments_json=arguments) for n in range(5)]
    store.insert_agent_logs(rows)
    assert store.recent_agent_logs("acme", 2) == [rows[4], rows[3]]
    [back] = store.recent_agent_logs("acme", 1)
    assert isinstance(back.result_bytes, int) and back.time.utcoffset() == dt.timedelta(0)


def test_the_same_agent_batch_inserted_twice_is_stored_once(store: LogStore) -> None:
    batch = [agent_row(n) for n in range(3)]
    store.insert_agent_logs(batch)
    store.insert_agent_logs(batch)
    store.insert_agent_logs([])
    assert len(store.recent_agent_logs("acme", 100)) == 3


@pytest.mark.parametrize("changes", [{"status": -1}, {"result_bytes": 2**64}])
def test_agent_rows_the_table_cannot_hold_are_refused(
    store: LogStore, changes: dict[str, int]
) -> None:
    with pytest.raises(RowsRefused):
        store.insert_agent_logs([dataclasses.replace(agent_row(1), **changes)])  # type: ignore[arg-type]
    store.insert_agent_logs([agent_row(2)])
    assert store.recent_agent_logs("acme", 10) == [agent_row(2)]


def test_a_database_of_an_older_version_gets_the_agent_log(tmp_path: Path) -> None:
    """An existing database without the agent_log table (as every version before it made one):
    opening the store creates the table, and the older tables' rows stay."""
    directory = tmp_path / "clickhouse"
    first = open_store(directory)
    first.insert_request_logs([request_row(1)])
    first.close()
    client = clickhouse_connect.get_client(dsn=f"chdb://{directory}")
    client.command(f"DROP TABLE {AGENT_LOG_TABLE}")
    assert AGENT_LOG_TABLE not in client.query("SHOW TABLES").result_columns[0]
    client.close()

    store = open_store(directory)
    try:
        assert store.recent_request_logs("acme", 10) == [request_row(1)]
        store.insert_agent_logs([agent_row(1)])
        assert store.recent_agent_logs("acme", 10) == [agent_row(1)]
    finally:
        store.close()
