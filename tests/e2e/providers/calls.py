"""Each official SDK called through the gateway as its users call it — the gateway's base URL
and a Gatez key, nothing else — and what it reports, in one shape (`Answer`) to compare.

The model aliases (`ALIASES`) name one provider of each kind, and `EXPECTED` says what each
provider's fake answers: the session's fake OpenAI echoes the prompt, the replay fakes answer
their recordings (`tests/fakes/recordings/<kind>/`), whatever schema the client speaks.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anthropic
import boto3
import ollama
import openai
import pytest
from botocore.config import Config
from google import genai
from google.genai import types as genai_types

if TYPE_CHECKING:
    from types_boto3_bedrock_runtime import BedrockRuntimeClient


class Kind(enum.StrEnum):
    """A provider kind, named as the replay fakes name their recordings."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    OLLAMA = "ollama"
    BEDROCK = "bedrock"


class Sdk(enum.StrEnum):
    """A client SDK, by the API it speaks."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "google-genai"
    OLLAMA = "ollama"
    BEDROCK = "boto3-bedrock"


#: The provider kind whose schema each SDK speaks (its passthrough partner).
OWN_KIND: Final = {
    Sdk.OPENAI: Kind.OPENAI,
    Sdk.ANTHROPIC: Kind.ANTHROPIC,
    Sdk.GEMINI: Kind.GEMINI,
    Sdk.OLLAMA: Kind.OLLAMA,
    Sdk.BEDROCK: Kind.BEDROCK,
}

#: alias → (provider kind, upstream model). Models with a default price where one exists, so
#: the cost of a call is checked against `gatez.prices.DEFAULT_PRICES`.
ALIASES: Final[Mapping[str, tuple[Kind, str]]] = {
    "to-openai": (Kind.OPENAI, "gpt-4o-mini"),
    "to-anthropic": (Kind.ANTHROPIC, "claude-3-5-haiku-20241022"),
    "to-gemini": (Kind.GEMINI, "gemini-2.5-flash"),
    "to-ollama": (Kind.OLLAMA, "llama3.2"),
    "to-bedrock": (Kind.BEDROCK, "anthropic.claude-3-haiku-20240307-v1:0"),
}
ALIAS_OF: Final = {kind: alias for alias, (kind, _) in ALIASES.items()}

PROMPT: Final = "Hello"


@dataclass(frozen=True)
class Answer:
    """What an SDK reported: the text, its own stop reason, and the usage it was told."""

    text: str
    stop: str
    input_tokens: int | None
    output_tokens: int | None


@dataclass(frozen=True)
class Reply:
    """What a provider's fake answers: text and exact usage."""

    text: str
    input_tokens: int
    output_tokens: int


_ECHO: Final = Reply("Echo: Hello", 2, 2)  # the fake OpenAI: 1 word + 1, and "Echo:" "Hello"
_GEMINI: Final = Reply(
    "A large language model is a neural network trained on vast amounts of text.", 8, 16
)
_BEDROCK: Final = Reply("Hello! How can I help you today?", 12, 10)
#: (kind, streamed) → the reply, as recorded.
EXPECTED: Final[Mapping[tuple[Kind, bool], Reply]] = {
    (Kind.OPENAI, False): _ECHO,
    (Kind.OPENAI, True): _ECHO,
    (Kind.ANTHROPIC, False): Reply("Hi! My name is Claude.", 2095, 503),
    (Kind.ANTHROPIC, True): Reply("Hello!", 25, 15),
    (Kind.GEMINI, False): _GEMINI,
    (Kind.GEMINI, True): _GEMINI,
    (Kind.OLLAMA, False): Reply("Hello! How are you today?", 26, 298),
    (Kind.OLLAMA, True): Reply("The sky is blue.", 26, 282),
    (Kind.BEDROCK, False): _BEDROCK,
    (Kind.BEDROCK, True): _BEDROCK,
}

#: Each SDK's own word for a natural end of the answer.
NORMAL_STOP: Final = {
    Sdk.OPENAI: "stop",
    Sdk.ANTHROPIC: "end_turn",
    Sdk.GEMINI: "STOP",
    Sdk.OLLAMA: "stop",
    Sdk.BEDROCK: "end_turn",
}


@dataclass(frozen=True)
class Gateway:
    """Where clients reach the gateway: plain HTTP, and HTTPS with the stack's own CA."""

    url: str
    tls_url: str
    ca_file: str


