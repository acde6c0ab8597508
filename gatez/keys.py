"""Gatez API key secrets: generated with 256 bits of entropy, stored only as SHA-256 digests.

A fast digest is enough for random secrets of this size (no dictionary to attack), and keeps
key lookup on the hot path to one hash and one dict access.
"""

from __future__ import annotations

import hashlib
import secrets

SECRET_PREFIX = "gz-"


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """Enough of a secret to recognise it in a listing, too little to use it."""
    return secret[:10]
