"""The pipeline: stages in one fixed order, run phase by phase on a Flow.

The pipeline indexes its stages by phase once, so a request only visits the stages that act in
a phase, and runs each phase as plain calls for as long as its stages answer at once: `start_*`
returns the decision itself, or, from the first stage that must wait, an awaitable of the rest
(a coroutine the adapter runs in a task, or a future that callbacks complete).

Waits are safe by construction:
- A `Hold` is announced to the adapter (`Flow.on_hold`) before it is waited out here, so the
  proxy gives the request that long; adapters only ever see Continue or Respond.
- Deferred checks (`Flow.defer`: a stage lets the request go on while a check runs, as the
  rate limit's Redis round trip overlaps Envoy sending the body) are settled before anything can
  reach the upstream: at the end of the request-headers phase when no body phase follows, before
  the body stages when one does, and at the end of the body phase for checks the body stages
  started. A deferred refusal wins over the answers of the stages after its own, as if it had
  answered in place. Response phases cannot defer (`Flow.defer` refuses).
- An exception is its stage's answer: a `GatewayError` answers with itself, anything else is a
  generic 500 (or, for a fail-open stage, logged and passed).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from functools import partial
from typing import Any

from gatez.errors import GatewayError
from gatez.pipeline.flow import BodyMode, Flow
from gatez.pipeline.futures import copy_outcome
from gatez.pipeline.stage import FailureMode, Phase, Stage, StageResult
from gatez.pipeline.verdicts import CONTINUE, MAX_HOLD_S, Continue, Decision, Hold, Respond, Verdict

log = logging.getLogger("gatez.pipeline")

# What starting a phase gives: the decision, or the rest of the phase to await (a coroutine to
# run in a task, or a future that callbacks will complete).
Outcome = Continue | Respond | Coroutine[Any, Any, Decision] | asyncio.Future[Decision]


class DecisionTimeout(GatewayError):
    http_status = 504
    kind = "decision_timeout"


INTERNAL_ERROR: Respond = Respond.from_error(GatewayError("internal gateway error"))


class PhaseRunner:
    """The stages of one phase, in pipeline order."""

    __slots__ = ("_methods", "_stages", "phase")

    def __init__(self, phase: Phase, stages: Sequence[Stage]) -> None:
        self.phase = phase
        self._stages = tuple(s for s in stages if phase in s.phases)
        self._methods = tuple(getattr(s, phase.value) for s in self._stages)

    def start(self, flow: Flow, first: int = 0) -> Outcome:
        """Runs stages from `first` as plain calls until one must wait (see the module doc)."""
        flow.phase = self.phase
        methods = self._methods
        for index in range(first, len(methods)):
            try:
                result: StageResult = methods[index](flow)
            except Exception as error:
                result = _from_error(self._stages[index], error)
            if result is CONTINUE or isinstance(result, Continue):
                continue
            if isinstance(result, Respond):
                return _answered(flow, result)
            return self._resume(flow, index, result)
        return CONTINUE

    async def _resume(self, flow: Flow, index: int, pending: Hold | Awaitable[Verdict]) -> Decision:
        stage = self._stages[index]
        try:
            verdict = pending if isinstance(pending, Hold) else await pending
            if isinstance(verdict, Hold):
                verdict = await _wait(flow, verdict)
        except Exception as error:
            verdict = _from_error(stage, error)
        if isinstance(verdict, Respond):
            return _answered(flow, verdict)
        return await settle(self.start(flow, index + 1))


class Pipeline:
    """Runs the stages of each phase in order until one of them does not continue.

    Built once at start-up from `Stage` instances; anything else is refused there.
    """

    def __init__(self, stages: Sequence[Stage]) -> None:
        for stage in stages:
            if not isinstance(stage, Stage):
                raise TypeError(f"{stage!r} is not a Stage")
        self.stages = tuple(stages)
        self._request_headers = PhaseRunner(Phase.REQUEST_HEADERS, stages)
        self._request_body = PhaseRunner(Phase.REQUEST_BODY, stages)
        self._response_headers = PhaseRunner(Phase.RESPONSE_HEADERS, stages)
        self._response_body = PhaseRunner(Phase.RESPONSE_BODY, stages)
        # Whether the exchange needs the response at all (an adapter that must ask for it, as
        # APISIX's runner keeps a request's Flow for its response call, asks only then).
        self.wants_response = any(
            Phase.RESPONSE_HEADERS in s.phases or Phase.RESPONSE_BODY in s.phases for s in stages
        )
        self._done = [s for s in stages if Phase.DONE in s.phases]
        self._done_plain = [s for s in self._done if not inspect.iscoroutinefunction(s.on_done)]
        # When no on_done hook is a coroutine, `done_now` finishes a flow without a task.
        self.done_waits = len(self._done_plain) < len(self._done)

    def start_request_headers(self, flow: Flow) -> Outcome:
        outcome = self._request_headers.start(flow)
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
        return self._run_body(flow)

    def start_response_headers(self, flow: Flow) -> Outcome:
        return self._response_headers.start(flow)

    def start_response_body(self, flow: Flow) -> Outcome:
        return self._response_body.start(flow)

    async def request_headers(self, flow: Flow) -> Decision:
        return await settle(self.start_request_headers(flow))

    async def request_body(self, flow: Flow) -> Decision:
        return await settle(self.start_request_body(flow))

    async def response_headers(self, flow: Flow) -> Decision:
        return await settle(self.start_response_headers(flow))

    async def response_body(self, flow: Flow) -> Decision:
        return await settle(self.start_response_body(flow))

    def _run_body(self, flow: Flow) -> Outcome:
        """The body stages, then whatever checks they deferred: the last wait before the
        upstream."""
        outcome = self._request_body.start(flow)
        return _settle_deferred(flow, outcome) if flow.deferred else outcome

    def _body_when_settled(self, flow: Flow) -> asyncio.Future[Decision]:
        """The body phase, run from the callback of the last deferred check to finish: no
        task and no extra loop turn between Redis answering and the proxy being answered."""
        result: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
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
            outcome = settled if isinstance(settled, Respond) else self._run_body(flow)
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
        flow.phase = Phase.DONE
        for stage in self._done_plain:
            try:
                stage.on_done(flow)
            except Exception:
                log.exception("stage %s failed in on_done", stage.name)

    async def done(self, flow: Flow) -> None:
        _drop_deferred(flow)
        flow.phase = Phase.DONE
        for stage in self._done:
            try:
                result = stage.on_done(flow)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("stage %s failed in on_done", stage.name)

    async def close(self) -> None:
        """Lets every stage give back what it holds outside the process; errors are logged."""
        for stage in self.stages:
            try:
                await stage.close()
            except Exception:
                log.exception("stage %s failed to close", stage.name)


async def settle(outcome: Outcome) -> Decision:
    """The decision of a started phase, awaiting the rest of it if it had to wait."""
    if isinstance(outcome, Continue | Respond):
        return outcome
    return await outcome


async def _settle_deferred(flow: Flow, outcome: Outcome) -> Decision:
    verdict = await settle(outcome)
    while flow.deferred:
        await asyncio.wait([check for _, check in flow.deferred])
        refusal = _settled_now(flow)
        if isinstance(refusal, Respond):
            return refusal
    return verdict


def _settled_now(flow: Flow) -> Decision | None:
    """The deferred checks' verdict if all of them have finished (None if some still run)."""
    deferred = flow.deferred
    if not all(check.done() for _, check in deferred):
        return None
    flow.deferred = []
    refusal: Respond | None = None
    for stage, check in deferred:
        try:
            checked = check.result()
        except Exception as error:
            checked = _from_error(stage, error)
        if refusal is None and isinstance(checked, Respond):
            # It answers in its own stage's place, before whatever came after it.
            refusal = checked
    if refusal is None:
        return CONTINUE
    flow.error = refusal.reason or "gateway_response"
    return refusal


