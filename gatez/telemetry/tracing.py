"""Traces: OpenTelemetry spans exported over OTLP, configured by the standard `OTEL_*` variables.

Tracing is on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is
set, and off otherwise — then no provider, no exporter and no span object exists, and the
pipeline checks one attribute per stage call. The SDK reads the rest of the standard variables
itself: `OTEL_TRACES_SAMPLER`/`OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`: the
proxy's decision is followed), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` for batching,
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`.

A data-plane request's trace, below the proxy's spans:

    gatez llm                 SERVER   the flow, from its headers to the end of the exchange
    ├── authenticate          INTERNAL a stage call that did work (its phase an attribute)
    ├── rate_limit check      INTERNAL a deferred check, from its stage's return to its verdict
    └── chat upstream-model   CLIENT   the upstream leg, with GenAI semantic-convention attributes

A stage call did work when it waited, answered, failed, or took at least `stage_min_us`
(`GATEZ_TRACE_STAGE_MIN_US`, default 100 µs; 0 records every call); a call that went on at once
shows in the stage metrics, not as a span of its own.

Its parent is the trace context the proxy sent: behind Envoy, the `traceparent` of the ext_proc
stream (a child of Envoy's request span); behind APISIX, the client's own `traceparent`, if any.
Stage spans are recorded after the fact from the times the pipeline took (no span object lives
through the request). Spans carry tenant and route ids, never header values, bodies or keys.

What a sampled request costs is mostly the SDK's, measured: the request span ~25 µs, and the
OTLP encoder ~20 µs per span in the export thread (it hashes the resource's JSON for every span),
which made a chat request with a span per stage call (eleven) cost ~0.8 ms of CPU — hence spans
only for calls that did work, and child spans built finished and handed to the batch processor
directly (`FinishedSpans`): through `Tracer.start_span`/`end` a child recorded after the fact
took ~23 µs, built so ~3 µs. They are sampled with their parent, as every standard sampler would
decide for them. Operators bound the rest with the sampler
(`OTEL_TRACES_SAMPLER=parentbased_traceidratio`; Envoy gets the same ratio from
`gatez.envoy_config`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Final

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

from gatez.pipeline import CallOutcome, Flow, StageCall
from gatez.pipeline.stage import REQUEST_PHASES
from gatez.policy import UPSTREAM_CLUSTER_TLS

log = logging.getLogger("gatez.telemetry")

ENDPOINT_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
PROTOCOL_VARIABLES: Final = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
# How much of a request path a span keeps (paths are client input).
PATH_LIMIT: Final = 256
INSTRUMENTATION: Final = "gatez"
# A stage call that went on at once gets a span of its own from this long (µs).
DEFAULT_STAGE_MIN_US: Final = 100.0

# gen_ai.provider.name for each provider kind; a kind not listed is named after itself.
GEN_AI_PROVIDER_NAMES: Final = {
    "OPENAI": "openai",
    "AZURE_OPENAI": "azure.ai.openai",
    "ANTHROPIC": "anthropic",
    "GEMINI": "gcp.gemini",
    "VERTEX_AI": "gcp.vertex_ai",
    "BEDROCK": "aws.bedrock",
    "OLLAMA": "ollama",
}


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the standard variables ask for trace export."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def otlp_protocol(environ: Mapping[str, str] | None = None) -> str:
    """`grpc` (the default here, as Envoy's tracer speaks it) or `http/protobuf`."""
    env = os.environ if environ is None else environ
    for name in PROTOCOL_VARIABLES:
        value = env.get(name, "").strip()
        if value:
            if value not in ("grpc", "http/protobuf"):
                raise ValueError(f"{name} must be grpc or http/protobuf, not {value!r}")
            return value
    return "grpc"


class Tracing:
    """One process's tracer provider, exporting over OTLP in batches (a background thread)."""

    def __init__(self, provider: TracerProvider, processor: BatchSpanProcessor) -> None:
        self.provider = provider
        self.processor = processor
        self.tracer: Tracer = provider.get_tracer(INSTRUMENTATION)

    @classmethod
    def from_env(
        cls,
        service_name: str,
        *,
        instance_id: str = "",
        environ: Mapping[str, str] | None = None,
        exporter: SpanExporter | None = None,
    ) -> Tracing | None:
        """The process's tracing, or None when the variables do not ask for it. `exporter`
        replaces the OTLP one (tests)."""
        env = os.environ if environ is None else environ
        if exporter is None and not tracing_enabled(env):
            return None
        attributes: dict[str, AttributeValue] = {
            "service.name": env.get("OTEL_SERVICE_NAME", "").strip() or service_name
        }
        if instance_id:
            attributes["service.instance.id"] = instance_id
        # The sampler comes from OTEL_TRACES_SAMPLER; the resource also takes
        # OTEL_RESOURCE_ATTRIBUTES.
        provider = TracerProvider(resource=Resource.create(attributes))
        processor = BatchSpanProcessor(exporter or _otlp_exporter(env))
        provider.add_span_processor(processor)
        return cls(provider, processor)

    def shutdown(self) -> None:
        """Exports what is queued (bounded by the exporter's timeout) and stops the thread."""
        self.provider.shutdown()


def _otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The exporter for the protocol asked for. It reads headers, timeout, compression and
    certificates from the process's variables itself; the endpoint is passed from `environ`."""
    traces_endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    if otlp_protocol(environ) == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        # The general endpoint is a base URL; the signal's own is used as it is.
        url = traces_endpoint or f"{endpoint.rstrip('/')}/v1/traces"
        return HttpSpanExporter(endpoint=url)
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    target = traces_endpoint or endpoint
    # An http:// endpoint is plaintext, https:// TLS (the exporter reads the scheme).
    return OTLPSpanExporter(endpoint=target)


class FinishedSpans:
    """Builds child spans that are over already and hands them to the batch processor (see the
    module doc for why not through the tracer)."""

    def __init__(self, tracing: Tracing) -> None:
        self._processor = tracing.processor
        self._resource = tracing.provider.resource
        self._new_span_id = tracing.provider.id_generator.generate_span_id
        self._scope = InstrumentationScope(INSTRUMENTATION)

    def record(
        self,
        parent: SpanContext,
        name: str,
        start_ns: int,
        end_ns: int,
        attributes: dict[str, AttributeValue],
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        error: bool = False,
    ) -> None:
        context = SpanContext(
            parent.trace_id,
            self._new_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
            trace_state=parent.trace_state,
        )
        self._processor.on_end(
            ReadableSpan(
                name,
                context,
                parent,
                self._resource,
                attributes,
                kind=kind,
                status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
                start_time=start_ns,
                end_time=end_ns,
                instrumentation_scope=self._scope,
            )
        )


class FlowTracing:
    """Starts a trace for each flow the sampler keeps, continuing the proxy's trace context.
    A stage call that went on at once in less than `stage_min_us` gets no span of its own."""

    def __init__(self, tracing: Tracing, *, stage_min_us: float = DEFAULT_STAGE_MIN_US) -> None:
        self._tracer = tracing.tracer
        self._children = FinishedSpans(tracing)
        self._stage_min_ns = int(stage_min_us * 1000)
        self._propagator = TraceContextTextMapPropagator()
        # The parent-based samplers the variables configure drop a trace the proxy did not
        # sample; such a flow is told apart by the traceparent's flags, without the SDK.
        self._follows_parent = isinstance(tracing.provider.sampler, ParentBased)

    def start(self, flow: Flow, pipeline: str, traceparent: str | None) -> RequestTrace | None:
        """The flow's trace, or None when it is not sampled."""
        if traceparent and self._follows_parent and not _sampled(traceparent):
            return None
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span(
            f"gatez {pipeline}",
            context=parent,
            kind=SpanKind.SERVER,
            start_time=int(flow.started_at * 1e9),
            attributes={
                "gatez.pipeline": pipeline,
                "gatez.request_id": flow.request_id,
                "http.request.method": flow.method,
                "url.path": flow.path.partition("?")[0][:PATH_LIMIT],
            },
        )
        if not span.is_recording():
            return None
        return RequestTrace(self._children, span, flow, self._stage_min_ns)


class RequestTrace:
    """A sampled flow: its request span, and the stage calls to record as children at the end."""

    __slots__ = ("_children", "_epoch_offset_ns", "_span", "_stage_min_ns", "calls")

    def __init__(
        self, children: FinishedSpans, span: Span, flow: Flow, stage_min_ns: int = 0
    ) -> None:
        self._children = children
        self._span = span
        self._stage_min_ns = stage_min_ns
        self.calls: list[StageCall] = []
        # Monotonic → wall clock, fixed for the flow so its spans line up with each other.
        self._epoch_offset_ns = int(flow.started_at * 1e9) - flow.started_ns

    def finish(self, flow: Flow) -> None:
        span = self._span
        finished_ns = flow.finished_ns or time.monotonic_ns()
        context = span.get_span_context()
        for call in self.calls:
            if _did_work(call, self._stage_min_ns):
                self._stage_span(context, call)
        if flow.upstream_reached:
            self._upstream_span(context, flow, finished_ns)
        if flow.route is not None:
            span.set_attribute("gatez.route.id", flow.route.id)
        if flow.principal is not None:
            span.set_attribute("gatez.tenant.id", flow.principal.tenant_id)
        if flow.response_status:
            span.set_attribute("http.response.status_code", flow.response_status)
        if flow.error:
            # A fixed reason word ("rate_limited", "unauthenticated"), never client input.
            span.set_attribute("gatez.error", flow.error)
        if flow.response_status >= 500:
            span.set_status(Status(StatusCode.ERROR, flow.error or None))
        span.end(end_time=self._epoch_offset_ns + finished_ns)

    def _stage_span(self, parent: SpanContext, call: StageCall) -> None:
        attributes: dict[str, AttributeValue] = {"gatez.phase": call.phase.name.lower()}
        if call.outcome is not CallOutcome.CONTINUE:
            attributes["gatez.outcome"] = call.outcome.value
        if call.waited:
            attributes["gatez.waited"] = True
        self._children.record(
            parent,
            f"{call.stage} check" if call.deferred else call.stage,
            self._epoch_offset_ns + call.started_ns,
            self._epoch_offset_ns + call.ended_ns,
            attributes,
            error=call.outcome is CallOutcome.ERROR,
        )

    def _upstream_span(self, parent: SpanContext, flow: Flow, finished_ns: int) -> None:
        """The upstream leg, as the gateway saw it: from the request's release (the end of the
        last request-phase call) to the end of the response."""
        released_ns = max(
            (call.ended_ns for call in self.calls if call.phase in REQUEST_PHASES),
            default=flow.started_ns,
        )
        attributes: dict[str, AttributeValue] = {}
        if flow.response_status:
            attributes["http.response.status_code"] = flow.response_status
        llm = flow.llm
        if llm is not None:
            name = f"chat {llm.target.upstream_model}"
            attributes.update(gen_ai_attributes(flow))
        else:
            upstream = flow.route.upstream if flow.route is not None else None
            name = f"upstream {flow.route.id}" if flow.route is not None else "upstream"
            if upstream is not None:
                attributes.update(_server_address(upstream.authority, upstream.cluster))
        self._children.record(
            parent,
            name,
            self._epoch_offset_ns + released_ns,
            self._epoch_offset_ns + finished_ns,
            attributes,
            kind=SpanKind.CLIENT,
            error=flow.response_status >= 400,
        )


def _did_work(call: StageCall, min_ns: int) -> bool:
    return (
        call.outcome is not CallOutcome.CONTINUE
        or call.waited
        or call.deferred
        or call.ended_ns - call.started_ns >= min_ns
    )


def _sampled(traceparent: str) -> bool:
    """The sampled flag of a W3C traceparent (a malformed one counts as sampled: the propagator
    then ignores it and the sampler decides on a new trace)."""
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[3]) != 2:
        return True
    try:
        return bool(int(parts[3], 16) & 1)
    except ValueError:
        return True


