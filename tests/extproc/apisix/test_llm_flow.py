"""An LLM request under APISIX, on the wire: ext-plugin-pre-req's HTTPReqCall parks the flow and
hands it over by key; the Gatez plugin's frames (UPSTREAM_REQUEST, RESPONSE_START, RESPONSE_CHUNK,
RESPONSE_END) carry the provider call, played as `apisix/plugins/gatez.lua` plays them
(`tests.support.apisix.PluginConnection`), with the real pipeline behind the runner and the fake
OpenAI upstream (or a scripted answer) as the provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from extproc.apisix.frames import HttpRequestCall, RequestBodyInfo, Rewrite
from extproc.apisix.plugin_wire import META_LENGTH, PluginRpc
from gatez.pipeline import CONTINUE, BodyMode, Flow, Respond, Verdict
from gatez.translate.model import TextDelta
from gatez.translate.openai_chat import StreamDecoder
from tests.extproc.apisix.conftest import (
    API_KEY,
    PROVIDER_KEY,
    SECURE_PROVIDER_KEY,
    Runner,
)
from tests.fakes.openai_upstream import (
    UpstreamServer,
    count_completion_tokens,
    count_prompt_tokens,
    sse_event,
)
from tests.support.apisix import (
    PluginAnswer,
    PluginConnection,
    ProviderAnswer,
    RequestContext,
    RunnerConnection,
    apply_rewrite,
    provider_over_http,
    scripted,
)

LLM = (("gatez", "{}"),)
MESSAGES: list[dict[str, Any]] = [{"role": "user", "content": "hello apisix"}]
# What the plugin must never pass on, and what the runner must never hand it for the provider.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "content-length"}


async def handover(
    runner: Runner,
    body: dict[str, Any],
    *,
    extra_headers: tuple[tuple[str, str], ...] = (),
    connection: RunnerConnection | None = None,
) -> tuple[str, Rewrite]:
    """The pre-req call of an LLM request; returns the flow's key and the Rewrite."""
    connection = connection or await runner.connect()
    token = await connection.prepare_conf(LLM, "route#gatez-llm#ext-plugin-pre-req#1")
    raw = orjson.dumps(body)
    headers = (
        ("host", "gateway.example.test:9080"),
        ("authorization", f"Bearer {API_KEY}"),
        ("content-type", "application/json"),
        ("content-length", str(len(raw))),
        *extra_headers,
    )
    call = HttpRequestCall(
        1, bytes([127, 0, 0, 1]), "POST", "/v1/chat/completions", (), headers, token
    )
    context = RequestContext(vars={"request_id": "nginx-id"}, request_body=raw)
    reply = await connection.request_call(call, context)
    assert context.asked == [RequestBodyInfo()]
    assert isinstance(reply.action, Rewrite), reply.action
    key = dict(reply.action.headers).get("x-gatez-flow")
    assert isinstance(key, str) and key
    return key, reply.action


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "fast", "messages": MESSAGES, "stream": stream, **extra}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


# -- the handover ------------------------------------------------------------------------------


async def test_the_pre_req_rewrite_only_names_the_flow_and_removes_what_the_pipeline_removed(
    runner: Runner,
) -> None:
    key, rewrite = await handover(
        runner,
        chat(),
        extra_headers=(("x-api-key", API_KEY), ("cookie", "session=1"), ("x-gatez-flow", "forged")),
    )
    # No path, body, args or response headers: the provider request stays in the runner.
    assert (rewrite.path, rewrite.body, rewrite.args, rewrite.resp_headers) == (None, None, (), ())
    assert rewrite.headers[-1] == ("x-gatez-flow", key)
    assert all(value is None for _, value in rewrite.headers[:-1])
    removed = {name for name, _ in rewrite.headers[:-1]}
    assert {"authorization", "x-api-key", "cookie"} <= removed
    assert PROVIDER_KEY not in repr(rewrite)
    # What APISIX then holds: the flow's key (the client's forged one replaced), no credential.
    proxied = apply_rewrite(
        HttpRequestCall(
            0,
            bytes(4),
            "POST",
            "/v1/chat/completions",
            (),
            (
                ("authorization", f"Bearer {API_KEY}"),
                ("x-api-key", API_KEY),
                ("x-gatez-flow", "forged"),
            ),
            0,
        ),
        b"",
        rewrite,
    )
    assert proxied.headers == (("x-gatez-flow", key),)


