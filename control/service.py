"""The gRPC services: `ControlService` for administrators, `DataPlaneService` for data planes.

Every change goes through `PolicyStore.update`, which validates the whole resulting policy, so the
checks here are only those that give a clearer message or a more precise status code (a missing
field, an unknown or repeated id). Secrets leave this module only inside snapshots sent to data
planes: admin reads drop key digests and PII hash salts, and provider and MCP server credentials
are write-only and sealed before they are saved. A message that quotes what a client sent quotes
it with `quoted()`, bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import functools
import itertools
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

import grpc
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from google.protobuf.message import Message
from redis.exceptions import RedisError

from control.guardrail_state import GuardrailState, Owner
from control.store import Change, Clock, PolicyStore, utc_now
from gatez import keys
from gatez.agent_policy import MCP_SERVER_NAME, mcp_credential_name
from gatez.approvals import Approval, ApprovalState, ApprovalStore, parse_event
from gatez.approvals import channel as approvals_channel
from gatez.budgets import Period, Spend, period_end
from gatez.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidPolicy,
    InvalidRequest,
    NotFound,
    quoted,
)
from gatez.guardrails import USD_MICROS
from gatez.logrows import (
    AgentLogRow,
    AiLogRow,
    RequestLogRow,
    agent_log_from_proto,
    agent_log_to_proto,
    ai_log_from_proto,
    ai_log_to_proto,
    request_log_from_proto,
    request_log_to_proto,
)
from gatez.logstore import LogStore, UsageCounts
from gatez.policy import DEFAULT_LLM_PREFIXES, NAME_PATTERN, PROVIDER_KINDS, TENANT_ID_PATTERN
from gatez.prices import DEFAULT_PRICES, model_name, parse_price, price_to_proto
from gatez.secrets import SecretBox, all_credentials, seal_clear_credentials
from gatez.tool_pins import MAX_TOOL_NAME, PinState, ToolPin, ToolPinStore
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

DEFAULT_LOG_LIMIT: Final = 100
MAX_LOG_LIMIT: Final = 1000
# The longest public error message: a backstop behind `quoted()`, so no message can carry
# unbounded input, whatever a future one forgets.
MAX_PUBLIC_MESSAGE: Final = 1000
# What a data plane may report about itself.
NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
MAX_REPORTED_ERROR: Final = 2000
LINEAGE_PATTERN: Final = re.compile(r"[0-9a-f]{32}")
# GetUsage: the range when none is given, and the longest one asked for.
DEFAULT_USAGE_DAYS: Final = 30
MAX_USAGE_DAYS: Final = 366
_DATE: Final = re.compile(r"\d{4}-\d{2}-\d{2}")
# The salt of a PII policy's HASH action (gatez.guardrails asks for at least 16 bytes).
PII_SALT_BYTES: Final = 32
# ResetBudgetSpend's `period`: which of the owner's periods it resets.
RESET_PERIODS: Final = {
    "": (Period.DAY, Period.MONTH),
    "day": (Period.DAY,),
    "month": (Period.MONTH,),
}

log = logging.getLogger("gatez.control")

# grpc's classes are generic only in their stubs, not at run time.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
T = TypeVar("T")
ServicerT = TypeVar("ServicerT")
RequestT = TypeVar("RequestT")
ResponseT = TypeVar("ResponseT")
MessageT = TypeVar("MessageT", bound=Message)
OwnedT = TypeVar(
    "OwnedT", policy_pb2.IdentityProvider, policy_pb2.ModelRoute, policy_pb2.CachePolicy
)
Handler = Callable[[ServicerT, RequestT, Context], Awaitable[ResponseT]]
IdGenerator = Callable[[str], str]


def random_id(prefix: str) -> str:
    """`<prefix>-<12 hex digits>`: 48 random bits, unique enough for a policy's objects."""
    return f"{prefix}-{secrets.token_hex(6)}"


def public_errors(
    handler: Handler[ServicerT, RequestT, ResponseT],
) -> Handler[ServicerT, RequestT, ResponseT]:
    """Ends an RPC with the status and public message of a `GatewayError`; anything else is
    logged here and reaches the caller as a bare INTERNAL (or UNAVAILABLE for Redis)."""

    @functools.wraps(handler)
    async def guarded(servicer: ServicerT, request: RequestT, context: Context) -> ResponseT:
        try:
            return await handler(servicer, request, context)
        except GatewayError as error:
            await context.abort(error.grpc_code, _bounded(error.public_message))
        except grpc.aio.AbortError:
            raise
        except RedisError:
            log.exception("%s: the policy store failed", handler.__name__)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the policy store is unavailable")
        except Exception:
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")

    return guarded


