"""The APISIX adapter: turns ext-plugin calls into pipeline phases on a Flow, and verdicts plus
the Flow's pending changes back into Stop / Rewrite / response replies. No policy lives here.

The route kind — and with it the pipeline — is chosen by policy, from the request's path, as
behind Envoy (`gatez.pipeline.Dispatcher`); a route's runner conf (`{"name": "gatez", "value":
"{}"}`) only has to name us. How one LLM request goes (an APISIX route with `ext-plugin-pre-req`
and `ext-plugin-post-resp`, both with that conf):

1. HTTPReqCall: the runner opens the Flow; when its pipeline acts on the response it asks
   (ExtraInfo) for `$request_id`, which names the request in both calls (the protocol has no id of
   its own that survives from pre-req to post-resp), runs the request-headers phase, and — when a
   stage asked for the body — asks for it (ExtraInfo ReqBody) and runs the request-body phase. A
   Respond becomes Stop; otherwise the pending changes become one Rewrite, and the Flow waits for
   the response call (at most `response_wait_s`, and at most `max_waiting` Flows wait at once).
2. HTTPRespCall: the runner finds the Flow by `$request_id`, runs the response-headers phase, and
   when a stage wants the body, asks for it (ExtraInfo RespBody: APISIX has buffered all of it)
   and runs the response-body phase once with the whole body as the last chunk.

A pipeline without response stages (plain REST) costs one frame each way and its Flow ends at the
Rewrite (its request-log row then has no status: APISIX never tells). A stage's Hold simply keeps
the call unanswered, and APISIX waits (its 60 s read timeout is reset by an ExtraInfo question
every 30 s, `_HeldCall`).

Routing differs from Envoy: APISIX's upstream is the route's (or `traffic-split`'s), so the
runner expresses the provider as Rewrite headers — `host` (from `:authority`), the path, the
provider key, and `x-gatez-provider: <name>` for `traffic-split` to match on — and drops
Envoy's `x-gatez-cluster`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote

import orjson

from extproc.apisix.frames import (
    ErrorCode,
    ExtraInfo,
    FrameError,
    HttpRequestCall,
    HttpRequestCallReply,
    HttpResponseCall,
    HttpResponseCallReply,
    MalformedMessage,
    PrepareConf,
    RequestBodyInfo,
    ResponseBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_extra_info_reply,
    decode_http_request_call,
    decode_http_response_call,
    decode_prepare_conf,
    encode_error,
    encode_extra_info_request,
    encode_frame,
    encode_http_request_call_reply,
    encode_http_response_call_reply,
    encode_prepare_conf_reply,
    read_frame,
)
from extproc.stages.upstream import CLUSTER_HEADER
from gatez.errors import GatewayError, InvalidRequest, Unavailable
from gatez.pipeline import BodyMode, Continue, Dispatcher, Flow, Pending, Pipeline, Respond

log = logging.getLogger("gatez.apisix")

# The runner-plugin name a route's conf entry carries for us; other entries are ignored.
PLUGIN_NAME: Final = "gatez"
# nginx's own per-request id: the same in the pre-req and the post-resp call of one request.
REQUEST_ID_VAR: Final = "request_id"
PROVIDER_HEADER: Final = "x-gatez-provider"
# APISIX keeps a token up to its expire time; ours live longer, so APISIX never holds a dead one.
TOKEN_LIFETIME_FACTOR: Final = 1.2


class ConfTokenNotFound(GatewayError):
    """A call named a token we do not hold (expired, or issued before a restart)."""

    http_status = 503
    kind = "conf_token_not_found"


class BadConf(InvalidRequest):
    """A route's conf for us is not what the runner understands."""


class ProtocolViolation(Exception):
    """APISIX sent something the exchange cannot continue after; the connection is closed."""


@dataclass(frozen=True, slots=True)
class RouteConf:
    """A prepared conf, checked once at PrepareConf: our entry's JSON object (no options yet; the
    route kind comes from the policy)."""

    value: str


@dataclass(slots=True)
class _Prepared:
    token: int
    key: str
    conf: RouteConf
    expires_at: float


