"""UsageMeter on OpenAI's passthrough APIs (Responses, Embeddings): the usage is read from the
provider's body as it is, or from the last event of a streamed Responses call, whichever way
that stream ends. The bodies are built by the fake OpenAI, which follows OpenAI's reference."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.stages.client_api import EMBEDDINGS_API, RESPONSES_API, Endpoint
from gatez.pipeline import Flow, LlmCall, TokenUsage
from gatez.translate.schemas import OPENAI_CHAT
from tests.extproc.stages.test_usage import (
    POLICY,
    TARGET,
    ResponseStages,
    respond_headers,
    stream_body,
)
from tests.fakes.openai_upstream import (
    EmbeddingsRequest,
    Reply,
    ResponseIds,
    ResponsesRequest,
    deterministic_reply,
    embeddings_object,
    named_sse_event,
    parse_responses_request,
    response_object,
    response_stream_events,
)
from tests.support.flows import make_flow

IDS = ResponseIds("resp_1", "msg_1", 1_700_000_000)


def responses_call(
    *, max_output_tokens: int | None = None, stream: bool
) -> tuple[ResponsesRequest, Reply]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "input": "one two three", "stream": stream}
    if max_output_tokens is not None:
        body["max_output_tokens"] = max_output_tokens
    request = parse_responses_request(orjson.dumps(body), None)
    assert isinstance(request, ResponsesRequest)
    return request, deterministic_reply(request.messages, request.max_output_tokens)


def passthrough_flow(api: Endpoint, *, stream: bool) -> Flow:
    flow = make_flow(POLICY, body=b"{}")
    flow.request_json = {}
    assert TARGET is not None
    flow.llm = LlmCall(target=TARGET, stream=stream, client_wants_usage=True)
    flow.llm.client_schema = flow.llm.provider_schema = OPENAI_CHAT
    flow.llm.passthrough = api.operation.value
    return flow


async def metered(api: Endpoint, body: bytes, *, stream: bool) -> tuple[bytes, Flow]:
    stages = ResponseStages()
    flow = passthrough_flow(api, stream=stream)
    content_type = "text/event-stream; charset=utf-8" if stream else "application/json"
    await respond_headers(stages, flow, 200, content_type)
    flow.take_pending()
    # A few bytes at a time, as a proxy may deliver them.
    chunks = [body[i : i + 7] for i in range(0, len(body), 7)] if stream else [body]
    received = await stream_body(stages, flow, chunks)
    stages.on_done(flow)
    return received, flow


@pytest.mark.parametrize("max_output_tokens", [None, 2])
async def test_a_streamed_response_is_metered_from_its_last_event(
    max_output_tokens: int | None,
) -> None:
    request, reply = responses_call(max_output_tokens=max_output_tokens, stream=True)
    events = response_stream_events(request, reply, IDS)
    body = b"".join(named_sse_event(event) for event in events)

    received, flow = await metered(RESPONSES_API, body, stream=True)

    assert received == body
    # `response.incomplete` (cut by max_output_tokens) carries the usage as `.completed` does.
    assert events[-1]["type"] == (
        "response.completed" if max_output_tokens is None else "response.incomplete"
    )
    assert flow.llm is not None
    assert flow.llm.usage == TokenUsage(reply.prompt_tokens, reply.completion_tokens)


@pytest.mark.parametrize("max_output_tokens", [None, 2])
async def test_a_plain_response_is_metered_from_its_body(max_output_tokens: int | None) -> None:
    request, reply = responses_call(max_output_tokens=max_output_tokens, stream=False)
    body = orjson.dumps(response_object(request, reply, IDS))

    received, flow = await metered(RESPONSES_API, body, stream=False)

    assert received == body
    assert flow.llm is not None
    assert flow.llm.usage == TokenUsage(reply.prompt_tokens, reply.completion_tokens)


async def test_embeddings_are_metered_as_input_only() -> None:
    answer = embeddings_object(EmbeddingsRequest("m", ("hello world", "hi"), 4, base64=True))
    _, flow = await metered(EMBEDDINGS_API, orjson.dumps(answer), stream=False)

    assert flow.llm is not None
    assert flow.llm.usage == TokenUsage(3, 0)
