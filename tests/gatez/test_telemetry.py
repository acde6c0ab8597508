"""gatez.telemetry: spans of a flow (continuing the proxy's trace, recorded after the fact,
GenAI attributes on the upstream leg), request metrics, and the standard OTEL_* variables."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry

from gatez.envoy_config import EnvoyTracing
from gatez.errors import Unauthenticated
from gatez.pipeline import (
    CONTINUE,
    Dispatcher,
    Flow,
    LlmCall,
    NoPolicy,
    NoRoute,
    Pipeline,
    Principal,
    Stage,
    TokenUsage,
    Verdict,
)
from gatez.policy import (
    EMPTY_POLICY,
    UPSTREAM_CLUSTER_TLS,
    ModelTarget,
    ProviderKind,
    ProviderTarget,
    RouteKind,
    compile_policy,
)
from gatez.telemetry import (
    DataPlaneMetrics,
    DataPlaneTelemetry,
    FlowTracing,
    StageCollector,
    Tracing,
    tracing_enabled,
)
from gatez.v1 import policy_pb2

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_ID = "b7ad6b7169203331"
SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-01"
NOT_SAMPLED = f"00-{TRACE_ID}-{PARENT_ID}-00"


class Authenticates(Stage):
    def on_request_headers(self, flow: Flow) -> Verdict:
        if flow.request_headers.get("authorization") != "Bearer good":
            raise Unauthenticated("bad key")
        flow.principal = Principal("acme", "key-1", "key-1")
        return CONTINUE


class RoutesModel(Stage):
    def on_request_body(self, flow: Flow) -> Verdict:
        provider = ProviderTarget(
            "openai-main", ProviderKind.OPENAI, UPSTREAM_CLUSTER_TLS, "api.openai.com", "/v1", None
        )
        flow.llm = LlmCall(ModelTarget("fast", provider, "gpt-4o-mini"), False, False)
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        assert flow.llm is not None
        flow.llm.usage = TokenUsage(12, 5)
        flow.llm.response_model = "gpt-4o-mini-2024-07-18"
        return CONTINUE


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Iterator[Tracing]:
    tracing = Tracing.from_env("gatez-test", environ={}, exporter=exporter)
    assert tracing is not None
    yield tracing
    tracing.shutdown()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def new_dispatcher(
    tracing: Tracing, registry: CollectorRegistry, stage_min_us: float
) -> Dispatcher:
    llm = Pipeline([Authenticates(), RoutesModel()])
    flow_tracing = FlowTracing(tracing, stage_min_us=stage_min_us)
    chosen = Dispatcher(
        lambda: EMPTY_POLICY,
        {RouteKind.LLM: llm},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
        observer=DataPlaneTelemetry(DataPlaneMetrics(registry), flow_tracing),
    )
    registry.register(StageCollector(chosen.named_pipelines()))
    return chosen


@pytest.fixture
def dispatcher(tracing: Tracing, registry: CollectorRegistry) -> Dispatcher:
    """Every stage call a span of its own (GATEZ_TRACE_STAGE_MIN_US=0)."""
    return new_dispatcher(tracing, registry, stage_min_us=0)


async def exchange(chosen: Dispatcher, key: str, traceparent: str | None) -> Flow:
    """A chat request through every phase, as an adapter drives it."""
    flow, pipeline = chosen.open(
        request_id="req-1",
        method="POST",
        path="/v1/chat/completions?api-version=secret-query",
        headers={"authorization": f"Bearer {key}"},
        has_body=True,
        traceparent=traceparent,
    )
    verdict = await pipeline.request_headers(flow)
    if verdict is CONTINUE:
        await pipeline.request_body(flow)
        flow.upstream_reached = True
        flow.response_status = 200
        await pipeline.response_headers(flow)
        flow.end_of_stream = True
        await pipeline.response_body(flow)
    else:
        flow.response_status = 401
    flow.finished_ns = time.monotonic_ns()
    pipeline.done_now(flow)
    return flow


def finished_spans(tracing: Tracing, exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    tracing.provider.force_flush()
    return {span.name: span for span in exporter.get_finished_spans()}


async def test_a_flow_continues_the_proxys_trace_with_stage_and_upstream_spans(
    dispatcher: Dispatcher, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    await exchange(dispatcher, "good", SAMPLED)

    spans = finished_spans(tracing, exporter)
    assert set(spans) == {
        "gatez llm",
        "authenticates",
        "routes_model",
        "chat gpt-4o-mini",
    }
    request = spans["gatez llm"]
    assert request.context is not None and request.parent is not None
    assert format(request.context.trace_id, "032x") == TRACE_ID
    assert format(request.parent.span_id, "016x") == PARENT_ID
    assert request.kind is SpanKind.SERVER
    assert dict(request.attributes or {}) == {
        "gatez.pipeline": "llm",
        "gatez.request_id": "req-1",
        "http.request.method": "POST",
        "url.path": "/v1/chat/completions",
        "gatez.route.id": "default-llm",
        "gatez.tenant.id": "acme",
        "http.response.status_code": 200,
    }
    for name in ("authenticates", "routes_model", "chat gpt-4o-mini"):
        child = spans[name]
        assert child.parent is not None and child.parent.span_id == request.context.span_id
        assert request.start_time is not None and child.start_time is not None
        assert request.end_time is not None and child.end_time is not None
        assert request.start_time <= child.start_time <= child.end_time <= request.end_time
    # Two calls of routes_model (body, response body) are two spans of that name.
    assert len([s for s in exporter.get_finished_spans() if s.name == "routes_model"]) == 2

    upstream = spans["chat gpt-4o-mini"]
    assert upstream.kind is SpanKind.CLIENT
    assert dict(upstream.attributes or {}) == {
        "http.response.status_code": 200,
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.system": "openai",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.request.stream": False,
        "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "gatez.model_alias": "fast",
        "gatez.provider": "openai-main",
        "server.address": "api.openai.com",
        "server.port": 443,
    }
    # The upstream leg begins when the request phases are over.
    body_call = next(
        s
        for s in exporter.get_finished_spans()
        if s.name == "routes_model" and (s.attributes or {}).get("gatez.phase") == "request_body"
    )
    assert body_call.end_time == upstream.start_time


async def test_by_default_only_stage_calls_that_did_work_are_spans(
    tracing: Tracing, registry: CollectorRegistry, exporter: InMemorySpanExporter
) -> None:
    chosen = new_dispatcher(tracing, registry, stage_min_us=100)

    await exchange(chosen, "good", SAMPLED)
    await exchange(chosen, "bad", SAMPLED)

    tracing.provider.force_flush()
    names = sorted(span.name for span in exporter.get_finished_spans())
    # The calls that went on at once are not spans; the upstream leg and a refusal are.
    assert names == ["authenticates", "chat gpt-4o-mini", "gatez llm", "gatez llm"]


async def test_a_refused_flow_names_the_stage_that_answered(
    dispatcher: Dispatcher, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    await exchange(dispatcher, "bad", SAMPLED)

    spans = finished_spans(tracing, exporter)
    assert set(spans) == {"gatez llm", "authenticates"}
    assert (spans["authenticates"].attributes or {})["gatez.outcome"] == "respond"
    request = spans["gatez llm"]
    assert (request.attributes or {})["http.response.status_code"] == 401
    assert (request.attributes or {})["gatez.error"] == "authentication_error"
    assert "gatez.tenant.id" not in (request.attributes or {})
    assert request.status.status_code is StatusCode.UNSET  # a 4xx is the client's error


async def test_an_unsampled_parent_means_no_trace_and_no_recording(
    dispatcher: Dispatcher, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    flow = await exchange(dispatcher, "good", NOT_SAMPLED)

    assert flow.trace is None
    assert finished_spans(tracing, exporter) == {}


async def test_without_a_traceparent_the_flow_starts_a_trace(
    dispatcher: Dispatcher, tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    await exchange(dispatcher, "good", None)

    request = finished_spans(tracing, exporter)["gatez llm"]
    assert request.parent is None


async def test_request_metrics_count_by_pipeline_route_and_status(
    dispatcher: Dispatcher, registry: CollectorRegistry
) -> None:
    await exchange(dispatcher, "good", None)
    await exchange(dispatcher, "bad", None)
    await exchange(dispatcher, "bad", None)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    route = {"pipeline": "llm", "route": "default-llm"}
    assert sample("gatez_requests_total", **route, status="200") == 1
    assert sample("gatez_requests_total", **route, status="401") == 2
    assert sample("gatez_request_duration_seconds_count", **route) == 3
    tokens = {"provider": "openai-main", "model": "gpt-4o-mini"}
    assert sample("gatez_llm_tokens_total", **tokens, type="input") == 12
    assert sample("gatez_llm_tokens_total", **tokens, type="output") == 5
    authenticates = {"pipeline": "llm", "stage": "authenticates", "phase": "request_headers"}
    assert sample("gatez_stage_calls_total", **authenticates) == 3
    assert sample("gatez_stage_verdicts_total", **authenticates, verdict="respond") == 2
    assert sample("gatez_stage_verdicts_total", **authenticates, verdict="continue") == 1
    assert sample("gatez_stage_verdicts_total", **authenticates, verdict="error") == 0
    assert (sample("gatez_stage_seconds_total", **authenticates) or 0) > 0


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"}, False),
    ],
)
def test_tracing_is_on_only_when_the_standard_variables_ask_for_export(
    environ: dict[str, str], enabled: bool
) -> None:
    assert tracing_enabled(environ) is enabled
    assert (Tracing.from_env("gatez-test", environ=environ) is None) is not enabled


@pytest.mark.parametrize(
    ("environ", "percent"),
    [
        ({}, 100.0),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            10.0,
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, 25.0),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 0.0),
    ],
)
def test_envoy_samples_as_the_data_plane_is_told_to(
    environ: dict[str, str], percent: float
) -> None:
    tracing = EnvoyTracing.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317", **environ})
    assert tracing == EnvoyTracing("otel", 4317, sampling_percent=percent)


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://otel:4317"},
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4318",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        },
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://otel:4317",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift",
        },
    ],
)
def test_an_endpoint_envoy_cannot_export_to_is_refused_clearly(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="OTLP"):
        EnvoyTracing.from_env(environ)


async def test_a_rest_call_has_an_upstream_span_naming_its_route(
    tracing: Tracing, exporter: InMemorySpanExporter, registry: CollectorRegistry
) -> None:
    rest_policy = compile_policy(
        policy_pb2.PolicySnapshot(
            version=4,
            routes=[
                policy_pb2.Route(
                    id="orders",
                    path_prefix="/api/orders",
                    kind=policy_pb2.ROUTE_KIND_REST,
                    upstream_url="https://orders.internal:8443/v2",
                )
            ],
        )
    )
    chosen = Dispatcher(
        lambda: rest_policy,
        {RouteKind.REST: Pipeline([Authenticates()])},
        unrouted=Pipeline([NoRoute()]),
        unavailable=Pipeline([NoPolicy()]),
        observer=DataPlaneTelemetry(DataPlaneMetrics(registry), FlowTracing(tracing)),
    )
    flow, pipeline = chosen.open(
        request_id="req-2",
        method="GET",
        path="/api/orders/17",
        headers={"authorization": "Bearer good"},
        has_body=False,
        traceparent=SAMPLED,
    )
    assert await pipeline.request_headers(flow) is CONTINUE
    flow.upstream_reached = True
    flow.response_status = 503
    flow.finished_ns = time.monotonic_ns()
    pipeline.done_now(flow)

    spans = finished_spans(tracing, exporter)
    assert set(spans) == {"gatez rest", "upstream orders"}
    upstream = spans["upstream orders"]
    assert upstream.kind is SpanKind.CLIENT
    assert dict(upstream.attributes or {}) == {
        "http.response.status_code": 503,
        "server.address": "orders.internal",
        "server.port": 8443,
    }
    assert upstream.status.status_code is StatusCode.ERROR
    # A 5xx is the gateway's (or its upstream's) failure: the request span says so too.
    assert spans["gatez rest"].status.status_code is StatusCode.ERROR
    assert (spans["gatez rest"].attributes or {})["gatez.route.id"] == "orders"
