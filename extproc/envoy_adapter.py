"""The Envoy adapter: an `ExternalProcessor` gRPC service that turns ext_proc messages into
pipeline phases on a Flow, and verdicts plus the Flow's pending changes back into responses.

Envoy is configured to send request headers only; the first answer of every request turns on
the response headers with `mode_override` (Envoy's own replies to requests the data plane never
saw must not wait on it), and a flow that needs more asks for it there too (buffered request body
for LLM calls; streamed response body for SSE, buffered for JSON), so a plain REST call costs two
round trips and no body copies. That first answer, and every immediate response, also sets the
dynamic metadata `gatez.handled`: Envoy's access log to the data plane
(`extproc.envoy_access_log`) skips the requests that carry it, which the pipeline logs itself.
Immediate responses carry `details` "gatez_<reason>", which Envoy's local-reply mappers leave
alone. No policy lives here. The stream is served by `extproc.grpc_h2` (bytes in, bytes out); this
module owns the protobuf messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from google.protobuf.message import DecodeError

from extproc.envoy_access_log import EnvoyAccessLog
from extproc.envoy_chains import ATTEMPT_STREAM_HEADER, AttemptStream, EnvoyChains
from extproc.grpc_h2 import GRPC_INTERNAL, CallStream, MethodFactory
from gatez.logrows import RequestLogRow
from gatez.pipeline import (
    CONTINUE,
    INTERNAL_ERROR,
    BodyMode,
    Continue,
    Decision,
    Dispatcher,
    Flow,
    Outcome,
    Pending,
    Pipeline,
    Respond,
)

log = logging.getLogger("gatez.envoy")

Mode = processing_mode_pb2.ProcessingMode
OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
BODY_MODES: Final = {
    BodyMode.NONE: Mode.NONE,
    BodyMode.BUFFERED: Mode.BUFFERED,
    BodyMode.STREAMED: Mode.STREAMED,
}


PROCESS_METHOD: Final = "/envoy.service.ext_proc.v3.ExternalProcessor/Process"
# The log row's error of a request whose exchange Envoy ended before its last answer (the client
# went away, or Envoy gave up on it), unless a stage or Envoy said why.
ABORTED: Final = "aborted"


# Our immediate responses' `details` (the response code details Envoy logs) start with this;
# envoy/envoy.yaml's local-reply mappers leave replies so marked as they are.
DETAILS_PREFIX: Final = "gatez_"
FORWARDED_PROTO: Final = "x-forwarded-proto"
# Selects envoy/envoy.yaml's route that removes x-forwarded-proto after route matching.
STRIP_FORWARDED_PROTO: Final = "x-gatez-strip-forwarded-proto"
# The namespace and key of the dynamic metadata that marks a request the data plane handled.
METADATA_NAMESPACE: Final = "gatez"
HANDLED_KEY: Final = "handled"


def _serialized_tail(body_mode: BodyMode | None) -> bytes:
    """The constant part of a first answer, serialised once: concatenated serialisations merge,
    so appending these bytes costs nothing per request (building them costs about 1 µs)."""
    response = ext_proc.ProcessingResponse()
    response.dynamic_metadata.fields[METADATA_NAMESPACE].struct_value.fields[
        HANDLED_KEY
    ].bool_value = True
    if body_mode is not None:
        response.mode_override.response_header_mode = Mode.SEND
        response.mode_override.request_body_mode = BODY_MODES[body_mode]
    wire: bytes = response.SerializeToString()
    return wire


# Appended to the request-headers answer: handled, response headers on, the body as asked.
FIRST_ANSWER_TAIL: Final = {mode: _serialized_tail(mode) for mode in BodyMode}
# Appended to every immediate response: handled.
HANDLED_TAIL: Final = _serialized_tail(None)

# Envoy's timer for the message being held is re-armed to the hold's length plus this margin,
# so the pipeline's own 504 answers before Envoy gives up.
HOLD_MARGIN_S: Final = 5.0

# A serialised ProcessingResponse.
Answer = Callable[[Flow, Decision], bytes]


def _nothing_to_do(flow: Flow) -> Outcome:
    return CONTINUE


@dataclass(frozen=True, slots=True)
class Step:
    """One ext_proc message applied to its flow: the phase to run and how to answer after it."""

    flow: Flow
    pipeline: Pipeline
    start: Callable[[Flow], Outcome]
    answer: Answer


class ProtocolViolation(Exception):
    """Envoy sent something the ext_proc protocol does not allow here."""


class ExternalProcessor:
    """Envoy's `ExternalProcessor` service: one `ExtProcStream` per HTTP request.

    With `access_log` (the data plane's Envoy access-log service), a flow Envoy reset before it
    applied the first answer waits for Envoy's own entry of the request and takes its status
    and reason, so the request has one row (see `extproc.envoy_access_log`). With `chains`,
    the streams of fallback chains' upstream attempts (marked by their gRPC metadata) are
    theirs (`extproc.envoy_chains`).
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        access_log: EnvoyAccessLog | None = None,
        chains: EnvoyChains | None = None,
    ) -> None:
        self._dispatcher = dispatcher
        self._access_log = access_log
        self._chains = chains
        # Finished flows whose on_done is still running; kept so the tasks are not collected.
        self.finishing: set[asyncio.Task[None]] = set()

    def methods(self) -> dict[str, MethodFactory]:
        """What to serve on a `GrpcServer`."""
        return {PROCESS_METHOD: self.open}

    def open(self, stream: CallStream) -> ExtProcStream | AttemptStream:
        if self._chains is not None and ATTEMPT_STREAM_HEADER in stream.headers:
            return self._chains.open(stream)
        return ExtProcStream(self, stream)

    def step(
        self,
        current: Step | None,
        request: ext_proc.ProcessingRequest,
        traceparent: str | None = None,
    ) -> Step:
        """Applies one message to the flow (a new one on request headers). `traceparent`: the
        ext_proc call's own trace context (Envoy's tracer sets it on the stream)."""
        phase = request.WhichOneof("request")
        if phase == "request_headers":
            flow, pipeline = self._open_flow(request.request_headers, traceparent)
            return Step(flow, pipeline, pipeline.start_request_headers, _answer_request_headers)
        if current is None:
            raise ProtocolViolation(f"ext_proc stream began with {phase}")
        flow, pipeline = current.flow, current.pipeline
        if phase == "request_body":
            flow.request_body = request.request_body.body
            return Step(flow, pipeline, pipeline.start_request_body, _answer_request_body)
        if phase == "response_headers":
            message = request.response_headers
            headers = _header_map(message.headers)
            flow.upstream_reached = True
            flow.response_status = int(headers.pop(":status", "0") or 0)
            flow.response_headers = headers
            flow.end_of_stream = message.end_of_stream
            return Step(flow, pipeline, pipeline.start_response_headers, _answer_response_headers)
        if phase == "response_body":
            flow.response_chunk = request.response_body.body
            flow.end_of_stream = request.response_body.end_of_stream
            return Step(flow, pipeline, pipeline.start_response_body, _answer_response_body)
        if phase == "request_trailers":
            return Step(flow, pipeline, _nothing_to_do, _answer_request_trailers)
        if phase == "response_trailers":
            return Step(flow, pipeline, _nothing_to_do, _answer_response_trailers)
        raise ProtocolViolation(f"unexpected ext_proc message {phase}")

    def done(self, flow: Flow, pipeline: Pipeline) -> None:
        """The exchange is over: the pipeline's on_done hooks run, in a task only if one waits."""
        if self._chains is not None and flow.llm is not None and flow.llm.circuit:
            self._chains.forget(flow.request_id)
        if not pipeline.done_waits:
            pipeline.done_now(flow)
            return
        # Pipeline.done logs a failing hook itself; the task only has to be kept alive.
        task = asyncio.ensure_future(pipeline.done(flow))
        self.finishing.add(task)
        task.add_done_callback(self.finishing.discard)

    def done_after_reset(self, flow: Flow, pipeline: Pipeline) -> None:
        """Envoy ended the stream while the flow's first answer was pending or just sent: Envoy
        may have answered the request itself and will then log it (its access log skips only
        requests marked handled). The flow is finished when that entry comes, or without it."""
        flow.finished_ns = flow.finished_ns or time.monotonic_ns()
        if not flow.error:
            flow.error = ABORTED
        if self._access_log is None or not self._access_log.await_entry(
            flow.request_id, partial(self._done_with_entry, flow, pipeline)
        ):
            self.done(flow, pipeline)

    def _done_with_entry(self, flow: Flow, pipeline: Pipeline, row: RequestLogRow | None) -> None:
        if row is not None:
            # What Envoy answered is what the client got.
            flow.response_status = row.status
            flow.error = row.error
        self.done(flow, pipeline)

    def _open_flow(
        self, message: ext_proc.HttpHeaders, traceparent: str | None
    ) -> tuple[Flow, Pipeline]:
        headers = _header_map(message.headers)
        return self._dispatcher.open(
            request_id=headers.get("x-request-id") or uuid.uuid4().hex,
            method=headers.pop(":method", ""),
            path=headers.pop(":path", ""),
            headers=headers,
            has_body=not message.end_of_stream,
            # Envoy's span for this call when Envoy traces; else the client's own, if any.
            traceparent=traceparent or headers.get("traceparent"),
        )


