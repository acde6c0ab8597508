"""ClickHouse access for log rows, through clickhouse-connect (`chdb://` embedded or HTTP).

The client is synchronous; callers on an event loop run these methods in a worker thread.
Inserting the same batch twice stores it once (see `DEDUPLICATION_WINDOW`), so a writer may
retry any batch it is unsure about. Rows ClickHouse cannot take raise `RowsRefused`: retrying
them would fail forever, so the caller sets them aside instead.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DataError

from gatez.errors import InvalidRequest
from gatez.logrows import (
    AGENT_LOG_COLUMNS,
    AGENT_LOG_TABLE,
    AI_LOG_COLUMNS,
    AI_LOG_TABLE,
    MIGRATIONS,
    REQUEST_LOG_COLUMNS,
    REQUEST_LOG_TABLE,
    SCHEMA,
    AgentLogRow,
    AiLogRow,
    LogRow,
    RequestLogRow,
    as_tuple,
)

log = logging.getLogger("gatez.logstore")

# The most usage groups one report carries (a response must stay well under gRPC's 4 MiB).
MAX_USAGE_GROUPS: Final = 10_000


@dataclass(frozen=True, slots=True)
class UsageCounts:
    """Sums over a set of AI-log rows."""

    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float
    # Rows whose tokens the gateway counted itself, and rows whose model had no price.
    estimated_requests: int
    unpriced_requests: int
    # Calls answered from the answer cache.
    cache_hits: int = 0


@dataclass(frozen=True, slots=True)
class UsageGroup:
    """One tenant's calls of one day (UTC) to one upstream model under one alias."""

    day: dt.date
    provider: str
    upstream_model: str
    model_alias: str
    counts: UsageCounts


@dataclass(frozen=True, slots=True)
class UsageReport:
    groups: tuple[UsageGroup, ...]
    # Over every row of the range, also those of groups cut off by MAX_USAGE_GROUPS.
    totals: UsageCounts
    truncated: bool


# Answers from the answer cache count as requests, with no tokens and no cost; their cost of 0
# is known, whatever the model's price.
_USAGE_SUMS: Final = (
    "count(), sum(input_tokens), sum(output_tokens), sum(cached_input_tokens), sum(cost_usd), "
    "countIf(usage_estimated), countIf(NOT price_known AND cache_hit = ''), "
    "countIf(cache_hit != '')"
)
# Bounds on time (not on toDate(time)), so the table's (tenant_id, time) order narrows the scan.
_USAGE_RANGE: Final = (
    "tenant_id = {tenant:String} AND time >= {start:DateTime64(3, 'UTC')} "
    "AND time < {end:DateTime64(3, 'UTC')}"
)


def _counts(values: Sequence[Any]) -> UsageCounts:
    requests, input_tokens, output_tokens, cached, cost, estimated, unpriced, hits = values
    return UsageCounts(
        int(requests),
        int(input_tokens),
        int(output_tokens),
        int(cached),
        float(cost),
        int(estimated),
        int(unpriced),
        int(hits),
    )


class RowsRefused(InvalidRequest):
    """The store cannot take these rows (a value its column cannot hold); not transient.

    An InvalidRequest, so the control service's IngestLogs answers INVALID_ARGUMENT with it."""

    def __init__(self, message: str = "the log store refused the rows as invalid") -> None:
        super().__init__(message)


