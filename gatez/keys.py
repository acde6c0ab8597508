"""Gatez API key secrets: generated with 256 bits of entropy, stored only as SHA-256 digests.

A fast digest is enough for random secrets of this size (no dictionary to attack), and keeps
key lookup on the hot path to one hash and one dict access.
"""

from __future__ import annotations

import hashlib
import secrets

SECRET_PREFIX = "gz-"
# Imported secrets (migrations, a known demo key) are chosen by people, so they must at least be
# long; generated ones are 46 characters.
MIN_IMPORTED_LENGTH = 20
MAX_LENGTH = 256


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def imported_secret_problem(secret: str) -> str | None:
    """Why `secret` cannot be imported as an API key, or None when it can."""
    if not MIN_IMPORTED_LENGTH <= len(secret) <= MAX_LENGTH:
        return f"secret must be {MIN_IMPORTED_LENGTH} to {MAX_LENGTH} characters"
    if not secret.isascii() or not secret.isprintable() or " " in secret:
        return "secret must be printable ASCII without spaces (it travels in a header)"
    return None


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """Enough of a secret to recognise it in a listing, too little to use it."""
    return secret[:10]
