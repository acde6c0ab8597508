"""PolicyHolder (compile, persist with mode 0600, swap; survive a restart) and the ACK/NACK
messages PolicyWatcher answers the control service's snapshots with."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from extproc.policy_source import PolicyHolder, PolicyWatcher
from gatez.errors import InvalidPolicy
from gatez.v1 import control_pb2, policy_pb2

PROVIDER_KEY = "sk-proj-provider-secret-0001"


def snapshot(version: int, *, alias: str = "fast") -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        version=version,
        tenants=[policy_pb2.Tenant(id="acme")],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            )
        ],
        provider_credentials=[
            policy_pb2.ProviderCredential(provider="openai", api_key=PROVIDER_KEY)
        ],
        model_routes=[
            policy_pb2.ModelRoute(alias=alias, provider="openai", upstream_model="gpt-4o-mini")
        ],
    )


def invalid_snapshot(version: int) -> policy_pb2.PolicySnapshot:
    bad = snapshot(version)
    bad.model_routes.add(alias="slow", provider="nowhere", upstream_model="gpt-4o")
    return bad


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_apply_compiles_swaps_and_persists_with_mode_0600(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "dataplane"
    holder = PolicyHolder(state_dir)
    assert holder.get() is None
    compiled = holder.apply(snapshot(3))
    assert holder.get() is compiled
    assert compiled.version == 3
    persisted = state_dir / "snapshot.pb"
    assert mode(persisted) == 0o600
    assert policy_pb2.PolicySnapshot.FromString(persisted.read_bytes()) == snapshot(3)
    assert sorted(p.name for p in state_dir.iterdir()) == ["snapshot.pb"]


def test_a_restart_serves_the_persisted_policy(tmp_path: Path) -> None:
    PolicyHolder(tmp_path).apply(snapshot(3))
    PolicyHolder(tmp_path).apply(snapshot(4, alias="smart"))

    restarted = PolicyHolder(tmp_path)
    assert restarted.load_persisted() is True
    current = restarted.get()
    assert current is not None
    assert current.version == 4
    assert current.model_aliases("acme") == ["smart"]
    target = current.resolve_model("acme", "smart")
    assert target is not None and target.provider.api_key == PROVIDER_KEY


def test_an_invalid_snapshot_changes_nothing(tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path)
    good = holder.apply(snapshot(3))
    before = (tmp_path / "snapshot.pb").read_bytes()
    with pytest.raises(InvalidPolicy, match="unknown provider 'nowhere'"):
        holder.apply(invalid_snapshot(4))
    assert holder.get() is good
    assert (tmp_path / "snapshot.pb").read_bytes() == before
    assert mode(tmp_path / "snapshot.pb") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.pb"]


def test_an_invalid_first_snapshot_writes_no_file(tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path / "state")
    with pytest.raises(InvalidPolicy):
        holder.apply(invalid_snapshot(1))
    assert holder.get() is None
    assert not (tmp_path / "state" / "snapshot.pb").exists()


def test_a_persisted_file_is_replaced_not_rewritten_in_place(tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path)
    holder.apply(snapshot(3))
    inode = (tmp_path / "snapshot.pb").stat().st_ino
    # A reader holding the old file keeps a whole old snapshot while the new one lands.
    with (tmp_path / "snapshot.pb").open("rb") as old:
        holder.apply(snapshot(4))
        assert policy_pb2.PolicySnapshot.FromString(old.read()).version == 3
    assert (tmp_path / "snapshot.pb").stat().st_ino != inode


def test_a_stale_temporary_file_does_not_loosen_the_mode(tmp_path: Path) -> None:
    stale = tmp_path / "snapshot.tmp"
    stale.write_bytes(b"left over from a crash")
    stale.chmod(0o644)
    PolicyHolder(tmp_path).apply(snapshot(3))
    assert mode(tmp_path / "snapshot.pb") == 0o600


def test_load_persisted_without_a_file_starts_empty(tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path / "missing")
    assert holder.load_persisted() is False
    assert holder.get() is None


@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe not a protobuf",
        invalid_snapshot(9).SerializeToString(),
    ],
    ids=["garbage", "no-longer-compiles"],
)
def test_load_persisted_refuses_an_unusable_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "snapshot.pb").write_bytes(content)
    holder = PolicyHolder(tmp_path)
    assert holder.load_persisted() is False
    assert holder.get() is None


async def test_apply_wakes_whoever_waits_for_a_change(tmp_path: Path) -> None:
    holder = PolicyHolder(tmp_path)
    waiter = asyncio.create_task(holder.changed.wait())
    await asyncio.sleep(0)
    holder.apply(snapshot(3))
    assert await asyncio.wait_for(waiter, 1) is True


# --- PolicyWatcher: ACK / NACK ------------------------------------------------------------


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    # Never connected: _apply only answers, it does not talk.
    channel = grpc.aio.insecure_channel("127.0.0.1:9")
    yield channel
    await channel.close(grace=None)


def watcher(holder: PolicyHolder, channel: grpc.aio.Channel) -> PolicyWatcher:
    return PolicyWatcher(holder, channel, "admin-token", "node-a")


async def test_a_valid_snapshot_is_acked(tmp_path: Path, channel: grpc.aio.Channel) -> None:
    holder = PolicyHolder(tmp_path)
    answer = watcher(holder, channel)._apply(snapshot(3))
    assert answer == control_pb2.WatchRequest(applied_version=3)
    current = holder.get()
    assert current is not None and current.version == 3


async def test_a_newer_snapshot_replaces_the_current_one(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = PolicyHolder(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(3))
    assert watch._apply(snapshot(4, alias="smart")) == control_pb2.WatchRequest(applied_version=4)
    current = holder.get()
    assert current is not None and current.model_aliases("acme") == ["smart"]


async def test_the_same_version_again_is_acked_without_recompiling(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = PolicyHolder(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(3))
    current = holder.get()
    assert watch._apply(snapshot(3)) == control_pb2.WatchRequest(applied_version=3)
    assert holder.get() is current


@pytest.mark.parametrize(("current_version", "applied"), [(None, 0), (3, 3)])
async def test_an_invalid_snapshot_is_nacked_with_the_reason(
    tmp_path: Path, channel: grpc.aio.Channel, current_version: int | None, applied: int
) -> None:
    holder = PolicyHolder(tmp_path)
    watch = watcher(holder, channel)
    if current_version is not None:
        watch._apply(snapshot(current_version))
    current = holder.get()
    answer = watch._apply(invalid_snapshot(4))
    assert answer.applied_version == applied
    assert answer.rejected_version == 4
    assert "unknown provider 'nowhere'" in answer.error
    assert holder.get() is current


async def test_a_snapshot_with_an_invalid_port_is_nacked(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = PolicyHolder(tmp_path)
    watch = watcher(holder, channel)
    bad = snapshot(5)
    bad.providers[0].base_url = "https://api.openai.com:99999/v1"
    answer = watch._apply(bad)
    assert (answer.applied_version, answer.rejected_version) == (0, 5)
    assert "base_url" in answer.error
    assert holder.get() is None
