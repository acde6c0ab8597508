"""Caching JSON Web Key Sets from OIDC issuers, so verifying a JWT rarely costs a fetch.

A set is fetched on first use, refetched when stale (TTL) and when a token names a key id the
set lacks (the issuer rotated). Fetches are single-flight per URL, and refetches on unknown key
ids are spaced by `min_refresh_interval_s`, so neither a burst of new-key tokens nor a stream of
made-up key ids can hammer the issuer. When a refetch fails the last good set keeps serving;
with no good set at all, lookups fail with `JwksUnavailable` — never with an accept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

import aiohttp
import orjson
from jwt import PyJWK, PyJWTError
from jwt.algorithms import AllowedPublicKeys

log = logging.getLogger("gatez.jwks")

# A JWKS is a few kilobytes; anything far bigger is not one and is not read whole.
MAX_JWKS_BYTES: Final = 1 << 20

# What key each JWS algorithm verifies with: (kty, curves or None for any).
_KEY_FOR_ALGORITHM: Final[Mapping[str, tuple[str, frozenset[str] | None]]] = MappingProxyType(
    {
        "RS256": ("RSA", None),
        "RS384": ("RSA", None),
        "RS512": ("RSA", None),
        "PS256": ("RSA", None),
        "PS384": ("RSA", None),
        "PS512": ("RSA", None),
        "ES256": ("EC", frozenset({"P-256"})),
        "ES384": ("EC", frozenset({"P-384"})),
        "ES512": ("EC", frozenset({"P-521"})),
        "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
    }
)


class JwksUnavailable(Exception):
    """The issuer's key set could not be fetched and no earlier copy can answer."""


class UnknownSigningKey(Exception):
    """The issuer's current key set has no key with the token's key id."""


class JwksFetchError(Exception):
    """A JWKS response that is not a usable key set."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One public key from a JWKS, with what it may verify."""

    kid: str
    key_type: str
    curve: str | None
    # The JWK's own "alg", when the issuer bound the key to one algorithm.
    algorithm: str | None
    key: AllowedPublicKeys

    def fits(self, algorithm: str) -> bool:
        """Whether this key may verify a token signed with `algorithm`."""
        wanted = _KEY_FOR_ALGORITHM.get(algorithm)
        if wanted is None:
            return False
        key_type, curves = wanted
        return (
            self.key_type == key_type
            and (curves is None or self.curve in curves)
            and self.algorithm in (None, algorithm)
        )


@dataclass(slots=True)
class _KeySet:
    """What is known about one JWKS URL. Mutated only on the event loop."""

    keys: Mapping[str, SigningKey] | None = None
    fetched_at: float = 0.0
    attempted_at: float | None = None
    # The last fetch made because a fresh set lacked a token's kid.
    refetched_at: float | None = None
    last_attempt_failed: bool = False
    inflight: asyncio.Task[None] | None = field(default=None, repr=False)


