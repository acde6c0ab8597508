"""AnswerCache on Flows, after real model routing, with a real redis-server and a real local
Qdrant: misses filled, hits replayed in the client's schema (plain and streamed), the cases
that must never be answered from the cache, and routes whose questions a provider embeds (the
fake OpenAI upstream).

The provider is an OpenAI one; clients speak OpenAI Chat Completions (the same schema, passed
through) or Anthropic Messages (translated). Bodies and stream events the gateway writes are
checked against the official SDKs' types.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import anthropic.types
import numpy as np
import openai.types.chat
import orjson
import pytest
import redis.asyncio as aioredis
import uvloop
from pydantic import TypeAdapter

from extproc.provider_embeddings import ProviderEmbeddings
from extproc.redis_pipe import PipelinedRedis
from extproc.stages.cache import AnswerCache, _reply_within
from extproc.stages.llm_request import chat_request
from extproc.stages.model_route import ModelRouting
from extproc.stages.response import DecodeResponse, EncodeResponse
from gatez.answer_cache import answer_key, fingerprint
from gatez.embeddings import WordLlamaEmbedder
from gatez.pipeline import CONTINUE, Flow, Principal, Respond, TokenUsage, Verdict
from gatez.policy import CompiledPolicy, compile_policy
from gatez.processes import free_port
from gatez.semantic_cache import SemanticIndex
from gatez.sse import SseSplitter, event_data
from gatez.v1 import policy_pb2
from tests.fakes.openai_upstream import (
    DEFAULT_EMBEDDING_DIMENSIONS,
    EMBEDDINGS_PATH,
    RecordedRequest,
    UpstreamServer,
    embedding_vector,
)
from tests.support.flows import make_flow, run_stage
from tests.support.redis import RedisServer

QUESTION = "How do I reset my password on the Zendesk portal?"
PARAPHRASE = "How can I reset the password for the Zendesk portal?"
ANSWER_TEXT = "Open Settings, choose Security, then click Reset password and follow the e-mail."
SYSTEM = "You are the help desk of Acme."
USAGE = {"prompt_tokens": 31, "completion_tokens": 17, "total_tokens": 48}


def build_policy(**cache: Any) -> CompiledPolicy:
    """Tenants acme and globex, alias `fast` on OpenAI, each tenant's cache set by `cache`."""
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="https://api.openai.com/v1",
                )
            ],
            model_routes=[
                policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
            ],
            cache_policies=[
                policy_pb2.CachePolicy(tenant_id=tenant, enabled=True, **cache)
                for tenant in ("acme", "globex")
            ],
        )
    )


POLICY = build_policy()


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


@pytest.fixture
async def stage(pipelined: PipelinedRedis) -> AsyncIterator[AnswerCache]:
    """The stage with the exact tier only."""
    cache = AnswerCache(pipelined, None)
    yield cache
    await cache.close()


@pytest.fixture(scope="session")
def embedder() -> WordLlamaEmbedder:
    return WordLlamaEmbedder.load()


@pytest.fixture
async def semantic_stage(
    pipelined: PipelinedRedis, tmp_path: Path, embedder: WordLlamaEmbedder
) -> AsyncIterator[AnswerCache]:
    """The stage with both tiers (a local Qdrant in tmp_path)."""
    index = SemanticIndex.local(tmp_path / "qdrant", load_embedder=lambda: embedder)
    index.start()
    assert await index.wait_ready()
    cache = AnswerCache(pipelined, index)
    yield cache
    await cache.close()


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does, from the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


# --- one exchange, as the LLM pipeline runs it ---------------------------------------------


