"""Gemini ⇄ OpenAI Chat and Anthropic Messages through the model: requests, responses and
streams both ways, streams cut at every byte, and what one side cannot express refused."""

from __future__ import annotations

import orjson
import pytest

from gatez.translate import anthropic_messages, gemini, openai_chat
from gatez.translate.model import (
    ChatRequest,
    Image,
    Message,
    Role,
    StopReason,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolResult,
    Unsupported,
)
from tests.gatez.translate.conftest import decode_all, fixture

MODEL = "gemini-2.0-flash"


@pytest.mark.parametrize("name", ["gemini_stream_text.sse", "gemini_stream_tools.sse"])
def test_a_stream_cut_at_every_byte_decodes_to_the_same_events(name: str) -> None:
    stream = fixture(name)
    whole = decode_all(gemini.StreamDecoder(), stream)
    for cut in range(len(stream) + 1):
        assert decode_all(gemini.StreamDecoder(), stream, cut) == whole, cut
    one_by_one = gemini.StreamDecoder()
    events: list[StreamEvent] = []
    for offset in range(len(stream)):
        events.extend(one_by_one.feed(stream[offset : offset + 1]))
    assert [*events, *one_by_one.finish()] == whole


def test_a_gemini_request_becomes_openai_and_anthropic_requests() -> None:
    request = gemini.decode_request(fixture("gemini_request_tools.json"), model=MODEL)
    openai_body = orjson.loads(openai_chat.encode_request(request))
    assert [m["role"] for m in openai_body["messages"]] == ["system", "user", "assistant", "tool"]
    call = openai_body["messages"][2]["tool_calls"][0]
    assert call["function"] == {
        "name": "find_theaters",
        "arguments": '{"location":"Mountain View, CA","movie":"Barbie"}',
    }
    assert openai_body["messages"][3]["tool_call_id"] == call["id"]
    assert (openai_body["max_tokens"], openai_body["stop"], openai_body["top_p"]) == (
        800,
        ["Title"],
        0.8,
    )
    anthropic_body = orjson.loads(anthropic_messages.encode_request(request))
    assert anthropic_body["system"] == "You are a helpful movie assistant."
    assert anthropic_body["tools"][0]["input_schema"]["required"] == ["location"]
    assert anthropic_body["stop_sequences"] == ["Title"]
    tool_use = anthropic_body["messages"][1]["content"][0]
    assert anthropic_body["messages"][2]["content"][0]["tool_use_id"] == tool_use["id"]
    # And back to Gemini from OpenAI: the same contents (ids were Gemini's absence of one).
    back = gemini.encode_request(openai_chat.decode_request(orjson.dumps(openai_body)))
    original = orjson.loads(fixture("gemini_request_tools.json"))
    assert orjson.loads(back)["contents"] == original["contents"]
    assert orjson.loads(back)["systemInstruction"] == original["systemInstruction"]


