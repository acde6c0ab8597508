"""The schema modules behind one interface, so the pipeline never names a provider's format.

Each module in this package speaks one wire schema with its own small differences (Gemini and
Bedrock carry the model in the URL, Ollama stamps `created_at` on every line, OpenAI streams
usage only when asked). A `WireSchema` wraps a module into the calls the stages make: decode and
encode requests, responses, streams and errors. Stages hold a `WireSchema` and call it; adding a
schema is one class here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Iterable
from typing import Final, Protocol

from gatez.errors import GatewayError
from gatez.translate import (
    anthropic_messages,
    bedrock_converse,
    gemini,
    ollama,
    openai_chat,
)
from gatez.translate.model import (
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    StreamEvent,
    kind_of_status,
)

JSON: Final = "application/json"


class StreamDecoder(Protocol):
    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by `chunk` (bytes cut anywhere)."""
        ...

    def finish(self) -> list[StreamEvent]:
        """The events of whatever was left after the last boundary."""
        ...


class StreamEncoder(Protocol):
    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The wire bytes of `events`, in order."""
        ...


class WireSchema(Protocol):
    """One wire schema, as the pipeline uses it."""

    # A stable id ("openai_chat") and a display name ("OpenAI Chat Completions").
    id: str
    name: str
    # The content type of a streamed answer.
    stream_content_type: str

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        """A client's request body → the model; `model`/`stream` are the URL's where the schema
        puts them there (Gemini, Bedrock), else ignored."""
        ...

    def encode_request(self, request: ChatRequest) -> bytes: ...

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse: ...

    def encode_response(self, response: ChatResponse) -> bytes: ...

    def stream_decoder(self, *, model: str) -> StreamDecoder: ...

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder: ...

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo: ...

    def encode_error(self, error: ErrorInfo) -> bytes: ...


class OpenAiChat:
    id = openai_chat.SCHEMA
    name = openai_chat.NAME
    stream_content_type = "text/event-stream"

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        return openai_chat.decode_request(raw)

    def encode_request(self, request: ChatRequest) -> bytes:
        return openai_chat.encode_request(request)

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse:
        return openai_chat.decode_response(raw)

    def encode_response(self, response: ChatResponse) -> bytes:
        return openai_chat.encode_response(response, created=int(time.time()))

    def stream_decoder(self, *, model: str) -> StreamDecoder:
        return openai_chat.StreamDecoder()

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder:
        return openai_chat.StreamEncoder(created=int(time.time()), include_usage=include_usage)

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo:
        return openai_chat.decode_error(status, raw, retry_after)

    def encode_error(self, error: ErrorInfo) -> bytes:
        return openai_chat.encode_error(error)


class AnthropicMessages:
    id = anthropic_messages.SCHEMA
    name = anthropic_messages.NAME
    stream_content_type = "text/event-stream"

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        return anthropic_messages.decode_request(raw)

    def encode_request(self, request: ChatRequest) -> bytes:
        return anthropic_messages.encode_request(request)

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse:
        return anthropic_messages.decode_response(raw)

    def encode_response(self, response: ChatResponse) -> bytes:
        return anthropic_messages.encode_response(response)

    def stream_decoder(self, *, model: str) -> StreamDecoder:
        return anthropic_messages.StreamDecoder()

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder:
        return anthropic_messages.StreamEncoder()

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo:
        return anthropic_messages.decode_error(status, raw, retry_after)

    def encode_error(self, error: ErrorInfo) -> bytes:
        return anthropic_messages.encode_error(error)


class Gemini:
    id = gemini.SCHEMA
    name = gemini.NAME
    stream_content_type = "text/event-stream"

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        return gemini.decode_request(raw, model=model, stream=stream)

    def encode_request(self, request: ChatRequest) -> bytes:
        return gemini.encode_request(request)

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse:
        return gemini.decode_response(raw)

    def encode_response(self, response: ChatResponse) -> bytes:
        return gemini.encode_response(response)

    def stream_decoder(self, *, model: str) -> StreamDecoder:
        return gemini.StreamDecoder()

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder:
        return gemini.StreamEncoder()

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo:
        return gemini.decode_error(status, raw, retry_after)

    def encode_error(self, error: ErrorInfo) -> bytes:
        return gemini.encode_error(error)


class Ollama:
    """Ollama's `/api/chat`, or with `generate` its `/api/generate` (a client-side schema only:
    the gateway always calls an Ollama provider's `/api/chat`)."""

    stream_content_type = "application/x-ndjson"

    def __init__(self, *, generate: bool = False) -> None:
        self._generate = generate
        self.id = f"{ollama.SCHEMA}_generate" if generate else ollama.SCHEMA
        self.name = f"{ollama.NAME} generate" if generate else ollama.NAME

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        if self._generate:
            return ollama.decode_generate_request(raw)
        return ollama.decode_request(raw)

    def encode_request(self, request: ChatRequest) -> bytes:
        if self._generate:
            return ollama.encode_generate_request(request)
        return ollama.encode_request(request)

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse:
        if self._generate:
            return ollama.decode_generate_response(raw)
        return ollama.decode_response(raw)

    def encode_response(self, response: ChatResponse) -> bytes:
        if self._generate:
            return ollama.encode_generate_response(response, created_at=_now_iso())
        return ollama.encode_response(response, created_at=_now_iso())

    def stream_decoder(self, *, model: str) -> StreamDecoder:
        return ollama.StreamDecoder(generate=self._generate)

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder:
        return ollama.StreamEncoder(created_at=_now_iso(), generate=self._generate)

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo:
        return ollama.decode_error(status, raw, retry_after)

    def encode_error(self, error: ErrorInfo) -> bytes:
        return ollama.encode_error(error)


