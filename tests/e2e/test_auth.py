"""L1 authentication end to end: Gatez API keys and JWTs from a tenant's OIDC issuer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.oidc import OidcIssuer

MESSAGES: list[Any] = [{"role": "user", "content": "who am I"}]


@pytest.fixture
def jwt_tenant(admin: Admin, oidc: OidcIssuer) -> TenantAccess:
    access = provision(admin)
    created = admin.control.CreateIdentityProvider(
        control_pb2.CreateIdentityProviderRequest(
            identity_provider=policy_pb2.IdentityProvider(
                tenant_id=access.tenant_id,
                issuer=oidc.issuer,
                jwks_url=oidc.jwks_url,
                audience=oidc.audience,
                tenant_claim="tenant_id",
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    return access


def chat(gateway_url: str, token: str) -> httpx.Response:
    return httpx.post(
        f"{gateway_url}/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES},
        headers={"authorization": f"Bearer {token}"},
    )


def test_missing_key_is_401_json(gateway_url: str, upstream: UpstreamServer) -> None:
    before = len(upstream.requests)
    response = httpx.post(f"{gateway_url}/chat/completions", json={"model": "gpt-test"})
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(upstream.requests) == before


def test_wrong_key_raises_authentication_error_in_the_sdk(gateway_url: str) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key="gz-not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)


def test_revoked_key_stops_working(gateway_url: str, admin: Admin) -> None:
    access = provision(admin)
    assert chat(gateway_url, access.api_key).status_code == 200
    revoked = admin.control.RevokeApiKey(
        control_pb2.RevokeApiKeyRequest(api_key_id=access.api_key_id), metadata=admin.metadata
    )
    admin.wait_applied(revoked.policy_version)
    assert chat(gateway_url, access.api_key).status_code == 401


def test_valid_jwt_reaches_the_model_as_the_tenant(
    gateway_url: str, jwt_tenant: TenantAccess, oidc: OidcIssuer, upstream: UpstreamServer
) -> None:
    token = oidc.mint({"tenant_id": jwt_tenant.tenant_id})
    client = openai.OpenAI(base_url=gateway_url, api_key=token, max_retries=0)
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: who am I"
    assert token not in str(dict(upstream.requests[-1].headers))


BAD_TOKENS: list[tuple[str, Callable[[OidcIssuer, str], str]]] = [
    ("expired", lambda o, t: o.mint({"tenant_id": t}, ttl_s=-120)),
    ("not yet valid", lambda o, t: o.mint({"tenant_id": t, "nbf": int(o.claims()["iat"]) + 600})),
    ("wrong audience", lambda o, t: o.mint({"tenant_id": t, "aud": "someone-else"})),
    ("unknown issuer", lambda o, t: o.mint({"tenant_id": t, "iss": "https://evil.example"})),
    ("alg none", lambda o, t: o.mint_unsigned({"tenant_id": t})),
    ("hs256 with the public key", lambda o, t: o.mint_hs256_with_public_key({"tenant_id": t})),
    ("es256 to an rs256 issuer", lambda o, t: o.mint({"tenant_id": t}, algorithm="ES256")),
    ("no tenant claim", lambda o, t: o.mint()),
    ("another tenant's id", lambda o, t: o.mint({"tenant_id": "demo"})),
]


@pytest.mark.parametrize(("case", "make_token"), BAD_TOKENS, ids=[c for c, _ in BAD_TOKENS])
def test_bad_jwts_are_refused(
    gateway_url: str,
    jwt_tenant: TenantAccess,
    oidc: OidcIssuer,
    upstream: UpstreamServer,
    case: str,
    make_token: Callable[[OidcIssuer, str], str],
) -> None:
    before = len(upstream.requests)
    response = chat(gateway_url, make_token(oidc, jwt_tenant.tenant_id))
    assert response.status_code == 401, case
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(upstream.requests) == before


def test_unknown_kid_after_key_rotation_is_fetched_and_accepted(
    gateway_url: str, jwt_tenant: TenantAccess, oidc: OidcIssuer
) -> None:
    assert chat(gateway_url, oidc.mint({"tenant_id": jwt_tenant.tenant_id})).status_code == 200
    fetches = oidc.jwks_fetches
    new_kid = oidc.rotate()
    token = oidc.mint({"tenant_id": jwt_tenant.tenant_id}, kid=new_kid)
    assert chat(gateway_url, token).status_code == 200
    assert oidc.jwks_fetches == fetches + 1
