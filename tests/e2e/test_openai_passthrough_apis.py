"""OpenAI's Responses, Embeddings and Models APIs through each proxy and Gatez, driven by the
official `openai` SDK given only the gateway's base URL and a Gatez key.

Responses and Embeddings pass through to an OpenAI-kind provider (the fake OpenAI, which
answers deterministically): the alias becomes the upstream model, the Gatez key never reaches
the provider, and the AI-log row carries the exact usage the provider reported, for plain and
streamed calls alike. `GET /v1/models` lists the tenant's aliases.
"""

from __future__ import annotations

from typing import Any

import openai
import orjson

from tests.e2e.conftest import PROVIDER, UPSTREAM_KEY, Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.fakes.openai_upstream import RecordedRequest, UpstreamServer, embedding_vector

ALIAS = "gpt-test"
UPSTREAM_MODEL = "upstream-model-1"
PROMPT = "hello gateway world"
#: The fake's answer to PROMPT: "Echo: " + the prompt, 4 words; 3 words + 1 for the message in.
REPLY = "Echo: hello gateway world"
INPUT_TOKENS, OUTPUT_TOKENS = 4, 4
TEXTS = ["hello world", "gatez"]
#: The fake counts the words of each embeddings input.
EMBEDDING_TOKENS = 3


def requests_after(upstream: UpstreamServer, count: int, path: str) -> list[RecordedRequest]:
    """The fake's requests to `path` after its first `count` requests."""
    return [seen for seen in upstream.requests[count:] if seen.path == path]


def assert_provider_call(seen: RecordedRequest, tenant: TenantAccess) -> dict[str, Any]:
    """The provider got the upstream model and its own key, and no trace of the Gatez key."""
    assert seen.json["model"] == UPSTREAM_MODEL
    assert seen.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert tenant.api_key not in orjson.dumps(dict(seen.headers)).decode()
    assert tenant.api_key.encode() not in seen.body
    body: dict[str, Any] = seen.json
    return body


def assert_logged(
    admin: Admin, tenant: TenantAccess, *, rows: int, usage: list[tuple[int, int, bool]]
) -> None:
    """The tenant's AI-log rows carry exactly `usage` (input, output, streamed), none estimated."""
    logged = wait_for_ai_logs(admin, tenant.tenant_id, rows)
    assert len(logged) == rows
    assert sorted((r.input_tokens, r.output_tokens, r.streamed) for r in logged) == sorted(usage)
    for row in logged:
        assert (row.model_alias, row.upstream_model, row.provider) == (
            ALIAS,
            UPSTREAM_MODEL,
            PROVIDER,
        )
        assert row.status == 200 and not row.usage_estimated
        assert row.key_id == tenant.api_key_id


def test_responses_plain_and_streamed(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer, admin: Admin
) -> None:
    before = len(upstream.requests)
    with openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0) as client:
        response = client.responses.create(model=ALIAS, input=PROMPT)
        events = list(client.responses.create(model=ALIAS, input=PROMPT, stream=True))
        # Cut by max_output_tokens: the stream ends with `response.incomplete`, usage and all.
        cut = list(
            client.responses.create(model=ALIAS, input=PROMPT, stream=True, max_output_tokens=2)
        )

    assert response.output_text == REPLY
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (
        INPUT_TOKENS,
        OUTPUT_TOKENS,
    )
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == response.usage
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert cut[-1].type == "response.incomplete"
    assert cut[-1].response.output_text == "Echo: hello"
    plain, streamed, _ = requests_after(upstream, before, "/v1/responses")
    assert assert_provider_call(plain, tenant).get("stream") in (None, False)
    assert assert_provider_call(streamed, tenant)["stream"] is True
    assert_logged(
        admin,
        tenant,
        rows=3,
        usage=[
            (INPUT_TOKENS, OUTPUT_TOKENS, False),
            (INPUT_TOKENS, OUTPUT_TOKENS, True),
            (INPUT_TOKENS, 2, True),
        ],
    )


async def test_async_responses_plain_and_streamed(
    gateway_url: str, tenant: TenantAccess, admin: Admin
) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway_url, api_key=tenant.api_key, max_retries=0
    ) as client:
        response = await client.responses.create(
            model=ALIAS, input=[{"role": "user", "content": PROMPT}], instructions="Be brief."
        )
        stream = await client.responses.create(model=ALIAS, input=PROMPT, stream=True)
        events = [event async for event in stream]

    assert response.output_text == REPLY
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == REPLY
    # The instructions are a message of their own to the fake: 2 words + 1.
    assert_logged(
        admin,
        tenant,
        rows=2,
        usage=[(INPUT_TOKENS + 3, OUTPUT_TOKENS, False), (INPUT_TOKENS, OUTPUT_TOKENS, True)],
    )


def test_embeddings_reach_the_sdk_as_the_provider_sent_them(
    gateway_url: str, tenant: TenantAccess, upstream: UpstreamServer, admin: Admin
) -> None:
    before = len(upstream.requests)
    with openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0) as client:
        # The SDK asks for base64 and decodes it; floats asked for come back as floats.
        decoded = client.embeddings.create(model=ALIAS, input=TEXTS)
        floats = client.embeddings.create(model=ALIAS, input=TEXTS, encoding_format="float")

    for result in (decoded, floats):
        assert [item.embedding for item in result.data] == [
            embedding_vector(text, 8) for text in TEXTS
        ]
        assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)
    as_base64, as_floats = requests_after(upstream, before, "/v1/embeddings")
    assert assert_provider_call(as_base64, tenant)["encoding_format"] == "base64"
    assert assert_provider_call(as_floats, tenant)["input"] == TEXTS
    assert_logged(
        admin, tenant, rows=2, usage=[(EMBEDDING_TOKENS, 0, False), (EMBEDDING_TOKENS, 0, False)]
    )


async def test_async_embeddings(gateway_url: str, tenant: TenantAccess) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway_url, api_key=tenant.api_key, max_retries=0
    ) as client:
        result = await client.embeddings.create(model=ALIAS, input="gatez", dimensions=12)

    assert result.data[0].embedding == embedding_vector("gatez", 12)


def test_models_lists_the_tenants_aliases(gateway_url: str, admin: Admin) -> None:
    tenant = provision(admin, models={"alias-a": UPSTREAM_MODEL, "alias-b": "upstream-model-2"})
    with openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0) as client:
        listed = sorted(model.id for model in client.models.list())

    assert listed == ["alias-a", "alias-b"]
