"""What a stage answers in a phase: go on, answer the client now, or wait for a decision."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Final

from gatez.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Continue:
    """Go on to the next stage, and on to the upstream after the last one."""


CONTINUE: Final = Continue()


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the client now with this status and body; the upstream is not (or no more) used."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("content-type", "application/json"),)
    # Why the gateway answered itself, for the request log ("rate_limited", "cache_hit", ...).
    reason: str = ""
    # The error this answers, when it is one: rendered again in the client's API format.
    error: GatewayError | None = None

    @classmethod
    def from_error(cls, error: GatewayError) -> Respond:
        headers = (("content-type", "application/json"), *error.headers())
        return cls(error.http_status, error.json_body(), headers, error.reason, error)


# How a phase ends, once every wait in it is over.
Decision = Continue | Respond


@dataclass(frozen=True, slots=True)
class Hold:
    """Wait for an outside decision (a human approval); `decision` yields the real verdict.

    The pipeline tells the adapter before it waits (`Flow.on_hold`), so the proxy gives the
    request that long: Envoy gets `override_message_timeout`, APISIX simply waits. Without a
    decision within `timeout_s` (at most `MAX_HOLD_S`) the request gets a 504.
    """

    decision: Awaitable[Decision]
    timeout_s: float


# The longest a request may be held; the Envoy filter's `max_message_timeout` matches it.
MAX_HOLD_S: Final = 900.0

Verdict = Continue | Respond | Hold
