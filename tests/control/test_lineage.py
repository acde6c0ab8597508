"""Policy lineage through the real control service and a real data-plane watcher: versions only
move forward within a lineage; a control service restarted on an empty Redis starts another
lineage, which the data plane refuses while it keeps serving; GetPolicyStatus shows the conflict
(and every version, 0 included, in grpcurl's JSON); AdoptLineage is the explicit way on."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf import json_format

from control import ControlServer, start
from control.store import SNAPSHOT_KEY
from extproc.policy_source import PolicyHolder, PolicyPosition, PolicyWatcher
from gatez.processes import free_port
from gatez.secrets import secret_box
from gatez.settings import Settings
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import (
    AUTH,
    DATAPLANE_AUTH,
    DATAPLANE_TOKEN,
    Api,
    eventually,
    raw,
    rpc_error,
)

NODE = "dp-1"


# Calls wait for the channel to reconnect after a test restarted the control service (without
# it, a call made during the channel's reconnect backoff fails at once).
READY: dict[str, Any] = {"metadata": AUTH, "wait_for_ready": True, "timeout": 5}


async def create_tenant(api: Api, tenant_id: str) -> int:
    response = await api.control.CreateTenant(
        api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id=tenant_id)), **READY
    )
    version: int = response.policy_version
    return version


async def status(api: Api) -> api_pb.GetPolicyStatusResponse:
    response: api_pb.GetPolicyStatusResponse = await api.control.GetPolicyStatus(
        api_pb.GetPolicyStatusRequest(), **READY
    )
    return response


async def status_json(api: Api) -> dict[str, Any]:
    """GetPolicyStatus as grpcurl prints it (json_format with its default options)."""
    parsed: dict[str, Any] = json.loads(json_format.MessageToJson(await status(api)))
    return parsed


async def plane(api: Api) -> api_pb.DataPlaneStatus:
    """The data plane's status; empty until it connected."""
    found = [p for p in (await status(api)).data_planes if p.node_id == NODE]
    return found[0] if found else api_pb.DataPlaneStatus()


async def until(probe: Callable[[], Awaitable[Any]], accept: Callable[[Any], bool]) -> Any:
    return await eventually(probe, accept, timeout_s=5.0)


class Restartable:
    """A control service on a fixed port that a test can stop and start again."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.server: ControlServer | None = None

    async def start(self) -> None:
        self.server = await start(self.settings)

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(grace_s=0.5)
            self.server = None


@pytest.fixture
async def control(settings: Settings, redis_client: aioredis.Redis) -> AsyncIterator[Restartable]:
    fixed = dataclasses.replace(settings, control_address=f"127.0.0.1:{free_port()}")
    service = Restartable(fixed)
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def api_on(control: Restartable) -> AsyncIterator[Api]:
    async with grpc.aio.insecure_channel(control.settings.control_address) as channel:
        yield Api.on(channel)


@pytest.fixture
async def data_plane(
    control: Restartable, tmp_path: Path
) -> AsyncIterator[tuple[PolicyHolder, PolicyWatcher]]:
    """A data plane's policy side (holder and watcher) in this process, on the same key."""
    holder = PolicyHolder(tmp_path / "dataplane", secret_box(control.settings, create=False))
    async with grpc.aio.insecure_channel(control.settings.control_address) as channel:
        watcher = PolicyWatcher(holder, channel, DATAPLANE_TOKEN, NODE, max_backoff_s=0.1)
        task = asyncio.create_task(watcher.run())
        yield holder, watcher
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def served(holder: PolicyHolder, version: int) -> None:
    """Waits until `holder` serves `version`."""

    async def serving() -> int | None:
        return holder.current.version if holder.current else None

    await until(serving, lambda v: v == version)


async def test_the_first_version_draws_a_lineage_that_every_later_one_keeps(
    api_on: Api, redis_client: aioredis.Redis
) -> None:
    before = await status(api_on)
    assert (before.version, before.lineage) == (0, "")
    await create_tenant(api_on, "acme")
    lineage = (await status(api_on)).lineage
    assert re.fullmatch(r"[0-9a-f]{32}", lineage)
    assert await create_tenant(api_on, "globex") == 2
    assert (await status(api_on)).lineage == lineage
    stored = policy_pb2.PolicySnapshot.FromString(raw(await redis_client.get(SNAPSHOT_KEY)))
    assert PolicyPosition.of(stored) == PolicyPosition(lineage, 2)


async def test_redis_emptied_under_a_running_control_service_keeps_the_lineage(
    api_on: Api, redis_client: aioredis.Redis
) -> None:
    await create_tenant(api_on, "acme")
    lineage = (await status(api_on)).lineage
    await redis_client.flushdb()
    # The next change builds on what this process holds: same lineage, the next version.
    assert await create_tenant(api_on, "globex") == 2
    after = await status(api_on)
    assert (after.version, after.lineage) == (2, lineage)
    listed = await api_on.control.ListTenants(api_pb.ListTenantsRequest(), metadata=AUTH)
    assert [t.id for t in listed.tenants] == ["acme", "globex"]


