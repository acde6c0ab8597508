"""The pipeline: stages in one fixed order, run phase by phase on a Flow.

A stage is a plain object with any of the phase methods below. A phase method returns a verdict
(Continue, Respond or Hold) or an awaitable of one (a coroutine method, or a plain method that
must wait this time — a JWT whose keys are not cached). The pipeline indexes stages by phase
once, so a request only visits the stages that care about a phase, and runs each phase as a
plain call for as long as its stages answer at once: `start_*` returns the verdict itself, or,
from the first stage that must wait, a coroutine for the rest, which the adapter runs in a task.
Holds are waited out here, so adapters only ever see Continue or Respond.

Deferred checks: a stage may start a check and let the request go on while it runs
(`Flow.defer`) — the rate limit's Redis round trip overlaps Envoy sending the request body. The
pipeline settles deferred checks before anything can reach the upstream: at the end of the
request-headers phase when no body phase follows, else before the request-body stages. A deferred
check's refusal wins over the verdicts of the stages after it, as if it had answered in place.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from functools import partial
from typing import Any, Protocol, runtime_checkable

from gatez.errors import GatewayError
from gatez.pipeline.flow import CONTINUE, BodyMode, Continue, Flow, Hold, Respond, Verdict
from gatez.pipeline.futures import copy_outcome

log = logging.getLogger("gatez.pipeline")

StageResult = Verdict | Awaitable[Verdict]
PhaseMethod = Callable[[Flow], StageResult]
# What starting a phase gives: the verdict, or the rest of the phase to await (a coroutine to
# run in a task, or a future that callbacks will complete).
Outcome = (
    Continue
    | Respond
    | Coroutine[Any, Any, Continue | Respond]
    | asyncio.Future[Continue | Respond]
)


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

    def __init__(self, stages: Sequence[tuple[object, PhaseMethod]]) -> None:
        self._stages = tuple(stages)

    def start(self, flow: Flow, first: int = 0) -> Outcome:
        """Runs stages from `first` as plain calls until one must wait (see the module doc)."""
        stages = self._stages
        for index in range(first, len(stages)):
            stage, method = stages[index]
            try:
                result = method(flow)
            except Exception as error:
                result = _from_error(stage, error)
            if result is CONTINUE or isinstance(result, Continue):
                continue
            if isinstance(result, Respond):
                return _answered(flow, result)
            return self._resume(flow, index, result)
        return CONTINUE

    async def _resume(
        self, flow: Flow, index: int, pending: Hold | Awaitable[Verdict]
    ) -> Continue | Respond:
        stage = self._stages[index][0]
        try:
            verdict = pending if isinstance(pending, Hold) else await pending
            if isinstance(verdict, Hold):
                verdict = await _wait(verdict)
        except Exception as error:
            verdict = _from_error(stage, error)
        if isinstance(verdict, Respond):
            return _answered(flow, verdict)
        return await settle(self.start(flow, index + 1))


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

    def start_request_headers(self, flow: Flow) -> Outcome:
        outcome = self.on_request_headers.start(flow)
        if not flow.deferred:
            return outcome
        if isinstance(outcome, Continue) and flow.request_body_mode is not BodyMode.NONE:
            return outcome  # settled before the body stages
        return _settle_deferred(flow, outcome)

    def start_request_body(self, flow: Flow) -> Outcome:
        if flow.deferred:
            # Usually the check finished while the proxy was reading the body: no task then.
            settled = _settled_now(flow)
            if settled is None:
                return self._body_when_settled(flow)
            if isinstance(settled, Respond):
                return settled
        return self.on_request_body.start(flow)

    def start_response_headers(self, flow: Flow) -> Outcome:
        return self.on_response_headers.start(flow)

    def start_response_body(self, flow: Flow) -> Outcome:
        return self.on_response_body.start(flow)

    async def request_headers(self, flow: Flow) -> Continue | Respond:
        return await settle(self.start_request_headers(flow))

    async def request_body(self, flow: Flow) -> Continue | Respond:
        return await settle(self.start_request_body(flow))

    async def response_headers(self, flow: Flow) -> Continue | Respond:
        return await settle(self.start_response_headers(flow))

    async def response_body(self, flow: Flow) -> Continue | Respond:
        return await settle(self.start_response_body(flow))

    def _body_when_settled(self, flow: Flow) -> asyncio.Future[Continue | Respond]:
        """The body phase, run from the callback of the last deferred check to finish: no
        task and no extra loop turn between Redis answering and the proxy being answered."""
        result: asyncio.Future[Continue | Respond] = asyncio.get_running_loop().create_future()
        checks = [check for _, check in flow.deferred]

        def resume(_: object) -> None:
            if result.done():
                return  # the exchange is over (the adapter cancelled it)
            if any(check.cancelled() for check in checks):
                result.cancel()  # dropped with its flow
                return
            settled = _settled_now(flow)
            if settled is None:
                return  # another check still runs; its callback resumes
            outcome = settled if isinstance(settled, Respond) else self.on_request_body.start(flow)
            if isinstance(outcome, Continue | Respond):
                result.set_result(outcome)
            else:
                # A body stage that must wait: the rest runs in a task after all.
                chain = asyncio.ensure_future(outcome)
                chain.add_done_callback(partial(copy_outcome, result))

        for check in checks:
            check.add_done_callback(resume)
        return result

    def done_now(self, flow: Flow) -> None:
        """Runs on_done hooks that are plain methods (all of them, when `done_waits` is False)."""
        _drop_deferred(flow)
        for stage in self._done_plain:
            try:
                stage.on_done(flow)
            except Exception:
                log.exception("stage %s failed in on_done", type(stage).__name__)

    async def done(self, flow: Flow) -> None:
        _drop_deferred(flow)
        for stage in self._done:
            try:
                result = stage.on_done(flow)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("stage %s failed in on_done", type(stage).__name__)


async def settle(outcome: Outcome) -> Continue | Respond:
    """The verdict of a started phase, awaiting the rest of it if it had to wait."""
    if isinstance(outcome, Continue | Respond):
        return outcome
    return await outcome


async def _settle_deferred(flow: Flow, outcome: Outcome) -> Continue | Respond:
    verdict = await settle(outcome)
    if flow.deferred:
        await asyncio.wait([check for _, check in flow.deferred])
    refusal = _settled_now(flow)
    return refusal if isinstance(refusal, Respond) else verdict


def _settled_now(flow: Flow) -> Continue | Respond | None:
    """The deferred checks' verdict if all of them have finished (None if some still run)."""
    deferred = flow.deferred
    if not all(check.done() for _, check in deferred):
        return None
    flow.deferred = []
    for stage, check in deferred:
        try:
            checked = check.result()
        except Exception as error:
            checked = _from_error(stage, error)
        if isinstance(checked, Respond):
            # It answers in its own stage's place, before whatever came after it.
            flow.error = checked.reason or "gateway_response"
            return checked
    return CONTINUE


def _drop_deferred(flow: Flow) -> None:
    deferred, flow.deferred = flow.deferred, []
    _drop(deferred)


def _drop(deferred: Sequence[tuple[object, asyncio.Future[Continue | Respond]]]) -> None:
    """Checks nobody will wait for: cancelled, or their outcome read so none is reported lost."""
    for _, check in deferred:
        if check.done():
            if not check.cancelled():
                check.exception()
        else:
            check.cancel()


def _bind(stages: Sequence[object], contract: type, method: str) -> PhaseRunner:
    return PhaseRunner([(s, getattr(s, method)) for s in stages if isinstance(s, contract)])


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
