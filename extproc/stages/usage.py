"""Usage metering: token counts from the provider's own report, streamed or not.

Non-streaming responses are read once, buffered. Streams are switched to streamed body mode and
scanned event by event; the usage arrives in the final chunk because model routing asked for it
(`stream_options.include_usage`). When the client did not ask, the meter removes what asking
added — the usage-only chunk and the `"usage":null` members — so the client sees what it
would have seen without the gateway.

When the provider's usage never comes — the client hung up mid-stream, the stream broke off, a
provider that does not report it — the call is still metered: when the exchange is over, the
meter counts the request's messages and the text streamed so far with OpenAI's tokenizer
(`TokenCounter`), and marks the usage as estimated. Nothing is parsed for this on the way: the
stream's first `STREAM_HEAD_BYTES` are kept as they came, and a longer stream is counted from
them in proportion to its length (parsing 64 KiB at the end costs about 0.4 ms, once per call
cut short).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final, TypeGuard

import orjson

from extproc.token_count import TokenCounter
from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Stage, TokenUsage, Verdict
from gatez.sse import SseSplitter, event_data

# OpenAI's compact form, removed without parsing; anything else mentioning usage is parsed.
NULL_USAGE: Final = b',"usage":null'
USAGE: Final = b'"usage"'
# The part of a stream kept to estimate from (about 250 chunks of OpenAI's).
STREAM_HEAD_BYTES: Final = 64 * 1024
# Token counts are uint32 columns; a provider's larger (or negative) figure is clamped.
MAX_TOKENS: Final = 2**32 - 1
MODEL_NAME_LIMIT: Final = 256


class UsageMeter(Stage):
    """Reads token usage from Chat Completions responses into `flow.llm.usage`, and estimates
    it when the provider's report never comes."""

    def __init__(self, tokens: TokenCounter | None = None) -> None:
        self._tokens = tokens or TokenCounter()

    def on_response_headers(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        content_type = flow.response_headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            flow.response_body_mode = BodyMode.STREAMED
            llm.events = SseSplitter()
            if not llm.client_wants_usage:
                # Chunks may shrink; a stale length would truncate the client's stream.
                flow.remove_header("content-length")
        elif 200 <= flow.response_status < 300:
            flow.response_body_mode = BodyMode.BUFFERED
            flow.first_byte_ns = time.monotonic_ns()
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        chunk = flow.response_chunk
        if llm.events is None:
            body = _loads(chunk)
            llm.usage = _usage_of(body) or llm.usage
            _read_model(llm, body)
            if llm.usage is None and body is not None and _succeeded(flow):
                llm.usage = self._estimate(flow, llm, _reply_texts(body))
            return CONTINUE
        if flow.first_byte_ns is None and chunk:
            flow.first_byte_ns = time.monotonic_ns()
        llm.stream_bytes += len(chunk)
        if len(llm.stream_head) < STREAM_HEAD_BYTES:
            llm.stream_head += chunk
        events = llm.events.feed(chunk)
        if flow.end_of_stream:
            tail = llm.events.flush()
            if tail:
                events.append(tail)
        if llm.client_wants_usage:
            for event in events:
                if USAGE in event and NULL_USAGE not in event:
                    _read_usage(llm, _chunk_of(event))
            return CONTINUE
        flow.replace_response_chunk(b"".join(_strip_usage(llm, e) for e in events))
        return CONTINUE

    def on_done(self, flow: Flow) -> None:
        """A call the provider answered but never reported usage for is estimated here."""
        llm = flow.llm
        if llm is None or llm.usage is not None or not _succeeded(flow):
            return
        head = bytes(llm.stream_head)
        # One text: a provider may cut its deltas anywhere, even inside a token.
        output = self._tokens.count(llm.target.upstream_model, ["".join(streamed_texts(head))])
        if len(head) < llm.stream_bytes and head:
            output = round(output * llm.stream_bytes / len(head))
        llm.usage = self._estimate(flow, llm, (), output)

    def _estimate(
        self, flow: Flow, llm: LlmCall, output_texts: Sequence[str], output_tokens: int = 0
    ) -> TokenUsage:
        model = llm.target.upstream_model
        if output_texts:
            output_tokens = self._tokens.count(model, ["".join(output_texts)])
        return TokenUsage(
            input_tokens=min(self._tokens.count_messages(model, flow.request_json), MAX_TOKENS),
            output_tokens=min(output_tokens, MAX_TOKENS),
            estimated=True,
        )


def _succeeded(flow: Flow) -> bool:
    """The provider took the call (it answers errors before any token is generated)."""
    return flow.upstream_reached and 200 <= flow.response_status < 300


def streamed_texts(stream: bytes) -> list[str]:
    """The text of the deltas in (the start of) an OpenAI chat stream; an event cut off at the
    end is left out."""
    if b"\r" in stream:
        stream = stream.replace(b"\r\n", b"\n")
    texts: list[str] = []
    for event in stream.split(b"\n\n"):
        data = event_data(event)
        chunk = _loads(data) if data is not None and data != b"[DONE]" else None
        choices = chunk.get("choices") if chunk is not None else None
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and isinstance(delta := choice.get("delta"), dict):
                texts.extend(_generated_texts(delta))
    return texts


def _reply_texts(body: dict[str, Any]) -> list[str]:
    """The generated text of a (non-streamed) chat completion."""
    texts: list[str] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if isinstance(choice, dict) and isinstance(message := choice.get("message"), dict):
            texts.extend(_generated_texts(message))
    return texts


def _generated_texts(message: dict[str, Any]) -> list[str]:
    """What a model generated in a message or a delta: content, refusal, reasoning, and the
    names and arguments of tool calls (not the role, which the format adds)."""
    texts = [
        value
        for key in ("content", "refusal", "reasoning_content")
        if isinstance(value := message.get(key), str)
    ]
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            texts.extend(v for k in ("name", "arguments") if isinstance(v := function.get(k), str))
    return texts


def _strip_usage(llm: LlmCall, event: bytes) -> bytes:
    """The event as the client would have got it without include_usage."""
    if NULL_USAGE in event:
        return event.replace(NULL_USAGE, b"")
    if USAGE not in event:
        return event
    chunk = _chunk_of(event)
    if chunk is None or "usage" not in chunk:
        return event
    if _read_usage(llm, chunk) and chunk.get("choices") == []:
        return b""
    # Not the compact form: drop the member and re-serialise.
    del chunk["usage"]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def _chunk_of(event: bytes) -> dict[str, Any] | None:
    data = event_data(event)
    return _loads(data) if data is not None else None


def _read_usage(llm: LlmCall, chunk: dict[str, Any] | None) -> bool:
    """Records the usage a chunk reports; True when it reported one."""
    usage = _usage_of(chunk)
    if usage is None:
        return False
    llm.usage = usage
    _read_model(llm, chunk)
    return True


def _read_model(llm: LlmCall, body: dict[str, Any] | None) -> None:
    """Records the model the provider says answered (for traces), bounded."""
    model = body.get("model") if body is not None else None
    if isinstance(model, str):
        llm.response_model = model[:MODEL_NAME_LIMIT]


def _usage_of(body: dict[str, Any] | None) -> TokenUsage | None:
    if body is None:
        return None
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not _is_count(prompt) or not _is_count(completion):
        return None
    return TokenUsage(min(prompt, MAX_TOKENS), min(completion, MAX_TOKENS))


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
