"""Through the APISIX stand-in over HTTP: the official `openai` SDK in front, the runner with the
real pipeline beside, the fake OpenAI upstream behind; plus APISIX's own cases where the runner's
answer is scripted (stop without status, every rewrite field), token refresh after a runner
restart, degradation, and the runner process as APISIX starts and stops it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import openai
import pytest

from extproc.apisix.frames import (
    HttpRequestCallReply,
    Rewrite,
    RpcType,
    Stop,
    encode_frame,
    encode_http_request_call_reply,
    encode_prepare_conf_reply,
    read_frame,
)
from gatez.processes import free_port
from gatez.secrets import new_secret_key
from tests.extproc.apisix.conftest import API_KEY, PROVIDER, PROVIDER_KEY, Runner
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.apisix import HarnessRoute, MiniApisix, RunnerConnection, llm_routes
from tests.support.redis import RedisServer

MESSAGES: list[Any] = [{"role": "user", "content": "hello apisix"}]


def origin(upstream: UpstreamServer) -> str:
    return upstream.base_url.removesuffix("/v1")


@pytest.fixture
async def apisix(runner: Runner, upstream: UpstreamServer) -> AsyncIterator[tuple[MiniApisix, str]]:
    front = MiniApisix(runner.socket, llm_routes(origin(upstream), {PROVIDER: origin(upstream)}))
    port = await front.start()
    yield front, f"http://127.0.0.1:{port}"
    await front.stop()


async def test_openai_sdk_chat_through_apisix(
    apisix: tuple[MiniApisix, str], upstream: UpstreamServer, runner: Runner
) -> None:
    _, url = apisix
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    reply = await client.chat.completions.create(model="fast", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: hello apisix"
    seen = upstream.requests[-1]
    assert seen.json["model"] == "gpt-4o-mini"
    assert seen.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert API_KEY not in str(dict(seen.headers))
    assert runner.runner is not None and runner.runner.waiting_flows == 0
    await client.close()


async def test_sse_reaches_the_client_only_after_the_runner_replied(
    apisix: tuple[MiniApisix, str], upstream: UpstreamServer
) -> None:
    """APISIX buffers the upstream response under post-resp: the stream arrives whole, with a
    content-length, after the runner read it in one RespBody and stripped the usage it added."""
    front, url = apisix
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{url}/v1/chat/completions",
            json={"model": "fast", "messages": MESSAGES, "stream": True},
            headers={"authorization": f"Bearer {API_KEY}"},
        ) as response,
    ):
        raw = await response.read()
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert int(response.headers["content-length"]) == len(raw)  # not chunked: buffered
    assert upstream.requests[-1].json["stream_options"] == {"include_usage": True}
    assert front.last_context is not None
    assert [type(i).__name__ for i in front.last_context.asked] == [
        "VarInfo", "RequestBodyInfo", "VarInfo", "ResponseBodyInfo"
    ]  # fmt: skip
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")

    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    stream = await client.chat.completions.create(model="fast", messages=MESSAGES, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Echo: hello apisix"
    await client.close()


async def test_auth_failure_is_a_stop_with_json(apisix: tuple[MiniApisix, str]) -> None:
    _, url = apisix
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/v1/chat/completions", json={"model": "fast"}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["type"] == "authentication_error"
        # The plain REST route authenticates too, then passes to the upstream unchanged.
        async with http.get(f"{url}/health", headers={"x-api-key": API_KEY}) as response:
            assert response.status == 404  # the fake upstream's own "Invalid URL"
            assert "Invalid URL (GET /health)" in await response.text()


async def test_token_refresh_after_runner_restart(
    apisix: tuple[MiniApisix, str], runner: Runner
) -> None:
    front, url = apisix
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)
    await client.chat.completions.create(model="fast", messages=MESSAGES)
    prepared = front.stats.prepare_confs
    await runner.restart()  # a new runner process: it knows none of the old tokens
    reply = await client.chat.completions.create(model="fast", messages=MESSAGES)
    assert reply.choices[0].message.content == "Echo: hello apisix"
    assert front.stats.token_refreshes >= 1 and front.stats.prepare_confs > prepared
    await client.close()


async def test_runner_down_is_503_unless_the_route_allows_degradation(
    runner: Runner, upstream: UpstreamServer
) -> None:
    await runner.stop()
    runner.socket.unlink()
    routes = [
        HarnessRoute("soft", "/soft", origin(upstream), pre_req=(), allow_degradation=True),
        HarnessRoute("hard", "/", origin(upstream), pre_req=()),
    ]
    front = MiniApisix(runner.socket, routes)
    port = await front.start()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/v1/models") as response:
            assert response.status == 503
        async with http.get(f"http://127.0.0.1:{port}/soft") as response:
            assert response.status == 404  # reached the upstream, which has no /soft
    assert front.stats.degraded == 1
    await front.stop()


# -- scripted runner: APISIX's cases for the APISIX side ---------------------------------------

Script = Callable[[], HttpRequestCallReply]


async def scripted_runner(path: Path, script: Script) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            while (frame := await read_frame(reader)) is not None:
                rpc_type, _ = frame
                if rpc_type == RpcType.PREPARE_CONF:
                    writer.write(encode_frame(rpc_type, encode_prepare_conf_reply(233)))
                else:
                    reply = encode_http_request_call_reply(script())
                    writer.write(encode_frame(rpc_type, reply))
        writer.close()

    return await asyncio.start_unix_server(handle, path=str(path))


@pytest.mark.parametrize("status", [405, 0], ids=["stop", "stop-without-status"])
async def test_stop_is_answered_as_apisix_answers_it(
    tmp_path: Path, upstream: UpstreamServer, status: int
) -> None:
    stop = Stop(status, (("X-Resp", "foo"), ("X-Resp", "bar"), ("X-Req", "bar")), b"cat")
    server = await scripted_runner(tmp_path / "s.sock", lambda: HttpRequestCallReply(0, stop))
    front = MiniApisix(tmp_path / "s.sock", [HarnessRoute("1", "/", origin(upstream), pre_req=())])
    port = await front.start()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/hello") as response,
    ):
        assert response.status == (status or 200)
        assert await response.read() == b"cat"
        # As APISIX applies a Stop: set_header per entry, so a repeated name keeps its last.
        assert response.headers.getall("x-resp") == ["bar"]
        assert response.headers["x-req"] == "bar"
    await front.stop()
    server.close()


async def test_every_rewrite_field_is_applied(tmp_path: Path, upstream: UpstreamServer) -> None:
    rewrite = Rewrite(
        path="/v1/models",
        headers=(("x-delete", None), ("x-change", "bar"), ("x-add", "bar"), ("host", "test.com")),
        args=(("a", "foo"), ("d", None), ("c", "bar"), ("a", "bar")),
        resp_headers=(("x-resp-added", "yes"),),
        body=b"new body",
    )
    server = await scripted_runner(tmp_path / "s.sock", lambda: HttpRequestCallReply(0, rewrite))
    front = MiniApisix(tmp_path / "s.sock", [HarnessRoute("1", "/", origin(upstream), pre_req=())])
    port = await front.start()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"http://127.0.0.1:{port}/hello?c=foo&d=bar",
            data=b"old",
            headers={
                "x-change": "foo",
                "x-delete": "foo",
                "authorization": f"Bearer {PROVIDER_KEY}",
            },
        ) as response,
    ):
        assert response.headers["x-resp-added"] == "yes"
    seen = upstream.requests[-1]
    assert (seen.method, seen.path) == ("POST", "/v1/models")
    # APISIX keeps args in a Lua table: their order upstream is not defined, their values are.
    assert sorted(parse_qsl(seen.query_string)) == [("a", "bar"), ("a", "foo"), ("c", "bar")]
    assert seen.headers["x-change"] == "bar" and seen.headers["x-add"] == "bar"
    assert "x-delete" not in seen.headers and seen.headers["host"] == "test.com"
    assert seen.body == b"new body"
    await front.stop()
    server.close()


async def test_rewrite_path_with_a_question_mark_is_not_a_query(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    bad = Rewrite(path="/plugin_proxy_rewrite_args?a=2")
    server = await scripted_runner(tmp_path / "s.sock", lambda: HttpRequestCallReply(0, bad))
    front = MiniApisix(tmp_path / "s.sock", [HarnessRoute("1", "/", origin(upstream), pre_req=())])
    port = await front.start()
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/hello") as response,
    ):
        assert response.status == 404
    # Sent as %3F: the upstream decodes it into its path, and there is no query.
    seen = upstream.requests[-1]
    assert (seen.path, seen.query_string) == ("/plugin_proxy_rewrite_args?a=2", "")
    await front.stop()
    server.close()


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
