"""Traces and metrics end to end: one trace across Envoy and the data plane, received by an
OTLP collector the test runs; `/metrics` of the data plane (or APISIX runner) and the control
service scraped and checked after known requests."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import (
    PROVIDER,
    UPSTREAM_KEY,
    Admin,
    TenantAccess,
    admin_of,
    provision,
    running,
)
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.otlp import OtlpCollector, ReceivedSpan

PROMPT = "a prompt that must stay out of every span"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# -- traces ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpCollector]:
    with OtlpCollector() as server:
        yield server


@pytest.fixture(scope="module")
def traced_stack(
    tmp_path_factory: pytest.TempPathFactory, collector: OtlpCollector
) -> Iterator[Stack]:
    """Envoy and the data plane exporting to the test's collector (the same OTEL_* variables)."""
    config = StackConfig.ephemeral(Path(tmp_path_factory.mktemp("traced")))
    config.extra_env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="50",
        # Every stage call a span, however fast (by default only calls that did work).
        GATEZ_TRACE_STAGE_MIN_US="0",
    )
    with running(Stack(config)) as started:
        yield started


@pytest.fixture(scope="module")
def traced_admin(traced_stack: Stack, upstream: UpstreamServer) -> Iterator[Admin]:
    with admin_of(traced_stack, upstream) as admin:
        yield admin


def one_trace(spans: list[ReceivedSpan], request_id: str) -> list[ReceivedSpan]:
    """The spans of the trace whose data-plane span carries `request_id`."""
    ours = [s for s in spans if s.attributes.get("gatez.request_id") == request_id]
    if not ours:
        return []
    return [s for s in spans if s.trace_id == ours[0].trace_id]


def test_one_trace_holds_envoys_spans_and_the_data_planes(
    traced_stack: Stack, traced_admin: Admin, collector: OtlpCollector, upstream: UpstreamServer
) -> None:
    # A fresh tenant's first request checks its rate limit in Redis (a deferred check).
    tenant = provision(
        traced_admin, rate_limit=policy_pb2.RateLimit(requests_per_minute=6000, burst=100)
    )
    client = openai.OpenAI(
        base_url=f"{traced_stack.config.gateway_url}/v1", api_key=tenant.api_key, max_retries=0
    )
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=[{"role": "user", "content": PROMPT}]
    )
    reply = raw.parse()
    request_id = raw.headers["x-request-id"]

    def complete(spans: list[ReceivedSpan]) -> bool:
        names = {s.name for s in one_trace(spans, request_id)}
        return {"ingress", "chat upstream-model-1"} <= names and any(
            name.startswith("router") for name in names
        )

    trace = one_trace(collector.wait_for(complete), request_id)
    by_name = {s.name: s for s in trace}
    ingress = by_name["ingress"]
    ext_proc = next(s for s in trace if "ExternalProcessor.Process" in s.name)
    router = next(s for s in trace if s.name.startswith("router"))
    request = by_name["gatez llm"]
    assert ingress.service == ext_proc.service == router.service == "gatez-envoy"
    assert request.service == "gatez-dataplane"
    # Envoy's request span → its ext_proc call → the data plane's request span.
    assert ingress.parent_id == ""
    assert ext_proc.parent_id == ingress.span_id
    assert request.parent_id == ext_proc.span_id
    assert router.parent_id == ingress.span_id
    assert request.span.kind == request.span.SPAN_KIND_SERVER
    assert request.attributes["gatez.tenant.id"] == tenant.tenant_id
    assert request.attributes["gatez.route.id"] == "default-llm"
    assert request.attributes["http.response.status_code"] == 200

    children = [s for s in trace if s.parent_id == request.span_id]
    stage_calls = sorted(
        (s.name, s.attributes["gatez.phase"]) for s in children if "gatez.phase" in s.attributes
    )
    assert stage_calls == [
        ("answer_cache", "request_body"),
        ("answer_cache", "response_body"),
        ("answer_cache", "response_headers"),
        ("authenticate", "request_headers"),
        ("client_api", "request_headers"),
        ("decode_response", "response_body"),
        ("decode_response", "response_headers"),
        ("encode_response", "response_body"),
        ("model_routing", "request_body"),
        ("model_routing", "request_headers"),
        ("provider_headers", "request_body"),
        ("rate_limit", "request_headers"),
        ("rate_limit check", "request_headers"),
        ("redact_answer", "request_body"),
        ("redact_answer", "response_body"),
        ("redact_prompt", "request_body"),
        ("token_budget", "request_body"),
        ("usage_meter", "response_body"),
    ]
    for child in children:
        assert request.span.start_time_unix_nano <= child.span.start_time_unix_nano
        assert child.span.end_time_unix_nano <= request.span.end_time_unix_nano

    llm = by_name["chat upstream-model-1"]
    assert llm.parent_id == request.span_id
    assert llm.span.kind == llm.span.SPAN_KIND_CLIENT
    assert reply.usage is not None
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "upstream-model-1",
        "gen_ai.response.model": reply.model,
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": reply.usage.completion_tokens,
        "gatez.model_alias": "gpt-test",
        "server.address": "127.0.0.1",
        "http.response.status_code": 200,
    }
    assert {key: llm.attributes.get(key) for key in expected} == expected

    # Neither the client's key, nor the provider's, nor the prompt is in any span.
    for span in trace:
        text = repr(span.span)
        for secret in (tenant.api_key, UPSTREAM_KEY, PROMPT):
            assert secret not in text, f"{secret!r} in span {span.name}"


