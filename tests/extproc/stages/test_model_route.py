"""ModelRouting: OpenAI Chat Completions requests routed by model alias, `GET /v1/models`."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from extproc.stages.model_route import ModelNotFound, ModelRouting
from extproc.stages.upstream import CLUSTER_HEADER
from gatez.errors import GatewayError, InvalidRequest, NotFound, Unauthenticated
from gatez.pipeline import CONTINUE, BodyMode, Flow, Principal, Respond
from gatez.policy import (
    UPSTREAM_CLUSTER_PLAIN,
    UPSTREAM_CLUSTER_TLS,
    CompiledPolicy,
    compile_policy,
)
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

OPENAI_KEY = "sk-proj-4f9Qx2-provider-secret"
OPENAI = policy_pb2.PROVIDER_KIND_OPENAI

POLICY = compile_policy(
    policy_pb2.PolicySnapshot(
        version=7,
        tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
        providers=[
            policy_pb2.Provider(name="openai", kind=OPENAI, base_url="https://api.openai.com/v1"),
            policy_pb2.Provider(name="ollama", kind=OPENAI, base_url="http://127.0.0.1:11434/v1/"),
            policy_pb2.Provider(name="vllm", kind=OPENAI, base_url="http://[fd00::7]:8000/llm/v1"),
        ],
        provider_credentials=[policy_pb2.ProviderCredential(provider="openai", api_key=OPENAI_KEY)],
        model_routes=[
            policy_pb2.ModelRoute(
                id="r1", alias="gpt-4o-mini", provider="openai", upstream_model="gpt-4o-mini"
            ),
            policy_pb2.ModelRoute(
                id="r2", alias="fast", provider="openai", upstream_model="gpt-4o-mini"
            ),
            policy_pb2.ModelRoute(
                id="r3",
                tenant_id="acme",
                alias="fast",
                provider="ollama",
                upstream_model="llama3.2",
            ),
            policy_pb2.ModelRoute(
                id="r4",
                tenant_id="acme",
                alias="acme-private",
                provider="vllm",
                upstream_model="meta-llama/Llama-3.1-8B-Instruct",
            ),
        ],
    )
)
MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": 'Grüß dich! 👋 Say "hi".'},
]


def request(model: str = "fast", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, **extra}


def flow_for(
    body: dict[str, Any] | bytes | None,
    *,
    tenant: str = "acme",
    method: str = "POST",
    path: str = "/v1/chat/completions",
    policy: CompiledPolicy | None = POLICY,
) -> Flow:
    raw = orjson.dumps(body) if isinstance(body, dict) else body
    flow = make_flow(policy, method=method, path=path, body=raw)
    flow.principal = Principal(tenant_id=tenant, key_id="key-1", subject="key-1")
    return flow


async def route(flow: Flow) -> Flow:
    """Runs the request phases as the pipeline would; returns the flow with its pending changes."""
    stage = ModelRouting()
    assert stage.on_request_headers(flow) is CONTINUE
    assert flow.request_body_mode is BodyMode.BUFFERED
    assert stage.on_request_body(flow) is CONTINUE
    return flow


# --- request headers --------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/chat/completions?api-version=2024-06-01"]
)
async def test_chat_completions_asks_for_the_buffered_body(path: str) -> None:
    flow = flow_for(request(), path=path)
    assert ModelRouting().on_request_headers(flow) is CONTINUE
    assert flow.request_body_mode is BodyMode.BUFFERED
    assert not flow.pending


@pytest.mark.parametrize(
    ("method", "path", "has_body", "error", "status"),
    [
        ("GET", "/v1/chat/completions", False, InvalidRequest, 400),
        ("PUT", "/v1/chat/completions", True, InvalidRequest, 400),
        ("POST", "/v1/chat/completions", False, InvalidRequest, 400),
        ("POST", "/v1/models", True, NotFound, 404),
        ("POST", "/v1/completions", True, NotFound, 404),
        ("POST", "/v1/audio/speech", True, NotFound, 404),
        ("POST", "/v1/chat/completions/", True, NotFound, 404),
        ("GET", "/", False, NotFound, 404),
    ],
)
async def test_other_requests_are_refused(
    method: str, path: str, has_body: bool, error: type[GatewayError], status: int
) -> None:
    flow = flow_for(b"{}" if has_body else None, method=method, path=path)
    with pytest.raises(error) as raised:
        ModelRouting().on_request_headers(flow)
    assert raised.value.http_status == status
    assert flow.request_body_mode is BodyMode.NONE


@pytest.mark.parametrize(
    ("tenant", "aliases"),
    [("acme", ["acme-private", "fast", "gpt-4o-mini"]), ("globex", ["fast", "gpt-4o-mini"])],
)
async def test_models_list_shows_the_tenants_aliases(tenant: str, aliases: list[str]) -> None:
    flow = flow_for(None, tenant=tenant, method="GET", path="/v1/models")
    verdict = ModelRouting().on_request_headers(flow)
    assert isinstance(verdict, Respond)
    assert verdict.status == 200
    assert verdict.reason == "models_list"
    assert ("content-type", "application/json") in verdict.headers
    assert orjson.loads(verdict.body) == {
        "object": "list",
        "data": [{"id": a, "object": "model", "created": 0, "owned_by": "gatez"} for a in aliases],
    }


# --- request body: routing ----------------------------------------------------------------


async def test_alias_rewrites_the_model_and_points_the_proxy_at_the_provider() -> None:
    body = request("fast", temperature=0.2, max_completion_tokens=256, user="u-42")
    flow = await route(flow_for(body, tenant="globex"))
    pending = flow.take_pending()
    assert pending.body is not None
    assert orjson.loads(pending.body) == {**body, "model": "gpt-4o-mini"}
    assert pending.set_headers == {
        "content-length": str(len(pending.body)),
        CLUSTER_HEADER: UPSTREAM_CLUSTER_TLS,
        ":authority": "api.openai.com",
        ":path": "/v1/chat/completions",
        "authorization": f"Bearer {OPENAI_KEY}",
        "content-type": "application/json",
    }
    assert pending.clear_route_cache
    assert pending.remove_headers == []
    assert flow.request_body == pending.body
    assert flow.request_json == {**body, "model": "gpt-4o-mini"}
    assert flow.llm is not None
    assert (flow.llm.target.alias, flow.llm.target.provider.name) == ("fast", "openai")
    assert (flow.llm.stream, flow.llm.client_wants_usage, flow.llm.usage) == (False, False, None)


async def test_the_body_forwarded_is_always_the_one_parsed() -> None:
    raw = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    flow = await route(flow_for(raw))
    pending = flow.take_pending()
    assert pending.body == orjson.dumps(orjson.loads(raw))
    assert pending.set_headers["content-length"] == str(len(pending.body))
    assert pending.set_headers[":path"] == "/v1/chat/completions"
    assert flow.request_json == orjson.loads(raw)


@pytest.mark.parametrize(
    "raw",
    [
        # The first and the last `model` differ: routing reads the last (as orjson does).
        b'{"model":"acme-private","messages":[],"model":"fast"}',
        # Nested duplicates too: the provider gets one `content`, the one the gateway read.
        b'{"model":"fast","messages":[{"role":"user","content":"a","content":"b"}]}',
    ],
)
async def test_duplicate_keys_never_reach_the_provider(raw: bytes) -> None:
    flow = await route(flow_for(raw, tenant="acme"))
    pending = flow.take_pending()
    assert pending.body is not None
    forwarded = pending.body
    # Each key once, and the model the route resolved is the one the provider reads.
    assert forwarded.count(b'"model"') == 1
    assert forwarded.count(b'"content"') <= 1
    assert flow.llm is not None and flow.llm.target.alias == "fast"
    assert orjson.loads(forwarded)["model"] == "llama3.2"
    assert orjson.loads(forwarded) == flow.request_json


@pytest.mark.parametrize(
    ("tenant", "alias", "provider", "upstream_model", "cluster", "authority", "path"),
    [
        # The tenant's own route wins over the shared one with the same alias.
        ("acme", "fast", "ollama", "llama3.2", UPSTREAM_CLUSTER_PLAIN, "127.0.0.1:11434", "/v1"),
        (
            "globex",
            "fast",
            "openai",
            "gpt-4o-mini",
            UPSTREAM_CLUSTER_TLS,
            "api.openai.com",
            "/v1",
        ),
        (
            "acme",
            "acme-private",
            "vllm",
            "meta-llama/Llama-3.1-8B-Instruct",
            UPSTREAM_CLUSTER_PLAIN,
            "[fd00::7]:8000",
            "/llm/v1",
        ),
        (
            "acme",
            "gpt-4o-mini",
            "openai",
            "gpt-4o-mini",
            UPSTREAM_CLUSTER_TLS,
            "api.openai.com",
            "/v1",
        ),
    ],
)
async def test_routes_per_tenant(
    tenant: str,
    alias: str,
    provider: str,
    upstream_model: str,
    cluster: str,
    authority: str,
    path: str,
) -> None:
    flow = await route(flow_for(request(alias), tenant=tenant))
    pending = flow.take_pending()
    assert flow.llm is not None and flow.llm.target.provider.name == provider
    assert flow.request_json is not None and flow.request_json["model"] == upstream_model
    assert pending.set_headers[CLUSTER_HEADER] == cluster
    assert pending.set_headers[":authority"] == authority
    assert pending.set_headers[":path"] == path + "/chat/completions"
    # Only providers with a credential get one; the client's own was stripped before.
    assert ("authorization" in pending.set_headers) is (provider == "openai")


@pytest.mark.parametrize(
    ("path", "upstream_path"),
    [
        # An api-version is the gateway's to set (Azure providers), never the client's.
        ("/v1/chat/completions?api-version=2024-06-01&x=1", "/v1/chat/completions?x=1"),
        ("/v1/chat/completions?a=1&b=two%20words", "/v1/chat/completions?a=1&b=two%20words"),
        ("/v1/chat/completions?", "/v1/chat/completions"),
    ],
)
async def test_the_clients_query_string_is_kept_but_what_the_gateway_sets(
    path: str, upstream_path: str
) -> None:
    flow = await route(flow_for(request("gpt-4o-mini"), path=path))
    assert flow.take_pending().set_headers[":path"] == upstream_path


@pytest.mark.parametrize(
    ("extra", "stream", "client_wants_usage", "sent_options"),
    [
        ({}, False, False, None),
        ({"stream": False}, False, False, None),
        ({"stream": "true"}, False, False, None),
        ({"stream": True}, True, False, {"include_usage": True}),
        ({"stream": True, "stream_options": None}, True, False, {"include_usage": True}),
        (
            {"stream": True, "stream_options": {"include_usage": False}},
            True,
            False,
            {"include_usage": True},
        ),
        (
            {"stream": True, "stream_options": {"include_obfuscation": False}},
            True,
            False,
            {"include_obfuscation": False, "include_usage": True},
        ),
        (
            {"stream": True, "stream_options": {"include_usage": True}},
            True,
            True,
            {"include_usage": True},
        ),
        (
            {
                "stream": True,
                "stream_options": {"include_usage": True, "include_obfuscation": False},
            },
            True,
            True,
            {"include_usage": True, "include_obfuscation": False},
        ),
    ],
)
async def test_streams_ask_the_provider_for_usage(
    extra: dict[str, Any],
    stream: bool,
    client_wants_usage: bool,
    sent_options: dict[str, Any] | None,
) -> None:
    body = request("gpt-4o-mini", **extra)
    flow = await route(flow_for(body))
    pending = flow.take_pending()
    assert flow.llm is not None
    assert (flow.llm.stream, flow.llm.client_wants_usage) == (stream, client_wants_usage)
    assert pending.body is not None
    sent = orjson.loads(pending.body)
    assert sent.get("stream_options") == sent_options
    assert pending.set_headers["content-length"] == str(len(pending.body))
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {
        k: v for k, v in body.items() if k != "stream_options"
    }


# --- request body: refusals ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "not valid JSON"),
        (b'{"model": "fast", "messages": [}', "not valid JSON"),
        (b"model=fast", "not valid JSON"),
        (b'[{"model": "fast"}]', "must be a JSON object"),
        (b'"fast"', "must be a JSON object"),
        (b'{"messages": []}', "'model'"),
        (b'{"model": "", "messages": []}', "'model'"),
        (b'{"model": 4, "messages": []}', "'model'"),
        (b'{"model": null, "messages": []}', "'model'"),
        (b'{"model": "fast"}', "'messages'"),
        (b'{"model": "fast", "messages": "Hello!"}', "'messages'"),
        (b'{"model": "fast", "messages": {"role": "user"}}', "'messages'"),
    ],
)
async def test_invalid_bodies_are_refused_with_a_400_naming_the_fault(
    raw: bytes, message: str
) -> None:
    flow = flow_for(raw)
    with pytest.raises(InvalidRequest) as raised:
        ModelRouting().on_request_body(flow)
    assert raised.value.http_status == 400
    assert message in raised.value.public_message
    assert flow.llm is None
    assert not flow.pending


@pytest.mark.parametrize(
    ("tenant", "model"),
    [
        ("acme", "gpt-5-unknown"),
        # Another tenant's route is invisible.
        ("globex", "acme-private"),
        # Upstream model names are not aliases.
        ("acme", "llama3.2"),
        ("acme", "FAST"),
    ],
)
async def test_an_unknown_model_is_a_404_naming_it(tenant: str, model: str) -> None:
    flow = flow_for(request(model), tenant=tenant)
    with pytest.raises(ModelNotFound) as raised:
        ModelRouting().on_request_body(flow)
    error = raised.value
    # OpenAI's shape for an unknown model: type invalid_request_error, code model_not_found.
    assert (error.http_status, error.kind, error.code) == (
        404,
        "invalid_request_error",
        "model_not_found",
    )
    assert f"{model!r}" in error.public_message
    assert flow.llm is None
    assert not flow.pending


async def test_no_caller_is_unauthenticated() -> None:
    flow = flow_for(request())
    flow.principal = None
    with pytest.raises(Unauthenticated) as raised:
        ModelRouting().on_request_body(flow)
    assert raised.value.http_status == 401
    assert not flow.pending


async def test_an_unknown_model_is_quoted_bounded() -> None:
    flow = flow_for(request("m" * 5000 + "\r\nx-evil: 1"))
    with pytest.raises(ModelNotFound) as raised:
        ModelRouting().on_request_body(flow)
    assert len(raised.value.public_message) < 200
    assert "\r" not in raised.value.public_message