def _bounded(message: str) -> str:
    if len(message) <= MAX_PUBLIC_MESSAGE:
        return message
    return message[: MAX_PUBLIC_MESSAGE - 1] + "…"


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    """The admin API over the policy store and the log store."""

    def __init__(
        self,
        store: PolicyStore,
        logs: LogStore,
        data_planes: DataPlaneRegistry,
        secret_box: SecretBox,
        *,
        tool_pins: ToolPinStore,
        guardrail_state: GuardrailState,
        clock: Clock = utc_now,
        new_id: IdGenerator = random_id,
        approvals: ApprovalStore | None = None,
    ) -> None:
        self._store = store
        self._tool_pins = tool_pins
        self._guardrail_state = guardrail_state
        self._logs = logs
        self._data_planes = data_planes
        self._box = secret_box
        self._approvals = approvals
        self._clock = clock
        self._new_id = new_id

    async def _update(self, change: Change[T]) -> tuple[T, int]:
        """`PolicyStore.update`, refused while a data plane holds a newer version of the policy's
        lineage than Redis does (Redis went back to an older copy: counting on from there would
        hand data planes a different policy under version numbers they already applied), and
        with every credential sealed before it is saved."""

        def guarded(draft: policy_pb2.PolicySnapshot) -> T:
            ahead = self._data_planes.ahead_of(draft.lineage, draft.version)
            if ahead:
                raise FailedPrecondition(
                    f"data plane {quoted(ahead[0].node_id)} holds version "
                    f"{ahead[0].applied_version} of this policy's lineage, newer than the saved "
                    f"version {draft.version}: Redis went back to an older copy. Restore the "
                    "newest copy, or call AdoptLineage to continue past the data planes' version"
                )
            result = change(draft)
            seal_clear_credentials(draft, self._box)
            return result

        return await self._store.update(guarded)

    # Tenants

    @public_errors
    async def CreateTenant(
        self, request: control_pb2.CreateTenantRequest, context: Context
    ) -> control_pb2.CreateTenantResponse:
        _require_message(request, "tenant")
        tenant = request.tenant
        _require(tenant.id, "tenant.id")
        if not TENANT_ID_PATTERN.fullmatch(tenant.id):
            raise InvalidRequest(
                f"tenant.id {quoted(tenant.id)} is not valid: use 1 to 63 lower-case letters, "
                "digits and '-', starting with a letter or digit"
            )
        now = self._clock()

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.Tenant:
            if _find(snapshot.tenants, lambda t: t.id == tenant.id) is not None:
                raise AlreadyExists(f"tenant {quoted(tenant.id)} already exists")
            added = snapshot.tenants.add()
            added.CopyFrom(tenant)
            added.create_time.FromDatetime(now)
            return added

        created, version = await self._update(change)
        return control_pb2.CreateTenantResponse(tenant=created, policy_version=version)

    @public_errors
    async def GetTenant(
        self, request: control_pb2.GetTenantRequest, context: Context
    ) -> control_pb2.GetTenantResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        return control_pb2.GetTenantResponse(tenant=_tenant(self._store.current, tenant_id))

    @public_errors
    async def ListTenants(
        self, request: control_pb2.ListTenantsRequest, context: Context
    ) -> control_pb2.ListTenantsResponse:
        return control_pb2.ListTenantsResponse(tenants=self._store.current.tenants)

    @public_errors
    async def DeleteTenant(
        self, request: control_pb2.DeleteTenantRequest, context: Context
    ) -> control_pb2.DeleteTenantResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            _remove_where(snapshot.tenants, lambda t: t.id == tenant_id)
            owned: tuple[RepeatedCompositeFieldContainer[Any], ...] = (
                snapshot.api_keys,
                snapshot.identity_providers,
                snapshot.model_routes,
                snapshot.mcp_servers,
                snapshot.agent_policies,
                snapshot.pii_policies,
                snapshot.budgets,
                snapshot.cache_policies,
            )
            for items in owned:
                _remove_where(items, lambda item: item.tenant_id == tenant_id)
            # "mcp:<tenant>/": the '/' keeps tenant "acme" from taking "acme2"'s.
            sealed_as = mcp_credential_name(tenant_id, "")
            _remove_where(
                snapshot.mcp_server_credentials, lambda c: c.provider.startswith(sealed_as)
            )

        _, version = await self._update(change)
        # Its tool pins, cached answers and budget figures go too: a tenant made again under
        # the id starts with none (and no one is served the old tenant's answers).
        await self._tool_pins.forget_tenant(tenant_id)
        await self._guardrail_state.forget_tenant(tenant_id)
        return control_pb2.DeleteTenantResponse(policy_version=version)

    @public_errors
    async def SetRateLimit(
        self, request: control_pb2.SetRateLimitRequest, context: Context
    ) -> control_pb2.SetRateLimitResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.Tenant:
            tenant = _tenant(snapshot, tenant_id)
            if request.HasField("rate_limit"):
                tenant.rate_limit.CopyFrom(request.rate_limit)
            else:
                tenant.ClearField("rate_limit")
            return tenant

        tenant, version = await self._update(change)
        return control_pb2.SetRateLimitResponse(tenant=tenant, policy_version=version)

    # API keys

    @public_errors
    async def CreateApiKey(
        self, request: control_pb2.CreateApiKeyRequest, context: Context
    ) -> control_pb2.CreateApiKeyResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        secret = request.secret or keys.new_secret()
        if request.secret and (problem := keys.imported_secret_problem(request.secret)):
            raise InvalidRequest(problem)
        key = policy_pb2.ApiKey(
            id=self._new_id("key"),
            tenant_id=tenant_id,
            name=request.name,
            secret_sha256=keys.digest(secret),
            secret_prefix=keys.display_prefix(secret),
        )
        key.create_time.FromDatetime(self._clock())

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            if any(k.secret_sha256 == key.secret_sha256 for k in snapshot.api_keys):
                # Says no more than that: which tenant holds it is not this caller's business.
                raise AlreadyExists("an API key with this secret already exists")
            snapshot.api_keys.append(key)

        _, version = await self._update(change)
        log.info("api key %s created for tenant %s", key.id, tenant_id)
        return control_pb2.CreateApiKeyResponse(
            api_key=_public_api_key(key), secret=secret, policy_version=version
        )

    @public_errors
    async def ListApiKeys(
        self, request: control_pb2.ListApiKeysRequest, context: Context
    ) -> control_pb2.ListApiKeysResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        snapshot = self._store.current
        _tenant(snapshot, tenant_id)
        return control_pb2.ListApiKeysResponse(
            api_keys=[_public_api_key(k) for k in snapshot.api_keys if k.tenant_id == tenant_id]
        )

    @public_errors
    async def RevokeApiKey(
        self, request: control_pb2.RevokeApiKeyRequest, context: Context
    ) -> control_pb2.RevokeApiKeyResponse:
        key_id = _require(request.api_key_id, "api_key_id")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _remove_one(snapshot.api_keys, "api key", key_id)
            # Agent policies stop naming the key. One that named it and is left naming no key
            # and no group is deleted: it would otherwise become a policy for every caller.
            emptied: set[str] = set()
            for policy in snapshot.agent_policies:
                if key_id in policy.api_key_ids:
                    kept = [k for k in policy.api_key_ids if k != key_id]
                    del policy.api_key_ids[:]
                    policy.api_key_ids.extend(kept)
                    if not kept and not policy.groups:
                        emptied.add(policy.id)
            _remove_where(snapshot.agent_policies, lambda p: p.id in emptied)
            # Its budgets too (their figures expire with their periods: key ids are not reused).
            _remove_where(snapshot.budgets, lambda b: b.api_key_id == key_id)

        _, version = await self._update(change)
        return control_pb2.RevokeApiKeyResponse(policy_version=version)

    # Identity providers

    @public_errors
    async def CreateIdentityProvider(
        self, request: control_pb2.CreateIdentityProviderRequest, context: Context
    ) -> control_pb2.CreateIdentityProviderResponse:
        _require_message(request, "identity_provider")
        idp = policy_pb2.IdentityProvider()
        idp.CopyFrom(request.identity_provider)
        _require(idp.tenant_id, "identity_provider.tenant_id")
        idp.id = _valid_id(idp.id, "identity_provider.id") or self._new_id("idp")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, idp.tenant_id)
            _refuse_repeat(snapshot.identity_providers, "identity provider", idp.id)
            snapshot.identity_providers.append(idp)

        _, version = await self._update(change)
        return control_pb2.CreateIdentityProviderResponse(
            identity_provider=idp, policy_version=version
        )

    @public_errors
    async def ListIdentityProviders(
        self, request: control_pb2.ListIdentityProvidersRequest, context: Context
    ) -> control_pb2.ListIdentityProvidersResponse:
        snapshot = self._store.current
        return control_pb2.ListIdentityProvidersResponse(
            identity_providers=_of_tenant(snapshot, snapshot.identity_providers, request.tenant_id)
        )

    @public_errors
    async def DeleteIdentityProvider(
        self, request: control_pb2.DeleteIdentityProviderRequest, context: Context
    ) -> control_pb2.DeleteIdentityProviderResponse:
        idp_id = _require(request.identity_provider_id, "identity_provider_id")
        _, version = await self._update(
            lambda snapshot: _remove_one(snapshot.identity_providers, "identity provider", idp_id)
        )
        return control_pb2.DeleteIdentityProviderResponse(policy_version=version)

    # Providers

    @public_errors
    async def CreateProvider(
        self, request: control_pb2.CreateProviderRequest, context: Context
    ) -> control_pb2.CreateProviderResponse:
        _require_message(request, "provider")
        provider = _provider_settings(request.provider)
        name = provider.name
        if not NAME_PATTERN.fullmatch(name):
            raise InvalidRequest(
                f"provider.name {quoted(name)} is not valid: use lower-case letters, digits, '.', "
                "'_' and '-', starting with a letter or digit"
            )
        now = self._clock()
        sealed = self._box.seal(name, request.api_key) if request.api_key else None

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.Provider:
            if _find(snapshot.providers, lambda p: p.name == name) is not None:
                raise AlreadyExists(f"provider {quoted(name)} already exists")
            added = snapshot.providers.add()
            added.CopyFrom(provider)
            if sealed is not None:
                _set_credential(snapshot, added, sealed, now)
            return added

        created, version = await self._update(change)
        return control_pb2.CreateProviderResponse(provider=created, policy_version=version)

    @public_errors
    async def ListProviders(
        self, request: control_pb2.ListProvidersRequest, context: Context
    ) -> control_pb2.ListProvidersResponse:
        # Credentials live in `provider_credentials`, never inside a Provider: nothing to strip.
        return control_pb2.ListProvidersResponse(providers=self._store.current.providers)

    @public_errors
    async def DeleteProvider(
        self, request: control_pb2.DeleteProviderRequest, context: Context
    ) -> control_pb2.DeleteProviderResponse:
        name = _require(request.name, "name")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _provider(snapshot, name)
            users = sorted(r.id for r in snapshot.model_routes if r.provider == name)
            if users:
                raise FailedPrecondition(
                    f"provider {quoted(name)} is used by model routes {_listed(users)}; delete "
                    "them first"
                )
            _remove_where(snapshot.providers, lambda p: p.name == name)
            _remove_where(snapshot.provider_credentials, lambda c: c.provider == name)

        _, version = await self._update(change)
        return control_pb2.DeleteProviderResponse(policy_version=version)

    @public_errors
    async def UpdateProvider(
        self, request: control_pb2.UpdateProviderRequest, context: Context
    ) -> control_pb2.UpdateProviderResponse:
        _require_message(request, "provider")
        settings = _provider_settings(request.provider)
        name = settings.name
        sealed = self._box.seal(name, request.api_key) if request.api_key else None
        now = self._clock()

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.Provider:
            provider = _provider(snapshot, name)
            # The credential's state is the provider's own, not a setting.
            settings.has_credential = provider.has_credential
            if provider.HasField("credential_update_time"):
                settings.credential_update_time.CopyFrom(provider.credential_update_time)
            provider.CopyFrom(settings)
            if sealed is not None:
                _set_credential(snapshot, provider, sealed, now)
            return provider

        updated, version = await self._update(change)
        return control_pb2.UpdateProviderResponse(provider=updated, policy_version=version)

    @public_errors
    async def SetProviderCredential(
        self, request: control_pb2.SetProviderCredentialRequest, context: Context
    ) -> control_pb2.SetProviderCredentialResponse:
        name = _require(request.provider, "provider")
        sealed = self._box.seal(name, _require(request.api_key, "api_key"))
        now = self._clock()

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.Provider:
            provider = _provider(snapshot, name)
            _set_credential(snapshot, provider, sealed, now)
            return provider

        provider, version = await self._update(change)
        log.info("credential of provider %s replaced", name)
        return control_pb2.SetProviderCredentialResponse(provider=provider, policy_version=version)

    # Model routes

    @public_errors
    async def CreateModelRoute(
        self, request: control_pb2.CreateModelRouteRequest, context: Context
    ) -> control_pb2.CreateModelRouteResponse:
        _require_message(request, "model_route")
        route = policy_pb2.ModelRoute()
        route.CopyFrom(request.model_route)
        for field in ("alias", "provider", "upstream_model"):
            _require(getattr(route, field), f"model_route.{field}")
        route.id = _valid_id(route.id, "model_route.id") or self._new_id("route")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            if route.tenant_id:
                _tenant(snapshot, route.tenant_id)
            _refuse_repeat(snapshot.model_routes, "model route", route.id)
            snapshot.model_routes.append(route)

        _, version = await self._update(change)
        return control_pb2.CreateModelRouteResponse(model_route=route, policy_version=version)

    @public_errors
    async def ListModelRoutes(
        self, request: control_pb2.ListModelRoutesRequest, context: Context
    ) -> control_pb2.ListModelRoutesResponse:
        snapshot = self._store.current
        return control_pb2.ListModelRoutesResponse(
            model_routes=_of_tenant(snapshot, snapshot.model_routes, request.tenant_id)
        )

    @public_errors
    async def DeleteModelRoute(
        self, request: control_pb2.DeleteModelRouteRequest, context: Context
    ) -> control_pb2.DeleteModelRouteResponse:
        route_id = _require(request.model_route_id, "model_route_id")
        _, version = await self._update(
            lambda snapshot: _remove_one(snapshot.model_routes, "model route", route_id)
        )
        return control_pb2.DeleteModelRouteResponse(policy_version=version)

    # Routes

    @public_errors
    async def CreateRoute(
        self, request: control_pb2.CreateRouteRequest, context: Context
    ) -> control_pb2.CreateRouteResponse:
        _require_message(request, "route")
        route = policy_pb2.Route()
        route.CopyFrom(request.route)
        _require(route.path_prefix, "route.path_prefix")
        route.id = route.id or self._new_id("route")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _refuse_repeat(snapshot.routes, "route", route.id)
            if _find(snapshot.routes, lambda r: r.path_prefix == route.path_prefix) is not None:
                raise AlreadyExists(f"path_prefix {quoted(route.path_prefix)} is already routed")
            snapshot.routes.append(route)

        _, version = await self._store.update(change)
        return control_pb2.CreateRouteResponse(route=route, policy_version=version)

    @public_errors
    async def ListRoutes(
        self, request: control_pb2.ListRoutesRequest, context: Context
    ) -> control_pb2.ListRoutesResponse:
        return control_pb2.ListRoutesResponse(routes=self._store.current.routes)

    @public_errors
    async def DeleteRoute(
        self, request: control_pb2.DeleteRouteRequest, context: Context
    ) -> control_pb2.DeleteRouteResponse:
        route_id = _require(request.route_id, "route_id")
        _, version = await self._store.update(
            lambda snapshot: _remove_one(snapshot.routes, "route", route_id)
        )
        return control_pb2.DeleteRouteResponse(policy_version=version)

    # MCP servers and agent policies

    @public_errors
    async def CreateMcpServer(
        self, request: control_pb2.CreateMcpServerRequest, context: Context
    ) -> control_pb2.CreateMcpServerResponse:
        _require_message(request, "mcp_server")
        server = _mcp_server_settings(request.mcp_server)
        tenant_id, name = server.tenant_id, server.name
        sealed = (
            self._box.seal(mcp_credential_name(tenant_id, name), request.credential)
            if request.credential
            else None
        )
        now = self._clock()

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.McpServer:
            _tenant(snapshot, tenant_id)
            if _find_mcp_server(snapshot, tenant_id, name) is not None:
                raise AlreadyExists(
                    f"MCP server {quoted(name)} of tenant {quoted(tenant_id)} already exists"
                )
            added = snapshot.mcp_servers.add()
            added.CopyFrom(server)
            if sealed is not None:
                _set_mcp_credential(snapshot, added, sealed, now)
            return added

        created, version = await self._update(change)
        return control_pb2.CreateMcpServerResponse(mcp_server=created, policy_version=version)

    @public_errors
    async def ListMcpServers(
        self, request: control_pb2.ListMcpServersRequest, context: Context
    ) -> control_pb2.ListMcpServersResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        snapshot = self._store.current
        _tenant(snapshot, tenant_id)
        # Credentials live in `mcp_server_credentials`, never inside a McpServer.
        servers = sorted(
            (s for s in snapshot.mcp_servers if s.tenant_id == tenant_id), key=lambda s: s.name
        )
        return control_pb2.ListMcpServersResponse(mcp_servers=servers)

    @public_errors
    async def DeleteMcpServer(
        self, request: control_pb2.DeleteMcpServerRequest, context: Context
    ) -> control_pb2.DeleteMcpServerResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        name = _require(request.name, "name")
        sealed_as = mcp_credential_name(tenant_id, name)

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _mcp_server(snapshot, tenant_id, name)
            _remove_where(
                snapshot.mcp_servers, lambda s: s.tenant_id == tenant_id and s.name == name
            )
            _remove_where(snapshot.mcp_server_credentials, lambda c: c.provider == sealed_as)

        _, version = await self._update(change)
        # Its pins go too, freeing the tool names it owned for the tenant's other servers.
        await self._tool_pins.forget_server(tenant_id, name)
        return control_pb2.DeleteMcpServerResponse(policy_version=version)

    @public_errors
    async def SetMcpServerCredential(
        self, request: control_pb2.SetMcpServerCredentialRequest, context: Context
    ) -> control_pb2.SetMcpServerCredentialResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        name = _require(request.name, "name")
        credential = _require(request.credential, "credential")
        sealed = self._box.seal(mcp_credential_name(tenant_id, name), credential)
        now = self._clock()

        def change(snapshot: policy_pb2.PolicySnapshot) -> policy_pb2.McpServer:
            server = _mcp_server(snapshot, tenant_id, name)
            _set_mcp_credential(snapshot, server, sealed, now)
            return server

        server, version = await self._update(change)
        log.info("credential of MCP server %s/%s replaced", tenant_id, name)
        return control_pb2.SetMcpServerCredentialResponse(mcp_server=server, policy_version=version)

    @public_errors
    async def SetAgentPolicy(
        self, request: control_pb2.SetAgentPolicyRequest, context: Context
    ) -> control_pb2.SetAgentPolicyResponse:
        _require_message(request, "agent_policy")
        policy = policy_pb2.AgentPolicy()
        policy.CopyFrom(request.agent_policy)
        tenant_id = _require(policy.tenant_id, "agent_policy.tenant_id")
        policy.id = _valid_id(policy.id, "agent_policy.id") or self._new_id("agent")

        # The rules themselves (tools, keys, limits, destinations, paths) are checked when the
        # policy compiles, which every change goes through.
        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            existing = _find(snapshot.agent_policies, lambda p: p.id == policy.id)
            if existing is None:
                snapshot.agent_policies.append(policy)
            elif existing.tenant_id != tenant_id:
                # Ids are global; replacing would move the policy to another tenant.
                raise AlreadyExists(
                    f"agent policy {quoted(policy.id)} already exists for another tenant"
                )
            else:
                existing.CopyFrom(policy)

        _, version = await self._update(change)
        return control_pb2.SetAgentPolicyResponse(agent_policy=policy, policy_version=version)

    @public_errors
    async def ListAgentPolicies(
        self, request: control_pb2.ListAgentPoliciesRequest, context: Context
    ) -> control_pb2.ListAgentPoliciesResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        snapshot = self._store.current
        _tenant(snapshot, tenant_id)
        policies = sorted(
            (p for p in snapshot.agent_policies if p.tenant_id == tenant_id), key=lambda p: p.id
        )
        return control_pb2.ListAgentPoliciesResponse(agent_policies=policies)

    @public_errors
    async def DeleteAgentPolicy(
        self, request: control_pb2.DeleteAgentPolicyRequest, context: Context
    ) -> control_pb2.DeleteAgentPolicyResponse:
        policy_id = _require(request.id, "id")
        _, version = await self._update(
            lambda snapshot: _remove_one(snapshot.agent_policies, "agent policy", policy_id)
        )
        return control_pb2.DeleteAgentPolicyResponse(policy_version=version)

    # Guardrails: PII redaction, token budgets and the answer cache. Their settings are checked
    # when the policy compiles (gatez.guardrails), which every change goes through.

    @public_errors
    async def SetPiiPolicy(
        self, request: control_pb2.SetPiiPolicyRequest, context: Context
    ) -> control_pb2.SetPiiPolicyResponse:
        _require_message(request, "pii_policy")
        policy = policy_pb2.PiiPolicy()
        policy.CopyFrom(request.pii_policy)
        tenant_id = _require(policy.tenant_id, "pii_policy.tenant_id")
        # Used only when the tenant has no salt yet; drawn out here as the change may run again.
        fresh_salt = secrets.token_bytes(PII_SALT_BYTES)

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            existing = _find(snapshot.pii_policies, lambda p: p.tenant_id == tenant_id)
            # The salt stays the tenant's for good (what the caller sent there means nothing):
            # a new one would give the same value another HASH token than before.
            kept = existing.hash_salt if existing is not None else b""
            policy.hash_salt = kept or fresh_salt
            if existing is None:
                snapshot.pii_policies.append(policy)
            else:
                existing.CopyFrom(policy)

        _, version = await self._update(change)
        return control_pb2.SetPiiPolicyResponse(
            pii_policy=_public_pii_policy(policy), policy_version=version
        )

    @public_errors
    async def GetPiiPolicy(
        self, request: control_pb2.GetPiiPolicyRequest, context: Context
    ) -> control_pb2.GetPiiPolicyResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        snapshot = self._store.current
        _tenant(snapshot, tenant_id)
        policy = _find(snapshot.pii_policies, lambda p: p.tenant_id == tenant_id)
        if policy is None:
            raise NotFound(f"tenant {quoted(tenant_id)} has no PII policy")
        return control_pb2.GetPiiPolicyResponse(pii_policy=_public_pii_policy(policy))

    @public_errors
    async def DeletePiiPolicy(
        self, request: control_pb2.DeletePiiPolicyRequest, context: Context
    ) -> control_pb2.DeletePiiPolicyResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            if not _remove_where(snapshot.pii_policies, lambda p: p.tenant_id == tenant_id):
                raise NotFound(f"tenant {quoted(tenant_id)} has no PII policy")

        _, version = await self._update(change)
        return control_pb2.DeletePiiPolicyResponse(policy_version=version)

    @public_errors
    async def SetBudget(
        self, request: control_pb2.SetBudgetRequest, context: Context
    ) -> control_pb2.SetBudgetResponse:
        _require_message(request, "budget")
        budget = policy_pb2.Budget()
        budget.CopyFrom(request.budget)
        tenant_id = _require(budget.tenant_id, "budget.tenant_id")
        key_id = budget.api_key_id

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _budget_owner(snapshot, tenant_id, key_id)
            existing = _find_budget(snapshot, tenant_id, key_id)
            if existing is None:
                snapshot.budgets.append(budget)
            else:
                existing.CopyFrom(budget)

        _, version = await self._update(change)
        return control_pb2.SetBudgetResponse(budget=budget, policy_version=version)

    @public_errors
    async def ListBudgets(
        self, request: control_pb2.ListBudgetsRequest, context: Context
    ) -> control_pb2.ListBudgetsResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        snapshot = self._store.current
        _tenant(snapshot, tenant_id)
        # The tenant's own (no key id) sorts first.
        budgets = sorted(
            (b for b in snapshot.budgets if b.tenant_id == tenant_id), key=lambda b: b.api_key_id
        )
        now = self._clock().astimezone(dt.UTC)
        owners = [Owner(tenant_id, b.api_key_id or None) for b in budgets]
        spent = await self._guardrail_state.read_spend(owners, now)
        return control_pb2.ListBudgetsResponse(
            budgets=[
                control_pb2.BudgetStatus(budget=b, spend=_budget_spend(b, spent[owner], now))
                for b, owner in zip(budgets, owners, strict=True)
            ]
        )

    @public_errors
    async def DeleteBudget(
        self, request: control_pb2.DeleteBudgetRequest, context: Context
    ) -> control_pb2.DeleteBudgetResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        key_id = request.api_key_id

        # What it spent stays in Redis until its periods expire: set again within them, the
        # budget goes on from there.
        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            if not _remove_where(
                snapshot.budgets, lambda b: b.tenant_id == tenant_id and b.api_key_id == key_id
            ):
                raise NotFound(f"{_budget_name(tenant_id, key_id)} not found")

        _, version = await self._update(change)
        return control_pb2.DeleteBudgetResponse(policy_version=version)

    @public_errors
    async def ResetBudgetSpend(
        self, request: control_pb2.ResetBudgetSpendRequest, context: Context
    ) -> control_pb2.ResetBudgetSpendResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        key_id = request.api_key_id
        periods = RESET_PERIODS.get(request.period)
        if periods is None:
            raise InvalidRequest(
                f'period {quoted(request.period)} is not valid: use "day" or "month", or '
                "leave it empty for both"
            )
        # Not only for a budget set now: one deleted and set again goes on from its figures.
        _budget_owner(self._store.current, tenant_id, key_id)
        now = self._clock().astimezone(dt.UTC)
        await self._guardrail_state.reset_spend(Owner(tenant_id, key_id or None), periods, now)
        log.info(
            "spend of the %s reset for %s",
            " and ".join(str(p) for p in periods),
            _budget_name(tenant_id, key_id),
        )
        return control_pb2.ResetBudgetSpendResponse()

    @public_errors
    async def SetCachePolicy(
        self, request: control_pb2.SetCachePolicyRequest, context: Context
    ) -> control_pb2.SetCachePolicyResponse:
        _require_message(request, "cache_policy")
        policy = policy_pb2.CachePolicy()
        policy.CopyFrom(request.cache_policy)
        tenant_id = _require(policy.tenant_id, "cache_policy.tenant_id")
        route_id = _valid_id(policy.route_id, "cache_policy.route_id")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            if route_id:
                _llm_route(snapshot, route_id)
            existing = _find(
                snapshot.cache_policies,
                lambda p: p.tenant_id == tenant_id and p.route_id == route_id,
            )
            if existing is None:
                snapshot.cache_policies.append(policy)
            else:
                existing.CopyFrom(policy)

        _, version = await self._update(change)
        return control_pb2.SetCachePolicyResponse(cache_policy=policy, policy_version=version)

    @public_errors
    async def ListCachePolicies(
        self, request: control_pb2.ListCachePoliciesRequest, context: Context
    ) -> control_pb2.ListCachePoliciesResponse:
        snapshot = self._store.current
        policies = sorted(
            _of_tenant(snapshot, snapshot.cache_policies, request.tenant_id),
            key=lambda p: (p.tenant_id, p.route_id),
        )
        return control_pb2.ListCachePoliciesResponse(cache_policies=policies)

    @public_errors
    async def DeleteCachePolicy(
        self, request: control_pb2.DeleteCachePolicyRequest, context: Context
    ) -> control_pb2.DeleteCachePolicyResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        route_id = request.route_id

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _tenant(snapshot, tenant_id)
            if not _remove_where(
                snapshot.cache_policies,
                lambda p: p.tenant_id == tenant_id and p.route_id == route_id,
            ):
                where = f"route {quoted(route_id)}" if route_id else "every route (tenant-wide)"
                raise NotFound(f"tenant {quoted(tenant_id)} has no cache policy for {where}")

        _, version = await self._update(change)
        return control_pb2.DeleteCachePolicyResponse(policy_version=version)

    @public_errors
    async def PurgeCache(
        self, request: control_pb2.PurgeCacheRequest, context: Context
    ) -> control_pb2.PurgeCacheResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        _tenant(self._store.current, tenant_id)
        entries = await self._guardrail_state.purge_answers(tenant_id)
        log.info("answer cache of tenant %s purged: %d entries", tenant_id, entries)
        return control_pb2.PurgeCacheResponse(entries=entries)

    # Status, usage and audit

    @public_errors
    async def GetPolicyStatus(
        self, request: control_pb2.GetPolicyStatusRequest, context: Context
    ) -> control_pb2.GetPolicyStatusResponse:
        snapshot = self._store.current
        response = control_pb2.GetPolicyStatusResponse(
            version=snapshot.version,
            lineage=snapshot.lineage,
            data_planes=[report.to_proto(snapshot) for report in self._data_planes.reports()],
        )
        if snapshot.HasField("create_time"):
            response.update_time.CopyFrom(snapshot.create_time)
        return response

    @public_errors
    async def AdoptLineage(
        self, request: control_pb2.AdoptLineageRequest, context: Context
    ) -> control_pb2.AdoptLineageResponse:
        lineage = _require(request.lineage, "lineage")
        if not LINEAGE_PATTERN.fullmatch(lineage):
            raise InvalidRequest(f"lineage {quoted(lineage)} is not valid: 32 hex digits")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            # The store counts on from here: one above every version known in that lineage.
            snapshot.version = max(
                snapshot.version if snapshot.lineage == lineage else 0,
                request.version,
                self._data_planes.highest_version(lineage),
            )
            snapshot.lineage = lineage

        # Not `_update`: adopting is how an operator answers the guard's refusal.
        _, version = await self._store.update(change)
        log.warning("policy lineage %s adopted by an admin, at version %d", lineage, version)
        return control_pb2.AdoptLineageResponse(lineage=lineage, policy_version=version)

    @public_errors
    async def RotateSecretKey(
        self, request: control_pb2.RotateSecretKeyRequest, context: Context
    ) -> control_pb2.RotateSecretKeyResponse:
        box = self._box

        def change(snapshot: policy_pb2.PolicySnapshot) -> int:
            stale = [
                credential
                for credential in all_credentials(snapshot)
                if credential.key_id != box.key_id or credential.api_key
            ]
            for credential in stale:
                try:
                    credential.CopyFrom(box.reseal(credential))
                except InvalidPolicy as error:
                    raise FailedPrecondition(error.public_message) from None
            return len(stale)

        resealed, version = await self._update(change)
        log.info(
            "%d provider and MCP server credentials re-sealed with secret key %s",
            resealed,
            box.key_id,
        )
        return control_pb2.RotateSecretKeyResponse(
            key_id=box.key_id, resealed=resealed, policy_version=version
        )

    @public_errors
    async def ListRequestLogs(
        self, request: control_pb2.ListRequestLogsRequest, context: Context
    ) -> control_pb2.ListRequestLogsResponse:
        if request.unauthenticated:
            if request.tenant_id:
                raise InvalidRequest("set tenant_id or unauthenticated, not both")
            # Rows of requests that reached no tenant are stored with an empty one.
            tenant_id = ""
        else:
            tenant_id = _require(request.tenant_id, "tenant_id")
        rows = await asyncio.to_thread(
            self._logs.recent_request_logs, tenant_id, _log_limit(request.limit)
        )
        return control_pb2.ListRequestLogsResponse(
            request_logs=[request_log_to_proto(r) for r in rows]
        )

    @public_errors
    async def ListAiLogs(
        self, request: control_pb2.ListAiLogsRequest, context: Context
    ) -> control_pb2.ListAiLogsResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        rows = await asyncio.to_thread(
            self._logs.recent_ai_logs, tenant_id, _log_limit(request.limit)
        )
        return control_pb2.ListAiLogsResponse(ai_logs=[ai_log_to_proto(r) for r in rows])

    @public_errors
    async def ListAgentAudit(
        self, request: control_pb2.ListAgentAuditRequest, context: Context
    ) -> control_pb2.ListAgentAuditResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        rows = await asyncio.to_thread(
            functools.partial(
                self._logs.recent_agent_logs,
                tenant_id,
                _log_limit(request.limit),
                server=request.server,
                session_id_digest=request.session_id_digest,
                decision=request.decision,
            )
        )
        return control_pb2.ListAgentAuditResponse(agent_logs=[agent_log_to_proto(r) for r in rows])

    # Cost

    @public_errors
    async def SetModelPrice(
        self, request: control_pb2.SetModelPriceRequest, context: Context
    ) -> control_pb2.SetModelPriceResponse:
        _require_message(request, "model_price")
        name, price = parse_price(request.model_price)
        stored = price_to_proto(name, price)

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            _remove_where(snapshot.model_prices, lambda p: p.model.strip().lower() == name)
            snapshot.model_prices.append(stored)

        _, version = await self._update(change)
        log.info("price of model %s set", name)
        return control_pb2.SetModelPriceResponse(model_price=stored, policy_version=version)

    @public_errors
    async def ListModelPrices(
        self, request: control_pb2.ListModelPricesRequest, context: Context
    ) -> control_pb2.ListModelPricesResponse:
        listed = {
            name: control_pb2.ListedModelPrice(
                model_price=price_to_proto(name, price), source=control_pb2.PRICE_SOURCE_DEFAULT
            )
            for name, price in DEFAULT_PRICES.items()
        }
        for message in self._store.current.model_prices:
            name, price = parse_price(message)  # the stored policy compiled: it parses
            entry = control_pb2.ListedModelPrice(
                model_price=price_to_proto(name, price), source=control_pb2.PRICE_SOURCE_OVERRIDE
            )
            if (default := DEFAULT_PRICES.get(name)) is not None:
                entry.default_price.CopyFrom(price_to_proto(name, default))
            listed[name] = entry
        return control_pb2.ListModelPricesResponse(
            model_prices=[listed[name] for name in sorted(listed)]
        )

    @public_errors
    async def DeleteModelPrice(
        self, request: control_pb2.DeleteModelPriceRequest, context: Context
    ) -> control_pb2.DeleteModelPriceResponse:
        name = model_name(request.model, "DeleteModelPrice")

        def change(snapshot: policy_pb2.PolicySnapshot) -> None:
            if not _remove_where(snapshot.model_prices, lambda p: p.model.strip().lower() == name):
                shipped = (
                    " (its shipped default cannot be deleted)" if DEFAULT_PRICES.get(name) else ""
                )
                raise NotFound(f"model {quoted(name)} has no price set by policy{shipped}")

        _, version = await self._update(change)
        return control_pb2.DeleteModelPriceResponse(policy_version=version)

    @public_errors
    async def GetUsage(
        self, request: control_pb2.GetUsageRequest, context: Context
    ) -> control_pb2.GetUsageResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        if not TENANT_ID_PATTERN.fullmatch(tenant_id):
            raise InvalidRequest(f"tenant_id {quoted(tenant_id)} is not valid")
        today = self._clock().astimezone(dt.UTC).date()
        last = _date(request.end_date, "end_date") or today
        first = _date(request.start_date, "start_date") or last - dt.timedelta(
            days=DEFAULT_USAGE_DAYS - 1
        )
        if first > last:
            raise InvalidRequest("start_date is after end_date")
        if (last - first).days + 1 > MAX_USAGE_DAYS:
            raise InvalidRequest(f"the range spans more than {MAX_USAGE_DAYS} days; ask for less")
        report = await asyncio.to_thread(self._logs.usage, tenant_id, first, last)
        return control_pb2.GetUsageResponse(
            rows=[
                control_pb2.UsageRow(
                    day=group.day.isoformat(),
                    provider=group.provider,
                    upstream_model=group.upstream_model,
                    model_alias=group.model_alias,
                    **_usage_counts(group.counts),
                )
                for group in report.groups
            ],
            totals=control_pb2.UsageTotals(**_usage_counts(report.totals)),
            start_date=first.isoformat(),
            end_date=last.isoformat(),
            truncated=report.truncated,
        )

    # Tool pins: the data plane pins MCP tool definitions; operators review and approve here.

    @public_errors
    async def ListToolPins(
        self, request: control_pb2.ListToolPinsRequest, context: Context
    ) -> control_pb2.ListToolPinsResponse:
        tenant_id = _pinned_tenant(request.tenant_id)
        server = _valid_id(request.server, "server")
        pins = await self._tool_pins.list_pins(tenant_id, server)
        return control_pb2.ListToolPinsResponse(tool_pins=[_tool_pin_to_proto(p) for p in pins])

    @public_errors
    async def ApproveToolDefinition(
        self, request: control_pb2.ApproveToolDefinitionRequest, context: Context
    ) -> control_pb2.ApproveToolDefinitionResponse:
        tenant_id = _pinned_tenant(request.tenant_id)
        server = _valid_id(_require(request.server, "server"), "server")
        tool = _require(request.tool, "tool")
        if len(tool) > MAX_TOOL_NAME:
            raise InvalidRequest(f"tool is longer than {MAX_TOOL_NAME} characters")
        digest = _require(request.digest, "digest")
        approver = _require(request.approver, "approver")
        pin = await self._tool_pins.approve(tenant_id, server, tool, digest, approver)
        log.info("tool %r of %s/%s approved by %r", tool, tenant_id, server, approver)
        return control_pb2.ApproveToolDefinitionResponse(tool_pin=_tool_pin_to_proto(pin))

    # Approvals: tool calls held for a human decision (gatez.approvals; the data planes hold the
    # calls, this only lists, decides and watches them).

    def _approval_store(self) -> ApprovalStore:
        if self._approvals is None:
            raise FailedPrecondition("approvals are not enabled on this control service")
        return self._approvals

    @public_errors
    async def ListApprovals(
        self, request: control_pb2.ListApprovalsRequest, context: Context
    ) -> control_pb2.ListApprovalsResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        _tenant(self._store.current, tenant_id)
        state = None
        if request.state != control_pb2.APPROVAL_STATE_UNSPECIFIED:
            state = _APPROVAL_STATES.get(request.state)
            if state is None:
                raise InvalidRequest(f"state {request.state} is not an approval state")
        records = await self._approval_store().list(tenant_id, state)
        return control_pb2.ListApprovalsResponse(approvals=[_approval(r) for r in records])

    @public_errors
    async def DecideApproval(
        self, request: control_pb2.DecideApprovalRequest, context: Context
    ) -> control_pb2.DecideApprovalResponse:
        tenant_id = _require(request.tenant_id, "tenant_id")
        approval_id = _require(request.approval_id, "approval_id")
        approver = _require(request.approver.strip(), "approver")
        record = await self._approval_store().decide(
            tenant_id,
            approval_id,
            approve=request.approve,
            approver=approver,
            reason=request.reason,
        )
        log.info(
            "approval %s of tenant %s %s by %s",
            record.id,
            tenant_id,
            record.state.value,
            quoted(approver),
        )
        return control_pb2.DecideApprovalResponse(approval=_approval(record))

    @public_errors
    async def WatchApprovals(
        self, request: control_pb2.WatchApprovalsRequest, context: Context
    ) -> None:
        """The tenant's PENDING approvals, then each new one and each end of one (also of one
        that was created and ended between two looks). Pub/Sub may lose a message, so the
        pending set is also re-read every APPROVALS_CATCH_UP_S. Ends when the client cancels
        (or the server stops)."""
        tenant_id = _require(request.tenant_id, "tenant_id")
        _tenant(self._store.current, tenant_id)
        approvals = self._approval_store()
        # What the watcher was last sent of each approval it saw PENDING.
        sent: dict[str, ApprovalState] = {}

        async def send(record: Approval) -> None:
            if sent.get(record.id) is record.state:
                return
            await context.write(control_pb2.WatchApprovalsResponse(approval=_approval(record)))
            if record.state.final:
                sent.pop(record.id, None)
            else:
                sent[record.id] = record.state

        async def catch_up() -> None:
            pending = await approvals.list(tenant_id, ApprovalState.PENDING)
            for record in reversed(pending):  # oldest first, as they came
                await send(record)
            still = {r.id for r in pending}
            for approval_id in [i for i in sent if i not in still]:
                current = await approvals.get(tenant_id, approval_id)
                if current is None:
                    sent.pop(approval_id, None)
                else:
                    await send(current)

        # Subscribed before the first listing, so nothing lands unseen in between.
        pubsub = approvals.redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(approvals_channel(tenant_id))
            await catch_up()
            caught_up = asyncio.get_running_loop().time()
            # redis-py can swallow a cancellation landing in a blocking read: look up too.
            while not context.done():
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is not None and message.get("type") == "message":
                    event = parse_event(message["channel"], message["data"])
                    if event is not None and event.tenant_id == tenant_id:
                        current = await approvals.get(tenant_id, event.approval_id)
                        if current is not None:
                            await send(current)
                now = asyncio.get_running_loop().time()
                if now - caught_up >= APPROVALS_CATCH_UP_S:
                    caught_up = now
                    await catch_up()
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py