async def test_upstream_request_hands_over_the_provider_call_once(runner: Runner) -> None:
    key, _ = await handover(
        runner,
        chat(temperature=0.5),
        extra_headers=(
            ("accept", "application/json"),
            ("accept", "text/plain"),
            ("connection", "keep-alive"),
            ("te", "trailers"),
            ("x-gatez-upstream", "http://evil.example:80"),
            ("x-request-id", "client-chosen"),
        ),
    )
    plugin = await runner.plugin()
    answer = await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    meta = answer.meta
    port = meta["port"]
    assert (meta["scheme"], meta["host"], meta["server_name"]) == ("http", "127.0.0.1", "127.0.0.1")
    assert (meta["method"], meta["path"]) == ("POST", "/v1/chat/completions")
    headers = [tuple(entry) for entry in meta["headers"]]
    assert ("authorization", f"Bearer {PROVIDER_KEY}") in headers
    assert [v for n, v in headers if n == "accept"] == ["application/json", "text/plain"]
    assert [v for n, v in headers if n == "host"] == [f"127.0.0.1:{port}"]
    assert [v for n, v in headers if n == "x-request-id"] == [key]  # the row's, not the client's
    names = [n for n, _ in headers]
    assert not HOP_BY_HOP & set(names)
    assert not [n for n in names if n.startswith("x-gatez-")]
    assert API_KEY not in repr(headers)
    # The body as routed: the alias resolved, re-serialised once.
    assert orjson.loads(answer.data) == {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": False,
        "temperature": 0.5,
    }

    again = await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    assert again.meta == {"error": "already_requested"} and again.data == b""


async def test_a_tls_provider_is_named_for_sni_and_certificate_checks(runner: Runner) -> None:
    body = {"model": "secure", "messages": MESSAGES}
    key, _ = await handover(runner, body)
    answer = await (await runner.plugin()).ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    meta = answer.meta
    assert (meta["scheme"], meta["host"], meta["port"], meta["server_name"]) == (
        "https",
        "llm.example.test",
        8443,
        "llm.example.test",
    )
    assert meta["path"] == "/openai/v1/chat/completions"
    headers = dict(tuple(entry) for entry in meta["headers"])
    assert headers["host"] == "llm.example.test:8443"
    assert headers["authorization"] == f"Bearer {SECURE_PROVIDER_KEY}"


# -- responses ---------------------------------------------------------------------------------


async def test_a_json_answer_is_buffered_metered_and_keeps_the_providers_headers(
    runner: Runner, upstream: UpstreamServer, http: aiohttp.ClientSession
) -> None:
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    received = await plugin.before_proxy(key, provider_over_http(http))

    # The answer has a content-length: read whole, it goes with its headers (one round trip).
    assert [rpc for rpc, _ in plugin.sent] == [
        PluginRpc.UPSTREAM_REQUEST,
        PluginRpc.RESPONSE_START,
    ]
    assert plugin.sent[1][1]["eos"] is True
    seen = upstream.requests[-1]
    assert seen.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert received.status == 200 and received.complete
    assert received.json()["choices"][0]["message"]["content"] == "Echo: hello apisix"
    assert received.header("content-type") == ["application/json"]
    assert received.header("content-length") == [str(len(received.body))]
    assert received.header("x-request-id") == [key]  # the provider's own id replaced
    assert received.header("openai-version") == ["2020-10-01"]
    assert received.header("x-ratelimit-limit-requests")
    assert runner.runner is not None and runner.runner.waiting_flows == 0

    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    usage = received.json()["usage"]
    assert (row.input_tokens, row.output_tokens, row.status, row.streamed) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        200,
        False,
    )
    assert not row.usage_estimated


PROVIDER_HEADERS = (
    ("content-type", "application/json"),
    ("x-request-id", "req_provider"),
    ("set-cookie", "a=1"),
    ("set-cookie", "b=2"),
    ("connection", "keep-alive"),
    ("keep-alive", "timeout=5"),
    ("transfer-encoding", "chunked"),
    ("content-length", "12"),
    ("x-ratelimit-remaining-requests", "99"),
)


async def test_response_start_answers_the_clients_headers(runner: Runner) -> None:
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    headers = [[n, v] for n, v in PROVIDER_HEADERS]
    plan = await plugin.ask(
        PluginRpc.RESPONSE_START, {"flow": key, "status": 200, "headers": headers}
    )
    assert plan.meta == {
        "status": 200,
        "body": "buffered",
        "headers": [
            ["content-type", "application/json"],
            ["set-cookie", "a=1"],
            ["set-cookie", "b=2"],
            ["x-ratelimit-remaining-requests", "99"],
            ["x-request-id", key],
        ],
    }


