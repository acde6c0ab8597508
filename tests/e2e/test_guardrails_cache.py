"""The answer cache end to end, through both adapters with the official SDKs (issue 11), on the
stack's real Redis (exact matches) and the data plane's local Qdrant (similar questions).

A hit is answered by the gateway with `x-gatez-cache: hit` (read with the SDKs' raw-response
access) in the client's own format, replayed as a stream when one was asked for, and the fake
provider is not called: each test counts the requests it received for the tenant's own
upstream model. Entries are written when the filling call ends, after its answer went out, so a
test waits for the fill's AI-log row (written after the cache entry) before asking again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Final

import anthropic
import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, logs_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.fakes.openai_upstream import RecordedRequest, UpstreamServer

pytestmark = pytest.mark.e2e

CACHE_HEADER: Final = "x-gatez-cache"
QUESTION: Final = "What is the capital of France?"
PARAPHRASE: Final = "What's the capital city of France?"
#: Close in words, not in meaning: another country, and a negation (cosine 0.88 with QUESTION).
NEAR_MISSES: Final = ("What is the capital of Germany?", "Which city is not the capital of France?")


@dataclass(frozen=True, slots=True)
class Answered:
    """What the client got: the text, the SDK's stop reason and the cache header (None: absent)."""

    text: str
    stop: str
    cache: str | None

    @property
    def hit(self) -> bool:
        return self.cache == "hit"