APPROVALS_CATCH_UP_S: Final = 5.0
_APPROVAL_STATES: Final = {
    control_pb2.APPROVAL_STATE_PENDING: ApprovalState.PENDING,
    control_pb2.APPROVAL_STATE_APPROVED: ApprovalState.APPROVED,
    control_pb2.APPROVAL_STATE_DENIED: ApprovalState.DENIED,
    control_pb2.APPROVAL_STATE_TIMED_OUT: ApprovalState.TIMED_OUT,
    control_pb2.APPROVAL_STATE_ABANDONED: ApprovalState.ABANDONED,
}
_APPROVAL_STATE_PROTOS: Final = {state: proto for proto, state in _APPROVAL_STATES.items()}


def _pinned_tenant(tenant_id: str) -> str:
    # Not looked up in the policy: a deleted tenant's pins stay readable until forgotten.
    if not TENANT_ID_PATTERN.fullmatch(_require(tenant_id, "tenant_id")):
        raise InvalidRequest(f"tenant_id {quoted(tenant_id)} is not valid")
    return tenant_id


_PIN_STATES: Final = {
    PinState.PINNED: control_pb2.TOOL_PIN_STATE_PINNED,
    PinState.CHANGED: control_pb2.TOOL_PIN_STATE_CHANGED,
    PinState.POISONED: control_pb2.TOOL_PIN_STATE_POISONED,
    PinState.COLLISION: control_pb2.TOOL_PIN_STATE_COLLISION,
}


