"""Log rows: the request log (one row per request), the AI log (one row per LLM call) and the
agent log (one row per agent action: an MCP message the gateway allowed, refused, held or
changed).

The same dataclasses are written by data planes, shipped over gRPC, spooled to disk, and stored
in ClickHouse. A row's text is bounded where the row is made (`clip`), so one row can never
outgrow a batch, and `encoded_size` bounds what a row costs in a batch before it is encoded.
Agent rows are bounded as they enter the sink (`LogSink.add_agent` applies `clip_row`), so no
stage can forget it; their raw arguments to `ARGUMENTS_LIMIT` bytes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
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
    # "exact" or "semantic" when the gateway answered from its answer cache (no provider was
    # called: tokens and cost 0); "" otherwise.
    cache_hit: str = ""
    # Sensitive data PII redaction found, as (entity type, count) pairs sorted by type; never
    # the values. Built with `pii_entity_counts`, which bounds it.
    pii_entities: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class AgentLogRow:
    """One agent action (see AgentLog in logs.proto); the sink clips its text (`clip_row`)."""

    time: dt.datetime
    request_id: str
    tenant_id: str
    # The API key id, or "jwt:<subject>".
    caller: str
    # SHA-256 (hex, first 32 digits) of the Mcp-Session-Id; empty for sessionless revisions.
    session_id_digest: str
    server: str
    # The JSON-RPC method ("tools/call"), or the HTTP method for GET streams and DELETE.
    method: str
    # The tool, prompt or resource the message names.
    tool: str
    # "allowed", "denied", "approved", "approval_denied", "approval_timeout", "error",
    # "flagged", "stripped", "blocked".
    decision: str
    reason: str
    # Who approved or denied a held call.
    approver: str
    # SHA-256 (hex) of the call's arguments as JSON.
    arguments_digest: str
    # The raw arguments, only when the policy says so; at most ARGUMENTS_LIMIT bytes.
    arguments_json: str
    status: int
    latency_ms: float
    # Bytes of the upstream's answer passed to the client.
    result_bytes: int
    # The MCP protocol revision the client spoke.
    protocol_version: str
    node_id: str


LogRow: TypeAlias = RequestLogRow | AiLogRow | AgentLogRow

# Bounds on the text a client can put in a row (characters; at most 4 UTF-8 bytes each): a path
# can be as long as the proxy's header limit (60 KiB in Envoy), which no log reader needs.
PATH_LIMIT: Final = 2048
TEXT_LIMIT: Final = 256
# An agent row's reason may quote what was refused (an argument, a changed definition's part).
REASON_LIMIT: Final = 1024
# UTF-8 bytes of an agent row's raw arguments (logs.proto: "clipped to 16 KiB").
ARGUMENTS_LIMIT: Final = 16 * 1024
# An AI row's PII counts: entity types (our scanner knows about twenty, each a short name), the
# characters of a type's name, and the largest count (UInt32 in protobuf and ClickHouse).
PII_ENTITY_TYPES_LIMIT: Final = 64
PII_ENTITY_NAME_LIMIT: Final = 64
_COUNT_MAX: Final = 2**32 - 1


def clip(text: str, limit: int = TEXT_LIMIT) -> str:
    """`text` cut to `limit` characters (unchanged, and not copied, when it fits)."""
    return text if len(text) <= limit else text[:limit]


def clip_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes, on a character boundary (unchanged, and not
    copied, when it fits)."""
    if _fits_utf8(text, limit):
        return text
    if text.isascii():
        return text[:limit]
    # A character cut in two leaves a partial sequence at the end, which "ignore" drops.
    return text.encode()[:limit].decode(errors="ignore")


