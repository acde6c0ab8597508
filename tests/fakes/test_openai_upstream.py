"""The fake OpenAI upstream, driven by the official `openai` SDK and by a raw HTTP client.

The SDK proves the fake parses exactly as OpenAI does; the raw client checks what the SDK hides
(null vs absent fields, SSE framing, headers, chunked delivery).
"""

from __future__ import annotations

import base64
import signal
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from gatez.processes import free_port, stop_process, wait_for_port
from tests.fakes.openai_upstream import (
    ErrorReply,
    UpstreamServer,
    count_completion_tokens,
    count_prompt_tokens,
    deterministic_reply,
    embedding_vector,
    mask_api_key,
    reply_text,
)

API_KEY = "sk-test-4yNZzQ8mK2pL7vR9xW3cJ5bH1dF6mjw"
MODELS = ("gpt-4o-mini", "gpt-4o")
MODEL = MODELS[0]
HELLO_TEXT = "hello there world"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": HELLO_TEXT}]


@pytest.fixture(scope="module")
def shared_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=API_KEY, models=MODELS) as server:
        yield server


@pytest.fixture
def upstream(shared_upstream: UpstreamServer) -> UpstreamServer:
    """The module's server, with no history and no queued errors left by an earlier test."""
    shared_upstream.clear()
    return shared_upstream


@pytest.fixture
def client(upstream: UpstreamServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(api_key=API_KEY, base_url=upstream.base_url, max_retries=0) as sdk:
        yield sdk


@pytest.fixture
async def async_client(upstream: UpstreamServer) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(
        api_key=API_KEY, base_url=upstream.base_url, max_retries=0
    ) as sdk:
        yield sdk


@dataclass(frozen=True, slots=True)
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes
    body_chunks: int

    def json(self) -> Any:
        return orjson.loads(self.body)

    def sse_data(self) -> list[str]:
        """The `data:` payloads of an SSE body, in order."""
        events = self.body.decode().split("\n\n")
        assert events[-1] == "", "the body must end with a blank line"
        payloads = []
        for event in events[:-1]:
            assert event.startswith("data: ") and "\n" not in event, event
            payloads.append(event.removeprefix("data: "))
        return payloads


async def raw_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    api_key: str | None = API_KEY,
) -> RawResponse:
    """One request with a plain HTTP client, counting the body chunks as they arrive."""
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers) as response,
    ):
        received = b""
        chunks = 0
        async for data in response.content.iter_any():
            received += data
            chunks += 1
        return RawResponse(
            status=response.status,
            headers={name.lower(): value for name, value in response.headers.items()},
            body=received,
            body_chunks=chunks,
        )


def chat_body(**fields: Any) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": HELLO} | fields)


# -- the deterministic model -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "prompt_tokens"),
    [
        ([{"role": "user", "content": "hello there world"}], 4),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}], 5),
        ([{"role": "user", "content": ""}], 1),
        ([{"role": "assistant", "content": None}], 1),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "two words"},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        {"type": "text", "text": "and three"},
                    ],
                }
            ],
            5,
        ),
    ],
)
def test_prompt_tokens_are_words_plus_one_per_message(
    messages: list[dict[str, Any]], prompt_tokens: int
) -> None:
    assert count_prompt_tokens(messages) == prompt_tokens


@pytest.mark.parametrize(
    ("messages", "text"),
    [
        (HELLO, "Echo: hello there world"),
        (
            [
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "Echo: first"},
                {"role": "user", "content": "second  one"},
            ],
            "Echo: second  one",
        ),
        ([{"role": "system", "content": "no user here"}], "Echo: "),
    ],
)
def test_reply_echoes_the_last_user_message(messages: list[dict[str, Any]], text: str) -> None:
    reply = deterministic_reply(messages)
    assert reply_text(messages) == reply.text == text
    assert reply.finish_reason == "stop"
    assert reply.completion_tokens == count_completion_tokens(text)


