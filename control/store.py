"""The policy store: the whole policy as one `PolicySnapshot`, kept in Redis and mirrored in memory.

Every change is a read-modify-write of the one snapshot under WATCH/MULTI, so control replicas
sharing a Redis never overwrite each other's changes: a replica that loses the race re-reads and
re-applies. A change that does not compile is refused whole and nothing is saved. Each saved
version is announced on a pub/sub channel; every replica (the writer included) follows it and
wakes its in-process watchers, which always see the newest version, never a backlog.

Lineage: the first version saved in an empty Redis draws a random lineage id, and every later
version keeps it, so data planes can tell a continuation of the policy they hold from another
history (a control service restarted on an empty Redis starts a new lineage). Redis is the truth,
except when it lost what this process saw (emptied, or gone back within our lineage): then the
next change builds on this process's copy, and the lineage goes on.

Works the same on one Redis and on a Redis Cluster: the transaction touches one key, and the
announcement is published after it (redis-py's cluster client refuses PUBLISH inside MULTI;
PUBLISH reaches subscribers on every node). Pub/sub delivers at most once, so followers also
re-read the snapshot every CATCH_UP_S: an announcement lost with a writer that died right after
its write, or with a dropped subscription, delays a replica, never strands it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Final, TypeVar

from google.protobuf.message import DecodeError
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError, WatchError

from gatez.errors import Unavailable
from gatez.policy import CredentialCipher, compile_policy
from gatez.redis_client import RedisClient
from gatez.v1 import policy_pb2

SNAPSHOT_KEY: Final = "gatez:control:snapshot"
CHANGES_CHANNEL: Final = "gatez:control:changes"
# Conflicts only happen when replicas write at the same instant; this many in a row means trouble.
MAX_ATTEMPTS: Final = 32
RESUBSCRIBE_DELAY_S: Final = 1.0
# How often the change feed reader looks up from the socket to see whether the store stopped.
POLL_S: Final = 0.5
# How often a follower re-reads the snapshot without an announcement (pub/sub may lose one).
CATCH_UP_S: Final = 10.0

log = logging.getLogger("gatez.control.store")

T = TypeVar("T")
Clock = Callable[[], dt.datetime]
LineageGenerator = Callable[[], str]
# Applies one change to a draft snapshot in place and returns what the caller wants back. It may
# run more than once (after a conflict), each time on a fresh draft, so it must not keep state.
Change = Callable[[policy_pb2.PolicySnapshot], T]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def random_lineage() -> str:
    """A new lineage id: 128 random bits, 32 hex digits."""
    return secrets.token_hex(16)


class PolicyStore:
    """The current policy snapshot, its versioned changes, and notifications of new versions.

    `redis` must return bytes (the default, `decode_responses=False`): the snapshot is binary.
    Call `start()` before use and `stop()` at the end. `current` is shared: never mutate it.
    `cipher` opens sealed provider credentials when a change is validated.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        cipher: CredentialCipher | None = None,
        clock: Clock = utc_now,
        new_lineage: LineageGenerator = random_lineage,
        catch_up_s: float = CATCH_UP_S,
    ) -> None:
        self._redis = redis
        self._cipher = cipher
        self._clock = clock
        self._new_lineage = new_lineage
        self._catch_up_s = catch_up_s
        self._current = policy_pb2.PolicySnapshot()
        # Replaced by a fresh Event each time a newer version is adopted; waiters hold the old one.
        self._newer = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def current(self) -> policy_pb2.PolicySnapshot:
        """The newest snapshot this process knows of (version 0 and empty before any change)."""
        return self._current

    async def start(self) -> None:
        """Loads the stored snapshot and follows changes made by any replica."""
        # Subscribe before the first load, so a change landing in between is not missed.
        pubsub = await self._subscribe()
        self._follower = asyncio.create_task(self._follow(pubsub), name="policy-store-follower")

    async def stop(self) -> None:
        """Stops following changes and ends every `watch()`, so Watch streams close at once."""
        self._stopped = True
        self._newer.set()
        if self._follower is not None:
            # redis-py can swallow a cancellation that lands in a blocking read, so the follower
            # also polls `_stopped`; the cancel only makes it quicker.
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
            self._follower = None

    async def update(self, change: Change[T]) -> tuple[T, int]:
        """Applies `change` to the stored snapshot as a new version; returns its result and the
        version. Raises what `change` raises, or `InvalidPolicy` when the result does not
        compile; nothing is saved then."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for _ in range(MAX_ATTEMPTS):
                try:
                    await pipe.watch(SNAPSHOT_KEY)
                    draft = _parse(await pipe.get(SNAPSHOT_KEY))
                    if _lost_by_redis(draft, self._current):
                        # Build on ours, so data planes never see a version go backwards.
                        draft.CopyFrom(self._current)
                    if not draft.lineage:
                        draft.lineage = self._new_lineage()
                    result = change(draft)
                    draft.version += 1
                    draft.create_time.FromDatetime(self._clock())
                    compile_policy(draft, self._cipher)
                    pipe.multi()  # type: ignore[no-untyped-call]  # untyped in redis-py
                    pipe.set(SNAPSHOT_KEY, draft.SerializeToString())
                    await pipe.execute()
                except WatchError:
                    log.debug("policy changed under us; retrying")
                    continue
                self._adopt(draft)
                await self._announce(draft.version)
                log.info("policy version %d saved", draft.version)
                return result, draft.version
        raise Unavailable("the policy is being changed concurrently; retry")

    async def _announce(self, version: int) -> None:
        # The change is saved already: a failed announcement must not report it as failed
        # (a retry would apply it twice); followers catch up within CATCH_UP_S.
        try:
            await self._redis.publish(CHANGES_CHANNEL, str(version))
        except (RedisError, OSError) as error:
            log.warning("policy version %d saved but not announced (%s)", version, error)

    async def wait_change(self, seen: policy_pb2.PolicySnapshot) -> policy_pb2.PolicySnapshot:
        """Waits until the current snapshot is another than `seen` (a newer version, or another
        lineage), and returns it (or the current one once the store is stopped)."""
        while self._current is seen and not self._stopped:
            await self._newer.wait()
        return self._current

    async def watch(self) -> AsyncIterator[policy_pb2.PolicySnapshot]:
        """The current snapshot at once, then the newest one each time the consumer asks again
        and a newer one exists; versions that land while the consumer is busy are skipped.
        Ends when the store stops."""
        snapshot = self._current
        while not self._stopped:
            yield snapshot
            snapshot = await self.wait_change(snapshot)

    async def reload(self) -> None:
        """Reads the stored snapshot and adopts it if it is newer than the current one."""
        self._adopt(_parse(await self._redis.get(SNAPSHOT_KEY)))

    def _adopt(self, snapshot: policy_pb2.PolicySnapshot) -> None:
        current = self._current
        if _lost_by_redis(snapshot, current) or (
            snapshot.lineage == current.lineage and snapshot.version <= current.version
        ):
            return
        self._current = snapshot
        self._newer.set()
        self._newer = asyncio.Event()

    async def _subscribe(self) -> PubSub:
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(CHANGES_CHANNEL)
            await self.reload()
        except BaseException:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            raise
        return pubsub

    async def _follow(self, pubsub: PubSub) -> None:
        """Reloads on every announcement (our own included: one cheap GET that `_adopt` then
        ignores); resubscribes when Redis drops, and catches up as it does."""
        while True:
            try:
                caught_up = time.monotonic()
                while not self._stopped:
                    announced = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=POLL_S
                    )
                    if announced or time.monotonic() - caught_up >= self._catch_up_s:
                        caught_up = time.monotonic()
                        await self.reload()
            except (RedisError, OSError, DecodeError) as error:
                log.warning("lost the policy change feed (%s); resubscribing", error)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            if self._stopped:
                return
            pubsub = await self._resubscribe()

    async def _resubscribe(self) -> PubSub:
        while True:
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)
            try:
                return await self._subscribe()
            except (RedisError, OSError, DecodeError) as error:
                log.warning("cannot resubscribe to the policy change feed yet (%s)", error)


def _lost_by_redis(stored: policy_pb2.PolicySnapshot, ours: policy_pb2.PolicySnapshot) -> bool:
    """Whether Redis lost versions this process saw: it is empty (a restart without persistence,
    a flush) or went back within our lineage. Another lineage in Redis is not a loss: it was
    restored or replaced on purpose, and wins."""
    if ours.version == 0:
        return False
    return stored.version == 0 or (stored.lineage == ours.lineage and stored.version < ours.version)


def _parse(raw: bytes | str | None) -> policy_pb2.PolicySnapshot:
    snapshot = policy_pb2.PolicySnapshot()
    if isinstance(raw, str):
        raise TypeError("the policy store needs a Redis client with decode_responses=False")
    if raw is not None:
        snapshot.ParseFromString(raw)
    return snapshot
