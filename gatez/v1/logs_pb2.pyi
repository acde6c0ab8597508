import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestLog(_message.Message):
    __slots__ = ("request_id", "time", "tenant_id", "key_id", "method", "path", "status", "latency_ms", "error", "node_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time: _timestamp_pb2.Timestamp
    tenant_id: str
    key_id: str
    method: str
    path: str
    status: int
    latency_ms: float
    error: str
    node_id: str
    def __init__(self, request_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., method: _Optional[str] = ..., path: _Optional[str] = ..., status: _Optional[int] = ..., latency_ms: _Optional[float] = ..., error: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class AiLog(_message.Message):
    __slots__ = ("request_id", "time", "tenant_id", "key_id", "provider", "model_alias", "upstream_model", "input_tokens", "output_tokens", "status", "latency_ms", "ttft_ms", "streamed", "node_id", "usage_estimated", "cost_usd", "cached_input_tokens", "price_known", "attempts", "cache_hit", "pii_entities")
    class PiiEntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_ALIAS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    STREAMED_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    USAGE_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PRICE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    PII_ENTITIES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time: _timestamp_pb2.Timestamp
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
    usage_estimated: bool
    cost_usd: float
    cached_input_tokens: int
    price_known: bool
    attempts: _containers.RepeatedScalarFieldContainer[str]
    cache_hit: str
    pii_entities: _containers.ScalarMap[str, int]
    def __init__(self, request_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., key_id: _Optional[str] = ..., provider: _Optional[str] = ..., model_alias: _Optional[str] = ..., upstream_model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., status: _Optional[int] = ..., latency_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., streamed: _Optional[bool] = ..., node_id: _Optional[str] = ..., usage_estimated: _Optional[bool] = ..., cost_usd: _Optional[float] = ..., cached_input_tokens: _Optional[int] = ..., price_known: _Optional[bool] = ..., attempts: _Optional[_Iterable[str]] = ..., cache_hit: _Optional[str] = ..., pii_entities: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AgentLog(_message.Message):
    __slots__ = ("request_id", "time", "tenant_id", "caller", "session_id_digest", "server", "method", "tool", "decision", "reason", "approver", "arguments_digest", "arguments_json", "status", "latency_ms", "result_bytes", "protocol_version", "node_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    time: _timestamp_pb2.Timestamp
    tenant_id: str
    caller: str
    session_id_digest: str
    server: str
    method: str
    tool: str
    decision: str
    reason: str
    approver: str
    arguments_digest: str
    arguments_json: str
    status: int
    latency_ms: float
    result_bytes: int
    protocol_version: str
    node_id: str
    def __init__(self, request_id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenant_id: _Optional[str] = ..., caller: _Optional[str] = ..., session_id_digest: _Optional[str] = ..., server: _Optional[str] = ..., method: _Optional[str] = ..., tool: _Optional[str] = ..., decision: _Optional[str] = ..., reason: _Optional[str] = ..., approver: _Optional[str] = ..., arguments_digest: _Optional[str] = ..., arguments_json: _Optional[str] = ..., status: _Optional[int] = ..., latency_ms: _Optional[float] = ..., result_bytes: _Optional[int] = ..., protocol_version: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("request_logs", "ai_logs", "agent_logs")
    REQUEST_LOGS_FIELD_NUMBER: _ClassVar[int]
    AI_LOGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_LOGS_FIELD_NUMBER: _ClassVar[int]
    request_logs: _containers.RepeatedCompositeFieldContainer[RequestLog]
    ai_logs: _containers.RepeatedCompositeFieldContainer[AiLog]
    agent_logs: _containers.RepeatedCompositeFieldContainer[AgentLog]
    def __init__(self, request_logs: _Optional[_Iterable[_Union[RequestLog, _Mapping]]] = ..., ai_logs: _Optional[_Iterable[_Union[AiLog, _Mapping]]] = ..., agent_logs: _Optional[_Iterable[_Union[AgentLog, _Mapping]]] = ...) -> None: ...