@dataclass
class Clients:
    """Builds each SDK's client for a Gatez key (boto3's once per key: it is slow to build)."""

    gateway: Gateway
    monkeypatch: pytest.MonkeyPatch
    _bedrock: dict[str, BedrockRuntimeClient] = field(default_factory=dict)

    def openai_client(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0)

    def async_openai_client(self, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.gateway.url}/v1", api_key=key, max_retries=0)

    def anthropic_client(self, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gateway.url, api_key=key, max_retries=0)

    def async_anthropic_client(self, key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.gateway.url, api_key=key, max_retries=0)

    def gemini_client(self, key: str) -> genai.Client:
        # The SDK's default API version (v1 in google-genai 3.x); the gateway serves v1beta too.
        return genai.Client(
            api_key=key,
            http_options=genai_types.HttpOptions(
                base_url=self.gateway.url, retry_options=genai_types.HttpRetryOptions(attempts=1)
            ),
        )

    def ollama_client(self, key: str) -> ollama.Client:
        return ollama.Client(host=self.gateway.url, headers={"authorization": f"Bearer {key}"})

    def async_ollama_client(self, key: str) -> ollama.AsyncClient:
        return ollama.AsyncClient(host=self.gateway.url, headers={"authorization": f"Bearer {key}"})

    def bedrock_client(self, key: str) -> BedrockRuntimeClient:
        """boto3's Bedrock Runtime client, with the Gatez key as its Bedrock API key (which
        botocore sends as a bearer token, over HTTPS only)."""
        if key not in self._bedrock:
            self.monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", key)
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
                self.monkeypatch.delenv(name, raising=False)
            self._bedrock[key] = boto3.Session().client(
                "bedrock-runtime",
                region_name="us-east-1",
                endpoint_url=self.gateway.tls_url,
                verify=self.gateway.ca_file,
                config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
            )
        return self._bedrock[key]

    # -- one call, as each SDK's users write it ---------------------------------------------

    def ask(self, sdk: Sdk, key: str, alias: str, *, stream: bool) -> Answer:
        """`PROMPT` to model `alias` through `sdk`, plain or streamed."""
        if sdk is Sdk.OPENAI:
            return _ask_openai(self.openai_client(key), alias, stream)
        if sdk is Sdk.ANTHROPIC:
            return _ask_anthropic(self.anthropic_client(key), alias, stream)
        if sdk is Sdk.GEMINI:
            return _ask_gemini(self.gemini_client(key), alias, stream)
        if sdk is Sdk.OLLAMA:
            return _ask_ollama(self.ollama_client(key), alias, stream)
        return _ask_bedrock(self.bedrock_client(key), alias, stream)

    async def ask_async(self, sdk: Sdk, key: str, alias: str, *, stream: bool) -> Answer:
        """As `ask`, with the SDK's async client (boto3 has none)."""
        if sdk is Sdk.OPENAI:
            async with self.async_openai_client(key) as client:
                return await _ask_async_openai(client, alias, stream)
        if sdk is Sdk.ANTHROPIC:
            async with self.async_anthropic_client(key) as client:
                return await _ask_async_anthropic(client, alias, stream)
        if sdk is Sdk.GEMINI:
            return await _ask_async_gemini(self.gemini_client(key), alias, stream)
        if sdk is Sdk.OLLAMA:
            return await _ask_async_ollama(self.async_ollama_client(key), alias, stream)
        raise ValueError(f"{sdk} has no async client")


MESSAGES: Final[list[Any]] = [{"role": "user", "content": PROMPT}]
BEDROCK_MESSAGES: Final[list[Any]] = [{"role": "user", "content": [{"text": PROMPT}]}]


