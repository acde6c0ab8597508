"""Streams and answers as the client gets them, through every proxy: chunks arrive as the
provider sends them (not all at the end), a pause longer than a minute does not cut a stream,
and the provider's status, content-type and headers reach the client unchanged except for the
gateway's `x-request-id`. Metering stays exact on the same path."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import UPSTREAM_KEY, Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.fakes.openai_upstream import (
    StreamPause,
    UpstreamServer,
    count_completion_tokens,
    count_prompt_tokens,
)

# One content chunk per word of the reply ("Echo: …"), this far apart.
CHUNK_DELAY_S = 0.25
SLOW_PROVIDER = "slow-openai"
PROVIDER_HEADERS = (
    "openai-organization",
    "openai-version",
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-tokens",
)


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY, chunk_delay_s=CHUNK_DELAY_S) as server:
        yield server


@pytest.fixture(scope="module")
def slow_provider(admin: Admin, slow_upstream: UpstreamServer) -> str:
    created = admin.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=SLOW_PROVIDER,
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url=slow_upstream.base_url,
            ),
            api_key=UPSTREAM_KEY,
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    return SLOW_PROVIDER


@pytest.fixture
def slow_tenant(admin: Admin, slow_provider: str) -> TenantAccess:
    return provision(admin, models={"slow": "slow-model-1"}, provider=slow_provider)


def _chat(stream: bool, words: str = "one two three four") -> dict[str, object]:
    return {"model": "slow", "stream": stream, "messages": [{"role": "user", "content": words}]}


def test_a_stream_reaches_the_client_chunk_by_chunk_as_the_provider_sends_it(
    gateway_url: str, slow_tenant: TenantAccess, admin: Admin
) -> None:
    client = openai.OpenAI(base_url=gateway_url, api_key=slow_tenant.api_key, max_retries=0)
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    for chunk in client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "one two three four"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))
    total = time.monotonic() - started
    assert "".join(text for _, text in arrivals) == "Echo: one two three four"
    # Five content chunks sent 0.25 s apart: each arrives as it is sent, not all at the end.
    first, last = arrivals[0][0], arrivals[-1][0]
    assert first < total - 3 * CHUNK_DELAY_S, (arrivals, total)
    assert last - first >= 3 * CHUNK_DELAY_S, arrivals
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(arrivals)]
    assert all(gap >= CHUNK_DELAY_S / 2 for gap in gaps), gaps
    (row,) = wait_for_ai_logs(admin, slow_tenant.tenant_id, 1)
    # Time to first token is the first chunk's, not the whole call's.
    assert row.streamed and row.ttft_ms < row.latency_ms - 2 * CHUNK_DELAY_S * 1000
    messages = [{"role": "user", "content": "one two three four"}]
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (
        count_prompt_tokens(messages),
        count_completion_tokens("Echo: one two three four"),
        False,
    )


def test_a_stream_keeps_the_providers_status_content_type_and_headers(
    stack: Stack, slow_tenant: TenantAccess, slow_upstream: UpstreamServer, admin: Admin
) -> None:
    with httpx.stream(
        "POST",
        f"{stack.config.gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {slow_tenant.api_key}"},
        json=_chat(stream=True, words="hi"),
        timeout=30,
    ) as response:
        body = response.read()
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    for name in PROVIDER_HEADERS:
        assert response.headers.get(name), name
    assert body.endswith(b"data: [DONE]\n\n")
    # The id the client sees names the log row, and is the one the provider got.
    (row,) = wait_for_ai_logs(admin, slow_tenant.tenant_id, 1)
    assert response.headers["x-request-id"] == row.request_id
    assert slow_upstream.recorder.requests[-1].header("x-request-id") == row.request_id


def test_a_plain_answer_keeps_the_providers_status_content_type_and_headers(
    stack: Stack, slow_tenant: TenantAccess
) -> None:
    response = httpx.post(
        f"{stack.config.gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {slow_tenant.api_key}"},
        json=_chat(stream=False, words="hi"),
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    for name in PROVIDER_HEADERS:
        assert response.headers.get(name), name
    assert response.headers["content-length"] == str(len(response.content))
    assert response.json()["choices"][0]["message"]["content"] == "Echo: hi"


def test_a_provider_error_keeps_its_status_content_type_headers_and_body(
    stack: Stack, slow_tenant: TenantAccess, slow_upstream: UpstreamServer
) -> None:
    slow_upstream.queue_error(429, retry_after_s=7)
    response = httpx.post(
        f"{stack.config.gateway_url}/v1/chat/completions",
        headers={"authorization": f"Bearer {slow_tenant.api_key}"},
        json=_chat(stream=True),
        timeout=30,
    )
    assert response.status_code == 429
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["retry-after"] == "7"
    for name in ("openai-organization", "openai-version"):
        assert response.headers.get(name), name
    # OpenAI's own body, byte for byte (indented by four, newline at the end).
    assert response.text.startswith('{\n    "error": {') and response.text.endswith("}\n")
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_stream_that_pauses_longer_than_a_minute_completes(
    request: pytest.FixtureRequest,
    gateway_url: str,
    slow_tenant: TenantAccess,
    slow_upstream: UpstreamServer,
    admin: Admin,
) -> None:
    """APISIX's own response path cut a stream after 60 s without data; Gatez's plugin uses the
    route's read timeout (600 s). Envoy's stream idle timeout is 910 s (envoy.yaml)."""
    if request.node.callspec.params["stack"] != "apisix":
        pytest.skip("one proxy is enough: Envoy's idle timeouts are fixed in envoy.yaml (910 s)")
    slow_upstream.recorder.queue_pause(StreamPause(seconds=61, after_chunks=1))
    client = openai.OpenAI(
        base_url=gateway_url, api_key=slow_tenant.api_key, max_retries=0, timeout=120
    )
    started = time.monotonic()
    arrivals: list[float] = []
    text = ""
    for chunk in client.chat.completions.create(
        model="slow", messages=[{"role": "user", "content": "think first"}], stream=True
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - started)
            text += chunk.choices[0].delta.content
    assert text == "Echo: think first"
    # The first word came before the pause, the rest after it.
    assert arrivals[0] < 5 and arrivals[-1] > 61, arrivals
    (row,) = wait_for_ai_logs(admin, slow_tenant.tenant_id, 1)
    assert row.status == 200 and not row.usage_estimated
    assert row.output_tokens == count_completion_tokens(text)
