"""The replay server's recordings are what each provider's official SDK expects.

Every test drives the replay server directly with the provider's own SDK (no gateway), and
asserts the values the SDK reports — text, tool input, stop reason, usage — against the
recording itself, so a recording an SDK misreads fails here before a gateway test relies on it.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anthropic
import boto3
import ollama
import pytest
from botocore.config import Config
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from tests.fakes.replay import (
    Recording,
    RecordingError,
    ReplayServer,
    encode_event_stream_message,
    load_recording,
    load_recordings,
)
from tests.support.tls import CertificateFiles, LocalCertificateAuthority

if TYPE_CHECKING:
    from types_boto3_bedrock_runtime import BedrockRuntimeClient
    from types_boto3_bedrock_runtime.type_defs import MessageTypeDef

API_KEY = "test-provider-key"
ANTHROPIC_MODEL = "claude-sonnet-4-20250514"
GEMINI_MODEL = "gemini-2.0-flash"
OLLAMA_MODEL = "llama3.2"
BEDROCK_MODEL = "anthropic.claude-3-haiku-20240307-v1:0"
BEDROCK_MESSAGES: list[MessageTypeDef] = [{"role": "user", "content": [{"text": "Hello"}]}]


def body_of(name: str) -> Any:
    """A recording's JSON body (for the values an SDK must report)."""
    return load_recording(name).body


def chunks_of(name: str) -> tuple[Any, ...]:
    chunks = load_recording(name).chunks
    assert chunks is not None
    return chunks


