"""UsageMeter (behind DecodeResponse, before EncodeResponse): token usage from the provider's
own report, and a client stream left as it was.

The streams are OpenAI's wire format: compact JSON chunks, `"usage":null` on every chunk and a
usage-only final chunk (`"choices":[]`) when include_usage was asked for, then `data: [DONE]`.
"""

from __future__ import annotations

import json
import random
from itertools import pairwise
from typing import Any

import orjson
import pytest

from extproc.stages.response import DecodeResponse, EncodeResponse
from extproc.stages.usage import KEPT_OUTPUT_CHARS, UsageMeter
from extproc.token_count import TokenCounter
from gatez.pipeline import CONTINUE, BodyMode, Flow, LlmCall, Phase, TokenUsage, Verdict
from gatez.policy import compile_policy
from gatez.sse import SseSplitter
from gatez.translate.schemas import OPENAI_CHAT
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

POLICY = compile_policy(
    policy_pb2.PolicySnapshot(
        version=1,
        tenants=[policy_pb2.Tenant(id="acme")],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            )
        ],
        model_routes=[
            policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
        ],
    )
)
TARGET = POLICY.resolve_model("acme", "fast")
assert TARGET is not None


class ResponseStages:
    """The response side as the LLM pipeline runs it: decode, meter, encode."""

    def __init__(self, tokens: TokenCounter | None = None) -> None:
        self.meter = UsageMeter(tokens)
        self._stages = (DecodeResponse(), self.meter, EncodeResponse())

    def on_response_headers(self, flow: Flow) -> Verdict:
        for stage in self._stages:
            if Phase.RESPONSE_HEADERS in stage.phases:
                assert stage.on_response_headers(flow) is CONTINUE
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        for stage in self._stages:
            assert stage.on_response_body(flow) is CONTINUE
        return CONTINUE

    def on_done(self, flow: Flow) -> None:
        self.meter.on_done(flow)


COMPLETION_ID = "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
USAGE: dict[str, Any] = {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}
# The last piece has the gateway's marker bytes inside a JSON string: they must survive.
DELTAS: list[tuple[dict[str, Any], str | None]] = [
    ({"role": "assistant", "content": "", "refusal": None}, None),
    ({"content": "Hello"}, None),
    ({"content": '! Say "usage":null,"usage":{ and\n\nthen'}, None),
    ({"content": " stop."}, None),
    ({}, "stop"),
]


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_stream(*, include_usage: bool) -> bytes:
    """The bytes OpenAI sends for one completion, with or without stream usage asked for."""
    head: dict[str, Any] = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
    events = []
    for delta, finish_reason in DELTAS:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**head, "choices": [choice]}
        if include_usage:
            chunk["usage"] = None
        events.append(sse(chunk))
    if include_usage:
        events.append(sse({**head, "choices": [], "usage": USAGE}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


WITH_USAGE = openai_stream(include_usage=True)
WITHOUT_USAGE = openai_stream(include_usage=False)
EXPECTED_USAGE = TokenUsage(input_tokens=19, output_tokens=10)

COMPLETION = orjson.dumps(
    {
        "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Hello! How can I assist you today?",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": USAGE,
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }
)


def test_the_wire_fixtures_are_what_openai_sends() -> None:
    assert b',"choices":[],"usage":{"prompt_tokens":19,' in WITH_USAGE
    assert WITH_USAGE.count(b',"usage":null}\n\n') == len(DELTAS)
    assert b'"usage"' not in WITHOUT_USAGE.replace(b'\\"usage\\"', b"")
    assert WITH_USAGE.endswith(b"}\n\ndata: [DONE]\n\n")


REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Say hello and stop."},
    ],
}


def llm_flow(*, stream: bool, client_wants_usage: bool) -> Flow:
    flow = make_flow(POLICY, body=orjson.dumps(REQUEST))
    flow.request_json = {**REQUEST, "stream": stream}
    assert TARGET is not None
    flow.llm = LlmCall(
        target=TARGET,
        stream=stream,
        client_wants_usage=client_wants_usage,
        client_schema=OPENAI_CHAT,
        provider_schema=OPENAI_CHAT,
    )
    return flow


