"""Every client SDK against a provider of every kind, through both proxies: the SDKs as users
call them (base URL and Gatez key only), the providers as replay fakes of their exact wire
format, registered through the control API.

- Each SDK against its own kind is the passthrough path; every other pair is translated both
  ways. Plain and streamed, each SDK must report the provider's text, a natural stop in its own
  words, and the provider's exact usage.
- The fake saw the provider's own key where that kind wants it, and never the Gatez key.
- Streamed tool calls arrive whole: their argument pieces joined in the client's schema.
- A streamed call's AI-log row has the provider's exact usage (not an estimate) and the cost
  of that usage at the upstream model's price.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from gatez.prices import DEFAULT_PRICES, cost_usd
from gatez.v1 import control_pb2, logs_pb2
from tests.e2e.conftest import Admin, TenantAccess
from tests.e2e.providers.calls import (
    ALIAS_OF,
    ALIASES,
    EXPECTED,
    NORMAL_STOP,
    OWN_KIND,
    Clients,
    Gateway,
    Kind,
    Sdk,
)
from tests.e2e.providers.conftest import PROVIDER_KEYS, Fakes
from tests.fakes.openai_upstream import RecordedRequest


@pytest.fixture
def clients(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Clients:
    return Clients(gateway, monkeypatch)


PAIRS = [(sdk, kind) for sdk in Sdk for kind in Kind]


def pair_id(sdk: Sdk, kind: Kind) -> str:
    return f"{sdk.value}->{kind.value}" + ("(passthrough)" if OWN_KIND[sdk] is kind else "")


@pytest.mark.parametrize(("sdk", "kind"), PAIRS, ids=[pair_id(*pair) for pair in PAIRS])
def test_each_sdk_gets_each_providers_answer_plain_and_streamed(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes, sdk: Sdk, kind: Kind
) -> None:
    before = fakes.received(kind)
    for stream in (False, True):
        answer = clients.ask(sdk, shared_tenant.api_key, ALIAS_OF[kind], stream=stream)
        expected = EXPECTED[kind, stream]
        assert answer.text == expected.text, f"stream={stream}"
        assert answer.stop == NORMAL_STOP[sdk], f"stream={stream}"
        assert (answer.input_tokens, answer.output_tokens) == (
            expected.input_tokens,
            expected.output_tokens,
        ), f"stream={stream}"
    sent = fakes.requests_since(kind, before)
    assert len(sent) == 2
    assert_provider_credentials(kind, sent, shared_tenant.api_key)


def assert_provider_credentials(
    kind: Kind, requests: Sequence[RecordedRequest], gatez_key: str
) -> None:
    """Each request carries the provider's own key where `kind` wants it, and no trace of the
    Gatez key (headers, query or body)."""
    provider_key = PROVIDER_KEYS[kind]
    for request in requests:
        wire = orjson.dumps(dict(request.headers)).decode() + request.query_string
        assert gatez_key not in wire and gatez_key.encode() not in request.body
        # The key's secret part alone must not leak either (say, re-prefixed).
        assert gatez_key[-16:] not in wire
        assert "key=" not in request.query_string
        headers = request.headers
        if kind is Kind.ANTHROPIC:
            assert headers.get("x-api-key") == provider_key
            assert headers.get("anthropic-version") == "2023-06-01"
            assert "authorization" not in headers
        elif kind is Kind.GEMINI:
            assert headers.get("x-goog-api-key") == provider_key
            assert "authorization" not in headers
        else:
            # OpenAI, Ollama (optional key) and Bedrock with a Bedrock API key: a bearer token.
            assert headers.get("authorization") == f"Bearer {provider_key}"
            assert "x-api-key" not in headers and "x-goog-api-key" not in headers


ASYNC_SDKS = [Sdk.OPENAI, Sdk.ANTHROPIC, Sdk.GEMINI, Sdk.OLLAMA]


@pytest.mark.parametrize("sdk", ASYNC_SDKS, ids=[sdk.value for sdk in ASYNC_SDKS])
async def test_async_clients_on_their_own_kind_and_translated(
    clients: Clients, shared_tenant: TenantAccess, sdk: Sdk
) -> None:
    # Passthrough, and one translated provider (Anthropic's, or OpenAI's for Anthropic's SDK).
    other = Kind.OPENAI if sdk is Sdk.ANTHROPIC else Kind.ANTHROPIC
    for kind in (OWN_KIND[sdk], other):
        for stream in (False, True):
            answer = await clients.ask_async(
                sdk, shared_tenant.api_key, ALIAS_OF[kind], stream=stream
            )
            expected = EXPECTED[kind, stream]
            assert (answer.text, answer.stop) == (expected.text, NORMAL_STOP[sdk])
            assert (answer.input_tokens, answer.output_tokens) == (
                expected.input_tokens,
                expected.output_tokens,
            )


def test_openai_stream_without_include_usage_from_a_translated_provider_has_no_usage(
    clients: Clients, shared_tenant: TenantAccess
) -> None:
    chunks = list(
        clients.openai_client(shared_tenant.api_key).chat.completions.create(
            model=ALIAS_OF[Kind.ANTHROPIC],
            messages=[{"role": "user", "content": "Hello"}],
            stream=True,
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"
    assert all(c.choices and c.usage is None for c in chunks)


# -- tool calls -------------------------------------------------------------------------------

WEATHER_ARGUMENTS = {"location": "San Francisco, CA", "unit": "fahrenheit"}
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
TOOL_PROMPT: Any = [{"role": "user", "content": "What is the weather like in San Francisco?"}]


def test_openai_sdk_streams_an_anthropic_tool_call_with_its_arguments_joined(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    before = fakes.received(Kind.ANTHROPIC)
    stream = clients.openai_client(shared_tenant.api_key).chat.completions.create(
        model=ALIAS_OF[Kind.ANTHROPIC],
        messages=TOOL_PROMPT,
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    (sent,) = fakes.requests_since(Kind.ANTHROPIC, before)
    assert sent.json["tools"] == [
        {
            "name": "get_weather",
            "description": "Get the current weather in a given location",
            "input_schema": WEATHER_TOOL["function"]["parameters"],
        }
    ]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    # The first piece names the call; the rest carry only argument text, at the same index.
    first, *rest = calls
    assert (first.id, first.type, first.index) == ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "function", 0)
    assert first.function is not None and first.function.name == "get_weather"
    assert all(call.id is None and call.index == 0 for call in rest)
    arguments = "".join(call.function.arguments or "" for call in calls if call.function)
    assert json.loads(arguments) == WEATHER_ARGUMENTS
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (472, 89)


def test_boto3_converse_stream_gets_an_anthropic_tool_call(
    clients: Clients, shared_tenant: TenantAccess
) -> None:
    response = clients.bedrock_client(shared_tenant.api_key).converse_stream(
        modelId=ALIAS_OF[Kind.ANTHROPIC],
        messages=[{"role": "user", "content": [{"text": TOOL_PROMPT[0]["content"]}]}],
        toolConfig={
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_weather",
                        "inputSchema": {"json": WEATHER_TOOL["function"]["parameters"]},
                    }
                }
            ]
        },
    )
    events = list(response["stream"])
    starts = [e["contentBlockStart"]["start"] for e in events if "contentBlockStart" in e]
    assert starts == [
        {"toolUse": {"toolUseId": "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "name": "get_weather"}}
    ]
    pieces = [
        e["contentBlockDelta"]["delta"]["toolUse"]["input"]
        for e in events
        if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"]
    ]
    assert json.loads("".join(pieces)) == WEATHER_ARGUMENTS
    (stop,) = [e["messageStop"]["stopReason"] for e in events if "messageStop" in e]
    assert stop == "tool_use"


# -- usage and cost -----------------------------------------------------------------------------


def wait_for_ai_logs(admin: Admin, tenant_id: str, count: int) -> list[logs_pb2.AiLog]:
    deadline = time.monotonic() + 10
    while True:
        rows = admin.control.ListAiLogs(
            control_pb2.ListAiLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).ai_logs
        if len(rows) >= count or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.05)


def test_every_streamed_call_is_metered_exactly_and_costed(
    clients: Clients, fresh_tenant: TenantAccess, admin: Admin
) -> None:
    # One streamed call per provider kind, each from an SDK of another schema but Bedrock's
    # (boto3 to Anthropic and the OpenAI SDK to Bedrock).
    calls = {
        Kind.OPENAI: Sdk.ANTHROPIC,
        Kind.ANTHROPIC: Sdk.BEDROCK,
        Kind.GEMINI: Sdk.OPENAI,
        Kind.OLLAMA: Sdk.GEMINI,
        Kind.BEDROCK: Sdk.OPENAI,
    }
    for kind, sdk in calls.items():
        clients.ask(sdk, fresh_tenant.api_key, ALIAS_OF[kind], stream=True)

    rows = {row.model_alias: row for row in wait_for_ai_logs(admin, fresh_tenant.tenant_id, 5)}
    assert sorted(rows) == sorted(ALIASES)
    for alias, (kind, upstream_model) in ALIASES.items():
        row = rows[alias]
        expected = EXPECTED[kind, True]
        assert row.streamed and row.status == 200, alias
        assert row.upstream_model == upstream_model, alias
        assert not row.usage_estimated, alias
        assert (row.input_tokens, row.output_tokens) == (
            expected.input_tokens,
            expected.output_tokens,
        ), alias
        price = DEFAULT_PRICES.lookup(upstream_model)
        if kind is Kind.OLLAMA:
            # A local model has no price: the row says so, and costs nothing.
            assert price is None and not row.price_known and row.cost_usd == 0, alias
            continue
        assert price is not None and row.price_known, alias
        assert row.cost_usd == pytest.approx(cost_usd(_Usage(row), price), rel=1e-9), alias
        assert row.cost_usd > 0


class _Usage:
    """An AI-log row's token counts, as `gatez.prices.cost_usd` reads them."""

    def __init__(self, row: logs_pb2.AiLog) -> None:
        self.input_tokens = row.input_tokens
        self.output_tokens = row.output_tokens
        self.cached_input_tokens = row.cached_input_tokens
        self.cache_write_input_tokens = 0


