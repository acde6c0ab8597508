"""The approval store against a real Redis: idempotent creation, the transitions and their races,
listing, tenant isolation, retention, and the announcements watchers rely on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from gatez.approvals import (
    CHANNEL_PATTERN,
    RETENTION_S,
    Approval,
    ApprovalEvent,
    ApprovalState,
    ApprovalStore,
    call_key_key,
    index_key,
    parse_event,
    pending_key,
    record_key,
)
from gatez.errors import FailedPrecondition, InvalidRequest, NotFound


async def held(
    store: ApprovalStore,
    tenant_id: str = "acme",
    *,
    call_key: str = "call-1",
    timeout_s: float = 60.0,
    tool: str = "delete_repo",
) -> Approval:
    return await store.create(
        tenant_id,
        caller="key-1",
        server="github",
        tool=tool,
        arguments_json='{"repo":"gatez"}',
        session_digest="s" * 64,
        held_because=f"tool {tool}",
        timeout_s=timeout_s,
        call_key=call_key,
    )


@pytest.fixture
def store(redis_client: aioredis.Redis) -> ApprovalStore:
    return ApprovalStore(redis_client)


async def test_create_records_a_pending_approval(store: ApprovalStore) -> None:
    record = await held(store, timeout_s=30)
    assert record.state is ApprovalState.PENDING
    assert (record.tenant_id, record.caller, record.server, record.tool) == (
        "acme",
        "key-1",
        "github",
        "delete_repo",
    )
    assert record.arguments_json == '{"repo":"gatez"}'
    assert record.held_because == "tool delete_repo"
    assert record.decide_time is None
    assert (record.expire_time - record.create_time).total_seconds() == pytest.approx(30, abs=0.01)
    assert await store.get("acme", record.id) == record


async def test_creating_the_same_call_again_reattaches_while_pending(store: ApprovalStore) -> None:
    first = await held(store)
    again = await held(store)
    other = await held(store, call_key="call-2")
    assert again == first
    assert other.id != first.id


@pytest.mark.parametrize("approve", [True, False])
async def test_a_retry_after_the_decision_gets_the_decision(
    store: ApprovalStore, approve: bool
) -> None:
    first = await held(store)
    decided = await store.decide("acme", first.id, approve=approve, approver="ops", reason="ok")
    again = await held(store)
    assert again == decided
    assert again.state is (ApprovalState.APPROVED if approve else ApprovalState.DENIED)


async def test_a_decision_is_reused_only_for_a_while(redis_client: aioredis.Redis) -> None:
    store = ApprovalStore(redis_client, reuse_after_decision_s=0)
    first = await held(store, timeout_s=0.05)
    await store.decide("acme", first.id, approve=True, approver="ops")
    await asyncio.sleep(0.08)  # past the deadline and the (empty) reuse window
    again = await held(store)
    assert again.id != first.id
    assert again.state is ApprovalState.PENDING


@pytest.mark.parametrize("end", ["expire", "abandon"])
async def test_a_retry_after_a_timeout_or_abandon_is_held_anew(
    store: ApprovalStore, end: str
) -> None:
    first = await held(store)
    if end == "expire":
        await store.expire("acme", first.id)
    else:
        await store.abandon("acme", first.id, "gateway stopping")
    again = await held(store)
    assert again.id != first.id
    assert again.state is ApprovalState.PENDING
    stored_first = await store.get("acme", first.id)
    assert stored_first is not None and stored_first.state.final


async def test_a_stale_pending_approval_times_out_on_the_next_create(
    store: ApprovalStore,
) -> None:
    # Its holder died without marking it: the deadline passed with the record still PENDING.
    first = await held(store, timeout_s=0.05)
    await asyncio.sleep(0.08)
    again = await held(store)
    assert again.id != first.id
    stale = await store.get("acme", first.id)
    assert stale is not None and stale.state is ApprovalState.TIMED_OUT


@pytest.mark.parametrize(
    ("approve", "state"), [(True, ApprovalState.APPROVED), (False, ApprovalState.DENIED)]
)
async def test_decide_moves_pending_to_its_decision(
    store: ApprovalStore, approve: bool, state: ApprovalState
) -> None:
    record = await held(store)
    decided = await store.decide(
        "acme", record.id, approve=approve, approver="alice", reason="looks fine"
    )
    assert decided.state is state
    assert (decided.approver, decided.reason) == ("alice", "looks fine")
    assert decided.decide_time is not None and decided.decide_time >= record.create_time
    assert await store.get("acme", record.id) == decided


async def test_deciding_twice_is_refused_and_the_first_decision_stays(
    store: ApprovalStore,
) -> None:
    record = await held(store)
    await store.decide("acme", record.id, approve=False, approver="alice")
    with pytest.raises(FailedPrecondition, match="denied already"):
        await store.decide("acme", record.id, approve=True, approver="mallory")
    kept = await store.get("acme", record.id)
    assert kept is not None
    assert (kept.state, kept.approver) == (ApprovalState.DENIED, "alice")


async def test_deciding_after_the_deadline_is_refused_and_times_out(store: ApprovalStore) -> None:
    record = await held(store, timeout_s=0.05)
    await asyncio.sleep(0.08)
    with pytest.raises(FailedPrecondition, match="timed out"):
        await store.decide("acme", record.id, approve=True, approver="alice")
    late = await store.get("acme", record.id)
    assert late is not None and late.state is ApprovalState.TIMED_OUT
    assert await store.list("acme", ApprovalState.PENDING) == []


@pytest.mark.parametrize("end", ["expire", "abandon"])
async def test_deciding_an_ended_approval_is_refused(store: ApprovalStore, end: str) -> None:
    record = await held(store)
    if end == "expire":
        await store.expire("acme", record.id)
    else:
        await store.abandon("acme", record.id, "client left")
    with pytest.raises(FailedPrecondition):
        await store.decide("acme", record.id, approve=True, approver="alice")


async def test_decide_needs_an_approver(store: ApprovalStore) -> None:
    record = await held(store)
    with pytest.raises(InvalidRequest, match="approver"):
        await store.decide("acme", record.id, approve=True, approver="  ")


@pytest.mark.parametrize("approval_id", ["apr-0123456789abcdef", "nonsense", "apr-}x{"])
async def test_deciding_an_unknown_id_is_not_found(store: ApprovalStore, approval_id: str) -> None:
    with pytest.raises(NotFound):
        await store.decide("acme", approval_id, approve=True, approver="alice")


async def test_expire_and_abandon_leave_a_decision_alone(store: ApprovalStore) -> None:
    record = await held(store)
    decided = await store.decide("acme", record.id, approve=True, approver="alice")
    assert await store.expire("acme", record.id) == decided
    assert await store.abandon("acme", record.id, "gateway stopping") == decided


async def test_abandon_records_why(store: ApprovalStore) -> None:
    record = await held(store)
    abandoned = await store.abandon("acme", record.id, "gateway stopping")
    assert abandoned is not None
    assert (abandoned.state, abandoned.reason) == (ApprovalState.ABANDONED, "gateway stopping")
    assert abandoned.decide_time is not None


@pytest.mark.parametrize("attempt", range(20))
async def test_timeout_and_approval_at_the_same_instant_agree(
    redis_client: aioredis.Redis, redis_server: Any, attempt: int
) -> None:
    """Two connections race an approval against the holder's timeout: exactly one wins, and
    both sides see the winner's state."""
    operator_client = aioredis.Redis.from_url(redis_server.url)
    try:
        holder = ApprovalStore(redis_client)
        operator = ApprovalStore(operator_client)
        record = await held(holder, call_key=f"race-{attempt}")

        async def approve() -> Approval | Exception:
            try:
                return await operator.decide("acme", record.id, approve=True, approver="alice")
            except FailedPrecondition as refused:
                return refused

        decision, expired = await asyncio.gather(approve(), holder.expire("acme", record.id))
        assert expired is not None
        stored = await holder.get("acme", record.id)
        assert stored == expired
        if isinstance(decision, Approval):
            assert expired.state is ApprovalState.APPROVED and decision == expired
        else:
            assert expired.state is ApprovalState.TIMED_OUT
    finally:
        await operator_client.aclose()