def openai_body(question: str, *, stream: bool, **fields: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return {"model": "fast", "messages": messages, "stream": stream, **fields}


def anthropic_body(question: str, *, stream: bool, **fields: Any) -> dict[str, Any]:
    return {
        "model": "fast",
        "system": SYSTEM,
        "max_tokens": 1024,
        "messages": [{"role": "user", "content": [{"type": "text", "text": question}]}],
        "stream": stream,
        **fields,
    }


async def ask(
    stage: AnswerCache,
    question: str = QUESTION,
    *,
    tenant: str = "acme",
    client: str = "openai",
    stream: bool = False,
    headers: dict[str, str] | None = None,
    policy: CompiledPolicy = POLICY,
    body: dict[str, Any] | None = None,
    **fields: Any,
) -> tuple[Flow, Verdict]:
    """A request through model routing, then the cache's lookup."""
    if client == "openai":
        path = "/v1/chat/completions"
        body = body or openai_body(question, stream=stream, **fields)
    else:
        path = "/v1/messages"
        body = body or anthropic_body(question, stream=stream, **fields)
        headers = {"anthropic-version": "2023-06-01", **(headers or {})}
    flow = make_flow(policy, path=path, headers=headers, body=orjson.dumps(body))
    flow.principal = Principal(tenant_id=tenant, key_id=f"key-{tenant}", subject="test")
    routing = ModelRouting()
    assert routing.on_request_headers(flow) is CONTINUE
    assert routing.on_request_body(flow) is CONTINUE
    flow.take_pending()
    return flow, await run_stage(stage.on_request_body, flow)


def completion(text: str = ANSWER_TEXT, finish_reason: str = "stop") -> bytes:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if finish_reason == "tool_calls":
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "reset_password", "arguments": "{}"},
            }
        ]
    return orjson.dumps(
        {
            "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
            ],
            "usage": USAGE,
        }
    )


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_stream(text: str = ANSWER_TEXT, *, error: bool = False) -> list[bytes]:
    """OpenAI's chunks for one answer, with the usage chunk the gateway asked for."""
    head = {
        "id": "chatcmpl-stream-1",
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
    }

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice], "usage": None})

    words = text.split(" ")
    pieces = [" ".join(words[:5]) + " ", " ".join(words[5:])]
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    if error:
        return [*chunks, sse({"error": {"message": "overloaded", "type": "server_error"}})]
    chunks.append(chunk({}, "stop"))
    chunks.append(sse({**head, "choices": [], "usage": USAGE}))
    chunks.append(b"data: [DONE]\n\n")
    return chunks


async def respond(
    stage: AnswerCache,
    flow: Flow,
    body: bytes | list[bytes],
    *,
    status: int = 200,
    error: str = "",
) -> tuple[dict[str, str], bytes]:
    """The provider's answer through the response stages, then the end of the exchange.
    Returns the response headers the stages set and the body the client got."""
    decode, encode = DecodeResponse(), EncodeResponse()
    stream = isinstance(body, list)
    flow.upstream_reached = True
    flow.response_status = status
    content_type = "text/event-stream" if stream and status == 200 else "application/json"
    flow.response_headers = {"content-type": content_type}
    assert decode.on_response_headers(flow) is CONTINUE
    assert stage.on_response_headers(flow) is CONTINUE
    headers = flow.take_pending().set_headers
    chunks = body if isinstance(body, list) else [body]
    sent = []
    for position, chunk in enumerate(chunks):
        flow.response_chunk = chunk
        flow.end_of_stream = position == len(chunks) - 1
        for step in (decode, stage, encode):
            assert step.on_response_body(flow) is CONTINUE
        pending = flow.take_pending()
        sent.append(chunk if pending.body is None else pending.body)
    flow.error = error
    stage.on_done(flow)
    await stage.flush()
    return headers, b"".join(sent)


async def fill(stage: AnswerCache, **ask_options: Any) -> Flow:
    """A miss answered by the provider (streamed when asked), written to the cache."""
    flow, verdict = await ask(stage, **ask_options)
    assert verdict is CONTINUE
    stream = ask_options.get("stream", False)
    headers, _ = await respond(stage, flow, openai_stream() if stream else completion())
    assert headers["x-gatez-cache"] == "miss"
    return flow


def hit(verdict: Verdict, kind: str = "exact") -> Respond:
    assert isinstance(verdict, Respond), verdict
    assert verdict.status == 200
    assert verdict.reason == "cache_hit"
    headers = dict(verdict.headers)
    assert headers["x-gatez-cache"] == "hit"
    assert headers["x-gatez-cache-kind"] == kind
    return verdict


async def stored_keys(redis_client: aioredis.Redis) -> list[bytes]:
    """Every key in Redis (redis-py types them as str; this client returns bytes)."""
    return sorted(cast("list[bytes]", await redis_client.keys("*")))


