"""The runner, driven frame by frame as APISIX drives it (`tests.support.apisix`'s client), with
the cases of APISIX's own ext-plugin tests: input decoding, Stop, Rewrite, ExtraInfo, errors,
dropped connections and tokens."""

from __future__ import annotations

import asyncio
import ipaddress

import orjson
import pytest

from extproc.apisix.frames import (
    ErrorCode,
    FrameError,
    HttpRequestCall,
    HttpResponseCall,
    PrepareConf,
    RequestBodyInfo,
    ResponseBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_http_request_call,
    encode_frame,
    encode_http_request_call,
    encode_prepare_conf,
)
from extproc.apisix.runner import ConfStore, RouteConf
from gatez.pipeline import CONTINUE, BodyMode, Continue, Flow, Hold, Respond, Verdict
from tests.extproc.apisix.conftest import API_KEY, PROVIDER, PROVIDER_KEY, Runner
from tests.support.apisix import RequestContext, RunnerConnection, RunnerError

# The route kind comes from the policy; these confs only tell the probe dispatcher whether the
# probe acts on the response too (see ProbeDispatcher).
PROBE = (("gatez", "{}"),)
PROBE_RESPONSE = (("gatez", '{"probe": "response"}'),)
LLM = (("gatez", ""),)

# APISIX's "check input" request: PUT /hello?xx=y&xx=z&&y=&&z with repeated X-Req headers.
CHECK_INPUT = HttpRequestCall(
    id=0,
    src_ip=bytes([127, 0, 0, 1]),
    method="PUT",
    path="/hello",
    args=(("xx", "y"), ("xx", "z"), ("y", ""), ("z", None)),
    headers=(
        ("connection", "close"),
        ("host", "localhost"),
        ("x-req", "foo"),
        ("x-req", "bar"),
        ("x-resp", "cat"),
    ),
    conf_token=0,
)


def with_token(call: HttpRequestCall, token: int) -> HttpRequestCall:
    return HttpRequestCall(
        call.id, call.src_ip, call.method, call.path, call.args, call.headers, token
    )


async def prepared(
    runner: Runner, conf: tuple[tuple[str, str], ...] = PROBE
) -> tuple[RunnerConnection, int]:
    runner.dispatcher.respond = conf is PROBE_RESPONSE
    connection = await runner.connect()
    return connection, await connection.prepare_conf(conf, f"route#{conf[0][1]}#pre-req#1")


async def test_check_input_reaches_the_flow_as_apisix_sent_it(runner: Runner) -> None:
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert reply.id == 0 and reply.action is None  # nothing to change: passed on
    (flow,) = runner.probe.flows
    assert flow.method == "PUT"
    assert flow.path == "/hello?xx=y&xx=z&y=&z"
    assert flow.request_headers == {
        "connection": "close",
        "host": "localhost",
        "x-req": "foo, bar",
        "x-resp": "cat",
    }
    assert not flow.request_has_body


async def test_a_clients_traceparent_opens_the_flow_and_no_header_opens_none(
    runner: Runner,
) -> None:
    # No proxy span under APISIX: the flow's trace continues the client's, or starts anew.
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    connection, token = await prepared(runner)
    traced = HttpRequestCall(
        1, CHECK_INPUT.src_ip, "GET", "/hello", (), (("traceparent", traceparent),), token
    )
    await connection.request_call(
        HttpRequestCall(0, CHECK_INPUT.src_ip, "GET", "/hello", (), (), token), RequestContext()
    )
    await connection.request_call(traced, RequestContext())
    assert runner.dispatcher.traceparents[-2:] == [None, traceparent]


def test_check_input_ipv6_round_trips_sixteen_bytes() -> None:
    call = HttpRequestCall(1, ipaddress.ip_address("::1").packed, "GET", "/hello", (), (), 233)
    decoded = decode_http_request_call(encode_http_request_call(call))
    assert decoded == call
    assert len(decoded.src_ip) == 16 and decoded.client_address == "::1"
    assert decode_http_request_call(encode_http_request_call(CHECK_INPUT)).client_address == (
        "127.0.0.1"
    )


async def test_stop_carries_status_body_and_duplicate_headers(runner: Runner) -> None:
    runner.probe.headers_verdict = lambda flow: Respond(
        405, b"cat", (("x-resp", "foo"), ("x-resp", "bar"), ("x-req", "bar")), reason="probe"
    )
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert reply.action == Stop(
        405, (("x-resp", "foo"), ("x-resp", "bar"), ("x-req", "bar")), b"cat"
    )
    await runner.drain_logs()
    (flow,) = runner.probe.done
    assert flow.response_status == 405 and flow.error == "probe"


