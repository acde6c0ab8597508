"""Across schemas: OpenAI ⇄ Anthropic requests, responses and streams through the model, streams
cut at every byte, and what one side cannot express refused with a clear 400."""

from __future__ import annotations

import time

import orjson
import pytest

from gatez.translate import anthropic_messages, openai_chat
from gatez.translate.model import (
    ChatRequest,
    Image,
    Message,
    MessageDelta,
    MessageStart,
    Role,
    StopReason,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Unsupported,
    Usage,
)
from tests.gatez.translate.conftest import decode_all, fixture

STREAMS = [
    (openai_chat.StreamDecoder, "openai_stream_text.sse"),
    (openai_chat.StreamDecoder, "openai_stream_tools.sse"),
    (anthropic_messages.StreamDecoder, "anthropic_stream_text.sse"),
    (anthropic_messages.StreamDecoder, "anthropic_stream_tools.sse"),
    (anthropic_messages.StreamDecoder, "anthropic_stream_error.sse"),
]


@pytest.mark.parametrize(("decoder", "name"), STREAMS)
def test_a_stream_cut_at_every_byte_decodes_to_the_same_events(
    decoder: type[openai_chat.StreamDecoder | anthropic_messages.StreamDecoder], name: str
) -> None:
    stream = fixture(name)
    whole = decode_all(decoder(), stream)
    for cut in range(len(stream) + 1):
        assert decode_all(decoder(), stream, cut) == whole, cut
    # And fed one byte at a time.
    one_by_one = decoder()
    events: list[StreamEvent] = []
    for offset in range(len(stream)):
        events.extend(one_by_one.feed(stream[offset : offset + 1]))
    assert [*events, *one_by_one.finish()] == whole


def test_an_openai_request_becomes_an_anthropic_request() -> None:
    request = openai_chat.decode_request(fixture("openai_request_tools.json"))
    body = orjson.loads(anthropic_messages.encode_request(request))
    assert body == {
        "model": "gpt-4.1",
        "max_tokens": 256,
        "messages": [{"role": "user", "content": "What's the weather like in Boston today?"}],
        "system": "You are a helpful assistant.",
        "temperature": 0.2,
        "stop_sequences": ["\n\nHuman:"],
        "stream": True,
        "tools": [
            {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "input_schema": orjson.loads(fixture("openai_request_tools.json"))["tools"][0][
                    "function"
                ]["parameters"],
            }
        ],
        "tool_choice": {"type": "auto"},
    }
    # OpenAI-only tags (user, stream_options) are not carried; nothing that changes the answer is.
    back = anthropic_messages.decode_request(orjson.dumps(body))
    assert (back.messages, back.system, back.tools) == (
        request.messages,
        request.system,
        request.tools,
    )


def test_tool_calls_and_results_cross_both_ways() -> None:
    request = openai_chat.decode_request(fixture("openai_request_tool_results.json"))
    body = orjson.loads(anthropic_messages.encode_request(request))
    assistant, results = body["messages"][1], body["messages"][2]
    assert assistant["content"][0] == {
        "type": "tool_use",
        "id": "call_abc123",
        "name": "get_current_weather",
        "input": {"location": "Boston, MA"},
    }
    assert [block["tool_use_id"] for block in results["content"]] == ["call_abc123", "call_def456"]
    assert body["messages"][0]["content"][1]["source"]["type"] == "url"
    # And back to OpenAI: tool messages again, one per result, right after the calls.
    again = orjson.loads(
        openai_chat.encode_request(anthropic_messages.decode_request(orjson.dumps(body)))
    )
    assert [m["role"] for m in again["messages"]] == ["user", "assistant", "tool", "tool"]
    anthropic_request = anthropic_messages.decode_request(fixture("anthropic_request_tools.json"))
    openai_body = orjson.loads(openai_chat.encode_request(anthropic_request))
    assert openai_body["messages"][0] == {
        "role": "system",
        "content": "You are a helpful assistant.",
    }
    assert openai_body["messages"][2]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"location":"San Francisco, CA","unit":"celsius"}',
    }
    assert openai_body["messages"][3] == {
        "role": "tool",
        "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
        "content": "15 degrees",
    }
    assert openai_body["parallel_tool_calls"] is False
    assert openai_body["stream_options"] == {"include_usage": True}


def test_an_inline_image_crosses_as_base64() -> None:
    request = ChatRequest(
        model="m",
        messages=(Message(Role.USER, (Image("data:image/png;base64,iVBORw0KGgo="),)),),
    )
    body = orjson.loads(anthropic_messages.encode_request(request))
    assert body["messages"][0]["content"][0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }
    assert anthropic_messages.decode_request(orjson.dumps(body)).messages == request.messages


