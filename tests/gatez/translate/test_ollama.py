"""Ollama ⇄ model: golden fixtures (the API reference's examples, and the replay fakes'
recordings of them) decode to the expected model and encode back; Ollama ⇄ OpenAI Chat and
Anthropic Messages requests, responses and NDJSON streams; streams cut at every byte; what one
side cannot express refused; malformed input a clear error."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatez.translate import anthropic_messages, ollama, openai_chat
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
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
    ToolResult,
    TranslationError,
    Unsupported,
    Usage,
)
from tests.gatez.translate.conftest import decode_all, fixture

RECORDINGS = Path(__file__).resolve().parents[2] / "fakes" / "recordings" / "ollama"
MODEL = "llama3.2"
PARIS = '{"format":"celsius","location":"Paris, FR"}'
# A one-pixel PNG, base64 as Ollama takes it.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9aw"
    "AAAABJRU5ErkJggg=="
)


def recording(name: str) -> dict[str, Any]:
    """A replay recording's response, its model placeholder filled in."""
    raw = (RECORDINGS / f"{name}.json").read_text().replace("{{model}}", MODEL)
    response: dict[str, Any] = orjson.loads(raw)["response"]
    return response


def recorded_body(name: str) -> bytes:
    return orjson.dumps(recording(name)["body"])


def recorded_stream(name: str) -> bytes:
    """The recording's chunks as Ollama sends them: one JSON object a line."""
    return b"".join(orjson.dumps(chunk) + b"\n" for chunk in recording(name)["stream"]["chunks"])


def call_id(created_at: str, position: int = 0) -> str:
    return f"call_{ollama.response_id(MODEL, created_at)[7:23]}_{position}"


# --- requests ------------------------------------------------------------------------------


def test_a_request_with_tools_decodes_and_encodes_back() -> None:
    raw = fixture("ollama_request_tools.json")
    request = ollama.decode_request(raw)
    assert request.messages == (Message(Role.USER, (Text("What is the weather today in Paris?"),)),)
    (tool,) = request.tools
    assert (tool.name, tool.description) == (
        "get_current_weather",
        "Get the current weather for a location",
    )
    assert tool.parameters["required"] == ["location", "format"]
    assert request.stream is False
    assert request.extras.essential == ()
    assert orjson.loads(ollama.encode_request(request)) == orjson.loads(raw)


def test_a_request_with_tool_results_decodes_and_encodes_back() -> None:
    raw = fixture("ollama_request_tool_results.json")
    request = ollama.decode_request(raw)
    assert request.system == ("You are a helpful assistant.",)
    # Ollama's calls have no ids: numbered through the conversation; the tool message names
    # the tool, which finds the call it answers.
    assert request.messages[1:] == (
        Message(Role.ASSISTANT, (ToolCall("call_0", "get_current_weather", PARIS),)),
        Message(Role.USER, (ToolResult("call_0", (Text("22"),)),)),
    )
    assert (request.max_tokens, request.temperature, request.stop) == (100, 0, ("\n", "user:"))
    # The default is to stream.
    assert request.stream is True
    # `seed` changes the answer; `keep_alive` only keeps the model loaded.
    assert request.extras.essential == ("options.seed",)
    encoded = orjson.loads(ollama.encode_request(request))
    original = orjson.loads(raw)
    assert encoded == {**original, "stream": True}


def test_tool_messages_match_calls_by_name_then_order() -> None:
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "a", "arguments": {}}},
                    {"function": {"name": "b", "arguments": {"x": 1}}},
                ],
            },
            {"role": "tool", "content": "B", "tool_name": "b"},
            {"role": "tool", "content": "A"},
        ],
    }
    request = ollama.decode_request(orjson.dumps(body))
    assert request.messages[1] == Message(
        Role.USER, (ToolResult("call_1", (Text("B"),)), ToolResult("call_0", (Text("A"),)))
    )
    # Newer servers' ids are kept.
    body["messages"][0]["tool_calls"][0]["id"] = "call_x"  # type: ignore[index]
    body["messages"][2]["tool_call_id"] = "call_x"  # type: ignore[index]
    again = ollama.decode_request(orjson.dumps(body))
    assert again.messages[1].content[1] == ToolResult("call_x", (Text("A"),))