def test_reply_streams_word_by_word_and_is_cut_at_max_tokens() -> None:
    assert deterministic_reply(HELLO).deltas == ("Echo:", " hello", " there", " world")
    cut = deterministic_reply(HELLO, max_tokens=2)
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("Echo: hello", "length", 2)


@pytest.mark.parametrize(
    ("key", "shown"),
    [
        ("sk-4yNZz" + "A" * 10 + "6mjw", "sk-4yNZz" + "*" * 10 + "6mjw"),
        ("short-key", "short-key"),
    ],
)
def test_incorrect_keys_are_masked_like_openai(key: str, shown: str) -> None:
    assert mask_api_key(key) == shown


# -- non-streaming through the SDK -------------------------------------------------------------


@pytest.mark.parametrize(
    "messages",
    [
        HELLO,
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is   a gateway?"},
        ],
        [{"role": "user", "content": [{"type": "text", "text": "parts work too"}]}],
    ],
)
def test_completion_parses_and_matches_the_deterministic_model(
    client: openai.OpenAI, messages: list[ChatCompletionMessageParam]
) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    expected = deterministic_reply(messages)

    assert completion.id.startswith("chatcmpl-") and len(completion.id) == len("chatcmpl-") + 29
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    assert completion.service_tier == "default"
    assert completion.system_fingerprint is not None
    assert completion.system_fingerprint.startswith("fp_")
    (choice,) = completion.choices
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.logprobs is None
    assert choice.message.role == "assistant"
    assert choice.message.content == expected.text
    assert choice.message.refusal is None
    assert choice.message.annotations == []
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        expected.prompt_tokens,
        expected.completion_tokens,
        expected.total_tokens,
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert completion._request_id is not None and completion._request_id.startswith("req_")


def test_completion_usage_follows_the_documented_rule(client: openai.OpenAI) -> None:
    # Spelled out rather than computed, so a change to the rule fails loudly.
    completion = client.chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.choices[0].message.content == "Echo: hello there world"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (4, 4)
    assert completion.usage.total_tokens == 8


@pytest.mark.parametrize("limit_field", ["max_tokens", "max_completion_tokens"])
def test_token_limit_cuts_the_reply_with_finish_reason_length(
    client: openai.OpenAI, limit_field: str
) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=HELLO, extra_body={limit_field: 2}
    )
    assert completion.choices[0].message.content == "Echo: hello"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 2


