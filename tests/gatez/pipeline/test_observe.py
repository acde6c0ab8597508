"""Observation in the pipeline: stage calls counted and timed once, in the runner; the observer
told of every flow's open and finish; a traced flow's stage calls recorded for spans."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gatez.errors import RateLimited, Unauthenticated
from gatez.pipeline import (
    CONTINUE,
    BodyMode,
    CallOutcome,
    Dispatcher,
    FailureMode,
    Flow,
    NoPolicy,
    NoRoute,
    Phase,
    Pipeline,
    Respond,
    Stage,
    StageCall,
    StageStats,
    Verdict,
)
from gatez.policy import EMPTY_POLICY, RouteKind
from tests.support.flows import make_flow


class Passes(Stage):
    def on_request_headers(self, flow: Flow) -> Verdict:
        return CONTINUE

    def on_response_headers(self, flow: Flow) -> Verdict:
        return CONTINUE


class Refuses(Stage):
    def on_request_headers(self, flow: Flow) -> Verdict:
        raise Unauthenticated("no key")


class Breaks(Stage):
    def __init__(self, fail_open: bool = False) -> None:
        if fail_open:
            self.failure_mode = FailureMode.OPEN

    def on_request_headers(self, flow: Flow) -> Verdict:
        raise RuntimeError("bug")


class Waits(Stage):
    async def on_request_headers(self, flow: Flow) -> Verdict:
        await asyncio.sleep(0.02)
        return CONTINUE


class Defers(Stage):
    """Lets the request go on while a check runs, like the rate limit; the check refuses."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        flow.defer(self, asyncio.ensure_future(self._check()))
        flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE

    async def _check(self) -> Respond:
        await asyncio.sleep(0.01)
        return Respond.from_error(RateLimited("slow down", retry_after_s=1))


class Recorder:
    """A FlowTrace that keeps what the pipeline recorded."""

    def __init__(self) -> None:
        self.calls: list[StageCall] = []
        self.finished = 0

    def finish(self, flow: Flow) -> None:
        self.finished += 1


class Watcher:
    """A FlowObserver that traces every flow and remembers what it was told."""

    def __init__(self) -> None:
        self.seen_open: list[tuple[str, str | None]] = []
        self.seen_finished: list[str] = []

    def opened(self, flow: Flow, pipeline: str, traceparent: str | None) -> None:
        self.seen_open.append((pipeline, traceparent))
        flow.trace = Recorder()

    def finished(self, flow: Flow, pipeline: str) -> None:
        self.seen_finished.append(pipeline)


def stats(pipeline: Pipeline, stage: str, phase: Phase = Phase.REQUEST_HEADERS) -> StageStats:
    return next(s for s in pipeline.stage_stats() if s.stage == stage and s.phase is phase)


def traced_flow() -> tuple[Flow, Recorder]:
    flow = make_flow(None, body=b"{}")
    recorder = Recorder()
    flow.trace = recorder
    return flow, recorder


async def test_every_stage_call_is_counted_with_its_verdict() -> None:
    pipeline = Pipeline([Passes(), Refuses(), Passes()])

    for _ in range(3):
        verdict = await pipeline.request_headers(make_flow(None))
        assert isinstance(verdict, Respond) and verdict.status == 401

    first, refusing = list(pipeline.stage_stats())[:2]
    assert (first.stage, first.calls, first.continued, first.responded) == ("passes", 3, 3, 0)
    assert (refusing.calls, refusing.continued, refusing.responded, refusing.failed) == (3, 0, 3, 0)
    assert first.seconds > 0
    # The stage after the refusal never ran.
    assert [s.calls for s in pipeline.stage_stats() if s.phase is Phase.REQUEST_HEADERS] == [
        3,
        3,
        0,
    ]


@pytest.mark.parametrize("fail_open", [False, True])
async def test_an_unexpected_exception_counts_as_an_error_whatever_the_failure_mode(
    fail_open: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL)
    pipeline = Pipeline([Breaks(fail_open)])

    verdict = await pipeline.request_headers(make_flow(None))

    assert (verdict is CONTINUE) is fail_open
    counted = stats(pipeline, "breaks")
    assert (counted.calls, counted.failed, counted.responded, counted.continued) == (1, 1, 0, 0)