def test_images_become_data_urls_and_go_back_bare() -> None:
    body = {
        "model": "llava",
        "messages": [{"role": "user", "content": "what is in this image?", "images": [PNG]}],
        "stream": False,
    }
    request = ollama.decode_request(orjson.dumps(body))
    assert request.messages[0].content == (
        Text("what is in this image?"),
        Image(f"data:image/png;base64,{PNG}"),
    )
    assert orjson.loads(ollama.encode_request(request)) == body
    # And to Anthropic as a base64 image with its media type.
    anthropic = orjson.loads(anthropic_messages.encode_request(request))
    assert anthropic["messages"][0]["content"][1]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": PNG,
    }


def test_a_generate_request_decodes_and_encodes_back() -> None:
    raw = orjson.dumps(
        {
            "model": MODEL,
            "prompt": "Why is the sky blue?",
            "system": "Be brief.",
            "stream": False,
            "options": {"num_predict": 100, "top_k": 20, "num_ctx": 1024},
        }
    )
    request = ollama.decode_generate_request(raw)
    assert request.messages == (Message(Role.USER, (Text("Why is the sky blue?"),)),)
    assert (request.system, request.max_tokens, request.stream) == (("Be brief.",), 100, False)
    # top_k changes the sampling; num_ctx only sizes the model's context on the server.
    assert request.extras.essential == ("options.top_k",)
    assert orjson.loads(ollama.encode_generate_request(request)) == orjson.loads(raw)
    raw_mode = b'{"model":"m","prompt":"[INST] hi [/INST]","raw":true}'
    with pytest.raises(Unsupported, match="'raw'"):
        openai_chat.encode_request(ollama.decode_generate_request(raw_mode))


# --- responses -----------------------------------------------------------------------------


def test_a_response_decodes_and_encodes_back() -> None:
    raw = recorded_body("chat")
    response = ollama.decode_response(raw)
    created_at = "2023-12-12T14:13:43.416799Z"
    assert response == ChatResponse(
        id=ollama.response_id(MODEL, created_at),
        model=MODEL,
        content=(Text("Hello! How are you today?"),),
        stop_reason=StopReason.END_TURN,
        usage=Usage(input_tokens=26, output_tokens=298),
    )
    encoded = orjson.loads(ollama.encode_response(response, created_at=created_at))
    original = orjson.loads(raw)
    # The server's own timings are not invented.
    for timing in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        del original[timing]
    assert encoded == original


def test_a_tool_call_response_decodes_and_encodes_back() -> None:
    raw = fixture("ollama_response_tools.json")
    response = ollama.decode_response(raw)
    created_at = "2024-07-22T20:33:28.123648Z"
    assert response.content == (ToolCall(call_id(created_at), "get_current_weather", PARIS),)
    # Ollama says "stop" after tool calls; the model says why it stopped.
    assert response.stop_reason is StopReason.TOOL_USE
    assert response.usage == Usage(input_tokens=122, output_tokens=33)
    encoded = orjson.loads(ollama.encode_response(response, created_at=created_at))
    assert encoded["message"] == orjson.loads(raw)["message"]
    assert (encoded["done_reason"], encoded["done"]) == ("stop", True)


def test_a_generate_response_decodes_and_encodes_back() -> None:
    raw = recorded_body("generate")
    response = ollama.decode_generate_response(raw)
    assert response.content == (Text("The sky is blue because it is the color of the sky."),)
    assert response.usage == Usage(input_tokens=26, output_tokens=290)
    encoded = orjson.loads(
        ollama.encode_generate_response(response, created_at="2023-08-04T19:22:45.499127Z")
    )
    original = orjson.loads(raw)
    assert encoded == {k: original[k] for k in encoded}
    with pytest.raises(Unsupported, match="tool calls"):
        ollama.encode_generate_response(
            ollama.decode_response(fixture("ollama_response_tools.json")), created_at="t"
        )


# --- streams -------------------------------------------------------------------------------

