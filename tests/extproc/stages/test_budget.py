"""TokenBudget on Flows against a real redis-server, run by a real Pipeline in the LLM pipeline's
order (model routing, the response decoded and metered, the budget, the response encoded):
holds and settles, refusals in the client's own format (read back by the official SDKs), key
and tenant budgets, USD at the policy's prices, fallback re-runs, hung-up streams, provider
errors, Redis away, soft thresholds, and the concurrency proof."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx2
import openai
import orjson
import pytest
import redis.asyncio as aioredis

from extproc.budgets import Admission, BudgetStore, Reservation, budget_key
from extproc.circuit import CircuitBreaker
from extproc.redis_pipe import PipelinedRedis, ScriptClient
from extproc.stages.budget import (
    IMAGE_TOKENS,
    TOOL_PROMPT_TOKENS,
    TokenBudget,
    budget_values,
    prompt_tokens_bound,
)
from extproc.stages.fallback import fail_over
from extproc.stages.model_route import ModelRouting
from extproc.stages.response import DecodeResponse, EncodeResponse
from extproc.stages.usage import UsageMeter
from extproc.token_count import TokenCounter
from gatez.budgets import Period
from gatez.pipeline import CONTINUE, Decision, Flow, Pipeline, Principal, Respond
from gatez.policy import CompiledPolicy, compile_policy
from gatez.processes import free_port
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow
from tests.support.redis import RedisServer

START = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
# From START to the next UTC midnight, when the day's budgets reset.
TO_MIDNIGHT = 12 * 3600
OPENAI = policy_pb2.PROVIDER_KIND_OPENAI
ANTHROPIC = policy_pb2.PROVIDER_KIND_ANTHROPIC


class FakeClock:
    """Epoch seconds, moved by the test."""

    def __init__(self, at: datetime = START) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def build_policy(*budgets: policy_pb2.Budget) -> CompiledPolicy:
    """acme with API keys k1 and k2; OpenAI's gpt-4o-mini ("fast"; "chain" falls back to
    Anthropic), Anthropic's claude-haiku-4-5 ("claude"), a model priced by the policy ("house")
    and one with no price ("local")."""
    route = policy_pb2.ModelRoute
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme")],
            api_keys=[
                policy_pb2.ApiKey(
                    id=key, tenant_id="acme", secret_sha256=hashlib.sha256(key.encode()).hexdigest()
                )
                for key in ("k1", "k2")
            ],
            providers=[
                policy_pb2.Provider(
                    name="openai", kind=OPENAI, base_url="https://api.openai.com/v1"
                ),
                policy_pb2.Provider(
                    name="anthropic", kind=ANTHROPIC, base_url="https://api.anthropic.com"
                ),
                policy_pb2.Provider(
                    name="gemini",
                    kind=policy_pb2.PROVIDER_KIND_GEMINI,
                    base_url="https://generativelanguage.googleapis.com",
                ),
            ],
            model_routes=[
                route(alias="fast", provider="openai", upstream_model="gpt-4o-mini"),
                route(alias="claude", provider="anthropic", upstream_model="claude-haiku-4-5"),
                route(alias="gem", provider="gemini", upstream_model="gemini-2.5-flash"),
                route(alias="house", provider="openai", upstream_model="house-model"),
                route(alias="local", provider="openai", upstream_model="local-model"),
                route(
                    alias="chain",
                    provider="openai",
                    upstream_model="gpt-4o-mini",
                    fallbacks=[
                        policy_pb2.FallbackTarget(
                            provider="anthropic", upstream_model="claude-haiku-4-5"
                        )
                    ],
                ),
            ],
            model_prices=[
                policy_pb2.ModelPrice(
                    model="house-model", input_usd_per_mtok=2.0, output_usd_per_mtok=8.0
                )
            ],
            budgets=list(budgets),
        )
    )


@dataclass
class Gateway:
    """The LLM pipeline around the budget stage, and a store reading what it holds."""

    budget: TokenBudget
    pipeline: Pipeline
    store: BudgetStore

    async def day(self, key_id: str | None = None) -> tuple[int, int, int, int]:
        """Today's (tokens spent, tokens held, USD spent, USD held) of acme or one key."""
        spend = next(
            s for s in await self.store.read_spend("acme", key_id) if s.period is Period.DAY
        )
        return (
            spend.tokens_spent,
            spend.tokens_held,
            spend.usd_micros_spent,
            spend.usd_micros_held,
        )