class JwksCache:
    """JWKS per URL over one shared `aiohttp.ClientSession`; keys looked up by `kid`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        ttl_s: float = 300.0,
        min_refresh_interval_s: float = 5.0,
        fetch_timeout_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._ttl_s = ttl_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._timeout = aiohttp.ClientTimeout(total=fetch_timeout_s)
        self._clock = clock
        self._sets: dict[str, _KeySet] = {}

    def cached_key(self, jwks_url: str, kid: str) -> SigningKey | None:
        """The key `kid` when a fresh set holding it is cached: the hot path, no await."""
        entry = self._sets.get(jwks_url)
        if entry is None or entry.keys is None:
            return None
        if self._clock() - entry.fetched_at >= self._ttl_s:
            return None
        return entry.keys.get(kid)

    async def get_key(self, jwks_url: str, kid: str) -> SigningKey:
        """The key `kid` from the set at `jwks_url`, fetching the set when needed.

        Raises `UnknownSigningKey` when an up-to-date set lacks `kid`, and `JwksUnavailable`
        when the set cannot be had (or could not be refreshed to look for a new `kid`).
        """
        entry = self._sets.setdefault(jwks_url, _KeySet())
        now = self._clock()
        fresh = entry.keys is not None and now - entry.fetched_at < self._ttl_s
        if fresh and entry.keys is not None and kid in entry.keys:
            return entry.keys[kid]  # the hot path: no await, no lock

        if entry.inflight is None and self._may_fetch(entry, now, fresh):
            entry.attempted_at = now
            if fresh:
                entry.refetched_at = now
            entry.inflight = asyncio.create_task(self._refresh(jwks_url, entry))
        if entry.inflight is not None:
            # Shielded: a caller that gives up must not cancel the fetch others are waiting on.
            await asyncio.shield(entry.inflight)

        if entry.keys is not None and kid in entry.keys:
            # Possibly from a stale set whose refresh failed: the issuer's last word still
            # verifies signatures, which beats refusing every caller while it is away.
            return entry.keys[kid]
        if entry.keys is None or entry.last_attempt_failed:
            raise JwksUnavailable(f"no usable key set from {jwks_url}")
        raise UnknownSigningKey(kid)

    def _may_fetch(self, entry: _KeySet, now: float, fresh: bool) -> bool:
        interval = self._min_refresh_interval_s
        if fresh:
            # A fresh set lacks the kid: the issuer may have rotated, or the kid is made up.
            # One refetch per interval serves the first and caps what the second can cost.
            return entry.refetched_at is None or now - entry.refetched_at >= interval
        # No set yet, or a stale one: fetch, but after a failure wait an interval before
        # trying again, so a down issuer is not hit (and waited on) by every request.
        return entry.attempted_at is None or now - entry.attempted_at >= interval

    async def _refresh(self, jwks_url: str, entry: _KeySet) -> None:
        """Fetches the set into `entry`. Never raises, so no waiter sees a stray error."""
        try:
            keys = await self._fetch(jwks_url)
        except Exception as error:
            entry.last_attempt_failed = True
            log.warning("fetching JWKS %s failed: %s", jwks_url, _describe(error))
        else:
            entry.keys = keys
            entry.fetched_at = self._clock()
            entry.last_attempt_failed = False
        finally:
            entry.inflight = None

    async def _fetch(self, jwks_url: str) -> Mapping[str, SigningKey]:
        async with self._session.get(
            jwks_url, timeout=self._timeout, allow_redirects=False
        ) as response:
            if response.status != 200:
                raise JwksFetchError(f"HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise JwksFetchError("response too large")
        return parse_jwks(orjson.loads(body))


def parse_jwks(document: Any) -> Mapping[str, SigningKey]:
    """The signing keys of a JWKS document, by kid. Keys we cannot use are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksFetchError("not a JWKS document")
    keys: dict[str, SigningKey] = {}
    for jwk in document["keys"]:
        key = _signing_key(jwk)
        if key is not None and key.kid not in keys:
            keys[key.kid] = key
    return MappingProxyType(keys)


def _signing_key(jwk: Any) -> SigningKey | None:
    if not isinstance(jwk, dict):
        return None
    kid, kty, alg = jwk.get("kid"), jwk.get("kty"), jwk.get("alg")
    if not isinstance(kid, str) or not kid or kty not in ("RSA", "EC", "OKP"):
        return None  # no kid to select it by, or symmetric ("oct"): never a verification key
    if jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None  # an encryption key, or a private key published by mistake
    if alg is not None and alg not in _KEY_FOR_ALGORITHM:
        return None
    try:
        # PyJWK only guesses EdDSA for Ed25519; naming it lets Ed448 keys parse too.
        parsed = PyJWK(jwk, algorithm="EdDSA" if kty == "OKP" else None)
    except PyJWTError:
        return None
    curve = jwk.get("crv")
    return SigningKey(
        kid=kid,
        key_type=kty,
        curve=curve if isinstance(curve, str) else None,
        algorithm=alg,
        key=parsed.key,
    )


def _describe(error: BaseException) -> str:
    # aiohttp's timeout error has an empty message; say what it was.
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