def test_responses_cross_both_ways() -> None:
    anthropic = anthropic_messages.decode_response(fixture("anthropic_response_tools.json"))
    openai_body = orjson.loads(openai_chat.encode_response(anthropic, created=1))
    choice = openai_body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == anthropic.content[0].text  # type: ignore[union-attr]
    assert openai_body["usage"] == {
        "prompt_tokens": 3295,
        "completion_tokens": 503,
        "total_tokens": 3798,
        "prompt_tokens_details": {"cached_tokens": 1200},
    }
    openai = openai_chat.decode_response(fixture("openai_response_tools.json"))
    anthropic_body = orjson.loads(anthropic_messages.encode_response(openai))
    assert anthropic_body["stop_reason"] == "tool_use"
    assert anthropic_body["content"] == [
        {
            "type": "tool_use",
            "id": "call_abc123",
            "name": "get_current_weather",
            "input": {"location": "Boston, MA"},
        }
    ]
    assert anthropic_body["usage"]["input_tokens"] == 82


def _anthropic_to_openai(name: str) -> bytes:
    events = decode_all(anthropic_messages.StreamDecoder(), fixture(name))
    return openai_chat.StreamEncoder(created=1, include_usage=True).encode(events)


def test_an_anthropic_stream_becomes_openai_chunks_with_the_split_usage_joined() -> None:
    chunks = _anthropic_to_openai("anthropic_stream_tools.sse")
    events = decode_all(openai_chat.StreamDecoder(), chunks)
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    arguments = "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))
    assert text == "Okay, let's check the weather for San Francisco, CA:"
    assert orjson.loads(arguments) == {"location": "San Francisco, CA", "unit": "fahrenheit"}
    bodies = [orjson.loads(e[6:]) for e in chunks.split(b"\n\n")[:-2]]
    tool_start = next(b for b in bodies if "tool_calls" in b["choices"][0]["delta"])
    assert tool_start["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert bodies[-2]["choices"][0]["finish_reason"] == "tool_calls"
    # message_start's input tokens and message_delta's output tokens, in one usage chunk.
    assert bodies[-1]["choices"] == []
    assert bodies[-1]["usage"]["prompt_tokens"] == 472
    assert bodies[-1]["usage"]["completion_tokens"] == 89
    assert chunks.endswith(b"data: [DONE]\n\n")


def test_an_openai_stream_becomes_anthropic_events_with_usage_in_message_delta() -> None:
    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_tools.sse"))
    encoded = anthropic_messages.StreamEncoder().encode(events)
    names = [line[7:] for line in encoded.split(b"\n") if line.startswith(b"event: ")]
    assert names == [
        b"message_start",
        b"content_block_start",
        b"ping",
        *[b"content_block_delta"] * 7,
        b"content_block_stop",
        b"message_delta",
        b"message_stop",
    ]
    again = decode_all(anthropic_messages.StreamDecoder(), encoded)
    arguments = "".join(e.partial_json for e in again if isinstance(e, ToolCallDelta))
    assert orjson.loads(arguments) == {"location": "Paris, France"}
    message_delta = orjson.loads(encoded.split(b"\n\n")[-3].split(b"\ndata: ")[1])
    assert message_delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    # OpenAI reports usage after the finish reason; it still lands in message_delta.
    assert message_delta["usage"]["output_tokens"] == 16
    assert message_delta["usage"]["input_tokens"] == 65


def test_the_anthropic_sdk_accumulates_a_translated_stream() -> None:
    """The official SDK, served our encoding, builds the message it describes."""
    import anthropic
    import httpx2 as httpx

    events = decode_all(openai_chat.StreamDecoder(), fixture("openai_stream_tools.sse"))
    encoded = anthropic_messages.StreamEncoder().encode(events)

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=encoded)

    client = anthropic.Anthropic(
        api_key="k", http_client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    with client.messages.stream(model="m", max_tokens=9, messages=[]) as stream:
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    block = message.content[0]
    assert block.type == "tool_use"
    assert (block.id, block.name, block.input) == (
        "call_DdmO9pD3xa9XTPNJ32zg2hcA",
        "get_weather",
        {"location": "Paris, France"},
    )
    assert (message.usage.input_tokens, message.usage.output_tokens) == (65, 16)


def test_the_openai_sdk_reads_a_translated_stream() -> None:
    from openai.types.chat import ChatCompletionChunk

    chunks = _anthropic_to_openai("anthropic_stream_text.sse")
    parsed = [ChatCompletionChunk.model_validate_json(e[6:]) for e in chunks.split(b"\n\n")[:-2]]
    assert "".join(c.choices[0].delta.content or "" for c in parsed if c.choices) == "Hello!"
    assert parsed[-1].usage is not None
    assert (parsed[-1].usage.prompt_tokens, parsed[-1].usage.completion_tokens) == (25, 15)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"model":"m","messages":[],"n":2}', "'n'"),
        (b'{"model":"m","messages":[],"seed":7,"logit_bias":{"1":2}}', "'seed', 'logit_bias'"),
        (b'{"model":"m","messages":[],"temperature":1.5}', "temperature from 0 to 1"),
        (
            b'{"model":"m","messages":[{"role":"user","content":"a"},'
            b'{"role":"system","content":"b"}]}',
            "system prompts only before",
        ),
        (b'{"model":"m","messages":[],"tool_choice":"none","parallel_tool_calls":false}', "none"),
    ],
)
def test_what_anthropic_cannot_express_is_refused(body: bytes, message: str) -> None:
    request = openai_chat.decode_request(body)
    with pytest.raises(Unsupported, match=message) as raised:
        anthropic_messages.encode_request(request)
    assert raised.value.http_status == 400
    assert b"unsupported_feature" in raised.value.json_body()


