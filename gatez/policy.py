"""The compiled policy: a `PolicySnapshot` protobuf validated and turned into frozen lookups.

A snapshot is compiled whole when it arrives; any error rejects it whole (`InvalidPolicy`) and
the data plane keeps the policy it had. Stages only ever read a `CompiledPolicy`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol
from urllib.parse import SplitResult, urlsplit

import orjson
from botocore.credentials import Credentials

from gatez.agent_policy import (
    DEFAULT_MCP_PREFIX,
    MCP_CREDENTIAL_PREFIX,
    NO_AGENT_POLICIES,
    PROTECTED_RESOURCE_PREFIX,
    McpServerTarget,
    TenantAgentPolicies,
    compile_agent_policies,
    compile_mcp_servers,
)
from gatez.errors import InvalidPolicy, quoted
from gatez.guardrails import NO_GUARDRAILS, Guardrails, compile_guardrails
from gatez.prices import DEFAULT_PRICES, PriceTable, compile_prices
from gatez.v1 import policy_pb2

TENANT_ID_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
ASYMMETRIC_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS: Final = ("RS256",)
DEFAULT_TENANT_CLAIM: Final = "tenant_id"
DEFAULT_GROUPS_CLAIM: Final = "groups"

# Client request headers every LLM provider receives; a provider's `forward_headers` adds to
# them, and the data plane removes every other client header before the request leaves.
# x-request-id is the gateway's own (the proxy never keeps a client's). accept-encoding is left
# out on purpose: the usage meter reads the provider's response, which must not come compressed.
DEFAULT_FORWARD_HEADERS: Final = frozenset({"accept", "content-type", "x-request-id"})
# Never forwardable, whatever a policy lists: the client's Gatez credential (and no x-gatez-*).
UNFORWARDABLE_HEADERS: Final = frozenset(
    {"authorization", "x-api-key", "x-goog-api-key", "api-key"}
)
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")

# Envoy clusters that reach any provider host (dynamic forward proxy), by URL scheme.
UPSTREAM_CLUSTER_PLAIN: Final = "gatez_upstream_plain"
UPSTREAM_CLUSTER_TLS: Final = "gatez_upstream_tls"


class CredentialCipher(Protocol):
    """Opens the provider credentials the control service sealed (`gatez.secrets.SecretBox`)."""

    def open_credential(self, credential: policy_pb2.ProviderCredential) -> str:
        """The clear secret, or InvalidPolicy saying why it cannot be opened."""
        ...


@dataclass(frozen=True, slots=True)
class RateLimitRule:
    requests_per_minute: int
    burst: int

    @property
    def emission_interval_ms(self) -> float:
        """Milliseconds between requests at the sustained rate."""
        return 60_000.0 / self.requests_per_minute


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    id: str
    rate_limit: RateLimitRule | None


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    id: str
    tenant_id: str


@dataclass(frozen=True, slots=True)
class IdentityProviderRule:
    id: str
    tenant_id: str
    issuer: str
    jwks_url: str
    audience: str
    tenant_claim: str
    algorithms: tuple[str, ...]
    # The claim listing the caller's groups (they pick an agent policy).
    groups_claim: str = DEFAULT_GROUPS_CLAIM


@dataclass(frozen=True, slots=True)
class Upstream:
    """Where an upstream URL points, precomputed for header rewriting: the proxy's cluster for
    its scheme, `:authority`, and the path prepended to what is forwarded."""

    cluster: str
    authority: str
    path_prefix: str


class ProviderKind(enum.Enum):
    """The wire schema a provider speaks, and so how the gateway reaches it
    (`extproc.providers` builds each kind's request path and headers)."""

    OPENAI = "openai"
    AZURE_OPENAI = "azure_openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    OLLAMA = "ollama"
    BEDROCK = "bedrock"


PROVIDER_KINDS: Final = {
    policy_pb2.PROVIDER_KIND_OPENAI: ProviderKind.OPENAI,
    policy_pb2.PROVIDER_KIND_AZURE_OPENAI: ProviderKind.AZURE_OPENAI,
    policy_pb2.PROVIDER_KIND_ANTHROPIC: ProviderKind.ANTHROPIC,
    policy_pb2.PROVIDER_KIND_GEMINI: ProviderKind.GEMINI,
    policy_pb2.PROVIDER_KIND_OLLAMA: ProviderKind.OLLAMA,
    policy_pb2.PROVIDER_KIND_BEDROCK: ProviderKind.BEDROCK,
}
# Azure OpenAI's `api-version`: a dated version (GA or preview), or "v1" for the v1 API.
AZURE_V1_API: Final = "v1"
_AZURE_API_VERSION: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(-preview)?|v1")
# bedrock-runtime[-fips].<region>.amazonaws.com[.cn], also behind a VPC endpoint
# (vpce-….bedrock-runtime.<region>.vpce.amazonaws.com).
_BEDROCK_HOST: Final = re.compile(
    r"(?:.+\.)?bedrock-runtime(?:-fips)?\.([a-z0-9-]+)\.(?:vpce\.)?amazonaws\.com(?:\.cn)?"
)
_AWS_REGION: Final = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}")
# The fields of a SigV4 credential (a JSON object; see `policy.proto`, PROVIDER_AUTH_AWS_SIGV4).
AWS_KEY_FIELDS: Final = ("access_key_id", "secret_access_key", "session_token")
# Gemini API versions a base_url may end in; without one, Google's SDKs' default.
_GEMINI_VERSIONS: Final = ("/v1beta", "/v1")
GEMINI_DEFAULT_VERSION: Final = "/v1beta"


