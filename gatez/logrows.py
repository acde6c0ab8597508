"""Log rows: the request log (one row per request) and the AI log (one row per LLM call).

The same dataclasses are written by data planes, shipped over gRPC, spooled to disk, and stored
in ClickHouse. A row's text is bounded where the row is made (`clip`), so one row can never
outgrow a batch, and `encoded_size` bounds what a row costs in a batch before it is encoded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from typing import Final, TypeAlias, overload

from google.protobuf.timestamp_pb2 import Timestamp

from gatez.v1 import logs_pb2


@dataclass(frozen=True, slots=True)
class RequestLogRow:
    time: dt.datetime
    request_id: str
    tenant_id: str
    key_id: str
    method: str
    path: str
    status: int
    latency_ms: float
    error: str
    node_id: str


@dataclass(frozen=True, slots=True)
class AiLogRow:
    time: dt.datetime
    request_id: str
    tenant_id: str
    key_id: str
    provider: str
    model_alias: str
    upstream_model: str
    input_tokens: int
    output_tokens: int
    status: int
    latency_ms: float
    ttft_ms: float
    streamed: bool
    node_id: str
    # Tokens counted by the gateway: the provider's usage never came (see AiLog in logs.proto).
    usage_estimated: bool = False
    # Of input_tokens, those read from the provider's prompt cache.
    cached_input_tokens: int = 0
    # USD at the policy's price of upstream_model; 0 with price_known false when it had none.
    cost_usd: float = 0.0
    price_known: bool = False
    # A fallback chain's targets tried or skipped before the one that answered, in order:
    # "provider/model=skipped" or "provider/model=<status or failure>" (see logs.proto).
    attempts: tuple[str, ...] = ()


LogRow: TypeAlias = RequestLogRow | AiLogRow

# Bounds on the text a client can put in a row (characters; at most 4 UTF-8 bytes each): a path
# can be as long as the proxy's header limit (60 KiB in Envoy), which no log reader needs.
PATH_LIMIT: Final = 2048
TEXT_LIMIT: Final = 256


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters (unchanged, and not copied, when it fits)."""
    return text if len(text) <= limit else text[:limit]


@overload
def clip_row(row: RequestLogRow) -> RequestLogRow: ...
@overload
def clip_row(row: AiLogRow) -> AiLogRow: ...
def clip_row(row: LogRow) -> LogRow:
    """The row with every text field cut to its bound; for rows made elsewhere than the access
    log (the sink applies it to a row that would not fit a batch on its own)."""
    if isinstance(row, RequestLogRow):
        return RequestLogRow(
            time=row.time,
            request_id=clip(row.request_id),
            tenant_id=clip(row.tenant_id),
            key_id=clip(row.key_id),
            method=clip(row.method),
            path=clip(row.path, PATH_LIMIT),
            status=row.status,
            latency_ms=row.latency_ms,
            error=clip(row.error),
            node_id=clip(row.node_id),
        )
    return AiLogRow(
        time=row.time,
        request_id=clip(row.request_id),
        tenant_id=clip(row.tenant_id),
        key_id=clip(row.key_id),
        provider=clip(row.provider),
        model_alias=clip(row.model_alias),
        upstream_model=clip(row.upstream_model),
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        status=row.status,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
        streamed=row.streamed,
        node_id=clip(row.node_id),
        usage_estimated=row.usage_estimated,
        cached_input_tokens=row.cached_input_tokens,
        cost_usd=row.cost_usd,
        price_known=row.price_known,
        attempts=tuple(clip(target) for target in row.attempts),
    )


def _text_size(text: str) -> int:
    # A string field: tag (1) + length varint (up to 3 for anything under 2 MiB) + UTF-8 bytes.
    return 4 + (len(text) if text.isascii() else len(text.encode()))


# The fixed parts of an encoded row, as an element of a repeated field (tag + length, 4), with
# every number at its widest: timestamp 14, uint32 6 each, double 9 each, bool 2 each; one byte
# more each for fields numbered 16 and up (two-byte tags).
_REQUEST_FIXED: Final = 4 + 14 + 6 + 9
_AI_FIXED: Final = 4 + 14 + 3 * 6 + 2 * 9 + 2 * 2 + (7 + 10 + 3)


def encoded_size(row: LogRow) -> int:
    """An upper bound of the row's protobuf size inside a batch (IngestLogsRequest, LogBatch).

    Cheap (no encoding): batches are cut by it so none outgrows what the control service or
    ClickHouse accept; ClickHouse's native format is no larger for the same values."""
    if isinstance(row, RequestLogRow):
        return (
            _REQUEST_FIXED
            + _text_size(row.request_id)
            + _text_size(row.tenant_id)
            + _text_size(row.key_id)
            + _text_size(row.method)
            + _text_size(row.path)
            + _text_size(row.error)
            + _text_size(row.node_id)
        )
    return (
        _AI_FIXED
        + _text_size(row.request_id)
        + _text_size(row.tenant_id)
        + _text_size(row.key_id)
        + _text_size(row.provider)
        + _text_size(row.model_alias)
        + _text_size(row.upstream_model)
        + _text_size(row.node_id)
    )


REQUEST_LOG_TABLE: Final = "request_log"
AI_LOG_TABLE: Final = "ai_log"
REQUEST_LOG_COLUMNS: Final = tuple(f.name for f in fields(RequestLogRow))
AI_LOG_COLUMNS: Final = tuple(f.name for f in fields(AiLogRow))

