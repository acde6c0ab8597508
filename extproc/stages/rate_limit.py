"""L1 per-tenant rate limits, shared by every data plane through Redis. Runs after authentication.

The limit is a GCRA (generic cell rate algorithm) bucket per tenant: a sustained rate of
`requests_per_minute` with up to `burst` requests at once. One Lua script decides and records
atomically in a single round trip, using Redis's clock so data planes with skewed clocks agree.
The bucket is one key holding the "theoretical arrival time" (TAT), expiring once it would be
full again, so idle tenants cost no memory.

Off the critical path: after a request of a tenant is let through, the data plane takes the
tenant's next token ahead of time and holds it (one per tenant per process). The tenant's next
request uses it with no Redis round trip on its way, and takes the next one in turn. Accounting
stays exact: a held token was taken from the bucket in Redis, and one not used within
`hold_s` is given back (REFUND_SCRIPT). The cost is bounded: while a token is held, the
tenant's bucket shows one token less to other data planes, for at most `hold_s`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from extproc.flow import CONTINUE, Continue, Flow, Respond, Verdict
from extproc.redis_pipe import PipelinedRedis, Script
from gatez.errors import RateLimited, Unauthenticated, Unavailable
from gatez.policy import RateLimitRule

log = logging.getLogger("gatez.rate_limit")

# KEYS[1]: the tenant's bucket. ARGV[1]: emission interval (µs), ARGV[2]: burst.
# Returns {1, 0} when allowed, {0, wait_ms} when not: wait_ms until one more would pass.
# Time is kept in whole microseconds: epoch µs fit a Lua double exactly, so repeated
# additions never drift the way fractional milliseconds would.
GCRA_SCRIPT: Final = Script("""
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then
  tat = now