@dataclass(frozen=True, slots=True)
class ProviderTarget:
    """Where and how to reach one provider, compiled once per policy so that building a
    request (`extproc.providers.build`) only joins strings, and for Bedrock signs."""

    name: str
    kind: ProviderKind
    cluster: str
    # What the provider receives as `:authority` / Host — the port left out when it is the
    # scheme's default, as HTTP clients send it (a SigV4 signature covers this exact value).
    authority: str
    # The path each API's own path is joined to: the base URL's path, normalised per kind
    # (OpenAI: as given, e.g. "/v1"; Azure: the resource root; Anthropic: ".../v1"; Gemini:
    # ".../v1beta"; Ollama and Bedrock: the server root).
    path_prefix: str
    # The API key (or Bedrock API key); None when there is none or the provider signs (SigV4).
    api_key: str | None
    # Lower-case names of the client headers this provider receives (defaults included).
    forward_headers: frozenset[str] = DEFAULT_FORWARD_HEADERS
    # Azure OpenAI: the api-version ("v1": the v1 API).
    azure_api_version: str = ""
    # Bedrock: the region requests are signed for.
    aws_region: str = ""
    # Bedrock with SigV4: the key pair, built once per compiled policy.
    aws_credentials: Credentials | None = None


class RouteKind(enum.Enum):
    """What a route is; the data plane runs one pipeline per kind."""

    LLM = "llm"
    REST = "rest"
    MCP = "mcp"
    A2A = "a2a"


ROUTE_KINDS: Final = {
    policy_pb2.ROUTE_KIND_LLM: RouteKind.LLM,
    policy_pb2.ROUTE_KIND_REST: RouteKind.REST,
    policy_pb2.ROUTE_KIND_MCP: RouteKind.MCP,
    policy_pb2.ROUTE_KIND_A2A: RouteKind.A2A,
}
# Kinds a data plane serves today; A2A is the agent gateway's, still to come.
SERVED_ROUTE_KINDS: Final = frozenset({RouteKind.LLM, RouteKind.REST, RouteKind.MCP})
DEFAULT_LLM_PREFIX: Final = "/v1"
# The built-in LLM routes, each unless a policy route claims its prefix: OpenAI's and
# Anthropic's `/v1`, Gemini's `/v1beta`, Ollama's three (not all of `/api`, which REST APIs
# use), Bedrock Runtime's `/model`.
DEFAULT_LLM_PREFIXES: Final = {
    DEFAULT_LLM_PREFIX: "default-llm",
    "/v1beta": "default-llm-gemini",
    "/api/chat": "default-llm-ollama-chat",
    "/api/generate": "default-llm-ollama-generate",
    "/api/tags": "default-llm-ollama-tags",
    "/model": "default-llm-bedrock",
}
# The built-in MCP routes, likewise: the servers, and their OAuth protected-resource metadata.
DEFAULT_MCP_PREFIXES: Final = {
    DEFAULT_MCP_PREFIX: "default-mcp",
    PROTECTED_RESOURCE_PREFIX: "default-mcp-metadata",
}


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    id: str
    path_prefix: str
    kind: RouteKind
    # REST only: where matching requests go.
    upstream: Upstream | None = None
    strip_prefix: bool = False


