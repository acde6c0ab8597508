"""The APISIX adapter: turns ext-plugin calls and the Gatez plugin's frames into pipeline phases
on a Flow, and verdicts plus the Flow's pending changes back into Stop / Rewrite / answers. No
policy lives here.

The route kind — and with it the pipeline — is chosen by policy, from the request's path, as
behind Envoy (`gatez.pipeline.Dispatcher`); a route's runner conf (`{"name": "gatez", "value":
"{}"}`) only has to name us. How one LLM request goes (an APISIX route with
`ext-plugin-pre-req` and the Gatez Lua plugin `gatez`, `apisix/plugins/gatez.lua`):

1. HTTPReqCall (pre-req): the runner opens the Flow, runs the request-headers phase, and — when
   a stage asked for the body — asks for it (ExtraInfo ReqBody) and runs the request-body phase.
   A Respond becomes Stop. A pipeline that acts on the response (LLM) parks its Flow and answers
   with a Rewrite that only names it (`x-gatez-flow: <key>`) and removes what the pipeline
   removed; the provider request itself (target, headers with the provider's credential, body)
   stays here until the plugin asks for it.
2. The plugin's frames (`extproc.apisix.plugin_wire`): it asks for the provider request, makes
   the call (SNI, certificate and host name verified), sends the provider's status and headers
   (the response-headers phase decides how the body goes on: untouched, buffered, or streamed
   chunk by chunk through the runner), every chunk, and the end — also when the client went
   away or the provider's stream broke — so usage and logs are exact.

`ext-plugin-post-resp` is refused at PrepareConf: APISIX then makes the provider call itself
with `lua-resty-http`, sending no SNI and checking no host name, buffering streams whole.

A pipeline without response stages (plain REST) costs one frame each way and its Flow ends at the
Rewrite (its request-log row then has no status: APISIX never tells); APISIX proxies it to the
route's own upstream. A stage's Hold simply keeps the call unanswered, and APISIX waits (its 60 s
read timeout is reset by an ExtraInfo question every 30 s, `_HeldCall`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, quote

import orjson

from extproc.apisix import plugin_wire
from extproc.apisix.frames import (
    ErrorCode,
    ExtraInfo,
    FrameError,
    HttpRequestCall,
    HttpRequestCallReply,
    MalformedMessage,
    PrepareConf,
    RequestBodyInfo,
    Rewrite,
    RpcType,
    Stop,
    VarInfo,
    decode_extra_info_reply,
    decode_http_request_call,
    decode_prepare_conf,
    encode_error,
    encode_extra_info_request,
    encode_frame,
    encode_http_request_call_reply,
    encode_prepare_conf_reply,
    read_frame,
)
from extproc.apisix.plugin_wire import PLUGIN_RPCS, BodyPlan, PluginFrame, PluginRpc
from extproc.circuit import is_failure_status
from extproc.stages.fallback import fail_over
from extproc.stages.upstream import CLUSTER_HEADER
from gatez.errors import (
    GatewayError,
    InvalidRequest,
    Unavailable,
    UpstreamFailed,
    UpstreamTimeout,
    quoted,
)
from gatez.pipeline import BodyMode, Continue, Dispatcher, Flow, Pending, Pipeline, Respond
from gatez.policy import UPSTREAM_CLUSTER_TLS

log = logging.getLogger("gatez.apisix")

# The runner-plugin name a route's conf entry carries for us; other entries are ignored.
PLUGIN_NAME: Final = "gatez"
# nginx's own per-request id, asked for while a call is held (any question resets APISIX's timer).
REQUEST_ID_VAR: Final = "request_id"
# Names a parked Flow to the Gatez plugin; set only by the runner (a client's is removed).
FLOW_HEADER: Final = "x-gatez-flow"
REQUEST_ID_HEADER: Final = "x-request-id"
# APISIX's own response plugin: it calls the upstream without SNI or a host-name check.
POST_RESP_PLUGIN: Final = "ext-plugin-post-resp"
# Never forwarded to a provider or back to a client: they describe one hop, not the exchange.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
        "host",
    }
)
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


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    """The provider request the Gatez plugin makes for a Flow: where, and exactly what."""

    scheme: str
    host: str
    port: int
    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def meta(self) -> dict[str, object]:
        return {
            "scheme": self.scheme,
            "host": self.host,
            # The name the certificate must carry (and SNI): the host without IPv6 brackets.
            "server_name": self.host.strip("[]"),
            "port": self.port,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
        }


@dataclass(slots=True)
class _Parked:
    """A Flow between its request call and the end of its response."""

    flow: Flow
    pipeline: Pipeline
    timer: asyncio.TimerHandle
    # Handed to the plugin once (UPSTREAM_REQUEST); None afterwards.
    upstream: UpstreamCall | None = None
    # The original response headers, repeats kept, for the answer to RESPONSE_START.
    response_started: bool = False
    ended: bool = False
    # The client's call and the changes its request-headers phase made: what a fallback
    # attempt is built from again (the body phase's changes were the failed target's).
    call: HttpRequestCall | None = None
    header_changes: dict[str, str | None] = field(default_factory=dict)


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
        except asyncio.CancelledError:
            # close(): the runner is stopping. Ending normally keeps asyncio's server callback
            # from logging every cancelled connection as an error.
            pass
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
            if rpc_type in PLUGIN_RPCS:
                return rpc_type, await self._plugin_answer(rpc_type, payload)
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
        if f"#{POST_RESP_PLUGIN}#" in message.key:
            # Refused, so the route fails closed (APISIX answers 503) instead of calling the
            # provider without SNI or a host-name check; log it, an operator must fix the route.
            log.error(
                "a route uses %s with the gatez runner; use the gatez plugin instead "
                "(apisix/plugins/gatez.lua): key %s",
                POST_RESP_PLUGIN,
                quoted(message.key),
            )
            raise BadConf(f"{POST_RESP_PLUGIN} is not supported: use the gatez plugin")
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
        # A client's own x-request-id is never the log row's id.
        flow, pipeline = self._dispatcher.open(
            request_id=uuid.uuid4().hex,
            method=call.method,
            path=call.path + _query(call.args),
            headers=headers,
            has_body=_has_body(headers),
            # No proxy span here: the trace starts with us, or continues the client's.
            traceparent=headers.get("traceparent"),
        )
        changes: dict[str, str | None] = {}
        body: bytes | None = None
        held = _HeldCall(exchange, self._hold_keepalive_s)
        flow.on_hold = held.start
        try:
            verdict = pipeline.start_request_headers(flow)
            if not isinstance(verdict, Continue | Respond):
                verdict = await verdict  # a stage must wait (or hold): the rest of the phase
                await held.stop()
            body = _merge(changes, flow.take_pending(), body)
            header_changes = dict(changes)
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
            stop = Stop(verdict.status, _with_request_id(verdict.headers, flow), verdict.body)
            return HttpRequestCallReply(call.id, stop)
        if pipeline.wants_response:
            # The Gatez plugin makes the provider call: it gets the request from us, by key.
            key = flow.request_id
            self._park(key, flow, pipeline, _upstream_call(flow, call, changes, body))
            self._parked[key].call = call
            self._parked[key].header_changes = header_changes
            return HttpRequestCallReply(call.id, _handover(changes, key, flow.request_headers))
        flow.finished_ns = time.monotonic_ns()
        self._finish(flow, pipeline)
        return HttpRequestCallReply(call.id, _rewrite(flow, call, changes, body))

    # -- the Gatez plugin's frames -------------------------------------------------------------

    async def _plugin_answer(self, rpc_type: int, payload: bytes) -> bytes:
        """Every plugin frame gets a plugin answer; one that fails says why in its meta (the
        plugin then answers the client itself) and ends its flow."""
        try:
            frame = plugin_wire.decode(rpc_type, payload)
        except MalformedMessage as error:
            log.warning("bad gatez plugin frame: %s", error)
            return plugin_wire.encode({"error": "bad_frame"})
        parked = self._parked.get(frame.flow)
        if parked is None:
            # Expired, never parked here, or parked by a runner that has since restarted.
            return plugin_wire.encode({"error": "unknown_flow"})
        self._rearm(frame.flow, parked)
        try:
            return await self._plugin_frame(frame, parked)
        except MalformedMessage as error:
            log.warning("bad gatez plugin frame: %s", error)
            parked.flow.error = parked.flow.error or "bad_plugin_frame"
            self._end(frame.flow, parked)
            return plugin_wire.encode({"error": "bad_frame"})
        except Exception:
            log.exception("a response phase failed")
            parked.flow.error = parked.flow.error or "internal_error"
            self._end(frame.flow, parked)
            return plugin_wire.encode({"error": "runner_failed"})

    async def _plugin_frame(self, frame: PluginFrame, parked: _Parked) -> bytes:
        rpc = frame.rpc
        if rpc is PluginRpc.UPSTREAM_REQUEST:
            upstream, parked.upstream = parked.upstream, None
            if upstream is None:
                return plugin_wire.encode({"error": "already_requested"})
            return plugin_wire.encode(upstream.meta(), upstream.body)
        if rpc is PluginRpc.RESPONSE_START:
            return await self._response_start(frame, parked)
        if rpc is PluginRpc.RESPONSE_CHUNK:
            return await self._response_chunk(frame, parked)
        self._response_end(frame, parked)
        return plugin_wire.encode({})

    async def _response_start(self, frame: PluginFrame, parked: _Parked) -> bytes:
        flow, pipeline = parked.flow, parked.pipeline
        if parked.response_started or parked.upstream is not None:
            raise MalformedMessage("RESPONSE_START out of order")
        parked.response_started = True
        error = frame.meta.get("error")
        retry = await self._fallback(frame, parked)
        if retry is not None:
            return retry
        if error is not None:
            # The plugin could not reach the provider: the client's answer is ours.
            failure = upstream_failure(str(error))
            # The call was made and failed: its AI-log row records it, as behind Envoy (whose
            # own 503 for an unreachable upstream reaches the data plane as response headers).
            flow.upstream_reached = True
            flow.error = failure.reason
            flow.response_status = failure.http_status
            self._end(frame.flow, parked)
            return _replacement(
                Respond(
                    failure.http_status,
                    failure.json_body(),
                    (("content-type", "application/json"),),
                ),
                flow,
            )
        status = frame.meta.get("status")
        if not isinstance(status, int) or not 100 <= status <= 999:
            raise MalformedMessage("RESPONSE_START without a valid status")
        provider_headers = plugin_wire.header_list(frame.meta.get("headers", []))
        flow.upstream_reached = True
        flow.response_status = status
        flow.response_headers = _header_map(tuple(provider_headers))
        verdict = pipeline.start_response_headers(flow)
        if not isinstance(verdict, Continue | Respond):
            verdict = await verdict
        pending = flow.take_pending()
        if isinstance(verdict, Respond):
            flow.response_status = verdict.status
            self._end(frame.flow, parked)
            return _replacement(verdict, flow)
        plan = _BODY_PLANS[flow.response_body_mode]
        if frame.meta.get("eos") is True:
            # A body the plugin read whole came along (a plain answer): one round trip less.
            return await self._whole_response(frame, parked, provider_headers, pending, plan)
        return plugin_wire.encode(
            {
                "status": status,
                "headers": _client_headers(provider_headers, pending, flow),
                "body": plan.value,
            }
        )

    async def _fallback(self, frame: PluginFrame, parked: _Parked) -> bytes | None:
        """When the provider failed (429, 5xx, or no answer) and the alias's chain has another
        target: the body phase runs again for it, and the plugin is told to call that one
        instead (`"body": "retry"`, the new request as UPSTREAM_REQUEST gives it). None when
        the answer stands."""
        error, status = frame.meta.get("error"), frame.meta.get("status")
        if error is not None:
            outcome = str(error)[:32]
        elif isinstance(status, int) and is_failure_status(status):
            outcome = str(status)
        else:
            return None
        headers = plugin_wire.header_list(frame.meta.get("headers", []))
        retry_after = next((v for n, v in headers if n.lower() == "retry-after"), None)
        flow, pipeline = parked.flow, parked.pipeline
        if parked.call is None or not fail_over(flow, outcome, retry_after):
            return None
        verdict = pipeline.start_request_body(flow)
        if not isinstance(verdict, Continue | Respond):
            verdict = await verdict
        changes = dict(parked.header_changes)
        body = _merge(changes, flow.take_pending(), None)
        if isinstance(verdict, Respond):
            # The next target cannot take this request (its schema cannot express it): the
            # gateway's answer ends the flow.
            flow.response_status = verdict.status
            self._end(frame.flow, parked)
            return _replacement(verdict, flow)
        upstream = _upstream_call(flow, parked.call, changes, body)
        parked.response_started = False
        return plugin_wire.encode(
            {"body": BodyPlan.RETRY.value, "target": upstream.meta()}, upstream.body
        )

    async def _whole_response(
        self,
        frame: PluginFrame,
        parked: _Parked,
        provider_headers: list[tuple[str, str]],
        pending: Pending,
        plan: BodyPlan,
    ) -> bytes:
        """RESPONSE_START with the whole body: the body phase runs at once (unless no stage
        reads the body), and the answer is final — `"body": "none"` sends the plugin's own
        copy, `"buffered"` the data sent back."""
        flow, pipeline = parked.flow, parked.pipeline
        if plan is BodyPlan.NONE:
            self._end(frame.flow, parked)
            headers = _client_headers(provider_headers, pending, flow)
            return plugin_wire.encode(
                {"status": flow.response_status, "headers": headers, "body": "none"}
            )
        flow.response_chunk = frame.data
        flow.end_of_stream = True
        flow.first_byte_ns = flow.first_byte_ns or time.monotonic_ns()
        verdict = pipeline.start_response_body(flow)
        if not isinstance(verdict, Continue | Respond):
            verdict = await verdict
        body_pending = flow.take_pending()
        self._end(frame.flow, parked)
        if isinstance(verdict, Respond):
            flow.response_status = verdict.status
            return _replacement(verdict, flow)
        pending.remove_headers.extend(body_pending.remove_headers)
        pending.set_headers.update(body_pending.set_headers)
        body = body_pending.body if body_pending.body is not None else frame.data
        headers = _client_headers(provider_headers, pending, flow)
        return plugin_wire.encode(
            {"status": flow.response_status, "headers": headers, "body": "buffered"}, body
        )

    async def _response_chunk(self, frame: PluginFrame, parked: _Parked) -> bytes:
        flow, pipeline = parked.flow, parked.pipeline
        if not parked.response_started or flow.end_of_stream:
            raise MalformedMessage("RESPONSE_CHUNK outside a response body")
        flow.response_chunk = frame.data
        flow.end_of_stream = frame.meta.get("eos") is True
        if flow.first_byte_ns is None:
            flow.first_byte_ns = time.monotonic_ns()
        verdict = pipeline.start_response_body(flow)
        if not isinstance(verdict, Continue | Respond):
            verdict = await verdict
        pending = flow.take_pending()
        if isinstance(verdict, Respond):
            # A buffered body is replaced whole; a stream ends here.
            flow.response_status = verdict.status
            if not flow.end_of_stream:
                flow.error = flow.error or "stream_ended_by_gateway"
            self._end(frame.flow, parked)
            return _replacement(verdict, flow)
        if flow.end_of_stream:
            self._end(frame.flow, parked)
        return plugin_wire.encode({}, pending.body if pending.body is not None else frame.data)

    def _response_end(self, frame: PluginFrame, parked: _Parked) -> None:
        error = frame.meta.get("error")
        if isinstance(error, str) and error:
            # The client went away, or the provider's stream broke: metered as far as it got.
            parked.flow.error = parked.flow.error or error[:64]
        elif parked.upstream is not None:
            parked.flow.error = parked.flow.error or "no_upstream_call"
        self._end(frame.flow, parked)

    # -- flow lifetime -------------------------------------------------------------------------

    def _rearm(self, key: str, parked: _Parked) -> None:
        """A frame for the flow arrived: it lives another `response_wait_s` from now."""
        parked.timer.cancel()
        parked.timer = asyncio.get_running_loop().call_later(
            self._response_wait_s, self._expire, key
        )

    def _end(self, key: str, parked: _Parked) -> None:
        if parked.ended:
            return
        parked.ended = True
        if self._parked.get(key) is parked:
            del self._parked[key]
        parked.timer.cancel()
        parked.flow.finished_ns = time.monotonic_ns()
        self._finish(parked.flow, parked.pipeline)

    def _park(self, key: str, flow: Flow, pipeline: Pipeline, upstream: UpstreamCall) -> None:
        timer = asyncio.get_running_loop().call_later(self._response_wait_s, self._expire, key)
        previous = self._parked.pop(key, None)
        if previous is not None:
            previous.timer.cancel()
            self._finish(previous.flow, previous.pipeline)
        while len(self._parked) >= self._max_waiting:
            self._expire(next(iter(self._parked)), error="too_many_waiting")
        self._parked[key] = _Parked(flow, pipeline, timer, upstream)

    def _expire(self, key: str, error: str = "no_plugin_call") -> None:
        parked = self._parked.get(key)
        if parked is None:
            return
        parked.flow.error = parked.flow.error or error
        self._end(key, parked)

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
) -> Rewrite:
    """The pre-req answer for a request APISIX proxies itself (REST): the pipeline's changes."""
    path: str | None = None
    args: tuple[tuple[str, str | None], ...] = ()
    headers: list[tuple[str, str | None]] = []
    for name, value in changes.items():
        if name == ":path" and value is not None:
            path, _, query = value.partition("?")
            args = _args_change(call.args, query)
        elif name == ":authority":
            headers.append(("host", value))
        elif not name.startswith(":") and name != CLUSTER_HEADER:
            headers.append((name, value))
    if any(name == FLOW_HEADER for name, _ in call.headers):
        # Only the runner names flows to the Gatez plugin.
        headers.append((FLOW_HEADER, None))
    return Rewrite(
        path=path,
        headers=tuple(headers),
        args=args,
        resp_headers=((REQUEST_ID_HEADER, flow.request_id),),
        body=body,
    )