async def test_list_is_newest_first_and_filters_by_state(store: ApprovalStore) -> None:
    records = []
    for n in range(4):
        records.append(await held(store, call_key=f"call-{n}"))
        await asyncio.sleep(0.002)  # distinct creation milliseconds
    await store.decide("acme", records[1].id, approve=True, approver="alice")
    await store.expire("acme", records[2].id)
    listed = await store.list("acme")
    assert [r.id for r in listed] == [r.id for r in reversed(records)]
    pending = await store.list("acme", ApprovalState.PENDING)
    assert [r.id for r in pending] == [records[3].id, records[0].id]
    approved = await store.list("acme", ApprovalState.APPROVED)
    assert [r.id for r in approved] == [records[1].id]
    assert [r.id for r in await store.list("acme", limit=2)] == [records[3].id, records[2].id]


async def test_list_is_bounded(store: ApprovalStore, redis_client: aioredis.Redis) -> None:
    # 510 records straight into Redis (the index with the records), faster than 510 creates.
    first = await held(store)
    fields: dict[Any, Any] = await redis_client.hgetall(record_key("acme", first.id))
    async with redis_client.pipeline(transaction=False) as pipe:
        for n in range(510):
            approval_id = f"apr-{n:016x}"
            pipe.hset(record_key("acme", approval_id), mapping={**fields, b"id": approval_id})
            pipe.zadd(index_key("acme"), {approval_id: n})
        await pipe.execute()
    assert len(await store.list("acme")) == 500


