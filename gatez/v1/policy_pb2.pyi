import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProviderKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_KIND_UNSPECIFIED: _ClassVar[ProviderKind]
    PROVIDER_KIND_OPENAI: _ClassVar[ProviderKind]
    PROVIDER_KIND_AZURE_OPENAI: _ClassVar[ProviderKind]
    PROVIDER_KIND_ANTHROPIC: _ClassVar[ProviderKind]
    PROVIDER_KIND_GEMINI: _ClassVar[ProviderKind]
    PROVIDER_KIND_OLLAMA: _ClassVar[ProviderKind]
    PROVIDER_KIND_BEDROCK: _ClassVar[ProviderKind]

class ProviderAuth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVIDER_AUTH_UNSPECIFIED: _ClassVar[ProviderAuth]
    PROVIDER_AUTH_API_KEY: _ClassVar[ProviderAuth]
    PROVIDER_AUTH_AWS_SIGV4: _ClassVar[ProviderAuth]

class RouteKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUTE_KIND_UNSPECIFIED: _ClassVar[RouteKind]
    ROUTE_KIND_LLM: _ClassVar[RouteKind]
    ROUTE_KIND_REST: _ClassVar[RouteKind]
    ROUTE_KIND_MCP: _ClassVar[RouteKind]
    ROUTE_KIND_A2A: _ClassVar[RouteKind]

class ToolAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_ACTION_UNSPECIFIED: _ClassVar[ToolAction]
    TOOL_ACTION_ALLOW: _ClassVar[ToolAction]
    TOOL_ACTION_DENY: _ClassVar[ToolAction]
    TOOL_ACTION_REQUIRE_APPROVAL: _ClassVar[ToolAction]

class ResultScanAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESULT_SCAN_ACTION_UNSPECIFIED: _ClassVar[ResultScanAction]
    RESULT_SCAN_ACTION_FLAG: _ClassVar[ResultScanAction]
    RESULT_SCAN_ACTION_STRIP: _ClassVar[ResultScanAction]
    RESULT_SCAN_ACTION_BLOCK: _ClassVar[ResultScanAction]
    RESULT_SCAN_ACTION_OFF: _ClassVar[ResultScanAction]

class PiiAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PII_ACTION_UNSPECIFIED: _ClassVar[PiiAction]
    PII_ACTION_OFF: _ClassVar[PiiAction]
    PII_ACTION_MASK: _ClassVar[PiiAction]
    PII_ACTION_REPLACE: _ClassVar[PiiAction]
    PII_ACTION_HASH: _ClassVar[PiiAction]
    PII_ACTION_BLOCK: _ClassVar[PiiAction]

class EmbeddingSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_SOURCE_UNSPECIFIED: _ClassVar[EmbeddingSource]
    EMBEDDING_SOURCE_LOCAL: _ClassVar[EmbeddingSource]
    EMBEDDING_SOURCE_PROVIDER: _ClassVar[EmbeddingSource]
PROVIDER_KIND_UNSPECIFIED: ProviderKind
PROVIDER_KIND_OPENAI: ProviderKind
PROVIDER_KIND_AZURE_OPENAI: ProviderKind
PROVIDER_KIND_ANTHROPIC: ProviderKind
PROVIDER_KIND_GEMINI: ProviderKind
PROVIDER_KIND_OLLAMA: ProviderKind
PROVIDER_KIND_BEDROCK: ProviderKind
PROVIDER_AUTH_UNSPECIFIED: ProviderAuth
PROVIDER_AUTH_API_KEY: ProviderAuth
PROVIDER_AUTH_AWS_SIGV4: ProviderAuth
ROUTE_KIND_UNSPECIFIED: RouteKind
ROUTE_KIND_LLM: RouteKind
ROUTE_KIND_REST: RouteKind
ROUTE_KIND_MCP: RouteKind
ROUTE_KIND_A2A: RouteKind
TOOL_ACTION_UNSPECIFIED: ToolAction
TOOL_ACTION_ALLOW: ToolAction
TOOL_ACTION_DENY: ToolAction
TOOL_ACTION_REQUIRE_APPROVAL: ToolAction
RESULT_SCAN_ACTION_UNSPECIFIED: ResultScanAction
RESULT_SCAN_ACTION_FLAG: ResultScanAction
RESULT_SCAN_ACTION_STRIP: ResultScanAction
RESULT_SCAN_ACTION_BLOCK: ResultScanAction
RESULT_SCAN_ACTION_OFF: ResultScanAction
PII_ACTION_UNSPECIFIED: PiiAction
PII_ACTION_OFF: PiiAction
PII_ACTION_MASK: PiiAction
PII_ACTION_REPLACE: PiiAction
PII_ACTION_HASH: PiiAction
PII_ACTION_BLOCK: PiiAction
EMBEDDING_SOURCE_UNSPECIFIED: EmbeddingSource
EMBEDDING_SOURCE_LOCAL: EmbeddingSource
EMBEDDING_SOURCE_PROVIDER: EmbeddingSource

