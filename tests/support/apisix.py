"""A harness that plays APISIX for the ext-plugin runner, byte for byte, where APISIX itself
cannot be installed.

- `RunnerConnection` is APISIX's side of one runner connection (`apisix/plugins/ext-plugin/
  init.lua`): PrepareConf, HTTPReqCall and HTTPRespCall, answering the runner's ExtraInfo frames
  from a `RequestContext` (nginx variables, the request body, the buffered response body), and
  reporting short headers, truncated data and error frames as APISIX does.
- `MiniApisix` is a small HTTP front with APISIX's request path for routes that carry
  `ext-plugin-pre-req` and `ext-plugin-post-resp`: conf tokens cached per plugin and refreshed on
  CONF_TOKEN_NOT_FOUND (3 tries), a pool of runner connections, Stop / Rewrite applied as APISIX
  applies them, `traffic-split` on a request header, and under post-resp the upstream response
  buffered whole before the runner sees it (so SSE reaches the client only at the end).
  Any other runner error is a 503, or a pass-through with `allow_degradation`.
- `ApisixHarness` runs a MiniApisix on a loopback port in a background thread, for synchronous
  clients such as the `openai` SDK; `python -m tests.support.apisix` runs one in the foreground.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import signal
import threading
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Self, TypeVar
from urllib.parse import quote, unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from extproc.apisix.frames import (
    ErrorCode,
    ExtraInfo,
    FrameError,
    HttpRequestCall,
    HttpRequestCallReply,
    HttpResponseCall,
    HttpResponseCallReply,
    PrepareConf,
    RequestBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_error,
    decode_extra_info_request,
    decode_http_request_call_reply,
    decode_http_response_call_reply,
    decode_prepare_conf_reply,
    encode_extra_info_reply,
    encode_frame,
    encode_http_request_call,
    encode_http_response_call,
    encode_prepare_conf,
)

log = logging.getLogger("tests.support.apisix")

PRE_REQ: Final = "ext-plugin-pre-req"
POST_RESP: Final = "ext-plugin-post-resp"
# APISIX's keepalive pool for runner connections.
POOL_SIZE: Final = 32
TRIES: Final = 3
HOP_BY_HOP: Final = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "content-length"}
)

Conf = tuple[tuple[str, str], ...]
T = TypeVar("T")


class RunnerError(Exception):
    """The runner answered with an RPC_ERROR frame."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name.lower().replace("_", " "))
        self.code = code


@dataclass(slots=True)
class RequestContext:
    """What APISIX can tell the runner about one request through ExtraInfo."""

    vars: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    # Set under post-resp only: the upstream's body, buffered whole.
    response_body: bytes | None = None
    asked: list[ExtraInfo] = field(default_factory=list)

    def answer(self, info: ExtraInfo) -> bytes | None:
        self.asked.append(info)
        if isinstance(info, VarInfo):
            value = self.vars.get(info.name)
            return None if value is None else value.encode("latin-1")
        if isinstance(info, RequestBodyInfo):
            return self.request_body
        return self.response_body