class RouteTable:
    """Routes by path prefix; the longest prefix that matches a path wins."""

    __slots__ = ("_routes",)

    def __init__(self, routes: list[CompiledRoute]) -> None:
        # Longest first, so the first match is the most specific.
        self._routes = tuple(sorted(routes, key=lambda r: len(r.path_prefix), reverse=True))

    def match(self, path: str) -> CompiledRoute | None:
        """The route for a request path (its query ignored), or None."""
        path = path.partition("?")[0]
        for route in self._routes:
            prefix = route.path_prefix
            if path.startswith(prefix) and (
                len(path) == len(prefix) or path[len(prefix)] == "/" or prefix == "/"
            ):
                return route
        return None

    def __iter__(self) -> Iterator[CompiledRoute]:
        return iter(self._routes)


@dataclass(frozen=True, slots=True)
class ModelTarget:
    alias: str
    provider: ProviderTarget
    upstream_model: str
    # The alias's fallback chain after this target, in order (empty on the fallbacks).
    fallbacks: tuple[ModelTarget, ...] = ()

    @property
    def circuit(self) -> str:
        """The name of this target's shared circuit state: one provider's model."""
        return f"{self.provider.name}/{self.upstream_model}"

    @property
    def chain(self) -> tuple[ModelTarget, ...]:
        """This target, then its fallbacks."""
        return (self, *self.fallbacks)


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    version: int
    tenants: MappingProxyType[str, TenantPolicy]
    api_keys_by_digest: MappingProxyType[str, ApiKeyEntry]
    identity_providers_by_issuer: MappingProxyType[str, tuple[IdentityProviderRule, ...]]
    providers: MappingProxyType[str, ProviderTarget]
    # (tenant_id, alias) → target; tenant_id "" holds the routes every tenant may use.
    model_routes: MappingProxyType[tuple[str, str], ModelTarget]
    routes: RouteTable
    # What upstream models cost: the shipped defaults overlaid by the policy's prices.
    prices: PriceTable = DEFAULT_PRICES
    # The agent gateway: MCP servers by (tenant, name), and each tenant's agent policies.
    mcp_servers: MappingProxyType[tuple[str, str], McpServerTarget] = field(
        default_factory=lambda: MappingProxyType({})
    )
    agent_policies: MappingProxyType[str, TenantAgentPolicies] = field(
        default_factory=lambda: MappingProxyType({})
    )
    # L2: each tenant's PII redaction, token budgets and answer-cache settings.
    guardrails: Guardrails = NO_GUARDRAILS

    def agent_policies_of(self, tenant_id: str) -> TenantAgentPolicies:
        return self.agent_policies.get(tenant_id, NO_AGENT_POLICIES)

    def resolve_model(self, tenant_id: str, alias: str) -> ModelTarget | None:
        """The tenant's own route for `alias`, else the shared one, else None."""
        return self.model_routes.get((tenant_id, alias)) or self.model_routes.get(("", alias))

    def model_aliases(self, tenant_id: str) -> list[str]:
        return sorted({a for (t, a) in self.model_routes if t in ("", tenant_id)})