def _drop_deferred(flow: Flow) -> None:
    """Checks nobody will wait for: cancelled, or their outcome read so none is reported lost."""
    deferred, flow.deferred = flow.deferred, []
    for _, check in deferred:
        if check.done():
            if not check.cancelled():
                check.exception()
        else:
            check.cancel()


def _from_error(stage: Stage, error: BaseException) -> Decision:
    """What an exception in a stage means: its public answer, or on past a fail-open stage."""
    if isinstance(error, GatewayError):
        return Respond.from_error(error)
    if stage.failure_mode is FailureMode.OPEN:
        log.error("fail-open stage %s failed; continuing", stage.name, exc_info=error)
        return CONTINUE
    log.error("stage %s failed", stage.name, exc_info=error)
    return INTERNAL_ERROR


def _answered(flow: Flow, verdict: Respond) -> Respond:
    if not flow.error:
        flow.error = verdict.reason or "gateway_response"
    return verdict


async def _wait(flow: Flow, hold: Hold) -> Decision:
    timeout_s = min(hold.timeout_s, MAX_HOLD_S)
    if flow.on_hold is not None:
        flow.on_hold(timeout_s)
    try:
        return await asyncio.wait_for(hold.decision, timeout_s)
    except TimeoutError:
        return Respond.from_error(DecisionTimeout("no decision came in time"))