async def test_completion_body_and_headers_on_the_wire(upstream: UpstreamServer) -> None:
    response = await raw_request("POST", f"{upstream.base_url}/chat/completions", body=chat_body())

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"].startswith("req_")
    assert int(response.headers["openai-processing-ms"]) >= 0
    assert response.headers["openai-version"] == "2020-10-01"
    assert response.headers["x-ratelimit-remaining-tokens"] == str(10_000_000 - 4)
    body = response.json()
    assert list(body) == [
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "service_tier",
        "system_fingerprint",
    ]
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Echo: hello there world",
        "refusal": None,
        "annotations": [],
    }
    assert body["usage"] == {
        "prompt_tokens": 4,
        "completion_tokens": 4,
        "total_tokens": 8,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def test_fixed_clock_sets_created() -> None:
    with UpstreamServer(clock=lambda: 1_700_000_000.9) as server:
        sdk = openai.OpenAI(api_key="anything", base_url=server.base_url, max_retries=0)
        with sdk:
            completion = sdk.chat.completions.create(model="any-model", messages=HELLO)
    assert completion.created == 1_700_000_000
    assert completion.model == "any-model"


# -- streaming ---------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_collects_the_same_text(
    async_client: openai.AsyncOpenAI, include_usage: bool
) -> None:
    stream = await async_client.chat.completions.create(
        model=MODEL,
        messages=HELLO,
        stream=True,
        stream_options={"include_usage": include_usage},
    )
    chunks: list[ChatCompletionChunk] = [chunk async for chunk in stream]

    expected = deterministic_reply(HELLO)
    assert len({chunk.id for chunk in chunks}) == 1
    assert {chunk.object for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == expected.text
    with_choices = [chunk for chunk in chunks if chunk.choices]
    assert [chunk.choices[0].finish_reason for chunk in with_choices][-1] == "stop"
    assert all(chunk.choices[0].finish_reason is None for chunk in with_choices[:-1])
    if include_usage:
        *earlier, last = chunks
        assert last.choices == []
        assert last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (4, 4)
        assert last.usage.total_tokens == 8
        assert all(chunk.usage is None for chunk in earlier)
    else:
        assert all(chunk.choices for chunk in chunks)
        assert all(chunk.usage is None for chunk in chunks)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_on_the_wire(upstream: UpstreamServer, include_usage: bool) -> None:
    stream_options = {"include_usage": True} if include_usage else None
    response = await raw_request(
        "POST",
        f"{upstream.base_url}/chat/completions",
        body=chat_body(stream=True, stream_options=stream_options),
    )

    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.body.endswith(b"\n\ndata: [DONE]\n\n")
    *payloads, done = response.sse_data()
    assert done == "[DONE]"
    chunks = [orjson.loads(payload) for payload in payloads]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-2 if include_usage else -1]["choices"][0]["delta"] == {}
    assert all("obfuscation" in chunk for chunk in chunks)
    if include_usage:
        # OpenAI documents `"usage": null` on every chunk before the usage chunk: present, null.
        assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
        assert chunks[-1]["choices"] == []
        assert chunks[-1]["usage"]["total_tokens"] == 8
    else:
        assert not any("usage" in chunk for chunk in chunks)


async def test_stream_can_leave_out_obfuscation(upstream: UpstreamServer) -> None:
    response = await raw_request(
        "POST",
        f"{upstream.base_url}/chat/completions",
        body=chat_body(stream=True, stream_options={"include_obfuscation": False}),
    )
    chunks = [orjson.loads(payload) for payload in response.sse_data()[:-1]]
    assert not any("obfuscation" in chunk for chunk in chunks)


async def test_stream_arrives_in_separate_body_chunks() -> None:
    with UpstreamServer(chunk_delay_s=0.02) as server:
        response = await raw_request(
            "POST", f"{server.base_url}/chat/completions", body=chat_body(stream=True)
        )
    events = response.sse_data()
    # Role chunk, four words, finish chunk, [DONE]: seven events written 20 ms apart.
    assert len(events) == 7
    assert response.body_chunks >= 5


# -- the Responses API -------------------------------------------------------------------------

RESPONSE_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * 4,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def test_response_echoes_the_input_with_exact_usage(
    client: openai.OpenAI, upstream: UpstreamServer
) -> None:
    response = client.responses.create(
        model=MODEL, input="hello there world", instructions="Be brief."
    )

    assert response.output_text == "Echo: hello there world"
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.id.startswith("resp_")
    assert (response.output[0].id or "").startswith("msg_")
    assert response.instructions == "Be brief."
    # Instructions count as a message: (2 + 1) + (3 + 1) input tokens, four words out.
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (7, 4)
    assert response.usage.total_tokens == 11
    assert response.usage.input_tokens_details.cached_tokens == 0
    (seen,) = upstream.requests
    assert (seen.method, seen.path, seen.json["input"]) == ("POST", "/v1/responses", HELLO_TEXT)


def test_response_input_items_and_a_token_limit(client: openai.OpenAI) -> None:
    response = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "one two three"}],
            },
        ],
        max_output_tokens=2,
    )

    assert response.output_text == "Echo: one"
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens) == (10, 2)


