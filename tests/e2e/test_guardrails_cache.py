"""The answer cache end to end, through both adapters with the official SDKs (issue 11), on the
stack's real Redis (exact matches) and the data plane's local Qdrant (similar questions).

A hit is answered by the gateway with `x-gatez-cache: hit` (read with the SDKs' raw-response
access) in the client's own format, replayed as a stream when one was asked for, and the fake
provider is not called: each test counts the requests it received for the tenant's own
upstream model.

Entries are written after the filling call's answer went out (the write is not waited for),
so a test first waits until the entry is there. It asks with the tenant's second API key, the
probe, whose own token budget admits no call: a hit answers it (a hit holds no budget), a miss
is refused before the provider and writes nothing — so probing changes neither the cache nor
what the provider saw.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import anthropic
import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.e2e.test_guardrails_pii import SPOKEN, SPOKEN_REDACTED
from tests.fakes.openai_upstream import RecordedRequest, UpstreamServer

pytestmark = pytest.mark.e2e

CACHE_HEADER: Final = "x-gatez-cache"
KIND_HEADER: Final = "x-gatez-cache-kind"
QUESTION: Final = "What is the capital of France?"
#: Cosine 0.92 with QUESTION under the local embeddings (the default threshold is 0.85).
PARAPHRASE: Final = "What's the capital city of France?"
#: Close in words, not in meaning: another country, and a negation (cosine 0.88 with QUESTION).
NEAR_MISSES: Final = ("What is the capital of Germany?", "Which city is not the capital of France?")


@dataclass(frozen=True, slots=True)
class Answered:
    """What the client got: the text, the SDK's stop reason, and the cache headers."""

    text: str
    stop: str
    cache: str | None
    kind: str | None = None

    @property
    def hit(self) -> bool:
        return self.cache == "hit"


@dataclass(frozen=True, slots=True)
class CacheTenant:
    """A tenant with a cache policy: its key, its probe key, and its own upstream model."""

    access: TenantAccess
    probe: TenantAccess
    model: str


def cache_tenant(admin: Admin, *, model: str | None = None, **policy: Any) -> CacheTenant:
    """A fresh tenant whose alias `gpt-test` reaches `model` (by default one of its own), with
    a tenant-wide cache policy (`policy`: CachePolicy fields) and a probe key (the module doc),
    applied on the data plane."""
    model = model or f"cache-{uuid.uuid4().hex[:8]}"
    access = provision(admin, models={"gpt-test": model})
    md = admin.metadata
    admin.control.SetCachePolicy(
        control_pb2.SetCachePolicyRequest(
            cache_policy=policy_pb2.CachePolicy(tenant_id=access.tenant_id, enabled=True, **policy)
        ),
        metadata=md,
    )
    probe_key = admin.control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=access.tenant_id, name="cache-probe"),
        metadata=md,
    )
    budget = admin.control.SetBudget(
        control_pb2.SetBudgetRequest(
            budget=policy_pb2.Budget(
                tenant_id=access.tenant_id, api_key_id=probe_key.api_key.id, tokens_per_day=1
            )
        ),
        metadata=md,
    )
    admin.wait_applied(budget.policy_version)
    probe = TenantAccess(access.tenant_id, probe_key.secret, probe_key.api_key.id)
    return CacheTenant(access, probe, model)


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
        choice = raw.parse().choices[0]
        return Answered(
            choice.message.content or "",
            choice.finish_reason,
            raw.headers.get(CACHE_HEADER),
            raw.headers.get(KIND_HEADER),
        )
    raw_stream = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=messages, stream=True, extra_headers=headers, **extra
    )
    chunks = [c for c in raw_stream.parse() if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    (stop,) = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason]
    return Answered(
        text, stop, raw_stream.headers.get(CACHE_HEADER), raw_stream.headers.get(KIND_HEADER)
    )


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
        return Answered(
            text,
            str(message.stop_reason),
            raw.headers.get(CACHE_HEADER),
            raw.headers.get(KIND_HEADER),
        )
    with client.messages.stream(model="gpt-test", max_tokens=256, messages=messages) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
        headers = events.response.headers
    assert text == "".join(block.text for block in final.content if block.type == "text")
    return Answered(
        text, str(final.stop_reason), headers.get(CACHE_HEADER), headers.get(KIND_HEADER)
    )