def rewrite_everything(flow: Flow) -> Verdict:
    flow.remove_header("x-delete")
    flow.set_upstream_header("x-change", "bar")
    flow.set_upstream_header("x-add", "bar")
    flow.set_upstream_header(":authority", "127.0.0.1:1980")
    flow.set_upstream_header(":path", "/uri?a=foo&a=bar&c=bar")
    flow.replace_request_body(b'{"rewritten":true}')
    return CONTINUE


async def test_rewrite_carries_path_headers_host_args_and_body(runner: Runner) -> None:
    runner.probe.headers_verdict = rewrite_everything
    connection, token = await prepared(runner)
    call = HttpRequestCall(
        7, bytes(4), "GET", "/hello", (("c", "foo"), ("d", "bar")), (("x-change", "foo"),), token
    )
    reply = await connection.request_call(call, RequestContext())
    assert reply.id == 7
    assert reply.action == Rewrite(
        path="/uri",
        headers=(
            ("x-delete", None),
            ("x-change", "bar"),
            ("x-add", "bar"),
            ("host", "127.0.0.1:1980"),
            ("content-length", "18"),
        ),
        # APISIX edits args: d goes, a is set then appended, c replaced.
        args=(("d", None), ("a", "foo"), ("a", "bar"), ("c", "bar")),
        body=b'{"rewritten":true}',
    )


async def test_unchanged_query_sends_no_args(runner: Runner) -> None:
    def move(flow: Flow) -> Verdict:
        flow.set_upstream_header(":path", "/elsewhere" + flow.path[len("/hello") :])
        return CONTINUE

    runner.probe.headers_verdict = move
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert isinstance(reply.action, Rewrite)
    assert reply.action.path == "/elsewhere" and reply.action.args == ()


async def test_request_body_is_asked_for_only_when_a_stage_wants_it(runner: Runner) -> None:
    def want_body(flow: Flow) -> Verdict:
        flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE

    runner.probe.headers_verdict = want_body
    runner.probe.body_verdict = lambda flow: Respond(200, flow.request_body[::-1])
    connection, token = await prepared(runner)
    call = HttpRequestCall(1, bytes(4), "POST", "/echo", (), (("content-length", "5"),), token)
    context = RequestContext(request_body=b"hello")
    reply = await connection.request_call(call, context)
    assert context.asked == [RequestBodyInfo()]
    assert reply.action == Stop(200, (("content-type", "application/json"),), b"olleh")

    runner.probe.headers_verdict = lambda flow: CONTINUE
    context = RequestContext(request_body=b"hello")
    await connection.request_call(call, context)
    assert context.asked == []


async def test_response_call_finds_the_flow_by_request_id_and_reads_the_body(
    runner: Runner,
) -> None:
    def want_response_body(flow: Flow) -> Verdict:
        flow.response_body_mode = BodyMode.BUFFERED
        flow.set_upstream_header("x-upstream-status", str(flow.response_status))
        return CONTINUE

    def replace_body(flow: Flow) -> Verdict:
        flow.replace_response_chunk(flow.response_chunk.upper())
        return CONTINUE

    runner.probe.response_verdict = want_response_body
    runner.probe.response_body_verdict = replace_body
    connection, token = await prepared(runner, PROBE_RESPONSE)
    context = RequestContext(vars={"request_id": "abc123"})
    await connection.request_call(with_token(CHECK_INPUT, token), context)
    assert context.asked == [VarInfo("request_id")]
    assert runner.runner is not None and runner.runner.waiting_flows == 1

    context.response_body = b"upstream body"
    post_token = await connection.prepare_conf(PROBE_RESPONSE, "route#1#post-resp#1")
    reply = await connection.response_call(
        HttpResponseCall(9, 201, (("content-type", "text/plain"),), post_token), context
    )
    assert context.asked[1:] == [VarInfo("request_id"), ResponseBodyInfo()]
    assert reply.id == 9 and reply.status == 0
    assert reply.headers == (("x-upstream-status", "201"),)
    assert reply.body == b"UPSTREAM BODY"
    assert runner.runner.waiting_flows == 0
    await runner.drain_logs()
    (flow,) = runner.probe.done
    assert flow.upstream_reached and flow.response_status == 201


