import datetime

from gatez.v1 import logs_pb2 as _logs_pb2
from gatez.v1 import policy_pb2 as _policy_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PriceSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRICE_SOURCE_UNSPECIFIED: _ClassVar[PriceSource]
    PRICE_SOURCE_DEFAULT: _ClassVar[PriceSource]
    PRICE_SOURCE_OVERRIDE: _ClassVar[PriceSource]

class ApprovalState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    APPROVAL_STATE_UNSPECIFIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_PENDING: _ClassVar[ApprovalState]
    APPROVAL_STATE_APPROVED: _ClassVar[ApprovalState]
    APPROVAL_STATE_DENIED: _ClassVar[ApprovalState]
    APPROVAL_STATE_TIMED_OUT: _ClassVar[ApprovalState]
    APPROVAL_STATE_ABANDONED: _ClassVar[ApprovalState]

class ToolPinState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_PIN_STATE_UNSPECIFIED: _ClassVar[ToolPinState]
    TOOL_PIN_STATE_PINNED: _ClassVar[ToolPinState]
    TOOL_PIN_STATE_CHANGED: _ClassVar[ToolPinState]
    TOOL_PIN_STATE_POISONED: _ClassVar[ToolPinState]
    TOOL_PIN_STATE_COLLISION: _ClassVar[ToolPinState]
PRICE_SOURCE_UNSPECIFIED: PriceSource
PRICE_SOURCE_DEFAULT: PriceSource
PRICE_SOURCE_OVERRIDE: PriceSource
APPROVAL_STATE_UNSPECIFIED: ApprovalState
APPROVAL_STATE_PENDING: ApprovalState
APPROVAL_STATE_APPROVED: ApprovalState
APPROVAL_STATE_DENIED: ApprovalState
APPROVAL_STATE_TIMED_OUT: ApprovalState
APPROVAL_STATE_ABANDONED: ApprovalState
TOOL_PIN_STATE_UNSPECIFIED: ToolPinState
TOOL_PIN_STATE_PINNED: ToolPinState
TOOL_PIN_STATE_CHANGED: ToolPinState
TOOL_PIN_STATE_POISONED: ToolPinState
TOOL_PIN_STATE_COLLISION: ToolPinState