class RunnerConnection:
    """APISIX's side of one runner connection: one call at a time, frames read in full."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames_sent = 0

    @classmethod
    async def open(cls, path: Path | str) -> RunnerConnection:
        reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    @property
    def usable(self) -> bool:
        """False once the runner closed it (as nginx drops a closed idle keepalive socket)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def send(self, rpc_type: int, payload: bytes) -> None:
        self.writer.write(encode_frame(rpc_type, payload))
        self.frames_sent += 1
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The next frame; raises RunnerError for an error frame, FrameError for a bad one."""
        try:
            header = await self.reader.readexactly(4)
        except asyncio.IncompleteReadError as error:
            if not error.partial:
                raise ConnectionResetError("the runner closed the connection") from None
            raise FrameError("header too short") from None
        length = int.from_bytes(header[1:], "big")
        try:
            payload = await self.reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError:
            raise FrameError("data truncated") from None
        if header[0] == RpcType.ERROR:
            raise RunnerError(decode_error(payload))
        return header[0], payload

    async def prepare_conf(self, conf: Conf, key: str) -> int:
        await self.send(RpcType.PREPARE_CONF, encode_prepare_conf(PrepareConf(conf, key)))
        rpc_type, payload = await self.receive()
        _expect(rpc_type, RpcType.PREPARE_CONF)
        return decode_prepare_conf_reply(payload)

    async def request_call(
        self, call: HttpRequestCall, context: RequestContext
    ) -> HttpRequestCallReply:
        await self.send(RpcType.HTTP_REQ_CALL, encode_http_request_call(call))
        payload = await self._answer_extra_info(RpcType.HTTP_REQ_CALL, context)
        return decode_http_request_call_reply(payload)

    async def response_call(
        self, call: HttpResponseCall, context: RequestContext
    ) -> HttpResponseCallReply:
        await self.send(RpcType.HTTP_RESP_CALL, encode_http_response_call(call))
        payload = await self._answer_extra_info(RpcType.HTTP_RESP_CALL, context)
        return decode_http_response_call_reply(payload)

    async def call(self, rpc_type: int, payload: bytes, context: RequestContext) -> bytes:
        """Sends an already encoded call (a benchmark encodes its calls once) and answers the
        runner's ExtraInfo frames; returns the reply's payload."""
        await self.send(rpc_type, payload)
        return await self._answer_extra_info(rpc_type, context)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def _answer_extra_info(self, expected: int, context: RequestContext) -> bytes:
        while True:
            rpc_type, payload = await self.receive()
            if rpc_type != RpcType.EXTRA_INFO:
                _expect(rpc_type, expected)
                return payload
            info = decode_extra_info_request(payload)
            await self.send(RpcType.EXTRA_INFO, encode_extra_info_reply(context.answer(info)))


def _expect(got: int, expected: int) -> None:
    if got != expected:
        raise FrameError(f"unexpected type {got}, expected {expected}")


# -- the HTTP front ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HarnessRoute:
    """A route as `apisix.yaml` would hold it. A conf of None leaves that plugin off."""

    id: str
    prefix: str
    upstream: str
    pre_req: Conf | None = None
    post_resp: Conf | None = None
    allow_degradation: bool = False
    # traffic-split: a request header's value picks the upstream (the runner sets it).
    split_header: str = "x-gatez-provider"
    split_upstreams: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class HarnessStats:
    prepare_confs: int = 0
    token_refreshes: int = 0
    runner_failures: int = 0
    degraded: int = 0


class MiniApisix:
    """APISIX's request path for ext-plugin routes, in front of real upstreams."""

    def __init__(self, runner_socket: Path | str, routes: Sequence[HarnessRoute]) -> None:
        self.runner_socket = Path(runner_socket)
        self.routes = list(routes)
        self.stats = HarnessStats()
        self.last_context: RequestContext | None = None
        self._tokens: dict[str, int] = {}
        self._idle: list[RunnerConnection] = []
        self._http: aiohttp.ClientSession | None = None
        self._site_runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        # Upstream connections are pooled like nginx's; no automatic decompression.
        self._http = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._site_runner = web.AppRunner(app, access_log=None)
        await self._site_runner.setup()
        site = web.TCPSite(self._site_runner, host, port)
        await site.start()
        server = site._server
        assert server is not None and isinstance(server, asyncio.Server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self._site_runner is not None:
            await self._site_runner.cleanup()
        for connection in self._idle:
            await connection.close()
        self._idle.clear()
        if self._http is not None:
            await self._http.close()

    def flush_tokens(self) -> None:
        """What APISIX does on CONF_TOKEN_NOT_FOUND and when the runner exits."""
        self._tokens.clear()

    # -- talking to the runner -----------------------------------------------------------------

    async def _acquire(self) -> RunnerConnection:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable:
                return connection
            await connection.close()
        return await RunnerConnection.open(self.runner_socket)

    async def _token(self, connection: RunnerConnection, route: HarnessRoute, plugin: str) -> int:
        key = f"route#{route.id}#{plugin}#1"
        token = self._tokens.get(key)
        if token is None:
            conf = route.pre_req if plugin == PRE_REQ else route.post_resp
            token = await connection.prepare_conf(conf or (), key)
            self.stats.prepare_confs += 1
            self._tokens[key] = token
        return token

    async def _communicate(
        self,
        route: HarnessRoute,
        plugin: str,
        call: HttpRequestCall | HttpResponseCall,
        context: RequestContext,
    ) -> HttpRequestCallReply | HttpResponseCallReply:
        """APISIX's `communicate`: up to 3 tries, refreshing tokens on CONF_TOKEN_NOT_FOUND."""
        last: Exception | None = None
        for _ in range(TRIES):
            try:
                connection = await self._acquire()
            except OSError as error:
                raise ConnectionError(f"failed to connect to the unix socket: {error}") from None
            try:
                token = await self._token(connection, route, plugin)
                if isinstance(call, HttpRequestCall):
                    call = _with_token(call, token)
                    reply: (
                        HttpRequestCallReply | HttpResponseCallReply
                    ) = await connection.request_call(call, context)
                else:
                    call = HttpResponseCall(call.id, call.status, call.headers, token)
                    reply = await connection.response_call(call, context)
            except RunnerError as error:
                # The runner still speaks the protocol: the connection goes back to the pool.
                self._release(connection)
                if error.code != ErrorCode.CONF_TOKEN_NOT_FOUND:
                    raise
                self.stats.token_refreshes += 1
                self.flush_tokens()
                last = error
                continue
            except BaseException:
                await connection.close()
                raise
            self._release(connection)
            return reply
        assert last is not None
        raise last

    def _release(self, connection: RunnerConnection) -> None:
        if len(self._idle) < POOL_SIZE and connection.usable:
            self._idle.append(connection)
        else:
            connection.writer.close()

    # -- the request path ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = next((r for r in self.routes if request.path.startswith(r.prefix)), None)
        if route is None:
            return web.json_response({"error_msg": "404 Route Not Found"}, status=404)
        body = await request.read()
        headers: list[tuple[str, str]] = [(k.lower(), v) for k, v in request.headers.items()]
        args = _parse_args(request.query_string)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client_ip = peer[0] if peer else "127.0.0.1"
        context = RequestContext(
            vars={
                "request_id": uuid.uuid4().hex,
                "remote_addr": client_ip,
                "uri": request.path,
                "request_method": request.method,
                "host": request.host.partition(":")[0],
                **{"http_" + k.replace("-", "_"): v for k, v in headers},
            },
            request_body=body,
        )
        self.last_context = context
        path = request.path
        resp_headers: list[tuple[str, str]] = []

        if route.pre_req is not None:
            call = HttpRequestCall(
                id=0,
                src_ip=ipaddress.ip_address(client_ip).packed,
                method=request.method,
                path=path,
                args=tuple(args),
                headers=tuple(headers),
                conf_token=0,
            )
            try:
                reply = await self._communicate(route, PRE_REQ, call, context)
            except (RunnerError, FrameError, OSError) as error:
                failed = self._runner_failed(route, error)
                if failed is not None:
                    return failed
            else:
                assert isinstance(reply, HttpRequestCallReply)
                if isinstance(reply.action, Stop):
                    return _stop_response(reply.action)
                if isinstance(reply.action, Rewrite):
                    path, headers, args, body = _apply_rewrite(
                        reply.action, path, headers, args, body
                    )
                    resp_headers.extend(reply.action.resp_headers)

        upstream = route.split_upstreams.get(_header(headers, route.split_header), route.upstream)
        url = upstream.rstrip("/") + path + _query_string(args)
        assert self._http is not None
        out_headers = CIMultiDict((k, v) for k, v in headers if k not in HOP_BY_HOP)
        if body or request.method in ("POST", "PUT", "PATCH"):
            out_headers["content-length"] = str(len(body))
        try:
            upstream_response = await self._http.request(
                request.method,
                url,
                headers=out_headers,
                data=body or None,
                allow_redirects=False,
                skip_auto_headers=("content-type", "user-agent", "accept-encoding"),
            )
        except aiohttp.ClientError:
            return web.Response(status=502, text="502 Bad Gateway")
        async with upstream_response:
            if route.post_resp is None:
                return await self._stream(request, upstream_response, resp_headers)
            return await self._post_resp(route, upstream_response, context, resp_headers)

    def _runner_failed(self, route: HarnessRoute, error: Exception) -> web.Response | None:
        self.stats.runner_failures += 1
        log.warning("ext-plugin call failed: %s", error)
        if route.allow_degradation:
            self.stats.degraded += 1
            return None
        return web.Response(status=503, text="503 Service Temporarily Unavailable")

    async def _stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        resp_headers: list[tuple[str, str]],
    ) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, value)
        for name, value in resp_headers:
            response.headers[name] = value
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def _post_resp(
        self,
        route: HarnessRoute,
        upstream: aiohttp.ClientResponse,
        context: RequestContext,
        resp_headers: list[tuple[str, str]],
    ) -> web.Response:
        # ext-plugin-post-resp fetches the whole response itself before calling the runner.
        context.response_body = await upstream.read()
        headers = CIMultiDict(
            (k, v) for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP
        )
        call = HttpResponseCall(
            id=0,
            status=upstream.status,
            headers=tuple((k.lower(), v) for k, v in upstream.headers.items()),
            conf_token=0,
        )
        status, body = upstream.status, context.response_body
        try:
            reply = await self._communicate(route, POST_RESP, call, context)
        except (RunnerError, FrameError, OSError) as error:
            failed = self._runner_failed(route, error)
            if failed is not None:
                return failed
        else:
            assert isinstance(reply, HttpResponseCallReply)
            status = reply.status or status
            for name, value in reply.headers:
                if value is None:
                    headers.popall(name, None)
                else:
                    headers[name] = value
            if reply.body:
                body = reply.body
        for name, value in resp_headers:
            headers[name] = value
        return web.Response(status=status, body=body, headers=headers)