class BedrockConverse:
    id = bedrock_converse.SCHEMA
    name = bedrock_converse.NAME
    stream_content_type = "application/vnd.amazon.eventstream"

    def decode_request(self, raw: bytes, *, model: str, stream: bool) -> ChatRequest:
        return bedrock_converse.decode_request(raw, model_id=model, stream=stream)

    def encode_request(self, request: ChatRequest) -> bytes:
        return bedrock_converse.encode_request(request)

    def decode_response(self, raw: bytes, *, model: str) -> ChatResponse:
        return bedrock_converse.decode_response(raw, model_id=model)

    def encode_response(self, response: ChatResponse) -> bytes:
        return bedrock_converse.encode_response(response)

    def stream_decoder(self, *, model: str) -> StreamDecoder:
        return bedrock_converse.StreamDecoder(model_id=model)

    def stream_encoder(self, *, include_usage: bool) -> StreamEncoder:
        return bedrock_converse.StreamEncoder()

    def decode_error(self, status: int, raw: bytes, retry_after: str | None) -> ErrorInfo:
        return bedrock_converse.decode_error(status, raw, retry_after)

    def encode_error(self, error: ErrorInfo) -> bytes:
        return bedrock_converse.encode_error(error)


def _now_iso() -> str:
    """Ollama's `created_at`: RFC 3339 with nanosecond-style fraction, UTC."""
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


OPENAI_CHAT: Final[WireSchema] = OpenAiChat()
ANTHROPIC_MESSAGES: Final[WireSchema] = AnthropicMessages()
GEMINI: Final[WireSchema] = Gemini()
OLLAMA_CHAT: Final[WireSchema] = Ollama()
OLLAMA_GENERATE: Final[WireSchema] = Ollama(generate=True)
BEDROCK_CONVERSE: Final[WireSchema] = BedrockConverse()


def error_headers(schema: WireSchema, error: ErrorInfo) -> tuple[tuple[str, str], ...]:
    """The headers that go with `schema.encode_error(error)`: Bedrock names the error's type in
    `x-amzn-ErrorType` (AWS SDKs raise e.g. `ThrottlingException` from it, and only a status
    without it); the other schemas say everything in the body."""
    if schema is BEDROCK_CONVERSE:
        return (("x-amzn-errortype", bedrock_converse.error_type(error)),)
    return ()


def error_info(error: GatewayError) -> ErrorInfo:
    """The gateway's own error as the model's, so it can be answered in any schema."""
    return ErrorInfo(
        status=error.http_status,
        kind=kind_of_status(error.http_status),
        message=error.public_message,
        retry_after_s=error.retry_after_s,
        code=error.reason,
    )


def with_model(request: ChatRequest, model: str) -> ChatRequest:
    """The request for another model name (the alias's upstream model)."""
    return dataclasses.replace(request, model=model)