end
local new_tat = tat + interval
local allowed_at = new_tat - interval * burst
if allowed_at > now then
  return {0, math.ceil((allowed_at - now) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
""")


# Gives back one token taken with GCRA_SCRIPT. KEYS[1]: the bucket, ARGV[1]: interval (µs).
REFUND_SCRIPT: Final = Script("""
local interval = tonumber(ARGV[1])
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


@dataclass(slots=True)
class TokenAhead:
    """A check sent ahead of the tenant's next request, which claims its reply (arrived or
    not); a token it took that no request claims in time is given back."""

    rule: RateLimitRule
    reply: asyncio.Future[Any]
    expiry: asyncio.TimerHandle | None = None


def bucket_key(tenant_id: str) -> str:
    """The tenant's bucket; `{tenant_id}` is a Redis Cluster hash tag, kept literally."""
    return f"rl:{{{tenant_id}}}:requests"


class RateLimit:
    """Refuses a tenant's request with 429 and `Retry-After` once its bucket is empty.

    Tenants without a rate limit in the policy are not limited and cost no Redis call. When
    Redis cannot answer within `timeout_s`, requests are refused with 503 (fail closed), or let
    through when constructed with `fail_open=True`.
    """

    def __init__(
        self,
        redis: PipelinedRedis,
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
        self.fail_open = fail_open
        # How long a token taken ahead is kept for the tenant's next request (0: never taken).
        self._hold_s = hold_s
        self._ahead: dict[str, TokenAhead] = {}

    def on_request_headers(self, flow: Flow) -> Verdict:
        if flow.policy is None:
            raise Unavailable("no policy yet")
        if flow.principal is None:
            # The pipeline puts authentication first; reaching here without it is a bug.
            raise Unauthenticated("missing credential")
        tenant = flow.policy.tenants.get(flow.principal.tenant_id)
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
            reply = self._redis.submit_script(
                GCRA_SCRIPT, (bucket_key(tenant.id),), (_interval_us(rule), rule.burst)
            )
        elif reply.done() and _allowed(reply):
            self._take_ahead(tenant.id, rule)  # the token was here already: no wait at all
            return CONTINUE
        loop = asyncio.get_running_loop()
        # Settled by callbacks, not a task: once the command is written the data plane has
        # nothing more to do for this request until Redis or Envoy answers.
        verdict: asyncio.Future[Continue | Respond] = loop.create_future()
        deadline = loop.call_later(self._timeout_s, self._give_up, verdict, reply)
        reply.add_done_callback(partial(self._decide, verdict, deadline))
        verdict.add_done_callback(partial(self._after_check, tenant.id, rule))
        flow.defer(self, verdict)
        return CONTINUE

    def _claim(self, tenant_id: str, rule: RateLimitRule) -> asyncio.Future[Any] | None:
        """The reply of the check sent ahead for this tenant, if one is usable."""
        ahead = self._ahead.pop(tenant_id, None)
        if ahead is None:
            return None
        if ahead.expiry is not None:
            ahead.expiry.cancel()
        if ahead.rule != rule:
            # Taken under a rule that changed since: given back (before this request's own
            # check is sent, when its reply is in), not used.
            if ahead.reply.done():
                self._refund_if_taken(tenant_id, ahead.rule, ahead.reply)
            else:
                ahead.reply.add_done_callback(partial(self._refund_if_taken, tenant_id, ahead.rule))
            return None
        if ahead.reply.done() and not _allowed(ahead.reply):
            return None  # refused or failed: this request asks again, and reports it
        return ahead.reply

    def _after_check(
        self, tenant_id: str, rule: RateLimitRule, verdict: asyncio.Future[Continue | Respond]
    ) -> None:
        # A tenant let through is likely to come again soon: take its next token now.
        if not verdict.cancelled() and verdict.exception() is None:
            self._take_ahead(tenant_id, rule)

    def _take_ahead(self, tenant_id: str, rule: RateLimitRule) -> None:
        if self._hold_s <= 0 or tenant_id in self._ahead:
            return
        reply = self._redis.submit_script(
            GCRA_SCRIPT, (bucket_key(tenant_id),), (_interval_us(rule), rule.burst)
        )
        ahead = TokenAhead(rule, reply)
        self._ahead[tenant_id] = ahead
        reply.add_done_callback(partial(self._arrived, tenant_id, ahead))

    def _arrived(self, tenant_id: str, ahead: TokenAhead, reply: asyncio.Future[Any]) -> None:
        if self._ahead.get(tenant_id) is not ahead:
            return  # claimed by a request already
        if not _allowed(reply):
            del self._ahead[tenant_id]  # the next request is judged by Redis itself
            return
        ahead.expiry = asyncio.get_running_loop().call_later(
            self._hold_s, self._expire, tenant_id, ahead
        )

    def _expire(self, tenant_id: str, ahead: TokenAhead) -> asyncio.Future[Any] | None:
        if self._ahead.get(tenant_id) is not ahead:
            return None
        del self._ahead[tenant_id]
        if ahead.expiry is not None:
            ahead.expiry.cancel()
        if not ahead.reply.done():
            ahead.reply.add_done_callback(partial(self._refund_if_taken, tenant_id, ahead.rule))
            return None
        return self._refund(tenant_id, ahead.rule) if _allowed(ahead.reply) else None

    def _refund_if_taken(
        self, tenant_id: str, rule: RateLimitRule, reply: asyncio.Future[Any]
    ) -> None:
        if _allowed(reply):
            self._refund(tenant_id, rule)

    def _refund(self, tenant_id: str, rule: RateLimitRule) -> asyncio.Future[Any]:
        """Gives a token taken ahead back to the bucket (best effort: Redis away, it is lost)."""
        reply = self._redis.submit_script(
            REFUND_SCRIPT, (bucket_key(tenant_id),), (_interval_us(rule),)
        )
        reply.add_done_callback(_log_refund_failure)
        return reply

    async def close(self) -> None:
        """Gives back every token taken ahead (a data plane stopping), within `timeout_s`."""
        refunds = [
            refund
            for tenant_id, ahead in list(self._ahead.items())
            if (refund := self._expire(tenant_id, ahead)) is not None
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
        # Giving up on a command mid-flight is safe: its late reply is read and dropped.
        reply.cancel()
        if not verdict.done():
            self._unavailable(verdict, TimeoutError("no answer from Redis in time"))

    def _unavailable(
        self, verdict: asyncio.Future[Continue | Respond], error: BaseException
    ) -> None:
        if self.fail_open:
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