def ask(stack: Stack, access: TenantAccess, sdk: str, question: str, *, stream: bool) -> Answered:
    if sdk == "openai":
        return ask_openai(stack, access, question, stream=stream)
    return ask_anthropic(stack, access, question, stream=stream)


def probe(asking: Callable[[], Answered]) -> Answered | None:
    """A probe key's ask: the hit, or None when its budget refused it (a miss)."""
    try:
        answered = asking()
    except (openai.RateLimitError, anthropic.RateLimitError):
        return None
    assert answered.hit, f"a probe passed its budget without a hit: {answered}"
    return answered


def wait_cached(asking: Callable[[], Answered], timeout_s: float = 5.0) -> Answered:
    """The probe's hit, once the entry it asks for is written."""
    deadline = time.monotonic() + timeout_s
    while (answered := probe(asking)) is None:
        assert time.monotonic() < deadline, "the entry was not written"
        time.sleep(0.02)
    return answered


def assert_not_cached(
    stack: Stack, tenant: CacheTenant, asking: Callable[[], Answered | None]
) -> None:
    """What `asking` probes was not written: a later entry of the tenant (the sentinel, one
    more request to the provider) is, by now."""
    sentinel = f"Sentinel question {uuid.uuid4().hex[:6]}"
    ask_openai(stack, tenant.access, sentinel)
    wait_cached(lambda: ask_openai(stack, tenant.probe, sentinel))
    assert asking() is None


NORMAL_STOP: Final = {"openai": "stop", "anthropic": "end_turn"}


@pytest.mark.parametrize("fill", ["plain-fill", "stream-fill"])
@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_a_repeated_question_is_answered_from_the_cache_plain_streamed_and_in_either_schema(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str, fill: str
) -> None:
    tenant = cache_tenant(admin)
    question = f"Which river runs through {uuid.uuid4().hex[:6]}?"
    other = "anthropic" if sdk == "openai" else "openai"

    first = ask(stack, tenant.access, sdk, question, stream=fill == "stream-fill")
    assert (first.cache, first.text) == ("miss", f"Echo: {question}")
    wait_cached(lambda: ask(stack, tenant.probe, sdk, question, stream=False))
    plain = ask(stack, tenant.access, sdk, question, stream=False)
    streamed = ask(stack, tenant.access, sdk, question, stream=True)
    # One entry answers every client API.
    across = ask(stack, tenant.access, other, question, stream=fill == "plain-fill")

    for again, schema in ((plain, sdk), (streamed, sdk), (across, other)):
        assert (again.cache, again.kind) == ("hit", "exact"), again
        assert (again.text, again.stop) == (first.text, NORMAL_STOP[schema]), again
    assert len(received(upstream, tenant.model)) == 1
    if (sdk, fill) == ("openai", "plain-fill"):  # the log rows once (a wait costs a flush)
        rows = [
            r
            for r in wait_for_ai_logs(admin, tenant.access.tenant_id, 5)
            if r.key_id == tenant.access.api_key_id
        ]
        assert [(r.cache_hit, r.input_tokens, r.output_tokens) for r in rows[:3]] == [
            ("exact", 0, 0)
        ] * 3
        (filled,) = rows[3:]
        assert (filled.cache_hit, filled.streamed) == ("", False) and filled.output_tokens > 0
        assert sorted(r.streamed for r in rows[:3]) == [False, True, True]


