"""ApprovalGateStage against a real Redis: a call the policy marks is held until an operator
approves or denies it, or its approval times out; a decided retry is answered at once; without
approvals such a call is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Coroutine

import pytest
import redis.asyncio as aioredis

from agent.approvals import ApprovalGate
from agent.stages.approval import ApprovalGateStage, ApprovalRefused, NoApprovals
from agent.stages.tools import ToolPolicy
from gatez.approvals import Approval, ApprovalState, ApprovalStore
from gatez.errors import Unavailable
from gatez.pipeline import CONTINUE, Decision, Flow, Hold
from gatez.v1 import policy_pb2
from tests.agent.stages.flows import APPROVAL, agent, build_policy, call, mcp_flow, rule

POLICY = build_policy(
    agent(
        rule("merge", APPROVAL),
        rule(
            "deploy",
            APPROVAL,
            approve_when=[
                policy_pb2.ArgumentMatch(argument="env", pattern="prod.*"),
                policy_pb2.ArgumentMatch(argument="replicas", pattern="[0-9]{3,}"),
            ],
        ),
        rule("*"),
        approval_timeout_s=1,
    )
)


@pytest.fixture
def store(redis_client: aioredis.Redis) -> ApprovalStore:
    return ApprovalStore(redis_client)


@pytest.fixture
async def stage(store: ApprovalStore) -> AsyncIterator[ApprovalGateStage]:
    gate = ApprovalGate(store, poll_s=0.05)
    yield ApprovalGateStage(store, gate)
    await gate.close()


def judged(body: bytes, session: str = "s-1") -> Flow:
    """A call as the stages before the gate leave it."""
    flow = mcp_flow(POLICY, body, headers={"mcp-session-id": session})
    ToolPolicy().on_request_body(flow)
    return flow


async def held(stage: ApprovalGateStage, flow: Flow) -> Hold:
    verdict = stage.on_request_body(flow)
    # Holding needs the store: the phase is awaited.
    assert isinstance(verdict, Awaitable)
    hold = await verdict
    assert isinstance(hold, Hold)
    return hold


def discard(hold: Hold) -> None:
    """Drops a hold nobody waits out (its wait never started)."""
    decision = hold.decision
    assert isinstance(decision, Coroutine)
    decision.close()


async def pending(store: ApprovalStore) -> Approval:
    for _ in range(50):
        records = await store.list("acme", ApprovalState.PENDING)
        if records:
            return records[0]
        await asyncio.sleep(0.01)
    raise AssertionError("nothing pending")


@pytest.mark.parametrize(
    "arguments",
    [{}, {"env": "dev"}, {"env": "preprod"}, {"replicas": 12}, {"env": ["prod"]}],
)
def test_approve_when_that_matches_nothing_lets_the_call_on(
    stage: ApprovalGateStage, arguments: dict[str, object]
) -> None:
    assert stage.on_request_body(judged(call("deploy", **arguments))) is CONTINUE


@pytest.mark.parametrize(
    ("arguments", "because"),
    [
        ({"env": "prod-eu"}, "argument env matches prod.*"),
        ({"replicas": 100}, "argument replicas matches [0-9]{3,}"),
    ],
)
async def test_approve_when_that_matches_holds_the_call(
    stage: ApprovalGateStage, store: ApprovalStore, arguments: dict[str, object], because: str
) -> None:
    hold = await held(stage, judged(call("deploy", **arguments)))
    record = await pending(store)
    assert record.held_because == because
    assert record.tool == "deploy"
    assert record.caller == "key-a1"
    assert 5 < hold.timeout_s <= 1 + 5 + 0.1
    discard(hold)


async def test_an_approved_call_goes_on_with_its_approver(
    stage: ApprovalGateStage, store: ApprovalStore
) -> None:
    flow = judged(call("merge", pr=7))
    hold = await held(stage, flow)
    waiting = asyncio.ensure_future(hold.decision)
    record = await pending(store)
    assert record.arguments_json == '{"pr":7}'
    await store.decide("acme", record.id, approve=True, approver="alice")
    assert await asyncio.wait_for(waiting, 2) is CONTINUE
    assert flow.mcp is not None
    assert (flow.mcp.decision, flow.mcp.approver) == ("approved", "alice")
    assert flow.mcp.reason == f"approval {record.id}"


async def test_a_denied_call_is_refused_saying_by_whom(
    stage: ApprovalGateStage, store: ApprovalStore
) -> None:
    flow = judged(call("merge", pr=7))
    waiting = asyncio.ensure_future((await held(stage, flow)).decision)
    record = await pending(store)
    await store.decide("acme", record.id, approve=False, approver="bob", reason="not today")
    with pytest.raises(ApprovalRefused) as caught:
        await asyncio.wait_for(waiting, 2)
    assert caught.value.http_status == 200
    assert "denied by bob: not today" in caught.value.public_message
    assert flow.mcp is not None
    assert (flow.mcp.decision, flow.mcp.approver) == ("approval_denied", "bob")


async def test_an_undecided_call_times_out(stage: ApprovalGateStage, store: ApprovalStore) -> None:
    flow = judged(call("merge", pr=8))
    hold = await held(stage, flow)
    with pytest.raises(ApprovalRefused) as caught:
        await asyncio.wait_for(hold.decision, 3)
    assert "none came in time" in caught.value.public_message
    assert flow.mcp is not None
    assert flow.mcp.decision == "approval_timeout"
    assert (await store.list("acme"))[0].state is ApprovalState.TIMED_OUT


async def test_a_retry_of_a_decided_call_is_answered_at_once(
    stage: ApprovalGateStage, store: ApprovalStore
) -> None:
    waiting = asyncio.ensure_future((await held(stage, judged(call("merge", pr=9)))).decision)
    record = await pending(store)
    await store.decide("acme", record.id, approve=True, approver="alice")
    await asyncio.wait_for(waiting, 2)

    retry = judged(call("merge", pr=9))
    verdict = stage.on_request_body(retry)
    assert isinstance(verdict, Awaitable)
    assert await verdict is CONTINUE
    assert retry.mcp is not None
    assert (retry.mcp.decision, retry.mcp.approver) == ("approved", "alice")

    # Other arguments, or another session, are another call.
    for other in (judged(call("merge", pr=10)), judged(call("merge", pr=9), session="s-2")):
        hold = await held(stage, other)
        discard(hold)


def test_calls_the_policy_does_not_hold_pass(stage: ApprovalGateStage) -> None:
    assert stage.on_request_body(judged(call("echo"))) is CONTINUE


def test_without_approvals_a_call_that_needs_one_is_refused() -> None:
    flow = judged(call("merge"))
    with pytest.raises(Unavailable):
        NoApprovals().on_request_body(flow)
    assert flow.mcp is not None
    assert (flow.mcp.decision, flow.mcp.reason) == ("denied", "approvals unavailable")
    assert NoApprovals().on_request_body(judged(call("echo"))) is CONTINUE


def test_without_approvals_a_call_no_approve_when_pattern_matches_runs() -> None:
    assert NoApprovals().on_request_body(judged(call("deploy", env="staging"))) is CONTINUE
    with pytest.raises(Unavailable):
        NoApprovals().on_request_body(judged(call("deploy", env="prod-eu")))


async def test_a_call_an_earlier_check_refuses_never_reaches_an_operator(
    stage: ApprovalGateStage, store: ApprovalStore
) -> None:
    flow = judged(call("merge"))
    refusal: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
    flow.defer(ToolPolicy(), refusal)
    verdict = stage.on_request_body(flow)
    assert isinstance(verdict, Awaitable)
    asyncio.get_running_loop().call_later(0.02, refusal.set_exception, Unavailable("limits"))

    assert await verdict is CONTINUE  # the pipeline answers with the deferred refusal
    assert await store.list("acme") == []