def test_response_stream_sends_openais_events_in_order(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model=MODEL, input=HELLO_TEXT, stream=True))

    assert [event.type for event in events] == RESPONSE_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == "Echo: hello there world"
    created, completed = events[0], events[-1]
    assert created.type == "response.created" and completed.type == "response.completed"
    assert created.response.status == "in_progress" and created.response.usage is None
    assert completed.response.id == created.response.id
    assert completed.response.output_text == "Echo: hello there world"
    assert completed.response.usage is not None
    assert (completed.response.usage.input_tokens, completed.response.usage.output_tokens) == (4, 4)


async def test_async_response_plain_and_streamed(async_client: openai.AsyncOpenAI) -> None:
    response = await async_client.responses.create(model=MODEL, input=HELLO_TEXT)
    stream = await async_client.responses.create(model=MODEL, input=HELLO_TEXT, stream=True)
    events = [event async for event in stream]

    assert response.output_text == "Echo: hello there world"
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == response.output_text
    assert events[-1].response.usage == response.usage


async def test_response_stream_on_the_wire(upstream: UpstreamServer) -> None:
    body = orjson.dumps({"model": MODEL, "input": HELLO_TEXT, "stream": True})
    response = await raw_request("POST", f"{upstream.base_url}/responses", body=body)

    assert response.status == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.body.decode().split("\n\n")
    assert events[-1] == "", "the body must end with a blank line"
    types = []
    for event in events[:-1]:
        event_line, data_line = event.split("\n")
        data = orjson.loads(data_line.removeprefix("data: "))
        # Each event names its type twice: on the `event:` line and in the data's `type`.
        assert event_line == f"event: {data['type']}"
        assert list(data)[:2] == ["type", "sequence_number"]
        types.append(data["type"])
    assert types == RESPONSE_EVENTS, "a Responses stream ends with its last event: no [DONE]"


def test_response_refuses_an_unknown_model_and_a_bad_input(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.responses.create(model="gpt-nope", input=HELLO_TEXT)
    with pytest.raises(openai.BadRequestError) as bad_input:
        client.responses.create(model=MODEL, input=42)  # type: ignore[call-overload]

    assert not_found.value.code == "model_not_found"
    assert (bad_input.value.code, bad_input.value.param) == ("invalid_type", "input")


# -- the Embeddings API ------------------------------------------------------------------------


def test_embeddings_decode_from_base64_as_the_sdk_asks(
    client: openai.OpenAI, upstream: UpstreamServer
) -> None:
    result = client.embeddings.create(model=MODEL, input=["hello world", "hi"])

    assert upstream.requests[-1].json["encoding_format"] == "base64"
    assert [item.index for item in result.data] == [0, 1]
    assert result.data[0].embedding == embedding_vector("hello world", 8)
    assert result.data[1].embedding == embedding_vector("hi", 8)
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (3, 3)
    assert result.model == MODEL and result.object == "list"


async def test_embeddings_as_floats_with_dimensions_and_token_input(
    async_client: openai.AsyncOpenAI,
) -> None:
    floats = await async_client.embeddings.create(
        model=MODEL, input="hello world", encoding_format="float", dimensions=40
    )
    tokens = await async_client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4]])

    assert floats.data[0].embedding == embedding_vector("hello world", 40)
    assert len(floats.data[0].embedding) == 40
    assert floats.usage.prompt_tokens == 2
    assert [len(item.embedding) for item in tokens.data] == [8, 8]
    assert tokens.usage.prompt_tokens == 4


async def test_embeddings_base64_is_little_endian_float32(upstream: UpstreamServer) -> None:
    body = orjson.dumps({"model": MODEL, "input": "hi", "encoding_format": "base64"})
    response = await raw_request("POST", f"{upstream.base_url}/embeddings", body=body)

    assert response.status == 200
    (item,) = response.json()["data"]
    assert item["object"] == "embedding"
    vector = struct.unpack("<8f", base64.b64decode(item["embedding"]))
    assert list(vector) == embedding_vector("hi", 8)


