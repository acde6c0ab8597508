"""APISIX's two sides of a runner connection, byte for byte, for wire-level tests and the runner
benchmark. What a client sees through APISIX is tested with a real APISIX (`tests/e2e`); nothing
here plays APISIX's HTTP side.

- `RunnerConnection` is what `apisix/plugins/ext-plugin/init.lua` does on one runner connection:
  PrepareConf, and HTTPReqCall answering the runner's ExtraInfo questions from a
  `RequestContext` (nginx variables; the request body, none when it is empty; no response body,
  which APISIX has only under `ext-plugin-post-resp`). Frames are read in full, an error frame
  is reported as APISIX reports it, a frame not answered within APISIX's 60 s read timeout fails
  the call, and — as APISIX's `rpc_call` does — a failed call closes the connection.
- `stop_answer` and `apply_rewrite` are what init.lua makes of the runner's reply: a Stop's
  status (0 is 200), headers (repeats kept) and body; a Rewrite's request headers, args, path and
  body, and its `resp_headers` without the ones APISIX refuses to set (content-type, location…).
- `PluginConnection` is what the Gatez plugin (`apisix/plugins/gatez.lua`) does on its runner
  connection: the frames of `extproc.apisix.plugin_wire` with the same meta fields, encoded as
  cjson encodes them, and `before_proxy` plays one request's whole exchange in the plugin's
  order against a provider answer (scripted, or a real HTTP call with `provider_over_http`),
  returning what the client received.

APISIX keeps one keepalive pool per socket path (180 s, 32 connections) for ext-plugin and the
Gatez plugin alike, so a connection may carry HTTPReqCalls and plugin frames in turn
(`PluginConnection.sharing`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson

from extproc.apisix.frames import (
    Entry,
    ErrorCode,
    ExtraInfo,
    FrameError,
    HttpRequestCall,
    HttpRequestCallReply,
    PrepareConf,
    RequestBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_error,
    decode_extra_info_request,
    decode_http_request_call_reply,
    decode_prepare_conf_reply,
    encode_extra_info_reply,
    encode_frame,
    encode_http_request_call,
    encode_prepare_conf,
)
from extproc.apisix.plugin_wire import META_LENGTH, PluginRpc

# init.lua's `sock:settimeouts(1000, 60000, 60000)`: connect, send and read of each frame.
CONNECT_TIMEOUT_S: Final = 1.0
READ_TIMEOUT_S: Final = 60.0
MAX_PAYLOAD: Final = (1 << 24) - 1

Conf = tuple[tuple[str, str], ...]


class RunnerError(Exception):
    """The runner answered with an RPC_ERROR frame."""

    def __init__(self, code: ErrorCode) -> None:
        super().__init__(code.name.lower().replace("_", " "))
        self.code = code


@dataclass(slots=True)
class RequestContext:
    """What APISIX can tell the runner about one request through ExtraInfo (`handle_extra_info`)."""

    vars: dict[str, str] = field(default_factory=dict)
    request_body: bytes = b""
    asked: list[ExtraInfo] = field(default_factory=list)

    def answer(self, info: ExtraInfo) -> bytes | None:
        self.asked.append(info)
        if isinstance(info, VarInfo):
            value = self.vars.get(info.name)
            return None if value is None else value.encode("latin-1")
        if isinstance(info, RequestBodyInfo):
            # core.request.get_body() is nil for an empty body: the answer has no result.
            return self.request_body or None
        # RespBody: only ext-plugin-post-resp has a response (ctx.runner_ext_response); under
        # pre-req APISIX logs "failed to read response body: not exits" and answers nothing.
        return None


class RunnerConnection:
    """APISIX's side of one runner connection: one call at a time, frames read in full."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        read_timeout_s: float | None = READ_TIMEOUT_S,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.read_timeout_s = read_timeout_s
        self.frames_sent = 0

    @classmethod
    async def open(
        cls, path: Path | str, *, read_timeout_s: float | None = READ_TIMEOUT_S
    ) -> RunnerConnection:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer, read_timeout_s=read_timeout_s)

    @property
    def usable(self) -> bool:
        """False once either side closed it (APISIX drops a closed socket from its pool)."""
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def send(self, rpc_type: int, payload: bytes) -> None:
        self.writer.write(encode_frame(rpc_type, payload))
        self.frames_sent += 1
        await self.writer.drain()

    async def receive(self) -> tuple[int, bytes]:
        """The next frame; RunnerError for an error frame, FrameError for a broken one,
        TimeoutError when none comes within the read timeout. Leaves the connection open."""
        if self.read_timeout_s is None:
            return await self._receive()
        async with asyncio.timeout(self.read_timeout_s):
            return await self._receive()

    async def prepare_conf(self, conf: Conf, key: str) -> int:
        """PrepareConf for `key` (`<conf type>#<conf id>#<plugin name>#<conf version>`)."""
        async with self._call():
            await self.send(RpcType.PREPARE_CONF, encode_prepare_conf(PrepareConf(conf, key)))
            rpc_type, payload = await self.receive()
            _expect(rpc_type, RpcType.PREPARE_CONF)
            return decode_prepare_conf_reply(payload)

    async def request_call(
        self, call: HttpRequestCall, context: RequestContext
    ) -> HttpRequestCallReply:
        async with self._call():
            await self.send(RpcType.HTTP_REQ_CALL, encode_http_request_call(call))
            payload = await self._answer_extra_info(RpcType.HTTP_REQ_CALL, context)
            return decode_http_request_call_reply(payload)

    async def call(self, rpc_type: int, payload: bytes, context: RequestContext) -> bytes:
        """Sends an already encoded call (a benchmark encodes its calls once) and answers the
        runner's ExtraInfo frames; returns the reply's payload."""
        async with self._call():
            await self.send(rpc_type, payload)
            return await self._answer_extra_info(rpc_type, context)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    @contextlib.asynccontextmanager
    async def _call(self) -> AsyncIterator[None]:
        """APISIX's `rpc_call`: a call that fails in any way (error frame, broken frame, wrong
        type, timeout) closes its socket; only a call that succeeded goes back to the pool."""
        try:
            yield
        except BaseException:
            self.writer.close()
            raise

    async def _receive(self) -> tuple[int, bytes]:
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