def _tool_pin_to_proto(pin: ToolPin) -> control_pb2.ToolPin:
    message = control_pb2.ToolPin(
        tenant_id=pin.tenant_id,
        server=pin.server,
        tool=pin.tool,
        state=_PIN_STATES.get(pin.state, control_pb2.TOOL_PIN_STATE_UNSPECIFIED),
        pinned_digest=pin.pinned_digest,
        observed_digest=pin.observed_digest,
        pinned_definition_json=pin.pinned_definition,
        observed_definition_json=pin.observed_definition,
        changes=pin.changes,
        findings=pin.findings,
        approver=pin.approver,
        owner=pin.owner if pin.state is PinState.COLLISION else "",
    )
    if pin.pin_time is not None:
        message.pin_time.FromDatetime(pin.pin_time)
    if pin.observe_time is not None:
        message.observe_time.FromDatetime(pin.observe_time)
    return message


def _approval(record: Approval) -> control_pb2.Approval:
    message = control_pb2.Approval(
        id=record.id,
        tenant_id=record.tenant_id,
        caller=record.caller,
        server=record.server,
        tool=record.tool,
        arguments_json=record.arguments_json,
        session_id_digest=record.session_digest,
        state=_APPROVAL_STATE_PROTOS[record.state],
        approver=record.approver,
        reason=record.reason,
        held_because=record.held_because,
    )
    message.create_time.FromDatetime(record.create_time)
    message.expire_time.FromDatetime(record.expire_time)
    if record.decide_time is not None:
        message.decide_time.FromDatetime(record.decide_time)
    return message