class Tenant(_message.Message):
    __slots__ = ("id", "display_name", "rate_limit", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    display_name: str
    rate_limit: RateLimit
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., display_name: _Optional[str] = ..., rate_limit: _Optional[_Union[RateLimit, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RateLimit(_message.Message):
    __slots__ = ("requests_per_minute", "burst")
    REQUESTS_PER_MINUTE_FIELD_NUMBER: _ClassVar[int]
    BURST_FIELD_NUMBER: _ClassVar[int]
    requests_per_minute: int
    burst: int
    def __init__(self, requests_per_minute: _Optional[int] = ..., burst: _Optional[int] = ...) -> None: ...

class ApiKey(_message.Message):
    __slots__ = ("id", "tenant_id", "name", "secret_sha256", "secret_prefix", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_SHA256_FIELD_NUMBER: _ClassVar[int]
    SECRET_PREFIX_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    name: str
    secret_sha256: str
    secret_prefix: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., secret_sha256: _Optional[str] = ..., secret_prefix: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IdentityProvider(_message.Message):
    __slots__ = ("id", "tenant_id", "issuer", "jwks_url", "audience", "tenant_claim", "algorithms", "groups_claim")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_FIELD_NUMBER: _ClassVar[int]
    JWKS_URL_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    TENANT_CLAIM_FIELD_NUMBER: _ClassVar[int]
    ALGORITHMS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_CLAIM_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    issuer: str
    jwks_url: str
    audience: str
    tenant_claim: str
    algorithms: _containers.RepeatedScalarFieldContainer[str]
    groups_claim: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., issuer: _Optional[str] = ..., jwks_url: _Optional[str] = ..., audience: _Optional[str] = ..., tenant_claim: _Optional[str] = ..., algorithms: _Optional[_Iterable[str]] = ..., groups_claim: _Optional[str] = ...) -> None: ...

class Provider(_message.Message):
    __slots__ = ("name", "kind", "base_url", "has_credential", "credential_update_time", "forward_headers", "azure_api_version", "aws_region", "auth")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    BASE_URL_FIELD_NUMBER: _ClassVar[int]
    HAS_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FORWARD_HEADERS_FIELD_NUMBER: _ClassVar[int]
    AZURE_API_VERSION_FIELD_NUMBER: _ClassVar[int]
    AWS_REGION_FIELD_NUMBER: _ClassVar[int]
    AUTH_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: ProviderKind
    base_url: str
    has_credential: bool
    credential_update_time: _timestamp_pb2.Timestamp
    forward_headers: _containers.RepeatedScalarFieldContainer[str]
    azure_api_version: str
    aws_region: str
    auth: ProviderAuth
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[_Union[ProviderKind, str]] = ..., base_url: _Optional[str] = ..., has_credential: _Optional[bool] = ..., credential_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., forward_headers: _Optional[_Iterable[str]] = ..., azure_api_version: _Optional[str] = ..., aws_region: _Optional[str] = ..., auth: _Optional[_Union[ProviderAuth, str]] = ...) -> None: ...

class ProviderCredential(_message.Message):
    __slots__ = ("provider", "api_key", "sealed_api_key", "key_id")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SEALED_API_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    provider: str
    api_key: str
    sealed_api_key: bytes
    key_id: str
    def __init__(self, provider: _Optional[str] = ..., api_key: _Optional[str] = ..., sealed_api_key: _Optional[bytes] = ..., key_id: _Optional[str] = ...) -> None: ...

class ModelRoute(_message.Message):
    __slots__ = ("id", "tenant_id", "alias", "provider", "upstream_model", "fallbacks")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    FALLBACKS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    alias: str
    provider: str
    upstream_model: str
    fallbacks: _containers.RepeatedCompositeFieldContainer[FallbackTarget]
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., alias: _Optional[str] = ..., provider: _Optional[str] = ..., upstream_model: _Optional[str] = ..., fallbacks: _Optional[_Iterable[_Union[FallbackTarget, _Mapping]]] = ...) -> None: ...

class FallbackTarget(_message.Message):
    __slots__ = ("provider", "upstream_model")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    provider: str
    upstream_model: str
    def __init__(self, provider: _Optional[str] = ..., upstream_model: _Optional[str] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("id", "path_prefix", "kind", "upstream_url", "strip_prefix")
    ID_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_URL_FIELD_NUMBER: _ClassVar[int]
    STRIP_PREFIX_FIELD_NUMBER: _ClassVar[int]
    id: str
    path_prefix: str
    kind: RouteKind
    upstream_url: str
    strip_prefix: bool
    def __init__(self, id: _Optional[str] = ..., path_prefix: _Optional[str] = ..., kind: _Optional[_Union[RouteKind, str]] = ..., upstream_url: _Optional[str] = ..., strip_prefix: _Optional[bool] = ...) -> None: ...

class ModelPrice(_message.Message):
    __slots__ = ("model", "input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_input_usd_per_mtok")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    CACHE_WRITE_INPUT_USD_PER_MTOK_FIELD_NUMBER: _ClassVar[int]
    model: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float
    cache_write_input_usd_per_mtok: float
    def __init__(self, model: _Optional[str] = ..., input_usd_per_mtok: _Optional[float] = ..., output_usd_per_mtok: _Optional[float] = ..., cached_input_usd_per_mtok: _Optional[float] = ..., cache_write_input_usd_per_mtok: _Optional[float] = ...) -> None: ...

class PolicySnapshot(_message.Message):
    __slots__ = ("version", "create_time", "tenants", "api_keys", "identity_providers", "providers", "provider_credentials", "model_routes", "lineage", "routes", "model_prices", "mcp_servers", "mcp_server_credentials", "agent_policies", "pii_policies", "budgets", "cache_policies")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROUTES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_PRICES_FIELD_NUMBER: _ClassVar[int]
    MCP_SERVERS_FIELD_NUMBER: _ClassVar[int]
    MCP_SERVER_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    AGENT_POLICIES_FIELD_NUMBER: _ClassVar[int]
    PII_POLICIES_FIELD_NUMBER: _ClassVar[int]
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    CACHE_POLICIES_FIELD_NUMBER: _ClassVar[int]
    version: int
    create_time: _timestamp_pb2.Timestamp
    tenants: _containers.RepeatedCompositeFieldContainer[Tenant]
    api_keys: _containers.RepeatedCompositeFieldContainer[ApiKey]
    identity_providers: _containers.RepeatedCompositeFieldContainer[IdentityProvider]
    providers: _containers.RepeatedCompositeFieldContainer[Provider]
    provider_credentials: _containers.RepeatedCompositeFieldContainer[ProviderCredential]
    model_routes: _containers.RepeatedCompositeFieldContainer[ModelRoute]
    lineage: str
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    model_prices: _containers.RepeatedCompositeFieldContainer[ModelPrice]
    mcp_servers: _containers.RepeatedCompositeFieldContainer[McpServer]
    mcp_server_credentials: _containers.RepeatedCompositeFieldContainer[ProviderCredential]
    agent_policies: _containers.RepeatedCompositeFieldContainer[AgentPolicy]
    pii_policies: _containers.RepeatedCompositeFieldContainer[PiiPolicy]
    budgets: _containers.RepeatedCompositeFieldContainer[Budget]
    cache_policies: _containers.RepeatedCompositeFieldContainer[CachePolicy]
    def __init__(self, version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tenants: _Optional[_Iterable[_Union[Tenant, _Mapping]]] = ..., api_keys: _Optional[_Iterable[_Union[ApiKey, _Mapping]]] = ..., identity_providers: _Optional[_Iterable[_Union[IdentityProvider, _Mapping]]] = ..., providers: _Optional[_Iterable[_Union[Provider, _Mapping]]] = ..., provider_credentials: _Optional[_Iterable[_Union[ProviderCredential, _Mapping]]] = ..., model_routes: _Optional[_Iterable[_Union[ModelRoute, _Mapping]]] = ..., lineage: _Optional[str] = ..., routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ..., model_prices: _Optional[_Iterable[_Union[ModelPrice, _Mapping]]] = ..., mcp_servers: _Optional[_Iterable[_Union[McpServer, _Mapping]]] = ..., mcp_server_credentials: _Optional[_Iterable[_Union[ProviderCredential, _Mapping]]] = ..., agent_policies: _Optional[_Iterable[_Union[AgentPolicy, _Mapping]]] = ..., pii_policies: _Optional[_Iterable[_Union[PiiPolicy, _Mapping]]] = ..., budgets: _Optional[_Iterable[_Union[Budget, _Mapping]]] = ..., cache_policies: _Optional[_Iterable[_Union[CachePolicy, _Mapping]]] = ...) -> None: ...

class McpServer(_message.Message):
    __slots__ = ("tenant_id", "name", "url", "credential_header", "has_credential", "credential_update_time")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_HEADER_FIELD_NUMBER: _ClassVar[int]
    HAS_CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    url: str
    credential_header: str
    has_credential: bool
    credential_update_time: _timestamp_pb2.Timestamp
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., url: _Optional[str] = ..., credential_header: _Optional[str] = ..., has_credential: _Optional[bool] = ..., credential_update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ArgumentConstraint(_message.Message):
    __slots__ = ("allowed_values", "pattern", "max_length", "minimum", "maximum", "required")
    ALLOWED_VALUES_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    MINIMUM_FIELD_NUMBER: _ClassVar[int]
    MAXIMUM_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    allowed_values: _containers.RepeatedScalarFieldContainer[str]
    pattern: str
    max_length: int
    minimum: float
    maximum: float
    required: bool
    def __init__(self, allowed_values: _Optional[_Iterable[str]] = ..., pattern: _Optional[str] = ..., max_length: _Optional[int] = ..., minimum: _Optional[float] = ..., maximum: _Optional[float] = ..., required: _Optional[bool] = ...) -> None: ...

class ArgumentMatch(_message.Message):
    __slots__ = ("argument", "pattern")
    ARGUMENT_FIELD_NUMBER: _ClassVar[int]
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    argument: str
    pattern: str
    def __init__(self, argument: _Optional[str] = ..., pattern: _Optional[str] = ...) -> None: ...

class ToolRule(_message.Message):
    __slots__ = ("server", "tool", "action", "arguments", "approve_when")
    class ArgumentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ArgumentConstraint
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ArgumentConstraint, _Mapping]] = ...) -> None: ...
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    APPROVE_WHEN_FIELD_NUMBER: _ClassVar[int]
    server: str
    tool: str
    action: ToolAction
    arguments: _containers.MessageMap[str, ArgumentConstraint]
    approve_when: _containers.RepeatedCompositeFieldContainer[ArgumentMatch]
    def __init__(self, server: _Optional[str] = ..., tool: _Optional[str] = ..., action: _Optional[_Union[ToolAction, str]] = ..., arguments: _Optional[_Mapping[str, ArgumentConstraint]] = ..., approve_when: _Optional[_Iterable[_Union[ArgumentMatch, _Mapping]]] = ...) -> None: ...

