"""Per-tenant rate limits end to end: independent buckets, 429 with Retry-After."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gatez.v1 import policy_pb2
from tests.e2e.conftest import Admin, provision

MESSAGES: list[Any] = [{"role": "user", "content": "count me"}]


def test_two_tenants_have_independent_buckets(gateway_url: str, admin: Admin) -> None:
    limit = policy_pb2.RateLimit(requests_per_minute=2, burst=2)
    first, second = provision(admin, rate_limit=limit), provision(admin, rate_limit=limit)
    clients = {
        t.tenant_id: openai.OpenAI(base_url=gateway_url, api_key=t.api_key, max_retries=0)
        for t in (first, second)
    }
    for _ in range(2):
        clients[first.tenant_id].chat.completions.create(model="gpt-test", messages=MESSAGES)

    with pytest.raises(openai.RateLimitError) as caught:
        clients[first.tenant_id].chat.completions.create(model="gpt-test", messages=MESSAGES)
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 30  # one request every 30 s at 2 per minute
    assert caught.value.body is not None

    # The other tenant's bucket is untouched.
    for _ in range(2):
        clients[second.tenant_id].chat.completions.create(model="gpt-test", messages=MESSAGES)
