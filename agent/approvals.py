"""Waiting out a held tool call on a data plane: until an operator decides, the deadline passes,
the client leaves, or the data plane stops. Every way out leaves the approval in a final state in
Redis and gives the caller that state, so no held call is silently lost.

One `ApprovalGate` per data plane: one Pub/Sub connection (a pattern over every tenant's
channel, opened by the first wait) wakes the waiters of a decided approval within a round trip.
Pub/Sub delivers at most once (a Redis restart or a dropped connection loses messages), so each
waiter also re-reads its record every `poll_s`.

How a stage uses it: `ApprovalStore.create(...)` (re-attaching a retried call), then
`Hold(gate.wait(record), timeout_s=record's remaining time + HOLD_MARGIN_S)`, so the gate's own
deadline, which marks the approval TIMED_OUT, comes before the pipeline gives up on the Hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from gatez.approvals import (
    CHANNEL_PATTERN,
    Approval,
    ApprovalState,
    ApprovalStore,
    parse_event,
)

POLL_S: Final = 1.0
RESUBSCRIBE_DELAY_S: Final = 1.0
# How long the listener blocks on the socket before it looks whether the gate is closing.
LISTEN_TIMEOUT_S: Final = 0.5
# How long the pipeline's Hold should outlast the gate's deadline, for the TIMED_OUT write.
HOLD_MARGIN_S: Final = 5.0
# How long `close` waits for waiters to record that they were abandoned.
CLOSE_GRACE_S: Final = 5.0
STOPPING_REASON: Final = "gateway stopping"
CLIENT_LEFT_REASON: Final = "client left"

log = logging.getLogger("gatez.agent.approvals")

WallClock = Callable[[], dt.datetime]
_Key = tuple[str, str]


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class ApprovalGate:
    """Waits for decisions on held calls; build once per data plane, `close()` at shutdown."""

    def __init__(
        self, store: ApprovalStore, *, poll_s: float = POLL_S, clock: WallClock = utc_now
    ) -> None:
        self._store = store
        self._poll_s = poll_s
        self._clock = clock
        # Set by the listener when an approval changes; shared by the waiters of one approval.
        self._wakers: dict[_Key, asyncio.Event] = {}
        self._waiting: dict[_Key, int] = {}
        # Set while nobody waits.
        self._idle = asyncio.Event()
        self._idle.set()
        self._listener: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False
        self._tasks: set[asyncio.Task[Approval]] = set()

    async def wait(self, record: Approval, timeout_s: float | None = None) -> Approval:
        """The approval once it is final: APPROVED or DENIED (by whom, why), TIMED_OUT after
        `timeout_s` (by default, until the record's deadline), or ABANDONED when the gateway
        stops or this wait is cancelled (the client left). Only the state in Redis counts: if
        an operator decided at the instant the deadline passed, the decision wins.

        When Redis cannot be reached at the end, the result is a TIMED_OUT or ABANDONED copy
        of `record` that is not stored (the call is refused either way)."""
        if record.state.final:
            return record
        if self._closing:
            return await self._abandon(record, STOPPING_REASON)
        if timeout_s is None:
            timeout_s = record.remaining_s(self._clock())
        self._start_listener()
        key = (record.tenant_id, record.id)
        waker = self._wakers.setdefault(key, asyncio.Event())
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self._idle.clear()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                remaining = deadline - time.monotonic()
                if self._closing:
                    return await self._abandon(record, STOPPING_REASON)
                if remaining <= 0:
                    return await self._expire(record)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waker.wait(), min(self._poll_s, remaining))
                waker.clear()
                current = await self._reread(record)
                if current.state.final:
                    return current
        except asyncio.CancelledError:
            # The client left (or whoever awaited us gave up): end the approval in the
            # background, so an operator does not decide a call nobody waits for.
            self._spawn(self._abandon(record, CLIENT_LEFT_REASON))
            raise
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:
                del self._waiting[key], self._wakers[key]
                if not self._waiting:
                    self._idle.set()

    async def wait_subscribed(self) -> None:
        """Returns once the Pub/Sub subscription is live (tests; the first wait starts it)."""
        self._start_listener()
        await self._subscribed.wait()

    async def close(self) -> None:
        """Ends every wait as ABANDONED ("gateway stopping") unless a decision came first,
        waits (up to CLOSE_GRACE_S) for those states to be written, and unsubscribes."""
        self._closing = True
        for waker in self._wakers.values():
            waker.set()
        deadline = time.monotonic() + CLOSE_GRACE_S
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), CLOSE_GRACE_S)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None

    async def _reread(self, record: Approval) -> Approval:
        try:
            current = await self._store.get(record.tenant_id, record.id)
        except (RedisError, OSError) as error:
            log.warning("cannot re-read approval %s (%s); still waiting", record.id, error)
            return record
        if current is None:
            # Flushed or lost by Redis: nobody can decide it any more.
            log.warning("approval %s vanished from Redis; abandoning the call", record.id)
            return dataclasses.replace(
                record, state=ApprovalState.ABANDONED, reason="approval lost by the store"
            )
        return current

    async def _expire(self, record: Approval) -> Approval:
        try:
            current = await self._store.expire(record.tenant_id, record.id)
        except (RedisError, OSError) as error:
            log.warning("cannot mark approval %s timed out (%s)", record.id, error)
            current = None
        if current is None:
            return dataclasses.replace(
                record, state=ApprovalState.TIMED_OUT, reason="no decision in time"
            )
        return current

    async def _abandon(self, record: Approval, reason: str) -> Approval:
        try:
            current = await self._store.abandon(record.tenant_id, record.id, reason)
        except (RedisError, OSError) as error:
            log.warning("cannot mark approval %s abandoned (%s)", record.id, error)
            current = None
        if current is None:
            return dataclasses.replace(record, state=ApprovalState.ABANDONED, reason=reason)
        return current

    def _spawn(self, work: Coroutine[Any, Any, Approval]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_listener(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="approval-gate-listener")

    async def _listen(self) -> None:
        """Wakes the waiters of each approval announced; resubscribes when Redis drops (the
        waiters' polling covers what is lost meanwhile)."""
        while True:
            pubsub: PubSub = self._store.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.psubscribe(CHANNEL_PATTERN)
                self._subscribed.set()
                # redis-py can swallow a cancellation landing in a blocking read: look up too.
                while not self._closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=LISTEN_TIMEOUT_S
                    )
                    if message is None or message.get("type") != "pmessage":
                        continue
                    event = parse_event(message["channel"], message["data"])
                    if event is not None and event.state.final:
                        waker = self._wakers.get((event.tenant_id, event.approval_id))
                        if waker is not None:
                            waker.set()
            except (RedisError, OSError) as error:
                log.warning("lost the approval feed (%s); resubscribing", error)
            finally:
                self._subscribed.clear()
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            if self._closing:
                return
            await asyncio.sleep(RESUBSCRIBE_DELAY_S)
