"""The Envoy adapter, driven by scripted ext_proc exchanges over a real gRPC stream — the
messages Envoy sends, in Envoy's order — with the real pipeline behind it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
import redis.asyncio as aioredis
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_proc_grpc

from extproc.envoy_adapter import ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from extproc.grpcio_server import serve_grpcio
from extproc.jwks import JwksCache
from extproc.logsink import ClickHouseLogWriter, LogSink
from extproc.redis_pipe import PipelinedRedis
from extproc.server import build_dispatcher
from gatez import keys
from gatez.logrows import AiLogRow
from gatez.logstore import LogStore
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import policy_pb2
from tests.support.redis import RedisServer

API_KEY = "gz-adapter-test-key-000000000000"
PROVIDER_KEY = "sk-provider-secret"
Mode = processing_mode_pb2.ProcessingMode


def policy() -> CompiledPolicy:
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=3,
            tenants=[policy_pb2.Tenant(id="acme")],
            api_keys=[
                policy_pb2.ApiKey(id="key-1", tenant_id="acme", secret_sha256=keys.digest(API_KEY))
            ],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="http://127.0.0.1:18000/v1",
                )
            ],
            provider_credentials=[
                policy_pb2.ProviderCredential(provider="openai", api_key=PROVIDER_KEY)
            ],
            model_routes=[
                policy_pb2.ModelRoute(alias="fast", provider="openai", upstream_model="gpt-4o-mini")
            ],
            routes=[
                policy_pb2.Route(
                    id="orders",
                    path_prefix="/api/orders",
                    kind=policy_pb2.ROUTE_KIND_REST,
                    upstream_url="https://orders.internal:8443/v2",
                    strip_prefix=True,
                )
            ],
        )
    )


@pytest.fixture(scope="module")
def log_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LogStore]:
    store = LogStore(f"chdb://{tmp_path_factory.mktemp('ch')}")
    yield store
    store.close()


@dataclass
class Processor:
    stub: ext_proc_grpc.ExternalProcessorStub
    sink: LogSink
    store: LogStore
    # Rows are told apart by it: the store is shared by both servers' runs of a test.
    node_id: str


# The same exchanges through both ext_proc servers: the lean default and the grpc.aio fallback.
@pytest.fixture(params=["h2", "grpcio"])
async def processor(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: aioredis.Redis,
    log_store: LogStore,
) -> AsyncIterator[Processor]:
    http = aiohttp.ClientSession()
    redis = PipelinedRedis.from_url(redis_server.url)
    node_id = f"n1-{request.param}"
    sink = LogSink(ClickHouseLogWriter(log_store))
    compiled = policy()
    dispatcher = build_dispatcher(
        lambda: compiled, jwks=JwksCache(http), redis=redis, sink=sink, node_id=node_id
    )
    methods = ExternalProcessor(dispatcher).methods()
    socket = f"unix:{tmp_path}/ep.sock"
    server: GrpcServer | grpc.aio.Server
    if request.param == "grpcio":
        server = await serve_grpcio(methods, socket)
    else:
        server = GrpcServer(methods)
        await server.listen(socket)
    channel = grpc.aio.insecure_channel(socket)
    yield Processor(ext_proc_grpc.ExternalProcessorStub(channel), sink, log_store, node_id)
    await channel.close(None)
    await server.stop(None)
    await http.close()
    await redis.close()


def headers(*pairs: tuple[str, str], end_of_stream: bool = False) -> ext_proc.HttpHeaders:
    return ext_proc.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs]
        ),
        end_of_stream=end_of_stream,
    )


def request_headers(
    path: str, *extra: tuple[str, str], method: str = "POST"
) -> ext_proc.ProcessingRequest:
    return ext_proc.ProcessingRequest(
        request_headers=headers(
            (":method", method),
            (":path", path),
            (":authority", "gateway.local"),
            (":scheme", "http"),
            ("x-request-id", uuid.uuid4().hex),
            ("content-type", "application/json"),
            *extra,
            end_of_stream=method == "GET",
        )
    )


def handled(response: ext_proc.ProcessingResponse) -> bool:
    """The dynamic metadata that keeps Envoy's access log from logging the request again."""
    metadata = response.dynamic_metadata.fields["gatez"].struct_value
    return bool(metadata.fields["handled"].bool_value)


def set_headers(mutation: ext_proc.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}


AUTH = ("authorization", f"Bearer {API_KEY}")