def _answer_request_headers(flow: Flow, verdict: Decision) -> bytes:
    if isinstance(verdict, Respond):
        return _immediate(flow, verdict)
    response = ext_proc.ProcessingResponse()
    _fill(response.request_headers.response, flow.take_pending())
    wire: bytes = response.SerializeToString()
    return wire + FIRST_ANSWER_TAIL[flow.request_body_mode]


def _answer_request_body(flow: Flow, verdict: Decision) -> bytes:
    if isinstance(verdict, Respond):
        return _immediate(flow, verdict)
    response = ext_proc.ProcessingResponse()
    _fill(response.request_body.response, flow.take_pending())
    wire: bytes = response.SerializeToString()
    return wire


def _answer_response_headers(flow: Flow, verdict: Decision) -> bytes:
    if isinstance(verdict, Respond):
        return _immediate(flow, verdict)
    response = ext_proc.ProcessingResponse()
    _fill(response.response_headers.response, flow.take_pending())
    if flow.response_body_mode is BodyMode.NONE or flow.end_of_stream:
        flow.finished_ns = time.monotonic_ns()
    else:
        response.mode_override.response_body_mode = BODY_MODES[flow.response_body_mode]
    wire: bytes = response.SerializeToString()
    return wire


def _answer_response_body(flow: Flow, verdict: Decision) -> bytes:
    if isinstance(verdict, Respond):
        return _immediate(flow, verdict)
    if flow.end_of_stream:
        flow.finished_ns = time.monotonic_ns()
    response = ext_proc.ProcessingResponse()
    _fill(response.response_body.response, flow.take_pending())
    wire: bytes = response.SerializeToString()
    return wire