async def test_every_version_shows_in_grpcurls_json_0_included(api_on: Api) -> None:
    fresh = await status_json(api_on)
    assert fresh["version"] == "0"

    call = api_on.data_plane.Watch(metadata=DATAPLANE_AUTH)
    await call.write(api_pb.WatchRequest(node_id=NODE))
    await call.read()
    watching = await until(lambda: status_json(api_on), lambda s: bool(s.get("dataPlanes")))
    [reported] = watching["dataPlanes"]
    assert reported["appliedVersion"] == "0"
    assert reported["connected"] is True
    assert "rejectedVersion" not in reported  # it rejected nothing

    # A NACK of version 0 (a data plane that holds a policy, offered the empty one).
    await call.write(
        api_pb.WatchRequest(
            applied_version=7, applied_lineage="c" * 32, rejected_version=0, error="refused"
        )
    )
    nacked = await until(
        lambda: status_json(api_on), lambda s: "rejectedVersion" in s["dataPlanes"][0]
    )
    assert nacked["dataPlanes"][0]["rejectedVersion"] == "0"
    assert "lineage conflict" in nacked["dataPlanes"][0]["conflict"]
    call.cancel()
    gone = await until(
        lambda: status_json(api_on), lambda s: s["dataPlanes"][0]["connected"] is False
    )
    assert gone["dataPlanes"][0]["connected"] is False


async def test_a_control_service_restarted_on_an_empty_redis_cannot_take_the_data_plane_back(
    control: Restartable,
    api_on: Api,
    data_plane: tuple[PolicyHolder, PolicyWatcher],
    redis_client: aioredis.Redis,
) -> None:
    holder, _ = data_plane
    await create_tenant(api_on, "acme")
    held_version = await create_tenant(api_on, "globex")
    held_lineage = (await status(api_on)).lineage
    await served(holder, held_version)

    await control.stop()
    await redis_client.flushdb()
    await control.start()

    # Offered the empty policy (version 0, no lineage): refused, reported.
    conflicted = await until(lambda: plane(api_on), lambda p: p.HasField("rejected_version"))
    assert conflicted.rejected_version == 0
    assert (conflicted.applied_version, conflicted.applied_lineage) == (held_version, held_lineage)
    assert "lineage conflict" in conflicted.conflict
    assert held_lineage in conflicted.conflict

    # A change starts a new lineage; the data plane refuses it and keeps serving its policy.
    await create_tenant(api_on, "newco")
    fresh = await status(api_on)
    assert fresh.version == 1 and fresh.lineage not in ("", held_lineage)
    nacked = await until(lambda: plane(api_on), lambda p: p.rejected_version == 1)
    assert "lineage" in nacked.error and held_lineage in nacked.error
    assert fresh.lineage in nacked.conflict and held_lineage in nacked.conflict
    current = holder.current
    assert current is not None and current.version == held_version
    assert sorted(current.tenants) == ["acme", "globex"]

    # The explicit way on: continue the data plane's lineage with this policy.
    adopted = await api_on.control.AdoptLineage(
        api_pb.AdoptLineageRequest(lineage=held_lineage), **READY
    )
    assert (adopted.lineage, adopted.policy_version) == (held_lineage, held_version + 1)
    resolved = await until(lambda: plane(api_on), lambda p: p.applied_version == held_version + 1)
    assert (resolved.applied_lineage, resolved.conflict) == (held_lineage, "")
    current = holder.current
    assert current is not None and sorted(current.tenants) == ["newco"]


async def test_redis_gone_back_to_an_older_copy_refuses_changes_until_resolved(
    control: Restartable,
    api_on: Api,
    data_plane: tuple[PolicyHolder, PolicyWatcher],
    redis_client: aioredis.Redis,
) -> None:
    holder, _ = data_plane
    await create_tenant(api_on, "acme")
    old_copy = raw(await redis_client.get(SNAPSHOT_KEY))
    await create_tenant(api_on, "globex")
    newest = await create_tenant(api_on, "initech")
    await served(holder, newest)

    await control.stop()
    await redis_client.set(SNAPSHOT_KEY, old_copy)
    await control.start()

    ahead = await until(lambda: plane(api_on), lambda p: p.HasField("rejected_version"))
    assert ahead.rejected_version == 1
    assert "older than version 3" in ahead.error
    assert "newer than this control service's version 1" in ahead.conflict

    # Counting on from the old copy would give versions the data plane already applied to
    # another policy: refused, and nothing saved.
    error = await rpc_error(create_tenant(api_on, "hooli"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AdoptLineage" in (error.details() or "")
    assert (await status(api_on)).version == 1

    lineage = (await status(api_on)).lineage
    adopted = await api_on.control.AdoptLineage(
        api_pb.AdoptLineageRequest(lineage=lineage), **READY
    )
    assert adopted.policy_version == newest + 1
    await served(holder, newest + 1)
    assert await create_tenant(api_on, "hooli") == newest + 2


@pytest.mark.parametrize(
    ("lineage", "words"),
    [("", "lineage is required"), ("not-hex", "32 hex digits"), ("A" * 32, "32 hex digits")],
)
async def test_adopt_lineage_refuses_what_is_not_a_lineage(
    api_on: Api, lineage: str, words: str
) -> None:
    error = await rpc_error(
        api_on.control.AdoptLineage(api_pb.AdoptLineageRequest(lineage=lineage), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (error.details() or "")
    assert (await status(api_on)).version == 0