def events(body: bytes) -> list[bytes]:
    splitter = SseSplitter()
    return [data for event in splitter.feed(body) if (data := event_data(event)) is not None]


# --- exact hits ----------------------------------------------------------------------------


async def test_a_miss_is_filled_and_the_same_question_is_then_answered_from_the_cache(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    first = await fill(stage)
    assert first.llm is not None and first.llm.cache_hit == ""

    # Asked again, with another max_tokens and a tag: the same entry.
    flow, verdict = await ask(stage, max_tokens=200, user="end-user-9")

    answer = hit(verdict)
    assert ("content-type", "application/json") in answer.headers
    completion_ = openai.types.chat.ChatCompletion.model_validate_json(answer.body)
    assert completion_.choices[0].message.content == ANSWER_TEXT
    assert completion_.choices[0].finish_reason == "stop"
    assert completion_.model == "gpt-4o-mini-2024-07-18"
    # The client sees the answer's usage; the AI log charges no provider tokens.
    assert completion_.usage is not None and completion_.usage.completion_tokens == 17
    assert flow.llm is not None
    assert flow.llm.cache_hit == "exact"
    assert flow.llm.usage == TokenUsage(0, 0)
    assert not flow.upstream_reached
    # One key, the tenant's, with the policy's TTL (3600 s by default).
    request = chat_request(first)
    settings = POLICY.guardrails.cache_for("acme", "default-llm")
    assert request is not None and settings is not None
    key = answer_key("acme", fingerprint(request, alias="fast", settings=settings).exact)
    assert await stored_keys(redis_client) == [key.encode()]
    assert 3_590_000 < await redis_client.pttl(key) <= 3_600_000
    assert (stage.hits_exact, stage.misses, stage.writes, stage.errors) == (1, 1, 1, 0)


async def test_a_streamed_miss_fills_the_entry_that_streamed_and_plain_requests_hit(
    stage: AnswerCache,
) -> None:
    await fill(stage, stream=True)

    _, streamed = await ask(stage, stream=True)
    answer = hit(streamed)
    assert ("content-type", "text/event-stream") in answer.headers
    datas = events(answer.body)
    assert datas[-1] == b"[DONE]"
    chunks = [openai.types.chat.ChatCompletionChunk.model_validate_json(d) for d in datas[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER_TEXT
    # Replayed in pieces of a few words, and no usage chunk the client did not ask for.
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 3  # 12 words
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in chunks)

    _, plain = await ask(stage, stream=False)
    completion_ = openai.types.chat.ChatCompletion.model_validate_json(hit(plain).body)
    assert completion_.choices[0].message.content == ANSWER_TEXT


async def test_a_replayed_stream_carries_usage_when_the_client_asked_for_it(
    stage: AnswerCache,
) -> None:
    await fill(stage)
    _, verdict = await ask(stage, stream=True, stream_options={"include_usage": True})
    datas = events(hit(verdict).body)
    last = openai.types.chat.ChatCompletionChunk.model_validate_json(datas[-2])
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (31, 17)


MESSAGE_EVENT: TypeAdapter[anthropic.types.RawMessageStreamEvent] = TypeAdapter(
    anthropic.types.RawMessageStreamEvent
)


async def test_one_entry_answers_openai_and_anthropic_clients_plain_and_streamed(
    stage: AnswerCache,
) -> None:
    await fill(stage, client="openai")

    _, plain = await ask(stage, client="anthropic")
    message = anthropic.types.Message.model_validate_json(hit(plain).body)
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == ANSWER_TEXT  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 17

    _, streamed = await ask(stage, client="anthropic", stream=True)
    answer = hit(streamed)
    assert ("content-type", "text/event-stream") in answer.headers
    # The SDK skips `ping` (Anthropic sends one after the first block starts, and so do we).
    datas = [data for data in events(answer.body) if orjson.loads(data)["type"] != "ping"]
    parsed = [MESSAGE_EVENT.validate_json(data) for data in datas]
    kinds = [event.type for event in parsed]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    text = "".join(
        event.delta.text
        for event in parsed
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == ANSWER_TEXT
    assert stage.hits_exact == 2


async def test_an_anthropic_clients_streamed_miss_fills_the_entry_an_openai_client_hits(
    stage: AnswerCache,
) -> None:
    """Filled from a translated stream (OpenAI provider, Anthropic client)."""
    await fill(stage, client="anthropic", stream=True)
    _, verdict = await ask(stage, client="openai")
    completion_ = openai.types.chat.ChatCompletion.model_validate_json(hit(verdict).body)
    assert completion_.choices[0].message.content == ANSWER_TEXT


async def test_a_tenant_is_never_served_another_tenants_entry(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    await fill(stage, tenant="acme")

    flow, verdict = await ask(stage, tenant="globex")
    assert verdict is CONTINUE
    headers, _ = await respond(stage, flow, completion("Globex's own answer."))
    assert headers["x-gatez-cache"] == "miss"

    keys = await stored_keys(redis_client)
    assert [k.split(b":")[0] for k in keys] == [b"{acme}", b"{globex}"]
    _, again = await ask(stage, tenant="globex")
    completion_ = openai.types.chat.ChatCompletion.model_validate_json(hit(again).body)
    assert completion_.choices[0].message.content == "Globex's own answer."


# --- semantic hits -------------------------------------------------------------------------


async def test_a_paraphrase_is_answered_from_the_similar_questions_entry(
    semantic_stage: AnswerCache,
) -> None:
    await fill(semantic_stage)

    flow, verdict = await ask(semantic_stage, PARAPHRASE, client="anthropic")

    message = anthropic.types.Message.model_validate_json(hit(verdict, "semantic").body)
    assert message.content[0].text == ANSWER_TEXT  # type: ignore[union-attr]
    assert flow.llm is not None and flow.llm.cache_hit == "semantic"
    assert semantic_stage.hits_semantic == 1


@pytest.mark.parametrize(
    "question",
    [
        "How do I not reset my password on the Zendesk portal?",
        "How do I reset my 2 passwords on the Zendesk portal?",
        "How do I reset my password on the Salesforce portal?",
    ],
    ids=["negation", "number", "entity"],
)
async def test_a_near_miss_is_not_a_hit(semantic_stage: AnswerCache, question: str) -> None:
    await fill(semantic_stage)
    _, verdict = await ask(semantic_stage, question)
    assert verdict is CONTINUE
    assert semantic_stage.hits_semantic == 0


async def test_exact_only_routes_do_not_answer_paraphrases(semantic_stage: AnswerCache) -> None:
    policy = build_policy(exact_only=True)
    await fill(semantic_stage, policy=policy)
    _, verdict = await ask(semantic_stage, PARAPHRASE, policy=policy)
    assert verdict is CONTINUE
    _, same = await ask(semantic_stage, policy=policy)
    hit(same)


async def test_an_expired_entry_is_a_miss_in_both_tiers(
    semantic_stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    await fill(semantic_stage)
    (key,) = await stored_keys(redis_client)
    await redis_client.pexpire(key, 1)
    await asyncio.sleep(0.01)

    # The point in Qdrant still names the entry; Redis no longer has it.
    _, exact = await ask(semantic_stage)
    _, similar = await ask(semantic_stage, PARAPHRASE)
    assert exact is CONTINUE and similar is CONTINUE
    assert semantic_stage.misses == 3


# --- what is never answered from or written to the cache -----------------------------------


async def test_no_cache_skips_the_lookup_and_no_store_the_write(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    flow, verdict = await ask(stage, headers={"cache-control": "no-store"})
    assert verdict is CONTINUE
    headers, _ = await respond(stage, flow, completion())
    assert headers["x-gatez-cache"] == "miss"
    assert await stored_keys(redis_client) == []

    # no-cache: not answered from the cache, but its answer is kept.
    flow, verdict = await ask(stage, headers={"cache-control": "max-age=0, No-Cache"})
    assert verdict is CONTINUE
    headers, _ = await respond(stage, flow, completion())
    assert headers["x-gatez-cache"] == "bypass"
    assert len(await stored_keys(redis_client)) == 1
    _, verdict = await ask(stage, headers={"cache-control": "no-cache"})
    assert verdict is CONTINUE
    _, verdict = await ask(stage)
    hit(verdict)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "reset_password",
            "parameters": {"type": "object", "properties": {}},
        },
    }
]


async def test_turns_with_tool_calls_are_neither_answered_nor_written(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    history = {
        "model": "fast",
        "tools": TOOLS,
        "messages": [
            {"role": "user", "content": QUESTION},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "reset_password", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "e-mail sent"},
        ],
    }
    for _ in range(2):
        flow, verdict = await ask(stage, body=history)
        assert verdict is CONTINUE
        headers, _ = await respond(stage, flow, completion("I sent you the reset e-mail."))
        assert headers["x-gatez-cache"] == "bypass"
    # An answer that is a tool call is not kept either.
    flow, _ = await ask(stage, tools=TOOLS)
    await respond(stage, flow, completion(finish_reason="tool_calls"))

    assert await stored_keys(redis_client) == []
    assert stage.writes == 0 and stage.bypasses == 2


async def test_sampled_requests_are_not_cached(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    flow, verdict = await ask(stage, temperature=0.8)
    assert verdict is CONTINUE
    headers, _ = await respond(stage, flow, completion())
    assert headers["x-gatez-cache"] == "bypass"
    assert await stored_keys(redis_client) == []


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        (completion("Par", finish_reason="length"), 200, ""),
        (b'{"error": {"message": "boom", "type": "server_error"}}', 500, ""),
        (openai_stream(error=True), 200, ""),
        (openai_stream()[:-2], 200, ""),
        (openai_stream(), 200, "aborted"),
        (completion(), 200, "aborted"),
    ],
    ids=[
        "cut-at-max-tokens",
        "provider-error",
        "stream-error",
        "stream-cut",
        "client-gone-stream",
        "client-gone",
    ],
)
async def test_unfinished_or_failed_exchanges_are_not_written(
    stage: AnswerCache,
    redis_client: aioredis.Redis,
    body: bytes | list[bytes],
    status: int,
    error: str,
) -> None:
    flow, verdict = await ask(stage, stream=isinstance(body, list))
    assert verdict is CONTINUE
    await respond(stage, flow, body, status=status, error=error)
    assert await stored_keys(redis_client) == []
    assert stage.writes == 0


async def test_an_answer_longer_than_max_tokens_is_not_served(stage: AnswerCache) -> None:
    await fill(stage)
    _, verdict = await ask(stage, max_tokens=10)
    assert verdict is CONTINUE
    _, verdict = await ask(stage, max_tokens=17)
    hit(verdict)


async def test_without_a_cache_policy_the_stage_does_nothing(
    stage: AnswerCache, redis_client: aioredis.Redis
) -> None:
    policy = compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id="acme")],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="https://api.openai.com/v1",
                )
            ],
            model_routes=[
                policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
            ],
        )
    )
    flow, verdict = await ask(stage, policy=policy)
    assert verdict is CONTINUE
    headers, _ = await respond(stage, flow, completion())
    assert "x-gatez-cache" not in headers
    assert await stored_keys(redis_client) == []