def compile_policy(
    snapshot: policy_pb2.PolicySnapshot, cipher: CredentialCipher | None = None
) -> CompiledPolicy:
    """Validates a snapshot and compiles it, opening sealed credentials with `cipher`. Raises
    `InvalidPolicy` naming the first fault (one credential that does not open refuses it all)."""
    tenants: dict[str, TenantPolicy] = {}
    for tenant in snapshot.tenants:
        _check(
            TENANT_ID_PATTERN.fullmatch(tenant.id), f"tenant id {quoted(tenant.id)} is not valid"
        )
        _check(tenant.id not in tenants, f"tenant {quoted(tenant.id)} appears twice")
        tenants[tenant.id] = TenantPolicy(tenant.id, _rate_limit(tenant))

    keys: dict[str, ApiKeyEntry] = {}
    key_ids: set[str] = set()
    for key in snapshot.api_keys:
        _check(
            key.id != "" and key.id not in key_ids,
            f"api key id {quoted(key.id)} is empty or repeated",
        )
        _check(key.tenant_id in tenants, f"api key {key.id} names unknown tenant {key.tenant_id!r}")
        _check(
            re.fullmatch(r"[0-9a-f]{64}", key.secret_sha256) is not None,
            f"api key {key.id} has no valid secret digest",
        )
        _check(key.secret_sha256 not in keys, f"api key {key.id} repeats another key's secret")
        key_ids.add(key.id)
        keys[key.secret_sha256] = ApiKeyEntry(key.id, key.tenant_id)

    issuers: dict[str, list[IdentityProviderRule]] = {}
    for idp in snapshot.identity_providers:
        issuers.setdefault(idp.issuer, []).append(_identity_provider(idp, tenants))

    credentials: dict[str, str] = {}
    for credential in snapshot.provider_credentials:
        credentials[credential.provider] = _credential(credential, cipher)
    providers: dict[str, ProviderTarget] = {}
    for provider in snapshot.providers:
        _check(
            NAME_PATTERN.fullmatch(provider.name),
            f"provider name {quoted(provider.name)} is not valid",
        )
        _check(provider.name not in providers, f"provider {quoted(provider.name)} appears twice")
        providers[provider.name] = _provider(provider, credentials.get(provider.name))
    unknown = set(credentials) - set(providers)
    _check(not unknown, f"credentials for unknown providers: {sorted(unknown)}")

    routes: dict[tuple[str, str], ModelTarget] = {}
    for route in snapshot.model_routes:
        where = f"model route {quoted(route.id or route.alias)}"
        _check(route.alias != "", f"{where} has no alias")
        _check(route.upstream_model != "", f"{where} has no upstream model")
        _check(route.tenant_id == "" or route.tenant_id in tenants, f"{where}: unknown tenant")
        _check(route.provider in providers, f"{where}: unknown provider {quoted(route.provider)}")
        key_ = (route.tenant_id, route.alias)
        _check(key_ not in routes, f"{where}: alias {quoted(route.alias)} is routed twice")
        fallbacks: list[ModelTarget] = []
        for position, fallback in enumerate(route.fallbacks):
            at = f"{where}: fallbacks[{position}]"
            _check(fallback.upstream_model != "", f"{at} has no upstream model")
            _check(
                fallback.provider in providers,
                f"{at}: unknown provider {quoted(fallback.provider)}",
            )
            fallbacks.append(
                ModelTarget(route.alias, providers[fallback.provider], fallback.upstream_model)
            )
        primary = ModelTarget(route.alias, providers[route.provider], route.upstream_model)
        circuits = [t.circuit for t in (primary, *fallbacks)]
        _check(len(set(circuits)) == len(circuits), f"{where}: a target appears twice in its chain")
        routes[key_] = ModelTarget(
            route.alias, primary.provider, route.upstream_model, tuple(fallbacks)
        )

    mcp_credentials: dict[str, str] = {}
    for credential in snapshot.mcp_server_credentials:
        _check(
            credential.provider.startswith(MCP_CREDENTIAL_PREFIX),
            f"MCP server credential {quoted(credential.provider)} is not named "
            "mcp:<tenant>/<server>",
        )
        mcp_credentials[credential.provider] = _credential(credential, cipher)
    mcp_servers = compile_mcp_servers(snapshot.mcp_servers, mcp_credentials, tenants, _upstream)
    agent_policies = compile_agent_policies(
        snapshot.agent_policies, tenants, {key.id: key.tenant_id for key in snapshot.api_keys}
    )

    return CompiledPolicy(
        version=snapshot.version,
        routes=_routes(snapshot),
        tenants=MappingProxyType(tenants),
        api_keys_by_digest=MappingProxyType(keys),
        identity_providers_by_issuer=MappingProxyType(
            {issuer: tuple(rules) for issuer, rules in issuers.items()}
        ),
        providers=MappingProxyType(providers),
        model_routes=MappingProxyType(routes),
        prices=compile_prices(snapshot.model_prices),
        mcp_servers=mcp_servers,
        agent_policies=agent_policies,
        guardrails=compile_guardrails(
            snapshot, tenants, {key.id: key.tenant_id for key in snapshot.api_keys}
        ),
    )


