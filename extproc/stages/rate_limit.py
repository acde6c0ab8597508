"""L1 per-tenant rate limits, shared by every data plane through Redis. Runs after authentication.

The limit is a GCRA (generic cell rate algorithm) bucket per tenant: a sustained rate of
`requests_per_minute` with up to `burst` requests at once. One Lua script decides and records
atomically in a single round trip, using Redis's clock so data planes with skewed clocks agree.
The bucket is one key holding the "theoretical arrival time" (TAT), expiring once it would be
full again, so idle tenants cost no memory.

Off the critical path: after a request of a tenant is let through, the data plane takes the
tenant's next tokens ahead of time, a lease of up to MAX_LEASE (a tenth of the burst) in one
round trip. The tenant's next requests claim them one each — arrived or still on the way — with
no Redis round trip of their own, and the last claim takes the next lease. Accounting stays
exact: leased tokens were taken from the bucket in Redis, and those not claimed within
`hold_s` are given back (REFUND_SCRIPT), as on close or a rule change. The cost is bounded:
while tokens are leased, other data planes see that many fewer, for at most `hold_s`. A lease
refused where one token would pass does not refuse its claimants: each then asks for itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from extproc.redis_pipe import Script, ScriptClient
from gatez.errors import RateLimited, Unauthenticated, Unavailable
from gatez.pipeline import CONTINUE, Continue, FailureMode, Flow, Respond, Stage, Verdict
from gatez.pipeline.futures import copy_outcome
from gatez.policy import RateLimitRule

log = logging.getLogger("gatez.rate_limit")

# KEYS[1]: the tenant's bucket. ARGV[1]: emission interval (µs), ARGV[2]: burst, ARGV[3]: how
# many tokens to take at once (1 when absent). Returns {1, 0} when taken, {0, wait_ms} when not:
# wait_ms until that many would pass.
# Time is kept in whole microseconds: epoch µs fit a Lua double exactly, so repeated
# additions never drift the way fractional milliseconds would.
GCRA_SCRIPT: Final = Script("""
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local count = tonumber(ARGV[3] or '1')
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval * count
local allowed_at = new_tat - interval * burst
if allowed_at > now then
  return {0, math.ceil((allowed_at - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
""")


# Gives back tokens taken with GCRA_SCRIPT. KEYS[1]: the bucket, ARGV[1]: interval (µs),
# ARGV[2]: how many.
REFUND_SCRIPT: Final = Script("""
local interval = tonumber(ARGV[1]) * tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') - interval
if tat <= now then
  redis.call('DEL', KEYS[1])
else
  redis.call('SET', KEYS[1], string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000))
end
return 1
""")


# Tokens taken ahead at once, at most: fewer Redis round trips for a busy tenant, while a
# data plane holds no more than this of a tenant's bucket.
MAX_LEASE: Final = 8


def lease_size(rule: RateLimitRule) -> int:
    """How many tokens to take ahead: a tenth of the burst, 1 to MAX_LEASE."""
    return max(1, min(MAX_LEASE, rule.burst // 10))


@dataclass(slots=True)
class TokenAhead:
    """Tokens taken ahead of the tenant's next requests, which claim them one each, arrived or
    not; tokens no request claims in time are given back."""

    rule: RateLimitRule
    reply: asyncio.Future[Any]
    count: int
    claimed: int = 0
    expiry: asyncio.TimerHandle | None = None


def bucket_key(tenant_id: str) -> str:
    """The tenant's bucket; `{tenant_id}` is a Redis Cluster hash tag, kept literally."""
    return f"rl:{{{tenant_id}}}:requests"


class RateLimit(Stage):
    """Refuses a tenant's request with 429 and `Retry-After` once its bucket is empty.

    Tenants without a rate limit in the policy are not limited and cost no Redis call. When
    Redis cannot answer within `timeout_s`, requests are refused with 503 (fail closed), or let
    through when constructed with `fail_open=True`.
    """

    def __init__(
        self,
        redis: ScriptClient,
        *,
        fail_open: bool = False,
        timeout_s: float = 0.5,
        hold_s: float = 1.0,
    ) -> None:
        # Every call is an EVALSHA; the script is loaded on the first NOSCRIPT.
        self._redis = redis
        # A deadline of our own: a connect to a hung host, or a Redis that stopped answering,
        # would otherwise hold every request while Redis is away.
        self._timeout_s = timeout_s
        # Read by the pipeline too: an unexpected error in a fail-open stage lets requests on.
        self.failure_mode = FailureMode.OPEN if fail_open else FailureMode.CLOSED
        # How long a token taken ahead is kept for the tenant's next request (0: never taken).
        self._hold_s = hold_s
        self._ahead: dict[str, TokenAhead] = {}

    def on_request_headers(self, flow: Flow) -> Verdict:
        tenant = flow.policy.tenants.get(flow.caller.tenant_id)
        if tenant is None:
            raise Unauthenticated("unknown tenant")
        rule = tenant.rate_limit
        if rule is None:
            return CONTINUE
        reply = self._claim(tenant.id, rule)
        if reply is None:
            # Deferred: the command goes out right after Envoy is answered, and the round
            # trip overlaps Envoy sending the request body; it is settled before anything
            # reaches the provider. The cost: a limited tenant's body may be read before its 429.
            reply = self._take(tenant.id, rule)
        elif reply.done():
            self._take_ahead(tenant.id, rule)  # the token was here already: no wait at all
            return CONTINUE
        else:
            reply = self._own_if_refused(tenant.id, rule, reply)
        loop = asyncio.get_running_loop()
        # Settled by callbacks, not a task: once the command is written the data plane has
        # nothing more to do for this request until Redis or Envoy answers.
        verdict: asyncio.Future[Continue | Respond] = loop.create_future()
        deadline = loop.call_later(self._timeout_s, self._give_up, verdict, reply)
        reply.add_done_callback(partial(self._decide, verdict, deadline))
        verdict.add_done_callback(partial(self._after_check, tenant.id, rule))
        flow.defer(self, verdict)
        return CONTINUE

    def _take(self, tenant_id: str, rule: RateLimitRule, count: int = 1) -> asyncio.Future[Any]:
        """Sends one GCRA call for `count` tokens; its reply is `[1, 0]` or `[0, wait_ms]`."""
        return self._redis.submit_script(
            GCRA_SCRIPT, (bucket_key(tenant_id),), (_interval_us(rule), rule.burst, count)
        )

    def _claim(self, tenant_id: str, rule: RateLimitRule) -> asyncio.Future[Any] | None:
        """The reply of the tokens taken ahead for this tenant, one of them claimed, if usable."""
        ahead = self._ahead.get(tenant_id)
        if ahead is None:
            return None
        if ahead.rule != rule:
            # Taken under a rule that changed since: what is unclaimed is given back (before
            # this request's own check is sent, when the reply is in), not used.
            self._drop_ahead(tenant_id, ahead)
            return None
        if ahead.reply.done() and not _allowed(ahead.reply):
            del self._ahead[tenant_id]
            return None  # refused or failed: this request asks again, and reports it
        ahead.claimed += 1
        if ahead.claimed == ahead.count:
            del self._ahead[tenant_id]  # all claimed: the next lease is taken after this one
            if ahead.expiry is not None:
                ahead.expiry.cancel()
        return ahead.reply

    def _own_if_refused(
        self, tenant_id: str, rule: RateLimitRule, lease: asyncio.Future[Any]
    ) -> asyncio.Future[Any]:
        """A claim on tokens still on their way: the lease's answer if it took them, else this
        request's own check (a lease of several can be refused where one token would not)."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def arrived(_: asyncio.Future[Any]) -> None:
            if reply.done():
                return
            if _allowed(lease):
                reply.set_result([1, 0])
                return
            own = self._take(tenant_id, rule)
            own.add_done_callback(partial(copy_outcome, reply))

        lease.add_done_callback(arrived)
        return reply

    def _after_check(
        self, tenant_id: str, rule: RateLimitRule, verdict: asyncio.Future[Continue | Respond]
    ) -> None:
        # A tenant let through is likely to come again soon: take its next token now.
        if not verdict.cancelled() and verdict.exception() is None:
            self._take_ahead(tenant_id, rule)

    def _take_ahead(self, tenant_id: str, rule: RateLimitRule) -> None:
        if self._hold_s <= 0 or tenant_id in self._ahead:
            return
        count = lease_size(rule)
        reply = self._take(tenant_id, rule, count)
        ahead = TokenAhead(rule, reply, count)
        self._ahead[tenant_id] = ahead
        reply.add_done_callback(partial(self._arrived, tenant_id, ahead))

    def _arrived(self, tenant_id: str, ahead: TokenAhead, reply: asyncio.Future[Any]) -> None:
        if self._ahead.get(tenant_id) is not ahead:
            return  # all claimed, or dropped
        if not _allowed(reply):
            del self._ahead[tenant_id]  # claimants got its refusal; the next asks Redis itself
            return
        ahead.expiry = asyncio.get_running_loop().call_later(
            self._hold_s, self._drop_ahead, tenant_id, ahead
        )

    def _drop_ahead(self, tenant_id: str, ahead: TokenAhead) -> asyncio.Future[Any] | None:
        """Stops offering these tokens and gives back the unclaimed ones (once known taken)."""
        if self._ahead.get(tenant_id) is ahead:
            del self._ahead[tenant_id]
        if ahead.expiry is not None:
            ahead.expiry.cancel()
        unclaimed = ahead.count - ahead.claimed
        ahead.claimed = ahead.count
        if unclaimed <= 0:
            return None
        if not ahead.reply.done():
            ahead.reply.add_done_callback(
                partial(self._refund_if_taken, tenant_id, ahead.rule, unclaimed)
            )
            return None
        return self._refund(tenant_id, ahead.rule, unclaimed) if _allowed(ahead.reply) else None

    def _refund_if_taken(
        self, tenant_id: str, rule: RateLimitRule, count: int, reply: asyncio.Future[Any]
    ) -> None:
        if _allowed(reply):
            self._refund(tenant_id, rule, count)

    def _refund(self, tenant_id: str, rule: RateLimitRule, count: int) -> asyncio.Future[Any]:
        """Gives tokens taken ahead back to the bucket (best effort: Redis away, they are lost)."""
        reply = self._redis.submit_script(
            REFUND_SCRIPT, (bucket_key(tenant_id),), (_interval_us(rule), count)
        )
        reply.add_done_callback(_log_refund_failure)
        return reply

    async def close(self) -> None:
        """Gives back every token taken ahead (a data plane stopping), within `timeout_s`."""
        refunds = [
            refund
            for tenant_id, ahead in list(self._ahead.items())
            if (refund := self._drop_ahead(tenant_id, ahead)) is not None
        ]
        if refunds:
            await asyncio.wait(refunds, timeout=self._timeout_s)

    def _decide(
        self,
        verdict: asyncio.Future[Continue | Respond],
        deadline: asyncio.TimerHandle,
        reply: asyncio.Future[Any],
    ) -> None:
        """The bucket's answer: on, or RateLimited with the wait; Unavailable without Redis."""
        deadline.cancel()
        if verdict.done() or reply.cancelled():
            return
        error = reply.exception()
        if error is not None:
            self._unavailable(verdict, error)
            return
        allowed, wait_ms = reply.result()
        if allowed == 1:
            verdict.set_result(CONTINUE)
            return
        retry_after_s = max(1, math.ceil(int(wait_ms) / 1000))
        verdict.set_exception(
            RateLimited(
                f"rate limit exceeded for this tenant; retry after {retry_after_s}s",
                retry_after_s=retry_after_s,
            )
        )

    def _give_up(
        self, verdict: asyncio.Future[Continue | Respond], reply: asyncio.Future[Any]
    ) -> None:
        # The reply is left alone (other requests may share it); when it comes, it is dropped.
        if not verdict.done():
            self._unavailable(verdict, TimeoutError("no answer from Redis in time"))

    def _unavailable(
        self, verdict: asyncio.Future[Continue | Respond], error: BaseException
    ) -> None:
        if self.failure_mode is FailureMode.OPEN:
            log.warning("rate limiter unavailable, letting request through: %r", error)
            verdict.set_result(CONTINUE)
            return
        log.warning("rate limiter unavailable, refusing request: %r", error)
        verdict.set_exception(Unavailable("rate limiter unavailable"))


def _allowed(reply: asyncio.Future[Any]) -> bool:
    """A finished GCRA reply that let one request through."""
    if not reply.done() or reply.cancelled() or reply.exception() is not None:
        return False
    allowed, _ = reply.result()
    return bool(allowed == 1)


def _interval_us(rule: RateLimitRule) -> int:
    return max(1, round(rule.emission_interval_ms * 1000))


def _log_refund_failure(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled() and (error := reply.exception()) is not None:
        log.warning("could not give a held rate-limit token back: %r", error)