TEXT_START = MessageStart(ollama.response_id(MODEL, "2023-08-04T08:52:19.380Z"), MODEL)
TEXT_EVENTS: list[StreamEvent] = [
    TEXT_START,
    *(TextDelta(0, piece) for piece in ["The", " sky", " is", " blue", "."]),
    BlockStop(0),
    MessageDelta(StopReason.END_TURN, None, Usage(input_tokens=26, output_tokens=282)),
    MessageStop(),
]
TOOL_CALL_ID = call_id("2024-07-22T20:33:28.001Z")
TOOL_EVENTS: list[StreamEvent] = [
    MessageStart(ollama.response_id(MODEL, "2024-07-22T20:33:28.001Z"), MODEL),
    TextDelta(0, "Let me check."),
    BlockStop(0),
    ToolCallStart(1, TOOL_CALL_ID, "get_current_weather"),
    ToolCallDelta(1, PARIS),
    BlockStop(1),
    MessageDelta(StopReason.TOOL_USE, None, Usage(input_tokens=122, output_tokens=33)),
    MessageStop(),
]


def test_a_text_stream_decodes_to_events_and_encodes_back() -> None:
    stream = recorded_stream("chat_stream")
    events = decode_all(ollama.StreamDecoder(), stream)
    assert events == TEXT_EVENTS
    encoded = ollama.StreamEncoder(created_at="2023-08-04T08:52:19.380Z").encode(events)
    lines = [orjson.loads(line) for line in encoded.splitlines()]
    assert [line["message"]["content"] for line in lines] == [
        "The",
        " sky",
        " is",
        " blue",
        ".",
        "",
    ]
    assert lines[-1] | {"created_at": None} == {
        "model": MODEL,
        "created_at": None,
        "message": {"role": "assistant", "content": ""},
        "done_reason": "stop",
        "done": True,
        "prompt_eval_count": 26,
        "eval_count": 282,
    }
    assert decode_all(ollama.StreamDecoder(), encoded) == events


def test_a_tool_stream_decodes_to_events_and_encodes_back() -> None:
    stream = fixture("ollama_stream_tools.ndjson")
    events = decode_all(ollama.StreamDecoder(), stream)
    assert events == TOOL_EVENTS
    encoded = ollama.StreamEncoder(created_at="2024-07-22T20:33:28.001Z").encode(events)
    originals = [orjson.loads(line) for line in stream.splitlines()]
    for line, original in zip(encoded.splitlines(), originals, strict=True):
        timings = ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration")
        expected = {k: v for k, v in original.items() if k not in timings}
        assert orjson.loads(line) | {"created_at": None} == expected | {"created_at": None}


def test_a_generate_stream_decodes_and_encodes_back() -> None:
    stream = recorded_stream("generate_stream")
    events = decode_all(ollama.StreamDecoder(generate=True), stream)
    assert events[1:] == [
        *TEXT_EVENTS[1:-2],
        MessageDelta(StopReason.END_TURN, None, Usage(input_tokens=26, output_tokens=259)),
        MessageStop(),
    ]
    encoded = ollama.StreamEncoder(created_at="t", generate=True).encode(events)
    assert [orjson.loads(line)["response"] for line in encoded.splitlines()] == [
        "The",
        " sky",
        " is",
        " blue",
        ".",
        "",
    ]
    with pytest.raises(Unsupported, match="generate"):
        ollama.StreamEncoder(created_at="t", generate=True).encode(TOOL_EVENTS)


STREAMS = [
    (False, recorded_stream("chat_stream")),
    (False, fixture("ollama_stream_tools.ndjson")),
    (True, recorded_stream("generate_stream")),
]


@pytest.mark.parametrize(("generate", "stream"), STREAMS)
def test_a_stream_cut_at_every_byte_decodes_to_the_same_events(
    generate: bool, stream: bytes
) -> None:
    whole = decode_all(ollama.StreamDecoder(generate=generate), stream)
    for cut in range(len(stream) + 1):
        assert decode_all(ollama.StreamDecoder(generate=generate), stream, cut) == whole, cut
    one_by_one = ollama.StreamDecoder(generate=generate)
    events: list[StreamEvent] = []
    for offset in range(len(stream)):
        events.extend(one_by_one.feed(stream[offset : offset + 1]))
    assert [*events, *one_by_one.finish()] == whole
    # A last line without its newline still counts.
    assert decode_all(ollama.StreamDecoder(generate=generate), stream.rstrip(b"\n")) == whole