def test_tool_call_stream_usage_is_metered_exactly(
    clients: Clients, fresh_tenant: TenantAccess, admin: Admin
) -> None:
    client = clients.openai_client(fresh_tenant.api_key)
    list(
        client.chat.completions.create(
            model=ALIAS_OF[Kind.ANTHROPIC], messages=TOOL_PROMPT, tools=[WEATHER_TOOL], stream=True
        )
    )
    (row,) = wait_for_ai_logs(admin, fresh_tenant.tenant_id, 1)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (472, 89, False)
    # claude-3-5-haiku: $0.80 in, $4.00 out per million tokens.
    assert row.cost_usd == pytest.approx((472 * 0.80 + 89 * 4.00) / 1e6)


# -- Ollama's generate, and each SDK's model list -------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.OLLAMA, Kind.OPENAI, Kind.GEMINI], ids=str)
def test_ollama_generate_plain_and_streamed(
    clients: Clients, shared_tenant: TenantAccess, kind: Kind
) -> None:
    client = clients.ollama_client(shared_tenant.api_key)
    alias = ALIAS_OF[kind]
    plain = client.generate(model=alias, prompt="Hello")
    parts = list(client.generate(model=alias, prompt="Hello", stream=True))
    streamed = "".join(part.response or "" for part in parts)
    for text, last, stream in ((plain.response, plain, False), (streamed, parts[-1], True)):
        expected = EXPECTED[kind, stream]
        assert text == expected.text
        assert last.done and last.done_reason == "stop"
        assert (last.prompt_eval_count, last.eval_count) == (
            expected.input_tokens,
            expected.output_tokens,
        )


def test_each_sdk_lists_the_tenants_aliases(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    key = shared_tenant.api_key
    before = {kind: fakes.received(kind) for kind in Kind}
    aliases = sorted(ALIASES)
    assert sorted(m.id for m in clients.openai_client(key).models.list()) == aliases
    assert sorted(m.id for m in clients.anthropic_client(key).models.list()) == aliases
    gemini = clients.gemini_client(key)
    assert sorted(m.name or "" for m in gemini.models.list()) == [f"models/{a}" for a in aliases]
    listed = clients.ollama_client(key).list()
    assert sorted(m.model or "" for m in listed.models) == aliases
    # The gateway answers them itself: no provider is asked.
    assert {kind: fakes.received(kind) for kind in Kind} == before
