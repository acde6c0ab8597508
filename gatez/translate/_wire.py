"""Checked reads of parsed JSON, shared by the schema modules.

Every read names what it expected and where, and raises the caller's `TranslationError`
subclass, so bad input is a clear 400/502 and never a KeyError or TypeError.
"""

from __future__ import annotations

from typing import Any

import orjson

from gatez.errors import quoted
from gatez.translate.model import TranslationError

Fail = type[TranslationError]


def load_object(raw: bytes | str, fail: Fail, what: str) -> dict[str, Any]:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise fail(f"{what} is not valid JSON: {error}") from None
    if not isinstance(value, dict):
        raise fail(f"{what} must be a JSON object")
    return value


def as_object(value: object, fail: Fail, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise fail(f"'{where}' must be an object")
    return value


def as_list(value: object, fail: Fail, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise fail(f"'{where}' must be an array")
    return value


def as_str(value: object, fail: Fail, where: str) -> str:
    if not isinstance(value, str):
        raise fail(f"'{where}' must be a string")
    return value


def opt_str(value: object, fail: Fail, where: str) -> str | None:
    return None if value is None else as_str(value, fail, where)


def opt_int(value: object, fail: Fail, where: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise fail(f"'{where}' must be an integer")
    return value


def count(value: object, fail: Fail, where: str) -> int:
    """A token count: absent or null is 0, anything else must be a non-negative integer."""
    number = opt_int(value, fail, where)
    if number is None:
        return 0
    if number < 0:
        raise fail(f"'{where}' must not be negative")
    return number


def opt_number(value: object, fail: Fail, where: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise fail(f"'{where}' must be a number")
    return value


def opt_bool(value: object, fail: Fail, where: str) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise fail(f"'{where}' must be a boolean")
    return value


def one_of(value: str, known: dict[str, Any], fail: Fail, where: str) -> Any:
    try:
        return known[value]
    except KeyError:
        raise fail(f"'{where}' has an unknown value {quoted(value)}") from None


def retry_after_seconds(header: str | None) -> float | None:
    """`Retry-After` in seconds; an HTTP-date form is not read here (it needs a clock) and
    gives None, as does anything unreadable."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def or_empty(value: object) -> object:
    """`{}` for a JSON null: an optional object read as if it were absent."""
    return {} if value is None else value
