"""The runner's ext-plugin side, driven frame by frame as APISIX's `ext-plugin/init.lua` drives it
(`tests.support.apisix.RunnerConnection`), with the cases of APISIX's own ext-plugin tests: input
decoding, Stop, Rewrite, ExtraInfo, errors, dropped connections, conf tokens and held calls; and
the runner process as APISIX starts and stops it. The LLM path is `test_llm_flow.py`."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from extproc.apisix.frames import (
    ErrorCode,
    FrameError,
    HttpRequestCall,
    HttpResponseCall,
    PrepareConf,
    RequestBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_http_request_call,
    encode_frame,
    encode_http_request_call,
    encode_http_response_call,
    encode_prepare_conf,
)
from extproc.apisix.runner import ConfStore, RouteConf
from gatez.pipeline import CONTINUE, BodyMode, Continue, Flow, Hold, Respond, Verdict
from gatez.processes import free_port
from gatez.secrets import new_secret_key
from tests.extproc.apisix.conftest import Runner
from tests.support.apisix import (
    ProxiedRequest,
    RequestContext,
    RunnerConnection,
    RunnerError,
    apply_rewrite,
    stop_answer,
)
from tests.support.redis import RedisServer

PROBE = (("gatez", "{}"),)
PRE_REQ_KEY = "route#probe#ext-plugin-pre-req#1"

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
    runner: Runner, conf: tuple[tuple[str, str], ...] = PROBE, key: str = PRE_REQ_KEY
) -> tuple[RunnerConnection, int]:
    connection = await runner.connect()
    return connection, await connection.prepare_conf(conf, key)


def request_id_only(flow: Flow) -> Rewrite:
    """A REST request the pipeline passes on unchanged: APISIX still names its log row."""
    return Rewrite(resp_headers=(("x-request-id", flow.request_id),))


async def test_check_input_reaches_the_flow_as_apisix_sent_it(runner: Runner) -> None:
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    (flow,) = runner.probe.flows
    assert reply.id == 0 and reply.action == request_id_only(flow)
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


async def test_stop_carries_status_body_duplicate_headers_and_the_request_id(
    runner: Runner,
) -> None:
    runner.probe.headers_verdict = lambda flow: Respond(
        405,
        b"cat",
        (("x-resp", "foo"), ("x-resp", "bar"), ("x-request-id", "stage-chosen")),
        reason="probe",
    )
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    (flow,) = runner.probe.flows
    assert reply.action == Stop(
        405, (("x-resp", "foo"), ("x-resp", "bar"), ("x-request-id", flow.request_id)), b"cat"
    )
    # APISIX sets the first entry of a name and adds the others: both x-resp values arrive.
    assert stop_answer(reply.action).headers == reply.action.headers
    (done,) = await runner.probe_done()
    assert (done.response_status, done.error) == (405, "probe")


def rewrite_everything(flow: Flow) -> Verdict:
    flow.remove_header("x-delete")
    flow.set_upstream_header("x-change", "bar")
    flow.set_upstream_header("x-add", "bar")
    flow.set_upstream_header(":authority", "127.0.0.1:1980")
    flow.set_upstream_header(":path", "/uri?a=foo&a=bar&c=bar")
    flow.replace_request_body(b'{"rewritten":true}')
    return CONTINUE


async def test_rewrite_carries_path_headers_host_args_body_and_the_request_id(
    runner: Runner,
) -> None:
    runner.probe.headers_verdict = rewrite_everything
    connection, token = await prepared(runner)
    call = HttpRequestCall(
        7,
        bytes(4),
        "GET",
        "/hello",
        (("c", "foo"), ("d", "bar")),
        (("x-change", "foo"), ("x-delete", "foo"), ("host", "gateway.test")),
        token,
    )
    reply = await connection.request_call(call, RequestContext())
    (flow,) = runner.probe.flows
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
        resp_headers=(("x-request-id", flow.request_id),),
        body=b'{"rewritten":true}',
    )
    assert apply_rewrite(call, b"", reply.action) == ProxiedRequest(
        path="/uri",
        args=(("c", "bar"), ("a", "foo"), ("a", "bar")),
        headers=(
            ("x-change", "bar"),
            ("x-add", "bar"),
            ("host", "127.0.0.1:1980"),
            ("content-length", "18"),
        ),
        body=b'{"rewritten":true}',
        response_headers=(("x-request-id", flow.request_id),),
    )


async def test_a_clients_flow_header_never_reaches_a_rest_upstream(runner: Runner) -> None:
    """Only the runner names flows to the Gatez plugin: a client's x-gatez-flow is removed."""
    connection, token = await prepared(runner)
    call = HttpRequestCall(
        1, bytes(4), "GET", "/hello", (), (("x-gatez-flow", "someone-elses"), ("x-a", "1")), token
    )
    reply = await connection.request_call(call, RequestContext())
    assert isinstance(reply.action, Rewrite)
    assert reply.action.headers == (("x-gatez-flow", None),)
    proxied = apply_rewrite(call, b"", reply.action)
    assert proxied.headers == (("x-a", "1"),)
    (flow,) = runner.probe.flows
    assert proxied.response_headers == (("x-request-id", flow.request_id),)


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
    assert isinstance(reply.action, Stop)
    assert (reply.action.status, reply.action.body) == (200, b"olleh")

    # APISIX answers an empty body with no result at all.
    context = RequestContext()
    reply = await connection.request_call(call, context)
    assert context.asked == [RequestBodyInfo()]
    assert isinstance(reply.action, Stop) and reply.action.body == b""

    runner.probe.headers_verdict = lambda flow: CONTINUE
    context = RequestContext(request_body=b"hello")
    await connection.request_call(call, context)
    assert context.asked == []


