"""Bedrock Converse ⇄ model: golden fixtures and the replay fakes' recordings decode to the
expected model and encode back; the event-stream framing is checked against botocore's own
decoder and the replay server's encoder; Bedrock ⇄ OpenAI / Anthropic across schemas."""

from __future__ import annotations

import binascii
import struct
from pathlib import Path
from typing import Any

import orjson
import pytest
from botocore.eventstream import EventStreamBuffer

from gatez.translate import anthropic_messages, bedrock_converse, openai_chat
from gatez.translate.model import (
    BlockStop,
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ErrorKind,
    Image,
    MalformedRequest,
    MalformedResponse,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    Role,
    StopReason,
    StreamError,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
    ToolResult,
    Unsupported,
    Usage,
    UsageUpdate,
)
from tests.fakes.replay import encode_chunk
from tests.gatez.translate.conftest import decode_all, fixture

RECORDINGS = Path(__file__).parents[2] / "fakes" / "recordings" / "bedrock"
MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
SONG_CALL = ToolCall("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "top_song", '{"sign":"WZPZ"}')


def botocore_messages(stream: bytes) -> list[tuple[dict[str, Any], bytes]]:
    """The (headers, payload) of each message, as botocore's own decoder reads them."""
    buffer = EventStreamBuffer()
    buffer.add_data(stream)
    messages: list[Any] = list(buffer)
    return [(dict(m.headers), m.payload) for m in messages]


def recording(name: str) -> dict[str, Any]:
    value: dict[str, Any] = orjson.loads((RECORDINGS / name).read_bytes())
    return value


def replayed_stream(chunks: list[dict[str, Any]]) -> bytes:
    """The stream the replay fake serves for these chunks (its own event-stream encoder)."""
    return b"".join(encode_chunk("eventstream", chunk) for chunk in chunks)


TEXT_STREAM = replayed_stream(recording("converse_stream.json")["response"]["stream"]["chunks"])
TOOL_STREAM = replayed_stream(orjson.loads(fixture("bedrock_stream_tools.json"))["chunks"])


# --- requests ------------------------------------------------------------------------------


def test_a_request_with_tools_decodes_and_encodes_back() -> None:
    raw = fixture("bedrock_request_tools.json")
    request = bedrock_converse.decode_request(raw, model_id=MODEL)
    assert request.model == MODEL and request.stream is False
    assert request.system == ("You are a helpful radio assistant.",)
    assert request.messages == (
        Message(Role.USER, (Text("What is the most popular song on WZPZ?"),)),
        Message(Role.ASSISTANT, (Text("I'll look up the most popular song on WZPZ."), SONG_CALL)),
        Message(
            Role.USER,
            (ToolResult(SONG_CALL.id, (Text("Elemental Hotel by 8 Storey Hike"),)),),
        ),
    )
    assert request.tool_choice == ToolChoice(ToolChoiceMode.AUTO)
    assert [tool.name for tool in request.tools] == ["top_song"]
    assert request.tools[0].parameters["required"] == ["sign"]
    assert (request.max_tokens, request.temperature, request.top_p, request.stop) == (
        512,
        0.5,
        0.9,
        ("\n\nHuman:",),
    )
    assert request.extras.essential == ()  # requestMetadata only tags the call
    assert orjson.loads(bedrock_converse.encode_request(request)) == orjson.loads(raw)
    assert bedrock_converse.path_of(request) == (
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    )
    streamed = bedrock_converse.decode_request(raw, model_id=MODEL, stream=True)
    assert bedrock_converse.path_of(streamed).endswith("/converse-stream")


def test_json_tool_results_images_and_error_status_decode() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}},
                    {"cachePoint": {"type": "default"}},
                    {
                        "toolResult": {
                            "toolUseId": "t1",
                            "content": [{"json": {"song": "Elemental Hotel"}}],
                            "status": "error",
                        }
                    },
                ],
            }
        ],
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "top_song", "inputSchema": {"json": {}}}}],
            "toolChoice": {"tool": {"name": "top_song"}},
        },
    }
    request = bedrock_converse.decode_request(orjson.dumps(body), model_id="m")
    assert request.messages[0].content == (
        Image("data:image/png;base64,iVBORw0KGgo="),
        ToolResult("t1", (Text('{"song":"Elemental Hotel"}'),), is_error=True),
    )
    assert request.tool_choice == ToolChoice(ToolChoiceMode.TOOL, "top_song")
    wire = orjson.loads(bedrock_converse.encode_request(request))
    assert wire["messages"][0]["content"][0] == body["messages"][0]["content"][0]  # type: ignore[index]
    assert wire["messages"][0]["content"][1]["toolResult"]["status"] == "error"


