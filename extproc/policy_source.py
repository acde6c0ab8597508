"""Where a data plane's policy comes from: the control service's watch stream, and a persisted
copy of the last good snapshot to start from when the control service is away.

A snapshot is compiled before it is applied; one that does not compile is NACKed with the reason
and the previous policy stays in force. Applying is one reference swap, so a request in flight
keeps the policy it started with.

Policy never goes backwards by accident: a snapshot older than the one held, or of another
lineage (another history: say, the control service restarted on an empty Redis), is refused the
same way, and the data plane keeps serving what it holds until an operator resolves the conflict
(the control service shows it in GetPolicyStatus; AdoptLineage is the explicit way on). The
persisted snapshot keeps its lineage, so a restart does not forget which history it follows.
Provider credentials arrive sealed and stay sealed on disk; they are opened only in memory, when
a snapshot is compiled with the deployment's secret key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from gatez.errors import InvalidPolicy, quoted
from gatez.policy import CompiledPolicy, CredentialCipher, compile_policy
from gatez.secrets import clear_credential_providers
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

log = logging.getLogger("gatez.policy")


@dataclass(frozen=True, slots=True)
class PolicyPosition:
    """Where a snapshot sits in the policy's history."""

    lineage: str
    version: int

    @classmethod
    def of(cls, snapshot: policy_pb2.PolicySnapshot) -> PolicyPosition:
        return cls(snapshot.lineage, snapshot.version)


class PolicyConflict(InvalidPolicy):
    """A snapshot that would take the policy backwards, or onto another history."""


def refusal(held: PolicyPosition | None, offered: policy_pb2.PolicySnapshot) -> str | None:
    """Why a data plane holding `held` must not apply `offered`, or None when it may.

    Nothing held, or a policy saved before lineages existed (no lineage): any lineage may
    follow. Otherwise only the same lineage, at the same or a newer version."""
    if held is None:
        return None
    if held.lineage and offered.lineage != held.lineage:
        offered_lineage = quoted(offered.lineage, 32) if offered.lineage else "none"
        return (
            f"policy version {offered.version} is of lineage {offered_lineage}, but this data "
            f"plane holds version {held.version} of lineage {held.lineage}: another history "
            "(was the control service's Redis emptied or replaced?). It keeps serving version "
            f"{held.version}. Restore the control service's Redis, or adopt lineage "
            f"{held.lineage} with ControlService/AdoptLineage"
        )
    if offered.version < held.version:
        return (
            f"policy version {offered.version} is older than version {held.version}, which this "
            "data plane holds: policy versions only move forward"
        )
    return None


