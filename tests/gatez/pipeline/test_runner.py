"""Pipeline: stages run in order per phase, the first answer wins, errors become responses."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import orjson
import pytest

from gatez.errors import (
    GatewayError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    Unauthenticated,
    Unavailable,
)
from gatez.pipeline import (
    CONTINUE,
    BodyMode,
    Continue,
    FailureMode,
    Flow,
    Hold,
    Phase,
    Pipeline,
    Respond,
    Stage,
    Verdict,
)
from tests.support.flows import make_flow

Behaviour = Callable[[Flow], Awaitable[Verdict]]


async def proceed(flow: Flow) -> Verdict:
    return CONTINUE


def answer(status: int, reason: str = "") -> Behaviour:
    async def respond(flow: Flow) -> Verdict:
        return Respond(status, b'{"ok":false}', reason=reason)

    return respond


def fail(error: Exception) -> Behaviour:
    async def raise_(flow: Flow) -> Verdict:
        raise error

    return raise_


def hold(decision: Awaitable[Continue | Respond], timeout_s: float = 1.0) -> Behaviour:
    async def wait(flow: Flow) -> Verdict:
        return Hold(decision, timeout_s)

    return wait


class EveryPhase(Stage):
    """A stage acting in every phase; records `label.phase` for each call."""

    def __init__(
        self,
        calls: list[str],
        label: str,
        behaviour: Behaviour = proceed,
        *,
        fail_open: bool = False,
    ) -> None:
        self.calls = calls
        self.label = label
        self.behaviour = behaviour
        if fail_open:
            self.failure_mode = FailureMode.OPEN

    async def _call(self, phase: str, flow: Flow) -> Verdict:
        self.calls.append(f"{self.label}.{phase}")
        return await self.behaviour(flow)

    async def on_request_headers(self, flow: Flow) -> Verdict:
        return await self._call("request_headers", flow)

    async def on_request_body(self, flow: Flow) -> Verdict:
        return await self._call("request_body", flow)

    async def on_response_headers(self, flow: Flow) -> Verdict:
        return await self._call("response_headers", flow)

    async def on_response_body(self, flow: Flow) -> Verdict:
        return await self._call("response_body", flow)

    async def on_done(self, flow: Flow) -> None:
        self.calls.append(f"{self.label}.done")


class HeadersOnly(Stage):
    """A stage acting on request headers only (like authentication)."""

    def __init__(self, calls: list[str]) -> None:
        self.calls = calls

    async def on_request_headers(self, flow: Flow) -> Verdict:
        self.calls.append("headers-only.request_headers")
        return CONTINUE


class DoneOnly(Stage):
    """A stage acting only when the exchange is over (like the access log)."""

    def __init__(self, calls: list[str], label: str, error: Exception | None = None) -> None:
        self.calls = calls
        self.label = label
        self.error = error

    async def on_done(self, flow: Flow) -> None:
        self.calls.append(f"{self.label}.done")
        if self.error is not None:
            raise self.error


class NoPhases(Stage):
    """A stage of no phase: never called."""


@pytest.fixture
def calls() -> list[str]:
    """The phase calls the stages of one test saw, in order."""
    return []


def new_flow() -> Flow:
    return make_flow(None, body=b"{}")


async def run_all_phases(pipeline: Pipeline, flow: Flow) -> list[Continue | Respond]:
    return [
        await pipeline.request_headers(flow),
        await pipeline.request_body(flow),
        await pipeline.response_headers(flow),
        await pipeline.response_body(flow),
    ]


async def test_each_phase_visits_only_its_stages_in_order(calls: list[str]) -> None:
    pipeline = Pipeline(
        [
            EveryPhase(calls, "a"),
            HeadersOnly(calls),
            NoPhases(),
            DoneOnly(calls, "log"),
            EveryPhase(calls, "b"),
        ]
    )
    flow = new_flow()
    assert await run_all_phases(pipeline, flow) == [CONTINUE] * 4
    await pipeline.done(flow)
    assert calls == [
        "a.request_headers",
        "headers-only.request_headers",
        "b.request_headers",
        "a.request_body",
        "b.request_body",
        "a.response_headers",
        "b.response_headers",
        "a.response_body",
        "b.response_body",
        "a.done",
        "log.done",
        "b.done",
    ]
    assert flow.error == ""


async def test_an_empty_pipeline_continues() -> None:
    pipeline = Pipeline([])
    flow = new_flow()
    assert await run_all_phases(pipeline, flow) == [CONTINUE] * 4
    await pipeline.done(flow)


async def test_the_first_answer_stops_the_phase(calls: list[str]) -> None:
    pipeline = Pipeline(
        [
            EveryPhase(calls, "a"),
            EveryPhase(calls, "b", answer(429, "rate_limited")),
            EveryPhase(calls, "c"),
        ]
    )
    flow = new_flow()
    verdict = await pipeline.request_headers(flow)
    assert verdict == Respond(429, b'{"ok":false}', reason="rate_limited")
    assert calls == ["a.request_headers", "b.request_headers"]
    assert flow.error == "rate_limited"


async def test_an_answer_without_a_reason_is_logged_as_a_gateway_response(calls: list[str]) -> None:
    flow = new_flow()
    await Pipeline([EveryPhase(calls, "a", answer(200))]).response_body(flow)
    assert flow.error == "gateway_response"


async def test_the_first_recorded_error_is_kept(calls: list[str]) -> None:
    flow = new_flow()
    flow.error = "upstream_timeout"
    await Pipeline([EveryPhase(calls, "a", answer(503, "no_capacity"))]).response_headers(flow)
    assert flow.error == "upstream_timeout"


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequest("'messages' must be an array"), 400, "invalid_request_error"),
        (Unauthenticated("invalid API key"), 401, "authentication_error"),
        (PermissionDenied("tool not allowed"), 403, "permission_error"),
        (NotFound("no route for GET /nope"), 404, "not_found_error"),
        (Unavailable("no policy yet"), 503, "service_unavailable"),
    ],
)
async def test_a_gateway_error_becomes_its_json_response(
    error: GatewayError, status: int, kind: str, calls: list[str]
) -> None:
    pipeline = Pipeline([EveryPhase(calls, "a", fail(error)), EveryPhase(calls, "b")])
    flow = new_flow()
    verdict = await pipeline.request_body(flow)
    assert isinstance(verdict, Respond)
    assert verdict.status == status
    assert verdict.headers == (("content-type", "application/json"),)
    assert orjson.loads(verdict.body) == {
        "error": {"message": error.public_message, "type": kind, "param": None, "code": kind}
    }
    assert flow.error == kind
    assert calls == ["a.request_body"]


async def test_retry_after_is_sent_with_a_rate_limit(calls: list[str]) -> None:
    pipeline = Pipeline([EveryPhase(calls, "a", fail(RateLimited("slow down", retry_after_s=7)))])
    verdict = await pipeline.request_headers(new_flow())
    assert isinstance(verdict, Respond)
    assert verdict.status == 429
    assert verdict.headers == (("content-type", "application/json"), ("retry-after", "7"))


@pytest.mark.parametrize(
    "error", [RuntimeError("redis password is hunter2"), KeyError("tenant"), TimeoutError()]
)
async def test_any_other_exception_is_a_generic_500(error: Exception, calls: list[str]) -> None:
    pipeline = Pipeline([EveryPhase(calls, "a", fail(error)), EveryPhase(calls, "b")])
    flow = new_flow()
    verdict = await pipeline.response_headers(flow)
    assert isinstance(verdict, Respond)
    assert verdict.status == 500
    # The exception's text stays in the logs.
    assert orjson.loads(verdict.body)["error"]["message"] == "internal gateway error"
    assert b"hunter2" not in verdict.body
    assert flow.error == "internal_error"
    assert calls == ["a.response_headers"]


async def test_a_fail_open_stage_that_breaks_is_skipped(calls: list[str]) -> None:
    pipeline = Pipeline(
        [
            EveryPhase(calls, "cache", fail(ConnectionError("qdrant away")), fail_open=True),
            EveryPhase(calls, "b"),
        ]
    )
    flow = new_flow()
    assert await pipeline.request_body(flow) is CONTINUE
    assert calls == ["cache.request_body", "b.request_body"]
    assert flow.error == ""


async def test_a_fail_open_stage_still_answers_with_its_gateway_errors(calls: list[str]) -> None:
    pipeline = Pipeline(
        [
            EveryPhase(calls, "cache", fail(PermissionDenied("denied")), fail_open=True),
            EveryPhase(calls, "b"),
        ]
    )
    verdict = await pipeline.request_body(new_flow())
    assert isinstance(verdict, Respond) and verdict.status == 403
    assert calls == ["cache.request_body"]


def decided(verdict: Continue | Respond) -> asyncio.Future[Continue | Respond]:
    future: asyncio.Future[Continue | Respond] = asyncio.get_running_loop().create_future()
    future.set_result(verdict)
    return future


async def test_a_hold_approved_goes_on_to_the_next_stage(calls: list[str]) -> None:
    pipeline = Pipeline(
        [EveryPhase(calls, "approval", hold(decided(CONTINUE))), EveryPhase(calls, "b")]
    )
    assert await pipeline.request_body(new_flow()) is CONTINUE
    assert calls == ["approval.request_body", "b.request_body"]


async def test_a_hold_decided_later_is_waited_for(calls: list[str]) -> None:
    loop = asyncio.get_running_loop()
    decision: asyncio.Future[Continue | Respond] = loop.create_future()
    loop.call_later(0.02, decision.set_result, CONTINUE)
    pipeline = Pipeline([EveryPhase(calls, "approval", hold(decision)), EveryPhase(calls, "b")])
    assert await pipeline.request_body(new_flow()) is CONTINUE
    assert calls == ["approval.request_body", "b.request_body"]


async def test_a_hold_denied_answers_with_the_decision(calls: list[str]) -> None:
    denial = Respond(403, b'{"error":"denied by operator"}', reason="approval_denied")
    pipeline = Pipeline(
        [EveryPhase(calls, "approval", hold(decided(denial))), EveryPhase(calls, "b")]
    )
    flow = new_flow()
    assert await pipeline.request_body(flow) == denial
    assert flow.error == "approval_denied"
    assert calls == ["approval.request_body"]


async def test_a_hold_without_a_decision_in_time_is_a_504(calls: list[str]) -> None:
    never: asyncio.Future[Continue | Respond] = asyncio.get_running_loop().create_future()
    pipeline = Pipeline(
        [EveryPhase(calls, "approval", hold(never, timeout_s=0.02)), EveryPhase(calls, "b")]
    )
    flow = new_flow()
    verdict = await pipeline.request_body(flow)
    assert isinstance(verdict, Respond)
    assert verdict.status == 504
    assert orjson.loads(verdict.body)["error"]["type"] == "decision_timeout"
    assert flow.error == "decision_timeout"
    assert calls == ["approval.request_body"]
    # The abandoned decision is cancelled, not left pending.
    assert never.cancelled()


async def test_a_hold_whose_decision_fails_answers_with_the_error(calls: list[str]) -> None:
    async def deny() -> Continue | Respond:
        raise PermissionDenied("the approval service refused")

    pipeline = Pipeline([EveryPhase(calls, "approval", hold(deny()))])
    verdict = await pipeline.request_body(new_flow())
    assert isinstance(verdict, Respond) and verdict.status == 403


async def test_done_runs_every_stage_even_when_one_fails(calls: list[str]) -> None:
    pipeline = Pipeline(
        [
            DoneOnly(calls, "first", RuntimeError("clickhouse away")),
            EveryPhase(calls, "b"),
            DoneOnly(calls, "last"),
        ]
    )
    await pipeline.done(new_flow())
    assert calls == ["first.done", "b.done", "last.done"]


class Plain(Stage):
    """A stage with plain (non-coroutine) methods, like routing and usage metering."""

    def __init__(self, calls: list[str], label: str, verdict: Verdict = CONTINUE) -> None:
        self.calls = calls
        self.label = label
        self.verdict = verdict

    def on_request_headers(self, flow: Flow) -> Verdict:
        self.calls.append(f"{self.label}.request_headers")
        return self.verdict

    def on_request_body(self, flow: Flow) -> Verdict:
        self.calls.append(f"{self.label}.request_body")
        return self.verdict


class Deferring(Stage):
    """Starts a check and lets the request go on, like the rate limit."""

    def __init__(
        self, calls: list[str], check: Awaitable[Continue | Respond], *, body: bool = True
    ) -> None:
        self.calls = calls
        self.check = check
        self.body = body
        self.started: asyncio.Future[Continue | Respond] | None = None

    def on_request_headers(self, flow: Flow) -> Verdict:
        self.calls.append("deferring.request_headers")
        self.started = asyncio.ensure_future(self.check)
        flow.defer(self, self.started)
        if self.body:
            flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE


async def refused_later(calls: list[str], status: int = 429) -> Respond:
    await asyncio.sleep(0.01)
    calls.append("check.refused")
    return Respond(status, b"{}", reason="rate_limited")


async def passed_later(calls: list[str]) -> Continue:
    await asyncio.sleep(0.01)
    calls.append("check.passed")
    return CONTINUE


async def test_plain_stages_answer_without_a_coroutine(calls: list[str]) -> None:
    pipeline = Pipeline([Plain(calls, "a"), Plain(calls, "b")])

    assert pipeline.start_request_headers(new_flow()) is CONTINUE
    refused = Pipeline([Plain(calls, "c", Respond(403, b"{}")), Plain(calls, "d")])
    outcome = refused.start_request_body(new_flow())
    assert isinstance(outcome, Respond)
    assert outcome.status == 403
    assert calls == ["a.request_headers", "b.request_headers", "c.request_body"]


async def test_stages_after_one_that_waits_run_after_it_in_order(calls: list[str]) -> None:
    pipeline = Pipeline([Plain(calls, "a"), EveryPhase(calls, "waits"), Plain(calls, "b")])

    outcome = pipeline.start_request_headers(new_flow())

    assert calls == ["a.request_headers"]  # the coroutine stage runs when awaited, in a task
    assert not isinstance(outcome, Continue | Respond)
    assert await outcome is CONTINUE
    assert calls == ["a.request_headers", "waits.request_headers", "b.request_headers"]


async def test_a_deferred_refusal_is_answered_before_the_body_stages(calls: list[str]) -> None:
    stage = Deferring(calls, refused_later(calls))
    pipeline = Pipeline([stage, Plain(calls, "routing")])
    flow = new_flow()

    # The headers phase goes on at once: the proxy fetches the body while the check runs.
    assert pipeline.start_request_headers(flow) is CONTINUE
    verdict = await pipeline.request_body(flow)

    assert isinstance(verdict, Respond)
    assert verdict.status == 429
    assert flow.error == "rate_limited"
    assert calls == [
        "deferring.request_headers",
        "routing.request_headers",
        "check.refused",
    ]


async def test_a_deferred_pass_lets_the_body_stages_run(calls: list[str]) -> None:
    pipeline = Pipeline([Deferring(calls, passed_later(calls)), Plain(calls, "routing")])
    flow = new_flow()

    assert pipeline.start_request_headers(flow) is CONTINUE
    assert await pipeline.request_body(flow) is CONTINUE
    assert calls[-2:] == ["check.passed", "routing.request_body"]
    assert flow.deferred == []


async def test_without_a_body_phase_the_headers_phase_waits_for_the_check(
    calls: list[str],
) -> None:
    pipeline = Pipeline([Deferring(calls, refused_later(calls), body=False)])
    flow = new_flow()

    outcome = pipeline.start_request_headers(flow)

    assert not isinstance(outcome, Continue | Respond)
    verdict = await outcome
    assert isinstance(verdict, Respond)
    assert verdict.status == 429


async def test_a_deferred_refusal_wins_over_a_later_stages_answer(calls: list[str]) -> None:
    later = Plain(calls, "routing", Respond(404, b"{}", reason="unknown_model"))
    pipeline = Pipeline([Deferring(calls, refused_later(calls)), later])
    flow = new_flow()

    verdict = await pipeline.request_headers(flow)

    # As if the rate limit had answered in its own place, before routing.
    assert isinstance(verdict, Respond)
    assert verdict.status == 429
    assert flow.error == "rate_limited"


async def test_a_later_answer_stands_when_the_deferred_check_passes(calls: list[str]) -> None:
    later = Plain(calls, "routing", Respond(404, b"{}", reason="unknown_model"))
    pipeline = Pipeline([Deferring(calls, passed_later(calls)), later])

    verdict = await pipeline.request_headers(new_flow())

    assert isinstance(verdict, Respond)
    assert verdict.status == 404


async def test_a_deferred_check_that_breaks_is_a_500_unless_its_stage_fails_open(
    calls: list[str],
) -> None:
    async def broken() -> Continue:
        raise RuntimeError("redis client bug")

    closed = Pipeline([Deferring(calls, broken(), body=False)])
    verdict = await closed.request_headers(new_flow())
    assert isinstance(verdict, Respond)
    assert verdict.status == 500

    open_stage = Deferring(calls, broken())
    open_stage.failure_mode = FailureMode.OPEN
    flow = new_flow()
    assert await Pipeline([open_stage]).request_headers(flow) is CONTINUE
    assert await Pipeline([open_stage]).request_body(flow) is CONTINUE


async def test_done_cancels_checks_nobody_will_wait_for(calls: list[str]) -> None:
    stage = Deferring(calls, passed_later(calls))
    pipeline = Pipeline([stage])
    flow = new_flow()
    pipeline.start_request_headers(flow)  # then the client goes away before the body

    pipeline.done_now(flow)
    await asyncio.sleep(0.02)

    assert stage.started is not None and stage.started.cancelled()
    assert flow.deferred == []
    assert "check.passed" not in calls


async def test_a_check_finished_before_the_body_is_settled_without_a_task(
    calls: list[str],
) -> None:
    refusing = Deferring(calls, refused_later(calls))
    passing = Deferring(calls, passed_later(calls))
    for stage, expected in ((refusing, 429), (passing, None)):
        pipeline = Pipeline([stage, Plain(calls, "routing")])
        flow = new_flow()
        pipeline.start_request_headers(flow)
        await asyncio.sleep(0.03)  # the proxy takes its time sending the body

        outcome = pipeline.start_request_body(flow)

        assert isinstance(outcome, Continue | Respond)
        assert (outcome.status if isinstance(outcome, Respond) else None) == expected
        assert flow.deferred == []


async def test_a_body_waiting_on_a_check_is_a_future_the_check_completes(
    calls: list[str],
) -> None:
    pipeline = Pipeline([Deferring(calls, passed_later(calls)), Plain(calls, "routing")])
    flow = new_flow()
    pipeline.start_request_headers(flow)

    outcome = pipeline.start_request_body(flow)  # the check is still running

    assert isinstance(outcome, asyncio.Future)
    assert "routing.request_body" not in calls
    assert await outcome is CONTINUE
    assert calls[-2:] == ["check.passed", "routing.request_body"]


async def test_a_body_waiting_on_a_dropped_check_is_cancelled(calls: list[str]) -> None:
    pipeline = Pipeline([Deferring(calls, passed_later(calls)), Plain(calls, "routing")])
    flow = new_flow()
    pipeline.start_request_headers(flow)
    outcome = pipeline.start_request_body(flow)

    pipeline.done_now(flow)  # the client went away
    await asyncio.sleep(0.02)

    assert isinstance(outcome, asyncio.Future) and outcome.cancelled()
    assert "routing.request_body" not in calls


# -- the stage contract --------------------------------------------------------------------------


def test_a_misspelt_phase_method_is_refused_when_the_stage_is_defined() -> None:
    with pytest.raises(TypeError, match=r"on_request_header.*not phases"):

        class Misspelt(Stage):
            def on_request_header(self, flow: Flow) -> Verdict:
                return CONTINUE


def test_a_stage_knows_its_name_and_the_phases_it_defines(calls: list[str]) -> None:
    assert HeadersOnly.name == "headers_only"
    assert HeadersOnly.phases == frozenset({Phase.REQUEST_HEADERS})
    assert DoneOnly.phases == frozenset({Phase.DONE})
    assert NoPhases.phases == frozenset()
    assert EveryPhase.phases == frozenset(Phase)

    class Named(Stage):
        name = "custom"

    assert Named.name == "custom"


def test_a_pipeline_refuses_what_is_not_a_stage(calls: list[str]) -> None:
    class Duck:
        async def on_request_headers(self, flow: Flow) -> Verdict:
            return CONTINUE

    with pytest.raises(TypeError, match="not a Stage"):
        Pipeline([HeadersOnly(calls), Duck()])  # type: ignore[list-item]


async def test_close_closes_every_stage_even_when_one_fails() -> None:
    closed: list[str] = []

    class Holder(Stage):
        def __init__(self, label: str, error: Exception | None = None) -> None:
            self.label = label
            self.error = error

        async def close(self) -> None:
            closed.append(self.label)
            if self.error is not None:
                raise self.error

    await Pipeline([Holder("a", RuntimeError("redis away")), Holder("b")]).close()
    assert closed == ["a", "b"]


# -- waits ---------------------------------------------------------------------------------------


class BodyDeferring(Stage):
    """Starts a check in the body phase (as a budget reservation would)."""

    def __init__(self, check: Awaitable[Continue | Respond]) -> None:
        self.check = check

    def on_request_body(self, flow: Flow) -> Verdict:
        flow.defer(self, asyncio.ensure_future(self.check))
        return CONTINUE


async def test_a_check_deferred_in_the_body_phase_is_settled_before_the_upstream(
    calls: list[str],
) -> None:
    pipeline = Pipeline([BodyDeferring(refused_later(calls)), Plain(calls, "routing")])
    flow = new_flow()

    outcome = pipeline.start_request_body(flow)

    # Not answered at once: the refusal must be known before anything reaches the upstream.
    assert not isinstance(outcome, Continue | Respond)
    verdict = await outcome
    assert isinstance(verdict, Respond) and verdict.status == 429
    assert flow.error == "rate_limited"
    assert flow.deferred == []


async def test_a_check_deferred_in_the_body_phase_that_passes_lets_it_continue(
    calls: list[str],
) -> None:
    pipeline = Pipeline([BodyDeferring(passed_later(calls)), Plain(calls, "routing")])
    assert await pipeline.request_body(new_flow()) is CONTINUE
    assert calls == ["routing.request_body", "check.passed"]


async def test_checks_deferred_in_both_request_phases_are_all_settled(calls: list[str]) -> None:
    pipeline = Pipeline(
        [Deferring(calls, passed_later(calls)), BodyDeferring(refused_later(calls))]
    )
    flow = new_flow()
    assert pipeline.start_request_headers(flow) is CONTINUE
    verdict = await pipeline.request_body(flow)
    assert isinstance(verdict, Respond) and verdict.status == 429


async def test_a_response_phase_cannot_defer(calls: list[str]) -> None:
    class LateDeferring(Stage):
        def on_response_headers(self, flow: Flow) -> Verdict:
            flow.defer(self, asyncio.ensure_future(passed_later(calls)))
            return CONTINUE

    verdict = await Pipeline([LateDeferring()]).response_headers(new_flow())
    # The contract refuses a check it could not honour: nothing is left to hold back.
    assert isinstance(verdict, Respond) and verdict.status == 500
    await asyncio.sleep(0.02)


async def test_a_hold_is_announced_to_the_adapter_before_it_is_waited_out(
    calls: list[str],
) -> None:
    loop = asyncio.get_running_loop()
    decision: asyncio.Future[Continue | Respond] = loop.create_future()
    announced: list[tuple[float, bool]] = []
    flow = new_flow()
    flow.on_hold = lambda timeout_s: announced.append((timeout_s, decision.done()))
    loop.call_later(0.02, decision.set_result, CONTINUE)
    pipeline = Pipeline([EveryPhase(calls, "approval", hold(decision, timeout_s=120.0))])

    assert await pipeline.request_body(flow) is CONTINUE
    assert announced == [(120.0, False)]


async def test_a_hold_longer_than_the_longest_wait_is_cut_to_it(calls: list[str]) -> None:
    from gatez.pipeline import MAX_HOLD_S

    announced: list[float] = []
    flow = new_flow()
    flow.on_hold = announced.append
    pipeline = Pipeline([EveryPhase(calls, "approval", hold(decided(CONTINUE), timeout_s=1e9))])
    assert await pipeline.request_body(flow) is CONTINUE
    assert announced == [MAX_HOLD_S]


async def test_a_deferred_refusal_is_answered_in_the_clients_format(calls: list[str]) -> None:
    async def rate_limited() -> Respond:
        await asyncio.sleep(0.01)
        raise RateLimited("slow down", retry_after_s=2)

    flow = new_flow()
    flow.error_format = lambda error: Respond(
        error.http_status, b'{"client": "format"}', reason=error.reason
    )
    pipeline = Pipeline([Deferring(calls, rate_limited()), Plain(calls, "routing")])

    assert pipeline.start_request_headers(flow) is CONTINUE
    verdict = await pipeline.request_body(flow)

    assert isinstance(verdict, Respond)
    assert (verdict.status, verdict.body) == (429, b'{"client": "format"}')
    assert flow.error == "rate_limit_error"