# --- responses -----------------------------------------------------------------------------


def test_the_recorded_response_decodes_and_encodes_back() -> None:
    body = recording("converse.json")["response"]["body"]
    response = bedrock_converse.decode_response(orjson.dumps(body), model_id=MODEL, request_id="r")
    assert response == ChatResponse(
        id="r",
        model=MODEL,
        content=(Text("Hello! How can I help you today?"),),
        stop_reason=StopReason.END_TURN,
        usage=Usage(input_tokens=12, output_tokens=10),
    )
    encoded = bedrock_converse.encode_response(response, latency_ms=417)
    assert orjson.loads(encoded) == body


def test_a_tool_response_with_cache_reads_decodes_and_encodes_back() -> None:
    raw = fixture("bedrock_response_tools.json")
    response = bedrock_converse.decode_response(raw, model_id=MODEL)
    assert response.content == (Text("I'll look up the most popular song on WZPZ."), SONG_CALL)
    assert response.stop_reason is StopReason.TOOL_USE
    # Bedrock's inputTokens exclude cache reads; the model's include them.
    assert response.usage == Usage(input_tokens=1575, output_tokens=64, cached_input_tokens=1200)
    encoded = bedrock_converse.encode_response(response, latency_ms=1022)
    assert orjson.loads(encoded) == orjson.loads(raw)


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        ("end_turn", StopReason.END_TURN),
        ("tool_use", StopReason.TOOL_USE),
        ("max_tokens", StopReason.MAX_TOKENS),
        ("stop_sequence", StopReason.STOP_SEQUENCE),
        ("guardrail_intervened", StopReason.CONTENT_FILTER),
        ("content_filtered", StopReason.CONTENT_FILTER),
    ],
)
def test_stop_reasons_decode(wire: str, reason: StopReason) -> None:
    body = {"output": {"message": {"role": "assistant", "content": []}}, "stopReason": wire}
    response = bedrock_converse.decode_response(orjson.dumps(body), model_id="m")
    assert response.stop_reason is reason
    again = orjson.loads(bedrock_converse.encode_response(response))["stopReason"]
    assert (
        bedrock_converse.decode_response(
            orjson.dumps({**body, "stopReason": again}), model_id="m"
        ).stop_reason
        is reason
    )


# --- event-stream framing ------------------------------------------------------------------


def test_the_frame_encoder_matches_the_replay_fake_and_botocore_reads_it() -> None:
    chunks = recording("converse_stream.json")["response"]["stream"]["chunks"]
    ours = b"".join(bedrock_converse._event(c["event"], c["payload"]) for c in chunks)
    assert ours == TEXT_STREAM
    messages = botocore_messages(ours)
    assert [h[":event-type"] for h, _ in messages] == [c["event"] for c in chunks]
    assert [orjson.loads(p) for _, p in messages] == [c["payload"] for c in chunks]


@pytest.mark.parametrize("stream", [TEXT_STREAM, TOOL_STREAM])
def test_the_frame_splitter_agrees_with_botocore_at_every_cut(stream: bytes) -> None:
    expected = botocore_messages(stream)
    for cut in range(len(stream) + 1):
        splitter = bedrock_converse.FrameSplitter()
        frames = splitter.feed(stream[:cut]) + splitter.feed(stream[cut:])
        assert [(dict(h), p) for h, p in frames] == expected, cut
        assert splitter.pending() == 0


@pytest.mark.parametrize("stream", [TEXT_STREAM, TOOL_STREAM])
def test_a_stream_cut_at_every_byte_decodes_to_the_same_events(stream: bytes) -> None:
    whole = decode_all(bedrock_converse.StreamDecoder(model_id="m"), stream)
    for cut in range(len(stream) + 1):
        assert decode_all(bedrock_converse.StreamDecoder(model_id="m"), stream, cut) == whole
    one_by_one = bedrock_converse.StreamDecoder(model_id="m")
    events: list[StreamEvent] = []
    for offset in range(len(stream)):
        events.extend(one_by_one.feed(stream[offset : offset + 1]))
    assert [*events, *one_by_one.finish()] == whole


def _corrupt(stream: bytes, offset: int) -> bytes:
    return stream[:offset] + bytes([stream[offset] ^ 0x01]) + stream[offset + 1 :]