class ConfStore:
    """Conf tokens: the same key gets the same token; a token lives 1.2 times APISIX's expire time
    from its last PrepareConf."""

    def __init__(self, expire_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._lifetime_s = expire_s * TOKEN_LIFETIME_FACTOR
        self._clock = clock
        self._by_token: dict[int, _Prepared] = {}
        self._by_key: dict[str, _Prepared] = {}
        # Random, so a runner restarted while APISIX still holds tokens from the last one does
        # not hand the same numbers to other routes' confs.
        self._next_token = secrets.randbelow(0xFFFFFFFF) + 1

    def prepare(self, key: str, conf: RouteConf) -> int:
        now = self._clock()
        self._sweep(now)
        prepared = self._by_key.get(key) if key else None
        if prepared is not None and prepared.conf == conf:
            prepared.expires_at = now + self._lifetime_s
            return prepared.token
        token = self._allocate()
        prepared = _Prepared(token, key, conf, now + self._lifetime_s)
        self._by_token[token] = prepared
        if key:
            self._by_key[key] = prepared
        return token

    def get(self, token: int) -> RouteConf:
        prepared = self._by_token.get(token)
        if prepared is None or prepared.expires_at <= self._clock():
            raise ConfTokenNotFound(f"conf token {token} not found")
        return prepared.conf

    def __len__(self) -> int:
        return len(self._by_token)

    def _allocate(self) -> int:
        # uint32 on the wire; 0 is skipped because it reads like "no token".
        while True:
            token = self._next_token
            self._next_token = token % 0xFFFFFFFF + 1
            if token not in self._by_token:
                return token

    def _sweep(self, now: float) -> None:
        # PrepareConf is rare (once per route and expire time), so a full pass here is cheap.
        expired = [t for t, p in self._by_token.items() if p.expires_at <= now]
        for token in expired:
            prepared = self._by_token.pop(token)
            if self._by_key.get(prepared.key) is prepared:
                del self._by_key[prepared.key]


@dataclass(slots=True)
class _Parked:
    """A Flow between its request call and its response call."""

    flow: Flow
    pipeline: Pipeline
    timer: asyncio.TimerHandle


# Flows waiting for their response call, at most: APISIX skips the call when the upstream
# failed, and a route whose pipeline wants the response may lack ext-plugin-post-resp; the
# oldest are ended (and logged) first.
MAX_WAITING_FLOWS: Final = 10_000


class _Exchange:
    """One connection: lets a call ask APISIX for extra information before it answers."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def ask(self, info: ExtraInfo) -> bytes | None:
        self.writer.write(encode_frame(RpcType.EXTRA_INFO, encode_extra_info_request(info)))
        frame = await read_frame(self.reader)
        if frame is None:
            raise ConnectionResetError("APISIX closed the connection during ExtraInfo")
        rpc_type, payload = frame
        if rpc_type != RpcType.EXTRA_INFO:
            raise ProtocolViolation(f"expected an ExtraInfo answer, got RPC type {rpc_type}")
        try:
            return decode_extra_info_reply(payload)
        except MalformedMessage as error:
            raise ProtocolViolation(str(error)) from None


# APISIX reads each frame from the runner with a 60 s timeout (`sock:settimeouts(1000, 60000,
# 60000)` in apisix/plugins/ext-plugin/init.lua) and answers ExtraInfo questions in a loop until
# the call's reply comes; a held call asks one this often, so APISIX keeps waiting.
HOLD_KEEPALIVE_S: Final = 30.0


class _HeldCall:
    """Keeps APISIX waiting while a stage holds the call (an approval that takes minutes): an
    ExtraInfo question for `$request_id` every `interval_s` resets APISIX's read timeout."""

    __slots__ = ("_asking", "_exchange", "_interval_s", "_stopped", "_task")

    def __init__(self, exchange: _Exchange, interval_s: float) -> None:
        self._exchange = exchange
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._asking = False
        self._stopped = False

    def start(self, timeout_s: float) -> None:
        """`Flow.on_hold`: a stage is about to wait up to `timeout_s` for a decision."""
        if self._task is None or self._task.done():
            self._stopped = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Ends the questions before the call uses the connection again; a question already
        sent is answered first (its reply must not be left for the next reader)."""
        task, self._task = self._task, None
        if task is None:
            return
        self._stopped = True
        if not self._asking:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError, ProtocolViolation):
            await task

    async def _run(self) -> None:
        while not self._stopped:
            await asyncio.sleep(self._interval_s)
            self._asking = True
            try:
                await self._exchange.ask(VarInfo(REQUEST_ID_VAR))
            finally:
                self._asking = False


class ExtPluginRunner:
    """Serves APISIX's ext-plugin connections with the pipeline behind them."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        conf_expire_s: float = 3600.0,
        response_wait_s: float = 900.0,
        max_waiting: int = MAX_WAITING_FLOWS,
        hold_keepalive_s: float = HOLD_KEEPALIVE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hold_keepalive_s = hold_keepalive_s
        self._dispatcher = dispatcher
        self.confs = ConfStore(conf_expire_s, clock)
        # How long a Flow waits for its response call; APISIX skips it when the upstream failed.
        self._response_wait_s = response_wait_s
        self._max_waiting = max_waiting
        self._parked: dict[str, _Parked] = {}
        # Finished flows whose on_done is still running; kept so the tasks are not collected.
        self._finishing: set[asyncio.Task[None]] = set()
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def waiting_flows(self) -> int:
        return len(self._parked)

    async def serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Answers frames one after another until APISIX closes the connection."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        exchange = _Exchange(reader, writer)
        transport = writer.transport
        try:
            while (frame := await read_frame(reader)) is not None:
                rpc_type, payload = frame
                reply_type, reply = await self._answer(rpc_type, payload, exchange)
                writer.write(encode_frame(reply_type, reply))
                if transport.get_write_buffer_size():
                    # Only a peer that stops reading leaves bytes queued; usually none are.
                    await writer.drain()
        except FrameError as error:
            # The stream lost its framing; nothing after this point can be trusted.
            log.warning("closing an APISIX connection: %s", error)
        except ProtocolViolation as error:
            log.warning("closing an APISIX connection: %s", error)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.info("APISIX dropped a connection mid-call")
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()

    async def close(self) -> None:
        """Ends every waiting Flow (its log rows are written) and waits for on_done."""
        for task in list(self._connections):
            task.cancel()
        for key in list(self._parked):
            self._expire(key, error="runner_stopping")
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)

    # -- dispatch ------------------------------------------------------------------------------

    async def _answer(
        self, rpc_type: int, payload: bytes, exchange: _Exchange
    ) -> tuple[int, bytes]:
        try:
            if rpc_type == RpcType.HTTP_REQ_CALL:
                request = decode_http_request_call(payload)
                reply = await self._request_call(request, exchange)
                return RpcType.HTTP_REQ_CALL, encode_http_request_call_reply(reply)
            if rpc_type == RpcType.HTTP_RESP_CALL:
                response = decode_http_response_call(payload)
                resp_reply = await self._response_call(response, exchange)
                return RpcType.HTTP_RESP_CALL, encode_http_response_call_reply(resp_reply)
            if rpc_type == RpcType.PREPARE_CONF:
                token = self._prepare_conf(decode_prepare_conf(payload))
                return RpcType.PREPARE_CONF, encode_prepare_conf_reply(token)
            raise MalformedMessage(f"unknown RPC type {rpc_type}")
        except MalformedMessage as error:
            log.warning("bad ext-plugin frame: %s", error)
            return RpcType.ERROR, encode_error(ErrorCode.BAD_REQUEST)
        except GatewayError as error:
            return RpcType.ERROR, encode_error(error_code(error))

    def _prepare_conf(self, message: PrepareConf) -> int:
        value = ""
        for entry_name, entry_value in message.conf:
            if entry_name != PLUGIN_NAME:
                continue
            try:
                parsed = orjson.loads(entry_value) if entry_value else {}
            except orjson.JSONDecodeError:
                # Refused at prepare time, so a misconfigured route fails closed (APISIX: 503).
                raise BadConf(f"conf of {PLUGIN_NAME!r} is not JSON") from None
            if not isinstance(parsed, dict):
                raise BadConf(f"conf of {PLUGIN_NAME!r} must be a JSON object")
            value = entry_value
        return self.confs.prepare(message.key, RouteConf(value))

    # -- the request call ----------------------------------------------------------------------

    async def _request_call(
        self, call: HttpRequestCall, exchange: _Exchange
    ) -> HttpRequestCallReply:
        self.confs.get(call.conf_token)
        headers = _header_map(call.headers)
        # A client's own x-request-id is never the log row's id: APISIX's $request_id when the
        # response call must find this Flow again, else one of ours.
        flow, pipeline = self._dispatcher.open(
            request_id=uuid.uuid4().hex,
            method=call.method,
            path=call.path + _query(call.args),
            headers=headers,
            has_body=_has_body(headers),
            # No proxy span here: the trace starts with us, or continues the client's.
            traceparent=headers.get("traceparent"),
        )
        key: str | None = None
        changes: dict[str, str | None] = {}
        body: bytes | None = None
        held = _HeldCall(exchange, self._hold_keepalive_s)
        flow.on_hold = held.start
        try:
            if pipeline.wants_response:
                raw = await exchange.ask(VarInfo(REQUEST_ID_VAR))
                key = raw.decode("latin-1") if raw else None
                flow.request_id = key or flow.request_id
            verdict = pipeline.start_request_headers(flow)
            if not isinstance(verdict, Continue | Respond):
                verdict = await verdict  # a stage must wait (or hold): the rest of the phase
                await held.stop()
            body = _merge(changes, flow.take_pending(), body)
            if isinstance(verdict, Continue) and flow.request_body_mode is not BodyMode.NONE:
                flow.request_body = await exchange.ask(RequestBodyInfo()) or b""
                verdict = pipeline.start_request_body(flow)
                if not isinstance(verdict, Continue | Respond):
                    verdict = await verdict  # a stage must wait (or hold): the rest of the phase
                    await held.stop()
                body = _merge(changes, flow.take_pending(), body)
        except BaseException:
            await held.stop()
            flow.error = flow.error or "apisix_call_failed"
            self._finish(flow, pipeline)
            raise
        if isinstance(verdict, Respond):
            flow.response_status = verdict.status
            flow.finished_ns = time.monotonic_ns()
            self._finish(flow, pipeline)
            stop = Stop(verdict.status, verdict.headers, verdict.body)
            return HttpRequestCallReply(call.id, stop)
        if key is not None:
            self._park(key, flow, pipeline)
        else:
            flow.finished_ns = time.monotonic_ns()
            self._finish(flow, pipeline)
        return HttpRequestCallReply(call.id, _rewrite(flow, call, changes, body))

    # -- the response call ---------------------------------------------------------------------

    async def _response_call(
        self, call: HttpResponseCall, exchange: _Exchange
    ) -> HttpResponseCallReply:
        self.confs.get(call.conf_token)
        raw = await exchange.ask(VarInfo(REQUEST_ID_VAR))
        parked = self._parked.pop(raw.decode("latin-1"), None) if raw else None
        if parked is None:
            # The request call never reached us (a route without pre-req) or we restarted.
            log.info("response call for a request this runner does not know; passing it on")
            return HttpResponseCallReply(call.id)
        parked.timer.cancel()
        flow, pipeline = parked.flow, parked.pipeline
        changes: dict[str, str | None] = {}
        body: bytes | None = None
        held = _HeldCall(exchange, self._hold_keepalive_s)
        flow.on_hold = held.start
        try:
            flow.upstream_reached = True
            flow.response_status = call.status
            flow.response_headers = _header_map(call.headers)
            verdict = pipeline.start_response_headers(flow)
            if not isinstance(verdict, Continue | Respond):
                verdict = await verdict  # a stage must wait (or hold): the rest of the phase
                await held.stop()
            body = _merge(changes, flow.take_pending(), body)
            if isinstance(verdict, Continue) and flow.response_body_mode is not BodyMode.NONE:
                # APISIX buffered the whole response: it arrives here as one last chunk.
                flow.response_chunk = await exchange.ask(ResponseBodyInfo()) or b""
                flow.end_of_stream = True
                if flow.first_byte_ns is None:
                    flow.first_byte_ns = time.monotonic_ns()
                verdict = pipeline.start_response_body(flow)
                if not isinstance(verdict, Continue | Respond):
                    verdict = await verdict  # a stage must wait (or hold): the rest of the phase
                    await held.stop()
                body = _merge(changes, flow.take_pending(), body)
        except BaseException:
            await held.stop()
            flow.error = flow.error or "apisix_call_failed"
            raise
        else:
            if isinstance(verdict, Respond):
                flow.response_status = verdict.status
                return HttpResponseCallReply(call.id, verdict.status, verdict.headers, verdict.body)
            return HttpResponseCallReply(call.id, 0, tuple(changes.items()), body if body else b"")
        finally:
            flow.finished_ns = time.monotonic_ns()
            self._finish(flow, pipeline)

    # -- flow lifetime -------------------------------------------------------------------------

    def _park(self, key: str, flow: Flow, pipeline: Pipeline) -> None:
        timer = asyncio.get_running_loop().call_later(self._response_wait_s, self._expire, key)
        previous = self._parked.pop(key, None)
        if previous is not None:
            previous.timer.cancel()
            self._finish(previous.flow, previous.pipeline)
        while len(self._parked) >= self._max_waiting:
            self._expire(next(iter(self._parked)), error="too_many_waiting")
        self._parked[key] = _Parked(flow, pipeline, timer)

    def _expire(self, key: str, error: str = "no_response_call") -> None:
        parked = self._parked.pop(key, None)
        if parked is None:
            return
        parked.timer.cancel()
        parked.flow.error = parked.flow.error or error
        self._finish(parked.flow, parked.pipeline)

    def _finish(self, flow: Flow, pipeline: Pipeline) -> None:
        if not pipeline.done_waits:
            # Plain on_done hooks (the usual case) run here and now: no task per flow.
            pipeline.done_now(flow)
            return
        # A task, so the row is written even when this connection is being cancelled.
        task = asyncio.get_running_loop().create_task(pipeline.done(flow))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)