@pytest.mark.parametrize(
    ("stop", "status", "headers"),
    [
        (Stop(0, (("X-A", "1"),), b"body"), 200, (("x-a", "1"),)),
        (
            Stop(302, (("Location", "/a"), ("x-a", "1"), ("X-A", "2"))),
            302,
            (("location", "/a"), ("x-a", "1"), ("x-a", "2")),
        ),
    ],
    ids=["without-status", "repeats"],
)
def test_apisix_answers_a_stop_with_its_status_headers_and_body(
    stop: Stop, status: int, headers: tuple[tuple[str, str], ...]
) -> None:
    answer = stop_answer(stop)
    assert (answer.status, answer.headers, answer.body) == (status, headers, stop.body)


def test_apisix_applies_a_rewrite_as_init_lua_does() -> None:
    call = HttpRequestCall(
        0,
        bytes(4),
        "POST",
        "/hello",
        (("c", "foo"), ("d", "bar")),
        (("x-change", "foo"), ("x-change", "foo2"), ("x-delete", "foo")),
        0,
    )
    rewrite = Rewrite(
        path="/a b?c#d%2F",
        headers=(("x-delete", None), ("X-Change", "bar")),
        args=(("a", "foo"), ("d", None), ("c", "bar"), ("a", "bar")),
        resp_headers=(("Content-Type", "text/plain"), ("x-r", "1"), ("x-r", "2"), ("server", "x")),
        body=b"",
    )
    proxied = apply_rewrite(call, b"old", rewrite)
    # A '?' in the path is no query; '%' is escaped too (APISIX sends the path as given).
    assert proxied.path == "/a%20b%3Fc%23d%252F"
    assert proxied.headers == (("x-change", "bar"),)
    assert proxied.args == (("c", "bar"), ("a", "foo"), ("a", "bar"))
    assert proxied.body == b"old"  # an empty body replaces nothing
    assert proxied.response_headers == (("x-r", "1"), ("x-r", "2"))


# -- errors and tokens -------------------------------------------------------------------------