@pytest.mark.parametrize(
    ("stream", "message"),
    [
        (_corrupt(TEXT_STREAM, 9), "prelude CRC"),  # a prelude CRC byte
        (_corrupt(TEXT_STREAM, 40), "bad CRC"),  # a header byte
        (
            struct.pack("!II", 8, 0) + struct.pack("!I", binascii.crc32(struct.pack("!II", 8, 0))),
            "impossible length",
        ),
        (
            struct.pack("!II", 1 << 30, 0)
            + struct.pack("!I", binascii.crc32(struct.pack("!II", 1 << 30, 0))),
            "impossible length",
        ),
        (bedrock_converse.encode_frame({":event-type": "metadata"}, b"[1]"), "JSON object"),
        (
            bedrock_converse.encode_frame(
                {":event-type": "messageStop"}, b'{"stopReason":"bored"}'
            ),
            "unknown value",
        ),
        (
            bedrock_converse.encode_frame({":event-type": "contentBlockStop"}, b"{}"),
            "contentBlockIndex",
        ),
    ],
)
def test_a_malformed_stream_is_a_clear_502(stream: bytes, message: str) -> None:
    with pytest.raises(MalformedResponse, match=message):
        decode_all(bedrock_converse.StreamDecoder(), stream)


def test_bad_headers_and_unknown_events() -> None:
    good = bedrock_converse.encode_frame({":event-type": "x"}, b"")
    # The header's value type byte (after the 1-byte name length and the 11-byte name) → 42.
    bad = bytearray(good[:-4])
    bad[12 + 1 + len(":event-type")] = 42
    bad_frame = bytes(bad) + struct.pack("!I", binascii.crc32(bad))
    with pytest.raises(MalformedResponse, match="unknown type 42"):
        bedrock_converse.StreamDecoder().feed(bad_frame)
    # An event type Bedrock may add later is skipped, even without a JSON payload.
    assert decode_all(bedrock_converse.StreamDecoder(), good) == []


def test_a_stream_ending_inside_a_message_is_malformed() -> None:
    decoder = bedrock_converse.StreamDecoder()
    decoder.feed(TEXT_STREAM[:-3])
    with pytest.raises(MalformedResponse, match="ended inside a message"):
        decoder.finish()


# --- streams -------------------------------------------------------------------------------


def test_the_recorded_text_stream_decodes_and_encodes_back_byte_for_byte() -> None:
    events = decode_all(bedrock_converse.StreamDecoder(model_id=MODEL, request_id="r"), TEXT_STREAM)
    assert events == [
        MessageStart("r", MODEL),
        TextDelta(0, "Hello!"),
        TextDelta(0, " How can I help"),
        TextDelta(0, " you today?"),
        BlockStop(0),
        MessageDelta(StopReason.END_TURN),
        UsageUpdate(Usage(input_tokens=12, output_tokens=10)),
        MessageStop(),
    ]
    assert bedrock_converse.StreamEncoder(latency_ms=389).encode(events) == TEXT_STREAM


def test_the_tool_stream_decodes_and_encodes_back_byte_for_byte() -> None:
    events = decode_all(bedrock_converse.StreamDecoder(model_id=MODEL), TOOL_STREAM)
    assert events == [
        MessageStart("", MODEL),
        TextDelta(0, "I'll look up"),
        TextDelta(0, " the song."),
        BlockStop(0),
        ToolCallStart(1, SONG_CALL.id, "top_song"),
        ToolCallDelta(1, '{"sign": '),
        ToolCallDelta(1, '"WZPZ"}'),
        BlockStop(1),
        MessageDelta(StopReason.TOOL_USE),
        UsageUpdate(Usage(input_tokens=375, output_tokens=64)),
        MessageStop(),
    ]
    assert bedrock_converse.StreamEncoder(latency_ms=1022).encode(events) == TOOL_STREAM