class CreateTenantRequest(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: _policy_pb2.Tenant
    def __init__(self, tenant: _Optional[_Union[_policy_pb2.Tenant, _Mapping]] = ...) -> None: ...

class CreateTenantResponse(_message.Message):
    __slots__ = ("tenant", "policy_version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: _policy_pb2.Tenant
    policy_version: int
    def __init__(self, tenant: _Optional[_Union[_policy_pb2.Tenant, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class GetTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetTenantResponse(_message.Message):
    __slots__ = ("tenant",)
    TENANT_FIELD_NUMBER: _ClassVar[int]
    tenant: _policy_pb2.Tenant
    def __init__(self, tenant: _Optional[_Union[_policy_pb2.Tenant, _Mapping]] = ...) -> None: ...

class ListTenantsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTenantsResponse(_message.Message):
    __slots__ = ("tenants",)
    TENANTS_FIELD_NUMBER: _ClassVar[int]
    tenants: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Tenant]
    def __init__(self, tenants: _Optional[_Iterable[_Union[_policy_pb2.Tenant, _Mapping]]] = ...) -> None: ...

class DeleteTenantRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class DeleteTenantResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class SetRateLimitRequest(_message.Message):
    __slots__ = ("tenant_id", "rate_limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    rate_limit: _policy_pb2.RateLimit
    def __init__(self, tenant_id: _Optional[str] = ..., rate_limit: _Optional[_Union[_policy_pb2.RateLimit, _Mapping]] = ...) -> None: ...

class SetRateLimitResponse(_message.Message):
    __slots__ = ("tenant", "policy_version")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    tenant: _policy_pb2.Tenant
    policy_version: int
    def __init__(self, tenant: _Optional[_Union[_policy_pb2.Tenant, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class CreateApiKeyRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "secret")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    secret: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., secret: _Optional[str] = ...) -> None: ...

class CreateApiKeyResponse(_message.Message):
    __slots__ = ("api_key", "secret", "policy_version")
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    api_key: _policy_pb2.ApiKey
    secret: str
    policy_version: int
    def __init__(self, api_key: _Optional[_Union[_policy_pb2.ApiKey, _Mapping]] = ..., secret: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListApiKeysRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListApiKeysResponse(_message.Message):
    __slots__ = ("api_keys",)
    API_KEYS_FIELD_NUMBER: _ClassVar[int]
    api_keys: _containers.RepeatedCompositeFieldContainer[_policy_pb2.ApiKey]
    def __init__(self, api_keys: _Optional[_Iterable[_Union[_policy_pb2.ApiKey, _Mapping]]] = ...) -> None: ...

class RevokeApiKeyRequest(_message.Message):
    __slots__ = ("api_key_id",)
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    api_key_id: str
    def __init__(self, api_key_id: _Optional[str] = ...) -> None: ...

class RevokeApiKeyResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class CreateIdentityProviderRequest(_message.Message):
    __slots__ = ("identity_provider",)
    IDENTITY_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    identity_provider: _policy_pb2.IdentityProvider
    def __init__(self, identity_provider: _Optional[_Union[_policy_pb2.IdentityProvider, _Mapping]] = ...) -> None: ...

class CreateIdentityProviderResponse(_message.Message):
    __slots__ = ("identity_provider", "policy_version")
    IDENTITY_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    identity_provider: _policy_pb2.IdentityProvider
    policy_version: int
    def __init__(self, identity_provider: _Optional[_Union[_policy_pb2.IdentityProvider, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListIdentityProvidersRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListIdentityProvidersResponse(_message.Message):
    __slots__ = ("identity_providers",)
    IDENTITY_PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    identity_providers: _containers.RepeatedCompositeFieldContainer[_policy_pb2.IdentityProvider]
    def __init__(self, identity_providers: _Optional[_Iterable[_Union[_policy_pb2.IdentityProvider, _Mapping]]] = ...) -> None: ...

class DeleteIdentityProviderRequest(_message.Message):
    __slots__ = ("identity_provider_id",)
    IDENTITY_PROVIDER_ID_FIELD_NUMBER: _ClassVar[int]
    identity_provider_id: str
    def __init__(self, identity_provider_id: _Optional[str] = ...) -> None: ...

class DeleteIdentityProviderResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class CreateProviderRequest(_message.Message):
    __slots__ = ("provider", "api_key")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    provider: _policy_pb2.Provider
    api_key: str
    def __init__(self, provider: _Optional[_Union[_policy_pb2.Provider, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class CreateProviderResponse(_message.Message):
    __slots__ = ("provider", "policy_version")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    provider: _policy_pb2.Provider
    policy_version: int
    def __init__(self, provider: _Optional[_Union[_policy_pb2.Provider, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListProvidersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListProvidersResponse(_message.Message):
    __slots__ = ("providers",)
    PROVIDERS_FIELD_NUMBER: _ClassVar[int]
    providers: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Provider]
    def __init__(self, providers: _Optional[_Iterable[_Union[_policy_pb2.Provider, _Mapping]]] = ...) -> None: ...

class DeleteProviderRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteProviderResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class UpdateProviderRequest(_message.Message):
    __slots__ = ("provider", "api_key")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    provider: _policy_pb2.Provider
    api_key: str
    def __init__(self, provider: _Optional[_Union[_policy_pb2.Provider, _Mapping]] = ..., api_key: _Optional[str] = ...) -> None: ...

class UpdateProviderResponse(_message.Message):
    __slots__ = ("provider", "policy_version")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    provider: _policy_pb2.Provider
    policy_version: int
    def __init__(self, provider: _Optional[_Union[_policy_pb2.Provider, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class SetProviderCredentialRequest(_message.Message):
    __slots__ = ("provider", "api_key")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    provider: str
    api_key: str
    def __init__(self, provider: _Optional[str] = ..., api_key: _Optional[str] = ...) -> None: ...

class SetProviderCredentialResponse(_message.Message):
    __slots__ = ("provider", "policy_version")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    provider: _policy_pb2.Provider
    policy_version: int
    def __init__(self, provider: _Optional[_Union[_policy_pb2.Provider, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class RotateSecretKeyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RotateSecretKeyResponse(_message.Message):
    __slots__ = ("key_id", "resealed", "policy_version")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    RESEALED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    resealed: int
    policy_version: int
    def __init__(self, key_id: _Optional[str] = ..., resealed: _Optional[int] = ..., policy_version: _Optional[int] = ...) -> None: ...

class CreateModelRouteRequest(_message.Message):
    __slots__ = ("model_route",)
    MODEL_ROUTE_FIELD_NUMBER: _ClassVar[int]
    model_route: _policy_pb2.ModelRoute
    def __init__(self, model_route: _Optional[_Union[_policy_pb2.ModelRoute, _Mapping]] = ...) -> None: ...

class CreateModelRouteResponse(_message.Message):
    __slots__ = ("model_route", "policy_version")
    MODEL_ROUTE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_route: _policy_pb2.ModelRoute
    policy_version: int
    def __init__(self, model_route: _Optional[_Union[_policy_pb2.ModelRoute, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListModelRoutesRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListModelRoutesResponse(_message.Message):
    __slots__ = ("model_routes",)
    MODEL_ROUTES_FIELD_NUMBER: _ClassVar[int]
    model_routes: _containers.RepeatedCompositeFieldContainer[_policy_pb2.ModelRoute]
    def __init__(self, model_routes: _Optional[_Iterable[_Union[_policy_pb2.ModelRoute, _Mapping]]] = ...) -> None: ...

class DeleteModelRouteRequest(_message.Message):
    __slots__ = ("model_route_id",)
    MODEL_ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    model_route_id: str
    def __init__(self, model_route_id: _Optional[str] = ...) -> None: ...

class DeleteModelRouteResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class GetPolicyStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPolicyStatusResponse(_message.Message):
    __slots__ = ("version", "update_time", "data_planes", "lineage")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    DATA_PLANES_FIELD_NUMBER: _ClassVar[int]
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    version: int
    update_time: _timestamp_pb2.Timestamp
    data_planes: _containers.RepeatedCompositeFieldContainer[DataPlaneStatus]
    lineage: str
    def __init__(self, version: _Optional[int] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., data_planes: _Optional[_Iterable[_Union[DataPlaneStatus, _Mapping]]] = ..., lineage: _Optional[str] = ...) -> None: ...

class DataPlaneStatus(_message.Message):
    __slots__ = ("node_id", "connected", "applied_version", "rejected_version", "error", "update_time", "applied_lineage", "conflict")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    CONFLICT_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    connected: bool
    applied_version: int
    rejected_version: int
    error: str
    update_time: _timestamp_pb2.Timestamp
    applied_lineage: str
    conflict: str
    def __init__(self, node_id: _Optional[str] = ..., connected: _Optional[bool] = ..., applied_version: _Optional[int] = ..., rejected_version: _Optional[int] = ..., error: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_lineage: _Optional[str] = ..., conflict: _Optional[str] = ...) -> None: ...

class AdoptLineageRequest(_message.Message):
    __slots__ = ("lineage", "version")
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    lineage: str
    version: int
    def __init__(self, lineage: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class AdoptLineageResponse(_message.Message):
    __slots__ = ("lineage", "policy_version")
    LINEAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    lineage: str
    policy_version: int
    def __init__(self, lineage: _Optional[str] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListRequestLogsRequest(_message.Message):
    __slots__ = ("tenant_id", "limit", "unauthenticated")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    UNAUTHENTICATED_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    limit: int
    unauthenticated: bool
    def __init__(self, tenant_id: _Optional[str] = ..., limit: _Optional[int] = ..., unauthenticated: _Optional[bool] = ...) -> None: ...

class ListRequestLogsResponse(_message.Message):
    __slots__ = ("request_logs",)
    REQUEST_LOGS_FIELD_NUMBER: _ClassVar[int]
    request_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.RequestLog]
    def __init__(self, request_logs: _Optional[_Iterable[_Union[_logs_pb2.RequestLog, _Mapping]]] = ...) -> None: ...

class ListAiLogsRequest(_message.Message):
    __slots__ = ("tenant_id", "limit")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    limit: int
    def __init__(self, tenant_id: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAiLogsResponse(_message.Message):
    __slots__ = ("ai_logs",)
    AI_LOGS_FIELD_NUMBER: _ClassVar[int]
    ai_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.AiLog]
    def __init__(self, ai_logs: _Optional[_Iterable[_Union[_logs_pb2.AiLog, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("node_id", "applied_version", "rejected_version", "error", "applied_lineage")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    REJECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    APPLIED_LINEAGE_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    applied_version: int
    rejected_version: int
    error: str
    applied_lineage: str
    def __init__(self, node_id: _Optional[str] = ..., applied_version: _Optional[int] = ..., rejected_version: _Optional[int] = ..., error: _Optional[str] = ..., applied_lineage: _Optional[str] = ...) -> None: ...

class WatchResponse(_message.Message):
    __slots__ = ("snapshot",)
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    snapshot: _policy_pb2.PolicySnapshot
    def __init__(self, snapshot: _Optional[_Union[_policy_pb2.PolicySnapshot, _Mapping]] = ...) -> None: ...

class IngestLogsRequest(_message.Message):
    __slots__ = ("request_logs", "ai_logs", "agent_logs")
    REQUEST_LOGS_FIELD_NUMBER: _ClassVar[int]
    AI_LOGS_FIELD_NUMBER: _ClassVar[int]
    AGENT_LOGS_FIELD_NUMBER: _ClassVar[int]
    request_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.RequestLog]
    ai_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.AiLog]
    agent_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.AgentLog]
    def __init__(self, request_logs: _Optional[_Iterable[_Union[_logs_pb2.RequestLog, _Mapping]]] = ..., ai_logs: _Optional[_Iterable[_Union[_logs_pb2.AiLog, _Mapping]]] = ..., agent_logs: _Optional[_Iterable[_Union[_logs_pb2.AgentLog, _Mapping]]] = ...) -> None: ...

class IngestLogsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateRouteRequest(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: _policy_pb2.Route
    def __init__(self, route: _Optional[_Union[_policy_pb2.Route, _Mapping]] = ...) -> None: ...

class CreateRouteResponse(_message.Message):
    __slots__ = ("route", "policy_version")
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    route: _policy_pb2.Route
    policy_version: int
    def __init__(self, route: _Optional[_Union[_policy_pb2.Route, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListRoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRoutesResponse(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[_policy_pb2.Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[_policy_pb2.Route, _Mapping]]] = ...) -> None: ...

class DeleteRouteRequest(_message.Message):
    __slots__ = ("route_id",)
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    def __init__(self, route_id: _Optional[str] = ...) -> None: ...

class DeleteRouteResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class SetModelPriceRequest(_message.Message):
    __slots__ = ("model_price",)
    MODEL_PRICE_FIELD_NUMBER: _ClassVar[int]
    model_price: _policy_pb2.ModelPrice
    def __init__(self, model_price: _Optional[_Union[_policy_pb2.ModelPrice, _Mapping]] = ...) -> None: ...

class SetModelPriceResponse(_message.Message):
    __slots__ = ("model_price", "policy_version")
    MODEL_PRICE_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_price: _policy_pb2.ModelPrice
    policy_version: int
    def __init__(self, model_price: _Optional[_Union[_policy_pb2.ModelPrice, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListModelPricesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListedModelPrice(_message.Message):
    __slots__ = ("model_price", "source", "default_price")
    MODEL_PRICE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_PRICE_FIELD_NUMBER: _ClassVar[int]
    model_price: _policy_pb2.ModelPrice
    source: PriceSource
    default_price: _policy_pb2.ModelPrice
    def __init__(self, model_price: _Optional[_Union[_policy_pb2.ModelPrice, _Mapping]] = ..., source: _Optional[_Union[PriceSource, str]] = ..., default_price: _Optional[_Union[_policy_pb2.ModelPrice, _Mapping]] = ...) -> None: ...

class ListModelPricesResponse(_message.Message):
    __slots__ = ("model_prices",)
    MODEL_PRICES_FIELD_NUMBER: _ClassVar[int]
    model_prices: _containers.RepeatedCompositeFieldContainer[ListedModelPrice]
    def __init__(self, model_prices: _Optional[_Iterable[_Union[ListedModelPrice, _Mapping]]] = ...) -> None: ...

class DeleteModelPriceRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: str
    def __init__(self, model: _Optional[str] = ...) -> None: ...

class DeleteModelPriceResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("tenant_id", "start_date", "end_date")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    start_date: str
    end_date: str
    def __init__(self, tenant_id: _Optional[str] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ("day", "provider", "upstream_model", "model_alias", "requests", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "estimated_requests", "unpriced_requests", "cache_hits")
    DAY_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_ALIAS_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    day: str
    provider: str
    upstream_model: str
    model_alias: str
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float
    estimated_requests: int
    unpriced_requests: int
    cache_hits: int
    def __init__(self, day: _Optional[str] = ..., provider: _Optional[str] = ..., upstream_model: _Optional[str] = ..., model_alias: _Optional[str] = ..., requests: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., estimated_requests: _Optional[int] = ..., unpriced_requests: _Optional[int] = ..., cache_hits: _Optional[int] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("requests", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "estimated_requests", "unpriced_requests", "cache_hits")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float
    estimated_requests: int
    unpriced_requests: int
    cache_hits: int
    def __init__(self, requests: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., estimated_requests: _Optional[int] = ..., unpriced_requests: _Optional[int] = ..., cache_hits: _Optional[int] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("rows", "totals", "start_date", "end_date", "truncated")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TOTALS_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    totals: UsageTotals
    start_date: str
    end_date: str
    truncated: bool
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., totals: _Optional[_Union[UsageTotals, _Mapping]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., truncated: _Optional[bool] = ...) -> None: ...

class CreateMcpServerRequest(_message.Message):
    __slots__ = ("mcp_server", "credential")
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    mcp_server: _policy_pb2.McpServer
    credential: str
    def __init__(self, mcp_server: _Optional[_Union[_policy_pb2.McpServer, _Mapping]] = ..., credential: _Optional[str] = ...) -> None: ...

class CreateMcpServerResponse(_message.Message):
    __slots__ = ("mcp_server", "policy_version")
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    mcp_server: _policy_pb2.McpServer
    policy_version: int
    def __init__(self, mcp_server: _Optional[_Union[_policy_pb2.McpServer, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListMcpServersRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListMcpServersResponse(_message.Message):
    __slots__ = ("mcp_servers",)
    MCP_SERVERS_FIELD_NUMBER: _ClassVar[int]
    mcp_servers: _containers.RepeatedCompositeFieldContainer[_policy_pb2.McpServer]
    def __init__(self, mcp_servers: _Optional[_Iterable[_Union[_policy_pb2.McpServer, _Mapping]]] = ...) -> None: ...

class DeleteMcpServerRequest(_message.Message):
    __slots__ = ("tenant_id", "name")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DeleteMcpServerResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class SetMcpServerCredentialRequest(_message.Message):
    __slots__ = ("tenant_id", "name", "credential")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    name: str
    credential: str
    def __init__(self, tenant_id: _Optional[str] = ..., name: _Optional[str] = ..., credential: _Optional[str] = ...) -> None: ...

class SetMcpServerCredentialResponse(_message.Message):
    __slots__ = ("mcp_server", "policy_version")
    MCP_SERVER_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    mcp_server: _policy_pb2.McpServer
    policy_version: int
    def __init__(self, mcp_server: _Optional[_Union[_policy_pb2.McpServer, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class SetAgentPolicyRequest(_message.Message):
    __slots__ = ("agent_policy",)
    AGENT_POLICY_FIELD_NUMBER: _ClassVar[int]
    agent_policy: _policy_pb2.AgentPolicy
    def __init__(self, agent_policy: _Optional[_Union[_policy_pb2.AgentPolicy, _Mapping]] = ...) -> None: ...

class SetAgentPolicyResponse(_message.Message):
    __slots__ = ("agent_policy", "policy_version")
    AGENT_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    agent_policy: _policy_pb2.AgentPolicy
    policy_version: int
    def __init__(self, agent_policy: _Optional[_Union[_policy_pb2.AgentPolicy, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListAgentPoliciesRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListAgentPoliciesResponse(_message.Message):
    __slots__ = ("agent_policies",)
    AGENT_POLICIES_FIELD_NUMBER: _ClassVar[int]
    agent_policies: _containers.RepeatedCompositeFieldContainer[_policy_pb2.AgentPolicy]
    def __init__(self, agent_policies: _Optional[_Iterable[_Union[_policy_pb2.AgentPolicy, _Mapping]]] = ...) -> None: ...

class DeleteAgentPolicyRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteAgentPolicyResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "tenant_id", "caller", "server", "tool", "arguments_json", "session_id_digest", "state", "create_time", "expire_time", "decide_time", "approver", "reason", "held_because")
    ID_FIELD_NUMBER: _ClassVar[int]
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    DECIDE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HELD_BECAUSE_FIELD_NUMBER: _ClassVar[int]
    id: str
    tenant_id: str
    caller: str
    server: str
    tool: str
    arguments_json: str
    session_id_digest: str
    state: ApprovalState
    create_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    decide_time: _timestamp_pb2.Timestamp
    approver: str
    reason: str
    held_because: str
    def __init__(self, id: _Optional[str] = ..., tenant_id: _Optional[str] = ..., caller: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., arguments_json: _Optional[str] = ..., session_id_digest: _Optional[str] = ..., state: _Optional[_Union[ApprovalState, str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decide_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approver: _Optional[str] = ..., reason: _Optional[str] = ..., held_because: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("tenant_id", "state")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    state: ApprovalState
    def __init__(self, tenant_id: _Optional[str] = ..., state: _Optional[_Union[ApprovalState, str]] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("tenant_id", "approval_id", "approve", "approver", "reason")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVE_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    approval_id: str
    approve: bool
    approver: str
    reason: str
    def __init__(self, tenant_id: _Optional[str] = ..., approval_id: _Optional[str] = ..., approve: _Optional[bool] = ..., approver: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class DecideApprovalResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class WatchApprovalsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class WatchApprovalsResponse(_message.Message):
    __slots__ = ("approval",)
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ...) -> None: ...

class ToolPin(_message.Message):
    __slots__ = ("tenant_id", "server", "tool", "state", "pinned_digest", "observed_digest", "pinned_definition_json", "observed_definition_json", "changes", "findings", "pin_time", "observe_time", "approver", "owner")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PINNED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PINNED_DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_DEFINITION_JSON_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    FINDINGS_FIELD_NUMBER: _ClassVar[int]
    PIN_TIME_FIELD_NUMBER: _ClassVar[int]
    OBSERVE_TIME_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    server: str
    tool: str
    state: ToolPinState
    pinned_digest: str
    observed_digest: str
    pinned_definition_json: str
    observed_definition_json: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    findings: _containers.RepeatedScalarFieldContainer[str]
    pin_time: _timestamp_pb2.Timestamp
    observe_time: _timestamp_pb2.Timestamp
    approver: str
    owner: str
    def __init__(self, tenant_id: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., state: _Optional[_Union[ToolPinState, str]] = ..., pinned_digest: _Optional[str] = ..., observed_digest: _Optional[str] = ..., pinned_definition_json: _Optional[str] = ..., observed_definition_json: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ..., findings: _Optional[_Iterable[str]] = ..., pin_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., observe_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., approver: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListToolPinsRequest(_message.Message):
    __slots__ = ("tenant_id", "server")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    server: str
    def __init__(self, tenant_id: _Optional[str] = ..., server: _Optional[str] = ...) -> None: ...

class ListToolPinsResponse(_message.Message):
    __slots__ = ("tool_pins",)
    TOOL_PINS_FIELD_NUMBER: _ClassVar[int]
    tool_pins: _containers.RepeatedCompositeFieldContainer[ToolPin]
    def __init__(self, tool_pins: _Optional[_Iterable[_Union[ToolPin, _Mapping]]] = ...) -> None: ...

class ApproveToolDefinitionRequest(_message.Message):
    __slots__ = ("tenant_id", "server", "tool", "digest", "approver")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVER_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    server: str
    tool: str
    digest: str
    approver: str
    def __init__(self, tenant_id: _Optional[str] = ..., server: _Optional[str] = ..., tool: _Optional[str] = ..., digest: _Optional[str] = ..., approver: _Optional[str] = ...) -> None: ...

class ApproveToolDefinitionResponse(_message.Message):
    __slots__ = ("tool_pin",)
    TOOL_PIN_FIELD_NUMBER: _ClassVar[int]
    tool_pin: ToolPin
    def __init__(self, tool_pin: _Optional[_Union[ToolPin, _Mapping]] = ...) -> None: ...

class ListAgentAuditRequest(_message.Message):
    __slots__ = ("tenant_id", "limit", "server", "session_id_digest", "decision")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_DIGEST_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    limit: int
    server: str
    session_id_digest: str
    decision: str
    def __init__(self, tenant_id: _Optional[str] = ..., limit: _Optional[int] = ..., server: _Optional[str] = ..., session_id_digest: _Optional[str] = ..., decision: _Optional[str] = ...) -> None: ...

class ListAgentAuditResponse(_message.Message):
    __slots__ = ("agent_logs",)
    AGENT_LOGS_FIELD_NUMBER: _ClassVar[int]
    agent_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.AgentLog]
    def __init__(self, agent_logs: _Optional[_Iterable[_Union[_logs_pb2.AgentLog, _Mapping]]] = ...) -> None: ...

class SetPiiPolicyRequest(_message.Message):
    __slots__ = ("pii_policy",)
    PII_POLICY_FIELD_NUMBER: _ClassVar[int]
    pii_policy: _policy_pb2.PiiPolicy
    def __init__(self, pii_policy: _Optional[_Union[_policy_pb2.PiiPolicy, _Mapping]] = ...) -> None: ...

class SetPiiPolicyResponse(_message.Message):
    __slots__ = ("pii_policy", "policy_version")
    PII_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    pii_policy: _policy_pb2.PiiPolicy
    policy_version: int
    def __init__(self, pii_policy: _Optional[_Union[_policy_pb2.PiiPolicy, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class GetPiiPolicyRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class GetPiiPolicyResponse(_message.Message):
    __slots__ = ("pii_policy",)
    PII_POLICY_FIELD_NUMBER: _ClassVar[int]
    pii_policy: _policy_pb2.PiiPolicy
    def __init__(self, pii_policy: _Optional[_Union[_policy_pb2.PiiPolicy, _Mapping]] = ...) -> None: ...

class DeletePiiPolicyRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class DeletePiiPolicyResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class SetBudgetRequest(_message.Message):
    __slots__ = ("budget",)
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    budget: _policy_pb2.Budget
    def __init__(self, budget: _Optional[_Union[_policy_pb2.Budget, _Mapping]] = ...) -> None: ...

class SetBudgetResponse(_message.Message):
    __slots__ = ("budget", "policy_version")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    budget: _policy_pb2.Budget
    policy_version: int
    def __init__(self, budget: _Optional[_Union[_policy_pb2.Budget, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListBudgetsRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class BudgetSpend(_message.Message):
    __slots__ = ("period", "period_label", "tokens_spent", "tokens_held", "usd_spent", "usd_held", "tokens_limit", "usd_limit", "reset_time")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_LABEL_FIELD_NUMBER: _ClassVar[int]
    TOKENS_SPENT_FIELD_NUMBER: _ClassVar[int]
    TOKENS_HELD_FIELD_NUMBER: _ClassVar[int]
    USD_SPENT_FIELD_NUMBER: _ClassVar[int]
    USD_HELD_FIELD_NUMBER: _ClassVar[int]
    TOKENS_LIMIT_FIELD_NUMBER: _ClassVar[int]
    USD_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RESET_TIME_FIELD_NUMBER: _ClassVar[int]
    period: str
    period_label: str
    tokens_spent: int
    tokens_held: int
    usd_spent: float
    usd_held: float
    tokens_limit: int
    usd_limit: float
    reset_time: _timestamp_pb2.Timestamp
    def __init__(self, period: _Optional[str] = ..., period_label: _Optional[str] = ..., tokens_spent: _Optional[int] = ..., tokens_held: _Optional[int] = ..., usd_spent: _Optional[float] = ..., usd_held: _Optional[float] = ..., tokens_limit: _Optional[int] = ..., usd_limit: _Optional[float] = ..., reset_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("budget", "spend")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPEND_FIELD_NUMBER: _ClassVar[int]
    budget: _policy_pb2.Budget
    spend: _containers.RepeatedCompositeFieldContainer[BudgetSpend]
    def __init__(self, budget: _Optional[_Union[_policy_pb2.Budget, _Mapping]] = ..., spend: _Optional[_Iterable[_Union[BudgetSpend, _Mapping]]] = ...) -> None: ...

class ListBudgetsResponse(_message.Message):
    __slots__ = ("budgets",)
    BUDGETS_FIELD_NUMBER: _ClassVar[int]
    budgets: _containers.RepeatedCompositeFieldContainer[BudgetStatus]
    def __init__(self, budgets: _Optional[_Iterable[_Union[BudgetStatus, _Mapping]]] = ...) -> None: ...

class DeleteBudgetRequest(_message.Message):
    __slots__ = ("tenant_id", "api_key_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    api_key_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., api_key_id: _Optional[str] = ...) -> None: ...

class DeleteBudgetResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class ResetBudgetSpendRequest(_message.Message):
    __slots__ = ("tenant_id", "api_key_id", "period")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    API_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    api_key_id: str
    period: str
    def __init__(self, tenant_id: _Optional[str] = ..., api_key_id: _Optional[str] = ..., period: _Optional[str] = ...) -> None: ...

class ResetBudgetSpendResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetCachePolicyRequest(_message.Message):
    __slots__ = ("cache_policy",)
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    cache_policy: _policy_pb2.CachePolicy
    def __init__(self, cache_policy: _Optional[_Union[_policy_pb2.CachePolicy, _Mapping]] = ...) -> None: ...

class SetCachePolicyResponse(_message.Message):
    __slots__ = ("cache_policy", "policy_version")
    CACHE_POLICY_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    cache_policy: _policy_pb2.CachePolicy
    policy_version: int
    def __init__(self, cache_policy: _Optional[_Union[_policy_pb2.CachePolicy, _Mapping]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class ListCachePoliciesRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class ListCachePoliciesResponse(_message.Message):
    __slots__ = ("cache_policies",)
    CACHE_POLICIES_FIELD_NUMBER: _ClassVar[int]
    cache_policies: _containers.RepeatedCompositeFieldContainer[_policy_pb2.CachePolicy]
    def __init__(self, cache_policies: _Optional[_Iterable[_Union[_policy_pb2.CachePolicy, _Mapping]]] = ...) -> None: ...

class DeleteCachePolicyRequest(_message.Message):
    __slots__ = ("tenant_id", "route_id")
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    route_id: str
    def __init__(self, tenant_id: _Optional[str] = ..., route_id: _Optional[str] = ...) -> None: ...

class DeleteCachePolicyResponse(_message.Message):
    __slots__ = ("policy_version",)
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    def __init__(self, policy_version: _Optional[int] = ...) -> None: ...

class PurgeCacheRequest(_message.Message):
    __slots__ = ("tenant_id",)
    TENANT_ID_FIELD_NUMBER: _ClassVar[int]
    tenant_id: str
    def __init__(self, tenant_id: _Optional[str] = ...) -> None: ...

class PurgeCacheResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    def __init__(self, entries: _Optional[int] = ...) -> None: ...
