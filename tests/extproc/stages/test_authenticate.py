"""Authenticate on Flows: API keys, and JWTs from a real local OIDC issuer over real HTTP."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import pytest

from extproc.jwks import JwksCache
from extproc.stages.authenticate import CREDENTIAL_HEADERS, Authenticate
from gatez.errors import GatewayError, Unauthenticated, Unavailable
from gatez.keys import digest
from gatez.pipeline import CONTINUE, Continue, Flow, Principal
from gatez.policy import CompiledPolicy, compile_policy
from gatez.processes import free_port
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow, run_stage
from tests.support.oidc import OidcIssuer

ACME_SECRET = "gz-acme-test-secret-0123456789"


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def identity_provider(
    issuer: OidcIssuer, tenant_id: str = "acme", **fields: Any
) -> policy_pb2.IdentityProvider:
    return policy_pb2.IdentityProvider(
        **{
            "id": f"idp-{tenant_id}",
            "tenant_id": tenant_id,
            "issuer": issuer.issuer,
            "jwks_url": issuer.jwks_url,
            "audience": issuer.audience,
            **fields,
        }
    )


def build_policy(*identity_providers: policy_pb2.IdentityProvider) -> CompiledPolicy:
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
            api_keys=[
                policy_pb2.ApiKey(
                    id="key-acme", tenant_id="acme", secret_sha256=digest(ACME_SECRET)
                )
            ],
            identity_providers=identity_providers,
        )
    )


def bearer(credential: str) -> dict[str, str]:
    return {"authorization": f"Bearer {credential}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as issuer:
        yield issuer


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def stage(session: aiohttp.ClientSession, clock: FakeClock) -> Authenticate:
    return Authenticate(JwksCache(session, clock=clock))


@pytest.fixture
def policy(issuer: OidcIssuer) -> CompiledPolicy:
    return build_policy(identity_provider(issuer, "acme"))


async def accepted(stage: Authenticate, policy: CompiledPolicy, headers: dict[str, str]) -> Flow:
    flow = make_flow(policy, headers=headers)
    assert await run_stage(stage.on_request_headers, flow) is CONTINUE
    return flow


async def refused(
    stage: Authenticate, policy: CompiledPolicy | None, headers: dict[str, str]
) -> GatewayError:
    flow = make_flow(policy, headers=headers)
    with pytest.raises(GatewayError) as caught:
        await run_stage(stage.on_request_headers, flow)
    assert flow.principal is None
    return caught.value


# -- API keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        bearer(ACME_SECRET),
        {"authorization": f"bearer   {ACME_SECRET}  "},
        {"x-api-key": ACME_SECRET},
        {"authorization": "Basic dXNlcjpwYXNz", "x-api-key": ACME_SECRET},
    ],
    ids=["bearer", "bearer-lowercase-spaces", "x-api-key", "x-api-key-beside-basic"],
)
async def test_valid_api_key_sets_principal_and_strips_credentials(
    stage: Authenticate, policy: CompiledPolicy, headers: dict[str, str]
) -> None:
    flow = await accepted(stage, policy, headers)

    assert flow.principal == Principal(tenant_id="acme", key_id="key-acme", subject="key-acme")
    assert set(flow.pending.remove_headers) == set(CREDENTIAL_HEADERS)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "missing credential"),
        ({"authorization": "Bearer "}, "missing credential"),
        ({"x-api-key": "  "}, "missing credential"),
        ({"authorization": "Basic dXNlcjpwYXNz"}, "unsupported authorization scheme"),
        (bearer("gz-not-a-key-we-know"), "invalid API key"),
        ({"x-api-key": "gz-not-a-key-we-know"}, "invalid API key"),
    ],
)
async def test_missing_or_unknown_credentials_are_refused(
    stage: Authenticate, policy: CompiledPolicy, headers: dict[str, str], message: str
) -> None:
    error = await refused(stage, policy, headers)

    assert isinstance(error, Unauthenticated)
    assert error.http_status == 401
    assert message in error.public_message
    assert "gz-not-a-key" not in error.public_message


async def test_the_empty_policy_knows_nobody(stage: Authenticate) -> None:
    # A data plane without any policy answers 503 before this stage (the dispatcher's NoPolicy);
    # an empty one lets nobody in.
    error = await refused(stage, None, bearer(ACME_SECRET))

    assert isinstance(error, Unauthenticated)
    assert error.public_message == "invalid API key"


# -- JWTs --------------------------------------------------------------------------------------


async def test_valid_jwt_sets_principal_and_strips_credentials(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    token = issuer.mint({"tenant_id": "acme", "sub": "alice"})

    flow = await accepted(stage, policy, bearer(token))

    assert flow.principal == Principal(tenant_id="acme", key_id="jwt:alice", subject="alice")
    assert set(flow.pending.remove_headers) == set(CREDENTIAL_HEADERS)


async def test_jwt_in_x_api_key_and_audience_list_are_accepted(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    token = issuer.mint({"tenant_id": "acme", "aud": ["account", issuer.audience]})

    flow = await accepted(stage, policy, {"x-api-key": token})

    assert flow.principal is not None and flow.principal.tenant_id == "acme"


async def test_clock_skew_within_leeway_is_tolerated(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    now = int(time.time())
    token = issuer.mint({"tenant_id": "acme", "nbf": now + 20, "iat": now + 20, "exp": now - 20})

    await accepted(stage, policy, bearer(token))


async def test_numeric_dates_may_be_fractional(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    now = time.time()
    token = issuer.mint({"tenant_id": "acme", "iat": now - 1.5, "exp": now + 300.25})

    await accepted(stage, policy, bearer(token))


def _tampered(token: str) -> str:
    header, claims, signature = token.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    return f"{header}.{claims}.{flipped}{signature[1:]}"


# (case, token made by the issuer, expected message). Every token here is refused with 401.
REFUSED_TOKENS: list[tuple[str, Callable[[OidcIssuer], str], str]] = [
    ("expired", lambda i: i.mint({"tenant_id": "acme"}, ttl_s=-60), "token expired"),
    (
        "nbf-in-future",
        lambda i: i.mint({"tenant_id": "acme", "nbf": int(time.time()) + 3600}),
        "token not yet valid",
    ),
    (
        "wrong-audience",
        lambda i: i.mint({"tenant_id": "acme", "aud": "another-api"}),
        "audience is not accepted",
    ),
    (
        "no-audience",
        lambda i: i.mint({"tenant_id": "acme", "aud": None}),
        "token has no 'aud' claim",
    ),
    (
        "unknown-issuer",
        lambda i: i.mint({"tenant_id": "acme", "iss": "https://evil.example"}),
        "unknown token issuer",
    ),
    ("no-issuer", lambda i: i.mint({"tenant_id": "acme", "iss": None}), "unknown token issuer"),
    (
        "alg-none",
        lambda i: i.mint_unsigned({"tenant_id": "acme"}),
        "algorithm is not allowed",
    ),
    (
        "hs256-keyed-with-public-pem",
        lambda i: i.mint_hs256_with_public_key({"tenant_id": "acme"}),
        "algorithm is not allowed",
    ),
    (
        "es256-to-rs256-pinned-issuer",
        lambda i: i.mint({"tenant_id": "acme"}, algorithm="ES256"),
        "algorithm is not allowed",
    ),
    (
        "ps256-to-rs256-pinned-issuer",
        lambda i: i.mint({"tenant_id": "acme"}, algorithm="PS256"),
        "algorithm is not allowed",
    ),
    ("tenant-claim-missing", lambda i: i.mint(), "token has no tenant claim"),
    (
        "tenant-claim-not-a-string",
        lambda i: i.mint({"tenant_id": ["acme"]}),
        "token has no tenant claim",
    ),
    (
        "tenant-claim-names-another-tenant",
        lambda i: i.mint({"tenant_id": "globex"}),
        "tenant is not allowed",
    ),
    ("no-expiry", lambda i: i.mint({"tenant_id": "acme", "exp": None}), "no 'exp' claim"),
    ("no-subject", lambda i: i.mint({"tenant_id": "acme", "sub": None}), "no 'sub' claim"),
    ("no-kid", lambda i: i.mint({"tenant_id": "acme"}, headers={"kid": None}), "no key id"),
    ("tampered", lambda i: _tampered(i.mint({"tenant_id": "acme"})), "invalid token signature"),
    ("malformed", lambda i: "eyJhbGciOi.eyJzdWIiOi.c2ln", "malformed token"),
    # NumericDate claims must be JSON numbers: pyjwt alone would take these (int("...")).
    (
        "exp-as-numeric-string",
        lambda i: i.mint({"tenant_id": "acme", "exp": str(int(time.time()) + 300)}),
        "token claim 'exp' must be a number",
    ),
    (
        "exp-as-boolean",
        lambda i: i.mint({"tenant_id": "acme", "exp": True}),
        "token claim 'exp' must be a number",
    ),
    (
        "nbf-as-string",
        lambda i: i.mint({"tenant_id": "acme", "nbf": "0"}),
        "token claim 'nbf' must be a number",
    ),
    (
        "iat-as-string",
        lambda i: i.mint({"tenant_id": "acme", "iat": str(int(time.time()))}),
        "token claim 'iat' must be a number",
    ),
    (
        "iat-as-object",
        lambda i: i.mint({"tenant_id": "acme", "iat": {"n": 1}}),
        "token claim 'iat' must be a number",
    ),
]


@pytest.mark.parametrize(
    ("make_token", "message"),
    [case[1:] for case in REFUSED_TOKENS],
    ids=[case[0] for case in REFUSED_TOKENS],
)
async def test_bad_tokens_are_refused(
    stage: Authenticate,
    policy: CompiledPolicy,
    issuer: OidcIssuer,
    make_token: Callable[[OidcIssuer], str],
    message: str,
) -> None:
    token = make_token(issuer)

    error = await refused(stage, policy, bearer(token))

    assert isinstance(error, Unauthenticated), error
    assert message in error.public_message
    assert token not in error.public_message


async def test_key_type_must_fit_the_algorithm(stage: Authenticate, issuer: OidcIssuer) -> None:
    # ES256 is pinned too, but an RS256 token naming the EC key must not be verified with it.
    policy = build_policy(identity_provider(issuer, algorithms=["RS256", "ES256"]))
    token = issuer.mint({"tenant_id": "acme"}, headers={"kid": issuer.current_kid("EC")})

    error = await refused(stage, policy, bearer(token))

    assert "does not fit" in error.public_message


async def test_es256_is_accepted_where_pinned(stage: Authenticate, issuer: OidcIssuer) -> None:
    policy = build_policy(identity_provider(issuer, algorithms=["ES256"]))

    await accepted(stage, policy, bearer(issuer.mint({"tenant_id": "acme"}, algorithm="ES256")))


async def test_custom_tenant_claim(stage: Authenticate, issuer: OidcIssuer) -> None:
    policy = build_policy(identity_provider(issuer, tenant_claim="org"))

    flow = await accepted(stage, policy, bearer(issuer.mint({"org": "acme"})))
    assert flow.principal is not None and flow.principal.tenant_id == "acme"

    error = await refused(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))
    assert "no tenant claim" in error.public_message


async def test_tenants_sharing_an_issuer_each_get_only_their_own(
    stage: Authenticate, issuer: OidcIssuer
) -> None:
    policy = build_policy(identity_provider(issuer, "acme"), identity_provider(issuer, "globex"))

    for tenant in ("acme", "globex"):
        flow = await accepted(stage, policy, bearer(issuer.mint({"tenant_id": tenant})))
        assert flow.principal is not None and flow.principal.tenant_id == tenant

    error = await refused(stage, policy, bearer(issuer.mint({"tenant_id": "initech"})))
    assert "tenant is not allowed" in error.public_message


async def test_a_tenant_cannot_borrow_another_tenants_issuer(stage: Authenticate) -> None:
    # Each tenant has its own issuer; a token from acme's issuer naming globex is refused even
    # though globex exists and trusts an issuer of its own.
    with OidcIssuer() as acme_issuer, OidcIssuer() as globex_issuer:
        policy = build_policy(
            identity_provider(acme_issuer, "acme"), identity_provider(globex_issuer, "globex")
        )

        error = await refused(stage, policy, bearer(acme_issuer.mint({"tenant_id": "globex"})))
        assert "tenant is not allowed" in error.public_message
        await accepted(stage, policy, bearer(globex_issuer.mint({"tenant_id": "globex"})))


async def test_rotated_key_costs_one_refetch_then_is_accepted(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    await accepted(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))
    assert issuer.jwks_fetches == 1

    issuer.rotate()
    for _ in range(3):
        await accepted(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))

    assert issuer.jwks_fetches == 2


async def test_bogus_kids_cost_at_most_one_fetch_per_interval(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer, clock: FakeClock
) -> None:
    await accepted(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))
    bogus = bearer(issuer.mint({"tenant_id": "acme"}, kid="no-such-key"))

    for _ in range(25):
        error = await refused(stage, policy, bogus)
        assert error.public_message == "unknown signing key"
    assert issuer.jwks_fetches == 2

    clock.advance(5)
    for _ in range(25):
        await refused(stage, policy, bogus)
    assert issuer.jwks_fetches == 3


async def test_concurrent_requests_with_a_new_kid_cause_one_fetch(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    await accepted(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))
    issuer.rotate()
    issuer.jwks_delay_s = 0.1  # keep the fetch in flight while all 50 arrive
    flows = [
        make_flow(policy, headers=bearer(issuer.mint({"tenant_id": "acme"}))) for _ in range(50)
    ]

    verdicts = await asyncio.gather(*(run_stage(stage.on_request_headers, f) for f in flows))

    assert all(v is CONTINUE for v in verdicts)
    assert all(f.principal is not None and f.principal.tenant_id == "acme" for f in flows)
    assert issuer.jwks_fetches == 2


@pytest.mark.parametrize("failure", ["unreachable", "http-500"])
async def test_jwks_unavailable_is_503_never_an_accept(
    stage: Authenticate, issuer: OidcIssuer, failure: str
) -> None:
    if failure == "unreachable":
        jwks_url = f"http://127.0.0.1:{free_port()}/certs"
    else:
        jwks_url, issuer.jwks_status = issuer.jwks_url, 500
    policy = build_policy(identity_provider(issuer, jwks_url=jwks_url))

    error = await refused(stage, policy, bearer(issuer.mint({"tenant_id": "acme"})))

    assert isinstance(error, Unavailable)
    assert error.http_status == 503
    assert "127.0.0.1" not in error.public_message


async def test_a_jwt_with_cached_keys_is_verified_without_waiting(
    stage: Authenticate, policy: CompiledPolicy, issuer: OidcIssuer
) -> None:
    token = issuer.mint({"tenant_id": "acme"})
    first = make_flow(policy, headers=bearer(token))
    # Keys not cached yet: the stage hands back a coroutine, which fetches them.
    result = stage.on_request_headers(first)
    assert not isinstance(result, Continue)
    assert await result is CONTINUE  # type: ignore[misc]

    cached = make_flow(policy, headers=bearer(token))
    assert stage.on_request_headers(cached) is CONTINUE
    assert cached.principal == first.principal
    assert issuer.jwks_fetches == 1

    # A rotated key is not cached: back to the coroutine, which refetches the set once.
    issuer.rotate()
    rotated = make_flow(policy, headers=bearer(issuer.mint({"tenant_id": "acme"})))
    result = stage.on_request_headers(rotated)
    assert not isinstance(result, Continue)
    assert await result is CONTINUE  # type: ignore[misc]
    assert issuer.jwks_fetches == 2
