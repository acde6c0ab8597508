"""Small helpers for callback-driven futures on the hot path (no task per request)."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


def copy_outcome(target: asyncio.Future[T], source: asyncio.Future[T]) -> None:
    """Gives `target` the outcome of the finished `source` (a result, an error or a
    cancellation); does nothing when `target` is already done (its waiter gave up)."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif (error := source.exception()) is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