async def test_missing_request_id_var_ends_the_flow_at_the_request(runner: Runner) -> None:
    connection, token = await prepared(runner, PROBE_RESPONSE)
    context = RequestContext()  # APISIX answers a missing variable with no result
    reply = await connection.request_call(with_token(CHECK_INPUT, token), context)
    assert context.asked == [VarInfo("request_id")] and reply.action is None
    assert runner.runner is not None and runner.runner.waiting_flows == 0
    await runner.drain_logs()
    assert len(runner.probe.done) == 1

    # A response call for a request the runner never parked passes the response on unchanged.
    reply_to_unknown = await connection.response_call(
        HttpResponseCall(3, 200, (), token), RequestContext(vars={"request_id": "nope"})
    )
    assert (reply_to_unknown.status, reply_to_unknown.headers, reply_to_unknown.body) == (
        0,
        (),
        b"",
    )


async def test_unknown_token_is_conf_token_not_found(runner: Runner) -> None:
    connection = await runner.connect()
    with pytest.raises(RunnerError) as caught:
        await connection.request_call(with_token(CHECK_INPUT, 4242), RequestContext())
    assert caught.value.code is ErrorCode.CONF_TOKEN_NOT_FOUND
    # The connection stays usable.
    token = await connection.prepare_conf(PROBE, "k")
    assert (await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())).id == 0


@pytest.mark.parametrize(
    ("rpc_type", "payload"),
    [
        (RpcType.HTTP_REQ_CALL, b"\x01\x02\x03"),
        (RpcType.HTTP_REQ_CALL, b"\xff" * 64),
        (RpcType.PREPARE_CONF, b""),
        (9, encode_prepare_conf(PrepareConf((), "k"))),
    ],
    ids=["short", "garbage", "empty", "unknown-type"],
)
async def test_malformed_frame_is_bad_request_and_the_connection_goes_on(
    runner: Runner, rpc_type: int, payload: bytes
) -> None:
    connection = await runner.connect()
    await connection.send(rpc_type, payload)
    with pytest.raises(RunnerError) as caught:
        await connection.receive()
    assert caught.value.code is ErrorCode.BAD_REQUEST
    token = await connection.prepare_conf(PROBE, "k")
    assert token > 0


async def test_a_conf_that_is_not_a_json_object_is_refused_at_prepare_conf(
    runner: Runner,
) -> None:
    connection = await runner.connect()
    for conf in ((("gatez", "not json"),), (("gatez", "[1]"),), (("gatez", '"llm"'),)):
        with pytest.raises(RunnerError) as caught:
            await connection.prepare_conf(conf, "k")
        assert caught.value.code is ErrorCode.BAD_REQUEST
    # Entries for other runner plugins are ignored.
    assert await connection.prepare_conf((("other", "{}"),), "k2") > 0


async def test_same_key_same_token_and_other_key_other_token(runner: Runner) -> None:
    connection = await runner.connect()
    first = await connection.prepare_conf(PROBE, "route#1#ext-plugin-pre-req#1")
    assert await connection.prepare_conf(PROBE, "route#1#ext-plugin-pre-req#1") == first
    assert await connection.prepare_conf(PROBE, "route#1#ext-plugin-pre-req#2") != first


def test_tokens_live_one_point_two_times_the_expire_time() -> None:
    now = [0.0]
    store = ConfStore(expire_s=100, clock=lambda: now[0])
    conf = RouteConf("{}")
    token = store.prepare("k", conf)
    now[0] = 119.0
    assert store.get(token) == conf
    now[0] = 121.0
    with pytest.raises(Exception, match="not found"):
        store.get(token)
    # PrepareConf again (APISIX's cache expired first) gives a live token and drops the old one.
    fresh = store.prepare("k", conf)
    assert store.get(fresh) == conf and len(store) == 1


@pytest.mark.parametrize(
    "raw", [b"\x02\x00", b"\x02\x00\x00\x10" + b"\x00" * 8], ids=["header", "data"]
)
async def test_short_header_or_data_then_close_drops_only_that_connection(
    runner: Runner, raw: bytes
) -> None:
    reader, writer = await asyncio.open_unix_connection(str(runner.socket))
    writer.write(raw)
    writer.write_eof()
    assert await reader.read() == b""  # the runner closed it without answering
    writer.close()
    connection, token = await prepared(runner)
    assert (await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())).id == 0


async def test_connection_dropped_during_extra_info_ends_the_flow(runner: Runner) -> None:
    def want_body(flow: Flow) -> Verdict:
        flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE

    runner.probe.headers_verdict = want_body
    connection, token = await prepared(runner)
    call = with_token(CHECK_INPUT, token)
    await connection.send(RpcType.HTTP_REQ_CALL, encode_http_request_call(call))
    rpc_type, _ = await connection.receive()
    assert rpc_type == RpcType.EXTRA_INFO
    await connection.close()  # APISIX's request died while the runner waited for the body
    await runner.drain_logs()
    assert [flow.error for flow in runner.probe.done] == ["apisix_call_failed"]
    # Other connections are served as before.
    other, token = await prepared(runner)
    runner.probe.headers_verdict = lambda flow: CONTINUE
    assert (await other.request_call(with_token(CHECK_INPUT, token), RequestContext())).id == 0


