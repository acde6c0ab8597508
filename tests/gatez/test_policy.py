"""compile_policy: a valid snapshot compiles into the lookups stages use; every invalid input
rejects the whole snapshot with an InvalidPolicy naming the fault."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gatez import keys
from gatez.errors import InvalidPolicy
from gatez.policy import (
    UPSTREAM_CLUSTER_PLAIN,
    UPSTREAM_CLUSTER_TLS,
    ApiKeyEntry,
    IdentityProviderRule,
    ProviderKind,
    RateLimitRule,
    RouteKind,
    Upstream,
    compile_policy,
)
from gatez.v1 import policy_pb2

OPENAI = policy_pb2.PROVIDER_KIND_OPENAI
REST = policy_pb2.ROUTE_KIND_REST
UP = "https://orders.internal:8443/v2"
ACME_KEY = keys.digest("gz-acme-secret")
GLOBEX_KEY = keys.digest("gz-globex-secret")


def valid() -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        version=12,
        tenants=[
            policy_pb2.Tenant(
                id="acme", rate_limit=policy_pb2.RateLimit(requests_per_minute=600, burst=50)
            ),
            policy_pb2.Tenant(
                id="globex-2", rate_limit=policy_pb2.RateLimit(requests_per_minute=60)
            ),
            policy_pb2.Tenant(id="initech"),
        ],
        api_keys=[
            policy_pb2.ApiKey(id="key-1", tenant_id="acme", secret_sha256=ACME_KEY),
            policy_pb2.ApiKey(id="key-2", tenant_id="globex-2", secret_sha256=GLOBEX_KEY),
        ],
        identity_providers=[
            policy_pb2.IdentityProvider(
                id="kc-acme",
                tenant_id="acme",
                issuer="https://sso.acme.test/realms/acme",
                jwks_url="https://sso.acme.test/realms/acme/protocol/openid-connect/certs",
                audience="gatez",
            ),
            policy_pb2.IdentityProvider(
                id="kc-globex",
                tenant_id="globex-2",
                issuer="https://sso.acme.test/realms/acme",
                jwks_url="http://keycloak:8080/realms/acme/protocol/openid-connect/certs",
                audience="gatez",
                tenant_claim="org",
                algorithms=["ES256", "EdDSA"],
            ),
        ],
        providers=[
            policy_pb2.Provider(name="openai", kind=OPENAI, base_url="https://api.openai.com/v1"),
            policy_pb2.Provider(name="ollama", kind=OPENAI, base_url="http://localhost:11434/v1/"),
        ],
        provider_credentials=[
            policy_pb2.ProviderCredential(provider="openai", api_key="sk-proj-secret")
        ],
        model_routes=[
            policy_pb2.ModelRoute(
                id="r1", alias="gpt-4o-mini", provider="openai", upstream_model="gpt-4o-mini"
            ),
            policy_pb2.ModelRoute(
                id="r2", alias="fast", provider="openai", upstream_model="gpt-4o-mini"
            ),
            policy_pb2.ModelRoute(
                id="r3",
                tenant_id="acme",
                alias="fast",
                provider="ollama",
                upstream_model="llama3.2",
            ),
            policy_pb2.ModelRoute(
                id="r4",
                tenant_id="globex-2",
                alias="local",
                provider="ollama",
                upstream_model="qwen2.5",
            ),
        ],
        routes=[
            policy_pb2.Route(
                id="orders",
                path_prefix="/api/orders",
                kind=REST,
                upstream_url=UP,
                strip_prefix=True,
            )
        ],
    )


def test_a_valid_snapshot_compiles() -> None:
    policy = compile_policy(valid())
    assert policy.version == 12
    assert sorted(policy.tenants) == ["acme", "globex-2", "initech"]
    assert policy.tenants["acme"].rate_limit == RateLimitRule(600, 50)
    # burst 0 means the sustained rate.
    assert policy.tenants["globex-2"].rate_limit == RateLimitRule(60, 60)
    assert policy.tenants["initech"].rate_limit is None
    assert RateLimitRule(600, 50).emission_interval_ms == 100.0
    assert dict(policy.api_keys_by_digest) == {
        ACME_KEY: ApiKeyEntry("key-1", "acme"),
        GLOBEX_KEY: ApiKeyEntry("key-2", "globex-2"),
    }
    # Two tenants may trust the same issuer; each rule keeps its own settings.
    assert policy.identity_providers_by_issuer["https://sso.acme.test/realms/acme"] == (
        IdentityProviderRule(
            id="kc-acme",
            tenant_id="acme",
            issuer="https://sso.acme.test/realms/acme",
            jwks_url="https://sso.acme.test/realms/acme/protocol/openid-connect/certs",
            audience="gatez",
            tenant_claim="tenant_id",
            algorithms=("RS256",),
        ),
        IdentityProviderRule(
            id="kc-globex",
            tenant_id="globex-2",
            issuer="https://sso.acme.test/realms/acme",
            jwks_url="http://keycloak:8080/realms/acme/protocol/openid-connect/certs",
            audience="gatez",
            tenant_claim="org",
            algorithms=("ES256", "EdDSA"),
        ),
    )
    assert policy.providers["openai"].api_key == "sk-proj-secret"
    assert policy.providers["ollama"].api_key is None


def test_routes_compile_with_their_upstream_and_the_built_in_llm_route() -> None:
    compiled = compile_policy(valid())
    orders = compiled.routes.match("/api/orders/7")
    assert orders is not None and orders.kind is RouteKind.REST
    assert orders.upstream == Upstream(UPSTREAM_CLUSTER_TLS, "orders.internal:8443", "/v2")
    assert orders.strip_prefix
    llm = compiled.routes.match("/v1/chat/completions")
    assert llm is not None and (llm.id, llm.kind) == ("default-llm", RouteKind.LLM)
    assert compiled.routes.match("/other") is None


def test_the_compiled_policy_is_read_only() -> None:
    policy = compile_policy(valid())
    with pytest.raises(TypeError):
        policy.tenants["evil"] = policy.tenants["acme"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        policy.version = 13  # type: ignore[misc]


def test_an_empty_snapshot_compiles() -> None:
    policy = compile_policy(policy_pb2.PolicySnapshot(version=1))
    assert policy.model_aliases("acme") == []
    assert policy.resolve_model("acme", "fast") is None


@pytest.mark.parametrize(
    ("tenant", "alias", "provider", "upstream_model"),
    [
        ("acme", "fast", "ollama", "llama3.2"),
        ("globex-2", "fast", "openai", "gpt-4o-mini"),
        ("initech", "fast", "openai", "gpt-4o-mini"),
        ("globex-2", "local", "ollama", "qwen2.5"),
        ("acme", "gpt-4o-mini", "openai", "gpt-4o-mini"),
    ],
)
def test_a_tenants_route_beats_the_shared_one(
    tenant: str, alias: str, provider: str, upstream_model: str
) -> None:
    target = compile_policy(valid()).resolve_model(tenant, alias)
    assert target is not None
    assert (target.alias, target.provider.name, target.upstream_model) == (
        alias,
        provider,
        upstream_model,
    )


@pytest.mark.parametrize(
    ("tenant", "alias"),
    [("acme", "local"), ("initech", "local"), ("acme", "llama3.2"), ("", "local"), ("acme", "")],
)
def test_other_tenants_routes_do_not_resolve(tenant: str, alias: str) -> None:
    assert compile_policy(valid()).resolve_model(tenant, alias) is None


@pytest.mark.parametrize(
    ("tenant", "aliases"),
    [
        ("acme", ["fast", "gpt-4o-mini"]),
        ("globex-2", ["fast", "gpt-4o-mini", "local"]),
        ("unknown", ["fast", "gpt-4o-mini"]),
    ],
)
def test_model_aliases_are_the_shared_and_the_tenants_own(tenant: str, aliases: list[str]) -> None:
    assert compile_policy(valid()).model_aliases(tenant) == aliases


@pytest.mark.parametrize(
    ("base_url", "cluster", "authority", "path_prefix"),
    [
        ("https://api.openai.com/v1", UPSTREAM_CLUSTER_TLS, "api.openai.com", "/v1"),
        ("https://api.openai.com/v1/", UPSTREAM_CLUSTER_TLS, "api.openai.com", "/v1"),
        ("https://api.groq.com/openai/v1", UPSTREAM_CLUSTER_TLS, "api.groq.com", "/openai/v1"),
        ("http://localhost:11434/v1", UPSTREAM_CLUSTER_PLAIN, "localhost:11434", "/v1"),
        ("http://10.0.0.5", UPSTREAM_CLUSTER_PLAIN, "10.0.0.5", ""),
        ("http://10.0.0.5/", UPSTREAM_CLUSTER_PLAIN, "10.0.0.5", ""),
        ("https://llm.internal:8443/v1", UPSTREAM_CLUSTER_TLS, "llm.internal:8443", "/v1"),
        ("http://vllm:80/v1", UPSTREAM_CLUSTER_PLAIN, "vllm", "/v1"),
        ("http://vllm:443/v1", UPSTREAM_CLUSTER_PLAIN, "vllm:443", "/v1"),
        ("https://vllm:80/v1", UPSTREAM_CLUSTER_TLS, "vllm:80", "/v1"),
        ("https://LLM.Example.COM/v1", UPSTREAM_CLUSTER_TLS, "llm.example.com", "/v1"),
        ("https://[2001:db8::1]/v1", UPSTREAM_CLUSTER_TLS, "[2001:db8::1]", "/v1"),
        ("http://[::1]:8000/v1", UPSTREAM_CLUSTER_PLAIN, "[::1]:8000", "/v1"),
        ("http://[fd00::7]", UPSTREAM_CLUSTER_PLAIN, "[fd00::7]", ""),
    ],
)
def test_a_providers_base_url_becomes_cluster_authority_and_path_prefix(
    base_url: str, cluster: str, authority: str, path_prefix: str
) -> None:
    snapshot = valid()
    snapshot.providers[1].base_url = base_url
    provider = compile_policy(snapshot).providers["ollama"]
    assert (provider.cluster, provider.authority, provider.path_prefix) == (
        cluster,
        authority,
        path_prefix,
    )
    assert provider.kind is ProviderKind.OPENAI


Mutation = Callable[[policy_pb2.PolicySnapshot], object]


def set_tenant_id(value: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.tenants[2].id = value

    return mutate


def set_key_digest(value: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.api_keys[1].secret_sha256 = value

    return mutate


def set_algorithms(*values: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        del s.identity_providers[0].algorithms[:]
        s.identity_providers[0].algorithms.extend(values)

    return mutate


def set_jwks_url(value: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.identity_providers[0].jwks_url = value

    return mutate


def set_base_url(value: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.providers[0].base_url = value

    return mutate


def set_provider_name(value: str) -> Mutation:
    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.providers[1].name = value

    return mutate


def rename_ollama(value: str) -> Mutation:
    """Renames the provider and the routes that use it, so only the name itself is at fault."""

    def mutate(s: policy_pb2.PolicySnapshot) -> None:
        s.providers[1].name = value
        for route in s.model_routes:
            if route.provider == "ollama":
                route.provider = value

    return mutate


INVALID: list[tuple[str, Mutation, str]] = [
    ("tenant-upper", set_tenant_id("Initech"), "tenant id 'Initech' is not valid"),
    ("tenant-empty", set_tenant_id(""), "tenant id '' is not valid"),
    ("tenant-dash-first", set_tenant_id("-initech"), "tenant id '-initech' is not valid"),
    ("tenant-underscore", set_tenant_id("init_tech"), "tenant id 'init_tech' is not valid"),
    ("tenant-space", set_tenant_id("init tech"), "tenant id 'init tech' is not valid"),
    ("tenant-hash-tag", set_tenant_id("{acme}"), "tenant id '{acme}' is not valid"),
    ("tenant-too-long", set_tenant_id("a" * 64), f"tenant id '{'a' * 64}' is not valid"),
    ("tenant-twice", set_tenant_id("acme"), "tenant 'acme' appears twice"),
    (
        "rate-limit-zero",
        lambda s: s.tenants[2].rate_limit.CopyFrom(policy_pb2.RateLimit(requests_per_minute=0)),
        "tenant initech: requests_per_minute must be > 0",
    ),
    (
        "key-id-empty",
        lambda s: setattr(s.api_keys[1], "id", ""),
        "api key id '' is empty or repeated",
    ),
    (
        "key-id-repeated",
        lambda s: setattr(s.api_keys[1], "id", "key-1"),
        "api key id 'key-1' is empty or repeated",
    ),
    (
        "key-unknown-tenant",
        lambda s: setattr(s.api_keys[1], "tenant_id", "hooli"),
        "api key key-2 names unknown tenant 'hooli'",
    ),
    (
        "key-no-tenant",
        lambda s: setattr(s.api_keys[1], "tenant_id", ""),
        "api key key-2 names unknown tenant ''",
    ),
    ("key-no-digest", set_key_digest(""), "api key key-2 has no valid secret digest"),
    ("key-short-digest", set_key_digest(GLOBEX_KEY[:63]), "api key key-2 has no valid secret"),
    ("key-upper-digest", set_key_digest(GLOBEX_KEY.upper()), "api key key-2 has no valid secret"),
    ("key-plain-secret", set_key_digest("gz-globex-secret"), "api key key-2 has no valid secret"),
    ("key-digest-newline", set_key_digest(GLOBEX_KEY + "\n"), "api key key-2 has no valid secret"),
    ("key-same-secret", set_key_digest(ACME_KEY), "api key key-2 repeats another key's secret"),
    (
        "idp-unknown-tenant",
        lambda s: setattr(s.identity_providers[0], "tenant_id", "hooli"),
        "identity provider 'kc-acme': unknown tenant 'hooli'",
    ),
    (
        "idp-no-issuer",
        lambda s: setattr(s.identity_providers[0], "issuer", ""),
        "identity provider 'kc-acme': issuer is required",
    ),
    (
        "idp-no-audience",
        lambda s: setattr(s.identity_providers[1], "audience", ""),
        "identity provider 'kc-globex': audience is required",
    ),
    ("jwks-empty", set_jwks_url(""), "identity provider 'kc-acme': jwks_url must be a URL"),
    ("jwks-relative", set_jwks_url("/realms/acme/certs"), "jwks_url must be a URL"),
    ("jwks-ftp", set_jwks_url("ftp://sso.acme.test/certs"), "jwks_url must be a URL"),
    ("jwks-file", set_jwks_url("file:///etc/jwks.json"), "jwks_url must be a URL"),
    ("jwks-no-host", set_jwks_url("https:///certs"), "jwks_url must be a URL"),
    ("alg-hs256", set_algorithms("HS256"), "algorithms ['HS256'] not allowed"),
    ("alg-none", set_algorithms("none"), "algorithms ['none'] not allowed"),
    ("alg-mixed", set_algorithms("RS256", "HS512", "none"), "algorithms ['HS512', 'none']"),
    ("alg-lower", set_algorithms("rs256"), "algorithms ['rs256'] not allowed"),
    (
        "credential-empty",
        lambda s: setattr(s.provider_credentials[0], "api_key", ""),
        "empty credential for provider 'openai'",
    ),
    (
        "credential-unknown-provider",
        lambda s: s.provider_credentials.add(provider="anthropic", api_key="sk-ant-secret"),
        "credentials for unknown providers: ['anthropic']",
    ),
    ("provider-upper", set_provider_name("Ollama"), "provider name 'Ollama' is not valid"),
    ("provider-empty", set_provider_name(""), "provider name '' is not valid"),
    ("provider-slash", set_provider_name("ollama/local"), "provider name 'ollama/local'"),
    ("provider-twice", set_provider_name("openai"), "provider 'openai' appears twice"),
    (
        "provider-kind-unspecified",
        lambda s: setattr(s.providers[1], "kind", policy_pb2.PROVIDER_KIND_UNSPECIFIED),
        "provider 'ollama': kind is required (one of OPENAI, AZURE_OPENAI, ANTHROPIC, GEMINI, "
        "OLLAMA, BEDROCK)",
    ),
    ("base-url-empty", set_base_url(""), "provider 'openai': base_url must be a URL"),
    ("base-url-no-scheme", set_base_url("api.openai.com/v1"), "base_url must be a URL"),
    ("base-url-ws", set_base_url("wss://api.openai.com/v1"), "base_url must be a URL"),
    ("base-url-no-host", set_base_url("https:///v1"), "base_url must be a URL"),
    ("base-url-query", set_base_url("https://x.openai.azure.com/v1?api-version=1"), "?query"),
    ("base-url-fragment", set_base_url("https://api.openai.com/v1#chat"), "?query or #"),
    (
        "route-no-alias",
        lambda s: setattr(s.model_routes[1], "alias", ""),
        "model route 'r2' has no alias",
    ),
    (
        "route-no-upstream-model",
        lambda s: setattr(s.model_routes[2], "upstream_model", ""),
        "model route 'r3' has no upstream model",
    ),
    (
        "route-unknown-tenant",
        lambda s: setattr(s.model_routes[2], "tenant_id", "hooli"),
        "model route 'r3': unknown tenant",
    ),
    (
        "route-unknown-provider",
        lambda s: setattr(s.model_routes[1], "provider", "anthropic"),
        "model route 'r2': unknown provider 'anthropic'",
    ),
    (
        "route-twice-shared",
        lambda s: s.model_routes.add(alias="fast", provider="ollama", upstream_model="phi3"),
        "model route 'fast': alias 'fast' is routed twice",
    ),
    (
        "route-twice-tenant",
        lambda s: s.model_routes.add(
            id="r9", tenant_id="acme", alias="fast", provider="openai", upstream_model="gpt-4o"
        ),
        "model route 'r9': alias 'fast' is routed twice",
    ),
    (
        "route-bad-id",
        lambda s: s.routes.add(id="Orders!", path_prefix="/api", kind=REST, upstream_url=UP),
        "route id 'Orders!' is not valid",
    ),
    (
        "route-twice",
        lambda s: s.routes.add(id="orders", path_prefix="/api/x", kind=REST, upstream_url=UP),
        "route 'orders' appears twice",
    ),
    (
        "route-prefix-twice",
        lambda s: s.routes.add(id="o2", path_prefix="/api/orders", kind=REST, upstream_url=UP),
        "route 'o2': path_prefix '/api/orders' is routed twice",
    ),
    (
        "route-prefix-relative",
        lambda s: s.routes.add(id="o2", path_prefix="api", kind=REST, upstream_url=UP),
        "route 'o2': path_prefix must start with '/'",
    ),
    (
        "route-prefix-trailing-slash",
        lambda s: s.routes.add(id="o2", path_prefix="/api/", kind=REST, upstream_url=UP),
        "route 'o2': path_prefix must start with '/' and not end with one",
    ),
    (
        "route-prefix-query",
        lambda s: s.routes.add(id="o2", path_prefix="/api?x", kind=REST, upstream_url=UP),
        "route 'o2': path_prefix may not hold",
    ),
    (
        "route-no-kind",
        lambda s: s.routes.add(id="o2", path_prefix="/b", upstream_url=UP),
        "route 'o2': kind is required",
    ),
    (
        "route-a2a-not-served",
        lambda s: s.routes.add(id="o2", path_prefix="/a2a", kind=policy_pb2.ROUTE_KIND_A2A),
        "route 'o2': a2a routes are not served yet",
    ),
    (
        "route-rest-without-upstream",
        lambda s: s.routes.add(id="o2", path_prefix="/b", kind=REST),
        "route 'o2': upstream_url must be a URL",
    ),
    (
        "route-rest-upstream-with-credentials",
        lambda s: s.routes.add(id="o2", path_prefix="/b", kind=REST, upstream_url="http://u:p@h"),
        "route 'o2': upstream_url must not carry credentials",
    ),
    (
        "route-llm-with-upstream",
        lambda s: s.routes.add(
            id="o2", path_prefix="/llm", kind=policy_pb2.ROUTE_KIND_LLM, upstream_url=UP
        ),
        "route 'o2': only REST routes have an upstream_url",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [(m, msg) for _, m, msg in INVALID], ids=[i for i, _, _ in INVALID]
)
def test_an_invalid_snapshot_is_rejected_naming_the_fault(mutate: Mutation, message: str) -> None:
    snapshot = valid()
    mutate(snapshot)
    with pytest.raises(InvalidPolicy) as raised:
        compile_policy(snapshot)
    assert message in str(raised.value)
    assert raised.value.public_message == str(raised.value)
    assert (raised.value.http_status, raised.value.kind) == (400, "invalid_policy")


# Python's `$` also matches before a trailing newline, so `.match` with `^...$` lets "x\n" by.
# urlsplit raises ValueError for a bad port or a broken IPv6 literal; it escapes compile_policy.


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(set_tenant_id("initech\n"), "tenant id", id="tenant"),
        pytest.param(rename_ollama("ollama\n"), "provider name", id="provider"),
        pytest.param(
            set_base_url("https://api.openai.com:99999/v1"),
            "provider 'openai': base_url",
            id="port-out-of-range",
        ),
        pytest.param(
            set_base_url("https://api.openai.com:443x/v1"),
            "provider 'openai': base_url",
            id="port-not-a-number",
        ),
        pytest.param(
            set_base_url("http://[::1:8000/v1"),
            "provider 'openai': base_url",
            id="base-url-broken-ipv6",
        ),
        pytest.param(
            set_jwks_url("https://[fd00::1/certs"),
            "identity provider 'kc-acme': jwks_url",
            id="jwks-broken-ipv6",
        ),
    ],
)
def test_inputs_that_slip_past_validation(mutate: Mutation, message: str) -> None:
    snapshot = valid()
    mutate(snapshot)
    with pytest.raises(InvalidPolicy, match=message):
        compile_policy(snapshot)
