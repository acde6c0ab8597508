"""The Envoy adapter: an `ExternalProcessor` gRPC service that turns ext_proc messages into
pipeline phases on a Flow, and verdicts plus the Flow's pending changes back into responses.

Envoy is configured to send request and response headers only; a flow that needs more asks for
it per request with `mode_override` (buffered request body for LLM calls; streamed response body
for SSE, buffered for JSON), so a plain REST call costs two round trips and no body copies.
No policy lives here.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc
from envoy.type.v3 import http_status_pb2

from extproc.flow import BodyMode, Flow, Pending, Respond
from extproc.pipeline import Pipeline
from gatez.policy import CompiledPolicy

log = logging.getLogger("gatez.envoy")

Mode = processing_mode_pb2.ProcessingMode
OVERWRITE: Final = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
BODY_MODES: Final = {
    BodyMode.NONE: Mode.NONE,
    BodyMode.BUFFERED: Mode.BUFFERED,
    BodyMode.STREAMED: Mode.STREAMED,
}


# xds-protos ships no type information for its gRPC stubs.
class ExternalProcessor(ext_proc_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    """Envoy's ext_proc stream, one per HTTP request, driven through the pipeline."""

    def __init__(self, pipeline: Pipeline, policy: Callable[[], CompiledPolicy | None]) -> None:
        self._pipeline = pipeline
        self._policy = policy
        # Finished flows whose on_done is still running; kept so the tasks are not collected.
        self._finishing: set[asyncio.Task[None]] = set()

    async def Process(
        self,
        request_iterator: AsyncIterator[ext_proc.ProcessingRequest],
        context: grpc.aio.ServicerContext[ext_proc.ProcessingRequest, ext_proc.ProcessingResponse],
    ) -> AsyncIterator[ext_proc.ProcessingResponse]:
        flow: Flow | None = None
        try:
            async for request in request_iterator:
                phase = request.WhichOneof("request")
                if phase == "request_headers":
                    flow = self._new_flow(request.request_headers)
                    yield await self._on_request_headers(flow)
                elif flow is None:
                    raise RuntimeError(f"ext_proc stream began with {phase}")
                elif phase == "request_body":
                    flow.request_body = request.request_body.body
                    yield await self._on_request_body(flow)
                elif phase == "response_headers":
                    yield await self._on_response_headers(flow, request.response_headers)
                elif phase == "response_body":
                    yield await self._on_response_body(flow, request.response_body)
                elif phase == "request_trailers":
                    yield ext_proc.ProcessingResponse(request_trailers=ext_proc.TrailersResponse())
                elif phase == "response_trailers":
                    yield ext_proc.ProcessingResponse(response_trailers=ext_proc.TrailersResponse())
        finally:
            if flow is not None:
                # A task, so the row is written even when this stream is being cancelled.
                task = asyncio.create_task(self._pipeline.done(flow))
                self._finishing.add(task)
                task.add_done_callback(self._finishing.discard)

    def _new_flow(self, message: ext_proc.HttpHeaders) -> Flow:
        headers = _header_map(message.headers)
        return Flow(
            request_id=headers.get("x-request-id") or uuid.uuid4().hex,
            policy=self._policy(),
            started_ns=time.monotonic_ns(),
            started_at=time.time(),
            method=headers.pop(":method", ""),
            path=headers.pop(":path", ""),
            request_headers=headers,
            request_has_body=not message.end_of_stream,
        )

    async def _on_request_headers(self, flow: Flow) -> ext_proc.ProcessingResponse:
        verdict = await self._pipeline.request_headers(flow)
        if isinstance(verdict, Respond):
            return _immediate(flow, verdict)
        response = ext_proc.ProcessingResponse(
            request_headers=ext_proc.HeadersResponse(response=_common(flow.take_pending()))
        )
        if flow.request_body_mode is not BodyMode.NONE:
            response.mode_override.request_body_mode = BODY_MODES[flow.request_body_mode]
        return response

    async def _on_request_body(self, flow: Flow) -> ext_proc.ProcessingResponse:
        verdict = await self._pipeline.request_body(flow)
        if isinstance(verdict, Respond):
            return _immediate(flow, verdict)
        return ext_proc.ProcessingResponse(
            request_body=ext_proc.BodyResponse(response=_common(flow.take_pending()))
        )

    async def _on_response_headers(
        self, flow: Flow, message: ext_proc.HttpHeaders
    ) -> ext_proc.ProcessingResponse:
        headers = _header_map(message.headers)
        flow.upstream_reached = True
        flow.response_status = int(headers.pop(":status", "0") or 0)
        flow.response_headers = headers
        flow.end_of_stream = message.end_of_stream
        verdict = await self._pipeline.response_headers(flow)
        if isinstance(verdict, Respond):
            return _immediate(flow, verdict)
        response = ext_proc.ProcessingResponse(
            response_headers=ext_proc.HeadersResponse(response=_common(flow.take_pending()))
        )
        if flow.response_body_mode is BodyMode.NONE or message.end_of_stream:
            flow.finished_ns = time.monotonic_ns()
        else:
            response.mode_override.response_body_mode = BODY_MODES[flow.response_body_mode]
        return response

    async def _on_response_body(
        self, flow: Flow, message: ext_proc.HttpBody
    ) -> ext_proc.ProcessingResponse:
        flow.response_chunk = message.body
        flow.end_of_stream = message.end_of_stream
        verdict = await self._pipeline.response_body(flow)
        if isinstance(verdict, Respond):
            return _immediate(flow, verdict)
        if message.end_of_stream:
            flow.finished_ns = time.monotonic_ns()
        return ext_proc.ProcessingResponse(
            response_body=ext_proc.BodyResponse(response=_common(flow.take_pending()))
        )


def _header_map(headers: base_pb2.HeaderMap) -> dict[str, str]:
    """Lower-case names to values; repeated headers joined as HTTP allows (except cookies)."""
    result: dict[str, str] = {}
    for header in headers.headers:
        value = header.raw_value.decode("latin-1") if header.raw_value else header.value
        key = header.key.lower()
        if key in result:
            result[key] = f"{result[key]}{'; ' if key == 'cookie' else ', '}{value}"
        else:
            result[key] = value
    return result


def _common(pending: Pending) -> ext_proc.CommonResponse:
    common = ext_proc.CommonResponse()
    if not pending:
        return common
    if pending.set_headers or pending.remove_headers:
        mutation = common.header_mutation
        for name, value in pending.set_headers.items():
            mutation.set_headers.append(
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key=name, raw_value=value.encode("latin-1")),
                    append_action=OVERWRITE,
                )
            )
        mutation.remove_headers.extend(pending.remove_headers)
    if pending.body is not None:
        if pending.body:
            common.body_mutation.body = pending.body
        else:
            common.body_mutation.clear_body = True
    if pending.clear_route_cache:
        common.clear_route_cache = True
    return common


def _immediate(flow: Flow, verdict: Respond) -> ext_proc.ProcessingResponse:
    flow.response_status = verdict.status
    flow.finished_ns = time.monotonic_ns()
    flow.take_pending()
    response = ext_proc.ProcessingResponse(
        immediate_response=ext_proc.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=verdict.status),
            body=verdict.body,
            details=verdict.reason,
        )
    )
    for name, value in verdict.headers:
        response.immediate_response.headers.set_headers.append(
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=name, raw_value=value.encode("latin-1")),
                append_action=OVERWRITE,
            )
        )
    return response
