"""The data plane's approval gate against a real Redis: woken by the announcement within
milliseconds, by its own polling when the announcement is lost, timing out in Redis, and leaving
no waiter behind when the gateway stops or the client leaves."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from agent.approvals import (
    CLIENT_LEFT_REASON,
    RESUBSCRIBE_DELAY_S,
    STOPPING_REASON,
    ApprovalGate,
)
from gatez.approvals import Approval, ApprovalState, ApprovalStore, record_key

# Longer than any test: only the announcement (or an explicit poll interval) can wake a waiter.
NO_POLL_S = 30.0


@pytest.fixture
def store(redis_client: aioredis.Redis) -> ApprovalStore:
    return ApprovalStore(redis_client)


async def gate_of(store: ApprovalStore, poll_s: float) -> ApprovalGate:
    gate = ApprovalGate(store, poll_s=poll_s)
    await gate.wait_subscribed()
    return gate


@pytest.fixture
async def gate(store: ApprovalStore) -> AsyncIterator[ApprovalGate]:
    gate = await gate_of(store, NO_POLL_S)
    yield gate
    await gate.close()


async def held(store: ApprovalStore, call_key: str = "call-1", timeout_s: float = 60) -> Approval:
    return await store.create(
        "acme",
        caller="key-1",
        server="github",
        tool="delete_repo",
        arguments_json="{}",
        session_digest="",
        held_because="tool delete_repo",
        timeout_s=timeout_s,
        call_key=call_key,
    )


async def decide_silently(redis: aioredis.Redis, record: Approval, approver: str) -> None:
    """An approval written without its announcement, as if Pub/Sub had lost it."""
    await redis.hset(
        record_key("acme", record.id),
        mapping={
            "state": "approved",
            "approver": approver,
            "decided_ms": int(time.time() * 1000),
        },
    )


@pytest.mark.parametrize("approve", [True, False])
async def test_a_decision_wakes_the_waiter_within_milliseconds(
    store: ApprovalStore, gate: ApprovalGate, approve: bool
) -> None:
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record))
    await asyncio.sleep(0.05)
    began = time.monotonic()
    decided = await store.decide("acme", record.id, approve=approve, approver="alice", reason="r")
    result = await asyncio.wait_for(waiting, 1.0)
    assert time.monotonic() - began < 0.1
    assert result == decided
    assert result.state is (ApprovalState.APPROVED if approve else ApprovalState.DENIED)
    assert (result.approver, result.reason) == ("alice", "r")


async def test_every_waiter_of_an_approval_is_woken(
    store: ApprovalStore, gate: ApprovalGate
) -> None:
    record = await held(store)
    retried = await held(store)  # a retry of the same call, re-attached
    waits = [asyncio.create_task(gate.wait(r)) for r in (record, retried)]
    await asyncio.sleep(0.05)
    await store.decide("acme", record.id, approve=True, approver="alice")
    results = await asyncio.wait_for(asyncio.gather(*waits), 1.0)
    assert [r.state for r in results] == [ApprovalState.APPROVED] * 2


async def test_no_decision_in_time_times_the_call_out(
    store: ApprovalStore, gate: ApprovalGate
) -> None:
    record = await held(store)
    result = await gate.wait(record, timeout_s=0.1)
    assert result.state is ApprovalState.TIMED_OUT
    assert await store.get("acme", record.id) == result


async def test_the_default_timeout_is_the_records_deadline(
    store: ApprovalStore, gate: ApprovalGate
) -> None:
    record = await held(store, timeout_s=0.2)
    began = time.monotonic()
    result = await asyncio.wait_for(gate.wait(record), 2.0)
    assert result.state is ApprovalState.TIMED_OUT
    assert 0.1 < time.monotonic() - began < 0.5


async def test_a_decision_at_the_deadline_wins(
    store: ApprovalStore, gate: ApprovalGate, redis_client: aioredis.Redis
) -> None:
    # The decision lands unannounced just before the deadline: the gate's TIMED_OUT write finds
    # it and gives it back instead.
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record, timeout_s=0.2))
    await asyncio.sleep(0.1)
    await decide_silently(redis_client, record, "alice")
    result = await waiting
    assert (result.state, result.approver) == (ApprovalState.APPROVED, "alice")


async def test_polling_finds_a_decision_whose_announcement_was_lost(
    store: ApprovalStore, redis_client: aioredis.Redis
) -> None:
    gate = await gate_of(store, poll_s=0.1)
    try:
        record = await held(store)
        waiting = asyncio.create_task(gate.wait(record, timeout_s=10))
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await decide_silently(redis_client, record, "alice")
        result = await asyncio.wait_for(waiting, 1.0)
        assert time.monotonic() - began < 0.3
        assert (result.state, result.approver) == (ApprovalState.APPROVED, "alice")
    finally:
        await gate.close()


async def test_without_polling_a_lost_announcement_is_not_noticed(
    store: ApprovalStore, gate: ApprovalGate, redis_client: aioredis.Redis
) -> None:
    # The control for the test above: with no polling in reach the waiter does not wake.
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record, timeout_s=10))
    await asyncio.sleep(0.05)
    await decide_silently(redis_client, record, "alice")
    await asyncio.sleep(0.3)
    assert not waiting.done()
    waiting.cancel()


async def test_close_abandons_every_waiter(store: ApprovalStore) -> None:
    gate = await gate_of(store, NO_POLL_S)
    records = [await held(store, call_key=f"call-{n}") for n in range(3)]
    waits = [asyncio.create_task(gate.wait(r)) for r in records]
    await asyncio.sleep(0.05)
    await gate.close()
    assert all(w.done() for w in waits)
    for record, waiting in zip(records, waits, strict=True):
        result = waiting.result()
        assert (result.state, result.reason) == (ApprovalState.ABANDONED, STOPPING_REASON)
        assert await store.get("acme", record.id) == result
    late = await held(store, call_key="late")
    result = await gate.wait(late)
    assert result.state is ApprovalState.ABANDONED


async def test_close_keeps_a_decision_that_came_first(
    store: ApprovalStore, redis_client: aioredis.Redis
) -> None:
    gate = await gate_of(store, NO_POLL_S)
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record))
    await asyncio.sleep(0.05)
    await decide_silently(redis_client, record, "alice")
    await gate.close()
    assert waiting.result().state is ApprovalState.APPROVED


async def test_a_client_leaving_abandons_its_approval(
    store: ApprovalStore, gate: ApprovalGate
) -> None:
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting

    async def stored_state() -> ApprovalState | None:
        current = await store.get("acme", record.id)
        return None if current is None else current.state

    for _ in range(50):
        if await stored_state() is ApprovalState.ABANDONED:
            break
        await asyncio.sleep(0.01)
    current = await store.get("acme", record.id)
    assert current is not None
    assert (current.state, current.reason) == (ApprovalState.ABANDONED, CLIENT_LEFT_REASON)


async def test_a_final_record_is_answered_at_once(store: ApprovalStore, gate: ApprovalGate) -> None:
    record = await held(store)
    decided = await store.decide("acme", record.id, approve=False, approver="alice")
    assert await asyncio.wait_for(gate.wait(decided), 0.05) == decided


async def test_an_approval_lost_by_redis_is_abandoned(
    store: ApprovalStore, redis_client: aioredis.Redis
) -> None:
    gate = await gate_of(store, poll_s=0.05)
    try:
        record = await held(store)
        waiting = asyncio.create_task(gate.wait(record, timeout_s=10))
        await asyncio.sleep(0.02)
        await redis_client.flushdb()
        result = await asyncio.wait_for(waiting, 1.0)
        assert result.state is ApprovalState.ABANDONED
    finally:
        await gate.close()


async def test_the_gate_works_on_a_redis_cluster(
    redis_cluster_client: aioredis.RedisCluster,
) -> None:
    store = ApprovalStore(redis_cluster_client)
    gate = await gate_of(store, NO_POLL_S)
    try:
        record = await held(store)
        waiting = asyncio.create_task(gate.wait(record))
        await asyncio.sleep(0.05)
        await store.decide("acme", record.id, approve=True, approver="alice")
        result = await asyncio.wait_for(waiting, 1.0)
        assert result.state is ApprovalState.APPROVED
    finally:
        await gate.close()


async def test_the_gate_resubscribes_after_losing_its_connection(
    store: ApprovalStore, gate: ApprovalGate, redis_client: aioredis.Redis
) -> None:
    await redis_client.client_kill_filter(_type="pubsub")
    await asyncio.sleep(RESUBSCRIBE_DELAY_S + 0.5)
    await asyncio.wait_for(gate.wait_subscribed(), 1.0)
    record = await held(store)
    waiting = asyncio.create_task(gate.wait(record))
    await asyncio.sleep(0.05)
    await store.decide("acme", record.id, approve=True, approver="alice")
    result = await asyncio.wait_for(waiting, 0.5)
    assert result.state is ApprovalState.APPROVED