def build_gateway(
    redis: ScriptClient, tokens: TokenCounter, redis_for_reads: ScriptClient
) -> Gateway:
    clock = FakeClock()
    budget = TokenBudget(redis, clock=clock)
    pipeline = Pipeline(
        [
            ModelRouting(CircuitBreaker(redis_for_reads)),
            DecodeResponse(),
            UsageMeter(tokens),
            budget,
            EncodeResponse(),
        ]
    )
    return Gateway(budget, pipeline, BudgetStore(redis_for_reads, clock=clock))


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    """The data plane's client on the test Redis (flushed by `redis_client`)."""
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


@pytest.fixture
async def dead_redis() -> AsyncIterator[PipelinedRedis]:
    """A client for a Redis that is not there (nothing listens on its port)."""
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    yield client
    await client.close()


@pytest.fixture
def gateway(pipelined: PipelinedRedis, tokens: TokenCounter) -> Gateway:
    return build_gateway(pipelined, tokens, pipelined)


def tenant_budget(**limits: Any) -> policy_pb2.Budget:
    return policy_pb2.Budget(tenant_id="acme", **limits)


def chat(model: str = "fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hello."}], **extra}


def chat_flow(
    policy: CompiledPolicy,
    body: dict[str, Any],
    *,
    key_id: str = "k1",
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> Flow:
    """A flow as authentication leaves it, the body arrived."""
    flow = make_flow(policy, path=path, headers=headers, body=orjson.dumps(body))
    flow.principal = Principal(tenant_id="acme", key_id=key_id, subject=key_id)
    return flow


async def send(gateway: Gateway, flow: Flow) -> Decision:
    """The request phases; CONTINUE when the request would go on to the provider."""
    assert await gateway.pipeline.request_headers(flow) is CONTINUE
    return await gateway.pipeline.request_body(flow)


async def answer(
    gateway: Gateway,
    flow: Flow,
    chunks: list[bytes],
    *,
    status: int = 200,
    content_type: str = "application/json",
    ended: bool = True,
) -> None:
    """The provider's answer, chunk by chunk (the last one ending it unless not `ended`)."""
    flow.upstream_reached = True
    flow.response_status = status
    flow.response_headers = {"content-type": content_type}
    await gateway.pipeline.response_headers(flow)
    flow.take_pending()
    for index, chunk in enumerate(chunks):
        flow.response_chunk = chunk
        flow.end_of_stream = ended and index == len(chunks) - 1
        await gateway.pipeline.response_body(flow)
        flow.take_pending()


def completion(prompt_tokens: int, completion_tokens: int) -> bytes:
    """A Chat Completions answer as OpenAI sends it."""
    return orjson.dumps(
        {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def stream_chunks(words: list[str], usage: tuple[int, int] | None) -> list[bytes]:
    """An OpenAI stream with usage asked for: a chunk per word, the finish, the usage chunk."""
    head = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
    }

    def event(choices: list[Any], usage: dict[str, int] | None = None) -> bytes:
        return b"data: " + orjson.dumps({**head, "choices": choices, "usage": usage}) + b"\n\n"

    chunks = [
        event([{"index": 0, "delta": {"content": word}, "finish_reason": None}]) for word in words
    ]
    chunks.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    if usage is not None:
        prompt, output = usage
        counts = {"prompt_tokens": prompt, "completion_tokens": output}
        chunks.append(event([], {**counts, "total_tokens": prompt + output}))
    return [*chunks, b"data: [DONE]\n\n"]


def anthropic_message(input_tokens: int, output_tokens: int) -> bytes:
    """A Messages answer as Anthropic sends it."""
    return orjson.dumps(
        {
            "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5",
            "content": [{"type": "text", "text": "Hi! My name is Claude."}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }
    )


# --- hold, settle, release ---------------------------------------------------------------


async def test_a_call_holds_its_worst_case_and_is_charged_its_usage(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=10_000, usd_per_day=1.0))
    flow = chat_flow(policy, chat(max_tokens=100))
    assert await send(gateway, flow) is CONTINUE
    assert flow.llm is not None and isinstance(flow.llm.reservation, Reservation)
    # The provider's body, a token per byte, and the output cap; USD at gpt-4o-mini's price
    # ($0.15 and $0.60 per million tokens).
    prompt = len(flow.request_body)
    assert await gateway.day() == (0, prompt + 100, 0, math.ceil(prompt * 0.15 + 100 * 0.60))

    await answer(gateway, flow, [completion(19, 10)])
    await gateway.pipeline.done(flow)
    # 19 * 0.15 + 10 * 0.60 = 8.85 micro-dollars.
    assert await gateway.day() == (29, 0, 9, 0)
    assert await gateway.day("k1") == (0, 0, 0, 0)  # the key has no budget of its own


async def test_a_tenant_without_budgets_costs_no_redis_call(
    dead_redis: PipelinedRedis, tokens: TokenCounter
) -> None:
    gateway = build_gateway(dead_redis, tokens, dead_redis)
    flow = chat_flow(build_policy(), chat())
    assert await send(gateway, flow) is CONTINUE
    await answer(gateway, flow, [completion(19, 10)])
    await gateway.pipeline.done(flow)
    assert flow.llm is not None and flow.llm.reservation is None
    assert dead_redis.errors == 0


@pytest.mark.parametrize(
    ("body", "output"),
    [
        (chat(), 4096),  # the policy's default_max_tokens (unset: 4096)
        (chat(max_tokens=300), 300),
        (chat(max_completion_tokens=200, max_tokens=300), 200),
        (chat(max_tokens=300, n=3), 900),
    ],
)
async def test_the_output_cap_is_the_requests_or_the_default(
    gateway: Gateway, body: dict[str, Any], output: int
) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    flow = chat_flow(policy, body)
    assert await send(gateway, flow) is CONTINUE
    assert (await gateway.day())[1] == len(flow.request_body) + output


async def test_the_policys_default_cap_and_the_passthrough_apis(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000, default_max_tokens=1_000))
    held = 0
    for path, body, output in [
        ("/v1/chat/completions", chat(), 1_000),
        ("/v1/responses", {"model": "fast", "input": "Say hello.", "max_output_tokens": 50}, 50),
        ("/v1/responses", {"model": "fast", "input": "Say hello."}, 1_000),
        ("/v1/embeddings", {"model": "fast", "input": "Say hello."}, 0),
    ]:
        flow = chat_flow(policy, body, path=path)
        assert await send(gateway, flow) is CONTINUE
        held += len(flow.request_body) + output
        assert (await gateway.day())[1] == held, path


async def test_a_gemini_call_holds_its_candidates_output(gateway: Gateway) -> None:
    """Read from the request decoded in the shared model: maxOutputTokens, times candidateCount."""
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    body = {
        "contents": [{"role": "user", "parts": [{"text": "Say hello."}]}],
        "generationConfig": {"maxOutputTokens": 300, "candidateCount": 2},
    }
    flow = chat_flow(policy, body, path="/v1beta/models/gem:generateContent")
    assert await send(gateway, flow) is CONTINUE
    assert flow.llm is not None and flow.llm.request is not None
    assert (await gateway.day())[1] == len(flow.request_body) + 600


def test_the_prompt_bound_counts_bytes_inline_images_and_tools() -> None:
    text = orjson.dumps(chat())
    assert prompt_tokens_bound(text) == len(text)
    image = "data:image/png;base64," + "iVBORw0KGgo" * 100_000
    with_image = orjson.dumps(
        chat(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this image?"},
                        {"type": "image_url", "image_url": {"url": image}},
                    ],
                }
            ]
        )
    )
    encoded = len(image) + 2  # the string with its quotes
    assert prompt_tokens_bound(with_image) == len(with_image) - encoded + IMAGE_TOKENS
    # Said in the text, the marker is escaped: counted as bytes, like any text.
    mention = orjson.dumps(chat(messages=[{"role": "user", "content": '"data:image/png"'}]))
    assert prompt_tokens_bound(mention) == len(mention)
    tools = orjson.dumps(chat(tools=[{"type": "function", "function": {"name": "f"}}]))
    assert prompt_tokens_bound(tools) == len(tools) + TOOL_PROMPT_TOKENS