def _date(value: str, field: str) -> dt.date | None:
    """A YYYY-MM-DD date, None when empty; InvalidRequest otherwise."""
    if not value:
        return None
    try:
        if _DATE.fullmatch(value):
            return dt.date.fromisoformat(value)
    except ValueError:
        pass
    raise InvalidRequest(f"{field} {quoted(value)} is not a date: use YYYY-MM-DD")


def _usage_counts(counts: UsageCounts) -> dict[str, Any]:
    return dataclasses.asdict(counts)


@dataclass(frozen=True, slots=True)
class DataPlaneReport:
    """What one data plane last told this control replica over its Watch stream."""

    node_id: str
    connected: bool
    applied_version: int
    applied_lineage: str
    # None until it rejects a version (version 0 can be rejected too).
    rejected_version: int | None
    error: str
    update_time: dt.datetime
    # The Watch stream that owns the entry: a data plane that reconnected before its old stream
    # ended must not be marked disconnected when the old one does.
    stream: int

    def conflict_with(self, snapshot: policy_pb2.PolicySnapshot) -> str:
        """Why this data plane cannot follow `snapshot`, or "" when it can."""
        if not self.applied_lineage:
            return ""  # it holds nothing (or a policy saved before lineages): it follows
        if self.applied_lineage != snapshot.lineage:
            offered = (
                f"version {snapshot.version} of lineage {snapshot.lineage}"
                if snapshot.lineage
                else "no policy yet (version 0, no lineage)"
            )
            return (
                f"lineage conflict: the data plane holds version {self.applied_version} of "
                f"lineage {self.applied_lineage}; this control service has {offered}. It keeps "
                "serving what it holds and refuses what it is sent. Restore the control "
                "service's Redis from its persistence, or call AdoptLineage with the data "
                "plane's lineage to continue it with this control service's policy"
            )
        if self.applied_version > snapshot.version:
            return (
                f"the data plane holds version {self.applied_version}, newer than this control "
                f"service's version {snapshot.version} of the same lineage: Redis went back to "
                "an older copy. Restore the newest copy, or call AdoptLineage to continue past "
                f"version {self.applied_version}"
            )
        return ""

    def to_proto(self, snapshot: policy_pb2.PolicySnapshot) -> control_pb2.DataPlaneStatus:
        """The status as GetPolicyStatus reports it, its conflict judged against `snapshot`."""
        status = control_pb2.DataPlaneStatus(
            node_id=self.node_id,
            connected=self.connected,
            applied_version=self.applied_version,
            applied_lineage=self.applied_lineage,
            rejected_version=self.rejected_version,
            error=self.error,
            conflict=self.conflict_with(snapshot),
        )
        status.update_time.FromDatetime(self.update_time)
        return status


