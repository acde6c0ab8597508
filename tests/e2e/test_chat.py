"""OpenAI Chat Completions through Envoy + Gatez, driven by the official `openai` SDK."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from gatez.v1 import control_pb2, logs_pb2
from tests.e2e.conftest import UPSTREAM_KEY, Admin, TenantAccess
from tests.fakes.openai_upstream import DEMO_ORGANIZATION, RATE_LIMIT_REQUESTS, UpstreamServer

MESSAGES: list[Any] = [{"role": "user", "content": "hello gateway world"}]


def wait_for_ai_logs(admin: Admin, tenant_id: str, count: int) -> list[logs_pb2.AiLog]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = admin.control.ListAiLogs(
            control_pb2.ListAiLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).ai_logs
        if len(rows) >= count:
            return list(rows)
        time.sleep(0.1)
    raise TimeoutError(f"{count} AI log rows for {tenant_id} did not arrive")


def wait_for_request_logs(admin: Admin, tenant_id: str, count: int) -> list[logs_pb2.RequestLog]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = admin.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).request_logs
        if len(rows) >= count:
            return list(rows)
        time.sleep(0.1)
    raise TimeoutError(f"{count} request log rows for {tenant_id} did not arrive")


def last_upstream_request(upstream: UpstreamServer) -> Any:
    assert upstream.requests, "the upstream saw no request"
    return upstream.requests[-1]


def test_sync_non_streaming_routes_alias_and_swaps_credentials(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer, admin: Admin
) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)

    assert reply.choices[0].message.content == "Echo: hello gateway world"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    seen = last_upstream_request(upstream)
    assert seen.json["model"] == "upstream-model-1"
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert tenant.api_key not in orjson.dumps(dict(seen.headers)).decode()
    assert "stream_options" not in seen.json

    (row,) = wait_for_ai_logs(admin, tenant.tenant_id, 1)
    assert (row.model_alias, row.upstream_model, row.provider) == (
        "gpt-test",
        "upstream-model-1",
        "fake-openai",
    )
    assert (row.input_tokens, row.output_tokens) == (
        reply.usage.prompt_tokens,
        reply.usage.completion_tokens,
    )
    assert row.status == 200 and not row.streamed and row.key_id == tenant.api_key_id
    assert row.latency_ms > 0 and row.ttft_ms > 0
    (request_row,) = wait_for_request_logs(admin, tenant.tenant_id, 1)
    assert (request_row.method, request_row.path, request_row.status) == (
        "POST",
        "/v1/chat/completions",
        200,
    )


async def test_async_non_streaming(gateway_url: str, tenant: TenantAccess) -> None:
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    reply = await client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: hello gateway world"
    await client.close()


def test_stream_hides_the_usage_the_gateway_asked_for(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer, admin: Admin
) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    chunks = list(client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True))

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: hello gateway world"
    assert all(c.choices for c in chunks), "the usage-only chunk reached the client"
    assert all(c.usage is None for c in chunks)
    assert all("usage" not in c.model_dump(exclude_unset=True) for c in chunks)
    assert last_upstream_request(upstream).json["stream_options"] == {"include_usage": True}

    (row,) = wait_for_ai_logs(admin, tenant.tenant_id, 1)
    assert row.streamed and row.output_tokens > 0 and row.input_tokens > 0
    assert 0 < row.ttft_ms <= row.latency_ms


async def test_async_stream_with_usage_asked_by_the_client(
    gateway_url: str, tenant: TenantAccess, admin: Admin
) -> None:
    client = openai.AsyncOpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    stream = await client.chat.completions.create(
        model="gpt-test",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    await client.close()

    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    usage = chunks[-1].usage
    (row,) = wait_for_ai_logs(admin, tenant.tenant_id, 1)
    assert (row.input_tokens, row.output_tokens) == (usage.prompt_tokens, usage.completion_tokens)


def test_raw_sse_without_usage_is_what_the_upstream_sends_without_it(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer
) -> None:
    body = {"model": "gpt-test", "messages": MESSAGES, "stream": True}
    headers = {"authorization": f"Bearer {tenant.api_key}"}
    through_gateway = httpx.post(f"{gateway_url}/chat/completions", json=body, headers=headers)
    direct = httpx.post(
        f"{upstream.base_url}/chat/completions",
        json={**body, "model": "upstream-model-1"},
        headers={"authorization": f"Bearer {UPSTREAM_KEY}"},
    )
    assert through_gateway.status_code == direct.status_code == 200
    assert through_gateway.headers["content-type"].startswith("text/event-stream")

    def shape(raw: str) -> list[Any]:
        events = [e.removeprefix("data: ") for e in raw.strip().split("\n\n")]
        assert events[-1] == "[DONE]"
        parsed = [orjson.loads(e) for e in events[:-1]]
        for event in parsed:  # ids and timestamps differ between two calls
            event.pop("id"), event.pop("created")
        return [*parsed, "[DONE]"]

    assert shape(through_gateway.text) == shape(direct.text)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "sse"])
def test_the_providers_content_type_and_headers_reach_the_client(
    gateway_url: str, tenant: TenantAccess, stream: bool
) -> None:
    response = httpx.post(
        f"{gateway_url}/chat/completions",
        json={"model": "gpt-test", "messages": MESSAGES, "stream": stream},
        headers={"authorization": f"Bearer {tenant.api_key}"},
    )
    assert response.status_code == 200
    expected = "text/event-stream" if stream else "application/json"
    assert response.headers["content-type"].startswith(expected)
    # What the fake provider sends on every answer (OpenAI's own headers).
    assert response.headers.get("openai-organization") == DEMO_ORGANIZATION
    assert response.headers.get("x-ratelimit-limit-requests") == str(RATE_LIMIT_REQUESTS)


def test_models_list_shows_the_tenants_aliases(gateway_url: str, tenant: TenantAccess) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    assert [m.id for m in client.models.list()] == ["gpt-test"]


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        (b"{not json", 400, "invalid_request_error"),
        (b"[1, 2]", 400, "invalid_request_error"),
        (b'{"model": "gpt-test"}', 400, "invalid_request_error"),
        (b'{"model": "no-such-model", "messages": []}', 404, "invalid_request_error"),
    ],
)
def test_bad_requests_get_json_errors_and_never_reach_the_upstream(
    gateway_url: str,
    tenant: TenantAccess,
    upstream: UpstreamServer,
    body: bytes,
    status: int,
    kind: str,
) -> None:
    before = len(upstream.requests)
    response = httpx.post(
        f"{gateway_url}/chat/completions",
        content=body,
        headers={"authorization": f"Bearer {tenant.api_key}", "content-type": "application/json"},
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == kind
    assert len(upstream.requests) == before


def test_unknown_model_is_a_not_found_error_in_the_sdk(
    gateway_url: str, tenant: TenantAccess
) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-unknown", messages=MESSAGES)
    assert "gpt-unknown" in str(caught.value)


def test_provider_errors_reach_the_client_unchanged(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer, admin: Admin
) -> None:
    upstream.queue_error(429, retry_after_s=7)
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    (row,) = wait_for_ai_logs(admin, tenant.tenant_id, 1)
    assert row.status == 429 and row.input_tokens == 0
