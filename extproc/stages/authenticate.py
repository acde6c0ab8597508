"""L1 authentication: who is calling, and for which tenant. First stage of every route.

A caller presents one credential where its SDK puts it: `Authorization: Bearer <x>` (OpenAI,
Ollama, boto3's Bedrock bearer token), `x-api-key` (Anthropic), `x-goog-api-key` or, on
Gemini's paths only, the `?key=` query parameter (Gemini), `api-key` (Azure OpenAI). A value
shaped like a JWT is verified against the identity providers the policy registers for its
issuer; anything else is a Gatez API key, looked up by
digest. Either way the result is a `Principal` bound to exactly one tenant, and the client's
credential headers are stripped so they never reach an upstream provider.

Messages say what was wrong without echoing the credential; credentials are never logged.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qs

import jwt
import orjson
from jwt.utils import base64url_decode

from extproc.jwks import JwksCache, JwksUnavailable, SigningKey, UnknownSigningKey
from gatez.errors import Unauthenticated, Unavailable
from gatez.keys import digest
from gatez.pipeline import CONTINUE, Flow, Principal, Stage, Verdict
from gatez.policy import CompiledPolicy, IdentityProviderRule

CREDENTIAL_HEADERS: Final = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
# Headers that carry a key as they are (no scheme), in the order they are read.
_KEY_HEADERS: Final = CREDENTIAL_HEADERS[1:]

# Three base64url segments; the last may be empty, so `alg: none` tokens are recognised as
# tokens (and refused as such) rather than looked up as API keys. API keys never hold a dot.
_JWT_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")

# A JWT's algorithm and key id, and the identity providers that may verify it.
JwtCandidates = tuple[str, str, list[IdentityProviderRule]]

MISSING_CREDENTIAL: Final = "missing credential: send 'Authorization: Bearer <key or token>'"
# NumericDate claims (RFC 7519): JSON numbers. pyjwt would take "1767225600" or true as well.
NUMERIC_CLAIMS: Final = ("exp", "nbf", "iat")


class Authenticate(Stage):
    """Sets `flow.principal` from an API key or a JWT, or refuses the request with 401.

    JWTs: the unverified `iss` selects the identity providers registered for it; the token's
    `alg` must be pinned by the provider (so `none` and HS* never pass); the provider whose
    `tenant_claim` names its own tenant verifies the token with its JWKS key, audience and
    issuer. Several tenants may share one issuer: each only accepts tokens naming itself.
    """

    def __init__(self, jwks: JwksCache, *, leeway_s: float = 30.0) -> None:
        self._jwks = jwks
        # Tolerated clock skew between the issuer and us, for exp, nbf and iat.
        self._leeway_s = leeway_s

    def on_request_headers(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        policy = flow.policy
        credential = _credential(flow)
        if _JWT_SHAPE.fullmatch(credential):
            candidates = _jwt_candidates(policy, credential)
            principal = self._verify_cached(policy, credential, candidates)
            if principal is None:
                # A coroutine: verifying has to fetch the issuer's keys first.
                return self._jwt_caller(flow, policy, credential, candidates)
            flow.principal = principal
        else:
            flow.principal = _authenticate_api_key(policy, credential)
        _strip_credentials(flow)
        return CONTINUE

    async def _jwt_caller(
        self, flow: Flow, policy: CompiledPolicy, token: str, candidates: JwtCandidates
    ) -> Verdict:
        flow.principal = await self._authenticate_jwt(policy, token, candidates)
        _strip_credentials(flow)
        return CONTINUE

    def _verify_cached(
        self, policy: CompiledPolicy, token: str, candidates: JwtCandidates
    ) -> Principal | None:
        """Verifies with cached keys only; None when some candidate's key is not cached."""
        algorithm, kid, providers = candidates
        keys = [self._jwks.cached_key(p.jwks_url, kid) for p in providers]
        if any(key is None for key in keys):
            return None
        first_error: Unauthenticated | None = None
        for provider, key in zip(providers, keys, strict=True):
            assert key is not None
            try:
                return self._check(policy, provider, token, algorithm, key)
            except Unauthenticated as error:
                first_error = first_error or error
        raise first_error or Unauthenticated("invalid token")

    async def _authenticate_jwt(
        self, policy: CompiledPolicy, token: str, candidates: JwtCandidates
    ) -> Principal:
        algorithm, kid, providers = candidates
        first_error: Unauthenticated | None = None
        for provider in providers:
            try:
                return await self._verify(policy, provider, token, algorithm, kid)
            except Unauthenticated as error:
                # The same issuer and tenant registered twice (say, two audiences): try both.
                first_error = first_error or error
        raise first_error or Unauthenticated("invalid token")

    async def _verify(
        self,
        policy: CompiledPolicy,
        provider: IdentityProviderRule,
        token: str,
        algorithm: str,
        kid: str,
    ) -> Principal:
        # Keys come only from the provider's configured JWKS URL, never from the token's own
        # `jku`/`x5u`/`jwk` headers, which an attacker controls.
        try:
            key = await self._jwks.get_key(provider.jwks_url, kid)
        except UnknownSigningKey:
            raise Unauthenticated("unknown signing key") from None
        except JwksUnavailable:
            raise Unavailable("identity provider keys are unavailable, try again later") from None
        return self._check(policy, provider, token, algorithm, key)

    def _check(
        self,
        policy: CompiledPolicy,
        provider: IdentityProviderRule,
        token: str,
        algorithm: str,
        key: SigningKey,
    ) -> Principal:
        if not key.fits(algorithm):
            raise Unauthenticated("signing key does not fit the token's algorithm")
        try:
            # `algorithm` is the token's own, but only after checking it against the provider's
            # pinned list and the key's type, so it cannot pick how the key is used.
            verified = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=provider.audience,
                issuer=provider.issuer,
                leeway=self._leeway_s,
                options={"require": ["exp", "sub"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(_token_error_message(error)) from None
        subject = verified["sub"]
        if not isinstance(subject, str) or not subject:
            raise Unauthenticated("token has no subject")
        if verified.get(provider.tenant_claim) != provider.tenant_id:
            raise Unauthenticated("token tenant is not allowed for this issuer")
        if provider.tenant_id not in policy.tenants:
            raise Unauthenticated("token tenant is not allowed for this issuer")
        return Principal(
            tenant_id=provider.tenant_id,
            key_id=f"jwt:{subject}",
            subject=subject,
            groups=_groups(verified.get(provider.groups_claim)),
        )


# Groups read from one token, at most (a token listing thousands is cut, not refused).
GROUPS_LIMIT: Final = 256


def _groups(claim: object) -> tuple[str, ...]:
    """A groups claim: a list of strings, or one space-separated string (as `scope` is)."""
    if isinstance(claim, str):
        return tuple(claim.split()[:GROUPS_LIMIT])
    if isinstance(claim, list):
        return tuple(g for g in claim[:GROUPS_LIMIT] if isinstance(g, str) and g)
    return ()


def _jwt_candidates(policy: CompiledPolicy, token: str) -> JwtCandidates:
    """The token's algorithm and key id, and the providers that may verify it; refuses a token
    that no provider could accept before any key is looked up."""
    header, claims = _unverified_parts(token)
    for name in NUMERIC_CLAIMS:
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise Unauthenticated(f"token claim {name!r} must be a number")
    issuer = claims.get("iss")
    providers = policy.identity_providers_by_issuer.get(issuer) if isinstance(issuer, str) else None
    if not providers:
        raise Unauthenticated("unknown token issuer")
    algorithm = header.get("alg")
    pinned = [p for p in providers if algorithm in p.algorithms]
    if not isinstance(algorithm, str) or not pinned:
        raise Unauthenticated("token signing algorithm is not allowed for this issuer")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise Unauthenticated("token has no key id (kid)")
    # Choosing by the unverified tenant claim is safe: the chosen provider then verifies the
    # whole token, and a token naming a tenant not registered for its issuer is refused.
    return algorithm, kid, _providers_for_tenant(pinned, claims)


def _strip_credentials(flow: Flow) -> None:
    # Both, whichever carried the credential: a provider must never see a Gatez secret.
    for name in CREDENTIAL_HEADERS:
        flow.remove_header(name)


def _credential(flow: Flow) -> str:
    headers = flow.request_headers
    authorization = headers.get("authorization", "").strip()
    scheme, _, value = authorization.partition(" ")
    is_bearer = scheme.lower() == "bearer"
    if is_bearer and value.strip():
        return value.strip()
    for name in _KEY_HEADERS:
        api_key = headers.get(name, "").strip()
        if api_key:
            return api_key
    api = flow.api
    if api is not None and api.credential_query and "?" in flow.path:
        # Only on the APIs whose SDKs send it so (Gemini's ?key=); model routing keeps it
        # out of the provider's URL.
        for value in parse_qs(flow.path.partition("?")[2]).get(api.credential_query, ()):
            if value.strip():
                return value.strip()
    if authorization and not is_bearer:
        raise Unauthenticated("unsupported authorization scheme: use 'Bearer <key or token>'")
    raise Unauthenticated(MISSING_CREDENTIAL)


def _authenticate_api_key(policy: CompiledPolicy, secret: str) -> Principal:
    entry = policy.api_keys_by_digest.get(digest(secret))
    if entry is None or entry.tenant_id not in policy.tenants:
        raise Unauthenticated("invalid API key")
    return Principal(tenant_id=entry.tenant_id, key_id=entry.id, subject=entry.id)


def _unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a token, not yet verified: only to pick how to verify it."""
    header_segment, claims_segment, _ = token.split(".")
    try:
        header = orjson.loads(base64url_decode(header_segment))
        claims = orjson.loads(base64url_decode(claims_segment))
    except ValueError:
        raise Unauthenticated("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise Unauthenticated("malformed token")
    return header, claims


def _providers_for_tenant(
    providers: Sequence[IdentityProviderRule], claims: Mapping[str, Any]
) -> list[IdentityProviderRule]:
    """The providers whose tenant the token's tenant claim names; refuses when there is none."""
    matching = [p for p in providers if claims.get(p.tenant_claim) == p.tenant_id]
    if matching:
        return matching
    if not any(isinstance(claims.get(p.tenant_claim), str) for p in providers):
        raise Unauthenticated("token has no tenant claim")
    raise Unauthenticated("token tenant is not allowed for this issuer")


def _token_error_message(error: jwt.PyJWTError) -> str:
    # Most specific first: several of these subclass one another.
    if isinstance(error, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(error, jwt.ImmatureSignatureError):
        return "token not yet valid"
    if isinstance(error, jwt.InvalidAudienceError):
        return "token audience is not accepted"
    if isinstance(error, jwt.InvalidIssuerError):
        return "unknown token issuer"
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"token has no {error.claim!r} claim"
    if isinstance(error, jwt.InvalidSignatureError):
        return "invalid token signature"
    if isinstance(error, jwt.InvalidAlgorithmError):
        return "token signing algorithm is not allowed for this issuer"
    if isinstance(error, jwt.InvalidKeyError):
        return "signing key does not fit the token's algorithm"
    return "invalid token"