def test_exception_events_become_stream_errors_and_back() -> None:
    frame = bedrock_converse.encode_frame(
        {
            ":exception-type": "throttlingException",
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        b'{"message":"Too many requests, please wait before trying again."}',
    )
    events = decode_all(bedrock_converse.StreamDecoder(), frame)
    assert len(events) == 1 and isinstance(events[0], StreamError)
    error = events[0].error
    assert (error.status, error.kind, error.provider_type) == (
        429,
        ErrorKind.RATE_LIMIT,
        "ThrottlingException",
    )
    assert bedrock_converse.StreamEncoder().encode(events) == frame


def test_a_stream_without_metadata_still_stops() -> None:
    stream = bedrock_converse._event("messageStart", {"role": "assistant"}) + (
        bedrock_converse._event("messageStop", {"stopReason": "max_tokens"})
    )
    events = decode_all(bedrock_converse.StreamDecoder(), stream)
    assert events[-2:] == [MessageDelta(StopReason.MAX_TOKENS), MessageStop()]


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("authentication.json", ErrorKind.PERMISSION),
        ("internal.json", ErrorKind.SERVER),
        ("throttling.json", ErrorKind.RATE_LIMIT),
    ],
)
def test_the_recorded_error_bodies_decode_and_encode_back(name: str, kind: ErrorKind) -> None:
    response = recording(f"errors/{name}")["response"]
    raw = orjson.dumps(response["body"])
    header = response["headers"]["x-amzn-errortype"]
    info = bedrock_converse.decode_error(response["status"], raw, "2", header)
    assert (info.status, info.kind, info.retry_after_s) == (response["status"], kind, 2.0)
    assert info.provider_type == header.partition(":")[0]
    assert info.message == response["body"]["message"]
    assert orjson.loads(bedrock_converse.encode_error(info)) == response["body"]
    assert bedrock_converse.error_type(info) == info.provider_type


def test_an_error_type_in_the_body_or_nowhere_still_decodes() -> None:
    body = b'{"__type":"com.amazon.bedrock#ValidationException","Message":"bad"}'
    info = bedrock_converse.decode_error(400, body)
    assert (info.kind, info.message, info.provider_type) == (
        ErrorKind.INVALID_REQUEST,
        "bad",
        "ValidationException",
    )
    assert bedrock_converse.decode_error(503, b"<html>").kind is ErrorKind.OVERLOADED


# --- across schemas ------------------------------------------------------------------------


def test_an_openai_request_becomes_a_converse_request() -> None:
    request = openai_chat.decode_request(fixture("openai_request_tools.json"))
    body = orjson.loads(bedrock_converse.encode_request(request))
    parameters = orjson.loads(fixture("openai_request_tools.json"))["tools"][0]["function"][
        "parameters"
    ]
    assert body == {
        "messages": [
            {"role": "user", "content": [{"text": "What's the weather like in Boston today?"}]}
        ],
        "system": [{"text": "You are a helpful assistant."}],
        "inferenceConfig": {"maxTokens": 256, "temperature": 0.2, "stopSequences": ["\n\nHuman:"]},
        "toolConfig": {
            "tools": [
                {
                    "toolSpec": {
                        "name": "get_current_weather",
                        "description": "Get the current weather in a given location",
                        "inputSchema": {"json": parameters},
                    }
                }
            ],
            "toolChoice": {"auto": {}},
        },
    }
    assert bedrock_converse.path_of(request) == "/model/gpt-4.1/converse-stream"
    back = bedrock_converse.decode_request(orjson.dumps(body), model_id="gpt-4.1")
    assert (back.messages, back.system, back.tools) == (
        request.messages,
        request.system,
        request.tools,
    )


def test_a_converse_request_becomes_openai_and_anthropic_requests() -> None:
    request = bedrock_converse.decode_request(fixture("bedrock_request_tools.json"), model_id=MODEL)
    openai_body = orjson.loads(openai_chat.encode_request(request))
    assert openai_body["model"] == MODEL
    assert openai_body["messages"][0] == {
        "role": "system",
        "content": "You are a helpful radio assistant.",
    }
    assert openai_body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "top_song",
        "arguments": '{"sign":"WZPZ"}',
    }
    assert openai_body["messages"][3] == {
        "role": "tool",
        "tool_call_id": SONG_CALL.id,
        "content": "Elemental Hotel by 8 Storey Hike",
    }
    anthropic_body = orjson.loads(anthropic_messages.encode_request(request))
    assert anthropic_body["system"] == "You are a helpful radio assistant."
    assert anthropic_body["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": SONG_CALL.id,
        "name": "top_song",
        "input": {"sign": "WZPZ"},
    }
    assert anthropic_body["tool_choice"] == {"type": "auto"}
    # And back: the same conversation as Converse again.
    again = anthropic_messages.decode_request(orjson.dumps(anthropic_body))
    assert again.messages == request.messages


