"""The answer cache's exact tier: cached answers in Redis, through the hot-path client.

One key per answer, `{tenant_id}:cache:answer:<exact digest>` (`gatez.answer_cache.answer_key`),
holding `CachedAnswer` bytes and expiring after the route's TTL. A lookup is one script call
(one round trip); so is a write. Both return the client's future, so a caller can wait for it
or not. The semantic tier's points name these keys: an answer gone from Redis is gone from both
tiers.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from extproc.redis_pipe import Script, ScriptClient
from gatez.answer_cache import CachedAnswer, answer_key

# KEYS: the answer's key. Replies the answer's bytes, or nil.
GET: Final = Script("return redis.call('GET', KEYS[1])")
# KEYS: the answer's key. ARGV: the answer's bytes, its TTL in milliseconds.
SET: Final = Script("return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])")


class AnswerStore:
    """Cached answers in Redis (see the module doc)."""

    def __init__(self, redis: ScriptClient) -> None:
        self._redis = redis

    def get(self, tenant_id: str, exact: str) -> asyncio.Future[Any]:
        """The stored bytes of an answer (None when there are none) as a future; decode them
        with `CachedAnswer.from_bytes`."""
        return self._redis.submit_script(GET, (answer_key(tenant_id, exact),), ())

    def put(
        self, tenant_id: str, exact: str, answer: CachedAnswer | bytes, ttl_s: float
    ) -> asyncio.Future[Any]:
        """Stores an answer for `ttl_s` seconds; the future fails when Redis does."""
        raw = answer if isinstance(answer, bytes) else answer.to_bytes()
        ttl_ms = max(1, round(ttl_s * 1000))
        return self._redis.submit_script(SET, (answer_key(tenant_id, exact),), (raw, ttl_ms))