def test_what_openai_cannot_express_is_refused() -> None:
    thinking = b'{"model":"m","max_tokens":9,"messages":[],"top_k":5,"thinking":{"type":"enabled"}}'
    with pytest.raises(Unsupported, match="'top_k', 'thinking'"):
        openai_chat.encode_request(anthropic_messages.decode_request(thinking))
    image_result = ChatRequest(
        model="m",
        messages=(
            Message(Role.ASSISTANT, (ToolCall("t1", "shot", "{}"),)),
            Message(
                Role.USER,
                (
                    anthropic_messages.decode_request(
                        b'{"model":"m","messages":[{"role":"user","content":[{"type":"tool_result",'
                        b'"tool_use_id":"t1","content":[{"type":"image","source":{"type":"url",'
                        b'"url":"https://x/y.png"}}]}]}]}'
                    )
                    .messages[0]
                    .content[0],
                ),
            ),
        ),
    )
    with pytest.raises(Unsupported, match="Image in a tool result"):
        openai_chat.encode_request(image_result)


def test_tool_arguments_that_are_not_an_object_are_refused_for_anthropic() -> None:
    request = ChatRequest(
        model="m", messages=(Message(Role.ASSISTANT, (ToolCall("c", "f", "[1, 2]"),)),)
    )
    with pytest.raises(Unsupported, match="not a JSON object"):
        anthropic_messages.encode_request(request)


def test_stop_reasons_map_both_ways() -> None:
    for reason in StopReason:
        events = [MessageDelta(reason)]
        chunk = openai_chat.StreamEncoder(created=1, include_usage=False).encode(events)
        finish = orjson.loads(chunk[6:])["choices"][0]["finish_reason"]
        assert finish in {"stop", "length", "tool_calls", "content_filter"}
    assert (
        openai_chat.decode_response(fixture("openai_response_text.json")).stop_reason
        is StopReason.END_TURN
    )


def test_decoding_a_typical_chunk_takes_a_few_microseconds() -> None:
    chunk = (
        b"event: content_block_delta\n"
        b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta",'
        b'"text":" there anything I can help you with?"}}\n\n'
    )
    decoder = anthropic_messages.StreamDecoder()
    openai = openai_chat.StreamEncoder(created=1, include_usage=True)
    openai.encode_one(MessageStart("m", "m", Usage()))
    rounds = 5000
    start = time.perf_counter()
    for _ in range(rounds):
        for event in decoder.feed(chunk):
            openai.encode_one(event)
    per_chunk_us = (time.perf_counter() - start) / rounds * 1e6
    # Decode + re-encode measured at about 3 µs; the bound leaves room for a loaded machine.
    assert per_chunk_us < 50, per_chunk_us


def test_text_survives_a_round_trip_through_both_schemas() -> None:
    text = Text('quotes " and \\ backslashes, unicode é 🚀 and\nnewlines')
    request = ChatRequest(model="m", messages=(Message(Role.USER, (text,)),), system=("s",))
    there = anthropic_messages.decode_request(anthropic_messages.encode_request(request))
    back = openai_chat.decode_request(openai_chat.encode_request(there))
    assert back.messages == request.messages and back.system == request.system