def error_code(error: GatewayError) -> ErrorCode:
    """The one place a gateway error becomes an ext-plugin error code."""
    if isinstance(error, ConfTokenNotFound):
        return ErrorCode.CONF_TOKEN_NOT_FOUND
    if isinstance(error, Unavailable) or error.http_status >= 500:
        return ErrorCode.SERVICE_UNAVAILABLE
    return ErrorCode.BAD_REQUEST


# -- wire ↔ flow -------------------------------------------------------------------------------


def _header_map(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Lower-case names to values; repeated headers joined as HTTP allows (cookies with ';')."""
    result: dict[str, str] = {}
    for name, value in headers:
        if name in result:
            result[name] = f"{result[name]}{'; ' if name == 'cookie' else ', '}{value}"
        else:
            result[name] = value
    return result


def _query(args: tuple[tuple[str, str | None], ...]) -> str:
    if not args:
        return ""
    parts = [
        quote(name, safe="") if value is None else f"{quote(name, safe='')}={quote(value, safe='')}"
        for name, value in args
    ]
    return "?" + "&".join(parts)


def _has_body(headers: Mapping[str, str]) -> bool:
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "0").strip()
    return length.isdigit() and int(length) > 0


def _merge(changes: dict[str, str | None], pending: Pending, body: bytes | None) -> bytes | None:
    """Folds one phase's pending changes into the call's: removals first, then sets, and a
    later phase wins (a key removed in the headers phase and set in the body phase is set)."""
    for name in pending.remove_headers:
        changes[name] = None
    changes.update(pending.set_headers)
    return pending.body if pending.body is not None else body


def _rewrite(
    flow: Flow, call: HttpRequestCall, changes: dict[str, str | None], body: bytes | None
) -> Rewrite | None:
    path: str | None = None
    args: tuple[tuple[str, str | None], ...] = ()
    headers: list[tuple[str, str | None]] = []
    for name, value in changes.items():
        if name == ":path" and value is not None:
            path, _, query = value.partition("?")
            args = _args_change(call.args, query)
        elif name == ":authority":
            headers.append(("host", value))
        elif name == CLUSTER_HEADER:
            # Envoy's cluster choice; APISIX routes by the provider name instead.
            if flow.llm is not None:
                headers.append((PROVIDER_HEADER, flow.llm.target.provider.name))
        elif not name.startswith(":"):
            headers.append((name, value))
    if path is None and not headers and not args and body is None:
        return None
    return Rewrite(path=path, headers=tuple(headers), args=args, body=body)


def _args_change(
    original: tuple[tuple[str, str | None], ...], query: str
) -> tuple[tuple[str, str | None], ...]:
    """The Rewrite args that turn `original` into `query` (APISIX edits args, not replaces)."""
    wanted = parse_qsl(query, keep_blank_values=True)
    if wanted == [(name, value or "") for name, value in original]:
        return ()
    names = {name for name, _ in wanted}
    deletes = [(name, None) for name in dict.fromkeys(n for n, _ in original) if name not in names]
    return (*deletes, *((name, value) for name, value in wanted))
