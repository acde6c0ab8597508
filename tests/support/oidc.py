"""A local OIDC issuer for tests: real HTTP on loopback, real keys, tokens minted on demand.

It serves `/.well-known/openid-configuration` and its JWKS from a background thread, so the
data plane under test fetches keys over a socket exactly as it would from Keycloak. It can also
mint the tokens an attacker would send (`alg: none`, HS256 keyed with the public key's PEM) and
misbehave on purpose (slow or failing JWKS) to exercise the data plane's failure handling.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

KeyType = Literal["RSA", "EC"]

DISCOVERY_PATH = "/.well-known/openid-configuration"
JWKS_PATH = "/protocol/openid-connect/certs"  # Keycloak's path, so URLs look familiar

# What each signing algorithm needs from the issuer's keys.
_KEY_TYPE_FOR_ALGORITHM: dict[str, KeyType] = {
    "RS256": "RSA",
    "RS384": "RSA",
    "RS512": "RSA",
    "PS256": "RSA",
    "PS384": "RSA",
    "PS512": "RSA",
    "ES256": "EC",
}


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    key_type: KeyType
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

    def public_jwk(self) -> dict[str, Any]:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            jwk = RSAAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        else:
            jwk = ECAlgorithm.to_jwk(self.private_key.public_key(), as_dict=True)
        # No "alg": real issuers often omit it, and the data plane must not depend on it.
        return {**jwk, "kid": self.kid, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class OidcIssuer:
    """An OIDC issuer on 127.0.0.1 (free port) with one RSA and one EC P-256 signing key.

    Use as a context manager. `jwks_fetches` counts JWKS requests served (including failed
    ones); set `jwks_status` to answer the JWKS with an error, or `jwks_delay_s` to answer slowly.
    """

    def __init__(
        self,
        *,
        audience: str = "gatez",
        subject: str = "user-1",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.subject = subject
        self.jwks_status = 200
        self.jwks_delay_s = 0.0
        self._clock = clock
        self._lock = threading.Lock()
        self._kids = (f"key-{n}" for n in itertools.count(1))
        self._keys: list[_SigningKey] = [self._new_key("RSA"), self._new_key("EC")]
        self._jwks_fetches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> OidcIssuer:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        # A short poll interval: `stop` waits for the serving loop to notice, once per test.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="oidc-issuer",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the issuer is not started")
        port: int = self._server.server_address[1]
        return port

    @property
    def issuer(self) -> str:
        """The `iss` of every token minted here (the issuer's base URL, as OIDC requires)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks_url(self) -> str:
        return self.issuer + JWKS_PATH

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return self._jwks_fetches

    # -- keys ----------------------------------------------------------------------------------

    def current_kid(self, key_type: KeyType = "RSA") -> str:
        """The kid `mint` signs with by default for keys of `key_type` (the newest)."""
        return self._current(key_type).kid

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid published in the JWKS right now."""
        with self._lock:
            return tuple(k.kid for k in self._keys)

    def rotate(self, key_type: KeyType = "RSA", *, drop_old: bool = False) -> str:
        """Adds a new signing key of `key_type` and returns its kid; new tokens use it.

        With `drop_old`, the previous keys of that type leave the JWKS (tokens they signed stop
        verifying once a data plane refetches).
        """
        key = self._new_key(key_type)
        with self._lock:
            if drop_old:
                self._keys = [k for k in self._keys if k.key_type != key_type]
            self._keys.append(key)
        return key.kid

    def public_key_pem(self, kid: str | None = None) -> bytes:
        return self._key(kid, "RSA").public_pem()

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [k.public_jwk() for k in self._keys]}

    # -- tokens --------------------------------------------------------------------------------

    def claims(
        self, overrides: Mapping[str, Any] | None = None, *, ttl_s: int = 300
    ) -> dict[str, Any]:
        """Default claims (iss, aud, sub, iat, nbf, exp) with `overrides` applied.

        An override of None removes that claim, to build tokens that lack one.
        """
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": self.subject,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
        }
        for name, value in (overrides or {}).items():
            if value is None:
                claims.pop(name, None)
            else:
                claims[name] = value
        return claims

    def mint(
        self,
        claims: Mapping[str, Any] | None = None,
        *,
        kid: str | None = None,
        algorithm: str = "RS256",
        ttl_s: int = 300,
        headers: Mapping[str, Any] | None = None,
    ) -> str:
        """A signed token with the default claims plus `claims` (None values remove a claim).

        `kid` picks one of the issuer's keys; a kid the issuer does not have is still written
        into the header (the token is then signed with the current key), which is how a test
        sends a token naming an unknown key. `headers` are merged into the JOSE header (None
        removes an entry, e.g. `{"kid": None}`). A negative `ttl_s` mints an expired token.
        """
        if algorithm not in _KEY_TYPE_FOR_ALGORITHM:
            raise ValueError(f"the test issuer cannot sign {algorithm}")
        key_type = _KEY_TYPE_FOR_ALGORITHM[algorithm]
        key = self._key(kid, key_type) if kid in self.kids else self._current(key_type)
        header = {"kid": kid or key.kid, **(headers or {})}
        header = {name: value for name, value in header.items() if value is not None}
        return jwt.encode(
            self.claims(claims, ttl_s=ttl_s), key.private_key, algorithm=algorithm, headers=header
        )

    def mint_unsigned(self, claims: Mapping[str, Any] | None = None, *, ttl_s: int = 300) -> str:
        """An `alg: none` token with an empty signature: refused by any sane verifier."""
        header = {"alg": "none", "typ": "JWT", "kid": self.current_kid()}
        return _compact(header, self.claims(claims, ttl_s=ttl_s), lambda _: b"")

    def mint_hs256_with_public_key(
        self, claims: Mapping[str, Any] | None = None, *, kid: str | None = None, ttl_s: int = 300
    ) -> str:
        """The algorithm-confusion attack: HS256 keyed with the RSA public key's PEM.

        A verifier that lets the token's `alg` choose how to use "the key" accepts this. PyJWT
        refuses to build it (rightly), so it is assembled by hand.
        """
        key = self._key(kid, "RSA")
        secret = key.public_pem()
        header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
        return _compact(
            header,
            self.claims(claims, ttl_s=ttl_s),
            lambda signing_input: hmac.new(secret, signing_input, hashlib.sha256).digest(),
        )

    # -- internals -----------------------------------------------------------------------------

    def _new_key(self, key_type: KeyType) -> _SigningKey:
        private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if key_type == "RSA":
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private_key = ec.generate_private_key(ec.SECP256R1())
        return _SigningKey(next(self._kids), key_type, private_key)

    def _current(self, key_type: KeyType) -> _SigningKey:
        with self._lock:
            for key in reversed(self._keys):
                if key.key_type == key_type:
                    return key
        raise LookupError(f"the issuer has no {key_type} key")

    def _key(self, kid: str | None, key_type: KeyType) -> _SigningKey:
        if kid is None:
            return self._current(key_type)
        with self._lock:
            for key in self._keys:
                if key.kid == kid:
                    if key.key_type != key_type:
                        raise ValueError(f"key {kid!r} is {key.key_type}, not {key_type}")
                    return key
        raise LookupError(f"the issuer has no key {kid!r}")

    def _discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": sorted(_KEY_TYPE_FOR_ALGORITHM),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
        }

    def _serve_jwks(self) -> tuple[int, bytes]:
        with self._lock:
            self._jwks_fetches += 1
        if self.jwks_delay_s:
            time.sleep(self.jwks_delay_s)  # a handler thread of its own: blocks nobody else
        if self.jwks_status != 200:
            return self.jwks_status, b'{"error":"unavailable"}'
        return 200, orjson.dumps(self.jwks())


def _handler_for(issuer: OidcIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == DISCOVERY_PATH:
                status, body = 200, orjson.dumps(issuer._discovery())
            elif self.path == JWKS_PATH:
                status, body = issuer._serve_jwks()
            else:
                status, body = 404, b'{"error":"not found"}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output quiet

    return Handler


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _compact(
    header: Mapping[str, Any], claims: Mapping[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    signing_input = _b64url(orjson.dumps(header)) + b"." + _b64url(orjson.dumps(claims))
    return (signing_input + b"." + _b64url(sign(signing_input))).decode()
