"""ControlService approvals over a real gRPC channel: the data plane's side is the approval
store on the same Redis, as a data plane holding calls would write them."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from control import service
from gatez.approvals import Approval, ApprovalStore
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, rpc_error


@pytest.fixture
async def store(api: Api, redis_client: aioredis.Redis) -> ApprovalStore:
    for tenant_id in ("acme", "globex"):
        await api.control.CreateTenant(
            api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id=tenant_id)), metadata=AUTH
        )
    return ApprovalStore(redis_client)


async def held(
    store: ApprovalStore, tenant_id: str = "acme", call_key: str = "call-1", timeout_s: float = 60
) -> Approval:
    return await store.create(
        tenant_id,
        caller="key-1",
        server="github",
        tool="delete_repo",
        arguments_json='{"repo":"gatez"}',
        session_digest="d" * 64,
        held_because="tool delete_repo",
        timeout_s=timeout_s,
        call_key=call_key,
    )


async def decide(api: Api, approval_id: str, **fields: Any) -> Any:
    request = {"tenant_id": "acme", "approval_id": approval_id, "approver": "alice"} | fields
    return await api.control.DecideApproval(api_pb.DecideApprovalRequest(**request), metadata=AUTH)


async def listed(
    api: Api,
    tenant_id: str = "acme",
    state: api_pb.ApprovalState = api_pb.APPROVAL_STATE_UNSPECIFIED,
) -> list[Any]:
    response = await api.control.ListApprovals(
        api_pb.ListApprovalsRequest(tenant_id=tenant_id, state=state), metadata=AUTH
    )
    return list(response.approvals)


async def test_list_shows_held_calls_newest_first(api: Api, store: ApprovalStore) -> None:
    first = await held(store, call_key="call-1")
    await asyncio.sleep(0.002)
    second = await held(store, call_key="call-2")
    approvals = await listed(api)
    assert [a.id for a in approvals] == [second.id, first.id]
    shown = approvals[1]
    assert (shown.tenant_id, shown.caller, shown.server, shown.tool) == (
        "acme",
        "key-1",
        "github",
        "delete_repo",
    )
    assert shown.arguments_json == '{"repo":"gatez"}'
    assert shown.session_id_digest == "d" * 64
    assert shown.held_because == "tool delete_repo"
    assert shown.state == api_pb.APPROVAL_STATE_PENDING
    assert shown.create_time.ToDatetime(tzinfo=first.create_time.tzinfo) == first.create_time
    assert shown.expire_time.ToDatetime(tzinfo=first.expire_time.tzinfo) == first.expire_time
    assert not shown.HasField("decide_time")


async def test_list_filters_by_state(api: Api, store: ApprovalStore) -> None:
    first = await held(store, call_key="call-1")
    second = await held(store, call_key="call-2")
    await decide(api, first.id, approve=True)
    assert [a.id for a in await listed(api, state=api_pb.APPROVAL_STATE_PENDING)] == [second.id]
    assert [a.id for a in await listed(api, state=api_pb.APPROVAL_STATE_APPROVED)] == [first.id]
    assert await listed(api, state=api_pb.APPROVAL_STATE_DENIED) == []


@pytest.mark.parametrize(
    ("approve", "state"),
    [(True, api_pb.APPROVAL_STATE_APPROVED), (False, api_pb.APPROVAL_STATE_DENIED)],
)
async def test_decide_records_the_decision_and_who_made_it(
    api: Api, store: ApprovalStore, approve: bool, state: api_pb.ApprovalState
) -> None:
    record = await held(store)
    response = await decide(api, record.id, approve=approve, reason="checked the repo")
    assert response.approval.state == state
    assert (response.approval.approver, response.approval.reason) == ("alice", "checked the repo")
    assert response.approval.HasField("decide_time")
    stored = await store.get("acme", record.id)
    assert stored is not None and stored.approver == "alice"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"approver": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"approver": "  "}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"approval_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"tenant_id": ""}, grpc.StatusCode.INVALID_ARGUMENT),
        ({"approval_id": "apr-0123456789abcdef"}, grpc.StatusCode.NOT_FOUND),
        ({"approval_id": "../../etc"}, grpc.StatusCode.NOT_FOUND),
        ({"tenant_id": "globex"}, grpc.StatusCode.NOT_FOUND),  # another tenant's approval
    ],
)
async def test_decide_refuses_bad_requests(
    api: Api, store: ApprovalStore, fields: dict[str, str], code: grpc.StatusCode
) -> None:
    record = await held(store)
    error = await rpc_error(decide(api, **({"approval_id": record.id} | fields)))
    assert error.code() == code
    still = await store.get("acme", record.id)
    assert still is not None and not still.state.final


async def test_deciding_twice_fails_the_precondition(api: Api, store: ApprovalStore) -> None:
    record = await held(store)
    await decide(api, record.id, approve=False)
    error = await rpc_error(decide(api, record.id, approve=True, approver="mallory"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "denied already" in (error.details() or "")


async def test_deciding_after_the_timeout_fails_the_precondition(
    api: Api, store: ApprovalStore
) -> None:
    record = await held(store, timeout_s=0.05)
    await asyncio.sleep(0.08)
    error = await rpc_error(decide(api, record.id, approve=True))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert [a.state for a in await listed(api)] == [api_pb.APPROVAL_STATE_TIMED_OUT]


async def test_a_tenant_sees_only_its_own_approvals(api: Api, store: ApprovalStore) -> None:
    theirs = await held(store, "acme")
    assert await listed(api, "globex") == []
    assert [a.id for a in await listed(api, "acme")] == [theirs.id]


@pytest.mark.parametrize("tenant_id", ["", "nobody"])
async def test_list_needs_a_known_tenant(api: Api, store: ApprovalStore, tenant_id: str) -> None:
    error = await rpc_error(listed(api, tenant_id))
    expected = grpc.StatusCode.INVALID_ARGUMENT if not tenant_id else grpc.StatusCode.NOT_FOUND
    assert error.code() == expected


def start_watch(api: Api, tenant_id: str = "acme") -> Any:
    return api.control.WatchApprovals(
        api_pb.WatchApprovalsRequest(tenant_id=tenant_id), metadata=AUTH
    )


async def next_approval(call: Any) -> Any:
    response = await asyncio.wait_for(call.read(), 2.0)
    assert isinstance(response, api_pb.WatchApprovalsResponse), response
    return response.approval


async def test_watch_sends_the_pending_then_each_change(api: Api, store: ApprovalStore) -> None:
    earlier = await held(store, call_key="call-0")
    decided = await held(store, call_key="call-d")
    await decide(api, decided.id, approve=True)
    watch = start_watch(api)
    first = await next_approval(watch)  # only the PENDING one of those before the watch
    assert (first.id, first.state) == (earlier.id, api_pb.APPROVAL_STATE_PENDING)

    record = await held(store, call_key="call-1")
    await held(store, "globex", call_key="call-1")  # another tenant's: not sent
    arrived = await next_approval(watch)
    assert (arrived.id, arrived.state) == (record.id, api_pb.APPROVAL_STATE_PENDING)

    await decide(api, record.id, approve=False, reason="no")
    change = await next_approval(watch)
    assert (change.id, change.state) == (record.id, api_pb.APPROVAL_STATE_DENIED)
    assert (change.approver, change.reason) == ("alice", "no")

    await store.abandon("acme", earlier.id, "client left")
    change = await next_approval(watch)
    assert (change.id, change.state) == (earlier.id, api_pb.APPROVAL_STATE_ABANDONED)
    watch.cancel()


async def test_watch_catches_up_on_a_lost_announcement(
    api: Api,
    store: ApprovalStore,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(service, "APPROVALS_CATCH_UP_S", 0.2)
    record = await held(store)
    watch = start_watch(api)
    assert (await next_approval(watch)).id == record.id
    # Decided without the announcement: the watcher's periodic re-read finds it.
    await redis_client.hset(
        f"gatez:approval:{{acme}}:{record.id}",
        mapping={"state": "approved", "approver": "alice", "decided_ms": 1},
    )
    await redis_client.zrem("gatez:approvals:{acme}:pending", record.id)
    response = await asyncio.wait_for(watch.read(), 2.0)
    watch.cancel()
    assert (response.approval.id, response.approval.state) == (
        record.id,
        api_pb.APPROVAL_STATE_APPROVED,
    )


async def test_watch_needs_a_known_tenant(api: Api, store: ApprovalStore) -> None:
    call = start_watch(api, "nobody")
    error = await rpc_error(call.read())
    assert error.code() == grpc.StatusCode.NOT_FOUND
