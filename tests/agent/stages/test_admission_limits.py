"""ToolCallAdmission's limits against a real Redis: calls per session, concurrent calls per
session and per tenant, slots given back when the exchange ends, and slots a dead data plane
left lapsing."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from agent.jsonrpc import LimitExceeded
from agent.stages.admission import ToolCallAdmission
from extproc.redis_pipe import PipelinedRedis
from gatez.errors import Unavailable
from gatez.pipeline import CONTINUE, Flow, Principal
from gatez.v1 import policy_pb2
from tests.agent.stages.flows import (
    ACME,
    ACME_OTHER,
    agent,
    build_policy,
    call,
    mcp_flow,
    rpc,
    rule,
)
from tests.support.flows import run_stage

POLICY = build_policy(
    agent(
        rule("*"),
        limits=policy_pb2.AgentLimits(
            calls_per_session=3, concurrent_calls_per_session=2, concurrent_calls_per_tenant=3
        ),
    )
)


@pytest.fixture
def limits(pipelined: PipelinedRedis) -> ToolCallAdmission:
    return ToolCallAdmission(pipelined)


def tool_call(session: str = "s-1", caller: Principal = ACME) -> Flow:
    return mcp_flow(POLICY, call("echo"), caller=caller, headers={"mcp-session-id": session})


async def done(limits: ToolCallAdmission, flow: Flow, redis: aioredis.Redis) -> None:
    """Ends the exchange and waits for its slot to be given back (that is not awaited)."""
    assert limits.on_done(flow) is None
    for _ in range(100):
        members = await redis.zrange("{acme}:mcp:inflight", 0, -1)
        if flow.request_id.encode() not in members:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the slot was not given back")


async def test_calls_per_session_are_counted_and_refused_beyond_the_limit(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    for _ in range(3):
        flow = tool_call()
        assert await run_stage(limits.on_request_body, flow) is CONTINUE
        await done(limits, flow, redis_client)

    flow = tool_call()
    with pytest.raises(LimitExceeded) as caught:
        await run_stage(limits.on_request_body, flow)
    assert caught.value.http_status == 200
    assert "(3)" in caught.value.public_message
    assert flow.mcp is not None
    assert (flow.mcp.decision, flow.mcp.reason) == ("denied", "limit calls_per_session")
    assert not flow.mcp.slots_taken

    # Another session has its own budget.
    assert await run_stage(limits.on_request_body, tool_call("s-2")) is CONTINUE


async def test_concurrent_calls_per_session_are_bounded_until_one_ends(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    first, second = tool_call(), tool_call()
    await run_stage(limits.on_request_body, first)
    await run_stage(limits.on_request_body, second)
    refused = tool_call()
    with pytest.raises(LimitExceeded) as caught:
        await run_stage(limits.on_request_body, refused)
    assert "at once in this session (2)" in caught.value.public_message
    assert refused.mcp is not None
    assert refused.mcp.reason == "limit concurrent_calls_per_session"

    await done(limits, first, redis_client)
    # The refused call counted for nothing: the third of three calls still runs.
    assert await run_stage(limits.on_request_body, tool_call()) is CONTINUE


async def test_concurrent_calls_per_tenant_are_bounded_across_sessions(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    held = [tool_call("s-1"), tool_call("s-2"), tool_call("s-3", caller=ACME_OTHER)]
    for flow in held:
        await run_stage(limits.on_request_body, flow)
    with pytest.raises(LimitExceeded) as caught:
        await run_stage(limits.on_request_body, tool_call("s-4"))
    assert "for this tenant (3)" in caught.value.public_message

    await done(limits, held[0], redis_client)
    assert await run_stage(limits.on_request_body, tool_call("s-4")) is CONTINUE


async def test_a_slot_is_given_back_once(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    flow = tool_call()
    await run_stage(limits.on_request_body, flow)
    assert flow.mcp is not None
    assert flow.mcp.slots_taken
    assert await redis_client.zcard("{acme}:mcp:inflight") == 1
    await done(limits, flow, redis_client)
    assert await redis_client.zcard("{acme}:mcp:inflight") == 0
    assert not flow.mcp.slots_taken
    assert limits.on_done(flow) is None


async def test_lapsed_slots_free_themselves(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    flow = tool_call()
    assert flow.mcp is not None
    session = flow.mcp.session_digest
    past = int(time.time() * 1000) - 1000
    # Slots of a data plane that died without giving them back, lapsed a second ago.
    for member in ("dead-1", "dead-2", "dead-3"):
        await redis_client.zadd("{acme}:mcp:inflight", {member: past})
        await redis_client.zadd(f"{{acme}}:mcp:inflight:{session}", {member: past})

    assert await run_stage(limits.on_request_body, flow) is CONTINUE
    assert await redis_client.zrange("{acme}:mcp:inflight", 0, -1) == [flow.request_id.encode()]


@pytest.mark.parametrize(
    "body",
    [rpc("tools/list"), rpc("prompts/get", name="p"), rpc("notifications/cancelled", None)],
)
async def test_only_tool_calls_are_limited(
    limits: ToolCallAdmission, redis_client: aioredis.Redis, body: bytes
) -> None:
    flow = mcp_flow(POLICY, body, headers={"mcp-session-id": "s-1"})
    assert limits.on_request_body(flow) is CONTINUE
    assert limits.on_done(flow) is None
    assert await redis_client.keys("*") == []


async def test_sessionless_calls_count_per_caller_and_server(
    limits: ToolCallAdmission, redis_client: aioredis.Redis
) -> None:
    flows = [mcp_flow(POLICY, call("echo")) for _ in range(3)]
    for flow in flows:
        await run_stage(limits.on_request_body, flow)
        await done(limits, flow, redis_client)
    assert len({flow.mcp.limits_scope for flow in flows if flow.mcp}) == 1
    with pytest.raises(LimitExceeded):
        await run_stage(limits.on_request_body, mcp_flow(POLICY, call("echo")))
    # Another caller has its own count.
    other = mcp_flow(POLICY, call("echo"), caller=ACME_OTHER)
    assert await run_stage(limits.on_request_body, other) is CONTINUE


async def test_without_redis_calls_are_refused(dead_redis: PipelinedRedis) -> None:
    flow = tool_call()
    with pytest.raises(Unavailable):
        await run_stage(ToolCallAdmission(dead_redis).on_request_body, flow)
    assert flow.mcp is not None
    assert not flow.mcp.slots_taken


async def settled_refill(limits: ToolCallAdmission) -> None:
    """Lets the reply of a call admitted on a credit arrive (it is not awaited)."""
    for _ in range(100):
        await asyncio.sleep(0.005)
        if all(lease.refill is None for lease in limits._leases.values()):
            return
    raise AssertionError("the credit's reply never came")


async def test_a_credit_admits_the_next_call_without_waiting_and_counts_exactly(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    now = [100.0]
    limits = ToolCallAdmission(pipelined, clock=lambda: now[0])
    first = tool_call()
    assert await run_stage(limits.on_request_body, first) is CONTINUE
    await done(limits, first, redis_client)
    # The first call was counted with one ahead: the second needs no Redis round trip.
    second = tool_call()
    assert limits.on_request_body(second) is CONTINUE
    assert second.deferred == []
    assert second.mcp is not None and second.mcp.slots_taken
    await settled_refill(limits)
    session = second.mcp.limits_scope
    assert await redis_client.zcard(f"{{acme}}:mcp:inflight:{session}") == 1
    await done(limits, second, redis_client)
    third = tool_call()
    assert limits.on_request_body(third) is CONTINUE
    await settled_refill(limits)
    await done(limits, third, redis_client)
    # Three calls of three: Redis holds no credit beyond the limit, and the fourth is refused.
    assert int(await redis_client.get(f"{{acme}}:mcp:calls:{session}") or 0) == 3
    with pytest.raises(LimitExceeded):
        await run_stage(limits.on_request_body, tool_call())


async def test_a_pin_verdict_is_trusted_for_a_moment_then_asked_again(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    now = [100.0]
    limits = ToolCallAdmission(pipelined, clock=lambda: now[0])
    first = tool_call("s-9")
    await run_stage(limits.on_request_body, first)
    await done(limits, first, redis_client)
    # Once the verdict lapses (or a list of the server was judged here), Redis is asked.
    now[0] += 2
    lapsed = tool_call("s-9")
    limits.on_request_body(lapsed)
    assert lapsed.deferred != []
    await run_stage(lambda flow: CONTINUE, lapsed)
    await done(limits, lapsed, redis_client)
    limits.forget_pins("acme", "github")
    forgotten = tool_call("s-9")
    limits.on_request_body(forgotten)
    assert forgotten.deferred != []
    await run_stage(lambda flow: CONTINUE, forgotten)


async def test_calls_running_here_are_refused_without_asking_redis(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    limits = ToolCallAdmission(pipelined)
    running = [tool_call(), tool_call()]
    for flow in running:
        await run_stage(limits.on_request_body, flow)
    over = tool_call()
    with pytest.raises(LimitExceeded, match="at once in this session"):
        limits.on_request_body(over)
    assert over.deferred == []