def test_openai_and_anthropic_requests_become_gemini_requests() -> None:
    request = openai_chat.decode_request(fixture("openai_request_tool_results.json"))
    # OpenAI's image there is an https URL, which Gemini cannot fetch.
    with pytest.raises(Unsupported, match="inline"):
        gemini.encode_request(request)
    anthropic = anthropic_messages.decode_request(fixture("anthropic_request_tools.json"))
    # Anthropic's request disables parallel tool use, which Gemini cannot say.
    with pytest.raises(Unsupported, match="one function call at a time"):
        gemini.encode_request(anthropic)
    body = orjson.loads(anthropic_messages.encode_request(anthropic))
    del body["tool_choice"]
    body = orjson.loads(
        gemini.encode_request(anthropic_messages.decode_request(orjson.dumps(body)))
    )
    assert body["systemInstruction"] == {"parts": [{"text": "You are a helpful assistant."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
    assert body["contents"][1]["parts"][1] == {
        "functionCall": {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "args": {"location": "San Francisco, CA", "unit": "celsius"},
        }
    }
    # The result names the function it answers, and plain text travels as `output`.
    assert body["contents"][2]["parts"][0] == {
        "functionResponse": {
            "id": "toolu_01A09q90qw90lq917835lq9",
            "name": "get_weather",
            "response": {"output": "15 degrees"},
        }
    }
    assert body["generationConfig"] == {
        "stopSequences": ["\n\nHuman:"],
        "maxOutputTokens": 1024,
        "temperature": 0.5,
    }
    simple = openai_chat.decode_request(fixture("openai_request_tools.json"))
    gemini_body = orjson.loads(gemini.encode_request(simple))
    assert gemini.path_of(simple) == "/v1beta/models/gpt-4.1:streamGenerateContent?alt=sse"
    assert gemini_body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert gemini_body["tools"][0]["functionDeclarations"][0]["name"] == "get_current_weather"


def test_an_inline_image_crosses_as_inline_data() -> None:
    request = ChatRequest(
        model="m",
        messages=(Message(Role.USER, (Image("data:image/png;base64,iVBORw0KGgo="),)),),
    )
    body = orjson.loads(gemini.encode_request(request))
    assert body["contents"][0]["parts"][0] == {
        "inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}
    }
    assert gemini.decode_request(orjson.dumps(body), model="m").messages == request.messages


def test_responses_cross_both_ways() -> None:
    response = gemini.decode_response(fixture("gemini_response_tools.json"))
    openai_body = orjson.loads(openai_chat.encode_response(response, created=1))
    choice = openai_body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "find_theaters"
    assert openai_body["usage"]["prompt_tokens"] == 74
    assert openai_body["usage"]["prompt_tokens_details"] == {"cached_tokens": 32}
    anthropic_body = orjson.loads(anthropic_messages.encode_response(response))
    assert anthropic_body["stop_reason"] == "tool_use"
    # Anthropic's input_tokens exclude cache reads.
    assert anthropic_body["usage"]["input_tokens"] == 42
    assert anthropic_body["usage"]["cache_read_input_tokens"] == 32
    for decoded in (
        openai_chat.decode_response(fixture("openai_response_tools.json")),
        anthropic_messages.decode_response(fixture("anthropic_response_tools.json")),
    ):
        body = orjson.loads(gemini.encode_response(decoded))
        candidate = body["candidates"][0]
        assert candidate["finishReason"] == "STOP"
        call = candidate["content"]["parts"][-1]["functionCall"]
        assert call["id"] == decoded.content[-1].id  # type: ignore[union-attr]
        assert body["usageMetadata"]["promptTokenCount"] == decoded.usage.input_tokens  # type: ignore[union-attr]
        back = gemini.decode_response(orjson.dumps(body)).content
        assert [type(part) for part in back] == [type(part) for part in decoded.content]
        assert orjson.loads(back[-1].arguments) == orjson.loads(decoded.content[-1].arguments)  # type: ignore[union-attr]


def test_a_gemini_stream_becomes_openai_and_anthropic_streams() -> None:
    events = decode_all(gemini.StreamDecoder(), fixture("gemini_stream_tools.sse"))
    chunks = openai_chat.StreamEncoder(created=1, include_usage=True).encode(events)
    again = decode_all(openai_chat.StreamDecoder(), chunks)
    assert "".join(e.text for e in again if isinstance(e, TextDelta)) == "Let me look that up."
    arguments = "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"location": "Mountain View, CA", "movie": "Barbie"}
    bodies = [orjson.loads(e[6:]) for e in chunks.split(b"\n\n")[:-2]]
    assert bodies[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert (bodies[-1]["usage"]["prompt_tokens"], bodies[-1]["usage"]["completion_tokens"]) == (
        74,
        19,
    )
    encoded = anthropic_messages.StreamEncoder().encode(events)
    message_delta = orjson.loads(encoded.split(b"\n\n")[-3].split(b"\ndata: ")[1])
    assert message_delta["delta"]["stop_reason"] == "tool_use"
    assert (message_delta["usage"]["input_tokens"], message_delta["usage"]["output_tokens"]) == (
        74,
        19,
    )
    calls = [
        e
        for e in decode_all(anthropic_messages.StreamDecoder(), encoded)
        if isinstance(e, ToolCallStart)
    ]
    assert [c.name for c in calls] == ["find_theaters"]


@pytest.mark.parametrize(
    ("decoder", "name"),
    [
        (openai_chat.StreamDecoder, "openai_stream_tools.sse"),
        (anthropic_messages.StreamDecoder, "anthropic_stream_tools.sse"),
        (anthropic_messages.StreamDecoder, "anthropic_stream_text.sse"),
    ],
)
def test_openai_and_anthropic_streams_become_gemini_streams(
    decoder: type[openai_chat.StreamDecoder | anthropic_messages.StreamDecoder], name: str
) -> None:
    events = decode_all(decoder(), fixture(name))
    encoded = gemini.StreamEncoder().encode(events)
    again = decode_all(gemini.StreamDecoder(), encoded)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "".join(e.text for e in again if isinstance(e, TextDelta)) == text
    sent = [e for e in events if isinstance(e, ToolCallStart)]
    got = [e for e in again if isinstance(e, ToolCallStart)]
    assert [(c.id, c.name) for c in got] == [(c.id, c.name) for c in sent]
    joined = "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))
    got_json = "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta))
    if joined:
        assert orjson.loads(got_json) == orjson.loads(joined)
    last = orjson.loads(encoded.split(b"\r\n\r\n")[-2][6:])
    reason = StopReason.TOOL_USE if sent else StopReason.END_TURN
    assert last["candidates"][0]["finishReason"] == "STOP"
    assert again[-2].stop_reason is reason  # type: ignore[union-attr]
    # The usage reported anywhere in the source stream is all in the last chunk.
    assert last["usageMetadata"]["candidatesTokenCount"] > 0
    assert last["usageMetadata"]["promptTokenCount"] > 0


def test_what_gemini_cannot_express_is_refused() -> None:
    cases = [
        (b'{"model":"m","messages":[],"n":2}', "'n'"),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a"},'
            b'{"role":"system","content":"b"}]}',
            "system instructions only before",
        ),
        (b'{"model":"m","messages":[],"parallel_tool_calls":false}', "one function call"),
    ]
    for body, message in cases:
        with pytest.raises(Unsupported, match=message):
            gemini.encode_request(openai_chat.decode_request(body))
    orphan = ChatRequest(
        model="m", messages=(Message(Role.USER, (ToolResult("x", (Text("r"),)),)),)
    )
    with pytest.raises(Unsupported, match="needs the function's name"):
        gemini.encode_request(orphan)
    bad_args = ChatRequest(
        model="m", messages=(Message(Role.ASSISTANT, (ToolCall("c", "f", "[1]"),)),)
    )
    with pytest.raises(Unsupported, match="not a JSON object"):
        gemini.encode_request(bad_args)


def test_what_others_cannot_express_from_gemini_is_refused() -> None:
    top_k = b'{"contents":[],"generationConfig":{"topK":40,"candidateCount":2}}'
    request = gemini.decode_request(top_k, model=MODEL)
    with pytest.raises(
        Unsupported, match=r"'generationConfig\.topK', 'generationConfig\.candidateCount'"
    ):
        openai_chat.encode_request(request)
    with pytest.raises(Unsupported, match="topK"):
        anthropic_messages.encode_request(request)
    # A same-schema pass keeps them.
    assert orjson.loads(gemini.encode_request(request)) == orjson.loads(top_k)
    cached = gemini.decode_request(
        b'{"contents":[],"cachedContent":"cachedContents/x"}', model=MODEL
    )
    with pytest.raises(Unsupported, match="cachedContent"):
        anthropic_messages.encode_request(cached)


def test_stop_reasons_map_both_ways() -> None:
    for reason in StopReason:
        body = b'{"candidates":[{"finishReason":"%s"}]}' % gemini._FINISH_REASONS[reason].encode()
        assert gemini.decode_response(body).stop_reason in {
            StopReason.END_TURN,
            StopReason.MAX_TOKENS,
            StopReason.CONTENT_FILTER,
            StopReason.ERROR,
        }
    for wire, expected in [
        ("MAX_TOKENS", StopReason.MAX_TOKENS),
        ("SAFETY", StopReason.CONTENT_FILTER),
        ("RECITATION", StopReason.CONTENT_FILTER),
        ("MALFORMED_FUNCTION_CALL", StopReason.ERROR),
        ("SOMETHING_NEW", StopReason.ERROR),
    ]:
        body = b'{"candidates":[{"finishReason":"%s"}]}' % wire.encode()
        assert gemini.decode_response(body).stop_reason is expected
        chunk = orjson.loads(openai_chat.encode_response(gemini.decode_response(body), created=1))
        assert chunk["choices"][0]["finish_reason"] in {"stop", "length", "content_filter"}


def test_the_google_genai_sdk_reads_a_translated_stream_and_response() -> None:
    from google.genai import types

    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_tools.sse"))
    encoded = gemini.StreamEncoder().encode(events)
    chunks = [
        types.GenerateContentResponse.model_validate_json(e[6:])
        for e in encoded.split(b"\r\n\r\n")[:-1]
    ]
    calls = [c.function_calls for c in chunks if c.function_calls]
    assert calls[0][0].name == "get_weather"
    assert calls[0][0].args == {"location": "Paris, France"}
    assert chunks[-1].usage_metadata is not None
    assert chunks[-1].usage_metadata.prompt_token_count == 65
    assert chunks[-1].usage_metadata.candidates_token_count == 16
    response = types.GenerateContentResponse.model_validate_json(
        gemini.encode_response(
            anthropic_messages.decode_response(fixture("anthropic_response_tools.json"))
        )
    )
    assert response.text == "I'll check the current weather in San Francisco for you."