def _routes(snapshot: policy_pb2.PolicySnapshot) -> RouteTable:
    routes: list[CompiledRoute] = []
    ids: set[str] = set()
    prefixes: set[str] = set()
    for route in snapshot.routes:
        where = f"route {route.id!r}"
        _check(NAME_PATTERN.fullmatch(route.id), f"route id {route.id!r} is not valid")
        _check(route.id not in ids, f"{where} appears twice")
        prefix = route.path_prefix
        _check(
            prefix.startswith("/") and (prefix == "/" or not prefix.endswith("/")),
            f"{where}: path_prefix must start with '/' and not end with one",
        )
        _check(
            all(c.isprintable() and c not in " ?#%" for c in prefix),
            f"{where}: path_prefix may not hold spaces, '?', '#' or '%'",
        )
        _check(prefix not in prefixes, f"{where}: path_prefix {prefix!r} is routed twice")
        kind = ROUTE_KINDS.get(route.kind)
        _check(kind is not None, f"{where}: kind is required")
        assert kind is not None
        _check(kind in SERVED_ROUTE_KINDS, f"{where}: {kind.value} routes are not served yet")
        upstream: Upstream | None = None
        if kind is RouteKind.REST:
            upstream = _upstream(route.upstream_url, f"{where}: upstream_url")
        else:
            _check(not route.upstream_url, f"{where}: only REST routes have an upstream_url")
        ids.add(route.id)
        prefixes.add(prefix)
        routes.append(CompiledRoute(route.id, prefix, kind, upstream, route.strip_prefix))
    for prefix, route_id in DEFAULT_LLM_PREFIXES.items():
        if prefix not in prefixes:
            routes.append(CompiledRoute(route_id, prefix, RouteKind.LLM))
    for prefix, route_id in DEFAULT_MCP_PREFIXES.items():
        if prefix not in prefixes:
            routes.append(CompiledRoute(route_id, prefix, RouteKind.MCP))
    return RouteTable(routes)


def _upstream(value: str, where: str) -> Upstream:
    url = _url(value, where)
    _check(not url.query and not url.fragment, f"{where} must not carry ?query or #")
    _check(not url.username, f"{where} must not carry credentials")
    tls = url.scheme == "https"
    host = url.hostname or ""
    host = f"[{host}]" if ":" in host else host
    # The default port left out, as every HTTP client sends Host (RFC 9110 7.2): what a
    # provider receives is what a SigV4 signature covers (AWS signs "host", not "host:443").
    # Envoy's dynamic forward proxy and the APISIX runner take 443/80 by the cluster's TLS.
    port = url.port
    return Upstream(
        cluster=UPSTREAM_CLUSTER_TLS if tls else UPSTREAM_CLUSTER_PLAIN,
        authority=host if port is None or port == (443 if tls else 80) else f"{host}:{port}",
        path_prefix=url.path.rstrip("/"),
    )


def _check(condition: object, message: str) -> None:
    if not condition:
        raise InvalidPolicy(message)


def _credential(credential: policy_pb2.ProviderCredential, cipher: CredentialCipher | None) -> str:
    """A credential's secret: as given when in clear (built in process), else opened."""
    provider = quoted(credential.provider)
    if not credential.sealed_api_key:
        _check(credential.api_key != "", f"empty credential for provider {provider}")
        return credential.api_key
    _check(
        not credential.api_key, f"the credential of provider {provider} is both sealed and clear"
    )
    if cipher is None:
        raise InvalidPolicy(
            f"the credential of provider {provider} is sealed and this process holds no secret key"
        )
    return cipher.open_credential(credential)