async def test_a_record_gone_after_retention_is_skipped(
    store: ApprovalStore, redis_client: aioredis.Redis
) -> None:
    kept = await held(store, call_key="call-1")
    gone = await held(store, call_key="call-2")
    await redis_client.delete(record_key("acme", gone.id))
    assert [r.id for r in await store.list("acme")] == [kept.id]
    assert await store.get("acme", gone.id) is None


async def test_tenants_are_isolated(store: ApprovalStore) -> None:
    theirs = await held(store, "tenant-a")
    mine = await held(store, "tenant-b")  # the same call_key, another tenant
    assert mine.id != theirs.id
    assert await store.get("tenant-b", theirs.id) is None
    assert [r.id for r in await store.list("tenant-b")] == [mine.id]
    with pytest.raises(NotFound):
        await store.decide("tenant-b", theirs.id, approve=True, approver="mallory")
    assert await store.expire("tenant-b", theirs.id) is None
    assert await store.abandon("tenant-b", theirs.id, "x") is None
    untouched = await store.get("tenant-a", theirs.id)
    assert untouched is not None and untouched.state is ApprovalState.PENDING


async def test_every_key_carries_the_tenant_hash_tag_and_the_retention(
    store: ApprovalStore, redis_client: aioredis.Redis
) -> None:
    record = await held(store)
    keys = sorted(k.decode() if isinstance(k, bytes) else k for k in await redis_client.keys("*"))
    assert keys == sorted(
        [
            record_key("acme", record.id),
            index_key("acme"),
            pending_key("acme"),
            call_key_key("acme", "call-1"),
        ]
    )
    for key in keys:
        assert "{acme}" in key
        ttl = await redis_client.ttl(key)
        assert RETENTION_S - 5 <= ttl <= RETENTION_S, key


async def test_invalid_tenant_ids_are_refused(store: ApprovalStore) -> None:
    with pytest.raises(InvalidRequest):
        await held(store, "a}b")
    with pytest.raises(InvalidRequest):
        await store.list("")


async def test_each_change_is_announced(store: ApprovalStore, redis_client: aioredis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe(CHANNEL_PATTERN)
    try:
        first = await held(store, call_key="call-1")
        await held(store, call_key="call-1")  # re-attached: nothing new to announce
        second = await held(store, call_key="call-2")
        await store.decide("acme", first.id, approve=False, approver="alice")
        await store.abandon("acme", second.id, "client left")
        events: list[ApprovalEvent | None] = []
        deadline = asyncio.get_running_loop().time() + 2.0
        # get_message gives None for the subscription's confirmation too.
        while len(events) < 4 and asyncio.get_running_loop().time() < deadline:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                events.append(parse_event(message["channel"], message["data"]))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    assert events == [
        ApprovalEvent("acme", first.id, ApprovalState.PENDING),
        ApprovalEvent("acme", second.id, ApprovalState.PENDING),
        ApprovalEvent("acme", first.id, ApprovalState.DENIED),
        ApprovalEvent("acme", second.id, ApprovalState.ABANDONED),
    ]


@pytest.mark.parametrize(
    ("channel", "data"),
    [
        ("gatez:approvals:{acme}", "apr-0123456789abcdef bogus"),
        ("gatez:approvals:{acme}", "nonsense pending"),
        ("other", "apr-0123456789abcdef pending"),
    ],
)
def test_parse_event_ignores_what_is_not_an_event(channel: str, data: str) -> None:
    assert parse_event(channel, data) is None


async def test_the_store_works_on_a_redis_cluster(
    redis_cluster_client: aioredis.RedisCluster,
) -> None:
    store = ApprovalStore(redis_cluster_client)
    record = await held(store)
    assert await held(store) == record
    await store.decide("acme", record.id, approve=True, approver="alice")
    assert [r.state for r in await store.list("acme")] == [ApprovalState.APPROVED]
