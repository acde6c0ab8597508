"""Usage metering: token counts from the provider's own report, streamed or not, any schema.

It reads the shared model that `DecodeResponse` made of the provider's answer: a whole answer's
`usage`, or a stream's usage events — OpenAI's final usage chunk (asked for by model routing),
Anthropic's split `message_start` / `message_delta`, Gemini's `usageMetadata`, Bedrock's
`metadata` event, Ollama's final line — merged as they come (reports are cumulative).

When the provider's usage never comes — the client hung up mid-stream, the stream broke off, a
provider that does not report it — the call is still metered: when the exchange is over, the
meter counts the request's prompt and the text generated so far with OpenAI's tokenizer
(`TokenCounter`), and marks the usage as estimated. The generated text is kept as it streams, up
to `KEPT_OUTPUT_CHARS`; a longer output is counted from that part in proportion to its length.

OpenAI's Responses and Embeddings APIs pass through untranslated; their usage is read from the
body (or the event that ends a Responses stream: `response.completed`, or `response.incomplete`
when `max_output_tokens` cut it, or `response.failed`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeGuard

import orjson

from extproc.token_count import TokenCounter
from gatez.pipeline import CONTINUE, Flow, LlmCall, Stage, TokenUsage, Verdict
from gatez.sse import event_data
from gatez.translate.model import (
    ChatResponse,
    MessageDelta,
    MessageStart,
    StreamError,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    UsageUpdate,
    merge_usage,
)
from gatez.translate.schemas import OPENAI_CHAT

# Token counts are uint32 columns; a provider's larger (or negative) figure is clamped.
MAX_TOKENS: Final = 2**32 - 1
MODEL_NAME_LIMIT: Final = 256
# Generated text kept to estimate from (about 16k tokens).
KEPT_OUTPUT_CHARS: Final = 64 * 1024
# The events that end a Responses stream; each carries the final response with its usage.
RESPONSES_LAST_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)
_LAST_EVENT_MARKERS: Final = tuple(name.encode() for name in RESPONSES_LAST_EVENTS)


class UsageMeter(Stage):
    """Reads token usage into `flow.llm.usage`, and estimates it when the provider's report
    never comes."""

    def __init__(self, tokens: TokenCounter | None = None) -> None:
        self._tokens = tokens or TokenCounter()

    def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        if llm.passthrough or (llm.undecoded and llm.decoder is None and not llm.stream):
            # Untranslated APIs, and an own-schema answer too odd to decode (OpenAI's n > 1):
            # the usage is read from the body as it is.
            _read_passthrough(flow, llm)
            return CONTINUE
        if llm.decoder is not None:
            self._read_events(flow, llm)
            return CONTINUE
        response = llm.response
        if response is not None:
            if response.model:
                llm.response_model = response.model[:MODEL_NAME_LIMIT]
            if response.usage is not None:
                llm.usage = _token_usage(response.usage)
            elif _succeeded(flow):
                _keep(llm, _response_texts(response))
                llm.usage = self._estimate(flow, llm)
        return CONTINUE

    def _read_events(self, flow: Flow, llm: LlmCall) -> None:
        reported: Usage | None = None
        for event in llm.chunk_events:
            if isinstance(event, TextDelta):
                _keep(llm, (event.text,))
            elif isinstance(event, ToolCallDelta):
                _keep(llm, (event.partial_json,))
            elif isinstance(event, ToolCallStart):
                _keep(llm, (event.name,))
            elif isinstance(event, UsageUpdate | MessageDelta):
                reported = merge_usage(reported, event.usage)
            elif isinstance(event, MessageStart):
                reported = merge_usage(reported, event.usage)
                if event.model:
                    llm.response_model = event.model[:MODEL_NAME_LIMIT]
            elif isinstance(event, StreamError):
                flow.error = flow.error or "provider_stream_error"
        if reported is not None:
            merged = merge_usage(_model_usage(llm.usage), reported)
            assert merged is not None
            llm.usage = _token_usage(merged)

    def on_done(self, flow: Flow) -> None:
        """A call the provider answered but never reported usage for is estimated here."""
        llm = flow.llm
        if llm is None or llm.usage is not None or not _succeeded(flow):
            return
        llm.usage = self._estimate(flow, llm)

    def _estimate(self, flow: Flow, llm: LlmCall) -> TokenUsage:
        model = llm.target.upstream_model
        # One text: a provider may cut its deltas anywhere, even inside a token.
        output = self._tokens.count(model, ["".join(llm.output_texts)]) if llm.kept_chars else 0
        if llm.kept_chars and llm.output_chars > llm.kept_chars:
            output = round(output * llm.output_chars / llm.kept_chars)
        if llm.client_schema is OPENAI_CHAT:
            prompt = self._tokens.count_messages(model, flow.request_json)
        else:
            prompt = self._tokens.count(model, list(_strings(flow.request_json)))
        return TokenUsage(
            input_tokens=min(prompt, MAX_TOKENS),
            output_tokens=min(output, MAX_TOKENS),
            estimated=True,
        )


def _succeeded(flow: Flow) -> bool:
    """The provider took the call (it answers errors before any token is generated)."""
    return flow.upstream_reached and 200 <= flow.response_status < 300


def _keep(llm: LlmCall, texts: Iterable[str]) -> None:
    for text in texts:
        llm.output_chars += len(text)
        room = KEPT_OUTPUT_CHARS - llm.kept_chars
        if room > 0 and text:
            kept = text[:room]
            llm.output_texts.append(kept)
            llm.kept_chars += len(kept)


def _response_texts(response: ChatResponse) -> list[str]:
    texts: list[str] = []
    for part in response.content:
        if isinstance(part, Text):
            texts.append(part.text)
        elif isinstance(part, ToolCall):
            texts.extend((part.name, part.arguments))
    return texts


def _strings(value: object) -> Iterable[str]:
    """Every string in a request body but the model's name: what its prompt tokens are
    estimated from when its schema is not OpenAI's."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "model":
                yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _token_usage(usage: Usage) -> TokenUsage:
    return TokenUsage(
        input_tokens=min(usage.input_tokens, MAX_TOKENS),
        output_tokens=min(usage.output_tokens, MAX_TOKENS),
        cached_input_tokens=min(usage.cached_input_tokens, MAX_TOKENS),
        cache_write_input_tokens=min(usage.cache_write_input_tokens, MAX_TOKENS),
    )