def _handover(changes: dict[str, str | None], key: str, client: Mapping[str, str]) -> Rewrite:
    """The pre-req answer for a request the Gatez plugin sends: the flow's key, and whatever the
    pipeline removed or replaced (the client's credential: its `authorization` is replaced by the
    provider's) so no later APISIX plugin or log sees it; the replacement stays here too. The
    provider request itself is handed over by UPSTREAM_REQUEST."""
    headers: list[tuple[str, str | None]] = [
        (name, None)
        for name, value in changes.items()
        if name[0] != ":" and (value is None or (name in client and name not in HOP_BY_HOP))
    ]
    headers.append((FLOW_HEADER, key))
    return Rewrite(headers=tuple(headers))


def _with_request_id(
    headers: tuple[tuple[str, str], ...], flow: Flow
) -> tuple[tuple[str, str], ...]:
    """Every answer names its log row, as behind Envoy (a provider's own id is replaced)."""
    kept = tuple((n, v) for n, v in headers if n.lower() != REQUEST_ID_HEADER)
    return (*kept, (REQUEST_ID_HEADER, flow.request_id))


def _upstream_call(
    flow: Flow, call: HttpRequestCall, changes: dict[str, str | None], body: bytes | None
) -> UpstreamCall:
    """The provider request the pipeline made of the client's: its routing changes (cluster,
    authority, path), the client's headers it kept, the headers it set, and its body."""
    authority = changes.get(":authority") or flow.request_headers.get("host", "")
    host, _, port = authority.rpartition(":")
    tls = changes.get(CLUSTER_HEADER) == UPSTREAM_CLUSTER_TLS
    if not host or not port.isdigit():
        host, port = authority, "443" if tls else "80"
    headers = [
        (name, value)
        for name, value in call.headers
        if name not in changes and name not in HOP_BY_HOP and not name.startswith("x-gatez-")
    ]
    headers.extend(
        (name, value)
        for name, value in changes.items()
        if value is not None
        and name[0] != ":"
        and name not in HOP_BY_HOP
        and name != CLUSTER_HEADER
    )
    headers.append(("host", authority))
    return UpstreamCall(
        scheme="https" if tls else "http",
        host=host,
        port=int(port),
        method=call.method,
        path=changes.get(":path") or flow.path,
        headers=tuple(headers),
        body=body if body is not None else flow.request_body,
    )