def sse(*events: dict[str, Any]) -> tuple[bytes, ...]:
    return (*(sse_event(e) for e in events), b"data: [DONE]\n\n")


def delta(text: str) -> dict[str, Any]:
    return {
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"content": text}}],
    }


USAGE_EVENT: dict[str, Any] = {
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
}
SSE_HEADERS = (("content-type", "text/event-stream; charset=utf-8"), ("x-request-id", "req_p"))


@pytest.mark.parametrize(
    ("status", "content_type", "plan"),
    [
        (200, "text/event-stream; charset=utf-8", "streamed"),
        (200, "application/json", "buffered"),
        (429, "application/json", "none"),
        (500, "application/json; charset=utf-8", "none"),
    ],
    ids=["sse", "json", "rate-limited", "provider-error"],
)
async def test_the_body_plan_follows_the_providers_answer(
    runner: Runner, status: int, content_type: str, plan: str
) -> None:
    key, _ = await handover(runner, chat(stream=plan == "streamed"))
    plugin = await runner.plugin()
    await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    answer = await plugin.ask(
        PluginRpc.RESPONSE_START,
        {"flow": key, "status": status, "headers": [["content-type", content_type]]},
    )
    assert (answer.meta["status"], answer.meta["body"]) == (status, plan)
    assert ["content-type", content_type] in answer.meta["headers"]


async def test_an_error_answer_passes_through_and_its_row_is_written_at_the_end(
    runner: Runner,
) -> None:
    error = b'{"error": {"message": "Rate limit reached", "type": "requests"}}'
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    received = await plugin.before_proxy(
        key,
        scripted(
            ProviderAnswer(
                429, (("content-type", "application/json"), ("retry-after", "3")), (error,)
            )
        ),
    )
    assert (received.status, received.body, received.complete) == (429, error, True)
    assert received.header("retry-after") == ["3"]
    # Plan "none": the body went straight to the client, then RESPONSE_END with no error.
    assert plugin.sent[-1] == (PluginRpc.RESPONSE_END, {"flow": key, "error": ""})
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert (row.status, row.error) == (429, "")


async def test_a_stream_passes_chunk_by_chunk_with_usage_hidden_and_metered(
    runner: Runner, upstream: UpstreamServer, http: aiohttp.ClientSession
) -> None:
    key, _ = await handover(runner, chat(stream=True))
    plugin = await runner.plugin()
    received = await plugin.before_proxy(key, provider_over_http(http))

    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    assert received.status == 200 and received.complete
    assert received.header("content-type") == ["text/event-stream; charset=utf-8"]
    assert received.header("x-request-id") == [key]
    assert not received.header("content-length")
    body = received.body
    assert b'"usage"' not in body and body.endswith(b"data: [DONE]\n\n")
    reply = "Echo: hello apisix"
    events = StreamDecoder().feed(body)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == reply
    chunks = [meta for rpc, meta in plugin.sent if rpc is PluginRpc.RESPONSE_CHUNK]
    assert chunks[-1] == {"flow": key, "eos": True}
    assert all(meta == {"flow": key, "eos": False} for meta in chunks[:-1])
    # The flow ended at the chunk with eos: no RESPONSE_END follows.
    assert plugin.sent[-1][0] is PluginRpc.RESPONSE_CHUNK

    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    assert row.streamed and not row.usage_estimated
    # The provider's own report (the fake counts by its documented rule).
    assert (row.input_tokens, row.output_tokens) == (
        count_prompt_tokens(MESSAGES),
        count_completion_tokens(reply),
    )


async def test_a_client_asking_for_usage_gets_it_and_the_row_matches(runner: Runner) -> None:
    key, _ = await handover(runner, chat(stream=True, stream_options={"include_usage": True}))
    plugin = await runner.plugin()
    events = sse(delta("Hi"), delta(" there"), USAGE_EVENT)
    received = await plugin.before_proxy(key, scripted(ProviderAnswer(200, SSE_HEADERS, events)))
    assert received.body == b"".join(events)
    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    assert (row.input_tokens, row.output_tokens, row.usage_estimated) == (11, 7, False)


