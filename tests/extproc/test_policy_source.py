"""PolicyHolder (compile, persist with mode 0600 and credentials sealed, swap; survive a restart;
never go backwards or onto another lineage) and the ACK/NACK messages PolicyWatcher answers the
control service's snapshots with."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from extproc.policy_source import (
    PolicyConflict,
    PolicyHolder,
    PolicyPosition,
    PolicyWatcher,
    refusal,
)
from gatez.errors import InvalidPolicy
from gatez.secrets import SecretBox
from gatez.v1 import control_pb2, policy_pb2

PROVIDER_KEY = "sk-proj-provider-secret-0001"
BOX = SecretBox.generate()
LINEAGE = "a" * 32
OTHER_LINEAGE = "b" * 32


def snapshot(
    version: int, *, alias: str = "fast", lineage: str = LINEAGE, box: SecretBox = BOX
) -> policy_pb2.PolicySnapshot:
    return policy_pb2.PolicySnapshot(
        version=version,
        lineage=lineage,
        tenants=[policy_pb2.Tenant(id="acme")],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            ),
            policy_pb2.Provider(
                name="azure",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://azure.example.com/v1",
            ),
        ],
        provider_credentials=[box.seal("openai", PROVIDER_KEY)],
        model_routes=[
            policy_pb2.ModelRoute(alias=alias, provider="openai", upstream_model="gpt-4o-mini")
        ],
    )


def holder_at(path: Path) -> PolicyHolder:
    return PolicyHolder(path, BOX)


def invalid_snapshot(version: int) -> policy_pb2.PolicySnapshot:
    bad = snapshot(version)
    bad.model_routes.add(alias="slow", provider="nowhere", upstream_model="gpt-4o")
    return bad


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_apply_compiles_swaps_and_persists_with_mode_0600(tmp_path: Path) -> None:
    state_dir = tmp_path / "state" / "dataplane"
    holder = holder_at(state_dir)
    assert holder.get() is None
    compiled = holder.apply(snapshot(3))
    assert holder.get() is compiled
    assert compiled.version == 3
    persisted = state_dir / "snapshot.pb"
    assert mode(persisted) == 0o600
    assert PolicyPosition.of(policy_pb2.PolicySnapshot.FromString(persisted.read_bytes())) == (
        PolicyPosition(LINEAGE, 3)
    )
    # The provider key is opened in memory only; on disk it stays sealed.
    assert PROVIDER_KEY.encode() not in persisted.read_bytes()
    target = compiled.resolve_model("acme", "fast")
    assert target is not None and target.provider.api_key == PROVIDER_KEY
    assert sorted(p.name for p in state_dir.iterdir()) == ["snapshot.pb"]


def test_a_restart_serves_the_persisted_policy(tmp_path: Path) -> None:
    holder_at(tmp_path).apply(snapshot(3))
    holder_at(tmp_path).apply(snapshot(4, alias="smart"))

    restarted = holder_at(tmp_path)
    assert restarted.load_persisted() is True
    current = restarted.get()
    assert current is not None
    assert current.version == 4
    assert current.model_aliases("acme") == ["smart"]
    target = current.resolve_model("acme", "smart")
    assert target is not None and target.provider.api_key == PROVIDER_KEY


def test_an_invalid_snapshot_changes_nothing(tmp_path: Path) -> None:
    holder = holder_at(tmp_path)
    good = holder.apply(snapshot(3))
    before = (tmp_path / "snapshot.pb").read_bytes()
    with pytest.raises(InvalidPolicy, match="unknown provider 'nowhere'"):
        holder.apply(invalid_snapshot(4))
    assert holder.get() is good
    assert (tmp_path / "snapshot.pb").read_bytes() == before
    assert mode(tmp_path / "snapshot.pb") == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["snapshot.pb"]


def test_an_invalid_first_snapshot_writes_no_file(tmp_path: Path) -> None:
    holder = holder_at(tmp_path / "state")
    with pytest.raises(InvalidPolicy):
        holder.apply(invalid_snapshot(1))
    assert holder.get() is None
    assert not (tmp_path / "state" / "snapshot.pb").exists()


def test_a_persisted_file_is_replaced_not_rewritten_in_place(tmp_path: Path) -> None:
    holder = holder_at(tmp_path)
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
    holder_at(tmp_path).apply(snapshot(3))
    assert mode(tmp_path / "snapshot.pb") == 0o600


def test_load_persisted_without_a_file_starts_empty(tmp_path: Path) -> None:
    holder = holder_at(tmp_path / "missing")
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
    holder = holder_at(tmp_path)
    assert holder.load_persisted() is False
    assert holder.get() is None


async def test_apply_wakes_whoever_waits_for_a_change(tmp_path: Path) -> None:
    holder = holder_at(tmp_path)
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
    return PolicyWatcher(holder, channel, "dataplane-token", "node-a")


def ack(version: int, lineage: str = LINEAGE) -> control_pb2.WatchRequest:
    return control_pb2.WatchRequest(applied_version=version, applied_lineage=lineage)


async def test_a_valid_snapshot_is_acked(tmp_path: Path, channel: grpc.aio.Channel) -> None:
    holder = holder_at(tmp_path)
    answer = watcher(holder, channel)._apply(snapshot(3))
    assert answer == ack(3)
    current = holder.get()
    assert current is not None and current.version == 3


async def test_a_newer_snapshot_replaces_the_current_one(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(3))
    assert watch._apply(snapshot(4, alias="smart")) == ack(4)
    current = holder.get()
    assert current is not None and current.model_aliases("acme") == ["smart"]


async def test_the_same_version_again_is_acked_without_recompiling(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(3))
    current = holder.get()
    assert watch._apply(snapshot(3)) == ack(3)
    assert holder.get() is current


@pytest.mark.parametrize(("current_version", "applied"), [(None, 0), (3, 3)])
async def test_an_invalid_snapshot_is_nacked_with_the_reason(
    tmp_path: Path, channel: grpc.aio.Channel, current_version: int | None, applied: int
) -> None:
    holder = holder_at(tmp_path)
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
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    bad = snapshot(5)
    bad.providers[0].base_url = "https://api.openai.com:99999/v1"
    answer = watch._apply(bad)
    assert (answer.applied_version, answer.rejected_version) == (0, 5)
    assert "base_url" in answer.error
    assert holder.get() is None


# --- Never backwards, never another lineage -----------------------------------------------

HELD = PolicyPosition(LINEAGE, 5)


@pytest.mark.parametrize(
    ("held", "lineage", "version", "refused_because"),
    [
        pytest.param(None, LINEAGE, 1, None, id="nothing-held-takes-anything"),
        pytest.param(None, "", 0, None, id="nothing-held-takes-the-empty-policy"),
        pytest.param(HELD, LINEAGE, 6, None, id="newer-same-lineage"),
        pytest.param(HELD, LINEAGE, 5, None, id="same-version-same-lineage"),
        pytest.param(HELD, LINEAGE, 4, "older than version 5", id="older-same-lineage"),
        pytest.param(HELD, OTHER_LINEAGE, 9, "of lineage 'bbbb", id="other-lineage-newer"),
        pytest.param(HELD, OTHER_LINEAGE, 1, "another history", id="other-lineage-older"),
        pytest.param(HELD, "", 0, "of lineage none", id="control-with-empty-redis"),
        pytest.param(PolicyPosition("", 0), LINEAGE, 1, None, id="empty-policy-held"),
        pytest.param(PolicyPosition("", 3), LINEAGE, 3, None, id="pre-lineage-policy-held"),
        pytest.param(PolicyPosition("", 3), LINEAGE, 2, "older", id="pre-lineage-older"),
    ],
)
def test_refusal_rules(
    held: PolicyPosition | None, lineage: str, version: int, refused_because: str | None
) -> None:
    offered = policy_pb2.PolicySnapshot(version=version, lineage=lineage)
    reason = refusal(held, offered)
    if refused_because is None:
        assert reason is None
    else:
        assert reason is not None and refused_because in reason


def test_a_refusal_quotes_an_offered_lineage_bounded() -> None:
    offered = policy_pb2.PolicySnapshot(version=9, lineage="x" * 100_000)
    reason = refusal(HELD, offered)
    assert reason is not None and len(reason) < 600


@pytest.mark.parametrize(
    ("offered", "words"),
    [
        (snapshot(4), "older than version 5"),
        (snapshot(9, lineage=OTHER_LINEAGE), f"holds version 5 of lineage {LINEAGE}"),
        (snapshot(5, lineage=OTHER_LINEAGE), "AdoptLineage"),
    ],
    ids=["older", "other-lineage", "other-lineage-same-version"],
)
def test_the_holder_refuses_and_keeps_serving_and_its_file(
    tmp_path: Path, offered: policy_pb2.PolicySnapshot, words: str
) -> None:
    holder = holder_at(tmp_path)
    held = holder.apply(snapshot(5))
    before = (tmp_path / "snapshot.pb").read_bytes()
    with pytest.raises(PolicyConflict, match=words):
        holder.apply(offered)
    assert holder.get() is held
    assert holder.position == PolicyPosition(LINEAGE, 5)
    assert (tmp_path / "snapshot.pb").read_bytes() == before


def test_a_restart_keeps_the_lineage_and_still_refuses_another(tmp_path: Path) -> None:
    holder_at(tmp_path).apply(snapshot(5))
    restarted = holder_at(tmp_path)
    assert restarted.load_persisted() is True
    assert restarted.position == PolicyPosition(LINEAGE, 5)
    with pytest.raises(PolicyConflict, match="another history"):
        restarted.apply(snapshot(1, lineage=OTHER_LINEAGE))
    current = restarted.get()
    assert current is not None and current.version == 5


def test_a_persisted_policy_that_no_longer_opens_still_holds_its_lineage(tmp_path: Path) -> None:
    holder_at(tmp_path).apply(snapshot(5))
    # Restarted with another secret key: it cannot serve the old policy, but it does not forget
    # which history it follows (adopting another one is an operator's decision).
    restarted = PolicyHolder(tmp_path, SecretBox.generate())
    assert restarted.load_persisted() is False
    assert restarted.get() is None
    assert restarted.position == PolicyPosition(LINEAGE, 5)
    with pytest.raises(PolicyConflict):
        restarted.apply(snapshot(1, lineage=OTHER_LINEAGE))


def test_a_credential_in_clear_is_refused_and_never_written(tmp_path: Path) -> None:
    clear = snapshot(3)
    clear.provider_credentials[0].CopyFrom(
        policy_pb2.ProviderCredential(provider="openai", api_key=PROVIDER_KEY)
    )
    holder = holder_at(tmp_path)
    with pytest.raises(InvalidPolicy, match="arrived in clear"):
        holder.apply(clear)
    assert not (tmp_path / "snapshot.pb").exists()


async def test_a_credential_sealed_with_another_key_is_nacked_whole(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(3))
    held = holder.get()
    other_box = SecretBox.generate()
    answer = watch._apply(snapshot(4, box=other_box))
    assert (answer.applied_version, answer.applied_lineage) == (3, LINEAGE)
    assert answer.rejected_version == 4
    assert f"sealed with secret key '{other_box.key_id}'" in answer.error
    assert BOX.key_id in answer.error
    assert PROVIDER_KEY not in answer.error
    assert holder.get() is held


async def test_a_sealed_credential_moved_to_another_provider_does_not_open(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    moved = snapshot(3)
    moved.provider_credentials[0].provider = "azure"
    answer = watcher(holder_at(tmp_path), channel)._apply(moved)
    assert answer.rejected_version == 3
    assert "sealed for another provider" in answer.error


async def test_another_lineage_is_nacked_with_what_the_data_plane_holds(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(5))
    held = holder.get()
    for offered in (snapshot(1, lineage=OTHER_LINEAGE), snapshot(5, lineage=OTHER_LINEAGE)):
        answer = watch._apply(offered)
        assert (answer.applied_version, answer.applied_lineage) == (5, LINEAGE)
        assert answer.rejected_version == offered.version
        assert "lineage" in answer.error and "AdoptLineage" in answer.error
    assert holder.get() is held


async def test_the_empty_policy_of_a_fresh_control_service_is_nacked_as_version_0(
    tmp_path: Path, channel: grpc.aio.Channel
) -> None:
    holder = holder_at(tmp_path)
    watch = watcher(holder, channel)
    watch._apply(snapshot(5))
    answer = watch._apply(policy_pb2.PolicySnapshot())
    assert answer.HasField("rejected_version") and answer.rejected_version == 0
    assert "of lineage none" in answer.error