class LogStore:
    """Creates the log tables and reads and writes their rows."""

    def __init__(self, dsn: str) -> None:
        if dsn.startswith("chdb://"):
            # chDB wants its directory to exist; the client is in-process and single-writer.
            from pathlib import Path

            Path(dsn.removeprefix("chdb://")).mkdir(parents=True, exist_ok=True)
        self._client: Any = clickhouse_connect.get_client(dsn=dsn)
        # One client, one statement at a time: clickhouse-connect clients are not thread-safe.
        self._lock = threading.Lock()
        for statement in SCHEMA:
            self._client.command(statement)
        for statement in MIGRATIONS:
            self._client.command(statement)

    def insert_request_logs(self, rows: Sequence[RequestLogRow]) -> None:
        """Inserts the rows as one block; raises RowsRefused for rows the table cannot hold."""
        self._insert(REQUEST_LOG_TABLE, REQUEST_LOG_COLUMNS, rows)

    def insert_ai_logs(self, rows: Sequence[AiLogRow]) -> None:
        """Inserts the rows as one block; raises RowsRefused for rows the table cannot hold."""
        self._insert(AI_LOG_TABLE, AI_LOG_COLUMNS, rows)

    def insert_agent_logs(self, rows: Sequence[AgentLogRow]) -> None:
        """Inserts the rows as one block; raises RowsRefused for rows the table cannot hold."""
        self._insert(AGENT_LOG_TABLE, AGENT_LOG_COLUMNS, rows)

    def _insert(self, table: str, columns: Sequence[str], rows: Sequence[LogRow]) -> None:
        if not rows:
            return
        try:
            with self._lock:
                self._client.insert(table, [as_tuple(r) for r in rows], column_names=list(columns))
        except DataError as error:
            # Raised while encoding the block (a number out of its column's range): the same
            # rows would fail again, however often they were retried.
            log.warning("%s: %d rows refused: %s", table, len(rows), error)
            raise RowsRefused() from error

    def recent_request_logs(self, tenant_id: str, limit: int) -> list[RequestLogRow]:
        return [
            RequestLogRow(*r)
            for r in self._recent(REQUEST_LOG_TABLE, REQUEST_LOG_COLUMNS, tenant_id, limit)
        ]

    def recent_ai_logs(self, tenant_id: str, limit: int) -> list[AiLogRow]:
        rows = self._recent(AI_LOG_TABLE, AI_LOG_COLUMNS, tenant_id, limit)
        return [_ai_row(r) for r in rows]

    def recent_agent_logs(
        self,
        tenant_id: str,
        limit: int,
        *,
        server: str = "",
        session_id_digest: str = "",
        decision: str = "",
    ) -> list[AgentLogRow]:
        """One tenant's agent rows, newest first; each filter applies when not empty."""
        filters = {
            "server": server,
            "session_id_digest": session_id_digest,
            "decision": decision,
        }
        rows = self._recent(
            AGENT_LOG_TABLE,
            AGENT_LOG_COLUMNS,
            tenant_id,
            limit,
            {column: value for column, value in filters.items() if value},
        )
        return [AgentLogRow(*r) for r in rows]

    def _recent(
        self,
        table: str,
        columns: Sequence[str],
        tenant_id: str,
        limit: int,
        equal: dict[str, str] | None = None,
    ) -> list[tuple[Any, ...]]:
        """Rows of `tenant_id` (and whose `equal` columns hold the given values), newest first.
        Column names come from this module, never from a caller; values are parameters."""
        conditions = ["tenant_id = {tenant:String}"]
        parameters: dict[str, Any] = {"tenant": tenant_id, "limit": limit}
        for column, value in (equal or {}).items():
            conditions.append(f"{column} = {{{column}:String}}")
            parameters[column] = value
        query = (
            f"SELECT {', '.join(columns)} FROM {table} WHERE {' AND '.join(conditions)} "
            "ORDER BY time DESC LIMIT {limit:UInt32}"
        )
        with self._lock:
            result = self._client.query(query, parameters=parameters)
        rows = []
        for row in result.result_rows:
            values = list(row)
            time = values[0]
            if isinstance(time, dt.datetime) and time.tzinfo is None:
                values[0] = time.replace(tzinfo=dt.UTC)
            rows.append(tuple(values))
        return rows

    def usage(self, tenant_id: str, first_day: dt.date, last_day: dt.date) -> UsageReport:
        """One tenant's AI-log rows from `first_day` to `last_day` (UTC, inclusive), summed by
        day, provider, upstream model and alias, in that order."""
        start = dt.datetime.combine(first_day, dt.time(), dt.UTC)
        end = dt.datetime.combine(last_day + dt.timedelta(days=1), dt.time(), dt.UTC)
        parameters = {
            "tenant": tenant_id,
            "start": start.strftime("%Y-%m-%d %H:%M:%S"),
            "end": end.strftime("%Y-%m-%d %H:%M:%S"),
            "limit": MAX_USAGE_GROUPS + 1,
        }
        groups_query = (
            f"SELECT toDate(time) AS day, provider, upstream_model, model_alias, {_USAGE_SUMS} "
            f"FROM {AI_LOG_TABLE} WHERE {_USAGE_RANGE} "
            "GROUP BY day, provider, upstream_model, model_alias "
            "ORDER BY day, provider, upstream_model, model_alias LIMIT {limit:UInt32}"
        )
        totals_query = f"SELECT {_USAGE_SUMS} FROM {AI_LOG_TABLE} WHERE {_USAGE_RANGE}"
        with self._lock:
            grouped = self._client.query(groups_query, parameters=parameters).result_rows
            [totals] = self._client.query(totals_query, parameters=parameters).result_rows
        groups = tuple(
            UsageGroup(day, provider, model, alias, _counts(sums))
            for day, provider, model, alias, *sums in grouped[:MAX_USAGE_GROUPS]
        )
        return UsageReport(groups, _counts(totals), len(grouped) > MAX_USAGE_GROUPS)

    def close(self) -> None:
        with self._lock:
            self._client.close()


def _ai_row(values: Sequence[Any]) -> AiLogRow:
    # Arrays come back as lists and maps as dicts; the row holds tuples, as written.
    columns = dict(zip(AI_LOG_COLUMNS, values, strict=True))
    columns["attempts"] = tuple(columns["attempts"])
    columns["pii_entities"] = tuple(sorted(columns["pii_entities"].items()))
    return AiLogRow(**columns)