class AgentLimits(_message.Message):
    __slots__ = ("calls_per_session", "concurrent_calls_per_session", "concurrent_calls_per_tenant", "max_argument_bytes", "max_result_bytes")
    CALLS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_CALLS_PER_SESSION_FIELD_NUMBER: _ClassVar[int]
    CONCURRENT_CALLS_PER_TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_ARGUMENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_RESULT_BYTES_FIELD_NUMBER: _ClassVar[int]
    calls_per_session: int
    concurrent_calls_per_session: int
    concurrent_calls_per_tenant: int
    max_argument_bytes: int
    max_result_bytes: int
    def __init__(self, calls_per_session: _Optional[int] = ..., concurrent_calls_per_session: _Optional[int] = ..., concurrent_calls_per_tenant: _Optional[int] = ..., max_argument_bytes: _Optional[int] = ..., max_result_bytes: _Optional[int] = ...) -> None: ...

class AgentPolicy(_message.Message):
    __slots__ = ("id", "tenant_id", "api_key_ids", "groups", "tools", "prompts", "resources", "limits", "allowed_hosts", "allowed_networks", "allowed_path_roots", "result_scan", "approval_timeout_s", "audit_raw_arguments")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_HOSTS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_NETWORKS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_PATH_ROOTS_FIELD_NUMBER: _ClassVar[int]
    RESULT_SCAN_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    AUDIT_RAW_ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    api_key_ids: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedScalarFieldContainer[str]
    tools: _containers.RepeatedCompositeFieldContainer[ToolRule]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.RepeatedScalarFieldContainer[str]
    limits: AgentLimits
    allowed_hosts: _containers.RepeatedScalarFieldContainer[str]
    allowed_networks: _containers.RepeatedScalarFieldContainer[str]
    allowed_path_roots: _containers.RepeatedScalarFieldContainer[str]
    result_scan: ResultScanAction
    approval_timeout_s: int
    audit_raw_arguments: bool
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., api_key_ids: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[str]] = ..., tools: _Optional[_Iterable[_Union[ToolRule, _Mapping]]] = ..., prompts: _Optional[_Iterable[str]] = ..., resources: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[AgentLimits, _Mapping]] = ..., allowed_hosts: _Optional[_Iterable[str]] = ..., allowed_networks: _Optional[_Iterable[str]] = ..., allowed_path_roots: _Optional[_Iterable[str]] = ..., result_scan: _Optional[_Union[ResultScanAction, str]] = ..., approval_timeout_s: _Optional[int] = ..., audit_raw_arguments: _Optional[bool] = ...) -> None: ...