async def test_unknown_token_is_conf_token_not_found_and_apisix_retries(runner: Runner) -> None:
    connection = await runner.connect()
    with pytest.raises(RunnerError) as caught:
        await connection.request_call(with_token(CHECK_INPUT, 4242), RequestContext())
    assert caught.value.code is ErrorCode.CONF_TOKEN_NOT_FOUND
    assert not connection.usable  # APISIX closes a socket after any failed call
    # Its retry: a new connection, PrepareConf again, the call again.
    connection, token = await prepared(runner)
    reply = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert isinstance(reply.action, Rewrite)


async def test_a_restarted_runner_never_takes_an_old_token_for_another_routes(
    runner: Runner,
) -> None:
    """APISIX may still hold tokens of the last runner process; they must be not found, never
    another route's conf (numbering from 1 again would hand route b route a's old number)."""
    connection = await runner.connect()
    old_a = await connection.prepare_conf((("gatez", '{"route": "a"}'),), "route#a#pre-req#1")
    await runner.restart()
    connection = await runner.connect()
    new_b = await connection.prepare_conf((("gatez", '{"route": "b"}'),), "route#b#pre-req#1")
    assert new_b != old_a
    with pytest.raises(RunnerError) as caught:
        await connection.request_call(with_token(CHECK_INPUT, old_a), RequestContext())
    assert caught.value.code is ErrorCode.CONF_TOKEN_NOT_FOUND


@pytest.mark.parametrize(
    ("rpc_type", "payload"),
    [
        (RpcType.HTTP_REQ_CALL, b"\x01\x02\x03"),
        (RpcType.HTTP_REQ_CALL, b"\xff" * 64),
        (RpcType.PREPARE_CONF, b""),
        (RpcType.HTTP_RESP_CALL, encode_http_response_call(HttpResponseCall(1, 200, (), 1))),
        (9, encode_prepare_conf(PrepareConf((), "k"))),
    ],
    ids=["short", "garbage", "empty", "post-resp-call", "unknown-type"],
)
async def test_malformed_frame_is_bad_request_and_the_connection_goes_on(
    runner: Runner, rpc_type: int, payload: bytes
) -> None:
    connection = await runner.connect()
    await connection.send(rpc_type, payload)
    with pytest.raises(RunnerError) as caught:
        await connection.receive()
    assert caught.value.code is ErrorCode.BAD_REQUEST
    # APISIX would close it; the runner still serves it.
    token = await connection.prepare_conf(PROBE, "k")
    assert token > 0


async def test_a_post_resp_route_is_refused_at_prepare_conf(runner: Runner) -> None:
    """ext-plugin-post-resp would make the provider call without SNI or a host-name check:
    refused, so APISIX answers that route with 503 instead."""
    connection = await runner.connect()
    with pytest.raises(RunnerError) as caught:
        await connection.prepare_conf(PROBE, "route#gatez-llm#ext-plugin-post-resp#1")
    assert caught.value.code is ErrorCode.BAD_REQUEST
    connection = await runner.connect()
    assert await connection.prepare_conf(PROBE, "route#gatez-llm#ext-plugin-pre-req#1") > 0


async def test_a_conf_that_is_not_a_json_object_is_refused_at_prepare_conf(
    runner: Runner,
) -> None:
    for conf in ((("gatez", "not json"),), (("gatez", "[1]"),), (("gatez", '"llm"'),)):
        connection = await runner.connect()
        with pytest.raises(RunnerError) as caught:
            await connection.prepare_conf(conf, "k")
        assert caught.value.code is ErrorCode.BAD_REQUEST
    # Entries for other runner plugins are ignored.
    connection = await runner.connect()
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
    assert [flow.error for flow in await runner.probe_done()] == ["apisix_call_failed"]
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


async def test_frame_errors_for_short_runner_replies_are_reported_as_apisix_does() -> None:
    """APISIX's `header too short` / `data truncated`, and the socket closed after them."""
    for raw in (b"\x02\x01", b"\x02\x00\x00\x03\x00"):

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
        with pytest.raises(FrameError):
            await connection.prepare_conf(PROBE, "k")
        assert not connection.usable
        await connection.close()
        server.close()
    assert encode_frame(RpcType.ERROR, b"") == b"\x00\x00\x00\x00"