async def respond_headers(
    meter: ResponseStages, flow: Flow, status: int, content_type: str
) -> None:
    flow.upstream_reached = True
    flow.response_status = status
    flow.response_headers = {"content-type": content_type, "content-length": "1234"}
    assert meter.on_response_headers(flow) is CONTINUE


async def feed(meter: ResponseStages, flow: Flow, chunk: bytes, *, end: bool) -> bytes:
    """One response body message as Envoy sends it; returns what the client gets for it."""
    flow.response_chunk = chunk
    flow.end_of_stream = end
    assert meter.on_response_body(flow) is CONTINUE
    pending = flow.take_pending()
    return chunk if pending.body is None else pending.body


async def stream_body(meter: ResponseStages, flow: Flow, chunks: list[bytes]) -> bytes:
    """Feeds chunks, the last with end_of_stream; returns what the client gets."""
    last = len(chunks) - 1
    return b"".join([await feed(meter, flow, c, end=i == last) for i, c in enumerate(chunks)])


async def run_stream(chunks: list[bytes], *, client_wants_usage: bool) -> tuple[bytes, Flow]:
    meter = ResponseStages()
    flow = llm_flow(stream=True, client_wants_usage=client_wants_usage)
    await respond_headers(meter, flow, 200, "text/event-stream; charset=utf-8")
    flow.take_pending()
    received = await stream_body(meter, flow, chunks)
    return received, flow


def cut(stream: bytes, offsets: list[int]) -> list[bytes]:
    bounds = [0, *offsets, len(stream)]
    return [stream[a:b] for a, b in pairwise(bounds)]


# --- response headers: which body mode ---------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type", "client_wants_usage", "mode", "drops_length"),
    [
        (200, "text/event-stream; charset=utf-8", False, BodyMode.STREAMED, True),
        (200, "text/event-stream", True, BodyMode.STREAMED, False),
        (200, "application/json", False, BodyMode.BUFFERED, False),
        (201, "application/json; charset=utf-8", False, BodyMode.BUFFERED, False),
        (400, "application/json", False, BodyMode.NONE, False),
        (401, "application/json; charset=utf-8", False, BodyMode.NONE, False),
        (429, "application/json", False, BodyMode.NONE, False),
        (500, "application/json", False, BodyMode.NONE, False),
        (503, "text/html", False, BodyMode.NONE, False),
    ],
)
async def test_response_headers_choose_the_body_mode(
    status: int, content_type: str, client_wants_usage: bool, mode: BodyMode, drops_length: bool
) -> None:
    meter = ResponseStages()
    flow = llm_flow(stream=mode is BodyMode.STREAMED, client_wants_usage=client_wants_usage)
    await respond_headers(meter, flow, status, content_type)
    assert flow.response_body_mode is mode
    pending = flow.take_pending()
    assert pending.remove_headers == (["content-length"] if drops_length else [])
    assert pending.body is None and not pending.set_headers
    # Time to first byte: at the headers for a buffered body, at the first chunk for a stream.
    assert (flow.first_byte_ns is not None) is (mode is BodyMode.BUFFERED)


async def test_a_flow_without_an_llm_call_is_left_alone() -> None:
    meter = ResponseStages()
    flow = make_flow(POLICY, method="GET", path="/v1/models")
    await respond_headers(meter, flow, 200, "text/event-stream")
    assert flow.response_body_mode is BodyMode.NONE
    flow.response_chunk = WITH_USAGE
    flow.end_of_stream = True
    assert meter.on_response_body(flow) is CONTINUE
    assert not flow.take_pending()