async def test_non_streaming_chat_exchange(processor: Processor) -> None:
    call = processor.stub.Process()
    start = request_headers("/v1/chat/completions?trace=1", AUTH)
    await call.write(start)
    first = await call.read()
    assert first.WhichOneof("response") == "request_headers"
    assert first.mode_override.request_body_mode == Mode.BUFFERED
    assert first.mode_override.response_header_mode == Mode.SEND
    assert handled(first)
    assert "authorization" in first.request_headers.response.header_mutation.remove_headers

    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    await call.write(
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=orjson.dumps(body), end_of_stream=True)
        )
    )
    second = (await call.read()).request_body.response
    assert second.clear_route_cache
    upstream = set_headers(second.header_mutation)
    assert upstream["x-gatez-cluster"] == "gatez_upstream_plain"
    assert upstream[":authority"] == "127.0.0.1:18000"
    assert upstream[":path"] == "/v1/chat/completions?trace=1"
    assert upstream["authorization"] == f"Bearer {PROVIDER_KEY}"
    rewritten = orjson.loads(second.body_mutation.body)
    assert rewritten == {**body, "model": "gpt-4o-mini"}
    assert upstream["content-length"] == str(len(second.body_mutation.body))

    await call.write(
        ext_proc.ProcessingRequest(
            response_headers=headers((":status", "200"), ("content-type", "application/json"))
        )
    )
    third = await call.read()
    assert third.mode_override.response_body_mode == Mode.BUFFERED

    reply = {"id": "x", "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 7}}
    await call.write(
        ext_proc.ProcessingRequest(
            response_body=ext_proc.HttpBody(body=orjson.dumps(reply), end_of_stream=True)
        )
    )
    fourth = await call.read()
    assert fourth.response_body.response == ext_proc.CommonResponse()  # observed, not changed
    await call.done_writing()

    (row,) = await ai_rows(processor, start)
    assert (row.input_tokens, row.output_tokens, row.status) == (11, 7, 200)
    assert (row.model_alias, row.upstream_model, row.key_id) == ("fast", "gpt-4o-mini", "key-1")


async def test_forwarding_headers_are_removed_as_envoy_allows(processor: Processor) -> None:
    # What Envoy adds before ext_proc sees the request: the provider may see none of it.
    forwarded = (
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-proto", "http"),
        ("x-envoy-external-address", "203.0.113.9"),
    )
    call = processor.stub.Process()
    await call.write(request_headers("/v1/chat/completions", AUTH, *forwarded))
    await call.read()
    body = {"model": "fast", "messages": []}
    await call.write(
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=orjson.dumps(body), end_of_stream=True)
        )
    )
    mutation = (await call.read()).request_body.response.header_mutation
    await call.done_writing()
    assert {"x-forwarded-for", "x-envoy-external-address"} <= set(mutation.remove_headers)
    # Envoy matches no route without x-forwarded-proto: it stays until the route the marker
    # selects has been matched, which removes it (envoy/envoy.yaml).
    assert "x-forwarded-proto" not in mutation.remove_headers
    assert set_headers(mutation)["x-gatez-strip-forwarded-proto"] == "1"


async def test_sse_exchange_strips_the_usage_the_gateway_added(processor: Processor) -> None:
    call = processor.stub.Process()
    start = request_headers("/v1/chat/completions", AUTH)
    await call.write(start)
    await call.read()
    body = {"model": "fast", "messages": [], "stream": True}
    await call.write(
        ext_proc.ProcessingRequest(
            request_body=ext_proc.HttpBody(body=orjson.dumps(body), end_of_stream=True)
        )
    )
    sent = orjson.loads((await call.read()).request_body.response.body_mutation.body)
    assert sent["stream_options"] == {"include_usage": True}

    await call.write(
        ext_proc.ProcessingRequest(
            response_headers=headers((":status", "200"), ("content-type", "text/event-stream"))
        )
    )
    response = await call.read()
    assert response.mode_override.response_body_mode == Mode.STREAMED

    events = [
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}\n\n',
        b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2}}\n\n',
        b"data: [DONE]\n\n",
    ]
    stream = b"".join(events)
    # Cut mid-event, as TCP does.
    cuts = [stream[:30], stream[30:100], stream[100:]]
    received = b""
    for index, chunk in enumerate(cuts):
        await call.write(
            ext_proc.ProcessingRequest(
                response_body=ext_proc.HttpBody(body=chunk, end_of_stream=index == len(cuts) - 1)
            )
        )
        mutation = (await call.read()).response_body.response.body_mutation
        received += mutation.body
    await call.done_writing()
    assert received == (
        b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\ndata: [DONE]\n\n'
    )
    (row,) = await ai_rows(processor, start)
    assert row.streamed and (row.input_tokens, row.output_tokens) == (5, 2)