async def test_a_held_call_keeps_apisix_reading_until_the_decision(runner: Runner) -> None:
    """APISIX gives up on a frame after its read timeout (60 s; 0.2 s here); a held call asks an
    ExtraInfo question every `hold_keepalive_s` (30 s in production; 0.04 s here), so APISIX
    waits as long as the hold does (0.5 s here)."""
    loop = asyncio.get_running_loop()
    decision: asyncio.Future[Continue | Respond] = loop.create_future()
    runner.probe.headers_verdict = lambda flow: Hold(decision, timeout_s=60)
    connection, token = await prepared(runner)
    connection.read_timeout_s = 0.2
    assert runner.runner is not None
    runner.runner._hold_keepalive_s = 0.04
    loop.call_later(0.5, decision.set_result, Respond(403, b'{"denied":true}', reason="denied"))
    context = RequestContext(vars={"request_id": "held-1"})

    reply = await connection.request_call(with_token(CHECK_INPUT, token), context)

    assert isinstance(reply.action, Stop) and reply.action.status == 403
    # Questions while held (none of them left unanswered on the connection), then the reply.
    assert len(context.asked) >= 5
    assert set(context.asked) == {VarInfo("request_id")}
    # The connection stays in step for the next call.
    runner.probe.headers_verdict = lambda flow: CONTINUE
    again = await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert isinstance(again.action, Rewrite)


async def test_a_hold_without_keepalive_questions_times_apisix_out(runner: Runner) -> None:
    """The other side of the case above: the read timeout is real."""
    decision: asyncio.Future[Continue | Respond] = asyncio.get_running_loop().create_future()
    runner.probe.headers_verdict = lambda flow: Hold(decision, timeout_s=60)
    connection, token = await prepared(runner)
    connection.read_timeout_s = 0.2
    assert runner.runner is not None
    runner.runner._hold_keepalive_s = 10
    with pytest.raises(TimeoutError):
        await connection.request_call(with_token(CHECK_INPUT, token), RequestContext())
    assert not connection.usable
    decision.set_result(CONTINUE)


# -- the runner process as APISIX runs it ------------------------------------------------------


async def test_runner_process_removes_a_stale_socket_and_exits_cleanly_on_sigterm(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    socket = tmp_path / "runner.sock"
    stale = await asyncio.start_unix_server(lambda r, w: None, path=str(socket))
    stale.close()  # a socket file left behind, as by a runner that was killed
    assert socket.exists()
    env = {
        **os.environ,
        "APISIX_LISTEN_ADDRESS": f"unix:{socket}",
        "APISIX_CONF_EXPIRE_TIME": "10",
        "GATEZ_STATE_DIR": str(tmp_path / "state"),
        "GATEZ_REDIS_URL": redis_server.url,
        "GATEZ_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
        # No control service: the runner serves (without a policy) and keeps trying to watch.
        "GATEZ_CONTROL_ADDRESS": f"127.0.0.1:{free_port()}",
        "GATEZ_DATAPLANE_TOKEN": "gzdp_test-token",
        "GATEZ_SECRET_KEY": new_secret_key(),
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "extproc.apisix", env=env)
    try:
        connection = None
        for _ in range(600):
            # The stale file refuses connections; the runner's own socket accepts them.
            with contextlib.suppress(OSError):
                connection = await RunnerConnection.open(socket)
                break
            await asyncio.sleep(0.05)
        assert connection is not None, "the runner never listened"
        # Owner and group only: not world-writable (APISIX's reference runners use 0766).
        assert stat.S_IMODE(socket.stat().st_mode) == 0o660
        assert await connection.prepare_conf((), "route#1#ext-plugin-pre-req#1") > 0
        await connection.close()
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
        assert not socket.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
