"""The deployment's own secrets: the data-plane credential, and the secret key that seals provider
credentials at rest.

Each comes from an environment variable or from a file (mode 0600). The control service creates
a missing file on its first start; a data plane never does (a key it made up could open nothing),
it fails at start naming what to set. A file or variable may list several values, newest first:
the first is the one in use, the others are still accepted (tokens) or still open what they
sealed (keys), so either can be rotated without downtime.

Sealing is AES-256-GCM (`cryptography`) with a fresh 96-bit nonce per secret and the provider's
name as associated data: a sealed key copied onto another provider does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gatez.errors import InvalidPolicy, quoted
from gatez.settings import Settings
from gatez.v1 import policy_pb2

SECRET_KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
DATAPLANE_TOKEN_PREFIX: Final = "gzdp_"
# Binds a sealed secret to what it is and whose it is.
ASSOCIATED_DATA_PREFIX: Final = b"gatez.v1.ProviderCredential\x00"
KEY_ID_DOMAIN: Final = b"gatez secret key id\x00"
SEPARATORS: Final = re.compile(r"[\s,]+")

log = logging.getLogger("gatez.secrets")


class SecretConfigError(RuntimeError):
    """A secret is missing or malformed; raised at start, never at request time."""


def new_secret_key() -> str:
    """A fresh AES-256 key, base64 (the format of GATEZ_SECRET_KEY and its key file)."""
    return base64.b64encode(secrets.token_bytes(SECRET_KEY_BYTES)).decode()


def new_dataplane_token() -> str:
    """A fresh data-plane credential: 256 random bits behind a recognisable prefix."""
    return DATAPLANE_TOKEN_PREFIX + secrets.token_urlsafe(32)


def read_secret_file(path: Path, *, generate: Callable[[], str] | None = None) -> str:
    """The content of a secret file; when it is missing, a value from `generate` written there
    first (mode 0600, never replacing a file another process created meanwhile), or, without
    `generate`, SecretConfigError."""
    try:
        content = _read_private(path)
    except FileNotFoundError:
        if generate is None:
            raise SecretConfigError(f"{path} does not exist") from None
        _create_private(path, generate() + "\n")
        log.info("created %s", path)
        content = _read_private(path)
    if not content.strip():
        raise SecretConfigError(f"{path} is empty")
    return content


def _read_private(path: Path) -> str:
    with path.open(encoding="ascii") as file:
        mode = stat.S_IMODE(os.fstat(file.fileno()).st_mode)
        if mode & 0o077:
            log.warning(
                "%s is readable by others (mode %o); it holds a secret: chmod 600", path, mode
            )
        return file.read()


def _create_private(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first: theirs is the one to use
    with os.fdopen(fd, "w", encoding="ascii") as file:
        file.write(content)
        file.flush()
        os.fsync(file.fileno())


def _values(text: str) -> list[str]:
    return [value for value in SEPARATORS.split(text) if value]


def _source(
    value: str, path: Path, variable: str, generate: Callable[[], str] | None, what: str
) -> tuple[list[str], str]:
    """The listed values and where they came from: the variable when set, else its file. A
    secret that cannot be read is a SecretConfigError saying which setting to give."""
    if value:
        return _values(value), variable
    try:
        return _values(read_secret_file(path, generate=generate)), str(path)
    except (SecretConfigError, OSError, UnicodeDecodeError) as error:
        raise SecretConfigError(
            f"no {what} ({error}): set {variable} or {variable}_FILE to the control service's"
        ) from None


def dataplane_tokens(settings: Settings, *, create: bool) -> tuple[str, ...]:
    """The data-plane credentials, the one data planes send first. `create` (the control
    service) writes a fresh token file when there is none."""
    tokens, _ = _source(
        settings.dataplane_token,
        settings.dataplane_token_file,
        "GATEZ_DATAPLANE_TOKEN",
        new_dataplane_token if create else None,
        "data-plane credential",
    )
    return tuple(tokens)


def secret_box(settings: Settings, *, create: bool) -> SecretBox:
    """The SecretBox of GATEZ_SECRET_KEY or its key file. `create` (the control service) writes
    a fresh key file when there is none."""
    encoded, source = _source(
        settings.secret_key,
        settings.secret_key_file,
        "GATEZ_SECRET_KEY",
        new_secret_key if create else None,
        "secret key",
    )
    keys = []
    for position, value in enumerate(encoded, start=1):
        try:
            key = base64.b64decode(value, validate=True)
        except binascii.Error:
            key = b""
        if len(key) != SECRET_KEY_BYTES:
            # The position, never the value: it is a secret, however malformed.
            raise SecretConfigError(
                f"secret key {position} in {source} is not {SECRET_KEY_BYTES} bytes in base64"
            )
        keys.append(key)
    return SecretBox(keys)


def key_id(key: bytes) -> str:
    """A key's public name: 64 bits of a domain-separated SHA-256, enough to tell keys apart."""
    return hashlib.sha256(KEY_ID_DOMAIN + key).hexdigest()[:16]