async def test_an_error_response_is_not_metered() -> None:
    meter = ResponseStages()
    flow = llm_flow(stream=False, client_wants_usage=False)
    await respond_headers(meter, flow, 429, "application/json")
    # No body phase is asked for, so the error body never reaches the meter.
    assert flow.response_body_mode is BodyMode.NONE
    assert flow.llm is not None and flow.llm.usage is None
    assert flow.first_byte_ns is None


# --- buffered JSON ------------------------------------------------------------------------


async def test_a_buffered_completion_reports_its_usage_and_is_not_touched() -> None:
    meter = ResponseStages()
    flow = llm_flow(stream=False, client_wants_usage=False)
    await respond_headers(meter, flow, 200, "application/json")
    flow.take_pending()
    assert await stream_body(meter, flow, [COMPLETION]) == COMPLETION
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"id":"chatcmpl-1","object":"chat.completion","choices":[]}',
        b'{"usage":null}',
        b'{"usage":{"prompt_tokens":"19","completion_tokens":10}}',
        b'{"usage":{"prompt_tokens":19}}',
        b'{"usage":{"prompt_tokens":-19,"completion_tokens":10}}',
        b'{"usage":{"prompt_tokens":true,"completion_tokens":10}}',
    ],
)
async def test_a_buffered_body_without_a_usable_usage_is_estimated(
    body: bytes, tokens: TokenCounter
) -> None:
    meter = ResponseStages(tokens)
    flow = llm_flow(stream=False, client_wants_usage=False)
    await respond_headers(meter, flow, 200, "application/json")
    assert await stream_body(meter, flow, [body]) == body
    meter.on_done(flow)
    prompt = tokens.count_messages("gpt-4o-mini", flow.request_json)
    assert flow.llm is not None
    assert flow.llm.usage == TokenUsage(prompt, 0, estimated=True)


async def test_a_buffered_completion_without_usage_counts_its_message(
    tokens: TokenCounter,
) -> None:
    meter = ResponseStages(tokens)
    flow = llm_flow(stream=False, client_wants_usage=False)
    await respond_headers(meter, flow, 200, "application/json")
    body = orjson.loads(COMPLETION)
    del body["usage"]
    await stream_body(meter, flow, [orjson.dumps(body)])
    assert flow.llm is not None and flow.llm.usage is not None
    # "Hello! How can I assist you today?" is 9 tokens in o200k_base.
    assert flow.llm.usage == TokenUsage(
        tokens.count_messages("gpt-4o-mini", flow.request_json), 9, estimated=True
    )


async def test_a_provider_usage_over_the_column_range_is_clamped() -> None:
    meter = ResponseStages()
    flow = llm_flow(stream=False, client_wants_usage=False)
    await respond_headers(meter, flow, 200, "application/json")
    await stream_body(meter, flow, [b'{"usage":{"prompt_tokens":5e9,"completion_tokens":1}}'])
    await stream_body(
        meter, flow, [b'{"usage":{"prompt_tokens":99999999999,"completion_tokens":1}}']
    )
    assert flow.llm is not None and flow.llm.usage == TokenUsage(2**32 - 1, 1)


# --- streams: the client asked for usage ---------------------------------------------------


async def test_client_asked_for_usage_gets_the_stream_byte_for_byte() -> None:
    received, flow = await run_stream([WITH_USAGE, b""], client_wants_usage=True)
    assert received == WITH_USAGE
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE
    assert flow.first_byte_ns is not None


async def test_client_asked_for_usage_stream_cut_at_every_byte() -> None:
    for offset in range(1, len(WITH_USAGE)):
        received, flow = await run_stream(cut(WITH_USAGE, [offset]), client_wants_usage=True)
        assert received == WITH_USAGE, f"cut at byte {offset}"
        assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE, f"cut at {offset}"


async def test_client_asked_for_usage_no_chunk_is_rewritten() -> None:
    meter = ResponseStages()
    flow = llm_flow(stream=True, client_wants_usage=True)
    await respond_headers(meter, flow, 200, "text/event-stream")
    flow.take_pending()
    for chunk in cut(WITH_USAGE, list(range(7, len(WITH_USAGE), 97))):
        flow.response_chunk = chunk
        meter.on_response_body(flow)
        assert not flow.take_pending()