@pytest.mark.parametrize(
    "fields",
    [{"input": ""}, {"input": []}, {"input": [1, "a"]}, {}, {"encoding_format": "int8"}],
)
async def test_embeddings_refuse_bad_input(
    upstream: UpstreamServer, fields: dict[str, Any]
) -> None:
    body = orjson.dumps({"model": MODEL, "input": "hi"} | fields)
    if not fields:
        body = orjson.dumps({"model": MODEL})
    response = await raw_request("POST", f"{upstream.base_url}/embeddings", body=body)

    assert response.status == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# -- errors ------------------------------------------------------------------------------------


def test_wrong_key_is_an_authentication_error(upstream: UpstreamServer) -> None:
    wrong_key = "sk-wrong-0000000000000000000000000000"
    with (
        openai.OpenAI(api_key=wrong_key, base_url=upstream.base_url, max_retries=0) as sdk,
        pytest.raises(openai.AuthenticationError) as raised,
    ):
        sdk.chat.completions.create(model=MODEL, messages=HELLO)

    error = raised.value
    assert error.status_code == 401
    assert (error.code, error.type, error.param) == (
        "invalid_api_key",
        "invalid_request_error",
        None,
    )
    assert error.message.startswith("Error code: 401 - ")
    assert isinstance(error.body, dict)
    assert error.body["message"].startswith(
        f"Incorrect API key provided: {mask_api_key(wrong_key)}."
    )
    assert wrong_key not in error.body["message"]
    assert error.request_id is not None and error.request_id.startswith("req_")


@pytest.mark.parametrize("path", ["/chat/completions", "/models"])
async def test_missing_key_is_refused_like_openai(upstream: UpstreamServer, path: str) -> None:
    method = "POST" if path == "/chat/completions" else "GET"
    response = await raw_request(method, upstream.base_url + path, body=chat_body(), api_key=None)
    assert response.status == 401
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    error = response.json()["error"]
    assert error["message"].startswith("You didn't provide an API key.")
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", None, None)


@pytest.mark.parametrize(
    ("scripted", "exception", "status", "code", "error_type"),
    [
        (ErrorReply.rate_limit(), openai.RateLimitError, 429, "rate_limit_exceeded", "requests"),
        (
            ErrorReply.insufficient_quota(),
            openai.RateLimitError,
            429,
            "insufficient_quota",
            "insufficient_quota",
        ),
        (ErrorReply.server_error(), openai.InternalServerError, 500, None, "server_error"),
    ],
)
def test_queued_error_reaches_the_sdk_as_openai_sends_it(
    upstream: UpstreamServer,
    client: openai.OpenAI,
    scripted: ErrorReply,
    exception: type[openai.APIStatusError],
    status: int,
    code: str | None,
    error_type: str,
) -> None:
    upstream.queue_error(scripted)
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)

    error = raised.value
    assert error.status_code == status
    assert (error.code, error.type) == (code, error_type)
    assert error.body == scripted.body()["error"]
    for name, value in scripted.headers.items():
        assert error.response.headers[name] == value
    # The queue held one error: the next request succeeds.
    assert client.chat.completions.create(model=MODEL, messages=HELLO).choices
    assert upstream.recorder.pending_errors == 0


@pytest.mark.parametrize(
    ("status", "retry_after_s", "exception", "error_type", "code"),
    [
        (429, 7, openai.RateLimitError, "requests", "rate_limit_exceeded"),
        (500, None, openai.InternalServerError, "server_error", None),
        (503, 2, openai.InternalServerError, "server_error", None),
        (400, None, openai.BadRequestError, "invalid_request_error", None),
    ],
)
def test_queue_error_by_status_uses_openais_usual_error(
    upstream: UpstreamServer,
    client: openai.OpenAI,
    status: int,
    retry_after_s: int | None,
    exception: type[openai.APIStatusError],
    error_type: str,
    code: str | None,
) -> None:
    scripted = upstream.queue_error(status, retry_after_s=retry_after_s)
    with pytest.raises(exception) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    error = raised.value
    assert (error.status_code, error.type, error.code) == (status, error_type, code)
    assert error.body == scripted.body()["error"]
    assert error.response.headers.get("retry-after") == (
        None if retry_after_s is None else str(retry_after_s)
    )