def _client_headers(
    provider: list[tuple[str, str]], pending: Pending, flow: Flow
) -> list[tuple[str, str]]:
    """The provider's response headers as the client gets them: repeats kept, hop-by-hop ones
    dropped (nginx frames the body itself), the pipeline's removals and settings applied."""
    removed = {*pending.remove_headers, *pending.set_headers, REQUEST_ID_HEADER}
    headers = [(n, v) for n, v in provider if n not in removed and n not in HOP_BY_HOP]
    headers.extend((n, v) for n, v in pending.set_headers.items() if n not in HOP_BY_HOP)
    headers.append((REQUEST_ID_HEADER, flow.request_id))
    return headers


def _replacement(verdict: Respond, flow: Flow) -> bytes:
    """The plugin's instruction to answer with the gateway's own response."""
    return plugin_wire.encode(
        {
            "body": BodyPlan.REPLACE.value,
            "status": verdict.status,
            "headers": _with_request_id(verdict.headers, flow),
        },
        verdict.body,
    )


_BODY_PLANS: Final = {
    BodyMode.NONE: BodyPlan.NONE,
    BodyMode.BUFFERED: BodyPlan.BUFFERED,
    BodyMode.STREAMED: BodyPlan.STREAMED,
}

# Why the plugin could not get an answer from the provider (gatez.lua's failure_reason).
_PLUGIN_ERRORS: Final = frozenset({"connect", "tls", "timeout", "send", "read", "resolve"})


def upstream_failure(error: str) -> UpstreamFailed:
    """The client's answer when the plugin could not reach the provider (`error`: the plugin's
    reason); the reason is the error's code, a timeout a 504."""
    message = "the upstream could not be reached or did not answer in time"
    failure = UpstreamTimeout(message) if error == "timeout" else UpstreamFailed(message)
    failure.code = f"upstream_{error}" if error in _PLUGIN_ERRORS else "upstream_failed"
    return failure


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