class DataPlaneRegistry:
    """The data planes that watch this control replica, and their ACKs and NACKs."""

    def __init__(self, *, clock: Clock = utc_now) -> None:
        self._clock = clock
        self._reports: dict[str, DataPlaneReport] = {}
        self._streams = itertools.count(1)

    def connect(self, node_id: str, first: control_pb2.WatchRequest) -> int:
        """Records a new Watch stream for `node_id`, holding what its `first` request says it
        applied, and returns the stream's number."""
        stream = next(self._streams)
        previous = self._reports.get(node_id)
        self._reports[node_id] = DataPlaneReport(
            node_id=node_id,
            connected=True,
            applied_version=first.applied_version,
            applied_lineage=_reported(first.applied_lineage),
            rejected_version=previous.rejected_version if previous else None,
            error=previous.error if previous else "",
            update_time=self._clock(),
            stream=stream,
        )
        return stream

    def record(self, node_id: str, stream: int, request: control_pb2.WatchRequest) -> None:
        """Records an ACK (`applied_version`) or a NACK (`rejected_version` and `error`)."""
        report = self._reports.get(node_id)
        if report is None or report.stream != stream:
            return
        nack = request.HasField("rejected_version") or bool(request.error)
        error = _reported(request.error)
        if nack:
            log.warning(
                "data plane %s rejected policy version %d: %s",
                node_id,
                request.rejected_version,
                error,
            )
        applied = request.applied_version or request.applied_lineage
        self._reports[node_id] = dataclasses.replace(
            report,
            applied_version=request.applied_version if applied else report.applied_version,
            applied_lineage=(
                _reported(request.applied_lineage) if applied else report.applied_lineage
            ),
            rejected_version=request.rejected_version if nack else report.rejected_version,
            error=error if nack else report.error,
            update_time=self._clock(),
        )

    def ahead_of(self, lineage: str, version: int) -> list[DataPlaneReport]:
        """The data planes that applied a version of `lineage` newer than `version`."""
        if not lineage:
            return []
        return [
            r
            for r in self.reports()
            if r.applied_lineage == lineage and r.applied_version > version
        ]

    def highest_version(self, lineage: str) -> int:
        """The newest version of `lineage` a data plane reported; 0 when none did."""
        return max(
            (r.applied_version for r in self._reports.values() if r.applied_lineage == lineage),
            default=0,
        )

    def disconnect(self, node_id: str, stream: int) -> None:
        report = self._reports.get(node_id)
        if report is not None and report.stream == stream:
            self._reports[node_id] = dataclasses.replace(
                report, connected=False, update_time=self._clock()
            )

    def reports_of(self, node_id: str) -> DataPlaneReport:
        return self._reports[node_id]

    def reports(self) -> list[DataPlaneReport]:
        return sorted(self._reports.values(), key=lambda r: r.node_id)


