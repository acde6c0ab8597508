"""The pipeline: stages in one fixed order, run phase by phase on a Flow.

A stage is a plain object with any of the phase methods below. A phase method is either a plain
method, returning Continue or Respond, or a coroutine, which may also return Hold. The pipeline
indexes stages by phase once, so a request only visits the stages that care about a phase, and
notes which phases have a coroutine stage: a phase without one runs as a plain call (`now`),
with no task and no event-loop turn — the common case for body and response phases. Holds are
waited out here, so adapters only ever see Continue or Respond.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

from extproc.flow import CONTINUE, Continue, Flow, Hold, Respond, Verdict
from gatez.errors import GatewayError

log = logging.getLogger("gatez.pipeline")

StageResult = Verdict | Awaitable[Verdict]
PhaseMethod = Callable[[Flow], StageResult]


@runtime_checkable
class OnRequestHeaders(Protocol):
    def on_request_headers(self, flow: Flow) -> StageResult:
        """Fires when the request line and headers have arrived."""
        ...


@runtime_checkable
class OnRequestBody(Protocol):
    def on_request_body(self, flow: Flow) -> StageResult:
        """Fires once with the whole request body, when a stage asked for it."""
        ...


@runtime_checkable
class OnResponseHeaders(Protocol):
    def on_response_headers(self, flow: Flow) -> StageResult:
        """Fires when the upstream's status and headers have arrived."""
        ...


@runtime_checkable
class OnResponseBody(Protocol):
    def on_response_body(self, flow: Flow) -> StageResult:
        """Fires per chunk (streamed) or once (buffered) with `flow.response_chunk`."""
        ...


@runtime_checkable
class OnDone(Protocol):
    def on_done(self, flow: Flow) -> Awaitable[None] | None:
        """Fires exactly once when the exchange is over, however it ended. Must not raise."""
        ...


class DecisionTimeout(GatewayError):
    http_status = 504
    kind = "decision_timeout"


INTERNAL_ERROR: Respond = Respond.from_error(GatewayError("internal gateway error"))


class PhaseRunner:
    """The stages of one phase, in pipeline order."""

    def __init__(self, name: str, stages: Sequence[tuple[object, PhaseMethod]]) -> None:
        self.name = name
        self._stages = tuple(stages)
        # True when some stage is a coroutine: the phase must then run in a task (`run`).
        self.waits = any(inspect.iscoroutinefunction(method) for _, method in self._stages)

    def now(self, flow: Flow) -> Continue | Respond:
        """Runs a phase that has no coroutine stage, as a plain call."""
        for stage, method in self._stages:
            try:
                verdict = method(flow)
                if not isinstance(verdict, Continue | Respond):
                    raise TypeError(f"{self.name} returned {verdict!r}; only coroutines may hold")
            except Exception as error:
                verdict = _from_error(stage, error)
            if isinstance(verdict, Respond):
                return _answered(flow, verdict)
        return CONTINUE

    async def run(self, flow: Flow) -> Continue | Respond:
        """Runs the phase, awaiting coroutine stages and holds."""
        for stage, method in self._stages:
            try:
                result = method(flow)
                verdict = await result if inspect.isawaitable(result) else result
                if isinstance(verdict, Hold):
                    verdict = await _wait(verdict)
            except Exception as error:
                verdict = _from_error(stage, error)
            if isinstance(verdict, Respond):
                return _answered(flow, verdict)
        return CONTINUE


class Pipeline:
    """Runs the stages of each phase in order until one of them does not continue."""

    def __init__(self, stages: Sequence[object]) -> None:
        self.stages = tuple(stages)
        self.on_request_headers = _bind(stages, OnRequestHeaders, "on_request_headers")
        self.on_request_body = _bind(stages, OnRequestBody, "on_request_body")
        self.on_response_headers = _bind(stages, OnResponseHeaders, "on_response_headers")
        self.on_response_body = _bind(stages, OnResponseBody, "on_response_body")
        self._done = [s for s in stages if isinstance(s, OnDone)]
        self._done_plain = [s for s in self._done if not inspect.iscoroutinefunction(s.on_done)]
        # When no on_done hook is a coroutine, `done_now` finishes a flow without a task.
        self.done_waits = len(self._done_plain) < len(self._done)

    async def request_headers(self, flow: Flow) -> Continue | Respond:
        return await self.on_request_headers.run(flow)

    async def request_body(self, flow: Flow) -> Continue | Respond:
        return await self.on_request_body.run(flow)

    async def response_headers(self, flow: Flow) -> Continue | Respond:
        return await self.on_response_headers.run(flow)

    async def response_body(self, flow: Flow) -> Continue | Respond:
        return await self.on_response_body.run(flow)

    def done_now(self, flow: Flow) -> None:
        """Runs on_done hooks that are plain methods (all of them, when `done_waits` is False)."""
        for stage in self._done_plain:
            try:
                stage.on_done(flow)
            except Exception:
                log.exception("stage %s failed in on_done", type(stage).__name__)

    async def done(self, flow: Flow) -> None:
        for stage in self._done:
            try:
                result = stage.on_done(flow)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("stage %s failed in on_done", type(stage).__name__)


def _bind(stages: Sequence[object], contract: type, method: str) -> PhaseRunner:
    return PhaseRunner(method, [(s, getattr(s, method)) for s in stages if isinstance(s, contract)])


def _from_error(stage: object, error: Exception) -> Continue | Respond:
    """What an exception in a stage means: its public answer, or on past a fail-open stage."""
    if isinstance(error, GatewayError):
        return Respond.from_error(error)
    if getattr(stage, "fail_open", False):
        log.exception("fail-open stage %s failed; continuing", type(stage).__name__)
        return CONTINUE
    log.exception("stage %s failed", type(stage).__name__, exc_info=error)
    return INTERNAL_ERROR


def _answered(flow: Flow, verdict: Respond) -> Respond:
    if not flow.error:
        flow.error = verdict.reason or "gateway_response"
    return verdict


async def _wait(hold: Hold) -> Continue | Respond:
    try:
        return await asyncio.wait_for(hold.decision, hold.timeout_s)
    except TimeoutError:
        return Respond.from_error(DecisionTimeout("no decision came in time"))
