"""Per-target circuit state for fallback chains, shared by every data-plane process through Redis.

A target (one provider endpoint of a model alias's fallback chain) has a circuit:

- closed: tried. `failure_threshold` consecutive failures (429, 5xx, timeout, connection
  failure) within `window_s` of the first of them open it; a success resets the count.
- open: skipped, for `cooldown_s` or until the provider's `Retry-After` (bounded by
  `max_retry_after_s`), whichever is later.
- half-open: once the open time is over, exactly one caller across all processes gets a probe
  lease for it; the others go on skipping it. The probe's success closes the circuit, its failure
  opens it again. A lease not answered within `probe_lease_s` (the prober died) is given again.

Two calls on the hot path, each one Redis round trip (one Lua script, atomic, on Redis's clock
so processes with skewed clocks agree): `CircuitBreaker.pick` turns an ordered chain into the
targets to try in order, and `CircuitBreaker.record` reports an attempt's outcome. A success on
a target whose circuit held nothing when it was picked costs no round trip at all.

The probe lease goes only to a half-open target that heads the list of targets to try, so the
lease is certain to be used: a half-open target behind a closed one is skipped (a healthy target
before it is serving; it is probed once it is first in line). When a chain's every target is
skipped, the pick's `retry_after_s` says when the first of them may be tried again.

Keys: `{gatez:circuit}:<target>`, one small hash per target, expiring once nothing is left to
remember (a closed target with no failures has no key). Every key carries the one Redis Cluster
hash tag `{gatez:circuit}` so a chain's targets — any targets, in any order — are read in one
script call on one node. A tag per tenant was the alternative; it is not used because a
target's health belongs to the provider endpoint, not to a tenant: per-tenant circuits would
make every tenant rediscover an outage with its own N failed requests. The cost is that all
circuit keys live on one cluster node: one script per LLM request plus one per failed attempt,
far below what one node serves. A target whose limits are per credential (a tenant's own
provider key) should be named per credential by the policy; the key scheme stays as it is.

Redis down or slow (no answer within `timeout_s`): the pick fails open — every target of the
chain in order, no probes — because a request that could be served must not fail for want of
advisory state; outcomes that cannot be recorded are dropped (logged once per outage).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Final

from extproc.redis_pipe import Script, ScriptClient

log = logging.getLogger("gatez.circuit")

KEY_PREFIX: Final = "{gatez:circuit}:"

# Decisions per target in the pick script's reply.
SKIP: Final = 0
TRY: Final = 1  # closed, and its key holds nothing (a success needs no record)
TRY_COUNTED: Final = 2  # closed, with failures counted (a success resets them)
PROBE: Final = 3  # half-open: this caller holds the probe lease

# KEYS: the chain's circuit keys, in order. ARGV[1]: the probe lease (µs), ARGV[2]: how long a
# tripped circuit is remembered after it may be probed (µs). Returns {decision, wait_ms} per
# target, flattened; wait_ms: until a skipped target may be tried (0 when unknown).
# Time is kept in whole microseconds (epoch µs fit a Lua double exactly).
PICK_SCRIPT: Final = Script("""
local lease = tonumber(ARGV[1])
local remember = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local out = {}
local head = true
for _, key in ipairs(KEYS) do
  local state = redis.call('HMGET', key, 'open_until', 'probe_until', 'failures')
  local open_until = tonumber(state[1])
  local decision, wait = 1, 0
  if open_until then
    if open_until > now then
      decision, wait = 0, math.ceil((open_until - now) / 1000)
    elseif head and (tonumber(state[2]) or 0) <= now then
      decision = 3
      redis.call('HSET', key, 'probe_until', string.format('%.0f', now + lease))
      redis.call('PEXPIRE', key, math.ceil((lease + remember) / 1000))
    else
      decision = 0
    end
  elseif state[3] then
    decision = 2
  end
  if decision ~= 0 then
    head = false
  end
  out[#out + 1] = decision
  out[#out + 1] = wait
end
return out
""")

# KEYS[1]: the target's circuit. ARGV[1]: 1 success, 0 failure; ARGV[2]: 1 when the attempt held
# the probe lease; ARGV[3]: the provider's Retry-After (µs, bounded; 0: none); ARGV[4]: failure
# threshold; ARGV[5]: window (µs); ARGV[6]: cooldown (µs); ARGV[7]: how long a tripped circuit
# is remembered after it may be probed (µs). Returns 1 when the circuit is open after this, else 0.
RECORD_SCRIPT: Final = Script("""
local key = KEYS[1]
local success = ARGV[1] == '1'
local probe = ARGV[2] == '1'
local retry_after = tonumber(ARGV[3])
local threshold = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cooldown = tonumber(ARGV[6])
local remember = tonumber(ARGV[7])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local function open(open_until)
  redis.call('DEL', key)
  redis.call('HSET', key, 'open_until', string.format('%.0f', open_until))
  redis.call('PEXPIRE', key, math.ceil((open_until - now + remember) / 1000))
  return 1
end
local state = redis.call('HMGET', key, 'open_until', 'failures', 'first_failure')
local open_until = tonumber(state[1])
if open_until then
  if probe then
    if success then
      redis.call('DEL', key)
      return 0
    end
    return open(now + math.max(cooldown, retry_after))
  end
  -- An attempt picked before the circuit opened: its success proves little (the probe
  -- decides), its failure may only push the opening later (the provider's Retry-After).
  if not success and now + retry_after > open_until then
    return open(now + retry_after)
  end
  return 1
end
if success then
  redis.call('DEL', key)
  return 0
end
local failures = tonumber(state[2]) or 0
local first = tonumber(state[3]) or now
if now - first > window then
  failures, first = 0, now
end
failures = failures + 1
if failures >= threshold then
  return open(now + math.max(cooldown, retry_after))
end
redis.call('HSET', key, 'failures', failures, 'first_failure', string.format('%.0f', first))
redis.call('PEXPIRE', key, math.max(1, math.ceil((first + window - now) / 1000)))
return 0
""")


@dataclass(frozen=True, slots=True)
class CircuitConfig:
    """How circuits open and close (the same for every target, for now)."""

    # Consecutive failures that open a closed circuit, counted within `window_s` of the first.
    failure_threshold: int = 5
    window_s: float = 30.0
    # How long an opened circuit stays open at least.
    cooldown_s: float = 30.0
    # A provider's Retry-After is honoured up to this (a bogus "retry in a day" is not).
    max_retry_after_s: float = 300.0
    # How long a probe may take before its lease is given to another caller: longer than an
    # attempt's time to response headers, or a slow probe has company.
    probe_lease_s: float = 30.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        for name in ("window_s", "cooldown_s", "max_retry_after_s", "probe_lease_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class Attempt:
    """A target to try. `probe`: this caller holds its half-open circuit's probe lease.
    `counted`: its circuit had failures counted when picked (a success must reset them)."""

    target: str
    probe: bool = False
    counted: bool = True


@dataclass(frozen=True, slots=True)
class ChainPick:
    """The targets of a chain to try, in order, and those skipped.

    `retry_after_s`: when nothing is to be tried, how long until the first skipped target may
    be (at least 1 s; what a client's `Retry-After` should say). `shared`: False when Redis did
    not answer and every target is tried (fail open)."""

    attempts: tuple[Attempt, ...]
    skipped: tuple[str, ...] = ()
    retry_after_s: int = 0
    shared: bool = True


def circuit_key(target: str) -> str:
    """The target's circuit key; every one shares the `{gatez:circuit}` hash tag."""
    return KEY_PREFIX + target


def is_failure_status(status: int) -> bool:
    """A provider answer that counts against its circuit (and moves a chain on): 429 or 5xx."""
    return status == 429 or status >= 500


def parse_retry_after(value: str | bytes | None, *, now: datetime | None = None) -> float | None:
    """A `Retry-After` header's wait in seconds (delta-seconds or an HTTP date), None when absent
    or unreadable; never negative."""
    if value is None:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip()
    if not text:
        return None
    try:
        return max(0.0, float(text)) if math.isfinite(float(text)) else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class CircuitBreaker:
    """Shared circuit state for the data plane's fallback (see the module docstring). Build
    once per process with the hot-path Redis client; `pick` and `record` never raise."""

    def __init__(
        self, redis: ScriptClient, config: CircuitConfig | None = None, *, timeout_s: float = 0.1
    ) -> None:
        self._redis = redis
        self.config = config or CircuitConfig()
        # Short: the state is advisory, and every LLM request waits on the pick.
        self._timeout_s = timeout_s
        config = self.config
        self._pick_args = (_us(config.probe_lease_s), _us(config.window_s))
        self._record_args = (
            config.failure_threshold,
            _us(config.window_s),
            _us(config.cooldown_s),
            _us(config.window_s),
        )
        self._redis_reachable = True

    def pick(self, chain: Sequence[str]) -> asyncio.Future[ChainPick]:
        """The targets of `chain` to try, in its order: closed ones, and a half-open one with
        this caller's probe lease when it heads the list; open ones skipped. One round trip;
        every target (fail open) when Redis does not answer within `timeout_s`."""
        loop = asyncio.get_running_loop()
        picked: asyncio.Future[ChainPick] = loop.create_future()
        if not chain:
            picked.set_result(ChainPick(()))
            return picked
        reply = self._redis.submit_script(
            PICK_SCRIPT, tuple(map(circuit_key, chain)), self._pick_args
        )
        deadline = loop.call_later(self._timeout_s, self._pick_unanswered, picked, chain)
        reply.add_done_callback(partial(self._picked, picked, deadline, tuple(chain)))
        return picked

    def _picked(
        self,
        picked: asyncio.Future[ChainPick],
        deadline: asyncio.TimerHandle,
        chain: tuple[str, ...],
        reply: asyncio.Future[Any],
    ) -> None:
        deadline.cancel()
        if picked.done():
            return  # answered too late: already failed open
        error = reply.exception() if not reply.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._unreachable(error)
            picked.set_result(_every_target(chain))
            return
        self._reachable()
        decisions = reply.result()
        attempts: list[Attempt] = []
        skipped: list[str] = []
        waits: list[int] = []
        for index, target in enumerate(chain):
            decision, wait_ms = decisions[2 * index], decisions[2 * index + 1]
            if decision == SKIP:
                skipped.append(target)
                waits.append(int(wait_ms))
            else:
                attempts.append(Attempt(target, decision == PROBE, decision != TRY))
        retry_after_s = 0 if attempts else max(1, math.ceil(min(waits) / 1000))
        picked.set_result(ChainPick(tuple(attempts), tuple(skipped), retry_after_s))

    def _pick_unanswered(self, picked: asyncio.Future[ChainPick], chain: Sequence[str]) -> None:
        if not picked.done():
            self._unreachable(TimeoutError("no answer from Redis in time"))
            picked.set_result(_every_target(tuple(chain)))

    def record(
        self, attempt: Attempt, *, success: bool, retry_after_s: float | None = None
    ) -> asyncio.Future[bool] | None:
        """Reports how `attempt` went: `success`, or a failure (429, 5xx, timeout, connection
        failure) with the provider's Retry-After. Sent at once, not waited for by the hot path;
        the future says whether the circuit is open afterwards (False as well when Redis could
        not be told). None when there is nothing to tell: a success on a target with a clean
        circuit."""
        if success and not attempt.counted:
            return None
        retry_after_us = 0
        if not success and retry_after_s:
            retry_after_us = _us(min(retry_after_s, self.config.max_retry_after_s))
        reply = self._redis.submit_script(
            RECORD_SCRIPT,
            (circuit_key(attempt.target),),
            (int(success), int(attempt.probe), retry_after_us, *self._record_args),
        )
        recorded: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        reply.add_done_callback(partial(self._recorded, recorded))
        return recorded

    def _recorded(self, recorded: asyncio.Future[bool], reply: asyncio.Future[Any]) -> None:
        error = reply.exception() if not reply.cancelled() else asyncio.CancelledError()
        if error is not None:
            self._unreachable(error)
            recorded.set_result(False)
            return
        self._reachable()
        recorded.set_result(reply.result() == 1)

    def _unreachable(self, error: BaseException) -> None:
        # Once per outage: every request would log it otherwise.
        if self._redis_reachable:
            self._redis_reachable = False
            log.warning("circuit state unavailable, trying every target in order: %r", error)

    def _reachable(self) -> None:
        if not self._redis_reachable:
            self._redis_reachable = True
            log.info("circuit state available again")


def _every_target(chain: tuple[str, ...]) -> ChainPick:
    """Fail open: every target in order, no probe."""
    return ChainPick(tuple(Attempt(target) for target in chain), shared=False)


def _us(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))