def pii_entity_counts(counts: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    """`counts` (entity type -> how many) as an AI row holds them: sorted by type, names cut
    to `PII_ENTITY_NAME_LIMIT`, at most `PII_ENTITY_TYPES_LIMIT` types, zero counts left out
    and counts capped at UInt32's largest, so no count makes a row unstorable."""
    if not counts:
        return ()
    merged: dict[str, int] = {}
    for name, count in counts.items():
        if count > 0:
            key = clip(name, PII_ENTITY_NAME_LIMIT)
            # Two long names cut to the same prefix count together.
            merged[key] = min(merged.get(key, 0) + count, _COUNT_MAX)
    return tuple(sorted(merged.items())[:PII_ENTITY_TYPES_LIMIT])


def _fits_utf8(text: str, limit: int) -> bool:
    # Cheapest test first: no character takes more than 4 bytes.
    return len(text) * 4 <= limit or (
        len(text) <= limit and (text.isascii() or len(text.encode()) <= limit)
    )


def _agent_row_fits(row: AgentLogRow) -> bool:
    return (
        len(row.request_id) <= TEXT_LIMIT
        and len(row.tenant_id) <= TEXT_LIMIT
        and len(row.caller) <= TEXT_LIMIT
        and len(row.session_id_digest) <= TEXT_LIMIT
        and len(row.server) <= TEXT_LIMIT
        and len(row.method) <= TEXT_LIMIT
        and len(row.tool) <= TEXT_LIMIT
        and len(row.decision) <= TEXT_LIMIT
        and len(row.reason) <= REASON_LIMIT
        and len(row.approver) <= TEXT_LIMIT
        and len(row.arguments_digest) <= TEXT_LIMIT
        and _fits_utf8(row.arguments_json, ARGUMENTS_LIMIT)
        and len(row.protocol_version) <= TEXT_LIMIT
        and len(row.node_id) <= TEXT_LIMIT
    )


@overload
def clip_row(row: RequestLogRow) -> RequestLogRow: ...
@overload
def clip_row(row: AiLogRow) -> AiLogRow: ...
@overload
def clip_row(row: AgentLogRow) -> AgentLogRow: ...
def clip_row(row: LogRow) -> LogRow:
    """The row with every text field cut to its bound; for rows made elsewhere than the access
    log (the sink applies it to a row that would not fit a batch on its own, and to every agent
    row as it arrives). An agent row that fits is returned as it is."""
    if isinstance(row, AgentLogRow):
        if _agent_row_fits(row):
            return row
        return AgentLogRow(
            time=row.time,
            request_id=clip(row.request_id),
            tenant_id=clip(row.tenant_id),
            caller=clip(row.caller),
            session_id_digest=clip(row.session_id_digest),
            server=clip(row.server),
            method=clip(row.method),
            tool=clip(row.tool),
            decision=clip(row.decision),
            reason=clip(row.reason, REASON_LIMIT),
            approver=clip(row.approver),
            arguments_digest=clip(row.arguments_digest),
            arguments_json=clip_utf8(row.arguments_json, ARGUMENTS_LIMIT),
            status=row.status,
            latency_ms=row.latency_ms,
            result_bytes=row.result_bytes,
            protocol_version=clip(row.protocol_version),
            node_id=clip(row.node_id),
        )
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
        cache_hit=clip(row.cache_hit),
        pii_entities=pii_entity_counts(dict(row.pii_entities)),
    )


def _text_size(text: str) -> int:
    # A string field: tag (1) + length varint (up to 3 for anything under 2 MiB) + UTF-8 bytes.
    return 4 + (len(text) if text.isascii() else len(text.encode()))


# The fixed parts of an encoded row, as an element of a repeated field (tag + length, 4), with
# every number at its widest: timestamp 14, uint32 6 each, double 9 each, bool 2 each; one byte
# more each for fields numbered 16 and up (two-byte tags).
_REQUEST_FIXED: Final = 4 + 14 + 6 + 9
_AI_FIXED: Final = 4 + 14 + 3 * 6 + 2 * 9 + 2 * 2 + (7 + 10 + 3)
# An AI row's fields numbered 19 and up have two-byte tags: one byte more than `_text_size`
# counts. A pii_entities map entry is a message: tag (2), length (up to 3), its key (a string
# field, `_text_size`) and its count (tag 1, uint32 5).
_WIDE_TAG: Final = 1
_PII_ENTRY: Final = 2 + 3 + 6
# status (uint32), latency_ms (double), result_bytes (uint64, field 16: 2 + 10), and the
# two-byte tags of protocol_version (17) and node_id (18).
_AGENT_FIXED: Final = 4 + 14 + 6 + 9 + 12 + 2


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
    if isinstance(row, AgentLogRow):
        return (
            _AGENT_FIXED
            + _text_size(row.request_id)
            + _text_size(row.tenant_id)
            + _text_size(row.caller)
            + _text_size(row.session_id_digest)
            + _text_size(row.server)
            + _text_size(row.method)
            + _text_size(row.tool)
            + _text_size(row.decision)
            + _text_size(row.reason)
            + _text_size(row.approver)
            + _text_size(row.arguments_digest)
            + _text_size(row.arguments_json)
            + _text_size(row.protocol_version)
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
        + sum(_WIDE_TAG + _text_size(target) for target in row.attempts)
        + _WIDE_TAG
        + _text_size(row.cache_hit)
        + sum(_PII_ENTRY + _text_size(name) for name, _ in row.pii_entities)
    )


REQUEST_LOG_TABLE: Final = "request_log"
AI_LOG_TABLE: Final = "ai_log"
AGENT_LOG_TABLE: Final = "agent_log"
REQUEST_LOG_COLUMNS: Final = tuple(f.name for f in fields(RequestLogRow))
AI_LOG_COLUMNS: Final = tuple(f.name for f in fields(AiLogRow))
AGENT_LOG_COLUMNS: Final = tuple(f.name for f in fields(AgentLogRow))

# Blocks whose hashes a table remembers: a batch inserted again (a retry after a timeout whose
# insert went through, a spool segment replayed again after a crash) is the same block, and is
# dropped rather than stored twice. ReplicatedMergeTree deduplicates on its own.
DEDUPLICATION_WINDOW: Final = 10_000