def _reported(text: str) -> str:
    """What a data plane says, cut to a size a status may show."""
    return text if len(text) <= MAX_REPORTED_ERROR else text[:MAX_REPORTED_ERROR] + "…"


class DataPlaneServicer(control_pb2_grpc.DataPlaneServiceServicer):
    """Pushes snapshots to data planes and receives their log rows."""

    def __init__(self, store: PolicyStore, logs: LogStore, data_planes: DataPlaneRegistry) -> None:
        self._store = store
        self._logs = logs
        self._data_planes = data_planes

    @public_errors
    async def Watch(
        self, request_iterator: AsyncIterator[control_pb2.WatchRequest], context: Context
    ) -> None:
        requests = aiter(request_iterator)
        first = await anext(requests, None)
        if first is None:
            return
        node_id = _require(first.node_id, "node_id (on the first WatchRequest)")
        if not NODE_ID_PATTERN.fullmatch(node_id):
            raise InvalidRequest(
                f"node_id {quoted(node_id)} is not valid: 1 to 128 letters, digits and ._:@-"
            )
        stream = self._data_planes.connect(node_id, first)
        log.info(
            "data plane %s is watching (applied version %d of lineage %s)",
            node_id,
            first.applied_version,
            quoted(first.applied_lineage),
        )
        if conflict := self._data_planes.reports_of(node_id).conflict_with(self._store.current):
            log.warning("data plane %s: %s", node_id, conflict)
        reports = asyncio.create_task(self._read_reports(requests, node_id, stream))
        try:
            # Pulled only once the previous send is done, so a slow data plane gets the newest
            # snapshot next, not every version it missed.
            async for snapshot in self._store.watch():
                await context.write(control_pb2.WatchResponse(snapshot=snapshot))
        finally:
            reports.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reports
            self._data_planes.disconnect(node_id, stream)
            log.info("data plane %s stopped watching", node_id)

    async def _read_reports(
        self, requests: AsyncIterator[control_pb2.WatchRequest], node_id: str, stream: int
    ) -> None:
        try:
            async for request in requests:
                self._data_planes.record(node_id, stream, request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, grpc.aio.InternalError) as error:
            # The stream is going away; the write side notices and ends the RPC.
            log.debug("data plane %s: reading reports ended: %s", node_id, error)

    @public_errors
    async def IngestLogs(
        self, request: control_pb2.IngestLogsRequest, context: Context
    ) -> control_pb2.IngestLogsResponse:
        request_rows = [request_log_from_proto(m) for m in request.request_logs]
        ai_rows = [ai_log_from_proto(m) for m in request.ai_logs]
        agent_rows = [agent_log_from_proto(m) for m in request.agent_logs]
        await asyncio.to_thread(self._insert, request_rows, ai_rows, agent_rows)
        return control_pb2.IngestLogsResponse()

    def _insert(
        self,
        request_rows: list[RequestLogRow],
        ai_rows: list[AiLogRow],
        agent_rows: list[AgentLogRow],
    ) -> None:
        self._logs.insert_request_logs(request_rows)
        self._logs.insert_ai_logs(ai_rows)
        self._logs.insert_agent_logs(agent_rows)