async def test_a_stage_that_waits_is_counted_once_with_its_wait() -> None:
    pipeline = Pipeline([Waits()])
    flow, recorder = traced_flow()

    assert await pipeline.request_headers(flow) is CONTINUE

    counted = stats(pipeline, "waits")
    assert (counted.calls, counted.waited, counted.continued) == (1, 1, 1)
    assert counted.seconds >= 0.02
    (call,) = recorder.calls
    assert (call.stage, call.outcome, call.waited) == ("waits", CallOutcome.CONTINUE, True)
    assert call.ended_ns - call.started_ns >= 20_000_000


async def test_a_deferred_refusal_counts_under_its_stage_and_is_traced() -> None:
    pipeline = Pipeline([Defers(), Passes()])
    flow, recorder = traced_flow()

    assert pipeline.start_request_headers(flow) is CONTINUE
    verdict = await pipeline.request_body(flow)

    assert isinstance(verdict, Respond) and verdict.status == 429
    counted = stats(pipeline, "defers")
    assert (counted.calls, counted.responded, counted.continued) == (1, 1, 0)
    assert [(c.stage, c.outcome, c.deferred) for c in recorder.calls] == [
        ("defers", CallOutcome.CONTINUE, False),
        ("passes", CallOutcome.CONTINUE, False),
        ("defers", CallOutcome.RESPOND, True),
    ]
    check = recorder.calls[2]
    # The check ran from its stage's return until the pipeline saw its verdict.
    assert check.started_ns == recorder.calls[0].ended_ns
    assert check.ended_ns - check.started_ns >= 10_000_000


async def test_a_traced_flow_records_each_phase_call_in_order_and_finishes_once() -> None:
    pipeline = Pipeline([Passes(), Refuses()])
    flow, recorder = traced_flow()

    await pipeline.request_headers(flow)
    await pipeline.response_headers(flow)
    pipeline.done_now(flow)

    assert [(c.stage, c.phase, c.outcome) for c in recorder.calls] == [
        ("passes", Phase.REQUEST_HEADERS, CallOutcome.CONTINUE),
        ("refuses", Phase.REQUEST_HEADERS, CallOutcome.RESPOND),
        ("passes", Phase.RESPONSE_HEADERS, CallOutcome.CONTINUE),
    ]
    assert all(c.started_ns <= c.ended_ns for c in recorder.calls)
    assert recorder.finished == 1


def dispatcher(watcher: Watcher, llm: Pipeline) -> Dispatcher:
    return Dispatcher(
        lambda: EMPTY_POLICY,
        {RouteKind.LLM: llm},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
        observer=watcher,
    )


async def test_the_observer_sees_every_flow_open_and_finish_by_pipeline_name() -> None:
    watcher = Watcher()
    llm = Pipeline([Passes()])
    chosen = dispatcher(watcher, llm)
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    flow, pipeline = chosen.open(
        request_id="r1",
        method="POST",
        path="/v1/chat/completions",
        headers={},
        has_body=True,
        traceparent=traceparent,
    )
    assert pipeline is llm
    await pipeline.request_headers(flow)
    await pipeline.done(flow)
    unrouted_flow, unrouted = chosen.open(
        request_id="r2", method="GET", path="/nowhere", headers={}, has_body=False
    )
    unrouted.done_now(unrouted_flow)

    assert watcher.seen_open == [("llm", traceparent), ("unrouted", None)]
    assert watcher.seen_finished == ["llm", "unrouted"]
    assert set(chosen.named_pipelines()) == {"llm", "unrouted", "unavailable"}
    assert isinstance(flow.trace, Recorder) and flow.trace.finished == 1


async def test_an_observer_that_fails_does_not_fail_the_exchange(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(Watcher):
        def finished(self, flow: Flow, pipeline: str) -> None:
            raise RuntimeError("metrics broke")

    llm = Pipeline([Passes()])
    chosen = dispatcher(Failing(), llm)
    flow, pipeline = chosen.open(
        request_id="r1", method="GET", path="/v1/models", headers={}, has_body=False
    )

    pipeline.done_now(flow)

    assert "observing the end of a flow failed" in caplog.text


async def test_without_an_observer_flows_carry_no_trace() -> None:
    llm = Pipeline([Passes()])
    chosen = Dispatcher(
        lambda: EMPTY_POLICY,
        {RouteKind.LLM: llm},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
    )
    flow, pipeline = chosen.open(
        request_id="r1", method="GET", path="/v1/models", headers={}, has_body=False
    )
    assert flow.trace is None
    assert await pipeline.request_headers(flow) is CONTINUE
    assert stats(pipeline, "passes").calls == 1
