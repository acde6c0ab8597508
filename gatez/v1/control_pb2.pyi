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
PRICE_SOURCE_UNSPECIFIED: PriceSource
PRICE_SOURCE_DEFAULT: PriceSource
PRICE_SOURCE_OVERRIDE: PriceSource

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
    __slots__ = ("request_logs", "ai_logs")
    REQUEST_LOGS_FIELD_NUMBER: _ClassVar[int]
    AI_LOGS_FIELD_NUMBER: _ClassVar[int]
    request_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.RequestLog]
    ai_logs: _containers.RepeatedCompositeFieldContainer[_logs_pb2.AiLog]
    def __init__(self, request_logs: _Optional[_Iterable[_Union[_logs_pb2.RequestLog, _Mapping]]] = ..., ai_logs: _Optional[_Iterable[_Union[_logs_pb2.AiLog, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("day", "provider", "upstream_model", "model_alias", "requests", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "estimated_requests", "unpriced_requests")
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
    def __init__(self, day: _Optional[str] = ..., provider: _Optional[str] = ..., upstream_model: _Optional[str] = ..., model_alias: _Optional[str] = ..., requests: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., estimated_requests: _Optional[int] = ..., unpriced_requests: _Optional[int] = ...) -> None: ...

class UsageTotals(_message.Message):
    __slots__ = ("requests", "input_tokens", "output_tokens", "cached_input_tokens", "cost_usd", "estimated_requests", "unpriced_requests")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNPRICED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: int
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int
    cost_usd: float
    estimated_requests: int
    unpriced_requests: int
    def __init__(self, requests: _Optional[int] = ..., input_tokens: _Optional[int] = ..., output_tokens: _Optional[int] = ..., cached_input_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., estimated_requests: _Optional[int] = ..., unpriced_requests: _Optional[int] = ...) -> None: ...

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