def test_an_error_inside_a_stream_becomes_a_stream_error() -> None:
    stream = recorded_stream("chat_stream").split(b"\n")[0] + b'\n{"error":"out of memory"}\n'
    events = decode_all(ollama.StreamDecoder(), stream)
    error = events[-1]
    assert isinstance(error, StreamError)
    assert (error.error.status, error.error.kind, error.error.message) == (
        500,
        ErrorKind.SERVER,
        "out of memory",
    )
    assert ollama.StreamEncoder(created_at="t").encode([error]) == b'{"error":"out of memory"}\n'


def test_a_line_that_never_ends_is_cut_off() -> None:
    splitter = ollama.NdjsonSplitter(max_line_bytes=64)
    assert splitter.feed(b'{"a":1}\n' + b"x" * 60) == [b'{"a":1}']
    with pytest.raises(MalformedResponse, match="longer than 64 bytes"):
        splitter.feed(b"x" * 10)


# --- errors --------------------------------------------------------------------------------


def test_an_error_body_decodes_and_encodes_back() -> None:
    raw = fixture("ollama_error_not_found.json")
    info = ollama.decode_error(404, raw, "3")
    assert (info.kind, info.message, info.retry_after_s) == (
        ErrorKind.NOT_FOUND,
        'model "llama3.2" not found, try pulling it first',
        3.0,
    )
    assert orjson.loads(ollama.encode_error(info)) == orjson.loads(raw)
    assert ollama.decode_error(502, b"<html>bad gateway</html>").kind is ErrorKind.SERVER
    # Another schema's error, told to an Ollama client.
    openai_error = openai_chat.decode_error(429, fixture("openai_error_rate_limit.json"))
    assert orjson.loads(ollama.encode_error(openai_error)) == {"error": openai_error.message}


# --- across schemas ------------------------------------------------------------------------


def test_an_ollama_request_crosses_to_openai_and_anthropic_and_back() -> None:
    request = ollama.decode_request(fixture("ollama_request_tool_results.json"))
    request = ChatRequest(
        **{**_fields(request), "extras": ollama.decode_request(b'{"model":"m"}').extras}
    )
    openai = orjson.loads(openai_chat.encode_request(request))
    assert openai["messages"][2]["tool_calls"] == [
        {
            "id": "call_0",
            "type": "function",
            "function": {"name": "get_current_weather", "arguments": PARIS},
        }
    ]
    assert openai["messages"][3] == {"role": "tool", "tool_call_id": "call_0", "content": "22"}
    assert (openai["max_tokens"], openai["stop"], openai["stream"]) == (100, ["\n", "user:"], True)
    anthropic = orjson.loads(anthropic_messages.encode_request(request))
    assert anthropic["system"] == "You are a helpful assistant."
    assert anthropic["messages"][1]["content"] == [
        {
            "type": "tool_use",
            "id": "call_0",
            "name": "get_current_weather",
            "input": {"format": "celsius", "location": "Paris, FR"},
        }
    ]
    assert anthropic["messages"][2]["content"][0]["tool_use_id"] == "call_0"
    for back in (
        openai_chat.decode_request(orjson.dumps(openai)),
        anthropic_messages.decode_request(orjson.dumps(anthropic)),
    ):
        again = orjson.loads(ollama.encode_request(back))
        assert (
            again["messages"]
            == orjson.loads(fixture("ollama_request_tool_results.json"))["messages"]
        )


def _fields(request: ChatRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in ChatRequest.__slots__}


def test_openai_and_anthropic_requests_become_ollama_requests() -> None:
    openai = openai_chat.decode_request(fixture("openai_request_tool_results.json"))
    with pytest.raises(Unsupported, match="not by URL"):
        # The OpenAI fixture sends an image by URL; Ollama takes inline images only.
        ollama.encode_request(openai)
    text_only = openai_chat.decode_request(fixture("openai_request_tools.json"))
    body = orjson.loads(ollama.encode_request(text_only))
    assert body["messages"][0] == {"role": "system", "content": "You are a helpful assistant."}
    assert body["tools"][0]["function"]["name"] == "get_current_weather"
    assert body["options"] == {"num_predict": 256, "temperature": 0.2, "stop": ["\n\nHuman:"]}
    assert body["stream"] is True
    assert ollama.decode_request(orjson.dumps(body)).messages == text_only.messages
    anthropic = anthropic_messages.decode_request(fixture("anthropic_request_tools.json"))
    # Anthropic's fixture disables parallel tool use, which Ollama cannot.
    with pytest.raises(Unsupported, match="parallel"):
        ollama.encode_request(anthropic)
    allowed = ChatRequest(**{**_fields(anthropic), "tool_choice": None})
    body = orjson.loads(ollama.encode_request(allowed))
    assert body["messages"][2] == {
        "role": "assistant",
        "content": "I'll check the current weather in San Francisco for you.",
        "tool_calls": [
            {
                "function": {
                    "name": "get_weather",
                    "arguments": {"location": "San Francisco, CA", "unit": "celsius"},
                }
            }
        ],
    }
    assert body["messages"][3] == {
        "role": "tool",
        "content": "15 degrees",
        "tool_name": "get_weather",
    }
    assert body["stream"] is anthropic.stream