def _url(value: str, where: str) -> SplitResult:
    """An http(s) URL with a host and a valid port, or InvalidPolicy naming `where`."""
    try:
        url = urlsplit(value)
        url.port  # noqa: B018 — raises ValueError for a port out of range or not a number
    except ValueError as error:
        raise InvalidPolicy(f"{where} is not a valid URL: {quoted(str(error))}") from None
    _check(
        url.scheme in ("http", "https") and url.hostname,
        f"{where} must be a URL (http or https, with a host)",
    )
    return url


def _rate_limit(tenant: policy_pb2.Tenant) -> RateLimitRule | None:
    if not tenant.HasField("rate_limit"):
        return None
    limit = tenant.rate_limit
    _check(limit.requests_per_minute > 0, f"tenant {tenant.id}: requests_per_minute must be > 0")
    return RateLimitRule(limit.requests_per_minute, limit.burst or limit.requests_per_minute)


def _identity_provider(
    idp: policy_pb2.IdentityProvider, tenants: dict[str, TenantPolicy]
) -> IdentityProviderRule:
    where = f"identity provider {quoted(idp.id or idp.issuer)}"
    _check(idp.tenant_id in tenants, f"{where}: unknown tenant {quoted(idp.tenant_id)}")
    _check(idp.issuer != "", f"{where}: issuer is required")
    _check(idp.audience != "", f"{where}: audience is required")
    _url(idp.jwks_url, f"{where}: jwks_url")
    algorithms = tuple(idp.algorithms) or DEFAULT_ALGORITHMS
    bad = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    _check(not bad, f"{where}: algorithms {bad} not allowed (asymmetric only, never 'none')")
    return IdentityProviderRule(
        id=idp.id,
        tenant_id=idp.tenant_id,
        issuer=idp.issuer,
        jwks_url=idp.jwks_url,
        audience=idp.audience,
        tenant_claim=idp.tenant_claim or DEFAULT_TENANT_CLAIM,
        algorithms=algorithms,
        groups_claim=idp.groups_claim or DEFAULT_GROUPS_CLAIM,
    )


def _provider(provider: policy_pb2.Provider, credential: str | None) -> ProviderTarget:
    where = f"provider {quoted(provider.name)}"
    kind = PROVIDER_KINDS.get(provider.kind)
    if kind is None:
        raise InvalidPolicy(
            f"{where}: kind is required (one of {', '.join(k.name for k in ProviderKind)})"
        )
    upstream = _upstream(provider.base_url, f"{where}: base_url")
    _check(
        not provider.azure_api_version or kind is ProviderKind.AZURE_OPENAI,
        f"{where}: azure_api_version is for AZURE_OPENAI providers only",
    )
    _check(
        not provider.aws_region or kind is ProviderKind.BEDROCK,
        f"{where}: aws_region is for BEDROCK providers only",
    )
    _check(
        provider.auth != policy_pb2.PROVIDER_AUTH_AWS_SIGV4 or kind is ProviderKind.BEDROCK,
        f"{where}: auth AWS_SIGV4 is for BEDROCK providers only",
    )
    _check(
        provider.auth in policy_pb2.ProviderAuth.values(), f"{where}: auth {provider.auth} unknown"
    )
    prefix = upstream.path_prefix
    api_key = credential
    aws_region = ""
    aws_credentials: Credentials | None = None
    if kind is ProviderKind.AZURE_OPENAI:
        prefix = _azure_root(provider, prefix, where)
    elif kind is ProviderKind.ANTHROPIC:
        prefix = prefix.removesuffix("/v1") + "/v1"
    elif kind is ProviderKind.GEMINI:
        if not prefix.endswith(_GEMINI_VERSIONS):
            prefix += GEMINI_DEFAULT_VERSION
    elif kind is ProviderKind.OLLAMA:
        _check(
            not prefix.endswith(("/api", "/v1")),
            f"{where}: base_url is the Ollama server (e.g. http://localhost:11434), without "
            "/api; Ollama's OpenAI-compatible /v1 is a provider of kind OPENAI",
        )
    elif kind is ProviderKind.BEDROCK:
        aws_region = _aws_region(provider, upstream.authority, where)
        if provider.auth != policy_pb2.PROVIDER_AUTH_API_KEY:
            api_key = None
            if credential is not None:
                aws_credentials = _aws_credentials(credential, where)
    return ProviderTarget(
        name=provider.name,
        kind=kind,
        cluster=upstream.cluster,
        authority=upstream.authority,
        path_prefix=prefix,
        api_key=api_key,
        forward_headers=DEFAULT_FORWARD_HEADERS | _forward_headers(provider, where),
        azure_api_version=provider.azure_api_version,
        aws_region=aws_region,
        aws_credentials=aws_credentials,
    )