# Ordered by tenant first: every query filters on tenant_id. SCHEMA runs at every start, so a
# table added here is created on a database made by an older version too.
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
        price_known Bool DEFAULT false, attempts Array(String) DEFAULT [],
        cache_hit LowCardinality(String) DEFAULT '',
        pii_entities Map(LowCardinality(String), UInt32) DEFAULT map()
    ) ENGINE = MergeTree ORDER BY (tenant_id, time)
    SETTINGS non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}""",
    # status is UInt32 as in AgentLog: a JSON-RPC exchange's status is the gateway's to choose,
    # and a value the proto holds must never make the row unstorable. The bloom filter lets
    # ListAgentAudit's session filter skip granules within a tenant's range.
    f"""CREATE TABLE IF NOT EXISTS {AGENT_LOG_TABLE} (
        time DateTime64(3, 'UTC'), request_id String, tenant_id LowCardinality(String),
        caller String, session_id_digest String, server LowCardinality(String),
        method LowCardinality(String), tool LowCardinality(String),
        decision LowCardinality(String), reason String, approver String,
        arguments_digest String, arguments_json String CODEC(ZSTD), status UInt32,
        latency_ms Float64, result_bytes UInt64, protocol_version LowCardinality(String),
        node_id LowCardinality(String),
        INDEX session_id_digest_index session_id_digest TYPE bloom_filter GRANULARITY 4
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
    # Rows written before the answer cache and PII redaction read as no hit, nothing found.
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS cache_hit LowCardinality(String) "
    "DEFAULT ''",
    f"ALTER TABLE {AI_LOG_TABLE} ADD COLUMN IF NOT EXISTS "
    "pii_entities Map(LowCardinality(String), UInt32) DEFAULT map()",
    *(
        f"ALTER TABLE {table} MODIFY SETTING "
        f"non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        for table in (REQUEST_LOG_TABLE, AI_LOG_TABLE)
    ),
)


_PII_ENTITIES_COLUMN: Final = AI_LOG_COLUMNS.index("pii_entities")


def as_tuple(row: LogRow) -> tuple[object, ...]:
    """The row's values in its table's column order, as the ClickHouse client inserts them."""
    values = astuple(row)
    if isinstance(row, AiLogRow):
        # A Map column takes a dict.
        at = _PII_ENTITIES_COLUMN
        return (*values[:at], dict(row.pii_entities), *values[at + 1 :])
    return values


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
        cache_hit=row.cache_hit,
        pii_entities=dict(row.pii_entities),
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
        cache_hit=message.cache_hit,
        # A protobuf map keeps no order: the row's is by type.
        pii_entities=tuple(sorted(message.pii_entities.items())),
    )


def agent_log_to_proto(row: AgentLogRow) -> logs_pb2.AgentLog:
    return logs_pb2.AgentLog(
        request_id=row.request_id,
        time=_timestamp(row.time),
        tenant_id=row.tenant_id,
        caller=row.caller,
        session_id_digest=row.session_id_digest,
        server=row.server,
        method=row.method,
        tool=row.tool,
        decision=row.decision,
        reason=row.reason,
        approver=row.approver,
        arguments_digest=row.arguments_digest,
        arguments_json=row.arguments_json,
        status=row.status,
        latency_ms=row.latency_ms,
        result_bytes=row.result_bytes,
        protocol_version=row.protocol_version,
        node_id=row.node_id,
    )


def agent_log_from_proto(message: logs_pb2.AgentLog) -> AgentLogRow:
    return AgentLogRow(
        time=_datetime(message.time),
        request_id=message.request_id,
        tenant_id=message.tenant_id,
        caller=message.caller,
        session_id_digest=message.session_id_digest,
        server=message.server,
        method=message.method,
        tool=message.tool,
        decision=message.decision,
        reason=message.reason,
        approver=message.approver,
        arguments_digest=message.arguments_digest,
        arguments_json=message.arguments_json,
        status=message.status,
        latency_ms=message.latency_ms,
        result_bytes=message.result_bytes,
        protocol_version=message.protocol_version,
        node_id=message.node_id,
    )


def batch_to_proto(
    requests: Sequence[RequestLogRow],
    ai: Sequence[AiLogRow],
    agents: Sequence[AgentLogRow] = (),
) -> logs_pb2.LogBatch:
    batch = logs_pb2.LogBatch()
    batch.request_logs.extend(request_log_to_proto(r) for r in requests)
    batch.ai_logs.extend(ai_log_to_proto(r) for r in ai)
    batch.agent_logs.extend(agent_log_to_proto(r) for r in agents)
    return batch


def batch_from_proto(
    batch: logs_pb2.LogBatch,
) -> tuple[list[RequestLogRow], list[AiLogRow], list[AgentLogRow]]:
    return (
        [request_log_from_proto(m) for m in batch.request_logs],
        [ai_log_from_proto(m) for m in batch.ai_logs],
        [agent_log_from_proto(m) for m in batch.agent_logs],
    )