def test_the_prompt_bound_is_never_below_openais_token_count(tokens: TokenCounter) -> None:
    """One token per byte against OpenAI's tokenizer, on the texts that come closest: digits
    and emoji (measured 1.0-1.1 bytes per token), rare CJK, base64 and JSON."""
    rng = random.Random(5)
    texts = [
        " ".join(str(rng.randint(0, 9)) for _ in range(2_000)),
        "🎉👍🏽🚀🔥💯🧑‍💻🇩🇪" * 100,
        "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(1_000)),
        "".join(chr(rng.randint(0x20000, 0x2A6DF)) for _ in range(1_000)),
        "".join(
            rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
            for _ in range(4_000)
        ),
        orjson.dumps([{"id": i, "price": i * 1.25} for i in range(300)]).decode(),
        "x",
    ]
    for text in texts:
        body = chat(messages=[{"role": "user", "content": text}] * 3)
        for model in ("gpt-4o", "gpt-4"):  # o200k_base, cl100k_base
            assert prompt_tokens_bound(orjson.dumps(body)) >= tokens.count_messages(model, body)


# --- refusals in the client's format --------------------------------------------------------


async def test_an_exhausted_budget_answers_429_in_openais_format(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=500))
    flow = chat_flow(policy, chat(max_tokens=1_000))
    refusal = await send(gateway, flow)
    assert isinstance(refusal, Respond) and refusal.status == 429
    assert ("retry-after", str(TO_MIDNIGHT)) in refusal.headers
    assert ("x-should-retry", "false") in refusal.headers
    needed = len(flow.request_body) + 1_000
    assert orjson.loads(refusal.body) == {
        "error": {
            "message": f"the tenant's daily token budget is exhausted (this request may use up "
            f"to {needed} tokens); it resets at 2026-12-03T00:00:00Z",
            "type": "rate_limit_error",
            "param": None,
            "code": "budget_exhausted",
        }
    }
    assert flow.error == "budget_exhausted"
    assert gateway.budget.exhausted == {("acme", "tenant:day", "tokens"): 1}
    assert await gateway.day() == (0, 0, 0, 0)