async def test_time_to_first_token_is_the_first_chunks_time(runner: Runner) -> None:
    key, _ = await handover(runner, chat(stream=True))
    plugin = await runner.plugin()
    events = sse(*(delta(f" w{i}") for i in range(5)), USAGE_EVENT)
    answer = ProviderAnswer(200, SSE_HEADERS, events, pause_s=0.05)
    received = await plugin.before_proxy(key, scripted(answer))
    assert received.complete and b'"usage"' not in received.body
    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    # Seven chunks 50 ms apart: the first came after ~50 ms, the stream ended after ~350 ms.
    assert 40 <= row.ttft_ms < 200 and row.latency_ms >= 340
    assert (row.input_tokens, row.output_tokens) == (11, 7)


async def test_a_client_that_leaves_mid_stream_is_metered_by_estimate_once(
    runner: Runner,
) -> None:
    key, _ = await handover(runner, chat(stream=True))
    plugin = await runner.plugin()
    events = sse(*(delta(f" word{i}") for i in range(6)), USAGE_EVENT)
    received = await plugin.before_proxy(
        key, scripted(ProviderAnswer(200, SSE_HEADERS, events)), client_leaves_after=2
    )
    assert not received.complete and len(received.chunks) == 2
    assert plugin.sent[-1] == (PluginRpc.RESPONSE_END, {"flow": key, "error": "client_closed"})
    # Anything more about that flow is for a flow the runner no longer has.
    late = await plugin.ask(PluginRpc.RESPONSE_END, {"flow": key, "error": "client_closed"})
    assert late.meta == {"error": "unknown_flow"}

    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    assert row.usage_estimated and row.output_tokens > 0 and row.streamed
    (request_row,) = runner.request_rows(key)
    assert (request_row.status, request_row.error) == (200, "client_closed")


async def test_a_broken_provider_stream_is_reported_and_the_client_cut_off(
    runner: Runner,
) -> None:
    key, _ = await handover(runner, chat(stream=True))
    plugin = await runner.plugin()
    events = sse(delta("Hi"), delta(" there"), USAGE_EVENT)
    answer = ProviderAnswer(200, SSE_HEADERS, events, read_error_after=2)
    received = await plugin.before_proxy(key, scripted(answer))
    assert not received.complete and received.body == b"".join(events[:2])
    assert plugin.sent[-1] == (
        PluginRpc.RESPONSE_END,
        {"flow": key, "error": "upstream_read_failed"},
    )
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert row.error == "upstream_read_failed"


@pytest.mark.parametrize(
    ("reason", "status"),
    [("connect", 503), ("tls", 503), ("timeout", 504), ("resolve", 503)],
)
async def test_a_provider_that_cannot_be_reached_gets_the_gateways_answer(
    runner: Runner, reason: str, status: int
) -> None:
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    received = await plugin.before_proxy(key, scripted(ProviderAnswer(failure=reason)))
    assert plugin.sent[-1] == (PluginRpc.RESPONSE_START, {"flow": key, "error": reason})
    assert received.status == status
    assert received.header("content-type") == ["application/json"]
    assert received.header("x-request-id") == [key]
    error = received.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", f"upstream_{reason}")
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert (row.status, row.error) == (status, f"upstream_{reason}")
    # As behind Envoy (tests/e2e/test_provider_tls.py): the failed call has its AI row.
    (ai_row,) = runner.ai_rows(key)
    assert (ai_row.status, ai_row.input_tokens, ai_row.output_tokens) == (status, 0, 0)


async def test_a_provider_answer_without_headers_is_taken(runner: Runner) -> None:
    """lua-resty-http gives an empty headers table for a bare status line; cjson encodes it as
    `{}`, not `[]`."""
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    received = await plugin.before_proxy(key, scripted(ProviderAnswer(204, (), ())))
    assert plugin.sent[1][1] == {"flow": key, "status": 204, "headers": []}
    assert received.status == 204 and received.header("x-request-id") == [key]


# -- what goes wrong ---------------------------------------------------------------------------


@pytest.mark.parametrize("rpc", list(PluginRpc))
async def test_a_frame_for_an_unknown_flow_is_refused(runner: Runner, rpc: PluginRpc) -> None:
    plugin = await runner.plugin()
    answer = await plugin.ask(rpc, {"flow": "not-a-flow", "status": 200, "headers": []})
    assert answer == PluginAnswer({"error": "unknown_flow"}, b"")


