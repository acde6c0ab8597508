"""Google Gemini ⇄ model: each golden fixture decodes to the expected model and encodes back;
the replay fakes' recordings (from Google's API reference) are fixtures too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatez.translate import gemini
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
    Text,
    TextDelta,
    Tool,
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
from tests.gatez.translate.conftest import decode_all, fixture

RECORDINGS = Path(__file__).parents[2] / "fakes" / "recordings" / "gemini"
MODEL = "gemini-2.0-flash"
THEATERS_ARGS = '{"location":"Mountain View, CA","movie":"Barbie"}'


def recording(name: str) -> dict[str, Any]:
    text = (RECORDINGS / name).read_text().replace("{{model}}", MODEL)
    value: dict[str, Any] = json.loads(text)
    return value


def test_a_request_with_tools_decodes_and_encodes_back() -> None:
    raw = fixture("gemini_request_tools.json")
    request = gemini.decode_request(raw, model=MODEL)
    call_id = f"{gemini.SYNTHETIC_ID_PREFIX}0"
    assert request.model == MODEL and request.stream is False
    assert request.system == ("You are a helpful movie assistant.",)
    assert request.messages[:2] == (
        Message(Role.USER, (Text("Which theaters in Mountain View show the Barbie movie?"),)),
        Message(Role.ASSISTANT, (ToolCall(call_id, "find_theaters", THEATERS_ARGS),)),
    )
    result = request.messages[2].content[0]
    assert isinstance(result, ToolResult) and result.tool_call_id == call_id
    assert orjson.loads(result.content[0].text)["content"]["movie"] == "Barbie"  # type: ignore[union-attr]
    assert request.tools[0].name == "find_theaters"
    assert request.tool_choice == ToolChoice(ToolChoiceMode.AUTO)
    assert (request.max_tokens, request.temperature, request.top_p, request.stop) == (
        800,
        1.0,
        0.8,
        ("Title",),
    )
    # safetySettings only tags the call, candidateCount 1 is the default: nothing essential.
    assert request.extras.essential == ()
    encoded = orjson.loads(gemini.encode_request(request))
    assert encoded == orjson.loads(raw)
    assert gemini.decode_request(orjson.dumps(encoded), model=MODEL) == request


def test_the_model_and_stream_flag_come_from_the_path() -> None:
    assert gemini.model_of_path("/v1beta/models/gemini-2.0-flash:generateContent") == (MODEL, False)
    assert gemini.model_of_path(
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse&key=k"
    ) == (MODEL, True)
    request = gemini.decode_request(b'{"contents":[]}', model=MODEL, stream=True)
    assert (
        gemini.path_of(request) == "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    )
    with pytest.raises(Unsupported, match="alt=sse"):
        gemini.model_of_path("/v1beta/models/m:streamGenerateContent")
    with pytest.raises(MalformedRequest):
        gemini.model_of_path("/v1beta/models/m:countTokens")


def test_the_recorded_text_response_decodes_and_encodes_back() -> None:
    body = recording("generate_content.json")["response"]["body"]
    response = gemini.decode_response(orjson.dumps(body))
    assert response == ChatResponse(
        id="kX8taNWzKZ2pnvgPq4LJ0Qw",
        model=MODEL,
        content=(
            Text("A large language model is a neural network trained on vast amounts of text."),
        ),
        stop_reason=StopReason.END_TURN,
        usage=Usage(input_tokens=8, output_tokens=16),
    )
    again = orjson.loads(gemini.encode_response(response))
    assert again["candidates"][0]["content"] == body["candidates"][0]["content"]
    assert again["candidates"][0]["finishReason"] == "STOP"
    assert again["usageMetadata"] == {
        "promptTokenCount": 8,
        "candidatesTokenCount": 16,
        "totalTokenCount": 24,
    }
    assert gemini.decode_response(orjson.dumps(again)) == response


def test_a_function_call_response_is_tool_use_with_cached_usage() -> None:
    raw = fixture("gemini_response_tools.json")
    response = gemini.decode_response(raw)
    call_id = f"{gemini.SYNTHETIC_ID_PREFIX}mX8taJ6bA5ConvgP4aPV8QM-1"
    assert response.content == (
        Text("Let me look that up."),
        ToolCall(call_id, "find_theaters", THEATERS_ARGS),
    )
    # Gemini says STOP; a candidate holding a function call is a tool-use stop.
    assert response.stop_reason is StopReason.TOOL_USE
    assert response.usage == Usage(input_tokens=74, output_tokens=19, cached_input_tokens=32)
    assert orjson.loads(gemini.encode_response(response)) == orjson.loads(raw)


TEXT_EVENTS = [
    MessageStart("mX8taJ6bA5ConvgP4aPV8QM", MODEL, Usage(input_tokens=8)),
    TextDelta(0, "A large"),
    TextDelta(0, " language model is a neural network"),
    TextDelta(0, " trained on vast amounts of text."),
    UsageUpdate(Usage(input_tokens=8, output_tokens=16)),
    BlockStop(0),
    MessageDelta(StopReason.END_TURN),
    MessageStop(),
]


def test_the_recorded_stream_decodes_to_events_and_encodes_back() -> None:
    stream = fixture("gemini_stream_text.sse")
    chunks = recording("stream_generate_content.json")["response"]["stream"]["chunks"]
    assert stream.count(b"data: ") == len(chunks)
    events = decode_all(gemini.StreamDecoder(), stream)
    assert events == TEXT_EVENTS
    encoded = gemini.StreamEncoder().encode(events)
    assert decode_all(gemini.StreamDecoder(), encoded) == [
        *TEXT_EVENTS[:4],
        # The text pieces already carried the usage known then; the last chunk the rest.
        UsageUpdate(Usage(input_tokens=8, output_tokens=16)),
        BlockStop(0),
        MessageDelta(StopReason.END_TURN),
        MessageStop(),
    ]
    bodies = [orjson.loads(line[6:]) for line in encoded.split(b"\r\n\r\n")[:-1]]
    assert bodies[-1]["candidates"][0]["finishReason"] == "STOP"
    recorded = chunks[-1]["data"]["usageMetadata"]
    assert bodies[-1]["usageMetadata"] == {
        key: recorded[key]
        for key in ("promptTokenCount", "candidatesTokenCount", "totalTokenCount")
    }


TOOL_ID = f"{gemini.SYNTHETIC_ID_PREFIX}nY8taK7cB6DpnvgP5bQW9RN-1"
TOOL_EVENTS = [
    MessageStart("nY8taK7cB6DpnvgP5bQW9RN", MODEL, Usage(input_tokens=74)),
    TextDelta(0, "Let me look"),
    TextDelta(0, " that up."),
    BlockStop(0),
    ToolCallStart(1, TOOL_ID, "find_theaters"),
    ToolCallDelta(1, THEATERS_ARGS),
    BlockStop(1),
    UsageUpdate(Usage(input_tokens=74, output_tokens=19)),
    MessageDelta(StopReason.TOOL_USE),
    MessageStop(),
]


def test_a_function_call_arrives_whole_in_the_stream() -> None:
    events = decode_all(gemini.StreamDecoder(), fixture("gemini_stream_tools.sse"))
    assert events == TOOL_EVENTS
    encoded = gemini.StreamEncoder().encode(events)
    again = decode_all(gemini.StreamDecoder(), encoded)
    assert [e for e in again if isinstance(e, ToolCallStart | ToolCallDelta)] == TOOL_EVENTS[4:6]
    bodies = [orjson.loads(line[6:]) for line in encoded.split(b"\r\n\r\n")[:-1]]
    # The synthetic id is Gemini's own absence of one: it is not sent.
    assert bodies[2]["candidates"][0]["content"]["parts"] == [
        {"functionCall": {"name": "find_theaters", "args": orjson.loads(THEATERS_ARGS)}}
    ]
    assert bodies[-1]["candidates"][0]["finishReason"] == "STOP"


def test_an_error_inside_a_stream_becomes_a_stream_error() -> None:
    stream = (
        b'data: {"error":{"code":503,"message":"The model is overloaded.",'
        b'"status":"UNAVAILABLE"}}\r\n\r\n'
    )
    (event,) = decode_all(gemini.StreamDecoder(), stream)
    assert isinstance(event, StreamError)
    assert (event.error.status, event.error.kind) == (503, ErrorKind.OVERLOADED)
    assert gemini.StreamEncoder().encode([event]) == b"data: " + stream[6:-4] + b"\n\n"


@pytest.mark.parametrize(
    ("name", "status", "kind"),
    [
        ("rate_limit.json", 429, ErrorKind.RATE_LIMIT),
        ("internal.json", 500, ErrorKind.SERVER),
        # A bad key is a 400 INVALID_ARGUMENT whose ErrorInfo reason says API_KEY_INVALID.
        ("authentication.json", 400, ErrorKind.AUTHENTICATION),
    ],
)
def test_recorded_error_bodies_decode(name: str, status: int, kind: ErrorKind) -> None:
    body = recording(f"errors/{name}")["response"]["body"]
    info = gemini.decode_error(status, orjson.dumps(body), "7")
    assert (info.status, info.kind, info.retry_after_s) == (status, kind, 7.0)
    assert info.message == body["error"]["message"]


def test_an_error_body_encodes_back() -> None:
    raw = fixture("gemini_error_rate_limit.json")
    info = gemini.decode_error(429, raw)
    assert orjson.loads(gemini.encode_error(info)) == orjson.loads(raw)
    assert gemini.decode_error(502, b"<html>bad gateway</html>").kind is ErrorKind.SERVER


def test_tool_choice_modes_cross_the_model() -> None:
    def choice(config: str) -> ToolChoice | None:
        body = b'{"contents":[],"toolConfig":{"functionCallingConfig":' + config.encode() + b"}}"
        request = gemini.decode_request(body, model=MODEL)
        again = gemini.decode_request(gemini.encode_request(request), model=MODEL)
        assert again.tool_choice == request.tool_choice
        return request.tool_choice

    assert choice('{"mode":"NONE"}') == ToolChoice(ToolChoiceMode.NONE)
    assert choice('{"mode":"ANY"}') == ToolChoice(ToolChoiceMode.ANY)
    assert choice('{"mode":"ANY","allowedFunctionNames":["f"]}') == ToolChoice(
        ToolChoiceMode.TOOL, "f"
    )
    with pytest.raises(Unsupported, match="several"):
        choice('{"mode":"ANY","allowedFunctionNames":["f","g"]}')


def test_function_responses_with_ids_and_errors() -> None:
    body = (
        b'{"contents":[{"role":"model","parts":[{"functionCall":{"id":"c1","name":"f","args":{}}}]},'
        b'{"role":"user","parts":[{"functionResponse":{"id":"c1","name":"f",'
        b'"response":{"error":"no such city"}}}]}]}'
    )
    request = gemini.decode_request(body, model=MODEL)
    assert request.messages[1].content == (
        ToolResult("c1", (Text("no such city"),), is_error=True),
    )
    assert orjson.loads(gemini.encode_request(request)) == orjson.loads(body)


def test_an_inline_image_is_a_data_url() -> None:
    body = (
        b'{"contents":[{"parts":[{"inlineData":{"mimeType":"image/png","data":"iVBORw0KGgo="}}]}]}'
    )
    request = gemini.decode_request(body, model=MODEL)
    assert request.messages[0].content[0].url == "data:image/png;base64,iVBORw0KGgo="  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"contents":{}}', "'contents' must be an array"),
        (b'{"contents":[{"role":"system","parts":[]}]}', "unknown value"),
        (b'{"contents":[{"parts":[{"text":3}]}]}', "text"),
        (b'{"contents":[{"parts":[{"functionCall":{"args":{}}}]}]}', "functionCall.name"),
        (
            b'{"contents":[{"parts":[{"functionResponse":{"name":"f","response":{}}}]}]}',
            "answers no earlier functionCall",
        ),
        (b'{"contents":[],"generationConfig":{"maxOutputTokens":"9"}}', "maxOutputTokens"),
        (b'{"contents":[],"systemInstruction":"be brief"}', "systemInstruction"),
    ],
)
def test_a_malformed_request_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message):
        gemini.decode_request(body, model=MODEL)


@pytest.mark.parametrize(
    "body",
    [
        b'{"contents":[{"parts":[{"fileData":{"fileUri":"files/x","mimeType":"image/png"}}]}]}',
        b'{"contents":[{"parts":[{"inlineData":{"mimeType":"audio/wav","data":"AA=="}}]}]}',
        b'{"contents":[],"tools":[{"googleSearch":{}}]}',
        b'{"contents":[],"systemInstruction":{"parts":[{"inlineData":{}}]}}',
    ],
)
def test_what_the_model_cannot_carry_is_refused(body: bytes) -> None:
    with pytest.raises(Unsupported):
        gemini.decode_request(body, model=MODEL)


@pytest.mark.parametrize(
    "stream",
    [
        b"data: [1]\n\n",
        b'data: {"candidates":{}}\n\n',
        b'data: {"candidates":[{"content":{"parts":[{"text":1}]}}]}\n\n',
        b'data: {"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":[]}}]}}]}'
        b"\n\n",
        b'data: {"usageMetadata":{"promptTokenCount":-1}}\n\n',
        b'data: {"candidates":[{"finishReason":7}]}\n\n',
    ],
)
def test_a_malformed_stream_is_a_clear_502(stream: bytes) -> None:
    with pytest.raises(MalformedResponse):
        gemini.StreamDecoder().feed(stream)


def test_several_candidates_cannot_be_translated() -> None:
    with pytest.raises(Unsupported, match="2 candidates"):
        gemini.decode_response(b'{"candidates":[{},{}]}')


def test_a_blocked_prompt_is_a_content_filter_stop() -> None:
    body = b'{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":5}}'
    response = gemini.decode_response(body)
    assert (response.content, response.stop_reason) == ((), StopReason.CONTENT_FILTER)
    events = decode_all(gemini.StreamDecoder(), b"data: " + body + b"\r\n\r\n")
    assert events[-2:] == [MessageDelta(StopReason.CONTENT_FILTER), MessageStop()]


def test_tools_keep_their_declarations() -> None:
    request = gemini.decode_request(fixture("gemini_request_tools.json"), model=MODEL)
    tool = request.tools[0]
    assert isinstance(tool, Tool) and tool.parameters["required"] == ["location"]