# --- Redis away ----------------------------------------------------------------------------


async def test_redis_down_is_a_miss_and_a_failed_write_is_only_counted() -> None:
    dead = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    stage = AnswerCache(dead, None)
    try:
        flow, verdict = await ask(stage)
        assert verdict is CONTINUE
        headers, _ = await respond(stage, flow, completion())
        assert headers["x-gatez-cache"] == "miss"
        assert (stage.misses, stage.writes, stage.errors) == (1, 0, 2)
    finally:
        await dead.close()


async def test_a_redis_that_does_not_answer_costs_the_lookup_timeout_only(hung_port: int) -> None:
    hung = PipelinedRedis.from_url(f"redis://127.0.0.1:{hung_port}")
    stage = AnswerCache(hung, None, exact_timeout_s=0.05)
    try:
        loop = asyncio.get_running_loop()
        began = loop.time()
        _, verdict = await ask(stage)
        assert verdict is CONTINUE
        assert 0.04 <= loop.time() - began < 0.5
        assert stage.errors == 1
    finally:
        await hung.close()


async def test_answers_kept_before_output_redaction_was_turned_on_are_not_served_after(
    stage: AnswerCache,
) -> None:
    await fill(stage)
    redacting = compile_policy(
        policy_pb2.PolicySnapshot(
            version=2,
            tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="https://api.openai.com/v1",
                )
            ],
            model_routes=[
                policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
            ],
            cache_policies=[policy_pb2.CachePolicy(tenant_id="acme", enabled=True)],
            pii_policies=[policy_pb2.PiiPolicy(tenant_id="acme", scan_output=True)],
        )
    )

    _, verdict = await ask(stage, policy=redacting)

    # Kept apart: the unredacted answer is not served once answers must be redacted.
    assert verdict is CONTINUE
    _, before = await ask(stage)
    hit(before)