def test_a_paraphrase_is_a_semantic_hit_and_near_misses_are_not(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    tenant = cache_tenant(admin)  # the default threshold (0.85), local embeddings

    first = ask_openai(stack, tenant.access, QUESTION)
    paraphrased = wait_cached(lambda: ask_openai(stack, tenant.probe, PARAPHRASE))
    assert (paraphrased.kind, paraphrased.text) == ("semantic", first.text)
    assert first.text == f"Echo: {QUESTION}"
    for near_miss in NEAR_MISSES:
        answered = ask_openai(stack, tenant.access, near_miss)
        assert (answered.cache, answered.text) == ("miss", f"Echo: {near_miss}"), near_miss
    assert len(received(upstream, tenant.model)) == 1 + len(NEAR_MISSES)
    hit_row, *_ = [
        r
        for r in wait_for_ai_logs(admin, tenant.access.tenant_id, 2 + len(NEAR_MISSES))
        if r.key_id == tenant.probe.api_key_id
    ]
    assert (hit_row.cache_hit, hit_row.input_tokens, hit_row.output_tokens) == ("semantic", 0, 0)

    purged = admin.control.PurgeCache(
        control_pb2.PurgeCacheRequest(tenant_id=tenant.access.tenant_id), metadata=admin.metadata
    )
    assert purged.entries >= 1
    # Neither the question nor anything similar is answered from the cache any more.
    assert probe(lambda: ask_openai(stack, tenant.probe, QUESTION)) is None
    assert probe(lambda: ask_openai(stack, tenant.probe, PARAPHRASE)) is None


def test_cache_control_no_cache_skips_the_lookup_and_no_store_the_write(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    tenant = cache_tenant(admin)
    question = f"Explain caching to {uuid.uuid4().hex[:6]}"
    ask_openai(stack, tenant.access, question)
    wait_cached(lambda: ask_openai(stack, tenant.probe, question))

    bypassed = ask_openai(stack, tenant.access, question, headers={"Cache-Control": "no-cache"})
    assert bypassed.cache == "bypass" and len(received(upstream, tenant.model)) == 2
    assert ask_openai(stack, tenant.access, question).hit

    unstored = f"Do not keep this {uuid.uuid4().hex[:6]}"
    answered = ask_openai(stack, tenant.access, unstored, headers={"Cache-Control": "no-store"})
    assert answered.cache == "miss"
    assert_not_cached(
        stack, tenant, lambda: probe(lambda: ask_openai(stack, tenant.probe, unstored))
    )


def test_another_tenant_never_gets_a_tenants_cached_answer(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    # The same alias to the same upstream model, the same questions: only the tenant differs.
    owner = cache_tenant(admin)
    exact_asker = cache_tenant(admin, model=owner.model)
    similar_asker = cache_tenant(admin, model=owner.model)
    ask_openai(stack, owner.access, QUESTION)
    wait_cached(lambda: ask_openai(stack, owner.probe, QUESTION))
    wait_cached(lambda: ask_openai(stack, owner.probe, PARAPHRASE))

    # Each other tenant's first question: nothing of its own is cached yet.
    assert ask_openai(stack, exact_asker.access, QUESTION).cache == "miss"
    assert ask_openai(stack, similar_asker.access, PARAPHRASE) == Answered(
        f"Echo: {PARAPHRASE}", "stop", "miss"
    )
    assert len(received(upstream, owner.model)) == 3


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
    tenant = cache_tenant(admin)
    request = UNCACHEABLE[case]

    first = ask_openai(stack, tenant.access, **request)

    assert first.cache == "bypass"
    assert_not_cached(
        stack, tenant, lambda: probe(lambda: ask_openai(stack, tenant.probe, **request))
    )
    second = ask_openai(stack, tenant.access, **request)
    assert second.cache == "bypass" and second.text == first.text
    # The first, the sentinel and the second.
    assert len(received(upstream, tenant.model)) == 3


def test_a_hit_replays_the_redacted_answer_never_the_providers_raw_one(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    # Answers are scanned (prompts pass as they are), so the provider's echo carries the raw
    # values back; the cache must not hand them out on a hit, plain or replayed as a stream.
    tenant = cache_tenant(admin)
    policy = admin.control.SetPiiPolicy(
        control_pb2.SetPiiPolicyRequest(
            pii_policy=policy_pb2.PiiPolicy(
                tenant_id=tenant.access.tenant_id, skip_prompts=True, scan_output=True
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(policy.policy_version)

    first = ask_openai(stack, tenant.access, SPOKEN)
    wait_cached(lambda: ask_openai(stack, tenant.probe, SPOKEN))
    hits = [
        ask_openai(stack, tenant.access, SPOKEN, stream=True),
        ask_anthropic(stack, tenant.access, SPOKEN, stream=False),
    ]

    assert first.text == SPOKEN_REDACTED
    for hit in hits:
        assert hit.hit and hit.text == SPOKEN_REDACTED, hit
    (seen,) = received(upstream, tenant.model)
    assert SPOKEN in seen.body.decode()
