"""JwksCache against a real local OIDC issuer, with a fake clock for TTLs and refresh spacing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from extproc.jwks import JwksCache, JwksFetchError, JwksUnavailable, UnknownSigningKey, parse_jwks
from gatez.processes import free_port
from tests.support.oidc import OidcIssuer


class FakeClock:
    """A monotonic clock that only moves when a test says so."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
def cache(session: aiohttp.ClientSession, clock: FakeClock) -> JwksCache:
    return JwksCache(session, clock=clock)


async def test_fetches_once_and_serves_keys_by_kid(cache: JwksCache, issuer: OidcIssuer) -> None:
    rsa_kid, ec_kid = issuer.current_kid("RSA"), issuer.current_kid("EC")

    rsa_key = await cache.get_key(issuer.jwks_url, rsa_kid)
    ec_key = await cache.get_key(issuer.jwks_url, ec_kid)

    assert (rsa_key.kid, rsa_key.key_type) == (rsa_kid, "RSA")
    assert rsa_key.fits("RS256") and rsa_key.fits("PS256") and not rsa_key.fits("ES256")
    assert ec_key.fits("ES256") and not ec_key.fits("ES384") and not ec_key.fits("RS256")
    assert not rsa_key.fits("HS256") and not rsa_key.fits("none")
    assert issuer.jwks_fetches == 1


async def test_concurrent_cold_lookups_share_one_fetch(
    cache: JwksCache, issuer: OidcIssuer
) -> None:
    kid = issuer.current_kid()

    keys = await asyncio.gather(*(cache.get_key(issuer.jwks_url, kid) for _ in range(100)))

    assert {k.kid for k in keys} == {kid}
    assert issuer.jwks_fetches == 1


async def test_unknown_kid_refetches_at_most_once_per_interval(
    cache: JwksCache, issuer: OidcIssuer, clock: FakeClock
) -> None:
    await cache.get_key(issuer.jwks_url, issuer.current_kid())

    for _ in range(20):
        with pytest.raises(UnknownSigningKey):
            await cache.get_key(issuer.jwks_url, "made-up")
    assert issuer.jwks_fetches == 2  # the first lookup, then one refetch

    clock.advance(4.9)
    with pytest.raises(UnknownSigningKey):
        await cache.get_key(issuer.jwks_url, "made-up")
    assert issuer.jwks_fetches == 2

    clock.advance(0.2)
    with pytest.raises(UnknownSigningKey):
        await cache.get_key(issuer.jwks_url, "made-up")
    assert issuer.jwks_fetches == 3


async def test_rotated_key_is_found_by_refetch(cache: JwksCache, issuer: OidcIssuer) -> None:
    await cache.get_key(issuer.jwks_url, issuer.current_kid())
    new_kid = issuer.rotate()

    keys = await asyncio.gather(*(cache.get_key(issuer.jwks_url, new_kid) for _ in range(50)))

    assert {k.kid for k in keys} == {new_kid}
    assert issuer.jwks_fetches == 2


async def test_stale_set_is_refetched_after_ttl(
    cache: JwksCache, issuer: OidcIssuer, clock: FakeClock
) -> None:
    old_kid = issuer.current_kid()
    await cache.get_key(issuer.jwks_url, old_kid)
    issuer.rotate(drop_old=True)

    clock.advance(299)
    assert (await cache.get_key(issuer.jwks_url, old_kid)).kid == old_kid
    assert issuer.jwks_fetches == 1

    clock.advance(2)
    with pytest.raises(UnknownSigningKey):
        await cache.get_key(issuer.jwks_url, old_kid)
    assert issuer.jwks_fetches == 2


async def test_stale_set_keeps_serving_while_the_issuer_fails(
    cache: JwksCache, issuer: OidcIssuer, clock: FakeClock
) -> None:
    kid = issuer.current_kid()
    await cache.get_key(issuer.jwks_url, kid)
    issuer.jwks_status = 503
    clock.advance(301)

    assert (await cache.get_key(issuer.jwks_url, kid)).kid == kid
    # A kid the last good set lacks cannot be looked up now: unavailable, not "unknown".
    with pytest.raises(JwksUnavailable):
        await cache.get_key(issuer.jwks_url, "new-kid")
    assert issuer.jwks_fetches == 2