# --- provider embeddings -------------------------------------------------------------------
#
# Routes whose policy embeds with a provider (`embeddings: PROVIDER`), against the fake OpenAI
# upstream. Its vectors are SHA-256 of the text (8 dimensions), so paraphrases are not similar
# by them the way they are by wordllama: a paraphrase hits only at a threshold its fake
# similarity reaches. The tests read that similarity from the fake's own function and set the
# route's threshold just under it (a hit) or just over it (a miss, where wordllama would hit):
# which vectors the stage compared is then plain.

PROVIDER_KEY = "sk-provider-0123456789abcdef"
CLIENT_KEY = "gz-client-key-must-not-leave"
EMBEDDING_MODEL = "text-embedding-3-small"
# Similar to QUESTION by the fake's vectors (cosine 0.59; wordllama: 0.99).
FAKE_PARAPHRASE = "How do you reset a password on the Zendesk portal?"


def fake_similarity(a: str, b: str) -> float:
    """The cosine of the fake provider's vectors of two questions."""
    first = np.asarray(embedding_vector(a, DEFAULT_EMBEDDING_DIMENSIONS))
    second = np.asarray(embedding_vector(b, DEFAULT_EMBEDDING_DIMENSIONS))
    return float(first @ second / np.linalg.norm(first) / np.linalg.norm(second))


