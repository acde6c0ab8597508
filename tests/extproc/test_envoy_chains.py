"""extproc.envoy_chains: the chain clusters the data plane writes for Envoy, the per-provider
headers every attempt removes, and an attempt's answer. The mechanism end to end, on the real
Envoy: tests/e2e/providers/test_failover.py and tests/e2e/test_fallback.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ext_proc

from extproc.envoy_chains import (
    ATTEMPT_STREAM_HEADER,
    NEW_CLUSTER_SETTLE_S,
    PER_PROVIDER_HEADERS,
    TARGET_ATTRIBUTE,
    EnvoyChains,
    chain_clusters,
    cluster_name,
    routed_attempt,
)
from extproc.providers import provider_request
from gatez.envoy_config import CHAIN_CLUSTER_PREFIX
from gatez.pipeline import Flow
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import policy_pb2
from tests.extproc.test_providers import key_pair

CA = "/etc/gatez/ca.pem"


def chain_policy() -> CompiledPolicy:
    """Alias `smart`: Anthropic over TLS, then a local OpenAI-compatible server, then OpenAI;
    alias `solo` without fallbacks."""
    snapshot = policy_pb2.PolicySnapshot(
        providers=[
            policy_pb2.Provider(
                name="claude",
                kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
                base_url="https://api.anthropic.com",
            ),
            policy_pb2.Provider(
                name="local",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="http://10.0.0.7:8000/v1",
            ),
            policy_pb2.Provider(
                name="openai",
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url="https://api.openai.com/v1",
            ),
        ],
        model_routes=[
            policy_pb2.ModelRoute(
                alias="smart",
                provider="claude",
                upstream_model="claude-x",
                fallbacks=[
                    policy_pb2.FallbackTarget(provider="local", upstream_model="llama"),
                    policy_pb2.FallbackTarget(provider="openai", upstream_model="gpt-x"),
                ],
            ),
            policy_pb2.ModelRoute(alias="solo", provider="openai", upstream_model="gpt-x"),
        ],
    )
    for name in ("claude", "local", "openai"):
        snapshot.provider_credentials.add(provider=name, api_key=f"key-of-{name}")
    return compile_policy(snapshot)


def test_a_chain_has_a_cluster_per_suffix_with_its_targets_at_priorities() -> None:
    clusters = chain_clusters(chain_policy(), CA)
    whole = ("claude/claude-x", "local/llama", "openai/gpt-x")
    assert set(clusters) == {whole, whole[1:]}
    cluster = clusters[whole]
    assert cluster["name"] == cluster_name(whole)
    assert cluster["name"].startswith(CHAIN_CLUSTER_PREFIX)
    endpoints = cluster["load_assignment"]["endpoints"]
    assert [
        (
            e["priority"],
            e["lb_endpoints"][0]["endpoint"]["address"]["socket_address"],
            e["lb_endpoints"][0]["metadata"]["filter_metadata"]["gatez"]["target"],
        )
        for e in endpoints
    ] == [
        (0, {"address": "api.anthropic.com", "port_value": 443}, "claude/claude-x"),
        (1, {"address": "10.0.0.7", "port_value": 8000}, "local/llama"),
        (2, {"address": "api.openai.com", "port_value": 443}, "openai/gpt-x"),
    ]
    # TLS targets: their own SNI, and their certificate checked against the CA and their name.
    sockets = {
        m["match"]["tls"]: m["transport_socket"]["typed_config"]
        for m in cluster["transport_socket_matches"]
    }
    assert set(sockets) == {"claude/claude-x", "openai/gpt-x"}
    tls = sockets["openai/gpt-x"]
    assert tls["sni"] == "api.openai.com"
    assert tls["common_tls_context"]["validation_context"] == {
        "trusted_ca": {"filename": CA},
        "match_typed_subject_alt_names": [
            {"san_type": "DNS", "matcher": {"exact": "api.openai.com"}}
        ],
    }
    plain = endpoints[1]["lb_endpoints"][0]["metadata"]["filter_metadata"]
    assert "envoy.transport_socket_match" not in plain
    options = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    ext_proc_filter, codec = options["http_filters"]
    assert codec["name"] == "envoy.filters.http.upstream_codec"
    config = ext_proc_filter["typed_config"]
    assert config["grpc_service"]["envoy_grpc"]["cluster_name"] == "gatez_extproc"
    assert config["grpc_service"]["initial_metadata"] == [
        {"key": ATTEMPT_STREAM_HEADER, "value": "1"}
    ]
    assert config["request_attributes"] == [TARGET_ATTRIBUTE]
    assert config["failure_mode_allow"] is False


def test_the_clusters_file_is_replaced_whole_and_named_clusters_are_routed(
    tmp_path: Path,
) -> None:
    chains = EnvoyChains(tmp_path / "cds", CA)
    chains.write(None)
    assert json.loads(chains.path.read_text()) == {"resources": []}
    policy = chain_policy()
    chains.write(policy)
    written = json.loads(chains.path.read_text())["resources"]
    assert len(written) == 2
    assert [p.name for p in chains.directory.iterdir()] == ["cds.json"]

    smart = policy.resolve_model("t", "smart")
    assert smart is not None
    # Envoy reads the file a moment later: a new cluster is routed to only after a while.
    early = _flow(policy)
    chains.route_chain(early, smart.chain[1:])
    assert not early.pending.set_headers
    time.sleep(NEW_CLUSTER_SETTLE_S)
    # Rewriting the file keeps the clusters it held routable.
    chains.write(policy)
    flow = _flow(policy)
    chains.route_chain(flow, smart.chain[1:])
    assert flow.pending.set_headers == {
        "x-gatez-cluster": cluster_name(("local/llama", "openai/gpt-x")),
        "x-envoy-max-retries": "1",
    }
    assert chains.flow_of(flow.request_id) is flow
    chains.forget(flow.request_id)
    assert chains.in_flight == 0
    # A chain whose cluster is not written (yet) goes to its first target alone.
    chains.write(None)
    other = _flow(policy)
    chains.route_chain(other, smart.chain)
    assert not other.pending.set_headers and chains.in_flight == 0


@pytest.mark.parametrize(
    ("kind", "credential", "fields"),
    [
        (policy_pb2.PROVIDER_KIND_OPENAI, "k", {}),
        (policy_pb2.PROVIDER_KIND_AZURE_OPENAI, "k", {"azure_api_version": "v1"}),
        (policy_pb2.PROVIDER_KIND_ANTHROPIC, "k", {}),
        (policy_pb2.PROVIDER_KIND_GEMINI, "k", {}),
        (policy_pb2.PROVIDER_KIND_OLLAMA, "k", {}),
        (policy_pb2.PROVIDER_KIND_BEDROCK, "k", {"auth": policy_pb2.PROVIDER_AUTH_API_KEY}),
        (policy_pb2.PROVIDER_KIND_BEDROCK, key_pair("session-token"), {}),
    ],
)
def test_every_header_a_provider_is_given_is_removed_before_the_next_attempt(
    kind: policy_pb2.ProviderKind, credential: str, fields: dict[str, Any]
) -> None:
    base = {
        policy_pb2.PROVIDER_KIND_BEDROCK: "https://bedrock-runtime.us-east-1.amazonaws.com",
        policy_pb2.PROVIDER_KIND_OLLAMA: "http://p.example:11434",
        policy_pb2.PROVIDER_KIND_AZURE_OPENAI: "https://p.openai.azure.com",
    }.get(kind, "https://p.example/v1")
    snapshot = policy_pb2.PolicySnapshot(
        providers=[policy_pb2.Provider(name="p", kind=kind, base_url=base, **fields)]
    )
    snapshot.provider_credentials.add(provider="p", api_key=credential)
    provider = compile_policy(snapshot).providers["p"]
    request = provider_request(provider, model="m", stream=False, body=b"{}")
    given = {name for name, _ in request.headers} - {"content-type"}
    assert given and given <= set(PER_PROVIDER_HEADERS)


def test_an_attempt_is_sent_with_its_target_headers_only_and_the_new_body() -> None:
    flow = _flow(chain_policy())
    flow.set_upstream_header("x-gatez-cluster", "gatez-chain-abc")
    flow.set_upstream_header("x-envoy-max-retries", "2")
    flow.set_upstream_header(":path", "/v1/chat/completions")
    flow.set_upstream_header(":authority", "api.openai.com")
    flow.set_upstream_header("authorization", "Bearer key-of-openai")
    flow.replace_request_body(b'{"model":"gpt-x"}')
    flow.remove_header("cookie")
    answer = ext_proc.ProcessingResponse.FromString(routed_attempt(flow))
    common = answer.request_headers.response
    assert common.status == ext_proc.CommonResponse.CONTINUE_AND_REPLACE
    assert common.body_mutation.body == b'{"model":"gpt-x"}'
    mutation = common.header_mutation
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers} == {
        ":path": b"/v1/chat/completions",
        ":authority": b"api.openai.com",
        "authorization": b"Bearer key-of-openai",
        "content-length": b"17",
    }
    assert set(mutation.remove_headers) == (set(PER_PROVIDER_HEADERS) - {"authorization"}) | {
        "cookie"
    }
    assert not flow.pending


def _flow(policy: CompiledPolicy) -> Flow:
    return Flow(
        request_id=f"req-{id(policy)}-{len(str(policy.version))}",
        policy=policy,
        route=None,
        started_ns=0,
        started_at=0.0,
        method="POST",
        path="/v1/chat/completions",
        request_headers={},
        request_has_body=True,
    )


class RecordingStream:
    """A CallStream that keeps what is sent."""

    def __init__(self) -> None:
        self.headers = {ATTEMPT_STREAM_HEADER: "1"}
        self.remote_closed = False
        self.sent: list[ext_proc.ProcessingResponse] = []
        self.finished: tuple[int, str] | None = None

    def send_message(self, message: bytes) -> None:
        self.sent.append(ext_proc.ProcessingResponse.FromString(message))

    def finish(self, code: int = 0, message: str = "") -> None:
        self.finished = (code, message)


def _attempt_headers(request_id: str, target: str) -> bytes:
    request = ext_proc.ProcessingRequest()
    headers = request.request_headers.headers.headers
    headers.add(key=":path", raw_value=b"/v1/messages")
    headers.add(key="x-api-key", raw_value=b"key-of-claude")
    headers.add(key="x-request-id", raw_value=request_id.encode())
    request.attributes["envoy.filters.http.ext_proc"].fields[TARGET_ATTRIBUTE].string_value = target
    wire: bytes = request.SerializeToString()
    return wire


def test_an_attempt_of_a_call_this_process_does_not_hold_is_refused_not_sent(
    tmp_path: Path,
) -> None:
    chains = EnvoyChains(tmp_path, CA)
    stream = RecordingStream()
    attempt = chains.open(stream)
    attempt.on_message(_attempt_headers("unknown-request", "openai/gpt-x"))
    (answer,) = stream.sent
    assert answer.WhichOneof("response") == "immediate_response"
    assert answer.immediate_response.status.code == 503
    assert b"fallback_lost" in answer.immediate_response.body
    attempt.on_message(b"\xff\xff not protobuf")
    assert stream.finished is not None and stream.finished[0] != 0