def gen_ai_attributes(flow: Flow) -> dict[str, AttributeValue]:
    """GenAI semantic-convention attributes of an LLM call (model names, provider, token usage;
    never prompts or completions)."""
    llm = flow.llm
    assert llm is not None
    target = llm.target
    provider = target.provider
    kind = provider.kind.name
    provider_name = GEN_AI_PROVIDER_NAMES.get(kind, kind.lower())
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name,
        # The attribute gen_ai.provider.name replaced; many back ends still read it.
        "gen_ai.system": provider_name,
        "gen_ai.request.model": target.upstream_model,
        "gen_ai.request.stream": llm.stream,
        "gatez.model_alias": target.alias,
        "gatez.provider": provider.name,
        **_server_address(provider.authority, provider.cluster),
    }
    if llm.response_model:
        attributes["gen_ai.response.model"] = llm.response_model
    if llm.usage is not None:
        attributes["gen_ai.usage.input_tokens"] = llm.usage.input_tokens
        attributes["gen_ai.usage.output_tokens"] = llm.usage.output_tokens
    if flow.response_status >= 400:
        attributes["error.type"] = str(flow.response_status)
    return attributes


def _server_address(authority: str, cluster: str) -> dict[str, AttributeValue]:
    host, _, port = authority.rpartition(":")
    if host and port.isdigit():
        return {"server.address": host.strip("[]"), "server.port": int(port)}
    # The authority leaves out the scheme's default port (gatez.policy._upstream).
    default_port = 443 if cluster == UPSTREAM_CLUSTER_TLS else 80
    return {"server.address": authority.strip("[]"), "server.port": default_port}