def provider_policy(
    openai_url: str, *, embedding_model: str = "embed", version: int = 1, **cache: Any
) -> CompiledPolicy:
    """Tenants acme and globex; `fast` (chat) and `embed` (embeddings) on the OpenAI provider at
    `openai_url`, `claude` on Anthropic; the cache embeds with `embedding_model`'s provider."""
    cache.setdefault("embeddings", policy_pb2.EMBEDDING_SOURCE_PROVIDER)
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=version,
            tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
            providers=[
                policy_pb2.Provider(
                    name="openai", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url=openai_url
                ),
                policy_pb2.Provider(
                    name="anthropic",
                    kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
                    base_url="https://api.anthropic.com",
                ),
            ],
            provider_credentials=[
                policy_pb2.ProviderCredential(provider="openai", api_key=PROVIDER_KEY)
            ],
            model_routes=[
                policy_pb2.ModelRoute(
                    alias="fast", provider="openai", upstream_model="gpt-4o-mini"
                ),
                policy_pb2.ModelRoute(
                    alias="embed", provider="openai", upstream_model=EMBEDDING_MODEL
                ),
                policy_pb2.ModelRoute(
                    alias="claude", provider="anthropic", upstream_model="claude-sonnet-4-5"
                ),
            ],
            cache_policies=[
                policy_pb2.CachePolicy(
                    tenant_id=tenant, enabled=True, embedding_model=embedding_model, **cache
                )
                for tenant in ("acme", "globex")
            ],
        )
    )


@pytest.fixture(scope="module")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=PROVIDER_KEY) as server:
        yield server


@pytest.fixture
def fake(upstream: UpstreamServer) -> UpstreamServer:
    upstream.clear()
    return upstream


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def provider_stage(
    pipelined: PipelinedRedis,
    tmp_path: Path,
    embedder: WordLlamaEmbedder,
    http: aiohttp.ClientSession,
) -> AsyncIterator[AnswerCache]:
    """Both tiers (a local Qdrant in tmp_path); provider embeddings bounded by 0.3 s (the
    tier by 1 s), asked again at once after a failure."""
    index = SemanticIndex.local(tmp_path / "qdrant", load_embedder=lambda: embedder)
    index.start()
    assert await index.wait_ready()
    cache = AnswerCache(
        pipelined,
        index,
        provider_embeddings=ProviderEmbeddings(http, timeout_s=0.3, retry_after_s=0.0),
        provider_semantic_timeout_s=1.0,
    )
    yield cache
    await cache.close()