# -- what APISIX makes of the reply ------------------------------------------------------------

# init.lua's `exclude_resp_header`: Rewrite resp_headers APISIX will not set.
EXCLUDED_RESPONSE_HEADERS: Final = frozenset(
    {
        "connection",
        "content-length",
        "transfer-encoding",
        "location",
        "server",
        "www-authenticate",
        "content-encoding",
        "content-type",
        "content-location",
        "content-language",
    }
)


@dataclass(frozen=True, slots=True)
class ClientAnswer:
    """An answer APISIX gives the client itself."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def stop_answer(stop: Stop) -> ClientAnswer:
    """A Stop as init.lua answers it: names lower-cased, the first entry of a name set and later
    ones added (repeats kept, in order), status 0 answered as 200."""
    return ClientAnswer(
        stop.status or 200, tuple((name.lower(), value) for name, value in stop.headers), stop.body
    )


@dataclass(frozen=True, slots=True)
class ProxiedRequest:
    """The request APISIX proxies after a Rewrite, and the headers it set on the client's
    answer."""

    path: str
    args: tuple[Entry, ...]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    response_headers: tuple[tuple[str, str], ...]

    def header(self, name: str) -> list[str]:
        return [value for n, value in self.headers if n == name]


def apply_rewrite(call: HttpRequestCall, body: bytes, rewrite: Rewrite | None) -> ProxiedRequest:
    """A Rewrite as init.lua applies it: the path URI-escaped (`core.utils.uri_safe_encode`: a
    '?' in it is no query); each header set with `core.request.set_header` (all values of the
    name replaced; no value removes it); args edited in place (no value deletes, a name's first
    value replaces and later ones append); the body replaced only by a non-empty one; resp_headers
    lower-cased, excluded names dropped, repeats added."""
    headers = list(call.headers)
    args: dict[str, list[str | None]] = {}
    for name, value in call.args:
        args.setdefault(name, []).append(value)
    if rewrite is None:
        return ProxiedRequest(call.path, call.args, tuple(headers), body, ())
    path = call.path if rewrite.path is None else uri_safe_encode(rewrite.path)
    for name, header_value in rewrite.headers:
        lower = name.lower()
        headers = [(n, v) for n, v in headers if n != lower]
        if header_value is not None:
            headers.append((lower, header_value))
    changed: set[str] = set()
    for name, arg_value in rewrite.args:
        if arg_value is None:
            args.pop(name, None)
        elif name in changed:
            args[name].append(arg_value)
        else:
            args[name] = [arg_value]
            changed.add(name)
    response_headers = tuple(
        (name.lower(), value)
        for name, value in rewrite.resp_headers
        if name.lower() not in EXCLUDED_RESPONSE_HEADERS
    )
    return ProxiedRequest(
        path,
        tuple((name, value) for name, values in args.items() for value in values),
        tuple(headers),
        rewrite.body if rewrite.body else body,
        response_headers,
    )


# nginx's ngx_escape_uri(NGX_ESCAPE_URI): controls, space, '#', '%', '?', DEL and non-ASCII.
_URI_ESCAPED: Final = frozenset({*range(0x21), 0x23, 0x25, 0x3F, *range(0x7F, 0x100)})


def uri_safe_encode(path: str) -> str:
    raw = path.encode("utf-8", "surrogateescape")
    return "".join(f"%{byte:02X}" if byte in _URI_ESCAPED else chr(byte) for byte in raw)


# -- the Gatez plugin's side -------------------------------------------------------------------

# gatez.lua's defaults: a buffered body must leave room for its meta in one frame.
META_ROOM: Final = 65536
MAX_BUFFERED_BYTES: Final = MAX_PAYLOAD - META_ROOM
# gatez.lua's HOP_BY_HOP: never set on the client's answer.
PLUGIN_HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)


class PluginAnswerError(Exception):
    """gatez.lua's `ask` failed: the runner's answer was not a plugin answer to the frame."""


@dataclass(frozen=True, slots=True)
class PluginAnswer:
    """A runner's answer to a plugin frame: its meta object and data."""

    meta: dict[str, Any]
    data: bytes

    def says(self, name: str) -> bool:
        """Lua's truth of `answer[name]`: set, and not false (a JSON null is cjson.null, true)."""
        return name in self.meta and self.meta[name] is not False