def test_responses_cross_both_ways() -> None:
    response = ollama.decode_response(fixture("ollama_response_tools.json"))
    openai = orjson.loads(openai_chat.encode_response(response, created=1))
    choice = openai["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"] == {
        "name": "get_current_weather",
        "arguments": PARIS,
    }
    assert openai["usage"]["prompt_tokens"] == 122
    anthropic = orjson.loads(anthropic_messages.encode_response(response))
    assert anthropic["stop_reason"] == "tool_use"
    assert anthropic["usage"]["output_tokens"] == 33
    from_anthropic = anthropic_messages.decode_response(fixture("anthropic_response_tools.json"))
    body = orjson.loads(ollama.encode_response(from_anthropic, created_at="t"))
    assert body["message"]["content"] == (
        "I'll check the current weather in San Francisco for you."
    )
    assert body["message"]["tool_calls"][0]["function"]["arguments"] == {
        "location": "San Francisco, CA",
        "unit": "celsius",
    }
    # Anthropic's input tokens exclude cache reads; Ollama's count, like the model's, is all.
    assert (body["prompt_eval_count"], body["eval_count"]) == (3295, 503)
    from_openai = openai_chat.decode_response(fixture("openai_response_text.json"))
    body = orjson.loads(ollama.encode_response(from_openai, created_at="t"))
    assert body["done_reason"] == "stop"


def test_an_ollama_stream_becomes_openai_chunks_and_anthropic_events() -> None:
    events = decode_all(ollama.StreamDecoder(), fixture("ollama_stream_tools.ndjson"))
    chunks = openai_chat.StreamEncoder(created=1, include_usage=True).encode(events)
    again = decode_all(openai_chat.StreamDecoder(), chunks)
    assert "".join(e.text for e in again if isinstance(e, TextDelta)) == "Let me check."
    starts = [e for e in again if isinstance(e, ToolCallStart)]
    assert [(s.id, s.name) for s in starts] == [(TOOL_CALL_ID, "get_current_weather")]
    assert "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta)) == PARIS
    bodies = [orjson.loads(e[6:]) for e in chunks.split(b"\n\n")[:-2]]
    assert bodies[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert (bodies[-1]["usage"]["prompt_tokens"], bodies[-1]["usage"]["completion_tokens"]) == (
        122,
        33,
    )
    encoded = anthropic_messages.StreamEncoder().encode(events)
    names = [line[7:] for line in encoded.split(b"\n") if line.startswith(b"event: ")]
    assert names == [
        b"message_start",
        b"content_block_start",
        b"ping",
        b"content_block_delta",
        b"content_block_stop",
        b"content_block_start",
        b"content_block_delta",
        b"content_block_stop",
        b"message_delta",
        b"message_stop",
    ]
    message_delta = orjson.loads(encoded.split(b"\n\n")[-3].split(b"\ndata: ")[1])
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert message_delta["usage"] == {
        "input_tokens": 122,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 33,
    }


def test_openai_and_anthropic_streams_become_ollama_lines() -> None:
    # Anthropic: tool arguments in pieces → one whole call; split usage → one final line.
    events = decode_all(anthropic_messages.StreamDecoder(), fixture("anthropic_stream_tools.sse"))
    lines = [
        orjson.loads(line)
        for line in ollama.StreamEncoder(created_at="t").encode(events).splitlines()
    ]
    text = "".join(line["message"]["content"] for line in lines)
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    calls = [line["message"]["tool_calls"] for line in lines if "tool_calls" in line["message"]]
    assert calls == [
        [
            {
                "function": {
                    "name": "get_weather",
                    "arguments": {"location": "San Francisco, CA", "unit": "fahrenheit"},
                }
            }
        ]
    ]
    assert [line["done"] for line in lines].count(True) == 1
    assert (lines[-1]["done_reason"], lines[-1]["prompt_eval_count"], lines[-1]["eval_count"]) == (
        "stop",
        472,
        89,
    )
    # OpenAI: usage reported after the finish reason still lands on the final line.
    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_tools.sse"))
    encoded = ollama.StreamEncoder(created_at="t").encode(events)
    final = orjson.loads(encoded.splitlines()[-1])
    assert (final["prompt_eval_count"], final["eval_count"]) == (65, 16)
    back = decode_all(ollama.StreamDecoder(), encoded)
    assert next(e for e in back if isinstance(e, MessageDelta)).stop_reason is StopReason.TOOL_USE
    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_text.sse"))
    texts = decode_all(ollama.StreamDecoder(), ollama.StreamEncoder(created_at="t").encode(events))
    assert "".join(e.text for e in texts if isinstance(e, TextDelta)) == "".join(
        e.text for e in events if isinstance(e, TextDelta)
    )


def test_the_ollama_sdk_reads_a_translated_stream() -> None:
    """The official SDK's types, served our encoding of an Anthropic stream, read it."""
    from ollama import ChatResponse as SdkChatResponse

    events = decode_all(anthropic_messages.StreamDecoder(), fixture("anthropic_stream_tools.sse"))
    encoded = ollama.StreamEncoder(created_at="2025-01-01T00:00:00Z").encode(events)
    parsed = [SdkChatResponse.model_validate_json(line) for line in encoded.splitlines()]
    calls = [c for part in parsed for c in part.message.tool_calls or []]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"location": "San Francisco, CA", "unit": "fahrenheit"})
    ]
    assert (parsed[-1].done, parsed[-1].prompt_eval_count, parsed[-1].eval_count) == (True, 472, 89)


