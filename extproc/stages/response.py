"""The LLM response, read through the shared model and written in the client's schema.

Two stages frame every stage that reads an LLM response (usage metering today; output
guardrails and the cache later):

- `DecodeResponse` turns the provider's bytes into the model: each streamed chunk into the
  `StreamEvent`s it completes (`llm.chunk_events`), a whole answer into a `ChatResponse`
  (`llm.response`), an error answer into an `ErrorInfo` (`llm.provider_error`). It also picks
  how the proxy delivers the body (streamed, buffered, or not at all).
- `EncodeResponse` writes what the client gets: the provider's own bytes when both speak one
  schema (nothing re-encoded, so nothing lost), else the events, answer or error encoded in the
  client's schema, with the content type changed to match. A stage that rewrites the answer
  (output PII redaction: `LlmCall.reencode`) has a successful answer encoded from the model even
  when the schemas are one; an error answer of such a call still passes as the provider sent it.

Between them, stages only ever see the model, whatever the two schemas are.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import orjson

from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Stage, Verdict
from gatez.sse import SseSplitter, event_data
from gatez.translate.model import ErrorInfo, TranslationError, kind_of_status
from gatez.translate.schemas import JSON, OPENAI_CHAT, error_headers

log = logging.getLogger("gatez.dataplane")

CONTENT_TYPE: Final = "content-type"
CONTENT_LENGTH: Final = "content-length"
# Content types a provider streams in (SSE, Ollama's NDJSON, AWS event streams).
_STREAM_TYPES: Final = (
    "text/event-stream",
    "application/x-ndjson",
    "application/vnd.amazon.eventstream",
)


def _is_stream(content_type: str) -> bool:
    return content_type.startswith(_STREAM_TYPES)


class DecodeResponse(Stage):
    """Reads the provider's answer into the shared model (see the module doc)."""

    def on_response_headers(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        status = flow.response_status
        content_type = flow.response_headers.get(CONTENT_TYPE, "")
        if not 200 <= status < 300:
            # An error answer: read (and re-encoded) when the schemas differ; passed on as it
            # is when not, since the client's SDK knows its own provider's errors.
            if llm.translated:
                flow.response_body_mode = BodyMode.BUFFERED
                flow.remove_header(CONTENT_LENGTH)
                flow.set_upstream_header(CONTENT_TYPE, JSON)
                # Headers go before the body is read: what the status says is all known yet.
                assert llm.client_schema is not None
                by_status = ErrorInfo(status, kind_of_status(status), "")
                for name, value in error_headers(llm.client_schema, by_status):
                    flow.set_upstream_header(name, value)
            return CONTINUE
        if _is_stream(content_type):
            flow.response_body_mode = BodyMode.STREAMED
            if llm.passthrough:
                llm.events = SseSplitter()
                return CONTINUE
            assert llm.provider_schema is not None and llm.client_schema is not None
            llm.decoder = llm.provider_schema.stream_decoder(model=llm.target.upstream_model)
            if llm.rewrites:
                # The encoder leaves out the usage the gateway asked for, as `_strip_usage` does.
                llm.encoder = llm.client_schema.stream_encoder(include_usage=llm.client_wants_usage)
                flow.set_upstream_header(CONTENT_TYPE, llm.client_schema.stream_content_type)
                flow.remove_header(CONTENT_LENGTH)
            elif llm.client_schema is OPENAI_CHAT and not llm.client_wants_usage:
                # The usage the gateway asked for is taken out again: chunks may shrink, and a
                # stale length would truncate the client's stream.
                llm.events = SseSplitter()
                flow.remove_header(CONTENT_LENGTH)
            return CONTINUE
        flow.response_body_mode = BodyMode.BUFFERED
        flow.first_byte_ns = time.monotonic_ns()
        if llm.rewrites:
            flow.remove_header(CONTENT_LENGTH)
            flow.set_upstream_header(CONTENT_TYPE, JSON)
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None or llm.passthrough:
            return CONTINUE
        schema = llm.provider_schema
        assert schema is not None
        chunk = flow.response_chunk
        decoder = llm.decoder
        if decoder is not None:
            if flow.first_byte_ns is None and chunk:
                flow.first_byte_ns = time.monotonic_ns()
            try:
                events = decoder.feed(chunk)
                if flow.end_of_stream:
                    events.extend(decoder.finish())
            except TranslationError:
                if llm.rewrites:
                    # Translated, or rewritten (redacted): the provider's bytes must not pass.
                    raise
                # The client gets the provider's bytes as they are, which its SDK may well
                # read: the gateway stops reading them, and estimates the usage.
                log.warning("undecodable %s stream from %s", schema.name, llm.target.provider.name)
                llm.decoder = None
                llm.undecoded = True
                events = []
            llm.chunk_events = events
            return CONTINUE
        if llm.undecoded:
            return CONTINUE
        status = flow.response_status
        if 200 <= status < 300:
            try:
                llm.response = schema.decode_response(chunk, model=llm.target.upstream_model)
            except TranslationError:
                if llm.rewrites:
                    raise
                llm.undecoded = True
        else:
            llm.provider_error = schema.decode_error(
                status, chunk, flow.response_headers.get("retry-after")
            )
        return CONTINUE


class EncodeResponse(Stage):
    """Writes the client's bytes: the provider's own, or their translation (module doc)."""

    def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None or llm.passthrough:
            return CONTINUE
        if llm.events is not None:
            # Only set when the provider's own stream passes (no encoder writes it).
            _strip_usage(flow, llm)
            return CONTINUE
        client = llm.client_schema
        assert client is not None
        if llm.encoder is not None:
            flow.replace_response_chunk(llm.encoder.encode(llm.chunk_events))
        elif llm.response is not None and llm.rewrites:
            flow.replace_response_chunk(client.encode_response(llm.response))
        elif llm.provider_error is not None and llm.translated:
            flow.replace_response_chunk(client.encode_error(llm.provider_error))
        return CONTINUE


# OpenAI's compact form, removed without parsing; anything else mentioning usage is parsed.
NULL_USAGE: Final = b',"usage":null'
USAGE: Final = b'"usage"'


def _strip_usage(flow: Flow, llm: LlmCall) -> None:
    """An OpenAI stream as the client would have had it without `include_usage`, which the
    gateway asked for to meter it: the usage-only chunk and the `"usage":null` members go."""
    assert llm.events is not None
    events = llm.events.feed(flow.response_chunk)
    if flow.end_of_stream:
        tail = llm.events.flush()
        if tail:
            events.append(tail)
    flow.replace_response_chunk(b"".join(_without_usage(event) for event in events))


def _without_usage(event: bytes) -> bytes:
    if NULL_USAGE in event:
        return event.replace(NULL_USAGE, b"")
    if USAGE not in event:
        return event
    data = event_data(event)
    try:
        chunk = orjson.loads(data) if data is not None else None
    except orjson.JSONDecodeError:
        return event
    if not isinstance(chunk, dict) or "usage" not in chunk:
        return event
    if chunk.get("choices") == []:
        return b""
    # Not the compact form: drop the member and re-serialise.
    del chunk["usage"]
    return b"data: " + orjson.dumps(chunk) + b"\n\n"
