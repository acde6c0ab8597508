"""AccessLog: one request-log row per exchange, one AI-log row per call the provider saw."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from extproc.logsink import Batch, LogSink
from extproc.stages.access_log import AccessLog
from gatez.logrows import PATH_LIMIT, TEXT_LIMIT, AiLogRow, RequestLogRow
from gatez.pipeline import Flow, LlmCall, Principal, TokenUsage
from gatez.policy import compile_policy
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

MS = 1_000_000
POLICY = compile_policy(
    policy_pb2.PolicySnapshot(
        version=1,
        tenants=[policy_pb2.Tenant(id="acme")],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            )
        ],
        model_routes=[
            policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
        ],
    )
)
TARGET = POLICY.resolve_model("acme", "fast")
assert TARGET is not None
PRINCIPAL = Principal(tenant_id="acme", key_id="key-1", subject="key-1")


class RecordingWriter:
    """Keeps every batch it is given, in order."""

    def __init__(self) -> None:
        self.requests: list[RequestLogRow] = []
        self.ai: list[AiLogRow] = []

    async def write(self, batch: Batch) -> None:
        requests, ai, _ = batch.rows()
        self.requests.extend(requests)
        self.ai.extend(ai)


async def log_rows(flow: Flow) -> tuple[list[RequestLogRow], list[AiLogRow]]:
    writer = RecordingWriter()
    sink = LogSink(writer)
    AccessLog(sink, "node-a").on_done(flow)
    await sink.flush()
    return writer.requests, writer.ai


def llm_flow(
    *, stream: bool, usage: TokenUsage | None, status: int = 200, reached: bool = True
) -> Flow:
    """An LLM exchange that took 250 ms, with its first byte after 100 ms."""
    flow = make_flow(POLICY, path="/v1/chat/completions?api-version=2024-06-01", body=b"{}")
    flow.principal = PRINCIPAL
    assert TARGET is not None
    flow.llm = LlmCall(target=TARGET, stream=stream, client_wants_usage=False, usage=usage)
    flow.upstream_reached = reached
    flow.response_status = status
    flow.first_byte_ns = flow.started_ns + 100 * MS if reached else None
    flow.finished_ns = flow.started_ns + 250 * MS
    return flow


@pytest.mark.parametrize("stream", [False, True])
async def test_an_llm_call_writes_a_request_row_and_an_ai_row(stream: bool) -> None:
    flow = llm_flow(stream=stream, usage=TokenUsage(input_tokens=19, output_tokens=10))
    before = dt.datetime.now(dt.UTC)
    requests, ai = await log_rows(flow)
    after = dt.datetime.now(dt.UTC)

    [request] = requests
    assert request == RequestLogRow(
        time=request.time,
        request_id=flow.request_id,
        tenant_id="acme",
        key_id="key-1",
        method="POST",
        # The query string may carry secrets; the log keeps the path only.
        path="/v1/chat/completions",
        status=200,
        latency_ms=250.0,
        error="",
        node_id="node-a",
    )
    [call] = ai
    # gpt-4o-mini at its shipped price: $0.15 per million input tokens, $0.60 per million output.
    assert call.cost_usd == pytest.approx((19 * 0.15 + 10 * 0.60) / 1e6)
    assert dataclasses.replace(call, cost_usd=0.0) == AiLogRow(
        time=request.time,
        request_id=flow.request_id,
        tenant_id="acme",
        key_id="key-1",
        provider="openai",
        model_alias="fast",
        upstream_model="gpt-4o-mini",
        input_tokens=19,
        output_tokens=10,
        status=200,
        latency_ms=250.0,
        ttft_ms=100.0,
        streamed=stream,
        node_id="node-a",
        price_known=True,
    )
    # The row's time is the wall clock captured when the flow began.
    assert request.time.tzinfo is not None
    assert request.time == dt.datetime.fromtimestamp(flow.started_at, dt.UTC)
    assert before - dt.timedelta(seconds=1) <= request.time <= after


async def test_a_call_without_reported_usage_logs_zero_tokens() -> None:
    _, [call] = await log_rows(llm_flow(stream=True, usage=None, status=502))
    assert (call.input_tokens, call.output_tokens, call.status) == (0, 0, 502)


async def test_a_call_the_provider_never_saw_has_no_ai_row() -> None:
    flow = llm_flow(stream=False, usage=None, status=429, reached=False)
    flow.error = "rate_limit_error"
    [request], ai = await log_rows(flow)
    assert ai == []
    assert (request.status, request.error, request.tenant_id) == (429, "rate_limit_error", "acme")


async def test_an_unauthenticated_request_is_logged_without_a_tenant() -> None:
    flow = make_flow(POLICY, method="GET", path="/v1/models?limit=5")
    flow.response_status = 401
    flow.error = "authentication_error"
    flow.finished_ns = flow.started_ns + 3 * MS
    [request], ai = await log_rows(flow)
    assert ai == []
    assert (request.tenant_id, request.key_id) == ("", "")
    assert (request.method, request.path, request.status) == ("GET", "/v1/models", 401)
    assert request.error == "authentication_error"
    assert request.latency_ms == 3.0


async def test_no_first_byte_logs_zero_time_to_first_token() -> None:
    flow = llm_flow(stream=True, usage=None, status=504)
    flow.first_byte_ns = None
    _, [call] = await log_rows(flow)
    assert call.ttft_ms == 0.0


async def test_an_unfinished_exchange_is_timed_until_now() -> None:
    # A client that went away mid-stream: the adapter never set finished_ns.
    flow = llm_flow(stream=True, usage=None)
    flow.started_ns -= 40 * MS
    flow.finished_ns = None
    [request], [call] = await log_rows(flow)
    assert request.latency_ms >= 40.0
    assert call.latency_ms == request.latency_ms


async def test_estimated_usage_is_marked_in_the_ai_row() -> None:
    usage = TokenUsage(input_tokens=24, output_tokens=7, estimated=True)
    _, [call] = await log_rows(llm_flow(stream=True, usage=usage))
    assert (call.input_tokens, call.output_tokens, call.usage_estimated) == (24, 7, True)
    _, [reported] = await log_rows(llm_flow(stream=True, usage=TokenUsage(19, 10)))
    assert not reported.usage_estimated


async def test_text_a_client_controls_is_clipped_to_its_bound() -> None:
    # Envoy lets a path reach 60 KiB; nothing a client sends makes a row larger than a bound.
    flow = make_flow(POLICY, method="X" * 1000, path="/v1/" + "p" * 60_000 + "?q=1")
    flow.request_id = "r" * 5000
    flow.principal = Principal(tenant_id="acme", key_id="jwt:" + "s" * 5000, subject="s")
    flow.response_status = 404
    [request], _ = await log_rows(flow)
    assert request.path == ("/v1/" + "p" * 60_000)[:PATH_LIMIT]
    assert len(request.request_id) == len(request.key_id) == len(request.method) == TEXT_LIMIT


def priced_flow(*prices: policy_pb2.ModelPrice, upstream_model: str) -> tuple[Flow, LlmCall]:
    """An LLM flow whose alias "fast" reaches `upstream_model`, under a policy with `prices`."""
    snapshot = policy_pb2.PolicySnapshot(
        version=2,
        tenants=[policy_pb2.Tenant(id="acme")],
        providers=[
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            )
        ],
        model_routes=[
            policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model=upstream_model)
        ],
        model_prices=list(prices),
    )
    policy = compile_policy(snapshot)
    target = policy.resolve_model("acme", "fast")
    assert target is not None
    flow = make_flow(policy, path="/v1/chat/completions", body=b"{}")
    flow.principal = PRINCIPAL
    flow.llm = LlmCall(target=target, stream=False, client_wants_usage=False)
    flow.upstream_reached = True
    flow.response_status = 200
    return flow, flow.llm


async def test_cached_input_is_priced_at_its_own_rate() -> None:
    flow, llm = priced_flow(upstream_model="gpt-4o-2024-08-06")
    llm.usage = TokenUsage(input_tokens=10_000, output_tokens=1_000, cached_input_tokens=8_000)
    _, [call] = await log_rows(flow)
    # gpt-4o: 2,000 uncached at $2.50/M, 8,000 cached at $1.25/M, 1,000 out at $10/M.
    assert call.cost_usd == pytest.approx((2_000 * 2.50 + 8_000 * 1.25 + 1_000 * 10.0) / 1e6)
    assert (call.cached_input_tokens, call.price_known) == (8_000, True)


async def test_a_policys_price_replaces_the_shipped_one() -> None:
    override = policy_pb2.ModelPrice(
        model="GPT-4o", input_usd_per_mtok=1.0, output_usd_per_mtok=2.0
    )
    flow, llm = priced_flow(override, upstream_model="gpt-4o")
    llm.usage = TokenUsage(input_tokens=1_000_000, output_tokens=1_000_000, cached_input_tokens=1)
    _, [call] = await log_rows(flow)
    # Cached input unset in the override: charged as input.
    assert call.cost_usd == pytest.approx(3.0)


async def test_an_unknown_model_costs_nothing_and_says_so() -> None:
    flow, llm = priced_flow(upstream_model="acme-internal-llm")
    llm.usage = TokenUsage(input_tokens=500, output_tokens=500)
    _, [call] = await log_rows(flow)
    assert (call.cost_usd, call.price_known, call.input_tokens) == (0.0, False, 500)


async def test_the_providers_name_of_the_model_prices_a_deployment_name() -> None:
    # Azure OpenAI: the route names a deployment; the response names the model behind it.
    flow, llm = priced_flow(upstream_model="prod-chat-deployment")
    llm.usage = TokenUsage(input_tokens=1_000, output_tokens=0)
    llm.response_model = "gpt-4o-mini-2024-07-18"
    _, [call] = await log_rows(flow)
    assert call.price_known
    assert call.cost_usd == pytest.approx(1_000 * 0.15 / 1e6)


async def test_a_call_without_usage_costs_nothing_but_keeps_its_price_known() -> None:
    flow, _ = priced_flow(upstream_model="gpt-4o")
    _, [call] = await log_rows(flow)
    assert (call.cost_usd, call.price_known) == (0.0, True)


# --- answers from the answer cache, PII findings ------------------------------------------


def cached_flow(*, stream: bool, hit: str) -> Flow:
    """An LLM exchange the answer cache answered after 3 ms (a Respond): the provider never saw
    it, and the adapter marked no first byte."""
    flow = llm_flow(stream=stream, usage=None, reached=False)
    assert flow.llm is not None
    flow.llm.cache_hit = hit
    flow.error = "cache_hit"
    flow.finished_ns = flow.started_ns + 3 * MS
    return flow


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("hit", ["exact", "semantic"])
async def test_an_answer_from_the_cache_writes_an_ai_row_without_tokens(
    stream: bool, hit: str
) -> None:
    flow = cached_flow(stream=stream, hit=hit)
    [request], [call] = await log_rows(flow)
    assert (request.status, request.error) == (200, "cache_hit")
    assert call == AiLogRow(
        time=request.time,
        request_id=flow.request_id,
        tenant_id="acme",
        key_id="key-1",
        # The target the request was routed to, which was not called.
        provider="openai",
        model_alias="fast",
        upstream_model="gpt-4o-mini",
        input_tokens=0,
        output_tokens=0,
        status=200,
        latency_ms=3.0,
        # The whole answer left at once.
        ttft_ms=3.0,
        streamed=stream,
        node_id="node-a",
        cost_usd=0.0,
        price_known=True,
        cache_hit=hit,
    )


async def test_a_cached_answer_costs_nothing_whatever_usage_a_stage_estimated() -> None:
    flow, llm = priced_flow(upstream_model="acme-internal-llm")
    flow.upstream_reached = False
    llm.cache_hit = "exact"
    # A stage ahead of the log counted the replayed answer: still no provider tokens.
    llm.usage = TokenUsage(input_tokens=500, output_tokens=80, estimated=True)
    _, [call] = await log_rows(flow)
    assert (call.input_tokens, call.output_tokens, call.usage_estimated) == (0, 0, False)
    # No price for the model, yet the cost of a cached answer is known: 0.
    assert (call.cost_usd, call.price_known, call.cache_hit) == (0.0, True, "exact")


@pytest.mark.parametrize("cached", [False, True])
async def test_every_ai_row_carries_the_pii_counts(cached: bool) -> None:
    if cached:
        flow = cached_flow(stream=False, hit="exact")
    else:
        flow = llm_flow(stream=True, usage=TokenUsage(input_tokens=19, output_tokens=10))
    flow.pii_counts = {"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 3, "IBAN_CODE": 0}
    _, [call] = await log_rows(flow)
    assert call.pii_entities == (("EMAIL_ADDRESS", 3), ("PHONE_NUMBER", 1))


async def test_a_call_without_findings_has_no_pii_counts() -> None:
    _, [call] = await log_rows(llm_flow(stream=False, usage=TokenUsage(19, 10)))
    assert call.pii_entities == ()


async def test_a_request_blocked_for_pii_logs_the_reason_and_none_of_the_prompt() -> None:
    secret, email = "4111 1111 1111 1111", "jane.doe@example.com"
    body = f'{{"model": "fast", "messages": [{{"role": "user", "content": "{email} {secret}"}}]}}'
    flow = make_flow(POLICY, path=f"/v1/chat/completions?user={email}", body=body.encode())
    flow.principal = PRINCIPAL
    assert TARGET is not None
    flow.llm = LlmCall(target=TARGET, stream=False, client_wants_usage=False)
    flow.pii_counts = {"CREDIT_CARD": 1, "EMAIL_ADDRESS": 1}
    flow.response_status = 400
    flow.error = "pii_blocked"
    flow.finished_ns = flow.started_ns + 2 * MS
    [request], ai = await log_rows(flow)
    # The provider never saw it and the cache did not answer it: no AI row.
    assert ai == []
    assert (request.status, request.error, request.path) == (
        400,
        "pii_blocked",
        "/v1/chat/completions",
    )
    for text in (email, secret, "jane.doe", "4111"):
        assert text not in repr(request)