async def test_an_exhausted_budget_answers_429_in_anthropics_format(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_month=500))
    body = {"model": "claude", "max_tokens": 1_000, "messages": [{"role": "user", "content": "Hi"}]}
    flow = chat_flow(policy, body, path="/v1/messages", headers={"anthropic-version": "2023-06-01"})
    refusal = await send(gateway, flow)
    assert isinstance(refusal, Respond) and refusal.status == 429
    to_month_end = int(datetime(2027, 1, 1, tzinfo=UTC).timestamp() - START.timestamp())
    assert ("retry-after", str(to_month_end)) in refusal.headers
    assert ("x-should-retry", "false") in refusal.headers
    error = orjson.loads(refusal.body)
    assert error["type"] == "error" and error["error"]["type"] == "rate_limit_error"
    assert error["error"]["message"].startswith("the tenant's monthly token budget is exhausted")
    assert error["error"]["message"].endswith("it resets at 2027-01-01T00:00:00Z")


def sdk_transport(gateway: Gateway, policy: CompiledPolicy) -> tuple[httpx2.AsyncClient, list[str]]:
    """An HTTP client whose every request runs the request phases; the gateway's own answer
    comes back (a call let through would reach no provider here: 502)."""
    seen: list[str] = []

    async def handle(request: httpx2.Request) -> httpx2.Response:
        seen.append(request.url.path)
        flow = make_flow(
            policy,
            path=request.url.raw_path.decode(),
            headers=dict(request.headers),
            body=request.content,
        )
        flow.principal = Principal(tenant_id="acme", key_id="k1", subject="k1")
        decision = await send(gateway, flow)
        if not isinstance(decision, Respond):
            return httpx2.Response(502)
        return httpx2.Response(
            decision.status, headers=list(decision.headers), content=decision.body
        )

    return httpx2.AsyncClient(transport=httpx2.MockTransport(handle)), seen