# --- streams: usage asked for by the gateway only ------------------------------------------


async def test_client_not_asking_gets_exactly_the_stream_without_include_usage() -> None:
    received, flow = await run_stream([WITH_USAGE, b""], client_wants_usage=False)
    assert received == WITHOUT_USAGE
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


async def test_client_not_asking_stream_cut_at_every_byte() -> None:
    for offset in range(1, len(WITH_USAGE)):
        received, flow = await run_stream(cut(WITH_USAGE, [offset]), client_wants_usage=False)
        assert received == WITHOUT_USAGE, f"cut at byte {offset}"
        assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE, f"cut at {offset}"


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_stream_one_byte_per_chunk(client_wants_usage: bool) -> None:
    chunks = [WITH_USAGE[i : i + 1] for i in range(len(WITH_USAGE))]
    received, flow = await run_stream(chunks, client_wants_usage=client_wants_usage)
    assert received == (WITH_USAGE if client_wants_usage else WITHOUT_USAGE)
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


@pytest.mark.parametrize("seed", range(20))
async def test_stream_cut_at_random_places(seed: int) -> None:
    rng = random.Random(seed)
    offsets = sorted(rng.sample(range(1, len(WITH_USAGE)), rng.randint(2, 40)))
    received, flow = await run_stream(cut(WITH_USAGE, offsets), client_wants_usage=False)
    assert received == WITHOUT_USAGE
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_usage_chunk_without_a_final_blank_line_is_read_at_end_of_stream(
    client_wants_usage: bool,
) -> None:
    # The usage chunk is the very last bytes, with end_of_stream set on them.
    stream = WITH_USAGE.removesuffix(b"\n\ndata: [DONE]\n\n")
    received, flow = await run_stream(cut(stream, [100]), client_wants_usage=client_wants_usage)
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE
    if client_wants_usage:
        assert received == stream
    else:
        assert received == WITHOUT_USAGE.removesuffix(b"data: [DONE]\n\n")


def crlf(stream: bytes) -> bytes:
    return stream.replace(b"\n\n", b"\r\n\r\n")


async def test_crlf_stream_client_asked_is_untouched_and_metered() -> None:
    stream = crlf(WITH_USAGE)
    for offset in range(1, len(stream)):
        received, flow = await run_stream(cut(stream, [offset]), client_wants_usage=True)
        assert received == stream, f"cut at byte {offset}"
        assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


async def test_crlf_stream_client_not_asking_gets_the_same_events_without_usage() -> None:
    stream = crlf(WITH_USAGE)
    for offset in range(1, len(stream)):
        received, flow = await run_stream(cut(stream, [offset]), client_wants_usage=False)
        # The meter normalises line endings to LF; the events are those of WITHOUT_USAGE.
        assert received == WITHOUT_USAGE, f"cut at byte {offset}"
        assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


async def test_keep_alive_comments_pass_through() -> None:
    stream = b": OPENROUTER PROCESSING\n\n" + WITH_USAGE
    received, _ = await run_stream([stream], client_wants_usage=False)
    assert received == b": OPENROUTER PROCESSING\n\n" + WITHOUT_USAGE


async def test_mid_stream_error_event_passes_through() -> None:
    error = sse({"error": {"message": "The server had an error", "type": "server_error"}})
    upstream = SseSplitter().feed(WITH_USAGE)[:2]
    received, flow = await run_stream([b"".join(upstream) + error], client_wants_usage=False)
    assert received == b"".join(SseSplitter().feed(WITHOUT_USAGE)[:2]) + error
    assert flow.llm is not None and flow.llm.usage is None