def _model_usage(usage: TokenUsage | None) -> Usage | None:
    if usage is None:
        return None
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cached_input_tokens,
        usage.cache_write_input_tokens,
    )


# --- passthrough APIs (OpenAI Responses, Embeddings) --------------------------------------


def _read_passthrough(flow: Flow, llm: LlmCall) -> None:
    if llm.events is None:
        body = _loads(flow.response_chunk)
        if body is not None:
            chat = llm.passthrough != "embeddings"
            llm.usage = _passthrough_usage(body.get("usage"), chat=chat) or llm.usage
            _read_model(llm, body)
        return
    events = llm.events.feed(flow.response_chunk)
    if flow.end_of_stream:
        tail = llm.events.flush()
        if tail:
            events.append(tail)
    for event in events:
        # Only the last event is parsed: a cheap look for its name first.
        if not any(marker in event for marker in _LAST_EVENT_MARKERS):
            continue
        data = event_data(event)
        chunk = _loads(data) if data is not None else None
        if chunk is None or chunk.get("type") not in RESPONSES_LAST_EVENTS:
            continue
        response = chunk.get("response")
        if isinstance(response, dict):
            llm.usage = _passthrough_usage(response.get("usage")) or llm.usage
            _read_model(llm, response)


def _passthrough_usage(usage: object, *, chat: bool = True) -> TokenUsage | None:
    """Responses' (and Anthropic's) `input_tokens`/`output_tokens`, or Chat Completions' and
    Embeddings' `prompt_tokens`/`completion_tokens`."""
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("input_tokens", usage.get("prompt_tokens"))
    # Embeddings generate nothing: they report only their input.
    output = usage.get("output_tokens", usage.get("completion_tokens", None if chat else 0))
    if not _is_count(prompt) or not _is_count(output):
        return None
    details = usage.get("input_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else 0
    return TokenUsage(
        min(prompt, MAX_TOKENS),
        min(output, MAX_TOKENS),
        cached_input_tokens=min(cached, MAX_TOKENS) if _is_count(cached) else 0,
    )


def _read_model(llm: LlmCall, body: dict[str, Any]) -> None:
    model = body.get("model")
    if isinstance(model, str):
        llm.response_model = model[:MODEL_NAME_LIMIT]


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