def _with_token(call: HttpRequestCall, token: int) -> HttpRequestCall:
    return HttpRequestCall(
        call.id, call.src_ip, call.method, call.path, call.args, call.headers, token
    )


def _stop_response(stop: Stop) -> web.Response:
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in stop.headers:
        # APISIX applies each entry with core.response.set_header: a repeated name keeps its
        # last value (apisix/plugins/ext-plugin/init.lua).
        headers[name] = value
    # APISIX answers a Stop without status as 200.
    return web.Response(status=stop.status or 200, body=stop.body, headers=headers)


def _apply_rewrite(
    rewrite: Rewrite,
    path: str,
    headers: list[tuple[str, str]],
    args: list[tuple[str, str | None]],
    body: bytes,
) -> tuple[str, list[tuple[str, str]], list[tuple[str, str | None]], bytes]:
    """Rewrite as init.lua applies it: the path is URI-safe-encoded (a '?' in it is not a query),
    a header without value is deleted, an arg without value is deleted, the first value of an arg
    name replaces and later ones append, and a body replaces the body."""
    if rewrite.path is not None:
        path = quote(rewrite.path, safe="/:@!$&'()*+,;=-._~%")
    for name, value in rewrite.headers:
        headers = [(k, v) for k, v in headers if k != name]
        if value is not None:
            headers.append((name, value))
    if rewrite.args:
        changed: set[str] = set()
        for name, value in rewrite.args:
            if value is None:
                args = [(k, v) for k, v in args if k != name]
            elif name in changed:
                args.append((name, value))
            else:
                args = [(k, v) for k, v in args if k != name] + [(name, value)]
                changed.add(name)
    if rewrite.body is not None:
        body = rewrite.body
    return path, headers, args, body