def test_stop_reasons_map_both_ways() -> None:
    for reason in StopReason:
        line = ollama.StreamEncoder(created_at="t").encode([MessageDelta(reason), MessageStop()])
        assert orjson.loads(line)["done_reason"] in {"stop", "length"}
    length = (
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"a"},'
        b'"done":true,"done_reason":"length"}'
    )
    assert ollama.decode_response(length).stop_reason is StopReason.MAX_TOKENS
    body = orjson.loads(openai_chat.encode_response(ollama.decode_response(length), created=1))
    assert body["choices"][0]["finish_reason"] == "length"


# --- what Ollama cannot express ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"m","messages":[],"n":2}', "'n'"),
        (b'{"model":"m","messages":[],"tools":[],"tool_choice":"required"}', "tool choice 'any'"),
        (
            b'{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}],'
            b'"tool_choice":{"type":"function","function":{"name":"f"}}}',
            "tool choice 'tool'",
        ),
        (
            b'{"model":"m","messages":[{"role":"user","content":[{"type":"image_url",'
            b'"image_url":{"url":"https://x/y.png"}}]}]}',
            "not by URL",
        ),
    ],
)
def test_what_ollama_cannot_express_is_refused(body: bytes, message: str) -> None:
    request = openai_chat.decode_request(body)
    with pytest.raises(Unsupported, match=message) as raised:
        ollama.encode_request(request)
    assert raised.value.http_status == 400
    assert b"unsupported_feature" in raised.value.json_body()