def test_responses_cross_both_ways() -> None:
    bedrock = bedrock_converse.decode_response(
        fixture("bedrock_response_tools.json"), model_id=MODEL
    )
    openai_body = orjson.loads(openai_chat.encode_response(bedrock, created=1))
    assert openai_body["choices"][0]["finish_reason"] == "tool_calls"
    assert openai_body["usage"]["prompt_tokens"] == 1575
    assert openai_body["usage"]["prompt_tokens_details"] == {"cached_tokens": 1200}
    anthropic_body = orjson.loads(anthropic_messages.encode_response(bedrock))
    assert anthropic_body["usage"]["input_tokens"] == 375
    assert anthropic_body["usage"]["cache_read_input_tokens"] == 1200
    anthropic = anthropic_messages.decode_response(fixture("anthropic_response_tools.json"))
    body = orjson.loads(bedrock_converse.encode_response(anthropic))
    assert body["stopReason"] == "tool_use"
    assert body["output"]["message"]["content"][1] == {
        "toolUse": {
            "toolUseId": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "input": {"location": "San Francisco, CA", "unit": "celsius"},
        }
    }
    assert body["usage"] == {
        "inputTokens": 2095,
        "outputTokens": 503,
        "totalTokens": 3798,
        "cacheReadInputTokens": 1200,
    }
    openai = openai_chat.decode_response(fixture("openai_response_tools.json"))
    assert orjson.loads(bedrock_converse.encode_response(openai))["usage"]["inputTokens"] == 82


def test_a_converse_stream_becomes_openai_and_anthropic_streams() -> None:
    events = decode_all(bedrock_converse.StreamDecoder(model_id=MODEL), TOOL_STREAM)
    chunks = openai_chat.StreamEncoder(created=1, include_usage=True).encode(events)
    bodies = [orjson.loads(e[6:]) for e in chunks.split(b"\n\n")[:-2]]
    assert bodies[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert bodies[-1]["usage"]["prompt_tokens"] == 375
    assert bodies[-1]["usage"]["completion_tokens"] == 64
    again = decode_all(openai_chat.StreamDecoder(), chunks)
    arguments = "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"sign": "WZPZ"}
    encoded = anthropic_messages.StreamEncoder().encode(events)
    anthropic_events = decode_all(anthropic_messages.StreamDecoder(), encoded)
    deltas = [e for e in anthropic_events if isinstance(e, MessageDelta)]
    # Bedrock's metadata usage, after its stop reason, still lands in message_delta.
    assert deltas == [MessageDelta(StopReason.TOOL_USE, None, Usage(375, 64))]


@pytest.mark.parametrize(
    ("decoder", "name"),
    [
        (openai_chat.StreamDecoder, "openai_stream_tools.sse"),
        (anthropic_messages.StreamDecoder, "anthropic_stream_tools.sse"),
    ],
)
def test_openai_and_anthropic_streams_become_converse_streams_botocore_reads(
    decoder: type[openai_chat.StreamDecoder | anthropic_messages.StreamDecoder], name: str
) -> None:
    events = decode_all(decoder(), fixture(name))
    encoded = bedrock_converse.StreamEncoder().encode(events)
    kinds = [h[":event-type"] for h, _ in botocore_messages(encoded)]
    assert kinds[0] == "messageStart" and kinds[-2:] == ["messageStop", "metadata"]
    assert kinds.count("contentBlockStart") == 1  # one tool call
    assert kinds.count("contentBlockStop") == sum(isinstance(e, BlockStop) for e in events)
    again = decode_all(bedrock_converse.StreamDecoder(), encoded)
    arguments = "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta))
    original = "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))
    assert arguments == original
    assert next(e for e in again if isinstance(e, MessageDelta)).stop_reason is StopReason.TOOL_USE
    usage = next(e.usage for e in again if isinstance(e, UsageUpdate))
    expected = next(e.usage for e in reversed(events) if isinstance(e, UsageUpdate | MessageDelta))
    assert usage.output_tokens == (expected.output_tokens if expected else 0)


def test_boto3_reads_a_translated_stream() -> None:
    """botocore's own ConverseStream parser, fed our encoding of an OpenAI stream."""
    import botocore.session
    from botocore.eventstream import EventStream
    from botocore.parsers import EventStreamJSONParser

    session = botocore.session.get_session()
    model = session.get_service_model("bedrock-runtime")
    output: Any = model.operation_model("ConverseStream").output_shape
    shape = output.members["stream"]
    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_tools.sse"))
    encoded = bedrock_converse.StreamEncoder().encode(events)

    class Raw:
        def stream(self) -> Any:
            yield encoded

    parsed: list[Any] = list(EventStream(Raw(), shape, EventStreamJSONParser(), "ConverseStream"))
    assert parsed[0] == {"messageStart": {"role": "assistant"}}
    start = next(e for e in parsed if "contentBlockStart" in e)["contentBlockStart"]
    assert start["start"]["toolUse"]["name"] == "get_weather"
    assert parsed[-2] == {"messageStop": {"stopReason": "tool_use"}}
    assert parsed[-1]["metadata"]["usage"]["outputTokens"] == 16


# --- what the other side cannot express ----------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"m","messages":[],"n":2}', "'n'"),
        (b'{"model":"m","messages":[],"temperature":1.5}', "temperature from 0 to 1"),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a"},'
            b'{"role":"system","content":"b"}]}',
            "system prompts only before",
        ),
        (
            b'{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}],'
            b'"tool_choice":"none"}',
            "forbid tool calls",
        ),
        (
            b'{"model":"m","messages":[],"parallel_tool_calls":false,'
            b'"tools":[{"type":"function","function":{"name":"f"}}]}',
            "parallel",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url",'
            b'"image_url":{"url":"https://x/y.png"}}]}]}',
            "inline bytes only",
        ),
    ],
)
def test_what_converse_cannot_express_is_refused(body: bytes, message: str) -> None:
    request = openai_chat.decode_request(body)
    with pytest.raises(Unsupported, match=message) as raised:
        bedrock_converse.encode_request(request)
    assert raised.value.http_status == 400


