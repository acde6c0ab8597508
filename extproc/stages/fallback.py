"""Fallback chains: how each call went, told to the shared circuit state.

Model routing picks a chain's first target whose circuit is not open (`CircuitBreaker.pick`,
one Redis round trip, only for aliases with fallbacks). When the exchange is over this stage
reports the outcome: a 429, a 5xx — the proxy's own 502/503/504 for a provider it could not
reach or that did not answer included — counts against the target's circuit, with the
provider's `Retry-After`; any other answer is a success (a 400 is the client's fault, not the
provider's). N failures open the circuit, and the next calls go to the next target until a
half-open probe finds the provider well again.
"""

from __future__ import annotations

from extproc.circuit import Attempt, CircuitBreaker, is_failure_status, parse_retry_after
from gatez.pipeline import Flow, Stage


class FallbackOutcome(Stage):
    """Reports each chain call's outcome to its target's circuit (see the module doc)."""

    def __init__(self, circuits: CircuitBreaker) -> None:
        self._circuits = circuits

    def on_done(self, flow: Flow) -> None:
        llm = flow.llm
        if llm is None or not llm.circuit:
            return
        status = flow.response_status
        if status == 0:
            return  # the exchange ended before any answer: nothing is known of the provider
        failed = is_failure_status(status)
        self._circuits.record(
            Attempt(llm.circuit, llm.probe, llm.counted),
            success=not failed,
            retry_after_s=parse_retry_after(flow.response_headers.get("retry-after"))
            if failed
            else None,
        )