# Blocks whose hashes a table remembers: a batch inserted again (a retry after a timeout whose
# insert went through, a spool segment replayed again after a crash) is the same block, and is
# dropped rather than stored twice. ReplicatedMergeTree deduplicates on its own.
DEDUPLICATION_WINDOW: Final = 10_000

# Ordered by tenant first: every query filters on tenant_id.
SCHEMA: Final = (
    f"""CREATE TABLE IF NOT EXISTS {REQUEST_LOG_TABLE} (
        time DateTime64(3, 'UTC'), request_id String, tenant_id LowCardinality(String),
        key_id String, method LowCardinality(String), path String, status UInt16,
        latency_ms Float64, error LowCardinality(String), node_id LowCardinality(String)
    ) ENGINE = MergeTree ORDER BY (tenant_id, time)
    SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}""",
    f"""CREATE TABLE IF NOT EXISTS {AI_LOG_TABLE} (
        time DateTime64(3, 'UTC'), request_id String, tenant_id LowCardinality(String),
        key_id String, provider LowCardinality(String), model_alias LowCardinality(String),
        upstream_model LowCardinality(String), input_tokens UInt32, output_tokens UInt32,
        status UInt16, latency_ms Float64, ttft_ms Float64, streamed Bool,
        node_id LowCardinality(String), usage_estimated Bool DEFAULT false,
        cached_input_tokens UInt32 DEFAULT 0, cost_usd Float64 DEFAULT 0,
        price_known Bool DEFAULT false, attempts Array(String) DEFAULT []
    ) ENGINE = MergeTree ORDER BY (tenant_id, time)
    SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}""",
)
# Run after SCHEMA: brings tables made by an older version up to date (CREATE TABLE IF NOT
# EXISTS leaves an existing table as it is).
MIGRATIONS: Final = (
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS usage_estimated Bool DEFAULT false",
    # Rows written before costs were logged keep cost 0 and read as unpriced.
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS cached_input_tokens UInt32 DEFAULT 0",
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS cost_usd Float64 DEFAULT 0",
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS price_known Bool DEFAULT false",
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS attempts Array(String) DEFAULT []",
    *(
        f"ALTER TABLE {table} MODIFY SETTING "
        f"non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        for table in (REQUEST_LOG_TABLE, AI_LOG_TABLE)
    ),
)


def as_tuple(row: RequestLogRow | AiLogRow) -> tuple[object, ...]:
    return astuple(row)


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def _timestamp(value: dt.datetime) -> Timestamp:
    # Integer arithmetic: Timestamp.FromDatetime costs about three times as much, per row.
    micros = (value - _EPOCH) // _MICROSECOND
    return Timestamp(seconds=micros // 1_000_000, nanos=micros % 1_000_000 * 1000)


def _datetime(stamp: Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


def request_log_to_proto(row: RequestLogRow) -> logs_pb2.RequestLog:
    return logs_pb2.RequestLog(
        request_id=row.request_id,
        time=_timestamp(row.time),
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        method=row.method,
        path=row.path,
        status=row.status,
        latency_ms=row.latency_ms,
        error=row.error,
        node_id=row.node_id,
    )


def request_log_from_proto(message: logs_pb2.RequestLog) -> RequestLogRow:
    return RequestLogRow(
        time=_datetime(message.time),
        request_id=message.request_id,
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        method=message.method,
        path=message.path,
        status=message.status,
        latency_ms=message.latency_ms,
        error=message.error,
        node_id=message.node_id,
    )


def ai_log_to_proto(row: AiLogRow) -> logs_pb2.AiLog:
    return logs_pb2.AiLog(
        request_id=row.request_id,
        time=_timestamp(row.time),
        tenant_id=row.tenant_id,
        key_id=row.key_id,
        provider=row.provider,
        model_alias=row.model_alias,
        upstream_model=row.upstream_model,
        input_tokens=row.input_tokens,
        output_tokens=row.output_tokens,
        status=row.status,
        latency_ms=row.latency_ms,
        ttft_ms=row.ttft_ms,
        streamed=row.streamed,
        node_id=row.node_id,
        usage_estimated=row.usage_estimated,
        cost_usd=row.cost_usd,
        cached_input_tokens=row.cached_input_tokens,
        price_known=row.price_known,
        attempts=row.attempts,
    )


def ai_log_from_proto(message: logs_pb2.AiLog) -> AiLogRow:
    return AiLogRow(
        time=_datetime(message.time),
        request_id=message.request_id,
        tenant_id=message.tenant_id,
        key_id=message.key_id,
        provider=message.provider,
        model_alias=message.model_alias,
        upstream_model=message.upstream_model,
        input_tokens=message.input_tokens,
        output_tokens=message.output_tokens,
        status=message.status,
        latency_ms=message.latency_ms,
        ttft_ms=message.ttft_ms,
        streamed=message.streamed,
        node_id=message.node_id,
        usage_estimated=message.usage_estimated,
        cached_input_tokens=message.cached_input_tokens,
        cost_usd=message.cost_usd,
        price_known=message.price_known,
        attempts=tuple(message.attempts),
    )


def batch_to_proto(requests: Sequence[RequestLogRow], ai: Sequence[AiLogRow]) -> logs_pb2.LogBatch:
    batch = logs_pb2.LogBatch()
    batch.request_logs.extend(request_log_to_proto(r) for r in requests)
    batch.ai_logs.extend(ai_log_to_proto(r) for r in ai)
    return batch


def batch_from_proto(batch: logs_pb2.LogBatch) -> tuple[list[RequestLogRow], list[AiLogRow]]:
    return (
        [request_log_from_proto(m) for m in batch.request_logs],
        [ai_log_from_proto(m) for m in batch.ai_logs],
    )