@pytest.mark.parametrize("status", [404, 500, 503])
async def test_error_status_with_no_cached_keys_is_unavailable(
    cache: JwksCache, issuer: OidcIssuer, clock: FakeClock, status: int
) -> None:
    issuer.jwks_status = status

    for _ in range(5):
        with pytest.raises(JwksUnavailable):
            await cache.get_key(issuer.jwks_url, issuer.current_kid())
    assert issuer.jwks_fetches == 1  # failures are retried once per interval, not per request

    issuer.jwks_status = 200
    clock.advance(5)
    assert (await cache.get_key(issuer.jwks_url, issuer.current_kid())).kid
    assert issuer.jwks_fetches == 2


async def test_unreachable_issuer_is_unavailable(cache: JwksCache) -> None:
    with pytest.raises(JwksUnavailable):
        await cache.get_key(f"http://127.0.0.1:{free_port()}/certs", "any")


async def test_slow_issuer_times_out(
    session: aiohttp.ClientSession, issuer: OidcIssuer, clock: FakeClock
) -> None:
    cache = JwksCache(session, clock=clock, fetch_timeout_s=0.2)
    issuer.jwks_delay_s = 1.0

    started = time.monotonic()
    with pytest.raises(JwksUnavailable):
        await cache.get_key(issuer.jwks_url, issuer.current_kid())
    assert time.monotonic() - started < 0.9


async def test_a_cancelled_caller_does_not_cancel_the_shared_fetch(
    cache: JwksCache, issuer: OidcIssuer
) -> None:
    issuer.jwks_delay_s = 0.2
    kid = issuer.current_kid()
    impatient = asyncio.create_task(cache.get_key(issuer.jwks_url, kid))
    await asyncio.sleep(0.05)
    patient = asyncio.create_task(cache.get_key(issuer.jwks_url, kid))
    await asyncio.sleep(0)
    impatient.cancel()

    assert (await patient).kid == kid
    assert issuer.jwks_fetches == 1


# A public RSA key as a JWKS would carry it (no kid: the cases add their own).
RSA_JWK: dict[str, Any] = RSAAlgorithm.to_jwk(
    rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(), as_dict=True
)


@pytest.mark.parametrize(
    ("jwk", "kept"),
    [
        ({**RSA_JWK, "kid": "a"}, True),
        ({**RSA_JWK, "kid": "a", "alg": "PS256"}, True),
        ({**RSA_JWK}, False),  # no kid to select it by
        ({**RSA_JWK, "kid": "a", "use": "enc"}, False),
        ({**RSA_JWK, "kid": "a", "d": "secret"}, False),  # a private key, published by mistake
        ({**RSA_JWK, "kid": "a", "alg": "HS256"}, False),
        ({"kty": "oct", "kid": "a", "k": "c2VjcmV0"}, False),  # symmetric: never a verifier
        ({"kty": "EC", "kid": "a", "crv": "P-256", "x": "bad", "y": "bad"}, False),
        ("not a key", False),
    ],
)
def test_parse_jwks_keeps_only_usable_signing_keys(jwk: Any, kept: bool) -> None:
    assert ("a" in parse_jwks({"keys": [jwk]})) is kept


def test_a_key_bound_to_one_algorithm_fits_only_that_one() -> None:
    key = parse_jwks({"keys": [{**RSA_JWK, "kid": "a", "alg": "PS256"}]})["a"]

    assert key.fits("PS256") and not key.fits("RS256")


@pytest.mark.parametrize("document", [None, [], {"keys": "nope"}, {"no": "keys"}])
def test_parse_jwks_refuses_what_is_not_a_jwks(document: Any) -> None:
    with pytest.raises(JwksFetchError):
        parse_jwks(document)


async def test_issuer_discovery_points_at_its_jwks(
    session: aiohttp.ClientSession, issuer: OidcIssuer
) -> None:
    async with session.get(issuer.issuer + "/.well-known/openid-configuration") as response:
        discovery = await response.json()

    assert discovery["issuer"] == issuer.issuer
    assert discovery["jwks_uri"] == issuer.jwks_url
    assert issuer.jwks_fetches == 0