@pytest.fixture(scope="module")
def anthropic_server() -> Iterator[ReplayServer]:
    with ReplayServer("anthropic", api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def gemini_server() -> Iterator[ReplayServer]:
    with ReplayServer("gemini", api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def ollama_server() -> Iterator[ReplayServer]:
    with ReplayServer("ollama") as server:
        yield server


@pytest.fixture(scope="module")
def certificate_authority(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificateAuthority:
    return LocalCertificateAuthority(tmp_path_factory.mktemp("replay-ca"))


@pytest.fixture(scope="module")
def server_certificate(certificate_authority: LocalCertificateAuthority) -> CertificateFiles:
    return certificate_authority.issue("replay", ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="module")
def bedrock_server(server_certificate: CertificateFiles) -> Iterator[ReplayServer]:
    # HTTPS because boto3 sends a bearer token (a Bedrock API key) over HTTPS only.
    with ReplayServer(
        "bedrock",
        api_key=API_KEY,
        certfile=server_certificate.cert_file,
        keyfile=server_certificate.key_file,
    ) as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_servers(request: pytest.FixtureRequest) -> None:
    for name in ("anthropic_server", "gemini_server", "ollama_server", "bedrock_server"):
        if name in request.fixturenames:
            server: ReplayServer = request.getfixturevalue(name)
            server.clear()


# -- Anthropic ---------------------------------------------------------------------------------


def anthropic_client(server: ReplayServer, api_key: str = API_KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=api_key, base_url=server.base_url, max_retries=0)


def test_anthropic_message(anthropic_server: ReplayServer) -> None:
    recorded = body_of("anthropic/messages")
    message = anthropic_client(anthropic_server).messages.create(
        model=ANTHROPIC_MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.model == ANTHROPIC_MODEL  # the request's model, substituted
    assert message.content[0].type == "text"
    assert message.content[0].text == recorded["content"][0]["text"]
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == recorded["usage"]["input_tokens"]
    assert message.usage.output_tokens == recorded["usage"]["output_tokens"]
    (request,) = anthropic_server.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    # The Python SDK 2.x sends `api_key` as a bearer token, not in `x-api-key`.
    assert request.header("authorization") == f"Bearer {API_KEY}"
    assert request.header("anthropic-version") is not None
    assert request.json["messages"] == [{"role": "user", "content": "Hello"}]


def test_anthropic_stream(anthropic_server: ReplayServer) -> None:
    chunks = chunks_of("anthropic/messages_stream")
    with anthropic_client(anthropic_server).messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=1024, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        pieces = list(stream.text_stream)
        message = stream.get_final_message()
    assert pieces == ["Hello", "!"]
    assert message.model == ANTHROPIC_MODEL
    assert message.stop_reason == "end_turn"
    # Anthropic splits usage: input in message_start, the output total in message_delta.
    assert message.usage.input_tokens == chunks[0]["data"]["message"]["usage"]["input_tokens"]
    assert message.usage.output_tokens == chunks[-2]["data"]["usage"]["output_tokens"] == 15
    assert anthropic_server.requests[0].json["stream"] is True


def test_anthropic_stream_tool_use(anthropic_server: ReplayServer) -> None:
    weather_tool: anthropic.types.ToolParam = {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "input_schema": {"type": "object", "properties": {"location": {"type": "string"}}},
    }
    with anthropic_client(anthropic_server).messages.stream(
        model=ANTHROPIC_MODEL,
        max_tokens=1024,
        tools=[weather_tool],
        messages=[{"role": "user", "content": "What is the weather like in San Francisco?"}],
    ) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    text, tool_use = message.content
    assert text.type == "text"
    assert text.text == "Okay, let's check the weather for San Francisco, CA:"
    assert tool_use.type == "tool_use"
    assert tool_use.name == "get_weather"
    assert tool_use.id == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    # The input_json_delta pieces, joined and parsed by the SDK.
    assert tool_use.input == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    assert (message.usage.input_tokens, message.usage.output_tokens) == (472, 89)


async def test_anthropic_async_plain_and_stream(anthropic_server: ReplayServer) -> None:
    client = anthropic.AsyncAnthropic(
        api_key=API_KEY, base_url=anthropic_server.base_url, max_retries=0
    )
    message = await client.messages.create(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    )
    assert message.usage.output_tokens == body_of("anthropic/messages")["usage"]["output_tokens"]
    async with client.messages.stream(
        model=ANTHROPIC_MODEL, max_tokens=64, messages=[{"role": "user", "content": "Hello"}]
    ) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello!"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (25, 15)
    await client.close()


def test_anthropic_models_list(anthropic_server: ReplayServer) -> None:
    models = list(anthropic_client(anthropic_server).models.list())
    assert [model.id for model in models] == [
        entry["id"] for entry in body_of("anthropic/models")["data"]
    ]
    assert models[0].display_name == "Claude Sonnet 4"
    assert anthropic_server.requests[0].path == "/v1/models"


@pytest.mark.parametrize(
    ("recording", "exception", "status"),
    [
        ("anthropic/errors/overloaded", anthropic.OverloadedError, 529),
        ("anthropic/errors/rate_limit", anthropic.RateLimitError, 429),
        ("anthropic/errors/api_error", anthropic.InternalServerError, 500),
    ],
)
def test_anthropic_queued_error(
    anthropic_server: ReplayServer, recording: str, exception: type[Exception], status: int
) -> None:
    anthropic_server.queue_error(recording)
    client = anthropic_client(anthropic_server)
    with pytest.raises(exception) as raised:
        client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
        )
    error = raised.value
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == status
    assert isinstance(error.body, dict)
    assert error.body["error"] == body_of(recording)["error"]
    if status == 429:
        assert error.response.headers["retry-after"] == "7"
    # One-off: the next request gets the recording again.
    assert (
        client.messages.create(
            model=ANTHROPIC_MODEL, max_tokens=8, messages=[{"role": "user", "content": "Hello"}]
        ).stop_reason
        == "end_turn"
    )


def test_anthropic_wrong_key_is_anthropics_authentication_error(
    anthropic_server: ReplayServer,
) -> None:
    with pytest.raises(anthropic.AuthenticationError) as raised:
        anthropic_client(anthropic_server, api_key="wrong").models.list()
    assert raised.value.status_code == 401
    assert isinstance(raised.value.body, dict)
    assert raised.value.body["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"x-api-key": API_KEY, "anthropic-version": "2023-06-01"}, 200),
        ({"authorization": f"Bearer {API_KEY}", "anthropic-version": "2023-06-01"}, 200),
        ({"x-api-key": API_KEY}, 401),
        ({"x-api-key": "wrong", "anthropic-version": "2023-06-01"}, 401),
        ({"anthropic-version": "2023-06-01"}, 401),
    ],
    ids=["x-api-key", "bearer", "no-version", "wrong-key", "no-key"],
)
def test_anthropic_credential_check(
    anthropic_server: ReplayServer, headers: dict[str, str], status: int
) -> None:
    import httpx

    response = httpx.get(f"{anthropic_server.base_url}/v1/models", headers=headers)
    assert response.status_code == status


# -- Gemini ------------------------------------------------------------------------------------


def gemini_client(server: ReplayServer) -> genai.Client:
    # google-genai 3.x calls `v1` by default; the recordings follow the `v1beta` reference.
    return genai.Client(
        api_key=API_KEY,
        http_options=genai_types.HttpOptions(base_url=server.base_url, api_version="v1beta"),
    )


def test_gemini_generate_content(gemini_server: ReplayServer) -> None:
    recorded = body_of("gemini/generate_content")
    # The client must outlive the call: a collected genai.Client closes its HTTP client.
    client = gemini_client(gemini_server)
    response = client.models.generate_content(
        model=GEMINI_MODEL, contents="What is a large language model?"
    )
    assert response.text == recorded["candidates"][0]["content"]["parts"][0]["text"]
    assert response.model_version == GEMINI_MODEL
    usage = response.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == recorded["usageMetadata"]["promptTokenCount"]
    assert usage.candidates_token_count == recorded["usageMetadata"]["candidatesTokenCount"]
    assert usage.total_token_count == recorded["usageMetadata"]["totalTokenCount"]
    (request,) = gemini_server.requests
    assert request.path == f"/v1beta/models/{GEMINI_MODEL}:generateContent"
    assert request.header("x-goog-api-key") == API_KEY


def test_gemini_generate_content_stream(gemini_server: ReplayServer) -> None:
    chunks = chunks_of("gemini/stream_generate_content")
    client = gemini_client(gemini_server)
    responses = list(
        client.models.generate_content_stream(
            model=GEMINI_MODEL, contents="What is a large language model?"
        )
    )
    assert len(responses) == len(chunks)
    assert "".join(response.text or "" for response in responses) == (
        "A large language model is a neural network trained on vast amounts of text."
    )
    last = responses[-1]
    assert last.candidates is not None
    assert last.candidates[0].finish_reason == genai_types.FinishReason.STOP
    assert last.usage_metadata is not None
    assert last.usage_metadata.candidates_token_count == 16
    assert last.usage_metadata.total_token_count == 24
    (request,) = gemini_server.requests
    assert request.path.endswith(":streamGenerateContent")
    assert request.query_string == "alt=sse"


async def test_gemini_async(gemini_server: ReplayServer) -> None:
    sync_client = gemini_client(gemini_server)
    client = sync_client.aio
    response = await client.models.generate_content(model=GEMINI_MODEL, contents="Hi")
    assert response.usage_metadata is not None
    assert response.usage_metadata.prompt_token_count == 8
    texts = [
        chunk.text
        async for chunk in await client.models.generate_content_stream(
            model=GEMINI_MODEL, contents="Hi"
        )
    ]
    assert texts[0] == "A large"


def test_gemini_models_list(gemini_server: ReplayServer) -> None:
    client = gemini_client(gemini_server)
    models = list(client.models.list())
    assert [model.name for model in models] == [
        "models/gemini-2.0-flash",
        "models/gemini-2.5-flash",
    ]
    assert models[0].input_token_limit == 1048576
    assert gemini_server.requests[0].path == "/v1beta/models"


def test_gemini_key_in_query_is_accepted(gemini_server: ReplayServer) -> None:
    import httpx

    url = f"{gemini_server.base_url}/v1beta/models/{GEMINI_MODEL}:generateContent"
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    accepted = httpx.post(url, params={"key": API_KEY}, json=body)
    assert accepted.status_code == 200
    refused = httpx.post(url, params={"key": "wrong"}, json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"


def test_gemini_queued_error(gemini_server: ReplayServer) -> None:
    gemini_server.queue_error("gemini/errors/rate_limit")
    client = gemini_client(gemini_server)
    with pytest.raises(genai_errors.ClientError) as raised:
        client.models.generate_content(model=GEMINI_MODEL, contents="Hi")
    assert raised.value.code == 429
    assert raised.value.status == "RESOURCE_EXHAUSTED"


# -- Ollama ------------------------------------------------------------------------------------


def test_ollama_chat(ollama_server: ReplayServer) -> None:
    recorded = body_of("ollama/chat")
    response = ollama.Client(host=ollama_server.base_url).chat(
        model=OLLAMA_MODEL, messages=[{"role": "user", "content": "Hello"}]
    )
    assert response.model == OLLAMA_MODEL
    assert response.message.content == recorded["message"]["content"]
    assert response.done is True
    assert response.prompt_eval_count == recorded["prompt_eval_count"]
    assert response.eval_count == recorded["eval_count"]
    assert ollama_server.requests[0].json["stream"] is False


def test_ollama_chat_stream(ollama_server: ReplayServer) -> None:
    final_chunk = chunks_of("ollama/chat_stream")[-1]
    parts = list(
        ollama.Client(host=ollama_server.base_url).chat(
            model=OLLAMA_MODEL, messages=[{"role": "user", "content": "Why?"}], stream=True
        )
    )
    assert "".join(part.message.content or "" for part in parts) == "The sky is blue."
    assert [part.done for part in parts] == [False] * 5 + [True]
    assert parts[-1].done_reason == "stop"
    assert parts[-1].prompt_eval_count == final_chunk["prompt_eval_count"]
    assert parts[-1].eval_count == final_chunk["eval_count"]


def test_ollama_generate_plain_and_stream(ollama_server: ReplayServer) -> None:
    client = ollama.Client(host=ollama_server.base_url)
    response = client.generate(model=OLLAMA_MODEL, prompt="Why is the sky blue?")
    assert response.response == body_of("ollama/generate")["response"]
    assert (response.prompt_eval_count, response.eval_count) == (26, 290)
    parts = list(client.generate(model=OLLAMA_MODEL, prompt="Why?", stream=True))
    assert "".join(part.response or "" for part in parts) == "The sky is blue."
    assert parts[-1].eval_count == chunks_of("ollama/generate_stream")[-1]["eval_count"]


async def test_ollama_async_chat_stream(ollama_server: ReplayServer) -> None:
    client = ollama.AsyncClient(host=ollama_server.base_url)
    parts = [
        part
        async for part in await client.chat(
            model=OLLAMA_MODEL, messages=[{"role": "user", "content": "Why?"}], stream=True
        )
    ]
    assert parts[-1].done is True
    assert parts[-1].eval_count == 282


def test_ollama_list(ollama_server: ReplayServer) -> None:
    listed = ollama.Client(host=ollama_server.base_url).list()
    assert [model.model for model in listed.models] == ["gemma3", "llama3.2:latest"]
    assert listed.models[0].details is not None
    assert listed.models[0].details.parameter_size == "4.3B"


def test_ollama_stream_is_separate_http_chunks_of_ndjson(ollama_server: ReplayServer) -> None:
    import httpx

    with httpx.stream(
        "POST",
        f"{ollama_server.base_url}/api/chat",
        json={"model": OLLAMA_MODEL, "messages": [{"role": "user", "content": "Why?"}]},
    ) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    # No `stream` in the body: Ollama streams by default, and so does the replay.
    assert len(lines) == 6
    assert lines[-1]["done"] is True


# -- Bedrock -----------------------------------------------------------------------------------


def bedrock_client(
    server: ReplayServer, ca_file: Path, monkeypatch: pytest.MonkeyPatch, *, bearer: str | None
) -> BedrockRuntimeClient:
    if bearer is None:
        monkeypatch.delenv("AWS_BEARER_TOKEN_BEDROCK", raising=False)
    else:
        monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", bearer)
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=server.base_url,
        # Explicit dummy credentials: no slow lookup of the instance metadata service.
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        verify=str(ca_file),
        # One attempt: a queued error must reach the test, not be retried away.
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.mark.parametrize("bearer", [API_KEY, None], ids=["api-key", "sigv4"])
def test_bedrock_converse(
    bedrock_server: ReplayServer,
    certificate_authority: LocalCertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
    bearer: str | None,
) -> None:
    recorded = body_of("bedrock/converse")
    client = bedrock_client(
        bedrock_server, certificate_authority.cert_file, monkeypatch, bearer=bearer
    )
    response = client.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)
    assert (
        response["output"]["message"]["content"][0]["text"]
        == (recorded["output"]["message"]["content"][0]["text"])
    )
    assert response["stopReason"] == "end_turn"
    assert response["usage"] == recorded["usage"]
    assert response["metrics"] == recorded["metrics"]
    (request,) = bedrock_server.requests
    assert request.path == f"/model/{BEDROCK_MODEL}/converse"
    authorization = request.header("authorization") or ""
    if bearer is None:
        assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    else:
        assert authorization == f"Bearer {API_KEY}"


def test_bedrock_converse_stream(
    bedrock_server: ReplayServer,
    certificate_authority: LocalCertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = bedrock_client(
        bedrock_server, certificate_authority.cert_file, monkeypatch, bearer=API_KEY
    )
    response = client.converse_stream(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)
    events = list(response["stream"])
    assert [next(iter(event)) for event in events] == [
        chunk["event"] for chunk in chunks_of("bedrock/converse_stream")
    ]
    text = "".join(
        event["contentBlockDelta"]["delta"]["text"]
        for event in events
        if "contentBlockDelta" in event
    )
    assert text == "Hello! How can I help you today?"
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"] == {
        "inputTokens": 12,
        "outputTokens": 10,
        "totalTokens": 22,
    }
    assert bedrock_server.requests[0].path == f"/model/{BEDROCK_MODEL}/converse-stream"


def test_bedrock_errors(
    bedrock_server: ReplayServer,
    certificate_authority: LocalCertificateAuthority,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = bedrock_client(
        bedrock_server, certificate_authority.cert_file, monkeypatch, bearer=API_KEY
    )
    bedrock_server.queue_error("bedrock/errors/throttling")
    with pytest.raises(client.exceptions.ThrottlingException):
        client.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)
    wrong = bedrock_client(
        bedrock_server, certificate_authority.cert_file, monkeypatch, bearer="wrong"
    )
    with pytest.raises(ClientError) as raised:
        wrong.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)
    assert raised.value.response["Error"]["Code"] == "AccessDeniedException"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


# -- the server and recordings themselves ------------------------------------------------------


def test_event_stream_frames_decode_with_botocore() -> None:
    frame = encode_event_stream_message(
        {":event-type": "messageStart", ":message-type": "event"}, b'{"role":"assistant"}'
    )
    buffer = EventStreamBuffer()
    # Fed in two pieces: the decoder must find the frame boundary itself.
    buffer.add_data(frame[:7])
    buffer.add_data(frame[7:])
    (message,) = list(buffer)
    # to_response_dict(): botocore-stubs type `EventStreamMessage.headers` as an int.
    decoded = message.to_response_dict()
    assert decoded["headers"] == {":event-type": "messageStart", ":message-type": "event"}
    assert decoded["body"] == b'{"role":"assistant"}'
    assert decoded["status_code"] == 200


@pytest.mark.parametrize("provider", ["anthropic", "gemini", "ollama", "bedrock"])
def test_every_recording_loads_and_names_its_source(provider: str) -> None:
    recordings = load_recordings(provider)
    assert recordings
    for path in sorted((Path(__file__).parent / "recordings" / provider).rglob("*.json")):
        raw = json.loads(path.read_text())
        assert raw["source"].startswith("https://"), path
        Recording.load(path)


def test_a_malformed_recording_is_refused_with_its_name() -> None:
    with pytest.raises(RecordingError, match="broken: malformed"):
        Recording.from_json(
            "broken",
            {"request": {"method": "GET"}, "response": {"status": 200, "headers": {}, "body": {}}},
        )
    with pytest.raises(RecordingError, match="unknown framing"):
        Recording.from_json(
            "odd",
            {
                "request": {"method": "GET", "path": "/"},
                "response": {"status": 200, "headers": {}, "stream": {"framing": "xml"}},
            },
        )


def test_unrecorded_request_is_a_plain_404(ollama_server: ReplayServer) -> None:
    import httpx

    response = httpx.get(f"{ollama_server.base_url}/api/ps")
    assert response.status_code == 404
    assert response.json() == {"replay_error": "no ollama recording for GET /api/ps"}
    assert ollama_server.requests[0].path == "/api/ps"


def test_unknown_provider_is_refused() -> None:
    with pytest.raises(FileNotFoundError):
        ReplayServer("nonesuch")


async def http_chunks(
    url: str,
    json_body: Any,
    headers: dict[str, str],
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[str, list[bytes]]:
    """The response's content type and body, split exactly at its HTTP chunk boundaries."""
    import aiohttp

    chunks: list[bytes] = []
    pending = b""
    connector = aiohttp.TCPConnector(ssl=ssl_context if ssl_context is not None else True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, json=json_body, headers=headers) as response,
    ):
        async for data, end_of_http_chunk in response.content.iter_chunks():
            pending += data
            # The last-chunk (`0\r\n\r\n`) may come as an empty chunk of its own.
            if end_of_http_chunk and pending:
                chunks.append(pending)
                pending = b""
        content_type = response.headers["content-type"]
    assert pending == b""
    return content_type, chunks


async def test_each_stream_chunk_is_one_http_chunk(anthropic_server: ReplayServer) -> None:
    content_type, chunks = await http_chunks(
        f"{anthropic_server.base_url}/v1/messages",
        {"model": ANTHROPIC_MODEL, "max_tokens": 8, "stream": True, "messages": []},
        {"x-api-key": API_KEY, "anthropic-version": "2023-06-01"},
    )
    recorded = chunks_of("anthropic/messages_stream")
    assert content_type == "text/event-stream; charset=utf-8"
    assert len(chunks) == len(recorded)
    assert chunks[0].startswith(b"event: message_start\ndata: {")
    assert ANTHROPIC_MODEL.encode() in chunks[0]  # {{model}} substituted
    assert all(chunk.endswith(b"\n\n") for chunk in chunks)


async def test_event_stream_chunks_are_whole_frames(
    bedrock_server: ReplayServer, certificate_authority: LocalCertificateAuthority
) -> None:
    content_type, chunks = await http_chunks(
        f"{bedrock_server.base_url}/model/{BEDROCK_MODEL}/converse-stream",
        {"messages": []},
        {"authorization": f"Bearer {API_KEY}"},
        ssl.create_default_context(cafile=str(certificate_authority.cert_file)),
    )
    assert content_type == "application/vnd.amazon.eventstream"
    event_types = []
    for chunk in chunks:
        buffer = EventStreamBuffer()
        buffer.add_data(chunk)
        (message,) = list(buffer)  # exactly one whole frame per HTTP chunk
        event_types.append(message.to_response_dict()["headers"][":event-type"])
    assert event_types == [chunk["event"] for chunk in chunks_of("bedrock/converse_stream")]


async def test_chunk_delay_paces_the_stream() -> None:
    import time

    delay_s = 0.02
    with ReplayServer("ollama", chunk_delay_s=delay_s) as server:
        client = ollama.AsyncClient(host=server.base_url)
        started = time.monotonic()
        arrivals = [
            time.monotonic() - started
            async for _ in await client.chat(model=OLLAMA_MODEL, messages=[], stream=True)
        ]
    assert len(arrivals) == 6
    # No delay before the first chunk; one before each of the other five.
    assert arrivals[-1] - arrivals[0] >= 5 * delay_s * 0.9
