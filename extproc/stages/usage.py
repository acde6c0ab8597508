"""Usage metering: token counts from the provider's own report, streamed or not.

Non-streaming responses are read once, buffered. Streams are switched to streamed body mode and
scanned event by event; the usage arrives in the final chunk because model routing asked for it
(`stream_options.include_usage`). When the client did not ask, the meter removes what asking
added — the usage-only chunk and the `"usage":null` members — so the client sees what it
would have seen without the gateway.
"""

from __future__ import annotations

import time
from typing import Any, Final

import orjson

from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Stage, TokenUsage, Verdict
from gatez.sse import SseSplitter, event_data

# OpenAI's compact form, removed without parsing; anything else mentioning usage is parsed.
NULL_USAGE: Final = b',"usage":null'
USAGE: Final = b'"usage"'
MODEL_NAME_LIMIT: Final = 256


class UsageMeter(Stage):
    """Reads token usage from Chat Completions responses into `flow.llm.usage`."""

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
        if llm.events is None:
            body = _loads(flow.response_chunk)
            llm.usage = _usage_of(body) or llm.usage
            _read_model(llm, body)
            return CONTINUE
        if flow.first_byte_ns is None and flow.response_chunk:
            flow.first_byte_ns = time.monotonic_ns()
        events = llm.events.feed(flow.response_chunk)
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
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return TokenUsage(prompt, completion)


def _loads(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