def test_a_refused_request_is_traced_with_the_stage_that_answered(
    traced_stack: Stack, traced_admin: Admin, collector: OtlpCollector
) -> None:
    client = openai.OpenAI(
        base_url=f"{traced_stack.config.gateway_url}/v1", api_key="gz-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as refused:
        client.chat.completions.create(
            model="gpt-test", messages=[{"role": "user", "content": "x"}]
        )
    request_id = refused.value.response.headers["x-request-id"]

    trace = one_trace(
        collector.wait_for(lambda spans: bool(one_trace(spans, request_id))), request_id
    )
    request = next(s for s in trace if s.name == "gatez llm")
    assert request.attributes["http.response.status_code"] == 401
    assert request.attributes["gatez.error"] == "authentication_error"
    assert "gatez.tenant.id" not in request.attributes
    children = {s.name: s for s in trace if s.parent_id == request.span_id}
    # The client's API is recognised first (so the 401 is in its format), then refused.
    assert sorted(children) == ["authenticate", "client_api"]
    authenticate = children["authenticate"]
    assert authenticate.attributes["gatez.outcome"] == "respond"


# -- metrics -------------------------------------------------------------------------------------


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for_value(url: str, name: str, at_least: float, **labels: str) -> Samples:
    """Scrapes until the sample reaches `at_least` (counts are taken when a flow is finished,
    which may follow the client's response by a moment)."""
    deadline = time.monotonic() + 10
    while True:
        samples = scrape(url)
        if value(samples, name, **labels) >= at_least or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_data_plane_metrics_count_requests_verdicts_and_tokens(
    stack: Stack, admin: Admin, tenant: TenantAccess, gateway_url: str
) -> None:
    url = stack.config.data_plane_metrics_url
    before = scrape(url)
    refused = {"pipeline": "llm", "stage": "authenticate", "phase": "request_headers"}
    status_401 = {"pipeline": "llm", "route": "default-llm", "status": "401"}
    status_200 = {"pipeline": "llm", "route": "default-llm", "status": "200"}
    tokens = {"provider": PROVIDER, "model": "upstream-model-1"}

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gateway_url, api_key="gz-wrong", max_retries=0).models.list()
    client = openai.OpenAI(base_url=gateway_url, api_key=tenant.api_key, max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "count me"}]
    )
    assert reply.usage is not None

    after = wait_for_value(
        url, "gatez_requests_total", value(before, "gatez_requests_total", **status_200) + 1,
        **status_200,
    )  # fmt: skip
    assert value(after, "gatez_requests_total", **status_401) == (
        value(before, "gatez_requests_total", **status_401) + 1
    )
    assert value(after, "gatez_stage_verdicts_total", **refused, verdict="respond") == (
        value(before, "gatez_stage_verdicts_total", **refused, verdict="respond") + 1
    )
    routed = {"pipeline": "llm", "stage": "model_routing", "phase": "request_body"}
    assert value(after, "gatez_stage_calls_total", **routed) >= 1
    assert value(after, "gatez_stage_seconds_total", **routed) > 0
    for kind, count in (
        ("input", reply.usage.prompt_tokens),
        ("output", reply.usage.completion_tokens),
    ):
        assert value(after, "gatez_llm_tokens_total", **tokens, type=kind) == (
            value(before, "gatez_llm_tokens_total", **tokens, type=kind) + count
        )
    latency = {"pipeline": "llm", "route": "default-llm"}
    assert value(after, "gatez_request_duration_seconds_count", **latency) >= 2
    assert value(after, "gatez_policy_version") >= 1
    assert value(after, "gatez_redis_errors_total", client="hot_path") == 0
    assert ("gatez_log_queue_rows", frozenset()) in after
    written = wait_for_value(url, "gatez_log_rows_total", 1, outcome="written")
    assert value(written, "gatez_log_rows_total", outcome="written") >= 1
    assert value(written, "process_cpu_seconds_total") > 0
    if stack.config.proxy == "apisix":
        assert ("gatez_apisix_waiting_flows", frozenset()) in after


def test_control_metrics_count_calls_by_method_and_code(stack: Stack, admin: Admin) -> None:
    url = stack.config.control_metrics_url
    method = "/gatez.v1.ControlService/ListTenants"
    before = scrape(url)
    admin.control.ListTenants(control_pb2.ListTenantsRequest(), metadata=admin.metadata)
    with pytest.raises(grpc.RpcError) as refused:
        admin.control.ListTenants(control_pb2.ListTenantsRequest())
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    def counted() -> dict[str, float]:
        after = scrape(url)
        return {
            code: value(after, "gatez_grpc_server_calls_total", method=method, code=code)
            - value(before, "gatez_grpc_server_calls_total", method=method, code=code)
            for code in ("OK", "UNAUTHENTICATED")
        }

    # A call is counted when its handler is done, which may be just after the client has its
    # answer (a refused call's the interceptor ends).
    deadline = time.monotonic() + 5
    while (calls := counted()) != {"OK": 1, "UNAUTHENTICATED": 1} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert calls == {"OK": 1, "UNAUTHENTICATED": 1}
    after = scrape(url)
    assert value(after, "gatez_data_planes_connected") >= 1
    assert value(after, "gatez_policy_version") >= 1