@pytest.mark.parametrize(
    ("request_", "status", "kind"),
    [
        (request_headers("/v1/chat/completions"), 401, "authentication_error"),
        (request_headers("/v1/chat/completions", ("authorization", "Bearer nope")), 401,
         "authentication_error"),
        (request_headers("/v1/chat/completions", AUTH, method="GET"), 400, "invalid_request_error"),
        (request_headers("/v1/unknown", AUTH), 404, "not_found_error"),
        (request_headers("/nowhere", AUTH), 404, "not_found_error"),
    ],
)  # fmt: skip
async def test_rejections_are_immediate_json_responses(
    processor: Processor, request_: ext_proc.ProcessingRequest, status: int, kind: str
) -> None:
    call = processor.stub.Process()
    await call.write(request_)
    response = await call.read()
    await call.done_writing()
    immediate = response.immediate_response
    assert immediate.status.code == status
    # Marked as the gateway's own: Envoy's local-reply mappers leave it alone, and its access
    # log skips the request (this row is the data plane's).
    assert immediate.details == f"gatez_{kind}"
    assert handled(response)
    assert orjson.loads(immediate.body)["error"]["type"] == kind
    assert set_headers(immediate.headers)["content-type"] == "application/json"
    await _drain(processor)
    request_id = _request_id(request_)
    # Unauthenticated and unrouted requests are logged without a tenant.
    tenant = "" if status == 401 or _path(request_) == "/nowhere" else "acme"
    (row,) = [
        r
        for r in processor.store.recent_request_logs(tenant, 100)
        if r.request_id == request_id and r.node_id == processor.node_id
    ]
    assert (row.status, row.error) == (status, kind)


async def test_models_list_is_answered_by_the_gateway(processor: Processor) -> None:
    call = processor.stub.Process()
    await call.write(request_headers("/v1/models", AUTH, method="GET"))
    response = (await call.read()).immediate_response
    await call.done_writing()
    assert response.status.code == 200
    assert [m["id"] for m in orjson.loads(response.body)["data"]] == ["fast"]


def _path(start: ext_proc.ProcessingRequest) -> str:
    for header in start.request_headers.headers.headers:
        if header.key == ":path":
            return str(header.raw_value.decode())
    raise AssertionError("no path")


async def test_a_rest_route_is_sent_to_its_upstream_on_the_headers_alone(
    processor: Processor,
) -> None:
    call = processor.stub.Process()
    await call.write(request_headers("/api/orders/17?expand=1", AUTH, method="GET"))
    response = await call.read()
    await call.done_writing()
    assert response.WhichOneof("response") == "request_headers"
    common = response.request_headers.response
    assert common.clear_route_cache
    assert set_headers(common.header_mutation) == {
        "x-gatez-cluster": "gatez_upstream_tls",
        ":authority": "orders.internal:8443",
        ":path": "/v2/17?expand=1",
    }
    # No body asked for: a REST call costs the headers round trip only (and the response
    # headers, for the log row's status).
    assert response.mode_override.request_body_mode == Mode.NONE
    assert response.mode_override.response_header_mode == Mode.SEND
    assert handled(response)
    assert "authorization" in common.header_mutation.remove_headers


def _request_id(start: ext_proc.ProcessingRequest) -> str:
    for header in start.request_headers.headers.headers:
        if header.key == "x-request-id":
            return str(header.raw_value.decode())
    raise AssertionError("no request id")


async def ai_rows(processor: Processor, start: ext_proc.ProcessingRequest) -> list[AiLogRow]:
    await _drain(processor)
    request_id = _request_id(start)
    return [
        r
        for r in processor.store.recent_ai_logs("acme", 100)
        if r.request_id == request_id and r.node_id == processor.node_id
    ]


async def _drain(processor: Processor) -> None:
    """Lets the finished flows' on_done run, then writes the sink's rows."""
    for _ in range(50):
        await asyncio.sleep(0.01)
        if processor.sink._requests:
            break
    await processor.sink.flush()