@dataclass(frozen=True, slots=True)
class ProviderAnswer:
    """What the plugin's provider call gave: status, headers (repeats kept) and the body as its
    reader yields it; or `failure` (connect, tls, timeout, send, resolve) and no response;
    `read_error_after`: the reader fails after that many chunks. `pause_s` comes before each
    chunk (a provider generating tokens)."""

    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    chunks: tuple[bytes, ...] = ()
    failure: str | None = None
    read_error_after: int | None = None
    pause_s: float = 0.0


Provider = Callable[[PluginAnswer], Awaitable[ProviderAnswer]]


def scripted(answer: ProviderAnswer, calls: list[PluginAnswer] | None = None) -> Provider:
    """A provider that answers `answer`, recording each request it got in `calls`."""

    async def provider(request: PluginAnswer) -> ProviderAnswer:
        if calls is not None:
            calls.append(request)
        return answer

    return provider


def provider_over_http(session: aiohttp.ClientSession) -> Provider:
    """The provider call made over HTTP, as the plugin makes it from UPSTREAM_REQUEST's answer
    (with aiohttp, not lua-resty-http: TLS and SNI are the real APISIX suite's to test)."""

    async def provider(request: PluginAnswer) -> ProviderAnswer:
        meta = request.meta
        url = f"{meta['scheme']}://{meta['host']}:{meta['port']}{meta['path']}"
        try:
            async with session.request(
                meta["method"],
                url,
                headers=[(name, value) for name, value in meta["headers"]],
                data=request.data or None,
                allow_redirects=False,
                auto_decompress=False,
                skip_auto_headers=("user-agent", "accept-encoding", "content-type"),
            ) as response:
                chunks = tuple([chunk async for chunk in response.content.iter_any()])
                headers = tuple(
                    (name.decode("latin-1").lower(), value.decode("latin-1"))
                    for name, value in response.raw_headers
                )
                return ProviderAnswer(response.status, headers, chunks)
        except aiohttp.ClientConnectionError:
            return ProviderAnswer(failure="connect")

    return provider


