"""Anthropic Messages ⇄ model: each golden fixture decodes to the expected model and encodes
back."""

from __future__ import annotations

import orjson
import pytest

from gatez.translate import anthropic_messages
from gatez.translate.model import (
    BlockStop,
    ChatResponse,
    ErrorKind,
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
)
from tests.gatez.translate.conftest import decode_all, fixture

WEATHER_CALL = ToolCall(
    "toolu_01A09q90qw90lq917835lq9",
    "get_weather",
    '{"location":"San Francisco, CA","unit":"celsius"}',
)


def test_a_request_with_tools_decodes_and_encodes_back() -> None:
    raw = fixture("anthropic_request_tools.json")
    request = anthropic_messages.decode_request(raw)
    assert request.system == ("You are a helpful assistant.",)
    assert request.messages == (
        Message(Role.USER, (Text("What is the weather like in San Francisco?"),)),
        Message(
            Role.ASSISTANT,
            (Text("I'll check the current weather in San Francisco for you."), WEATHER_CALL),
        ),
        Message(Role.USER, (ToolResult("toolu_01A09q90qw90lq917835lq9", (Text("15 degrees"),)),)),
    )
    assert request.tool_choice == ToolChoice(ToolChoiceMode.AUTO, None, parallel=False)
    assert (request.max_tokens, request.temperature, request.stop) == (1024, 0.5, ("\n\nHuman:",))
    assert request.extras.essential == ()  # metadata only tags the call
    encoded = orjson.loads(anthropic_messages.encode_request(request))
    original = orjson.loads(raw)
    # A tool result's text goes back as a text block (the string form is its shorthand).
    original["messages"][2]["content"][0]["content"] = [{"type": "text", "text": "15 degrees"}]
    assert encoded == original
    assert anthropic_messages.decode_request(orjson.dumps(encoded)) == request


def test_a_response_decodes_and_encodes_back() -> None:
    raw = fixture("anthropic_response_tools.json")
    expected = ChatResponse(
        id="msg_01Aq9w938a90dw8q",
        model="claude-opus-4-1-20250805",
        content=(Text("I'll check the current weather in San Francisco for you."), WEATHER_CALL),
        stop_reason=StopReason.TOOL_USE,
        # Anthropic's input_tokens exclude cache reads; the model's include them.
        usage=Usage(input_tokens=3295, output_tokens=503, cached_input_tokens=1200),
    )
    assert anthropic_messages.decode_response(raw) == expected
    assert orjson.loads(anthropic_messages.encode_response(expected)) == orjson.loads(raw)