def cache_tenant(
    admin: Admin, *, model: str | None = None, **policy: Any
) -> tuple[TenantAccess, str]:
    """A fresh tenant whose alias `gpt-test` reaches `model` (by default one of its own), with
    a tenant-wide cache policy (`policy`: CachePolicy fields) applied on the data plane."""
    model = model or f"cache-{uuid.uuid4().hex[:8]}"
    access = provision(admin, models={"gpt-test": model})
    response = admin.control.SetCachePolicy(
        control_pb2.SetCachePolicyRequest(
            cache_policy=policy_pb2.CachePolicy(tenant_id=access.tenant_id, enabled=True, **policy)
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(response.policy_version)
    return access, model


def received(upstream: UpstreamServer, model: str) -> list[RecordedRequest]:
    """The chat requests the fake provider received for `model`."""
    return [r for r in upstream.requests if r.json is not None and r.json.get("model") == model]


def ask_openai(
    stack: Stack,
    access: TenantAccess,
    messages: list[Any] | str,
    *,
    stream: bool = False,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Answered:
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=access.api_key, max_retries=0
    )
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-test", messages=messages, extra_headers=headers, **extra
        )
        completion = raw.parse()
        choice = completion.choices[0]
        return Answered(
            choice.message.content or "", choice.finish_reason, raw.headers.get(CACHE_HEADER)
        )
    raw_stream = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=messages, stream=True, extra_headers=headers, **extra
    )
    chunks = [c for c in raw_stream.parse() if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    (stop,) = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    return Answered(text, stop, raw_stream.headers.get(CACHE_HEADER))


def ask_anthropic(stack: Stack, access: TenantAccess, question: str, *, stream: bool) -> Answered:
    client = anthropic.Anthropic(
        base_url=stack.config.gateway_url, api_key=access.api_key, max_retries=0
    )
    messages: list[Any] = [{"role": "user", "content": question}]
    if not stream:
        raw = client.messages.with_raw_response.create(
            model="gpt-test", max_tokens=256, messages=messages
        )
        message = raw.parse()
        text = "".join(block.text for block in message.content if block.type == "text")
        return Answered(text, str(message.stop_reason), raw.headers.get(CACHE_HEADER))
    with client.messages.stream(model="gpt-test", max_tokens=256, messages=messages) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
        header = events.response.headers.get(CACHE_HEADER)
    assert text == "".join(block.text for block in final.content if block.type == "text")
    return Answered(text, str(final.stop_reason), header)


def ask(stack: Stack, access: TenantAccess, sdk: str, question: str, *, stream: bool) -> Answered:
    if sdk == "openai":
        return ask_openai(stack, access, question, stream=stream)
    return ask_anthropic(stack, access, question, stream=stream)


NORMAL_STOP: Final = {"openai": "stop", "anthropic": "end_turn"}


@pytest.mark.parametrize("fill", ["plain-fill", "stream-fill"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_repeated_question_is_answered_from_the_cache_plain_and_streamed(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str, fill: str
) -> None:
    access, model = cache_tenant(admin)
    question = f"Which river runs through {uuid.uuid4().hex[:6]}?"

    first = ask(stack, access, sdk, question, stream=fill == "stream-fill")
    assert not first.hit and first.text == f"Echo: {question}"
    (fill_row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
    plain = ask(stack, access, sdk, question, stream=False)
    streamed = ask(stack, access, sdk, question, stream=True)

    for again in (plain, streamed):
        assert again.hit, again
        assert (again.text, again.stop) == (first.text, NORMAL_STOP[sdk])
    assert len(received(upstream, model)) == 1
    rows = wait_for_ai_logs(admin, access.tenant_id, 3)
    hits = [r for r in rows if r.request_id != fill_row.request_id]
    assert fill_row.cache_hit == "" and fill_row.output_tokens > 0
    assert [(r.cache_hit, r.input_tokens, r.output_tokens) for r in hits] == [("exact", 0, 0)] * 2
    assert sorted(r.streamed for r in hits) == [False, True]


def test_a_paraphrase_is_a_semantic_hit_and_near_misses_are_not(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    access, model = cache_tenant(admin)  # the default threshold (0.85), local embeddings

    first = ask_openai(stack, access, QUESTION)
    wait_for_ai_logs(admin, access.tenant_id, 1)
    paraphrased = ask_openai(stack, access, PARAPHRASE)
    assert paraphrased.hit and paraphrased.text == first.text == f"Echo: {QUESTION}"
    for near_miss in NEAR_MISSES:
        answered = ask_openai(stack, access, near_miss)
        assert not answered.hit and answered.text == f"Echo: {near_miss}", near_miss
    assert len(received(upstream, model)) == 1 + len(NEAR_MISSES)
    rows = wait_for_ai_logs(admin, access.tenant_id, 2 + len(NEAR_MISSES))
    assert sorted(r.cache_hit for r in rows) == ["", "", "", "semantic"]

    purged = admin.control.PurgeCache(
        control_pb2.PurgeCacheRequest(tenant_id=access.tenant_id), metadata=admin.metadata
    )
    assert purged.entries >= 1
    # Neither the question nor anything similar is answered from the cache any more.
    assert not ask_openai(stack, access, PARAPHRASE).hit
    assert len(received(upstream, model)) == 2 + len(NEAR_MISSES)


def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_write(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    access, model = cache_tenant(admin)
    question = f"Explain caching to {uuid.uuid4().hex[:6]}"
    ask_openai(stack, access, question)
    wait_for_ai_logs(admin, access.tenant_id, 1)

    bypassed = ask_openai(stack, access, question, headers={"Cache-Control": "no-cache"})
    assert not bypassed.hit and len(received(upstream, model)) == 2
    assert ask_openai(stack, access, question).hit

    unstored = f"Do not keep this {uuid.uuid4().hex[:6]}"
    assert not ask_openai(stack, access, unstored, headers={"Cache-Control": "no-store"}).hit
    wait_for_ai_logs(admin, access.tenant_id, 4)
    assert not ask_openai(stack, access, unstored).hit
    assert len(received(upstream, model)) == 4


def test_another_tenant_never_gets_a_tenants_cached_answer(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    # The same alias to the same upstream model, the same question: only the tenant differs.
    first, model = cache_tenant(admin)
    second, _ = cache_tenant(admin, model=model)
    question = f"What is the secret plan of {first.tenant_id}?"
    ask_openai(stack, first, question)
    wait_for_ai_logs(admin, first.tenant_id, 1)

    assert not ask_openai(stack, second, question).hit
    assert not ask_openai(stack, second, question.lower().replace("?", "")).hit
    assert len(received(upstream, model)) == 3
    assert ask_openai(stack, first, question).hit


TOOL_TURN: Final[list[Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_weather_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_weather_1", "content": "18 C and sunny"},
    {"role": "user", "content": "And should I take a coat?"},
]
TOOLS: Final[list[Any]] = [
    {
        "type": "function",
        "function": {
            "name": "weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
UNCACHEABLE: Final[dict[str, dict[str, Any]]] = {
    "tool-turn": {"messages": TOOL_TURN, "tools": TOOLS},
    "sampled": {"messages": "Write me a short poem about the sea.", "temperature": 0.9},
}


@pytest.mark.parametrize("case", list(UNCACHEABLE))
def test_tool_call_turns_and_sampled_requests_are_not_cached(
    stack: Stack, admin: Admin, upstream: UpstreamServer, case: str
) -> None:
    access, model = cache_tenant(admin)
    request = UNCACHEABLE[case]

    first = ask_openai(stack, access, **request)
    wait_for_ai_logs(admin, access.tenant_id, 1)
    second = ask_openai(stack, access, **request)

    assert not first.hit and not second.hit
    assert first.text == second.text
    assert len(received(upstream, model)) == 2
    rows = wait_for_ai_logs(admin, access.tenant_id, 2)
    assert [r.cache_hit for r in rows] == ["", ""]
    assert all(isinstance(r, logs_pb2.AiLog) and r.output_tokens > 0 for r in rows)