def test_what_others_cannot_express_from_ollama_is_refused() -> None:
    formatted = b'{"model":"m","messages":[],"format":"json","options":{"top_k":5}}'
    with pytest.raises(Unsupported, match=r"'format', 'options\.top_k'"):
        openai_chat.encode_request(ollama.decode_request(formatted))
    with pytest.raises(Unsupported, match="'format'"):
        anthropic_messages.encode_request(ollama.decode_request(formatted))
    # Runner options, keep_alive and the default format only manage the server.
    quiet = b'{"model":"m","messages":[],"format":"","keep_alive":0,"options":{"num_gpu":1}}'
    assert "keep_alive" not in orjson.loads(
        openai_chat.encode_request(ollama.decode_request(quiet))
    )
    image_result = ChatRequest(
        model="m",
        messages=(
            Message(Role.ASSISTANT, (ToolCall("t1", "shot", "{}"),)),
            Message(Role.USER, (ToolResult("t1", (Image(f"data:image/png;base64,{PNG}"),)),)),
        ),
    )
    with pytest.raises(Unsupported, match="Image in a tool result"):
        ollama.encode_request(image_result)
    with pytest.raises(Unsupported, match="not a JSON object"):
        ollama.encode_request(
            ChatRequest(
                model="m", messages=(Message(Role.ASSISTANT, (ToolCall("c", "f", "[1]"),)),)
            )
        )
    with pytest.raises(Unsupported, match="conversation"):
        ollama.encode_generate_request(
            ChatRequest(
                model="m",
                messages=(Message(Role.USER, (Text("a"),)), Message(Role.ASSISTANT, (Text("b"),))),
            )
        )
    tools = ChatRequest(model="m", messages=(), tools=(Tool("f", None, {}),))
    with pytest.raises(Unsupported, match="tools"):
        ollama.encode_generate_request(tools)
    none_without_tools = ChatRequest(
        model="m", messages=(), tool_choice=ToolChoice(ToolChoiceMode.NONE)
    )
    assert orjson.loads(ollama.encode_request(none_without_tools))["messages"] == []


# --- malformed input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "must be a JSON object"),
        (b"{nope", "not valid JSON"),
        (b'{"messages":[]}', "'model'"),
        (b'{"model":"m","messages":{}}', "'messages' must be an array"),
        (b'{"model":"m","messages":[{"role":"robot","content":"x"}]}', "unknown value"),
        (b'{"model":"m","messages":[{"role":"user","content":7}]}', "content"),
        (b'{"model":"m","messages":[{"role":"user","content":"x","images":[1]}]}', "images"),
        (
            b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":'
            b'{"name":"f","arguments":"{}"}}]}]}',
            "arguments' must be an object",
        ),
        (b'{"model":"m","messages":[],"options":[]}', "'options' must be an object"),
        (b'{"model":"m","messages":[],"options":{"num_predict":"9"}}', "num_predict"),
        (b'{"model":"m","messages":[],"stream":"yes"}', "'stream'"),
        (b'{"model":"m","messages":[],"tools":[{"function":{}}]}', "name"),
    ],
)
def test_a_malformed_request_is_a_clear_400(body: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message) as raised:
        ollama.decode_request(body)
    assert raised.value.http_status == 400


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"prompt":"x"}', b'{"model":"m","prompt":5}', b'{"model":"m","images":"x"}'],
)
def test_a_malformed_generate_request_is_a_clear_400(body: bytes) -> None:
    with pytest.raises(MalformedRequest):
        ollama.decode_generate_request(body)


@pytest.mark.parametrize(
    "stream",
    [
        b"not json\n",
        b'{"model":1}\n',
        b'{"model":"m","message":[]}\n',
        b'{"model":"m","message":{"content":5}}\n',
        b'{"model":"m","message":{"tool_calls":[{"function":{"arguments":{}}}]}}\n',
        b'{"model":"m","done":true,"done_reason":"bored"}\n',
        b'{"model":"m","done":true,"eval_count":-1}\n',
        b'{"model":"m","done":"yes"}\n',
    ],
)
def test_a_malformed_stream_is_a_clear_502(stream: bytes) -> None:
    with pytest.raises(MalformedResponse) as raised:
        decode_all(ollama.StreamDecoder(), stream)
    assert raised.value.http_status == 502


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"model":"m"}',
        b'{"model":"m","message":{"content":"x","tool_calls":{}}}',
        b'{"model":"m","message":{},"done":true,"prompt_eval_count":"many"}',
    ],
)
def test_a_malformed_response_is_a_clear_502(body: bytes) -> None:
    with pytest.raises(MalformedResponse):
        ollama.decode_response(body)