def test_what_others_cannot_express_from_converse_is_refused() -> None:
    guarded = (
        b'{"messages":[],"guardrailConfig":{"guardrailIdentifier":"g","guardrailVersion":"1"}}'
    )
    request = bedrock_converse.decode_request(guarded, model_id="m")
    with pytest.raises(Unsupported, match="'guardrailConfig'"):
        openai_chat.encode_request(request)
    with pytest.raises(Unsupported, match="'guardrailConfig'"):
        anthropic_messages.encode_request(request)
    # Same schema: carried through untouched.
    assert orjson.loads(bedrock_converse.encode_request(request)) == orjson.loads(guarded)
    document = (
        b'{"messages":[{"role":"user","content":[{"document":{"format":"pdf","name":"d",'
        b'"source":{"bytes":"JVBER"}}}]}]}'
    )
    with pytest.raises(Unsupported, match="'document'"):
        bedrock_converse.decode_request(document, model_id="m")
    s3 = (
        b'{"messages":[{"role":"user","content":[{"image":{"format":"png",'
        b'"source":{"s3Location":{"uri":"s3://b/k"}}}}]}]}'
    )
    with pytest.raises(Unsupported, match="not inline bytes"):
        bedrock_converse.decode_request(s3, model_id="m")


def test_a_url_image_crosses_from_anthropic_but_not_to_converse() -> None:
    request = ChatRequest(
        model="m", messages=(Message(Role.USER, (Image("data:image/tiff;base64,AAAA"),)),)
    )
    with pytest.raises(Unsupported, match="png, jpeg, gif or webp"):
        bedrock_converse.encode_request(request)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"null", "must be a JSON object"),
        (b'{"messages":[{"role":"system","content":[]}]}', "unknown value"),
        (b'{"messages":[{"role":"user","content":"hi"}]}', "must be an array"),
        (b'{"messages":[{"role":"user","content":[{"image":{"format":"bmp"}}]}]}', "format"),
        (
            b'{"messages":[{"role":"user","content":[{"toolUse":{"toolUseId":"t","name":"n",'
            b'"input":"{}"}}]}]}',
            "input",
        ),
        (b'{"messages":[],"inferenceConfig":{"topK":3}}', "unknown field"),
        (
            b'{"messages":[],"toolConfig":{"tools":[],"toolChoice":{"some":{}}}}',
            "auto, any or tool",
        ),
        (b'{"messages":[],"toolConfig":{"tools":[{"toolSpec":{"name":"f"}}]}}', "inputSchema"),
    ],
)
def test_a_malformed_request_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message):
        bedrock_converse.decode_request(body, model_id="m")


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"output":{}}',
        b'{"output":{"message":{"content":[{"text":1}]}}}',
        b'{"output":{"message":{"content":[]}},"usage":{"inputTokens":-1}}',
        b'{"output":{"message":{"content":[]}},"stopReason":"bored"}',
    ],
)
def test_a_malformed_response_is_a_clear_502(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        bedrock_converse.decode_response(body, model_id="m")


def test_every_error_kind_encodes_to_a_known_type() -> None:
    for kind in ErrorKind:
        info = ErrorInfo(status=400, kind=kind, message="x")
        assert bedrock_converse.error_type(info).endswith("Exception")
