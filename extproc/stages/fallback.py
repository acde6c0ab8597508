"""Fallback chains: a call that fails moves on, and each outcome is told to the circuits.

Model routing picks a chain's targets whose circuits are not open (`CircuitBreaker.pick`, one
Redis round trip, only for aliases with fallbacks) and routes to the first. When that target
answers 429 or 5xx, or cannot be reached, before anything reached the client, the adapter calls
`fail_over` and runs the request-body phase once more: model routing routes to the next target of
the plan, translated for its schema. APISIX's plugin makes the provider call itself and is told
to call that target; behind Envoy the route's retries move the call through the chain's cluster,
and its upstream ext_proc routes each attempt this way (`extproc.envoy_chains`).

When the exchange is over, `FallbackOutcome` reports to the circuits: every failed attempt, and
the final one — a 429, a 5xx (the proxy's own 502/503/504 for a provider it could not reach or
that did not answer included) counts against its target, with the provider's `Retry-After`; any
other answer is a success (a 400 is the client's fault, not the provider's). N failures open a
circuit, and the next calls skip that target until a half-open probe finds it well again.
"""

from __future__ import annotations

from extproc.circuit import Attempt, CircuitBreaker, is_failure_status, parse_retry_after
from gatez.pipeline import BodyMode, Flow, Stage


def fail_over(flow: Flow, outcome: str, retry_after: str | None) -> bool:
    """The current attempt failed (`outcome`: its status, or why it got none) before anything
    reached the client: True when the chain has another target, and the flow is ready for the
    request-body phase to run again (the client's body restored, the response forgotten)."""
    llm = flow.llm
    if llm is None or not llm.plan:
        return False
    llm.failed.append((llm.circuit, llm.probe, llm.counted, parse_retry_after(retry_after)))
    llm.tried.append(f"{llm.circuit}={outcome}")
    # Reported as failed; until routing names the next target, no final outcome is this one's
    # (a next target that cannot take the request answers 400: not this target's success).
    llm.circuit = ""
    flow.request_body = llm.client_body
    flow.upstream_reached = False
    flow.response_status = 0
    flow.response_headers = {}
    flow.response_body_mode = BodyMode.NONE
    flow.first_byte_ns = None
    flow.error = ""
    return True


class FallbackOutcome(Stage):
    """Reports each chain call's attempts to their targets' circuits (see the module doc)."""

    def __init__(self, circuits: CircuitBreaker) -> None:
        self._circuits = circuits

    def on_done(self, flow: Flow) -> None:
        llm = flow.llm
        if llm is None:
            return
        for circuit, probe, counted, retry_after_s in llm.failed:
            self._circuits.record(
                Attempt(circuit, probe, counted), success=False, retry_after_s=retry_after_s
            )
        status = flow.response_status
        if not llm.circuit or status == 0:
            return  # the exchange ended before any answer: nothing is known of the provider
        failed = is_failure_status(status)
        self._circuits.record(
            Attempt(llm.circuit, llm.probe, llm.counted),
            success=not failed,
            retry_after_s=parse_retry_after(flow.response_headers.get("retry-after"))
            if failed
            else None,
        )