class PiiPolicy(_message.Message):
    __slots__ = ("tenant_id", "entities", "default_action", "scan_output", "min_score", "hash_salt", "skip_prompts")
    class EntitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: PiiAction
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[PiiAction, str]] = ...) -> None: ...
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ACTION_FIELD_NUMBER: _ClassVar[int]
    SCAN_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    MIN_SCORE_FIELD_NUMBER: _ClassVar[int]
    HASH_SALT_FIELD_NUMBER: _ClassVar[int]
    SKIP_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    entities: _containers.ScalarMap[str, PiiAction]
    default_action: PiiAction
    scan_output: bool
    min_score: float
    hash_salt: bytes
    skip_prompts: bool
    def __init__(self, tenant_id: _Optional[str] = ..., entities: _Optional[_Mapping[str, PiiAction]] = ..., default_action: _Optional[_Union[PiiAction, str]] = ..., scan_output: _Optional[bool] = ..., min_score: _Optional[float] = ..., hash_salt: _Optional[bytes] = ..., skip_prompts: _Optional[bool] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("tenant_id", "api_key_id", "tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month", "soft_percent", "fail_open", "default_max_tokens")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MONTH_FIELD_NUMBER: _ClassVar[int]
    USD_PER_DAY_FIELD_NUMBER: _ClassVar[int]
    USD_PER_MONTH_FIELD_NUMBER: _ClassVar[int]
    SOFT_PERCENT_FIELD_NUMBER: _ClassVar[int]
    FAIL_OPEN_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    api_key_id: str
    tokens_per_day: int
    tokens_per_month: int
    usd_per_day: float
    usd_per_month: float
    soft_percent: int
    fail_open: bool
    default_max_tokens: int
    def __init__(self, tenant_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., tokens_per_day: _Optional[int] = ..., tokens_per_month: _Optional[int] = ..., usd_per_day: _Optional[float] = ..., usd_per_month: _Optional[float] = ..., soft_percent: _Optional[int] = ..., fail_open: _Optional[bool] = ..., default_max_tokens: _Optional[int] = ...) -> None: ...

class CachePolicy(_message.Message):
    __slots__ = ("tenant_id", "route_id", "enabled", "ttl_s", "similarity_threshold", "exact_only", "cache_tool_calls", "cache_sampled", "embeddings", "embedding_model")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    TTL_S_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    EXACT_ONLY_FIELD_NUMBER: _ClassVar[int]
    CACHE_TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SAMPLED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_MODEL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    route_id: str
    enabled: bool
    ttl_s: int
    similarity_threshold: float
    exact_only: bool
    cache_tool_calls: bool
    cache_sampled: bool
    embeddings: EmbeddingSource
    embedding_model: str
    def __init__(self, tenant_id: _Optional[str] = ..., route_id: _Optional[str] = ..., enabled: _Optional[bool] = ..., ttl_s: _Optional[int] = ..., similarity_threshold: _Optional[float] = ..., exact_only: _Optional[bool] = ..., cache_tool_calls: _Optional[bool] = ..., cache_sampled: _Optional[bool] = ..., embeddings: _Optional[_Union[EmbeddingSource, str]] = ..., embedding_model: _Optional[str] = ...) -> None: ...