async def test_null_usage_in_a_non_compact_chunk_is_removed_by_reparsing() -> None:
    chunk = {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
    }
    spaced = b"data: " + orjson.dumps({**chunk, "usage": None}).replace(b'":', b'": ') + b"\n\n"
    received, _ = await run_stream([spaced], client_wants_usage=False)
    assert received == sse(chunk)


def spaced_usage_stream() -> bytes:
    """The same stream as an OpenAI-compatible server using Python's json.dumps defaults."""
    return b"".join(
        e if e == b"data: [DONE]\n\n" else f"data: {json.dumps(orjson.loads(e[6:]))}\n\n".encode()
        for e in SseSplitter().feed(WITH_USAGE)
    )


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_non_compact_usage_chunk_is_metered(client_wants_usage: bool) -> None:
    stream = spaced_usage_stream()
    assert b'"usage": {"prompt_tokens": 19' in stream
    received, flow = await run_stream([stream], client_wants_usage=client_wants_usage)
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE
    if not client_wants_usage:
        assert b'"prompt_tokens"' not in received


# --- per-flow state ---------------------------------------------------------------------


async def test_interleaved_streams_keep_their_own_state() -> None:
    meter = ResponseStages()
    asked = llm_flow(stream=True, client_wants_usage=True)
    not_asked = llm_flow(stream=True, client_wants_usage=False)
    for flow in (asked, not_asked):
        await respond_headers(meter, flow, 200, "text/event-stream")
        flow.take_pending()
    pieces = cut(WITH_USAGE, list(range(13, len(WITH_USAGE), 61)))
    received: dict[str, list[bytes]] = {asked.request_id: [], not_asked.request_id: []}
    for index, piece in enumerate(pieces):
        for flow in (not_asked, asked):
            end = index == len(pieces) - 1
            received[flow.request_id].append(await feed(meter, flow, piece, end=end))
    assert b"".join(received[asked.request_id]) == WITH_USAGE
    assert b"".join(received[not_asked.request_id]) == WITHOUT_USAGE
    for flow in (asked, not_asked):
        assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE


async def test_a_client_supplied_request_id_shared_by_two_streams_does_not_mix_them() -> None:
    meter = ResponseStages()
    first = llm_flow(stream=True, client_wants_usage=False)
    second = llm_flow(stream=True, client_wants_usage=False)
    second.request_id = first.request_id
    for flow in (first, second):
        await respond_headers(meter, flow, 200, "text/event-stream")
        flow.take_pending()
    half = len(WITH_USAGE) // 2
    out_first = await feed(meter, first, WITH_USAGE[:half], end=False)
    out_second = await feed(meter, second, WITH_USAGE, end=True)
    out_first += await feed(meter, first, WITH_USAGE[half:], end=True)
    assert out_first == out_second == WITHOUT_USAGE


# --- usage that never came: estimated ------------------------------------------------------


def events_of(stream: bytes) -> list[bytes]:
    return SseSplitter().feed(stream)


STREAMED_TEXT = "".join(str(d.get("content", "")) for d, _ in DELTAS)


async def test_a_stream_cut_before_its_usage_is_estimated_from_what_was_streamed(
    tokens: TokenCounter,
) -> None:
    meter = ResponseStages(tokens)
    flow = llm_flow(stream=True, client_wants_usage=False)
    await respond_headers(meter, flow, 200, "text/event-stream")
    flow.take_pending()
    events = events_of(WITH_USAGE)
    # Three content chunks reach the client, then it hangs up: no end of stream, no usage.
    seen = b"".join(events[:4])
    await feed(meter, flow, seen[:100], end=False)
    await feed(meter, flow, seen[100:], end=False)
    assert flow.llm is not None and flow.llm.usage is None
    meter.on_done(flow)
    text = "".join(str(d.get("content", "")) for d, _ in DELTAS[:4])
    usage = usage_of(flow)
    assert usage == TokenUsage(
        input_tokens=tokens.count_messages("gpt-4o-mini", flow.request_json),
        output_tokens=tokens.count("gpt-4o-mini", [text]),
        estimated=True,
    )
    assert usage.output_tokens > 0


