"""Per-tenant rate limits end to end: independent buckets, 429 with Retry-After."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gatez.v1 import policy_pb2
from tests.e2e.conftest import Admin, provision
from tests.fakes.openai_upstream import UpstreamServer

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


def test_a_limited_chat_request_never_reaches_the_provider(
    gateway_url: str, admin: Admin, upstream: UpstreamServer
) -> None:
    # The check runs while the proxy reads the body, but is settled before routing.
    access = provision(admin, rate_limit=policy_pb2.RateLimit(requests_per_minute=1, burst=1))
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    marker = f"limited-{access.tenant_id}"
    client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"{marker} first"}]
    )

    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": f"{marker} second"}]
        )

    seen = [r.body for r in upstream.recorder.requests if marker.encode() in r.body]
    assert len(seen) == 1 and b"first" in seen[0]


def test_a_request_without_a_body_is_limited_too(gateway_url: str, admin: Admin) -> None:
    access = provision(admin, rate_limit=policy_pb2.RateLimit(requests_per_minute=1, burst=1))
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt-test"]

    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert int(caught.value.response.headers["retry-after"]) >= 1