def embeddings_requests(fake: UpstreamServer) -> list[RecordedRequest]:
    return [request for request in fake.requests if request.path == EMBEDDINGS_PATH]


CLIENT_HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}


async def test_a_provider_embedding_route_answers_a_paraphrase_by_the_providers_vectors(
    provider_stage: AnswerCache, fake: UpstreamServer, embedder: WordLlamaEmbedder
) -> None:
    similarity = fake_similarity(QUESTION, FAKE_PARAPHRASE)
    assert 0.5 < similarity < 0.7 < embedder.similarity(QUESTION, FAKE_PARAPHRASE)
    policy = provider_policy(fake.base_url, similarity_threshold=similarity - 0.02)
    await fill(provider_stage, policy=policy, headers=CLIENT_HEADERS)

    flow, verdict = await ask(
        provider_stage, FAKE_PARAPHRASE, client="anthropic", policy=policy, headers=CLIENT_HEADERS
    )

    message = anthropic.types.Message.model_validate_json(hit(verdict, "semantic").body)
    assert message.content[0].text == ANSWER_TEXT  # type: ignore[union-attr]
    assert flow.llm is not None and flow.llm.cache_hit == "semantic"
    # Embedded by the provider: the first lookup's question (no collection yet), the write's,
    # then the paraphrase's — the upstream model, the provider's credential.
    requests = embeddings_requests(fake)
    assert [request.json for request in requests] == [
        {"model": EMBEDDING_MODEL, "input": [QUESTION]},
        {"model": EMBEDDING_MODEL, "input": [QUESTION]},
        {"model": EMBEDDING_MODEL, "input": [FAKE_PARAPHRASE]},
    ]
    assert {request.header("authorization") for request in requests} == {f"Bearer {PROVIDER_KEY}"}
    # The client's key never reached the provider, in any header of any request.
    assert not any(CLIENT_KEY in value for r in fake.requests for value in r.headers.values())
    assert (provider_stage.hits_semantic, provider_stage.errors) == (1, 0)


async def test_a_paraphrase_the_providers_vectors_do_not_bring_close_enough_is_a_miss(
    provider_stage: AnswerCache, fake: UpstreamServer, embedder: WordLlamaEmbedder
) -> None:
    """Just over the fake similarity: wordllama's (0.99) would have made it a hit."""
    threshold = fake_similarity(QUESTION, FAKE_PARAPHRASE) + 0.02
    assert embedder.similarity(QUESTION, FAKE_PARAPHRASE) > threshold
    policy = provider_policy(fake.base_url, similarity_threshold=threshold)
    await fill(provider_stage, policy=policy)

    _, verdict = await ask(provider_stage, FAKE_PARAPHRASE, policy=policy)

    assert verdict is CONTINUE
    assert len(embeddings_requests(fake)) == 3
    assert (provider_stage.hits_semantic, provider_stage.errors) == (0, 0)


@pytest.mark.parametrize(
    ("alias", "said"),
    [("no-such-alias", "none of its model routes has"), ("claude", "has no embeddings API")],
    ids=["unknown-alias", "anthropic-provider"],
)
async def test_an_alias_that_cannot_embed_leaves_the_route_its_exact_tier(
    provider_stage: AnswerCache,
    fake: UpstreamServer,
    caplog: pytest.LogCaptureFixture,
    alias: str,
    said: str,
) -> None:
    policy = provider_policy(fake.base_url, embedding_model=alias, similarity_threshold=0.01)
    with caplog.at_level(logging.WARNING, logger="gatez.cache"):
        await fill(provider_stage, policy=policy)
        _, similar = await ask(provider_stage, FAKE_PARAPHRASE, policy=policy)
        _, same = await ask(provider_stage, policy=policy)

    assert similar is CONTINUE
    hit(same)
    assert embeddings_requests(fake) == []
    # Said once for the policy, not per request; not an error of the cache.
    assert [said in record.getMessage() for record in caplog.records] == [True]
    assert provider_stage.errors == 0


