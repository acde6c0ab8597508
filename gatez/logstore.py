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
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DataError

from gatez.errors import InvalidRequest
from gatez.logrows import (
    AI_LOG_COLUMNS,
    AI_LOG_TABLE,
    MIGRATIONS,
    REQUEST_LOG_COLUMNS,
    REQUEST_LOG_TABLE,
    SCHEMA,
    AiLogRow,
    RequestLogRow,
    as_tuple,
)

log = logging.getLogger("gatez.logstore")


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

    def _insert(
        self, table: str, columns: Sequence[str], rows: Sequence[RequestLogRow | AiLogRow]
    ) -> None:
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
        return [AiLogRow(*r) for r in self._recent(AI_LOG_TABLE, AI_LOG_COLUMNS, tenant_id, limit)]

    def _recent(
        self, table: str, columns: Sequence[str], tenant_id: str, limit: int
    ) -> list[tuple[Any, ...]]:
        query = (
            f"SELECT {', '.join(columns)} FROM {table} WHERE tenant_id = {{tenant:String}} "
            "ORDER BY time DESC LIMIT {limit:UInt32}"
        )
        with self._lock:
            result = self._client.query(query, parameters={"tenant": tenant_id, "limit": limit})
        rows = []
        for row in result.result_rows:
            values = list(row)
            time = values[0]
            if isinstance(time, dt.datetime) and time.tzinfo is None:
                values[0] = time.replace(tzinfo=dt.UTC)
            rows.append(tuple(values))
        return rows

    def close(self) -> None:
        with self._lock:
            self._client.close()