def test_queue_error_fields_override_the_preset(
    upstream: UpstreamServer, client: openai.OpenAI
) -> None:
    upstream.queue_error(
        ErrorReply.server_error(),
        message="Upstream exploded.",
        code="boom",
        headers={"x-should-retry": "false"},
        retry_after_s=3,
    )
    with pytest.raises(openai.InternalServerError) as raised:
        client.chat.completions.create(model=MODEL, messages=HELLO)
    assert raised.value.body == {
        "message": "Upstream exploded.",
        "type": "server_error",
        "param": None,
        "code": "boom",
    }
    headers = raised.value.response.headers
    assert (headers["x-should-retry"], headers["retry-after"]) == ("false", "3")


def test_rate_limit_error_carries_retry_headers(upstream: UpstreamServer) -> None:
    scripted = ErrorReply.rate_limit(model=MODEL, limit=5, retry_after_s=7)
    assert scripted.headers["retry-after"] == "7"
    assert scripted.headers["x-ratelimit-remaining-requests"] == "0"
    assert "Limit 5, Used 5, Requested 1. Please try again in 7s." in scripted.message


def test_queued_error_answers_the_next_n_requests_then_the_sdk_retries_through(
    upstream: UpstreamServer,
) -> None:
    # retry-after-ms keeps the SDK's backoff to a millisecond.
    upstream.queue_error(ErrorReply.server_error(headers={"retry-after-ms": "1"}), times=2)
    with openai.OpenAI(api_key=API_KEY, base_url=upstream.base_url, max_retries=2) as sdk:
        completion = sdk.chat.completions.create(model=MODEL, messages=HELLO)
    assert completion.choices[0].message.content == "Echo: hello there world"
    assert len(upstream.requests) == 3
    retry_counts = [request.header("x-stainless-retry-count") for request in upstream.requests]
    assert retry_counts == ["0", "1", "2"]


def test_queued_error_can_target_one_path(upstream: UpstreamServer, client: openai.OpenAI) -> None:
    upstream.queue_error(ErrorReply.server_error(), path="/v1/chat/completions")
    assert [model.id for model in client.models.list()] == list(MODELS)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=HELLO)


async def test_mid_stream_error_is_raised_by_the_sdk(
    upstream: UpstreamServer, async_client: openai.AsyncOpenAI
) -> None:
    upstream.queue_error(ErrorReply.server_error().mid_stream(after_chunks=2))
    stream = await async_client.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
    received: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "Echo: hello"
    assert raised.value.message == ErrorReply.server_error().message
    assert raised.value.body == ErrorReply.server_error().body()["error"]


async def test_mid_stream_error_on_the_wire_has_no_done(upstream: UpstreamServer) -> None:
    upstream.queue_error(ErrorReply.server_error().mid_stream(after_chunks=0))
    response = await raw_request(
        "POST", f"{upstream.base_url}/chat/completions", body=chat_body(stream=True)
    )
    assert response.status == 200
    role_chunk, error_event = response.sse_data()
    assert orjson.loads(role_chunk)["choices"][0]["delta"]["role"] == "assistant"
    assert orjson.loads(error_event) == ErrorReply.server_error().body()
    assert b"[DONE]" not in response.body