async def test_a_provider_error_is_a_miss_and_the_answer_is_still_indexed(
    provider_stage: AnswerCache, fake: UpstreamServer
) -> None:
    policy = provider_policy(
        fake.base_url, similarity_threshold=fake_similarity(QUESTION, FAKE_PARAPHRASE) - 0.02
    )
    fake.queue_error(500, path=EMBEDDINGS_PATH)

    # The lookup's embedding fails: a miss, filled by the provider as any other.
    await fill(provider_stage, policy=policy)
    assert provider_stage.errors == 1
    # The write's embedding went through (no rest in these tests): the paraphrase hits.
    _, verdict = await ask(provider_stage, FAKE_PARAPHRASE, policy=policy)
    hit(verdict, "semantic")
    assert len(embeddings_requests(fake)) == 3


async def test_a_provider_that_does_not_answer_costs_its_timeout_and_is_a_miss(
    provider_stage: AnswerCache, fake: UpstreamServer, hung_port: int
) -> None:
    policy = provider_policy(f"http://127.0.0.1:{hung_port}/v1")
    loop = asyncio.get_running_loop()

    began = loop.time()
    _, verdict = await ask(provider_stage, policy=policy)

    assert verdict is CONTINUE
    # The embeddings call's own bound (0.3 s), under the stage's for the tier (1 s).
    assert 0.25 <= loop.time() - began < 0.9
    assert (provider_stage.misses, provider_stage.errors) == (1, 1)


async def test_local_and_provider_embeddings_of_a_tenant_never_answer_each_other(
    provider_stage: AnswerCache, fake: UpstreamServer, embedder: WordLlamaEmbedder
) -> None:
    local = build_policy()
    # A threshold at which the provider's vectors of FAKE_PARAPHRASE find QUESTION (as above).
    provider = provider_policy(
        fake.base_url, similarity_threshold=fake_similarity(QUESTION, FAKE_PARAPHRASE) - 0.02
    )

    # A question indexed by wordllama is not found by the provider's vectors ...
    await fill(provider_stage, policy=local)
    _, by_provider = await ask(provider_stage, FAKE_PARAPHRASE, policy=provider)
    assert by_provider is CONTINUE
    _, by_wordllama = await ask(provider_stage, FAKE_PARAPHRASE, policy=local)
    hit(by_wordllama, "semantic")
    # ... nor one indexed by the provider by wordllama's. Its exact entry is shared (the same
    # scope), its point is the provider's alone.
    other = "What are the opening hours of the Berlin office?"
    reworded = "What are the opening times of the Berlin office?"
    assert embedder.similarity(other, reworded) > 0.85
    flow, verdict = await ask(provider_stage, other, policy=provider)
    assert verdict is CONTINUE
    await respond(provider_stage, flow, completion("Nine to five."))
    _, same_words = await ask(provider_stage, other, policy=local)
    hit(same_words, "exact")
    _, by_wordllama = await ask(provider_stage, reworded, policy=local)
    assert by_wordllama is CONTINUE
    assert (provider_stage.hits_semantic, provider_stage.errors) == (1, 0)


def test_a_reply_that_came_while_the_data_plane_was_held_up_is_taken() -> None:
    # On uvloop, as the data plane runs: there `asyncio.timeout` fires before the reply's
    # callback when both are due in one loop turn, and a hit would count as a miss.
    async def held_up() -> Any:
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting = asyncio.ensure_future(_reply_within(reply, 0.01))
        await asyncio.sleep(0)  # the wait begins, its bound set
        time.sleep(0.05)  # noqa: ASYNC251 — the process starved past the bound...
        reply.set_result(b"answer")  # ... while the reply arrived
        return await waiting

    assert uvloop.run(held_up()) == b"answer"


async def test_a_reply_that_never_comes_is_a_timeout_at_the_bound() -> None:
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await _reply_within(reply, 0.02)
    assert 0.015 < time.monotonic() - started < 0.5
    reply.set_exception(ConnectionError("gone"))  # read by the stage's callback: no warning
