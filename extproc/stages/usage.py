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

from extproc.flow import CONTINUE, BodyMode, Flow, LlmCall, TokenUsage, Verdict
from extproc.sse import SseSplitter, event_data

NULL_USAGE: Final = b',"usage":null'
USAGE_OBJECT: Final = b'"usage":{'


class UsageMeter:
    """Reads token usage from Chat Completions responses into `flow.llm.usage`."""

    def __init__(self) -> None:
        # One splitter per streamed flow; keyed by request id, dropped when the flow is done.
        self._streams: dict[str, SseSplitter] = {}

    async def on_response_headers(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        content_type = flow.response_headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):
            flow.response_body_mode = BodyMode.STREAMED
            self._streams[flow.request_id] = SseSplitter()
            if not llm.client_wants_usage:
                # Chunks may shrink; a stale length would truncate the client's stream.
                flow.remove_header("content-length")
        elif 200 <= flow.response_status < 300:
            flow.response_body_mode = BodyMode.BUFFERED
            flow.first_byte_ns = time.monotonic_ns()
        return CONTINUE

    async def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        splitter = self._streams.get(flow.request_id)
        if splitter is None:
            llm.usage = _usage_of(_loads(flow.response_chunk)) or llm.usage
            return CONTINUE
        if flow.first_byte_ns is None and flow.response_chunk:
            flow.first_byte_ns = time.monotonic_ns()
        events = splitter.feed(flow.response_chunk)
        if flow.end_of_stream:
            tail = splitter.flush()
            if tail:
                events.append(tail)
        if llm.client_wants_usage:
            for event in events:
                if USAGE_OBJECT in event:
                    _read_usage(llm, event)
            return CONTINUE
        flow.replace_response_chunk(b"".join(_strip_usage(llm, e) for e in events))
        return CONTINUE

    async def on_done(self, flow: Flow) -> None:
        self._streams.pop(flow.request_id, None)


def _strip_usage(llm: LlmCall, event: bytes) -> bytes:
    """The event as the client would have got it without include_usage."""
    if USAGE_OBJECT in event and _read_usage(llm, event):
        return b""
    if NULL_USAGE in event:
        return event.replace(NULL_USAGE, b"")
    if b'"usage"' in event:
        # Not the compact form: fall back to a parse and re-serialisation.
        data = event_data(event)
        chunk = _loads(data) if data is not None else None
        if chunk is not None and "usage" in chunk and chunk["usage"] is None:
            del chunk["usage"]
            return b"data: " + orjson.dumps(chunk) + b"\n\n"
    return event


def _read_usage(llm: LlmCall, event: bytes) -> bool:
    """Records the usage of a usage chunk; True when the chunk carried nothing else."""
    data = event_data(event)
    chunk = _loads(data) if data is not None else None
    if chunk is None:
        return False
    usage = _usage_of(chunk)
    if usage is None:
        return False
    llm.usage = usage
    return chunk.get("choices") == []


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