def _azure_root(provider: policy_pb2.Provider, path: str, where: str) -> str:
    """The resource root under which Azure's `/openai/...` paths go."""
    version = provider.azure_api_version
    _check(
        _AZURE_API_VERSION.fullmatch(version),
        f'{where}: azure_api_version is required: a dated version such as "2024-10-21" '
        f'(or "2025-04-01-preview"), or "v1" for the v1 API; not {quoted(version)}',
    )
    _check(
        "/openai/deployments" not in path,
        f"{where}: base_url is the resource endpoint (https://<resource>.openai.azure.com); the "
        "deployment is the model route's upstream_model",
    )
    if path.endswith("/openai/v1"):
        _check(
            version == AZURE_V1_API,
            f"{where}: base_url ends in /openai/v1 (the v1 API) but azure_api_version is "
            f'{quoted(version)}; set it to "v1", or give the resource endpoint',
        )
        return path.removesuffix("/openai/v1")
    return path.removesuffix("/openai")


def _aws_region(provider: policy_pb2.Provider, authority: str, where: str) -> str:
    """The region a Bedrock provider's requests are signed for: as given, else its host's."""
    if provider.aws_region:
        _check(
            _AWS_REGION.fullmatch(provider.aws_region),
            f"{where}: aws_region {quoted(provider.aws_region)} is not an AWS region name",
        )
        return provider.aws_region
    host = authority.rpartition(":")[0] if authority.count(":") == 1 else authority
    match = _BEDROCK_HOST.fullmatch(host)
    _check(
        match is not None and _AWS_REGION.fullmatch(match[1]),
        f"{where}: aws_region is required (base_url's host is not "
        "bedrock-runtime.<region>.amazonaws.com)",
    )
    assert match is not None
    return match[1]


def _aws_credentials(credential: str, where: str) -> Credentials:
    """A SigV4 credential's key pair. Its content never appears in an error (it is a secret)."""
    shape = (
        'a JSON object {"access_key_id": ..., "secret_access_key": ...} with an optional '
        '"session_token"'
    )
    try:
        fields = orjson.loads(credential)
    except orjson.JSONDecodeError:
        raise InvalidPolicy(f"{where}: the credential for auth AWS_SIGV4 must be {shape}") from None
    _check(isinstance(fields, dict), f"{where}: the credential for auth AWS_SIGV4 must be {shape}")
    _check(
        set(fields) <= set(AWS_KEY_FIELDS),
        f"{where}: the AWS_SIGV4 credential has fields other than {', '.join(AWS_KEY_FIELDS)}",
    )
    for name in AWS_KEY_FIELDS:
        value = fields.get(name, "")
        _check(
            isinstance(value, str) and (value or name == "session_token"),
            f"{where}: the AWS_SIGV4 credential's {name} must be a "
            + ("string" if name == "session_token" else "non-empty string"),
        )
    return Credentials(
        fields["access_key_id"], fields["secret_access_key"], fields.get("session_token") or None
    )


def _forward_headers(provider: policy_pb2.Provider, where: str) -> frozenset[str]:
    names = frozenset(name.lower() for name in provider.forward_headers)
    for name in sorted(names):
        _check(_HEADER_NAME.fullmatch(name), f"{where}: forward_headers has {name!r}, not a name")
        _check(
            name not in UNFORWARDABLE_HEADERS and not name.startswith("x-gatez-"),
            f"{where}: forward_headers may not list {name!r} (the client's credential or a "
            "gateway header)",
        )
    return names


# What a data plane serves before it has any policy: no tenants, so nobody is let in.
EMPTY_POLICY: Final = compile_policy(policy_pb2.PolicySnapshot())