class PolicyHolder:
    """The policy in force, and its persisted copy (`snapshot.pb`, mode 0600; provider
    credentials in it stay sealed). `cipher` opens them when a snapshot is compiled."""

    def __init__(self, state_dir: Path, cipher: CredentialCipher | None = None) -> None:
        self._path = state_dir / "snapshot.pb"
        self._cipher = cipher
        self.current: CompiledPolicy | None = None
        # The newest snapshot held: applied, or persisted even when it no longer compiles, so a
        # data plane that cannot serve its old policy still refuses another history.
        self.position: PolicyPosition | None = None
        self.changed = asyncio.Event()
        # Called with each policy applied (Envoy's chain clusters follow it); a failing one is
        # logged, and the policy stays applied.
        self.on_applied: list[Callable[[CompiledPolicy], None]] = []

    def get(self) -> CompiledPolicy | None:
        return self.current

    def load_persisted(self) -> bool:
        """Starts from the last good snapshot on disk, if there is one that still compiles."""
        try:
            raw = self._path.read_bytes()
        except FileNotFoundError:
            return False
        try:
            snapshot = policy_pb2.PolicySnapshot.FromString(raw)
        except Exception as error:
            log.error("persisted snapshot %s is unusable: %s", self._path, error)
            return False
        self.position = PolicyPosition.of(snapshot)
        try:
            self.current = compile_policy(snapshot, self._cipher)
        except Exception as error:
            log.error(
                "persisted snapshot %s (version %d of lineage %s) does not compile: %s",
                self._path,
                snapshot.version,
                snapshot.lineage,
                error,
            )
            return False
        log.info(
            "serving persisted policy version %d of lineage %s",
            snapshot.version,
            snapshot.lineage,
        )
        return True

    def apply(self, snapshot: policy_pb2.PolicySnapshot) -> CompiledPolicy:
        """Compiles, swaps in and persists a snapshot. Raises InvalidPolicy (PolicyConflict for
        one that would go backwards or onto another lineage), changing nothing."""
        if reason := refusal(self.position, snapshot):
            raise PolicyConflict(reason)
        if clear := clear_credential_providers(snapshot):
            # Never persisted: the file must not hold a provider key in clear.
            raise InvalidPolicy(
                f"the credential of provider {quoted(clear[0])} arrived in clear; the control "
                "service seals every credential"
            )
        compiled = compile_policy(snapshot, self._cipher)
        self._persist(snapshot)
        self.current = compiled
        self.position = PolicyPosition.of(snapshot)
        for hook in self.on_applied:
            try:
                hook(compiled)
            except Exception:
                log.exception("applying policy version %d: a follower failed", snapshot.version)
        self.changed.set()
        self.changed.clear()
        return compiled

    def _persist(self, snapshot: policy_pb2.PolicySnapshot) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        # A leftover temporary file keeps its old mode through O_CREAT; this one holds secrets.
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(snapshot.SerializeToString())
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self._path)


class PolicyWatcher:
    """Keeps a PolicyHolder up to date from the control service, reconnecting forever."""

    def __init__(
        self,
        holder: PolicyHolder,
        channel: grpc.aio.Channel,
        dataplane_token: str,
        node_id: str,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._holder = holder
        self._stub = control_pb2_grpc.DataPlaneServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {dataplane_token}"),)
        self._node_id = node_id
        self._max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self._connected_at = 0.0

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._watch_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                log.warning("policy watch: %s (%s)", error.code().name, error.details())
            except Exception:
                log.exception("policy watch failed")
            if self.connected.is_set() and time.monotonic() - self._connected_at > backoff:
                # The stream was up for a while: a restarted control service is found again in
                # ~0.1 s, not after the backoff earlier outages grew (a stream never ends
                # cleanly). A control service that drops streams at once still meets backoff.
                backoff = 0.1
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _watch_once(self) -> None:
        outbox: asyncio.Queue[control_pb2.WatchRequest] = asyncio.Queue()
        first = self._applied()
        first.node_id = self._node_id
        await outbox.put(first)

        async def requests() -> AsyncIterator[control_pb2.WatchRequest]:
            while True:
                yield await outbox.get()

        call = self._stub.Watch(requests(), metadata=self._metadata)
        async for response in call:
            if not self.connected.is_set():
                self._connected_at = time.monotonic()
                self.connected.set()
            await outbox.put(self._apply(response.snapshot))

    def _applied(self) -> control_pb2.WatchRequest:
        """An ACK of what the holder serves (version 0, no lineage, when it serves nothing)."""
        position = self._holder.position
        if self._holder.current is None or position is None:
            return control_pb2.WatchRequest(applied_version=0)
        return control_pb2.WatchRequest(
            applied_version=position.version, applied_lineage=position.lineage
        )

    def _apply(self, snapshot: policy_pb2.PolicySnapshot) -> control_pb2.WatchRequest:
        if self._holder.current is not None and self._holder.position == PolicyPosition.of(
            snapshot
        ):
            return self._applied()
        try:
            self._holder.apply(snapshot)
        except Exception as error:
            # Any failure is a NACK with its reason; never a silent reconnect loop.
            reason = str(error) if isinstance(error, InvalidPolicy) else repr(error)
            log.error("rejected policy version %d: %s", snapshot.version, reason)
            answer = self._applied()
            answer.rejected_version = snapshot.version
            answer.error = reason
            return answer
        log.info("applied policy version %d of lineage %s", snapshot.version, snapshot.lineage)
        return self._applied()