async def test_the_official_sdks_raise_their_rate_limit_error_and_do_not_retry(
    gateway: Gateway,
) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=500))
    http, seen = sdk_transport(gateway, policy)
    # Their default retries: the OpenAI SDK would not wait 12 hours, the Anthropic SDK would;
    # x-should-retry tells both not to.
    async with openai.AsyncOpenAI(
        api_key="k", base_url="http://gatez.test/v1", http_client=http
    ) as sdk:
        with pytest.raises(openai.RateLimitError) as refused:
            await sdk.chat.completions.create(
                model="fast", messages=[{"role": "user", "content": "Hi"}], max_tokens=1_000
            )
    assert refused.value.code == "budget_exhausted"
    assert "daily token budget is exhausted" in refused.value.message
    assert seen == ["/v1/chat/completions"]

    http, seen = sdk_transport(gateway, policy)
    async with anthropic.AsyncAnthropic(
        api_key="k", base_url="http://gatez.test", http_client=http
    ) as claude:
        with pytest.raises(anthropic.RateLimitError) as limited:
            await claude.messages.create(
                model="claude", max_tokens=1_000, messages=[{"role": "user", "content": "Hi"}]
            )
    assert "daily token budget is exhausted" in limited.value.message
    assert seen == ["/v1/messages"]


# --- whose budget -----------------------------------------------------------------------------


async def test_a_key_budget_binds_its_key_and_the_tenant_budget_every_caller(
    gateway: Gateway,
) -> None:
    policy = build_policy(
        tenant_budget(tokens_per_day=100_000),
        policy_pb2.Budget(tenant_id="acme", api_key_id="k1", tokens_per_day=300),
    )

    async def call(key_id: str) -> Decision:
        return await send(gateway, chat_flow(policy, chat(max_tokens=100), key_id=key_id))

    assert await call("k1") is CONTINUE
    held = (await gateway.day("k1"))[1]
    assert 100 < held <= 300
    refusal = await call("k1")  # its second worst case does not fit its 300
    assert isinstance(refusal, Respond) and refusal.status == 429
    assert b"this API key's daily token budget is exhausted" in refusal.body
    # Another key, and a JWT caller (whose key id is no API key's), count only for the tenant.
    assert await call("k2") is CONTINUE
    assert await call("jwt:k1") is CONTINUE
    assert (await gateway.day("k1"))[1] == held
    assert (await gateway.day())[1] == 3 * held
    assert gateway.budget.exhausted == {("acme", "key:day", "tokens"): 1}


async def test_a_usd_budget_holds_and_charges_at_the_policys_price(gateway: Gateway) -> None:
    # $0.0015 a day of "house-model", priced by the policy at $2 in, $8 out per million: room
    # for one worst case of about $0.001.
    policy = build_policy(tenant_budget(usd_per_day=0.0015))
    first = chat_flow(policy, chat("house", max_tokens=100))
    assert await send(gateway, first) is CONTINUE
    worst = len(first.request_body) * 2 + 100 * 8
    assert await gateway.day() == (0, len(first.request_body) + 100, 0, worst)
    refusal = await send(gateway, chat_flow(policy, chat("house", max_tokens=100)))
    assert isinstance(refusal, Respond) and refusal.status == 429
    assert b"the tenant's daily USD budget is exhausted (this request may use up to USD" in (
        refusal.body
    )

    await answer(gateway, first, [completion(20, 10)])
    await gateway.pipeline.done(first)
    assert (await gateway.day())[2:] == (20 * 2 + 10 * 8, 0)
    # What the first call did not use is room again.
    assert await send(gateway, chat_flow(policy, chat("house", max_tokens=100))) is CONTINUE
    before = await gateway.day()
    # A model without a price costs nothing: it holds tokens, no USD.
    assert await send(gateway, chat_flow(policy, chat("local", max_tokens=100))) is CONTINUE
    after = await gateway.day()
    assert after[1] > before[1] and after[3] == before[3]