class SecretBox:
    """Seals provider credentials with the first key; opens them with any key it holds."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise SecretConfigError("a SecretBox needs at least one key")
        self._ciphers = {key_id(key): AESGCM(key) for key in keys}
        self.key_id = key_id(keys[0])

    @classmethod
    def generate(cls) -> SecretBox:
        """A box with a fresh random key (tests, tools)."""
        return cls([secrets.token_bytes(SECRET_KEY_BYTES)])

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._ciphers)

    def seal(self, provider: str, api_key: str) -> policy_pb2.ProviderCredential:
        """`api_key` sealed for `provider` with the current key."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._ciphers[self.key_id].encrypt(
            nonce, api_key.encode(), _associated_data(provider)
        )
        return policy_pb2.ProviderCredential(
            provider=provider, sealed_api_key=nonce + sealed, key_id=self.key_id
        )

    def open_credential(self, credential: policy_pb2.ProviderCredential) -> str:
        """The clear secret of a sealed credential, or InvalidPolicy saying why it cannot be."""
        provider = quoted(credential.provider)
        cipher = self._ciphers.get(credential.key_id)
        if cipher is None:
            raise InvalidPolicy(
                f"the credential of provider {provider} is sealed with secret key "
                f"{quoted(credential.key_id, 16)}, which this process does not hold (it holds "
                f"{', '.join(sorted(self._ciphers))}): GATEZ_SECRET_KEY or GATEZ_SECRET_KEY_FILE "
                "must give it the control service's key"
            )
        sealed = credential.sealed_api_key
        try:
            clear = cipher.decrypt(
                sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], _associated_data(credential.provider)
            )
            return clear.decode()
        except (InvalidTag, ValueError):
            raise InvalidPolicy(
                f"the credential of provider {provider} does not open with secret key "
                f"{credential.key_id}: it was altered, or sealed for another provider"
            ) from None

    def reseal(self, credential: policy_pb2.ProviderCredential) -> policy_pb2.ProviderCredential:
        """The same secret sealed with the current key (a clear one is sealed)."""
        clear = credential.api_key or self.open_credential(credential)
        return self.seal(credential.provider, clear)


def _associated_data(provider: str) -> bytes:
    return ASSOCIATED_DATA_PREFIX + provider.encode()


def all_credentials(
    snapshot: policy_pb2.PolicySnapshot,
) -> Iterator[policy_pb2.ProviderCredential]:
    """Every secret `snapshot` carries: the providers' and the MCP servers' (mutable in place)."""
    yield from snapshot.provider_credentials
    yield from snapshot.mcp_server_credentials


def seal_clear_credentials(snapshot: policy_pb2.PolicySnapshot, box: SecretBox) -> int:
    """Seals, in place, every credential of `snapshot` that is still in clear (the providers'
    and the MCP servers'); returns how many."""
    count = 0
    for credential in all_credentials(snapshot):
        if credential.api_key:
            credential.CopyFrom(box.reseal(credential))
            count += 1
    return count


def clear_credential_providers(snapshot: policy_pb2.PolicySnapshot) -> list[str]:
    """The names (providers, and "mcp:<tenant>/<server>") whose credential `snapshot` carries
    in clear."""
    return [c.provider for c in all_credentials(snapshot) if c.api_key]
