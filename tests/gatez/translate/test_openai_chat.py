"""OpenAI Chat Completions ⇄ model: each golden fixture decodes to the expected model and
encodes back."""

from __future__ import annotations

import orjson
import pytest

from gatez.translate import openai_chat
from gatez.translate.model import (
    BlockStop,
    ChatResponse,
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
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoiceMode,
    ToolResult,
    Unsupported,
    Usage,
    UsageUpdate,
)
from tests.gatez.translate.conftest import decode_all, fixture

WEATHER_CALL = ToolCall("call_abc123", "get_current_weather", '{\n"location": "Boston, MA"\n}')


def test_a_request_with_tools_decodes_and_encodes_back() -> None:
    raw = fixture("openai_request_tools.json")
    request = openai_chat.decode_request(raw)
    assert request.model == "gpt-4.1"
    assert request.system == ("You are a helpful assistant.",)
    assert request.messages == (
        Message(Role.USER, (Text("What's the weather like in Boston today?"),)),
    )
    assert [t.name for t in request.tools] == ["get_current_weather"]
    assert request.tools[0].parameters["required"] == ["location"]
    assert request.tool_choice is not None and request.tool_choice.mode is ToolChoiceMode.AUTO
    assert (request.max_tokens, request.temperature, request.stop) == (256, 0.2, ("\n\nHuman:",))
    assert request.stream is True
    assert request.extras.fields == {
        "stream_options": {"include_usage": True},
        "user": "user-1234",
        "max_completion_tokens": 256,
    }
    assert request.extras.essential == ()

    again = orjson.loads(openai_chat.encode_request(request))
    original = orjson.loads(raw)
    # The developer prompt goes back as a system prompt, which every OpenAI model accepts.
    original["messages"][0]["role"] = "system"
    assert again == original
    assert openai_chat.decode_request(orjson.dumps(again)) == request