TEXT_EVENTS: list[StreamEvent] = [
    MessageStart(
        "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "claude-opus-4-1-20250805",
        Usage(input_tokens=25, output_tokens=1),
    ),
    TextDelta(0, "Hello"),
    TextDelta(0, "!"),
    BlockStop(0),
    MessageDelta(StopReason.END_TURN, None, Usage(output_tokens=15)),
    MessageStop(),
]
ARGUMENTS = ['{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
TOOL_TEXT = "Okay, let's check the weather for San Francisco, CA:"
TOOL_EVENTS_HEAD: list[StreamEvent] = [
    MessageStart(
        "msg_014p7gG3wDgGV9EUtLvnow3U",
        "claude-opus-4-1-20250805",
        Usage(input_tokens=472, output_tokens=2),
    ),
]
TOOL_EVENTS_TAIL: list[StreamEvent] = [
    BlockStop(0),
    ToolCallStart(1, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
    *(ToolCallDelta(1, piece) for piece in ARGUMENTS),
    BlockStop(1),
    MessageDelta(StopReason.TOOL_USE, None, Usage(output_tokens=89)),
    MessageStop(),
]


def test_a_text_stream_decodes_to_events_and_encodes_back_byte_for_byte() -> None:
    stream = fixture("anthropic_stream_text.sse")
    events = decode_all(anthropic_messages.StreamDecoder(), stream)
    assert events == TEXT_EVENTS
    encoded = anthropic_messages.StreamEncoder().encode(events)
    assert decode_all(anthropic_messages.StreamDecoder(), encoded) == [
        *TEXT_EVENTS[:4],
        # The final message_delta carries the whole usage, which clients accumulate.
        MessageDelta(StopReason.END_TURN, None, Usage(input_tokens=25, output_tokens=15)),
        MessageStop(),
    ]
    names = [line[7:] for line in encoded.split(b"\n") if line.startswith(b"event: ")]
    assert names == [line[7:] for line in stream.split(b"\n") if line.startswith(b"event: ")]


def test_a_tool_stream_decodes_to_events_and_encodes_back() -> None:
    stream = fixture("anthropic_stream_tools.sse")
    events = decode_all(anthropic_messages.StreamDecoder(), stream)
    texts = [e.text for e in events if isinstance(e, TextDelta)]
    assert "".join(texts) == TOOL_TEXT
    assert [e for e in events if not isinstance(e, TextDelta)] == [
        *TOOL_EVENTS_HEAD,
        *TOOL_EVENTS_TAIL,
    ]
    encoded = anthropic_messages.StreamEncoder().encode(events)
    again = decode_all(anthropic_messages.StreamDecoder(), encoded)
    assert again[:-2] == events[:-2]
    names = [line[7:] for line in encoded.split(b"\n") if line.startswith(b"event: ")]
    # Anthropic's leading empty input_json_delta says nothing and is not sent again.
    original = [
        event.split(b"\n")[0][7:]
        for event in stream.split(b"\n\n")
        if event and b'"partial_json":""' not in event
    ]
    assert names == original


def test_an_error_inside_a_stream_becomes_a_stream_error() -> None:
    events = decode_all(anthropic_messages.StreamDecoder(), fixture("anthropic_stream_error.sse"))
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.error.status, error.error.kind) == (529, ErrorKind.OVERLOADED)
    encoded = anthropic_messages.StreamEncoder().encode([error])
    assert encoded == (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n'
    )


def test_thinking_blocks_and_unknown_events_are_skipped() -> None:
    stream = (
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"thinking","thinking":""}}\n\n'
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"thinking_delta","thinking":"Let me"}}\n\n'
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
        b'event: brand_new\ndata: {"type":"brand_new"}\n\n'
    )
    assert decode_all(anthropic_messages.StreamDecoder(), stream) == []


def test_an_error_body_decodes_and_encodes_back() -> None:
    raw = fixture("anthropic_error_not_found.json")
    info = anthropic_messages.decode_error(404, raw, "30")
    assert (info.kind, info.retry_after_s, info.provider_type) == (
        ErrorKind.NOT_FOUND,
        30.0,
        "not_found_error",
    )
    original = orjson.loads(raw)
    del original["request_id"]
    assert orjson.loads(anthropic_messages.encode_error(info)) == original


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"null", "must be a JSON object"),
        (b'{"model":"m","messages":[{"role":"system","content":"x"}]}', "unknown value"),
        (b'{"model":"m","messages":[{"role":"user","content":[{"type":"image"}]}]}', "source"),
        (b'{"model":"m","messages":[],"tool_choice":{"type":"tool"}}', "tool_choice.name"),
        (b'{"model":"m","messages":[],"system":[{"type":"image"}]}', "text block"),
    ],
)
def test_a_malformed_request_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message):
        anthropic_messages.decode_request(body)


@pytest.mark.parametrize(
    "stream",
    [
        b'data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}\n\n',
        b'data: {"type":"message_start","message":{"id":"x","model":"m","usage":[]}}\n\n',
        b'data: {"type":"message_delta","delta":{"stop_reason":"bored"}}\n\n',
    ],
)
def test_a_malformed_stream_is_a_clear_502(stream: bytes) -> None:
    with pytest.raises(MalformedResponse):
        anthropic_messages.StreamDecoder().feed(stream)


def test_a_server_tool_cannot_be_translated() -> None:
    body = b'{"model":"m","messages":[],"tools":[{"type":"web_search_20250305","name":"w"}]}'
    with pytest.raises(Unsupported, match="web_search"):
        anthropic_messages.decode_request(body)
