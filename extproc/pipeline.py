"""The pipeline: stages in one fixed order, run phase by phase on a Flow.

A stage is a plain object with any of the phase methods below. The pipeline indexes stages by
phase once, so a request only visits the stages that care about a phase. Holds are waited out
here, so adapters only ever see Continue or Respond.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from extproc.flow import CONTINUE, Continue, Flow, Hold, Respond, Verdict
from gatez.errors import GatewayError

log = logging.getLogger("gatez.pipeline")

PhaseMethod = Callable[[Flow], Awaitable[Verdict]]


@runtime_checkable
class OnRequestHeaders(Protocol):
    async def on_request_headers(self, flow: Flow) -> Verdict:
        """Fires when the request line and headers have arrived."""
        ...


@runtime_checkable
class OnRequestBody(Protocol):
    async def on_request_body(self, flow: Flow) -> Verdict:
        """Fires once with the whole request body, when a stage asked for it."""
        ...


@runtime_checkable
class OnResponseHeaders(Protocol):
    async def on_response_headers(self, flow: Flow) -> Verdict:
        """Fires when the upstream's status and headers have arrived."""
        ...


@runtime_checkable
class OnResponseBody(Protocol):
    async def on_response_body(self, flow: Flow) -> Verdict:
        """Fires per chunk (streamed) or once (buffered) with `flow.response_chunk`."""
        ...


@runtime_checkable
class OnDone(Protocol):
    async def on_done(self, flow: Flow) -> None:
        """Fires exactly once when the exchange is over, however it ended. Must not raise."""
        ...


class DecisionTimeout(GatewayError):
    http_status = 504
    kind = "decision_timeout"


INTERNAL_ERROR: Respond = Respond.from_error(GatewayError("internal gateway error"))


class Pipeline:
    """Runs the stages of each phase in order until one of them does not continue."""

    def __init__(self, stages: Sequence[object]) -> None:
        self.stages = tuple(stages)
        self._request_headers = _bind(stages, OnRequestHeaders, "on_request_headers")
        self._request_body = _bind(stages, OnRequestBody, "on_request_body")
        self._response_headers = _bind(stages, OnResponseHeaders, "on_response_headers")
        self._response_body = _bind(stages, OnResponseBody, "on_response_body")
        self._done = [s for s in stages if isinstance(s, OnDone)]

    async def request_headers(self, flow: Flow) -> Continue | Respond:
        return await _run(self._request_headers, flow)

    async def request_body(self, flow: Flow) -> Continue | Respond:
        return await _run(self._request_body, flow)

    async def response_headers(self, flow: Flow) -> Continue | Respond:
        return await _run(self._response_headers, flow)

    async def response_body(self, flow: Flow) -> Continue | Respond:
        return await _run(self._response_body, flow)

    async def done(self, flow: Flow) -> None:
        for stage in self._done:
            try:
                await stage.on_done(flow)
            except Exception:
                log.exception("stage %s failed in on_done", type(stage).__name__)


def _bind(
    stages: Sequence[object], contract: type, method: str
) -> tuple[tuple[object, PhaseMethod], ...]:
    return tuple((s, getattr(s, method)) for s in stages if isinstance(s, contract))


async def _run(stages: tuple[tuple[object, PhaseMethod], ...], flow: Flow) -> Continue | Respond:
    for stage, method in stages:
        try:
            verdict = await method(flow)
            if isinstance(verdict, Hold):
                verdict = await _wait(verdict)
        except GatewayError as error:
            verdict = Respond.from_error(error)
        except Exception:
            if getattr(stage, "fail_open", False):
                log.exception("fail-open stage %s failed; continuing", type(stage).__name__)
                continue
            log.exception("stage %s failed", type(stage).__name__)
            verdict = INTERNAL_ERROR
        if isinstance(verdict, Respond):
            if not flow.error:
                flow.error = verdict.reason or "gateway_response"
            return verdict
    return CONTINUE


async def _wait(hold: Hold) -> Continue | Respond:
    try:
        return await asyncio.wait_for(hold.decision, hold.timeout_s)
    except TimeoutError:
        return Respond.from_error(DecisionTimeout("no decision came in time"))