async def test_prompt_tokens_are_held_at_the_dearest_input_rate(gateway: Gateway) -> None:
    """claude-haiku-4-5: $1 in, $1.25 to write the prompt cache, $5 out (per million)."""
    policy = build_policy(tenant_budget(usd_per_day=1.0))
    body = {"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}
    flow = chat_flow(policy, body, path="/v1/messages", headers={"anthropic-version": "2023-06-01"})
    assert await send(gateway, flow) is CONTINUE
    assert (await gateway.day())[3] == math.ceil(len(flow.request_body) * 1.25 + 100 * 5)


# --- how calls end ---------------------------------------------------------------------------


async def test_a_fallback_to_the_next_target_keeps_the_one_hold(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    flow = chat_flow(policy, chat("chain", max_tokens=100))
    assert await send(gateway, flow) is CONTINUE
    assert flow.llm is not None
    first = flow.llm.reservation
    held = await gateway.day()

    # OpenAI answered 503: the body phase runs again and routes to Anthropic.
    await answer(gateway, flow, [], status=503)
    assert fail_over(flow, "503", None)
    assert await gateway.pipeline.request_body(flow) is CONTINUE
    assert flow.llm.target.provider.name == "anthropic"
    assert flow.llm.reservation is first
    assert await gateway.day() == held

    await answer(gateway, flow, [anthropic_message(20, 10)])
    await gateway.pipeline.done(flow)
    # Charged once, at the price of the model that answered (20 * $1 + 10 * $5 per million).
    assert await gateway.day() == (30, 0, 70, 0)


async def test_a_body_phase_run_again_for_the_same_request_replays(gateway: Gateway) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    flow = chat_flow(policy, chat(max_tokens=100))
    assert await send(gateway, flow) is CONTINUE
    held = await gateway.day()
    # The same request routed afresh (its call record rebuilt, no hold carried over).
    again = chat_flow(policy, chat(max_tokens=100))
    again.request_id = flow.request_id
    assert await send(gateway, again) is CONTINUE
    assert again.llm is not None and isinstance(again.llm.reservation, Reservation)
    assert again.llm.reservation.replayed
    assert await gateway.day() == held


async def test_a_client_gone_mid_stream_is_charged_the_meters_estimate(
    gateway: Gateway, tokens: TokenCounter
) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    flow = chat_flow(policy, chat(max_tokens=500, stream=True))
    assert await send(gateway, flow) is CONTINUE
    words = ["Hello", " there", ", how", " are", " you", " today", "?"] * 10
    # Half the stream arrived, then the client hung up: no usage chunk, no end of stream.
    await answer(
        gateway,
        flow,
        stream_chunks(words, usage=(0, 0))[:35],
        content_type="text/event-stream",
        ended=False,
    )
    await gateway.pipeline.done(flow)
    assert flow.llm is not None and flow.llm.usage is not None and flow.llm.usage.estimated
    used = flow.llm.usage.input_tokens + flow.llm.usage.output_tokens
    assert flow.llm.usage.output_tokens == tokens.count("gpt-4o-mini", ["".join(words[:35])])
    assert (await gateway.day())[:2] == (used, 0)


@pytest.mark.parametrize("status", [429, 500, 0])
async def test_a_call_without_usage_gives_its_hold_back(gateway: Gateway, status: int) -> None:
    """The provider answered an error, or was never reached (0): nothing is charged."""
    policy = build_policy(tenant_budget(tokens_per_day=100_000, usd_per_day=1.0))
    flow = chat_flow(policy, chat(max_tokens=100))
    assert await send(gateway, flow) is CONTINUE
    if status:
        await answer(gateway, flow, [], status=status)
    await gateway.pipeline.done(flow)
    assert await gateway.day() == (0, 0, 0, 0)


async def test_a_call_cancelled_while_reserving_gives_back_what_the_reserve_took(
    gateway: Gateway,
) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=100_000))
    flow = chat_flow(policy, chat(max_tokens=100))
    assert await gateway.pipeline.request_headers(flow) is CONTINUE
    # The client goes away while the reply is on its way: the adapter cancels the phase.
    phase = asyncio.ensure_future(gateway.pipeline.request_body(flow))
    await asyncio.sleep(0)
    phase.cancel()
    with pytest.raises(asyncio.CancelledError):
        await phase
    await gateway.pipeline.done(flow)
    assert await gateway.day() == (0, 0, 0, 0)