async def test_many_connections_each_with_many_sequential_calls(runner: Runner) -> None:
    async def client(n: int) -> list[int]:
        connection, token = await prepared(runner)
        ids = []
        for i in range(10):
            call = HttpRequestCall(n * 100 + i, bytes(4), "GET", "/x", (), (), token)
            ids.append((await connection.request_call(call, RequestContext())).id)
        await connection.close()
        return ids

    results = await asyncio.gather(*(client(n) for n in range(20)))
    assert results == [[n * 100 + i for i in range(10)] for n in range(20)]


async def test_llm_call_end_to_end_on_the_wire(runner: Runner) -> None:
    """The real pipeline: auth, model routing (with the provider as Rewrite), usage from the
    buffered response body, and the AI log row."""
    connection, token = await prepared(runner, LLM)
    body = orjson.dumps({"model": "fast", "messages": [{"role": "user", "content": "hi"}]})
    call = HttpRequestCall(
        1,
        bytes([127, 0, 0, 1]),
        "POST",
        "/v1/chat/completions",
        (),
        (
            ("authorization", f"Bearer {API_KEY}"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ),
        token,
    )
    context = RequestContext(vars={"request_id": "req-llm-1"}, request_body=body)
    reply = await connection.request_call(call, context)
    assert context.asked == [VarInfo("request_id"), RequestBodyInfo()]
    action = reply.action
    assert isinstance(action, Rewrite) and action.body is not None
    headers = dict(action.headers)
    assert action.path == "/v1/chat/completions"
    assert headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert headers["x-api-key"] is None  # the client's credential headers are deleted
    assert headers["x-gatez-provider"] == PROVIDER and "x-gatez-cluster" not in headers
    assert str(headers["host"]).startswith("127.0.0.1:")
    assert orjson.loads(action.body)["model"] == "gpt-4o-mini"

    reply_body = {"id": "x", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    context.response_body = orjson.dumps(reply_body)
    response = await connection.response_call(
        HttpResponseCall(2, 200, (("content-type", "application/json"),), token), context
    )
    assert (response.status, response.body) == (0, b"")  # observed, not changed
    await runner.drain_logs()
    rows = [r for r in runner.store.recent_ai_logs("acme", 100) if r.request_id == "req-llm-1"]
    assert [(r.input_tokens, r.output_tokens, r.status) for r in rows] == [(3, 5, 200)]


async def test_frame_error_in_harness_for_short_runner_replies() -> None:
    """APISIX's `header too short` / `data truncated`: the harness reports them, as APISIX does."""
    replies = [b"\x02\x01", b"\x02\x00\x00\x03\x00"]
    for raw in replies:

        async def handle(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes = raw
        ) -> None:
            await reader.readexactly(4)
            writer.write(raw)
            writer.write_eof()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        connection = RunnerConnection(reader, writer)
        await connection.send(RpcType.HTTP_REQ_CALL, b"")
        with pytest.raises(FrameError):
            await connection.receive()
        await connection.close()
        server.close()
    assert encode_frame(RpcType.ERROR, b"") == b"\x00\x00\x00\x00"


async def test_a_held_call_keeps_apisix_reading_until_the_decision(runner: Runner) -> None:
    """APISIX gives up on a frame after 60 s; a held call asks an ExtraInfo question every
    `hold_keepalive_s` (30 s in production) so it waits as long as the hold does."""
    loop = asyncio.get_running_loop()
    decision: asyncio.Future[Continue | Respond] = loop.create_future()
    runner.probe.headers_verdict = lambda flow: Hold(decision, timeout_s=60)
    connection, token = await prepared(runner)
    assert runner.runner is not None
    runner.runner._hold_keepalive_s = 0.02
    loop.call_later(0.2, decision.set_result, Respond(403, b'{"denied":true}', reason="denied"))
    context = RequestContext(vars={"request_id": "held-1"})

    reply = await asyncio.wait_for(
        connection.request_call(with_token(CHECK_INPUT, token), context), 5
    )

    assert isinstance(reply.action, Stop) and reply.action.status == 403
    # Questions while held (none of them left unanswered on the connection), then the reply.
    assert len(context.asked) >= 3
    assert set(context.asked) == {VarInfo("request_id")}
    # The connection stays in step for the next call.
    runner.probe.headers_verdict = lambda flow: CONTINUE
    again = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert again.action is None
