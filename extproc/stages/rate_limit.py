"""L1 per-tenant rate limits, shared by every data plane through Redis. Runs after authentication.

The limit is a GCRA (generic cell rate algorithm) bucket per tenant: a sustained rate of
`requests_per_minute` with up to `burst` requests at once. One Lua script decides and records
atomically in a single round trip, using Redis's clock so data planes with skewed clocks agree.
The bucket is one key holding the "theoretical arrival time" (TAT), expiring once it would be
full again, so idle tenants cost no memory.
"""

from __future__ import annotations

import asyncio
import logging
import math
from functools import partial
from typing import Any, Final

from extproc.flow import CONTINUE, Continue, Flow, Respond, Verdict
from extproc.redis_pipe import PipelinedRedis, Script
from gatez.errors import RateLimited, Unauthenticated, Unavailable

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
        self, redis: PipelinedRedis, *, fail_open: bool = False, timeout_s: float = 0.5
    ) -> None:
        # Every call is an EVALSHA; the script is loaded on the first NOSCRIPT.
        self._redis = redis
        # A deadline of our own: a connect to a hung host, or a Redis that stopped answering,
        # would otherwise hold every request while Redis is away.
        self._timeout_s = timeout_s
        # Read by the pipeline too: an unexpected error in a fail-open stage lets requests on.
        self.fail_open = fail_open

    def on_request_headers(self, flow: Flow) -> Verdict:
        if flow.policy is None:
            raise Unavailable("no policy yet")
        if flow.principal is None:
            # The pipeline puts authentication first; reaching here without it is a bug.
            raise Unauthenticated("missing credential")
        tenant = flow.policy.tenants.get(flow.principal.tenant_id)
        if tenant is None:
            raise Unauthenticated("unknown tenant")
        if tenant.rate_limit is None:
            return CONTINUE
        # Deferred: the command goes out right after Envoy is answered, and the round trip
        # overlaps Envoy sending the request body; it is settled before anything reaches the
        # provider. The cost: a limited tenant's body may be read before its 429.
        rule = tenant.rate_limit
        interval_us = max(1, round(rule.emission_interval_ms * 1000))
        reply = self._redis.submit_script(
            GCRA_SCRIPT, (bucket_key(tenant.id),), (interval_us, rule.burst)
        )
        # Settled by callbacks, not a task: once the command is written the data plane has
        # nothing more to do for this request until Redis or Envoy answers.
        verdict: asyncio.Future[Continue | Respond] = asyncio.get_running_loop().create_future()
        deadline = asyncio.get_running_loop().call_later(
            self._timeout_s, self._give_up, verdict, reply
        )
        reply.add_done_callback(partial(self._decide, verdict, deadline))
        flow.defer(self, verdict)
        return CONTINUE

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