def test_tool_messages_become_one_user_turn_of_results() -> None:
    request = openai_chat.decode_request(fixture("openai_request_tool_results.json"))
    user, assistant, results = request.messages
    assert isinstance(user.content[1], Image) and user.content[1].detail == "low"
    assert assistant == Message(
        Role.ASSISTANT,
        (
            WEATHER_CALL,
            ToolCall("call_def456", "get_current_weather", '{"location": "Paris, France"}'),
        ),
    )
    assert results == Message(
        Role.USER,
        (
            ToolResult("call_abc123", (Text('{"temperature": 22, "unit": "celsius"}'),)),
            ToolResult("call_def456", (Text('{"temperature": 18, "unit": "celsius"}'),)),
        ),
    )
    assert orjson.loads(openai_chat.encode_request(request)) == orjson.loads(
        fixture("openai_request_tool_results.json")
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "openai_response_tools.json",
            ChatResponse(
                id="chatcmpl-abc123",
                model="gpt-4o-mini",
                content=(WEATHER_CALL,),
                stop_reason=StopReason.TOOL_USE,
                usage=Usage(input_tokens=82, output_tokens=17),
            ),
        ),
        (
            "openai_response_text.json",
            ChatResponse(
                id="chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
                model="gpt-4.1-2025-04-14",
                content=(Text("Hello! How can I assist you today?"),),
                stop_reason=StopReason.END_TURN,
                usage=Usage(input_tokens=19, output_tokens=10),
            ),
        ),
    ],
)
def test_a_response_decodes_and_encodes_back(name: str, expected: ChatResponse) -> None:
    raw = fixture(name)
    assert openai_chat.decode_response(raw) == expected
    created = orjson.loads(raw)["created"]
    encoded = openai_chat.encode_response(expected, created=created)
    assert openai_chat.decode_response(encoded) == expected
    body, original = orjson.loads(encoded), orjson.loads(raw)
    for key in ("id", "object", "created", "model"):
        assert body[key] == original[key]
    assert body["choices"][0]["finish_reason"] == original["choices"][0]["finish_reason"]
    assert {
        k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")
    } == {k: original["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


TEXT_EVENTS: list[StreamEvent] = [
    MessageStart("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "gpt-4o-mini-2024-07-18"),
    TextDelta(0, "Hello"),
    TextDelta(0, "!"),
    BlockStop(0),
    MessageDelta(StopReason.END_TURN),
    UsageUpdate(Usage(input_tokens=9, output_tokens=2)),
    MessageStop(),
]
TOOL_EVENTS: list[StreamEvent] = [
    MessageStart("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG", "gpt-4o-mini-2024-07-18"),
    ToolCallStart(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather"),
    *(ToolCallDelta(0, p) for p in ['{"', "location", '":"', "Paris", ",", " France", '"}']),
    BlockStop(0),
    MessageDelta(StopReason.TOOL_USE),
    UsageUpdate(Usage(input_tokens=65, output_tokens=16)),
    MessageStop(),
]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("openai_stream_text.sse", TEXT_EVENTS), ("openai_stream_tools.sse", TOOL_EVENTS)],
)
def test_a_stream_decodes_to_events_and_encodes_back(
    name: str, expected: list[StreamEvent]
) -> None:
    stream = fixture(name)
    assert decode_all(openai_chat.StreamDecoder(), stream) == expected
    encoder = openai_chat.StreamEncoder(created=1741569952, include_usage=True)
    encoded = encoder.encode(decode_all(openai_chat.StreamDecoder(), stream))
    assert decode_all(openai_chat.StreamDecoder(), encoded) == expected
    assert encoded.endswith(b"data: [DONE]\n\n")


def test_a_text_stream_encodes_chunk_for_chunk_as_openai_sends_it() -> None:
    stream = fixture("openai_stream_text.sse")
    encoder = openai_chat.StreamEncoder(created=1741569952, include_usage=True)
    encoded = encoder.encode(decode_all(openai_chat.StreamDecoder(), stream))
    original = [orjson.loads(e[6:]) for e in stream.split(b"\n\n")[:-2]]
    again = [orjson.loads(e[6:]) for e in encoded.split(b"\n\n")[:-2]]
    for theirs in original:
        # Members the model does not carry.
        theirs.pop("system_fingerprint")
        for choice in theirs["choices"]:
            choice["delta"].pop("refusal", None)
    original[-1]["usage"]["prompt_tokens_details"] = {"cached_tokens": 0}
    del original[-1]["usage"]["completion_tokens_details"]
    assert again == original
    assert encoded.endswith(b"data: [DONE]\n\n")


def test_without_include_usage_the_chunks_carry_no_usage() -> None:
    encoder = openai_chat.StreamEncoder(created=1, include_usage=False)
    encoded = encoder.encode(TEXT_EVENTS)
    assert b"usage" not in encoded
    assert encoded.count(b"data: ") == 5  # role, two texts, finish, [DONE]


def test_an_error_body_decodes_with_its_retry_after_and_encodes_back() -> None:
    info = openai_chat.decode_error(429, fixture("openai_error_rate_limit.json"), "0.12")
    assert (info.status, info.kind, info.retry_after_s) == (429, ErrorKind.RATE_LIMIT, 0.12)
    assert info.code == "rate_limit_exceeded" and info.message.startswith("Rate limit reached")
    body = orjson.loads(openai_chat.encode_error(info))
    assert body == {
        "error": {
            "message": info.message,
            "type": "rate_limit_error",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }


def test_an_error_body_that_is_not_json_still_gives_an_error() -> None:
    info = openai_chat.decode_error(502, b"<html>Bad Gateway</html>", "soon")
    assert (info.status, info.kind, info.retry_after_s) == (502, ErrorKind.SERVER, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"model":"m"}', "'messages' must be an array"),
        (b'{"model":"m","messages":[{"role":"wizard","content":"x"}]}', "unknown value"),
        (b'{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}', ".text' must"),
        (b'{"model":"m","messages":[],"temperature":"hot"}', "'temperature' must be a number"),
        (b'{"model":"m","messages":[],"tool_choice":"maybe"}', "'tool_choice' has an unknown"),
    ],
)
def test_a_malformed_request_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message) as raised:
        openai_chat.decode_request(body)
    assert raised.value.http_status == 400


@pytest.mark.parametrize(
    "stream",
    [
        b"data: {not json}\n\n",
        b'data: {"id":"x","model":"m","choices":[{"delta":{"content":5}}]}\n\n',
        b'data: {"id":"x","model":"m","choices":{}}\n\n',
        b'data: {"id":"x","model":"m","choices":[],"usage":{"prompt_tokens":-1}}\n\n',
    ],
)
def test_a_malformed_stream_is_a_clear_502(stream: bytes) -> None:
    with pytest.raises(MalformedResponse) as raised:
        openai_chat.StreamDecoder().feed(stream)
    assert raised.value.http_status == 502


def test_several_choices_cannot_be_translated() -> None:
    body = orjson.loads(fixture("openai_response_text.json"))
    body["choices"].append(body["choices"][0])
    with pytest.raises(Unsupported, match="2 choices"):
        openai_chat.decode_response(orjson.dumps(body))