async def test_bad_json_is_a_400_with_openais_error_shape(upstream: UpstreamServer) -> None:
    response = await raw_request(
        "POST", f"{upstream.base_url}/chat/completions", body=b'{"model": "gpt-4o-mini",'
    )
    assert response.status == 400
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.headers["x-request-id"].startswith("req_")
    assert response.json() == {
        "error": {
            "message": (
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON. If you have trouble figuring out how to "
                "fix this, please contact us through our help center at help.openai.com.)"
            ),
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"messages": HELLO}, 400, None, None),
        ({"model": MODEL}, 400, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, 400, "messages", "empty_array"),
        ({"model": MODEL, "messages": "hello"}, 400, "messages", "invalid_type"),
        ({"model": MODEL, "messages": ["hello"]}, 400, "messages[0]", "invalid_type"),
        ({"model": "gpt-nope", "messages": HELLO}, 404, None, "model_not_found"),
    ],
)
async def test_invalid_requests_are_refused_like_openai(
    upstream: UpstreamServer, body: dict[str, Any], status: int, param: str | None, code: str | None
) -> None:
    response = await raw_request(
        "POST", f"{upstream.base_url}/chat/completions", body=orjson.dumps(body)
    )
    assert response.status == status
    error = response.json()["error"]
    assert list(error) == ["message", "type", "param", "code"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)


def test_unknown_model_is_a_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.chat.completions.create(model="gpt-nope", messages=HELLO)
    assert raised.value.code == "model_not_found"
    assert raised.value.message.endswith(
        "The model `gpt-nope` does not exist or you do not have access to it."
    )


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/v1/chat/completions"), ("POST", "/v1/audio/speech")]
)
async def test_unknown_routes_are_openais_invalid_url(
    upstream: UpstreamServer, method: str, path: str
) -> None:
    url = f"http://127.0.0.1:{upstream.port}{path}"
    response = await raw_request(method, url, body=chat_body() if method == "POST" else None)
    assert response.status == 404
    assert response.json()["error"]["message"] == f"Invalid URL ({method} {path})"


# -- models and the recorder -------------------------------------------------------------------


def test_models_are_listed(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert [model.id for model in models] == list(MODELS)
    assert {(model.object, model.owned_by) for model in models} == {("model", "system")}


def test_recorder_sees_the_authorization_header_and_the_body(
    upstream: UpstreamServer, client: openai.OpenAI
) -> None:
    client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0.5)

    (request,) = upstream.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.header("Authorization") == f"Bearer {API_KEY}"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert all(name == name.lower() for name in request.headers)
    assert orjson.loads(request.body) == request.json
    assert request.json == {"messages": HELLO, "model": MODEL, "temperature": 0.5}


async def test_recorder_keeps_refused_and_unparseable_requests(upstream: UpstreamServer) -> None:
    await raw_request("POST", f"{upstream.base_url}/chat/completions", body=b"{", api_key="bad")
    (request,) = upstream.requests
    assert request.body == b"{"
    assert request.json is None
    upstream.clear()
    assert upstream.requests == []


def test_server_without_a_key_or_model_list_serves_anyone_anything() -> None:
    with UpstreamServer() as server:
        assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
        with openai.OpenAI(api_key="whatever", base_url=server.base_url, max_retries=0) as sdk:
            completion = sdk.chat.completions.create(model="my-own-model", messages=HELLO)
            listed = [model.id for model in sdk.models.list()]
    assert completion.model == "my-own-model"
    assert listed == ["gpt-4o-mini", "gpt-4o"]
    with pytest.raises(RuntimeError):
        _ = server.port


# -- the command line --------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_command_line_serves_until_signalled_then_exits_cleanly(signum: signal.Signals) -> None:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.openai_upstream",
            "--port",
            str(port),
            "--api-key",
            API_KEY,
            "--chunk-delay-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        base_url = f"http://127.0.0.1:{port}/v1"
        with openai.OpenAI(api_key=API_KEY, base_url=base_url, max_retries=0) as sdk:
            stream = sdk.chat.completions.create(model=MODEL, messages=HELLO, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == "Echo: hello there world"
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=10)
    finally:
        stop_process(process)
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr
    assert b"listening on http://127.0.0.1:" in stderr