def _ask_openai(client: openai.OpenAI, alias: str, stream: bool) -> Answer:
    if not stream:
        reply = client.chat.completions.create(model=alias, messages=MESSAGES)
        assert reply.usage is not None
        return Answer(
            reply.choices[0].message.content or "",
            reply.choices[0].finish_reason,
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
    chunks = list(
        client.chat.completions.create(
            model=alias, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    return _openai_chunks(chunks)


async def _ask_async_openai(client: openai.AsyncOpenAI, alias: str, stream: bool) -> Answer:
    if not stream:
        reply = await client.chat.completions.create(model=alias, messages=MESSAGES)
        assert reply.usage is not None
        return Answer(
            reply.choices[0].message.content or "",
            reply.choices[0].finish_reason,
            reply.usage.prompt_tokens,
            reply.usage.completion_tokens,
        )
    chunks = [
        chunk
        async for chunk in await client.chat.completions.create(
            model=alias, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    ]
    return _openai_chunks(chunks)


def _openai_chunks(chunks: list[Any]) -> Answer:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    (stop,) = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    # With include_usage, only the last chunk has usage, and no choices.
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == [], chunks[-1]
    assert all(c.usage is None for c in chunks[:-1])
    return Answer(text, stop, usage.prompt_tokens, usage.completion_tokens)


def _anthropic_message(message: anthropic.types.Message) -> Answer:
    text = "".join(block.text for block in message.content if block.type == "text")
    return Answer(
        text,
        str(message.stop_reason),
        message.usage.input_tokens,
        message.usage.output_tokens,
    )


def _ask_anthropic(client: anthropic.Anthropic, alias: str, stream: bool) -> Answer:
    if not stream:
        return _anthropic_message(
            client.messages.create(model=alias, max_tokens=256, messages=MESSAGES)
        )
    with client.messages.stream(model=alias, max_tokens=256, messages=MESSAGES) as events:
        pieces = "".join(events.text_stream)
        answer = _anthropic_message(events.get_final_message())
    assert pieces == answer.text
    return answer


async def _ask_async_anthropic(
    client: anthropic.AsyncAnthropic, alias: str, stream: bool
) -> Answer:
    if not stream:
        return _anthropic_message(
            await client.messages.create(model=alias, max_tokens=256, messages=MESSAGES)
        )
    async with client.messages.stream(model=alias, max_tokens=256, messages=MESSAGES) as events:
        pieces = "".join([piece async for piece in events.text_stream])
        answer = _anthropic_message(await events.get_final_message())
    assert pieces == answer.text
    return answer


def _gemini_responses(responses: list[genai_types.GenerateContentResponse]) -> Answer:
    text = "".join(response.text or "" for response in responses)
    last = responses[-1]
    assert last.candidates is not None and last.candidates[0].finish_reason is not None
    usage = last.usage_metadata
    assert usage is not None
    return Answer(
        text,
        last.candidates[0].finish_reason.value,
        usage.prompt_token_count,
        usage.candidates_token_count,
    )


def _ask_gemini(client: genai.Client, alias: str, stream: bool) -> Answer:
    if not stream:
        return _gemini_responses([client.models.generate_content(model=alias, contents=PROMPT)])
    return _gemini_responses(
        list(client.models.generate_content_stream(model=alias, contents=PROMPT))
    )


async def _ask_async_gemini(client: genai.Client, alias: str, stream: bool) -> Answer:
    models = client.aio.models
    if not stream:
        return _gemini_responses([await models.generate_content(model=alias, contents=PROMPT)])
    return _gemini_responses(
        [r async for r in await models.generate_content_stream(model=alias, contents=PROMPT)]
    )


def _ollama_parts(parts: list[ollama.ChatResponse]) -> Answer:
    text = "".join(part.message.content or "" for part in parts)
    last = parts[-1]
    assert last.done is True and all(not part.done for part in parts[:-1])
    return Answer(text, str(last.done_reason), last.prompt_eval_count, last.eval_count)


def _ask_ollama(client: ollama.Client, alias: str, stream: bool) -> Answer:
    if not stream:
        return _ollama_parts([client.chat(model=alias, messages=MESSAGES)])
    return _ollama_parts(list(client.chat(model=alias, messages=MESSAGES, stream=True)))


async def _ask_async_ollama(client: ollama.AsyncClient, alias: str, stream: bool) -> Answer:
    if not stream:
        return _ollama_parts([await client.chat(model=alias, messages=MESSAGES)])
    return _ollama_parts(
        [part async for part in await client.chat(model=alias, messages=MESSAGES, stream=True)]
    )


def _ask_bedrock(client: BedrockRuntimeClient, alias: str, stream: bool) -> Answer:
    if not stream:
        reply = client.converse(modelId=alias, messages=BEDROCK_MESSAGES)
        text = "".join(block.get("text", "") for block in reply["output"]["message"]["content"])
        usage = reply["usage"]
        return Answer(text, reply["stopReason"], usage["inputTokens"], usage["outputTokens"])
    events = list(client.converse_stream(modelId=alias, messages=BEDROCK_MESSAGES)["stream"])
    text = "".join(
        event["contentBlockDelta"]["delta"].get("text", "")
        for event in events
        if "contentBlockDelta" in event
    )
    (stop,) = [event["messageStop"]["stopReason"] for event in events if "messageStop" in event]
    (metadata,) = [event["metadata"] for event in events if "metadata" in event]
    usage = metadata["usage"]
    return Answer(text, stop, usage["inputTokens"], usage["outputTokens"])