REQUEST_TRAILERS_ANSWER: Final[bytes] = ext_proc.ProcessingResponse(
    request_trailers=ext_proc.TrailersResponse()
).SerializeToString()
RESPONSE_TRAILERS_ANSWER: Final[bytes] = ext_proc.ProcessingResponse(
    response_trailers=ext_proc.TrailersResponse()
).SerializeToString()


def _answer_request_trailers(flow: Flow, _: Decision) -> bytes:
    return REQUEST_TRAILERS_ANSWER


def _answer_response_trailers(flow: Flow, _: Decision) -> bytes:
    return RESPONSE_TRAILERS_ANSWER


def _header_map(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-case names to values; repeated headers joined as HTTP allows (except cookies)."""
    result: dict[str, str] = {}
    for header in headers.headers:
        raw = header.raw_value
        value = raw.decode("latin-1") if raw else header.value
        key = header.key.lower()
        if key in result:
            result[key] = f"{result[key]}{'; ' if key == 'cookie' else ', '}{value}"
        else:
            result[key] = value
    return result


def _fill(common: ext_proc.CommonResponse, pending: Pending) -> None:
    """Writes a phase's pending changes into its CommonResponse (which this marks as set).

    Built with `add()` and field assignment: constructing nested messages from keyword
    arguments costs about three times as much in protobuf's Python API.
    """
    common.SetInParent()
    if not pending:
        return
    if pending.set_headers or pending.remove_headers:
        mutation = common.header_mutation
        add = mutation.set_headers.add
        for name, value in pending.set_headers.items():
            header = add(append_action=OVERWRITE).header
            header.key = name
            header.raw_value = value.encode("latin-1")
        removed = pending.remove_headers
        if FORWARDED_PROTO in removed:
            # Envoy matches no route without x-forwarded-proto: the route this marker selects
            # removes it once it is chosen (envoy/envoy.yaml).
            removed = [name for name in removed if name != FORWARDED_PROTO]
            header = add(append_action=OVERWRITE).header
            header.key = STRIP_FORWARDED_PROTO
            header.raw_value = b"1"
        mutation.remove_headers.extend(removed)
    if pending.body is not None:
        if pending.body:
            common.body_mutation.body = pending.body
        else:
            common.body_mutation.clear_body = True
    if pending.clear_route_cache:
        common.clear_route_cache = True


def _immediate(flow: Flow, verdict: Respond) -> bytes:
    flow.response_status = verdict.status
    flow.finished_ns = time.monotonic_ns()
    flow.take_pending()
    response = ext_proc.ProcessingResponse()
    immediate = response.immediate_response
    immediate.status.code = verdict.status
    immediate.body = verdict.body
    immediate.details = DETAILS_PREFIX + (verdict.reason or "gateway_response")
    add = immediate.headers.set_headers.add
    for name, value in verdict.headers:
        header = add(append_action=OVERWRITE).header
        header.key = name
        header.raw_value = value.encode("latin-1")
    wire: bytes = response.SerializeToString()
    return wire + HANDLED_TAIL


def _hold_response(timeout_s: float) -> bytes:
    """Tells Envoy to wait this long for the answer to the message being held."""
    response = ext_proc.ProcessingResponse()
    response.override_message_timeout.FromNanoseconds(int((timeout_s + HOLD_MARGIN_S) * 1e9))
    wire: bytes = response.SerializeToString()
    return wire


class ExtProcStream:
    """One ext_proc stream: messages handled strictly in order, one at a time.

    Envoy waits for each answer in most phases, but streamed bodies may send the next chunk
    before the last one is answered; those wait in `backlog`, drained by a loop (never by
    recursion, however long it grows). A phase whose stages all answer at once is answered on
    the spot; from the first stage that must wait, it runs in a task. Whatever goes wrong while
    handling a message fails this request only: it is answered with a 500, as any other stage
    error would be, and the gRPC stream stays well formed.
    """

    __slots__ = ("_backlog", "_busy", "_processor", "_step", "_stream", "_task")

    def __init__(self, processor: ExternalProcessor, stream: CallStream) -> None:
        self._processor = processor
        self._stream = stream
        self._step: Step | None = None
        self._busy = False
        self._backlog: deque[bytes] = deque()
        # What the current phase waits on, cancelled on a reset.
        self._task: asyncio.Future[Any] | None = None

    def on_message(self, message: bytes) -> None:
        if self._busy:
            self._backlog.append(message)
            return
        self._handle(message)
        while self._backlog and not self._busy:
            self._handle(self._backlog.popleft())

    def on_end(self) -> None:
        if not self._busy:
            self._stream.finish()
            self._close()

    def on_reset(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._backlog.clear()
        self._close()

    def _handle(self, message: bytes) -> None:
        """Runs one message's phase: answered now, or marked busy until its wait is over."""
        try:
            step = self._processor.step(
                self._step,
                ext_proc.ProcessingRequest.FromString(message),
                self._stream.headers.get("traceparent"),
            )
        except DecodeError:
            self._fail(ProtocolViolation("undecodable ProcessingRequest"))
            return
        except ProtocolViolation as violation:
            self._fail(violation)
            return
        if step.flow is not (self._step.flow if self._step else None):
            step.flow.on_hold = self._extend_timeout
        self._step = step
        try:
            outcome = step.start(step.flow)
        except Exception:
            log.exception("ext_proc: a phase failed outside its stages")
            outcome = INTERNAL_ERROR
        if isinstance(outcome, Continue | Respond):
            self._answer(step, outcome)
            return
        # The rest of the phase: a future callbacks complete (a deferred check finishing), or
        # a coroutine, run as a task. Either is answered from its done callback.
        self._busy = True
        self._task = asyncio.ensure_future(outcome)
        self._task.add_done_callback(partial(self._settled, step))

    def _settled(self, step: Step, outcome: asyncio.Future[Any]) -> None:
        self._task = None
        self._busy = False
        if outcome.cancelled():
            return  # reset: nothing more to answer
        error = outcome.exception()
        if error is not None:
            log.error("ext_proc: a phase failed outside its stages", exc_info=error)
        self._answer(step, INTERNAL_ERROR if error is not None else outcome.result())
        while self._backlog and not self._busy:
            self._handle(self._backlog.popleft())
        if not self._busy and self._stream.remote_closed:
            self.on_end()

    def _answer(self, step: Step, verdict: Decision) -> None:
        try:
            response = step.answer(step.flow, verdict)
        except Exception:
            log.exception("ext_proc: could not build the answer")
            response = _immediate(step.flow, INTERNAL_ERROR)
        self._stream.send_message(response)

    def _extend_timeout(self, timeout_s: float) -> None:
        self._stream.send_message(_hold_response(timeout_s))

    def _fail(self, error: ProtocolViolation) -> None:
        """Envoy broke the protocol: this stream ends with INTERNAL (its request only)."""
        log.warning("ext_proc: %s", error)
        self._stream.finish(GRPC_INTERNAL, str(error))
        self._task = None
        self._backlog.clear()
        self._busy = False
        self._close()

    def _close(self) -> None:
        step, self._step = self._step, None
        if step is None:
            return
        flow = step.flow
        if flow.finished_ns is None and step.answer is _answer_request_headers:
            # Envoy ended the exchange before the first answer was applied, or right after.
            self._processor.done_after_reset(flow, step.pipeline)
            return
        if flow.finished_ns is None and not flow.error:
            flow.error = ABORTED
        self._processor.done(flow, step.pipeline)