# --- Redis away ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant_fails_open", "key_fails_open", "passes"),
    [(False, None, False), (True, None, True), (True, False, False), (True, True, True)],
)
async def test_redis_away_fails_closed_unless_every_budget_says_open(
    dead_redis: PipelinedRedis,
    tokens: TokenCounter,
    tenant_fails_open: bool,
    key_fails_open: bool | None,
    passes: bool,
) -> None:
    budgets = [tenant_budget(tokens_per_day=1_000, fail_open=tenant_fails_open)]
    if key_fails_open is not None:
        budgets.append(
            policy_pb2.Budget(
                tenant_id="acme", api_key_id="k1", tokens_per_day=1_000, fail_open=key_fails_open
            )
        )
    gateway = build_gateway(dead_redis, tokens, dead_redis)
    flow = chat_flow(build_policy(*budgets), chat(max_tokens=100))
    decision = await send(gateway, flow)
    if passes:
        assert decision is CONTINUE
        assert flow.llm is not None and isinstance(flow.llm.reservation, Reservation)
        assert flow.llm.reservation.admission is Admission.UNCHECKED
        await answer(gateway, flow, [completion(19, 10)])
    else:
        assert isinstance(decision, Respond) and decision.status == 503
        assert orjson.loads(decision.body)["error"]["code"] == "budgets_unavailable"
    await gateway.pipeline.done(flow)  # a settle that cannot reach Redis does not raise


# --- soft thresholds and metrics ---------------------------------------------------------------