@dataclass(slots=True)
class ClientReceived:
    """What the client got from the plugin: status, headers (repeats kept), the body chunks it
    received, and whether the answer ended as HTTP says (False: cut off, or the client left)."""

    status: int = 200
    headers: dict[str, list[str]] = field(default_factory=dict)
    chunks: list[bytes] = field(default_factory=list)
    complete: bool = True

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    def header(self, name: str) -> list[str]:
        return self.headers.get(name, [])

    def json(self) -> Any:
        return orjson.loads(self.body)


class PluginConnection:
    """The Gatez plugin's side of a runner connection (`apisix/plugins/gatez.lua`): one frame,
    then its answer. `sent` keeps every frame's type and meta, in order."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        timeout_s: float | None = READ_TIMEOUT_S,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.timeout_s = timeout_s
        self.sent: list[tuple[PluginRpc, dict[str, Any]]] = []

    @classmethod
    async def open(cls, path: Path | str) -> PluginConnection:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            reader, writer = await asyncio.open_unix_connection(str(path))
        return cls(reader, writer)

    @classmethod
    def sharing(cls, connection: RunnerConnection) -> PluginConnection:
        """The plugin on a connection ext-plugin used (both take it from APISIX's one pool)."""
        return cls(connection.reader, connection.writer, timeout_s=connection.read_timeout_s)

    @property
    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def ask(self, rpc: PluginRpc, meta: dict[str, Any], data: bytes = b"") -> PluginAnswer:
        """gatez.lua's `ask`: sends one frame and reads the runner's answer, which must be of
        the same type, hold its meta within its length, and that meta must be an object."""
        encoded = orjson.dumps(_as_cjson(meta))
        length = META_LENGTH.size + len(encoded) + len(data)
        if length > MAX_PAYLOAD:
            raise PluginAnswerError("frame too large")
        self.sent.append((rpc, meta))
        self.writer.write(
            bytes([rpc]) + length.to_bytes(3, "big") + META_LENGTH.pack(len(encoded)) + encoded
        )
        if data:
            self.writer.write(data)
        try:
            await self.writer.drain()
            async with asyncio.timeout(self.timeout_s):
                header = await self.reader.readexactly(4)
                size = int.from_bytes(header[1:], "big")
                payload = await self.reader.readexactly(size) if size else b""
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as error:
            raise PluginAnswerError(f"receive: {error!r}") from None
        if header[0] != rpc:
            raise PluginAnswerError(f"unexpected answer type {header[0]}")
        if size < META_LENGTH.size:
            raise PluginAnswerError("short answer")
        (meta_length,) = META_LENGTH.unpack_from(payload)
        end = META_LENGTH.size + meta_length
        if end > size:
            raise PluginAnswerError("answer meta runs past its frame")
        try:
            answer = orjson.loads(payload[META_LENGTH.size : end])
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            raise PluginAnswerError("answer meta is not an object")
        return PluginAnswer(answer, payload[end:])

    async def before_proxy(
        self,
        key: str,
        provider: Provider,
        *,
        client_leaves_after: int | None = None,
        max_buffered_bytes: int = MAX_BUFFERED_BYTES,
    ) -> ClientReceived:
        """One request through the plugin, frame for frame as gatez.lua's `before_proxy` sends
        them: UPSTREAM_REQUEST, the provider call, RESPONSE_START, then per body plan the chunks
        and RESPONSE_END. `client_leaves_after`: the client takes that many body writes, then
        the next one fails (it went away)."""
        client = _Client(client_leaves_after)
        try:
            target = await self.ask(PluginRpc.UPSTREAM_REQUEST, {"flow": key})
        except PluginAnswerError:
            target = None
        if target is None or target.says("error"):
            await self.close()
            return client.gateway_error(
                503, "the gateway is restarting, retry", "runner_unavailable"
            )

        answer = await provider(target)
        start: dict[str, Any] = {"flow": key}
        # gatez.lua's `plain_answer`: a body of known length, not SSE, is read whole first and
        # sent with the headers.
        whole: bytes | None = None
        failure = answer.failure
        if failure is None:
            start |= {
                "status": answer.status,
                "headers": [[n.lower(), v] for n, v in answer.headers],
            }
            if _plain_answer(answer, max_buffered_bytes):
                whole = await _BodyReader(answer).read_all()
                if whole is None:
                    failure = "read"
                else:
                    start["eos"] = True
        if failure is not None:
            start = {"flow": key, "error": failure}
        try:
            plan: PluginAnswer | None = await self.ask(
                PluginRpc.RESPONSE_START, start, whole or b""
            )
        except PluginAnswerError:
            plan = None
        if plan is None or plan.says("error"):
            await self.close()
            return client.gateway_error(
                502, "the gateway could not process the upstream response", "runner_failed"
            )
        if plan.meta.get("body") == "replace":
            client.set_headers(plan.meta.get("headers") or [])
            return client.exit(plan.meta["status"], plan.data)
        if failure is not None:
            raise PluginAnswerError("the runner did not replace the answer to a failed call")
        if whole is not None:
            # The runner's answer is final: its body ("buffered"), or the provider's ("none").
            out = whole if plan.meta.get("body") == "none" else plan.data
            client.status = plan.meta["status"]
            client.set_headers(plan.meta["headers"])
            client.headers["content-length"] = [str(len(out))]
            client.print(out)
            return client

        read = _BodyReader(answer)
        if plan.meta.get("body") == "buffered":
            return await self._buffered(key, plan, read, client, max_buffered_bytes)
        client.status = plan.meta["status"]
        client.set_headers(plan.meta["headers"])
        if await self._stream(key, read, plan.meta.get("body"), client):
            return client
        if not client.headers_sent:
            return client.gateway_error(502, "the upstream's answer broke off", "upstream_read")
        client.complete = False  # ngx.exit(ngx.ERROR): the client's connection is closed
        return client

    async def _buffered(
        self,
        key: str,
        plan: PluginAnswer,
        read: _BodyReader,
        client: _Client,
        max_buffered_bytes: int,
    ) -> ClientReceived:
        parts: list[bytes] = []
        size = 0
        while True:
            chunk, failed = await read()
            if failed:
                await self._finish(key, "upstream_read_failed")
                return client.gateway_error(502, "the upstream's answer broke off", "upstream_read")
            if chunk is None:
                break
            size += len(chunk)
            if size > max_buffered_bytes:
                await self._finish(key, "upstream_response_too_large")
                return client.gateway_error(
                    502, "the upstream's answer is too large", "upstream_size"
                )
            parts.append(chunk)
        try:
            answer: PluginAnswer | None = await self.ask(
                PluginRpc.RESPONSE_CHUNK, {"flow": key, "eos": True}, b"".join(parts)
            )
        except PluginAnswerError:
            answer = None
        if answer is None or answer.says("error"):
            await self.close()
            return client.gateway_error(
                502, "the gateway could not process the upstream response", "runner_failed"
            )
        if answer.meta.get("body") == "replace":
            client.set_headers(answer.meta.get("headers") or [])
            return client.exit(answer.meta["status"], answer.data)
        client.status = plan.meta["status"]
        client.set_headers(plan.meta["headers"])
        client.headers["content-length"] = [str(len(answer.data))]
        client.print(answer.data)
        return client

    async def _stream(self, key: str, read: _BodyReader, plan: Any, client: _Client) -> bool:
        eos = False
        while not eos:
            chunk, failed = await read()
            if failed:
                await self._finish(key, "upstream_read_failed")
                return False
            eos = chunk is None
            out = chunk
            if plan == "streamed":
                try:
                    answer: PluginAnswer | None = await self.ask(
                        PluginRpc.RESPONSE_CHUNK, {"flow": key, "eos": eos}, chunk or b""
                    )
                except PluginAnswerError:
                    answer = None
                if answer is None or answer.says("error"):
                    await self.close()
                    return False
                out = answer.data
                if answer.meta.get("body") == "replace":
                    eos = True
            if out and not client.print(out):
                # A streamed flow the runner saw end needs no word; any other does.
                await self._finish(key, None if eos and plan == "streamed" else "client_closed")
                return False
        await self._finish(key, "" if plan == "none" else None)
        return True

    async def _finish(self, key: str, reason: str | None) -> None:
        """gatez.lua's `finish`: RESPONSE_END when there is a reason (an empty one included:
        Lua's "" is true), then the connection goes back to the pool."""
        if reason is None:
            return
        try:
            await self.ask(PluginRpc.RESPONSE_END, {"flow": key, "error": reason})
        except PluginAnswerError:
            await self.close()


def _plain_answer(answer: ProviderAnswer, max_buffered_bytes: int) -> bool:
    """gatez.lua's `plain_answer`: a body (not HEAD/204/304) of known length within the
    buffer, and not an event stream."""
    if answer.status in (204, 304):
        return False
    headers = {name.lower(): value for name, value in answer.headers}
    length = headers.get("content-length", "")
    if not length.isdigit() or int(length) > max_buffered_bytes:
        return False
    return "text/event-stream" not in headers.get("content-type", "")


class _BodyReader:
    """The plugin's body reader over a provider answer: a chunk, None at the end, or a failure."""

    def __init__(self, answer: ProviderAnswer) -> None:
        self._answer = answer
        self._next = 0

    async def read_all(self) -> bytes | None:
        """lua-resty-http's `read_body`: the whole body, or None when reading failed."""
        parts: list[bytes] = []
        while True:
            chunk, failed = await self()
            if failed:
                return None
            if chunk is None:
                return b"".join(parts)
            parts.append(chunk)

    async def __call__(self) -> tuple[bytes | None, bool]:
        answer = self._answer
        if answer.read_error_after is not None and self._next >= answer.read_error_after:
            return None, True
        if self._next >= len(answer.chunks):
            return None, False
        if answer.pause_s:
            await asyncio.sleep(answer.pause_s)
        self._next += 1
        return answer.chunks[self._next - 1], False


class _Client(ClientReceived):
    """The client's side of nginx's response while the plugin writes it."""

    def __init__(self, leaves_after: int | None) -> None:
        super().__init__()
        self.headers_sent = False
        self._writes_left = leaves_after

    def set_headers(self, entries: Sequence[Sequence[str]]) -> None:
        """gatez.lua's `set_response_headers`: hop-by-hop dropped, repeats kept, each name's
        values replacing what `ngx.header` held for it."""
        grouped: dict[str, list[str]] = {}
        for name, value in entries:
            if name.lower() not in PLUGIN_HOP_BY_HOP:
                grouped.setdefault(name.lower(), []).append(value)
        self.headers.update(grouped)

    def print(self, data: bytes) -> bool:
        """`ngx.print` + `ngx.flush(true)`: False once the client went away."""
        self.headers_sent = True
        if self._writes_left is not None:
            if self._writes_left <= 0:
                self.complete = False
                return False
            self._writes_left -= 1
        self.chunks.append(data)
        return True

    def exit(self, status: int, body: bytes) -> ClientReceived:
        """`return status, body` from before_proxy: APISIX's `core.response.exit`."""
        self.status = status
        self.print(body)
        return self

    def gateway_error(self, status: int, message: str, code: str) -> ClientReceived:
        self.headers["content-type"] = ["application/json"]
        error = {"message": message, "type": "service_unavailable", "param": None, "code": code}
        return self.exit(status, orjson.dumps({"error": error}))


def _as_cjson(value: Any) -> Any:
    """A value as cjson encodes the Lua table it would be: an empty table is `{}`, not `[]`."""
    if isinstance(value, dict):
        return {k: _as_cjson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_cjson(v) for v in value] if value else {}
    return value