def raw_frame(rpc: int, payload: bytes) -> bytes:
    return bytes([rpc]) + len(payload).to_bytes(3, "big") + payload


def with_meta(meta: bytes) -> bytes:
    return META_LENGTH.pack(len(meta)) + meta


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00",
        META_LENGTH.pack(100) + b"{}",
        with_meta(b"not json"),
        with_meta(b"[1, 2]"),
        with_meta(b'{"status": 200}'),
        with_meta(b'{"flow": 7}'),
    ],
    ids=["short", "meta-past-end", "not-json", "not-object", "no-flow", "flow-not-string"],
)
async def test_a_malformed_frame_is_answered_and_the_connection_goes_on(
    runner: Runner, payload: bytes
) -> None:
    connection = await runner.connect()
    plugin = PluginConnection.sharing(connection)
    connection.writer.write(raw_frame(PluginRpc.RESPONSE_START, payload))
    rpc, answer = await connection.receive()
    assert rpc == PluginRpc.RESPONSE_START
    assert answer == with_meta(b'{"error":"bad_frame"}')
    # The same connection carries the next request: pre-req, then the plugin's frames.
    key, _ = await handover(runner, chat(), connection=connection)
    target = await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    assert target.meta["method"] == "POST"


@pytest.mark.parametrize(
    ("frames", "bad"),
    [
        ([(PluginRpc.RESPONSE_START, {"status": 200, "headers": []})], 0),
        ([(PluginRpc.RESPONSE_CHUNK, {"eos": True})], 0),
        (
            [
                (PluginRpc.UPSTREAM_REQUEST, {}),
                (PluginRpc.RESPONSE_CHUNK, {"eos": False}),
            ],
            1,
        ),
        (
            [
                (PluginRpc.UPSTREAM_REQUEST, {}),
                (PluginRpc.RESPONSE_START, {"status": 200, "headers": []}),
                (PluginRpc.RESPONSE_START, {"status": 200, "headers": []}),
            ],
            2,
        ),
        (
            [
                (PluginRpc.UPSTREAM_REQUEST, {}),
                (PluginRpc.RESPONSE_START, {"status": 99, "headers": []}),
            ],
            1,
        ),
        (
            [
                (PluginRpc.UPSTREAM_REQUEST, {}),
                (PluginRpc.RESPONSE_START, {"status": 200, "headers": [["a"]]}),
            ],
            1,
        ),
    ],
    ids=[
        "start-before-request",
        "chunk-before-request",
        "chunk-before-start",
        "start-twice",
        "bad-status",
        "bad-header",
    ],
)
async def test_frames_out_of_order_end_the_flow_with_an_error_answer(
    runner: Runner, frames: list[tuple[PluginRpc, dict[str, Any]]], bad: int
) -> None:
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    answers = [await plugin.ask(rpc, {"flow": key, **meta}) for rpc, meta in frames]
    assert answers[bad].meta == {"error": "bad_frame"}
    assert all("error" not in a.meta for a in answers[:bad])
    # The flow is over (its row says why); the connection still serves.
    after = await plugin.ask(PluginRpc.RESPONSE_END, {"flow": key, "error": ""})
    assert after.meta == {"error": "unknown_flow"}
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert row.error == "bad_plugin_frame"
    other, _ = await handover(runner, chat())
    assert "error" not in (await plugin.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": other})).meta


async def test_a_flow_the_plugin_never_asks_for_expires_with_its_row(runner: Runner) -> None:
    """A route with ext-plugin-pre-req but without the gatez plugin: APISIX has no upstream for
    it and answers itself; the parked flow ends after `response_wait_s`."""
    assert runner.runner is not None
    runner.runner._response_wait_s = 0.05
    key, _ = await handover(runner, chat())
    assert runner.runner.waiting_flows == 1
    await asyncio.sleep(0.1)
    assert runner.runner.waiting_flows == 0
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert (row.status, row.error) == (0, "no_plugin_call")
    late = await (await runner.plugin()).ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
    assert late.meta == {"error": "unknown_flow"}


async def test_a_plugin_frame_keeps_its_flow_alive(runner: Runner) -> None:
    """Every frame re-arms the flow's timer: a stream longer than `response_wait_s` with chunks
    inside it is not cut."""
    assert runner.runner is not None
    runner.runner._response_wait_s = 0.15
    key, _ = await handover(runner, chat(stream=True))
    plugin = await runner.plugin()
    events = sse(*(delta(f" w{i}") for i in range(4)), USAGE_EVENT)
    answer = ProviderAnswer(200, SSE_HEADERS, events, pause_s=0.06)
    received = await plugin.before_proxy(key, scripted(answer))
    assert received.complete and received.body.endswith(b"data: [DONE]\n\n")
    await runner.drain_logs()
    (row,) = runner.request_rows(key)
    assert row.error == "" and row.latency_ms > 300


# -- the gateway's own answers on the response path --------------------------------------------


async def probe_handover(runner: Runner) -> str:
    """A request on the probe's route with response phases: parked and handed over like an
    LLM request (what output guardrails and caches will use)."""
    runner.dispatcher.respond = True
    connection = await runner.connect()
    token = await connection.prepare_conf(LLM, "route#probe#ext-plugin-pre-req#1")
    call = HttpRequestCall(
        1, bytes(4), "GET", "/probe", (), (("host", "backend.test:8080"),), token
    )
    reply = await connection.request_call(call, RequestContext())
    assert isinstance(reply.action, Rewrite)
    return dict(reply.action.headers)["x-gatez-flow"] or ""


async def test_a_refusal_at_the_response_headers_replaces_the_answer(runner: Runner) -> None:
    runner.probe.response_verdict = lambda flow: Respond(
        451, b'{"error":"withheld"}', (("content-type", "application/json"),), reason="guard"
    )
    key = await probe_handover(runner)
    plugin = await runner.plugin()
    calls: list[PluginAnswer] = []
    answer = ProviderAnswer(200, (("content-type", "text/plain"),), (b"secret",))
    received = await plugin.before_proxy(key, scripted(answer, calls))
    (request,) = calls
    assert (request.meta["scheme"], request.meta["host"], request.meta["port"]) == (
        "http",
        "backend.test",
        8080,
    )
    assert (received.status, received.body) == (451, b'{"error":"withheld"}')
    assert received.headers == {"content-type": ["application/json"], "x-request-id": [key]}
    assert [rpc for rpc, _ in plugin.sent] == [PluginRpc.UPSTREAM_REQUEST, PluginRpc.RESPONSE_START]
    assert [(f.request_id, f.response_status, f.error) for f in await runner.probe_done()] == [
        (key, 451, "guard")
    ]


async def test_a_refusal_mid_stream_ends_the_stream_with_the_gateways_last_words(
    runner: Runner,
) -> None:
    def stream(flow: Flow) -> Verdict:
        flow.response_body_mode = BodyMode.STREAMED
        return CONTINUE

    def refuse_the_second(flow: Flow) -> Verdict:
        if flow.response_chunk == b"two":
            return Respond(200, b"[cut]", reason="guard")
        return CONTINUE

    runner.probe.response_verdict = stream
    runner.probe.response_body_verdict = refuse_the_second
    key = await probe_handover(runner)
    plugin = await runner.plugin()
    answer = ProviderAnswer(200, (("content-type", "text/plain"),), (b"one", b"two", b"three"))
    received = await plugin.before_proxy(key, scripted(answer))
    # The status was sent with the first chunk; the refusal's body is the stream's end.
    assert (received.status, received.chunks, received.complete) == (200, [b"one", b"[cut]"], True)
    assert [meta.get("eos") for _, meta in plugin.sent[2:]] == [False, False]
    (done,) = await runner.probe_done()
    assert done.error == "guard"


async def test_a_json_answer_of_unknown_length_is_buffered_in_its_own_frame(runner: Runner) -> None:
    key, _ = await handover(runner, chat())
    plugin = await runner.plugin()
    body = orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "upstream-model-1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )
    headers = (("content-type", "application/json"), ("transfer-encoding", "chunked"))
    answer = ProviderAnswer(200, headers, (body[:20], body[20:]))
    received = await plugin.before_proxy(key, scripted(answer))
    assert [rpc for rpc, _ in plugin.sent] == [
        PluginRpc.UPSTREAM_REQUEST,
        PluginRpc.RESPONSE_START,
        PluginRpc.RESPONSE_CHUNK,
    ]
    assert plugin.sent[2][1] == {"flow": key, "eos": True}
    assert received.body == body and received.header("content-length") == [str(len(body))]
    await runner.drain_logs()
    (row,) = runner.ai_rows(key)
    assert (row.input_tokens, row.output_tokens) == (3, 1)
