"""Where a data plane's policy comes from: the control service's watch stream, and a persisted
copy of the last good snapshot to start from when the control service is away.

A snapshot is compiled before it is applied; one that does not compile is NACKed with the reason
and the previous policy stays in force. Applying is one reference swap, so a request in flight
keeps the policy it started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from gatez.errors import InvalidPolicy
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

log = logging.getLogger("gatez.policy")


class PolicyHolder:
    """The policy in force, and its persisted copy (`snapshot.pb`, mode 0600: it holds secrets)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = state_dir / "snapshot.pb"
        self.current: CompiledPolicy | None = None
        self.changed = asyncio.Event()

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
            self.current = compile_policy(snapshot)
        except Exception as error:
            log.error("persisted snapshot %s is unusable: %s", self._path, error)
            return False
        log.info("serving persisted policy version %d", self.current.version)
        return True

    def apply(self, snapshot: policy_pb2.PolicySnapshot) -> CompiledPolicy:
        """Compiles, swaps in and persists a snapshot. Raises InvalidPolicy, changing nothing."""
        compiled = compile_policy(snapshot)
        self._persist(snapshot)
        self.current = compiled
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
        admin_token: str,
        node_id: str,
        *,
        max_backoff_s: float = 5.0,
    ) -> None:
        self._holder = holder
        self._stub = control_pb2_grpc.DataPlaneServiceStub(channel)
        self._metadata = (("authorization", f"Bearer {admin_token}"),)
        self._node_id = node_id
        self._max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._watch_once()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as error:
                log.warning("policy watch: %s (%s)", error.code().name, error.details())
            except Exception:
                log.exception("policy watch failed")
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _watch_once(self) -> None:
        outbox: asyncio.Queue[control_pb2.WatchRequest] = asyncio.Queue()
        current = self._holder.current
        await outbox.put(
            control_pb2.WatchRequest(
                node_id=self._node_id, applied_version=current.version if current else 0
            )
        )

        async def requests() -> AsyncIterator[control_pb2.WatchRequest]:
            while True:
                yield await outbox.get()

        call = self._stub.Watch(requests(), metadata=self._metadata)
        async for response in call:
            self.connected.set()
            await outbox.put(self._apply(response.snapshot))

    def _apply(self, snapshot: policy_pb2.PolicySnapshot) -> control_pb2.WatchRequest:
        current = self._holder.current
        if current is not None and snapshot.version == current.version:
            return control_pb2.WatchRequest(applied_version=current.version)
        try:
            compiled = self._holder.apply(snapshot)
        except Exception as error:
            # Any failure is a NACK with its reason; never a silent reconnect loop.
            reason = str(error) if isinstance(error, InvalidPolicy) else repr(error)
            log.error("rejected policy version %d: %s", snapshot.version, reason)
            return control_pb2.WatchRequest(
                applied_version=current.version if current else 0,
                rejected_version=snapshot.version,
                error=reason,
            )
        log.info("applied policy version %d", compiled.version)
        return control_pb2.WatchRequest(applied_version=compiled.version)