def _listed(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(quoted(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _valid_id(value: str, field: str) -> str:
    """A client-chosen id, which messages will quote: short, of the name alphabet."""
    if value and not NAME_PATTERN.fullmatch(value):
        raise InvalidRequest(
            f"{field} {quoted(value)} is not valid: use 1 to 63 lower-case letters, digits, '.', "
            "'_' and '-', starting with a letter or digit"
        )
    return value


def _require(value: str, field: str) -> str:
    if not value:
        raise InvalidRequest(f"{field} is required")
    return value


def _require_message(request: Message, field: str) -> None:
    if not request.HasField(field):
        raise InvalidRequest(f"{field} is required")


def _find(
    items: RepeatedCompositeFieldContainer[MessageT], match: Callable[[MessageT], bool]
) -> MessageT | None:
    return next((item for item in items if match(item)), None)


def _remove_where(
    items: RepeatedCompositeFieldContainer[MessageT], match: Callable[[MessageT], bool]
) -> int:
    doomed = [index for index, item in enumerate(items) if match(item)]
    for index in reversed(doomed):
        del items[index]
    return len(doomed)


def _remove_one(items: RepeatedCompositeFieldContainer[Any], kind: str, item_id: str) -> None:
    if not _remove_where(items, lambda item: item.id == item_id):
        raise NotFound(f"{kind} {quoted(item_id)} not found")


def _refuse_repeat(items: RepeatedCompositeFieldContainer[Any], kind: str, item_id: str) -> None:
    if _find(items, lambda item: item.id == item_id) is not None:
        raise AlreadyExists(f"{kind} {quoted(item_id)} already exists")


def _of_tenant(
    snapshot: policy_pb2.PolicySnapshot,
    items: RepeatedCompositeFieldContainer[OwnedT],
    tenant_id: str,
) -> list[OwnedT]:
    """`items` that belong to `tenant_id` (NOT_FOUND for an unknown tenant), or all when empty."""
    if not tenant_id:
        return list(items)
    _tenant(snapshot, tenant_id)
    return [item for item in items if item.tenant_id == tenant_id]


def _tenant(snapshot: policy_pb2.PolicySnapshot, tenant_id: str) -> policy_pb2.Tenant:
    tenant = _find(snapshot.tenants, lambda t: t.id == tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {quoted(tenant_id)} not found")
    return tenant


def _provider(snapshot: policy_pb2.PolicySnapshot, name: str) -> policy_pb2.Provider:
    provider = _find(snapshot.providers, lambda p: p.name == name)
    if provider is None:
        raise NotFound(f"provider {quoted(name)} not found")
    return provider


def _provider_settings(given: policy_pb2.Provider) -> policy_pb2.Provider:
    """A Provider as a caller may set it: named, of a known kind, output-only fields cleared.
    Each kind's own rules (base_url forms, azure_api_version, aws_region, a SigV4 credential's
    shape) are checked when the policy compiles, which every change goes through."""
    provider = policy_pb2.Provider()
    provider.CopyFrom(given)
    _require(provider.name, "provider.name")
    if provider.kind not in PROVIDER_KINDS:
        known = ", ".join(policy_pb2.ProviderKind.Name(kind) for kind in sorted(PROVIDER_KINDS))
        raise InvalidRequest(f"provider.kind is required: one of {known}")
    if provider.auth not in policy_pb2.ProviderAuth.values():
        raise InvalidRequest(f"provider.auth {provider.auth} is not a ProviderAuth value")
    # Output-only fields: what the caller sent there means nothing.
    provider.ClearField("has_credential")
    provider.ClearField("credential_update_time")
    return provider


def _set_credential(
    snapshot: policy_pb2.PolicySnapshot,
    provider: policy_pb2.Provider,
    sealed: policy_pb2.ProviderCredential,
    now: dt.datetime,
) -> None:
    _remove_where(snapshot.provider_credentials, lambda c: c.provider == provider.name)
    snapshot.provider_credentials.append(sealed)
    provider.has_credential = True
    provider.credential_update_time.FromDatetime(now)


def _mcp_server_settings(given: policy_pb2.McpServer) -> policy_pb2.McpServer:
    """A McpServer as a caller may set it: owned, named, with a URL, output-only fields
    cleared. The URL's form and the credential header are checked when the policy compiles."""
    server = policy_pb2.McpServer()
    server.CopyFrom(given)
    _require(server.tenant_id, "mcp_server.tenant_id")
    _require(server.name, "mcp_server.name")
    if not MCP_SERVER_NAME.fullmatch(server.name):
        raise InvalidRequest(
            f"mcp_server.name {quoted(server.name)} is not valid: use 1 to 63 lower-case letters, "
            "digits, '.', '_' and '-', starting with a letter or digit"
        )
    _require(server.url, "mcp_server.url")
    server.ClearField("has_credential")
    server.ClearField("credential_update_time")
    return server


def _find_mcp_server(
    snapshot: policy_pb2.PolicySnapshot, tenant_id: str, name: str
) -> policy_pb2.McpServer | None:
    return _find(snapshot.mcp_servers, lambda s: s.tenant_id == tenant_id and s.name == name)


def _mcp_server(
    snapshot: policy_pb2.PolicySnapshot, tenant_id: str, name: str
) -> policy_pb2.McpServer:
    _tenant(snapshot, tenant_id)
    server = _find_mcp_server(snapshot, tenant_id, name)
    if server is None:
        raise NotFound(f"MCP server {quoted(name)} of tenant {quoted(tenant_id)} not found")
    return server


def _set_mcp_credential(
    snapshot: policy_pb2.PolicySnapshot,
    server: policy_pb2.McpServer,
    sealed: policy_pb2.ProviderCredential,
    now: dt.datetime,
) -> None:
    _remove_where(snapshot.mcp_server_credentials, lambda c: c.provider == sealed.provider)
    snapshot.mcp_server_credentials.append(sealed)
    server.has_credential = True
    server.credential_update_time.FromDatetime(now)


def _public_api_key(key: policy_pb2.ApiKey) -> policy_pb2.ApiKey:
    public = policy_pb2.ApiKey()
    public.CopyFrom(key)
    public.ClearField("secret_sha256")
    return public


def _public_pii_policy(policy: policy_pb2.PiiPolicy) -> policy_pb2.PiiPolicy:
    public = policy_pb2.PiiPolicy()
    public.CopyFrom(policy)
    public.ClearField("hash_salt")
    return public


def _budget_name(tenant_id: str, key_id: str) -> str:
    if key_id:
        return f"budget of API key {quoted(key_id)} of tenant {quoted(tenant_id)}"
    return f"budget of tenant {quoted(tenant_id)}"


def _budget_owner(snapshot: policy_pb2.PolicySnapshot, tenant_id: str, key_id: str) -> None:
    """NOT_FOUND unless the tenant exists and, when `key_id` is set, holds that API key."""
    _tenant(snapshot, tenant_id)
    if (
        key_id
        and _find(snapshot.api_keys, lambda k: k.id == key_id and k.tenant_id == tenant_id) is None
    ):
        # The same answer for another tenant's key: which tenant holds it is not told.
        raise NotFound(f"API key {quoted(key_id)} of tenant {quoted(tenant_id)} not found")


def _find_budget(
    snapshot: policy_pb2.PolicySnapshot, tenant_id: str, key_id: str
) -> policy_pb2.Budget | None:
    return _find(snapshot.budgets, lambda b: b.tenant_id == tenant_id and b.api_key_id == key_id)


def _llm_route(snapshot: policy_pb2.PolicySnapshot, route_id: str) -> None:
    """NOT_FOUND unless `route_id` is a policy route or a built-in LLM route;
    INVALID_ARGUMENT for a route of another kind (the answer cache serves LLM calls only)."""
    if route_id in DEFAULT_LLM_PREFIXES.values():
        return
    route = _find(snapshot.routes, lambda r: r.id == route_id)
    if route is None:
        built_in = ", ".join(sorted(DEFAULT_LLM_PREFIXES.values()))
        raise NotFound(
            f"route {quoted(route_id)} not found: name a policy route or a built-in LLM route "
            f"({built_in})"
        )
    if route.kind != policy_pb2.ROUTE_KIND_LLM:
        raise InvalidRequest(
            f"route {quoted(route_id)} is not an LLM route: the answer cache serves LLM calls only"
        )


def _budget_spend(
    budget: policy_pb2.Budget, figures: tuple[Spend, ...], now: dt.datetime
) -> list[control_pb2.BudgetSpend]:
    """The periods the budget limits (only those are counted), with their figures in dollars."""
    shown = []
    for spend in figures:
        token_field, usd_field = _LIMIT_FIELDS[spend.period]
        if not (budget.HasField(token_field) or budget.HasField(usd_field)):
            continue
        entry = control_pb2.BudgetSpend(
            period=str(spend.period),
            period_label=spend.period_label,
            # Clamped: a figure below 0 would only come from hand-edited Redis.
            tokens_spent=max(spend.tokens_spent, 0),
            tokens_held=max(spend.tokens_held, 0),
            usd_spent=max(spend.usd_micros_spent, 0) / USD_MICROS,
            usd_held=max(spend.usd_micros_held, 0) / USD_MICROS,
        )
        if budget.HasField(token_field):
            entry.tokens_limit = getattr(budget, token_field)
        if budget.HasField(usd_field):
            entry.usd_limit = getattr(budget, usd_field)
        entry.reset_time.FromDatetime(period_end(spend.period, now))
        shown.append(entry)
    return shown


_LIMIT_FIELDS: Final = {
    Period.DAY: ("tokens_per_day", "usd_per_day"),
    Period.MONTH: ("tokens_per_month", "usd_per_month"),
}


def _log_limit(requested: int) -> int:
    return min(requested or DEFAULT_LOG_LIMIT, MAX_LOG_LIMIT)