def _parse_args(query: str) -> list[tuple[str, str | None]]:
    """Query args as nginx sees them: empty pieces skipped, a bare name is a flag (no value)."""
    args: list[tuple[str, str | None]] = []
    for piece in query.split("&"):
        if not piece:
            continue
        name, equals, value = piece.partition("=")
        args.append((unquote(name), unquote(value) if equals else None))
    return args


def _query_string(args: Sequence[tuple[str, str | None]]) -> str:
    if not args:
        return ""
    return "?" + "&".join(
        quote(k, safe="") if v is None else f"{quote(k, safe='')}={quote(v, safe='')}"
        for k, v in args
    )


def _header(headers: Sequence[tuple[str, str]], name: str) -> str:
    return next((v for k, v in headers if k == name), "")


# -- running it --------------------------------------------------------------------------------


class ApisixHarness:
    """A MiniApisix on a loopback port, served from a background thread."""

    def __init__(self, runner_socket: Path | str, routes: Sequence[HarnessRoute]) -> None:
        self.apisix = MiniApisix(runner_socket, routes)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        self._thread.start()
        self.port = self.call(self.apisix.start())
        return self

    def call(self, coroutine: Coroutine[object, object, T]) -> T:
        """Runs a coroutine on the harness's loop and waits for its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def stop(self) -> None:
        if self._thread.is_alive():
            self.call(self.apisix.stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def llm_routes(upstream: str, providers: Mapping[str, str] | None = None) -> list[HarnessRoute]:
    """The routes of `apisix/apisix.yaml`: the LLM path (pre-req + post-resp), then plain REST."""
    llm_conf: Conf = (("gatez", "{}"),)
    return [
        HarnessRoute(
            id="llm",
            prefix="/v1/",
            upstream=upstream,
            pre_req=llm_conf,
            post_resp=llm_conf,
            split_upstreams=dict(providers or {}),
        ),
        HarnessRoute(id="rest", prefix="/", upstream=upstream, pre_req=(("gatez", "{}"),)),
    ]


async def _serve(args: argparse.Namespace) -> None:
    providers = dict(item.split("=", 1) for item in args.provider)
    apisix = MiniApisix(args.runner_socket, llm_routes(args.upstream, providers))
    await apisix.start(args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await apisix.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="An APISIX stand-in in front of the runner.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9080)
    parser.add_argument("--runner-socket", required=True)
    parser.add_argument("--upstream", required=True, help="the routes' default upstream URL")
    parser.add_argument(
        "--provider", action="append", default=[], help="NAME=URL: traffic-split upstreams"
    )
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
