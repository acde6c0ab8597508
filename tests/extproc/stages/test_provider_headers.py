"""ProviderHeaders: after model routing, only the provider's allowlisted client headers go on;
the headers the gateway set for the provider, and the proxy's own, are kept."""

from __future__ import annotations

import orjson

from extproc.stages.model_route import ModelRouting
from extproc.stages.provider_headers import ProviderHeaders
from gatez.pipeline import CONTINUE, Flow, Principal
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow


def policy(*forward_headers: str) -> CompiledPolicy:
    return compile_policy(
        policy_pb2.PolicySnapshot(
            tenants=[policy_pb2.Tenant(id="acme")],
            providers=[
                policy_pb2.Provider(
                    name="openai",
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url="https://api.openai.com/v1",
                    forward_headers=forward_headers,
                )
            ],
            provider_credentials=[policy_pb2.ProviderCredential(provider="openai", api_key="sk")],
            model_routes=[
                policy_pb2.ModelRoute(id="r", alias="fast", provider="openai", upstream_model="m")
            ],
        )
    )


# What an SDK behind Envoy sends, after Envoy's own additions (x-forwarded-*, x-request-id).
CLIENT_HEADERS = {
    ":authority": "gateway.local",
    ":scheme": "http",
    "host": "gateway.local",
    "authorization": "Bearer gz-client-key",
    "content-type": "application/json",
    "content-length": "60",
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "user-agent": "OpenAI/Python 1.99.0",
    "cookie": "session=abc",
    "x-forwarded-for": "203.0.113.9, 127.0.0.1",
    "x-forwarded-proto": "http",
    "x-envoy-external-address": "127.0.0.1",
    "x-real-ip": "203.0.113.9",
    "forwarded": "for=203.0.113.9",
    "via": "1.1 corp-proxy",
    "openai-organization": "org-client",
    "x-stainless-lang": "python",
    "x-request-id": "9f1c-envoy-minted",
}


def routed(compiled: CompiledPolicy, request_id: str = CLIENT_HEADERS["x-request-id"]) -> Flow:
    body = orjson.dumps({"model": "fast", "messages": []})
    flow = make_flow(compiled, headers=CLIENT_HEADERS, body=body)
    flow.request_id = request_id
    flow.principal = Principal(tenant_id="acme", key_id="k", subject="k")
    routing = ModelRouting()
    assert routing.on_request_headers(flow) is CONTINUE
    flow.take_pending()  # the headers phase's answer
    assert routing.on_request_body(flow) is CONTINUE
    assert ProviderHeaders().on_request_body(flow) is CONTINUE
    return flow


def test_only_allowlisted_client_headers_reach_the_provider() -> None:
    pending = routed(policy()).take_pending()
    removed = set(pending.remove_headers)
    assert removed == {
        "accept-encoding", "user-agent", "cookie", "x-forwarded-for", "x-forwarded-proto",
        "x-envoy-external-address", "x-real-ip", "forwarded", "via", "openai-organization",
        "x-stainless-lang",
    }  # fmt: skip
    # The provider's key replaces the client's credential; routing and framing stay.
    assert pending.set_headers["authorization"] == "Bearer sk"
    assert "authorization" not in removed
    assert "x-request-id" not in pending.set_headers  # already the flow's own
    kept = set(CLIENT_HEADERS) - removed
    assert kept == {
        ":authority", ":scheme", "host", "authorization", "content-type", "content-length",
        "accept", "x-request-id",
    }  # fmt: skip


def test_a_policy_can_forward_more() -> None:
    removed = set(routed(policy("X-Forwarded-For", "cookie")).take_pending().remove_headers)
    assert "x-forwarded-for" not in removed
    assert "cookie" not in removed
    assert "x-real-ip" in removed


def test_nothing_is_removed_when_no_provider_was_chosen() -> None:
    flow = make_flow(policy(), method="GET", path="/v1/models", headers=CLIENT_HEADERS)
    assert ProviderHeaders().on_request_body(flow) is CONTINUE
    assert flow.take_pending().remove_headers == []


def test_the_provider_sees_the_log_rows_request_id() -> None:
    # Behind APISIX the header is the client's own; the flow's id is the runner's.
    flow = routed(policy(), request_id="runner-minted")
    assert flow.take_pending().set_headers["x-request-id"] == "runner-minted"