def test_garbage_never_escapes_as_another_exception() -> None:
    """Every prefix of every fixture, and some mangled bytes, raise only TranslationError."""
    samples = [
        fixture("ollama_request_tool_results.json"),
        fixture("ollama_response_tools.json"),
        fixture("ollama_stream_tools.ndjson"),
    ]
    for sample in samples:
        for cut in range(0, len(sample), 7):
            for piece in (sample[:cut], sample[:cut] + b"\x00\xff", sample[cut:]):
                for decode in (
                    ollama.decode_request,
                    ollama.decode_generate_request,
                    ollama.decode_response,
                    ollama.decode_generate_response,
                    lambda raw: decode_all(ollama.StreamDecoder(), raw),
                ):
                    with contextlib.suppress(TranslationError):
                        decode(piece)
        assert isinstance(ollama.decode_error(500, sample), ErrorInfo)


def test_reasoning_is_skipped_in_replies_and_refused_in_history() -> None:
    thinking = (
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"",'
        b'"thinking":"Hmm"},"done":false}\n'
        b'{"model":"m","created_at":"t","message":{"role":"assistant","content":"Hi"},'
        b'"done":false}\n'
    )
    events = decode_all(ollama.StreamDecoder(), thinking)
    assert [e for e in events if isinstance(e, TextDelta)] == [TextDelta(0, "Hi")]
    history = b'{"model":"m","messages":[{"role":"assistant","content":"a","thinking":"b"}]}'
    with pytest.raises(Unsupported, match="thinking"):
        ollama.decode_request(history)
    # think: false is the default of every other schema; think: true is not.
    neutral = ollama.decode_request(b'{"model":"m","messages":[],"think":false}')
    assert neutral.extras.essential == ()
    with pytest.raises(Unsupported, match="'think'"):
        openai_chat.encode_request(
            ollama.decode_request(b'{"model":"m","messages":[],"think":true}')
        )


def test_crlf_lines_decode_the_same() -> None:
    stream = fixture("ollama_stream_tools.ndjson")
    assert decode_all(ollama.StreamDecoder(), stream.replace(b"\n", b"\r\n")) == TOOL_EVENTS


def test_streamed_arguments_that_are_not_an_object_are_a_bad_gateway() -> None:
    encoder = ollama.StreamEncoder(created_at="t")
    encoder.encode([MessageStart("i", "m"), ToolCallStart(0, "c", "f"), ToolCallDelta(0, '{"a":')])
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        encoder.encode_one(BlockStop(0))


def test_decoding_and_encoding_a_typical_line_takes_a_few_microseconds() -> None:
    import time

    line = (
        b'{"model":"llama3.2","created_at":"2023-08-04T08:52:19.385406455-07:00",'
        b'"message":{"role":"assistant","content":" there anything I can help you with?"},'
        b'"done":false}\n'
    )
    decoder = ollama.StreamDecoder()
    decoder.feed(line)
    openai = openai_chat.StreamEncoder(created=1, include_usage=True)
    back = ollama.StreamEncoder(created_at="2023-08-04T08:52:19Z")
    rounds = 5000
    start = time.perf_counter()
    for _ in range(rounds):
        for event in decoder.feed(line):
            openai.encode_one(event)
            back.encode_one(event)
    per_line_us = (time.perf_counter() - start) / rounds * 1e6
    # Decode + two encodes measured at a few µs; the bound leaves room for a loaded machine.
    assert per_line_us < 50, per_line_us


def test_a_tool_message_answering_no_call_cannot_be_translated() -> None:
    for body in (
        b'{"model":"m","messages":[{"role":"tool","content":"x"}]}',
        b'{"model":"m","messages":[{"role":"assistant","tool_calls":[{"function":{"name":"a"}}]},'
        b'{"role":"tool","content":"x","tool_name":"b"}]}',
    ):
        with pytest.raises(Unsupported, match="answers no tool call"):
            ollama.decode_request(body)


def test_a_negative_num_predict_is_no_limit() -> None:
    unlimited = ollama.decode_request(b'{"model":"m","messages":[],"options":{"num_predict":-1}}')
    assert (unlimited.max_tokens, unlimited.extras.essential) == (None, ())
    assert "max_tokens" not in orjson.loads(openai_chat.encode_request(unlimited))
    assert orjson.loads(ollama.encode_request(unlimited))["options"] == {"num_predict": -1}
    fill = ollama.decode_request(b'{"model":"m","messages":[],"options":{"num_predict":-2}}')
    with pytest.raises(Unsupported, match="num_predict"):
        anthropic_messages.encode_request(fill)