def usage_of(flow: Flow) -> TokenUsage | None:
    assert flow.llm is not None
    return flow.llm.usage


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_a_stream_that_ends_without_usage_is_estimated(
    tokens: TokenCounter, client_wants_usage: bool
) -> None:
    received, flow = await run_stream([WITHOUT_USAGE], client_wants_usage=client_wants_usage)
    assert received == WITHOUT_USAGE
    ResponseStages(tokens).on_done(flow)
    assert flow.llm is not None and flow.llm.usage is not None
    assert flow.llm.usage.estimated
    assert flow.llm.usage.output_tokens == tokens.count("gpt-4o-mini", [STREAMED_TEXT])


async def test_reported_usage_is_not_estimated_again(tokens: TokenCounter) -> None:
    _, flow = await run_stream([WITH_USAGE], client_wants_usage=False)
    ResponseStages(tokens).on_done(flow)
    assert flow.llm is not None and flow.llm.usage == EXPECTED_USAGE
    assert not flow.llm.usage.estimated


@pytest.mark.parametrize(("status", "reached"), [(429, True), (500, True), (0, False)])
async def test_a_call_the_provider_did_not_take_is_not_estimated(
    tokens: TokenCounter, status: int, reached: bool
) -> None:
    meter = ResponseStages(tokens)
    flow = llm_flow(stream=True, client_wants_usage=False)
    flow.upstream_reached = reached
    flow.response_status = status
    meter.on_done(flow)
    assert flow.llm is not None and flow.llm.usage is None


async def test_a_long_stream_is_counted_from_its_head_in_proportion(
    tokens: TokenCounter,
) -> None:
    head: dict[str, Any] = {"id": COMPLETION_ID, "object": "chat.completion.chunk"}
    pieces = [f" word{n % 97}" for n in range(3000)]
    stream = b"".join(
        sse({**head, "choices": [{"index": 0, "delta": {"content": piece}}]}) for piece in pieces
    )
    assert len("".join(pieces)) > KEPT_OUTPUT_CHARS / 4
    _, flow = await run_stream(
        cut(stream, list(range(1000, len(stream), 1000))), client_wants_usage=True
    )
    ResponseStages(tokens).on_done(flow)
    assert flow.llm is not None and flow.llm.usage is not None
    assert flow.llm.kept_chars <= KEPT_OUTPUT_CHARS
    exact = tokens.count("gpt-4o-mini", ["".join(pieces)])
    assert abs(flow.llm.usage.output_tokens - exact) <= exact * 0.02


async def test_tool_calls_and_refusals_are_output_too(tokens: TokenCounter) -> None:
    head: dict[str, Any] = {"id": COMPLETION_ID, "object": "chat.completion.chunk"}
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather"}}
    arguments = {"index": 0, "function": {"arguments": '{"city": "Paris"}'}}
    deltas = [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"tool_calls": [arguments]},
        {"refusal": "I can't"},
    ]
    stream = (
        b"".join(sse({**head, "choices": [{"index": 0, "delta": delta}]}) for delta in deltas)
        + b'data: {"choices": [{"index": 0, "delta": {"content": "cut of'
    )
    _, flow = await run_stream([stream[:-20], stream[-20:]], client_wants_usage=True)
    assert flow.llm is not None
    assert flow.llm.output_texts == ["get_weather", '{"city": "Paris"}', "I can't"]


async def test_until_the_tokenizer_loads_the_estimate_uses_the_rule_of_thumb() -> None:
    _, flow = await run_stream([WITHOUT_USAGE], client_wants_usage=False)
    ResponseStages(TokenCounter()).on_done(flow)
    assert flow.llm is not None and flow.llm.usage is not None
    assert flow.llm.usage.estimated
    assert flow.llm.usage.output_tokens == -(-len(STREAMED_TEXT.encode()) // 4)  # bytes / 4