async def test_a_soft_threshold_is_logged_and_counted_once(
    gateway: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    policy = build_policy(tenant_budget(tokens_per_day=1_000, soft_percent=50))
    secret = "my secret prompt text"
    caplog.set_level(logging.INFO, logger="gatez.budget")
    for _ in range(3):  # 300, 600 (past 50 %), 900
        flow = chat_flow(
            policy, chat(max_tokens=10, messages=[{"role": "user", "content": secret}])
        )
        assert await send(gateway, flow) is CONTINUE
        await answer(gateway, flow, [completion(200, 100)])
        await gateway.pipeline.done(flow)
    assert gateway.budget.soft_crossed == {("acme", "tenant:day", "tokens"): 1}
    records = [r for r in caplog.records if r.name == "gatez.budget"]
    assert len(records) == 1
    fields = {name: getattr(records[0], name, None) for name in ("tenant", "budget", "unit")}
    assert fields == {"tenant": "acme", "budget": "tenant:day", "unit": "tokens"}
    assert secret not in caplog.text

    refusal = await send(gateway, chat_flow(policy, chat(max_tokens=1_000)))
    assert isinstance(refusal, Respond)
    samples = {
        (sample.name, tuple(sample.labels.values())): sample.value
        for metric in budget_values(gateway.budget).collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    }
    assert samples == {
        ("gatez_budget_soft_threshold_crossed_total", ("acme", "tenant:day", "tokens")): 1,
        ("gatez_budget_exhausted_total", ("acme", "tenant:day", "tokens")): 1,
    }


# --- the concurrency proof ------------------------------------------------------------------


def worst_case_of(policy: CompiledPolicy, gateway: Gateway, max_tokens: int) -> int:
    """The worst case a streamed call asking for `max_tokens` holds (its routed body's bytes
    and its cap)."""
    flow = chat_flow(policy, chat(max_tokens=max_tokens, stream=True))
    routing = gateway.pipeline.stages[0]
    assert routing.on_request_headers(flow) is CONTINUE
    assert routing.on_request_body(flow) is CONTINUE
    return len(flow.request_body) + max_tokens


async def test_concurrent_streams_never_take_a_budget_past_its_limit(gateway: Gateway) -> None:
    """100 streamed calls at once, each with a worst case of 200 tokens, against 2,000 tokens a
    day: exactly 10 go on, holding all 2,000. Each is charged the 120 tokens it used; a second
    wave of 100 then gets exactly the 800 left: 4 calls."""
    policy = build_policy(tenant_budget(tokens_per_day=2_000))
    max_tokens = 200 - (worst_case_of(policy, gateway, 10) - 10)
    assert worst_case_of(policy, gateway, max_tokens) == 200

    async def wave() -> tuple[list[Flow], list[Respond]]:
        flows = [chat_flow(policy, chat(max_tokens=max_tokens, stream=True)) for _ in range(100)]
        decisions = await asyncio.gather(*(send(gateway, f) for f in flows))
        refused = [d for d in decisions if isinstance(d, Respond)]
        assert all(r.status == 429 and r.reason == "budget_exhausted" for r in refused)
        return [f for f, d in zip(flows, decisions, strict=True) if d is CONTINUE], refused

    async def finish(flow: Flow) -> None:
        await answer(
            gateway,
            flow,
            stream_chunks(["Hello", " world"], usage=(20, 100)),
            content_type="text/event-stream",
        )
        await gateway.pipeline.done(flow)

    admitted, refused = await wave()
    assert (len(admitted), len(refused)) == (10, 90)
    assert (await gateway.day())[:2] == (0, 2_000)
    await asyncio.gather(*(finish(f) for f in admitted))
    assert (await gateway.day())[:2] == (1_200, 0)

    admitted, _ = await wave()
    assert len(admitted) == 4
    await asyncio.gather(*(finish(f) for f in admitted))
    assert (await gateway.day())[:2] == (1_680, 0)
    assert gateway.budget.exhausted == {("acme", "tenant:day", "tokens"): 90 + 96}


async def test_calls_starting_while_others_stream_never_pass_the_limit(
    gateway: Gateway, redis_client: aioredis.Redis
) -> None:
    """300 streamed calls arriving over 0.2 s, each holding 200 tokens and using 20: sampled as
    they run, spent + held stays within 2,000; the settles make room for many more than 10."""
    policy = build_policy(tenant_budget(tokens_per_day=2_000))
    max_tokens = 200 - (worst_case_of(policy, gateway, 10) - 10)
    key = budget_key("acme", None, Period.DAY, START)
    rng = random.Random(3)
    started = 0

    async def call() -> None:
        nonlocal started
        await asyncio.sleep(rng.random() * 0.2)
        flow = chat_flow(policy, chat(max_tokens=max_tokens, stream=True))
        if await send(gateway, flow) is not CONTINUE:
            return
        started += 1
        await asyncio.sleep(rng.random() * 0.02)  # the stream runs
        chunks = stream_chunks(["Hello"], usage=(15, 5))
        await answer(gateway, flow, chunks, content_type="text/event-stream")
        await gateway.pipeline.done(flow)

    samples: list[int] = []

    async def sample() -> None:
        for _ in range(50):
            spent, held = await redis_client.hmget(key, ["tokens_spent", "tokens_held"])
            samples.append(int(spent or 0) + int(held or 0))
            await asyncio.sleep(0.005)

    await asyncio.gather(sample(), *(call() for _ in range(300)))
    assert max(samples) <= 2_000
    assert (await gateway.day())[:2] == (20 * started, 0)
    assert 20 * started <= 2_000
    assert started > 10
