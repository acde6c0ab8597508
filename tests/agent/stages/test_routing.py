"""McpRouting and McpMessage: the caller's own server, its agent policy, the upstream request
(only the headers MCP needs, the server's credential, never the client's), and the JSON-RPC
message read once with its protocol revision checked."""

from __future__ import annotations

import hashlib

import orjson
import pytest

from agent.jsonrpc import HeaderMismatch, InvalidMessage, ParseError, UnsupportedVersion
from agent.stages.endpoint import MethodNotAllowed
from agent.stages.routing import McpMessage, McpRouting, PayloadTooLarge
from extproc.stages.upstream import CLUSTER_HEADER
from gatez.errors import NotFound, PermissionDenied
from gatez.pipeline import CONTINUE, BodyMode, Flow, Principal
from gatez.policy import CompiledPolicy
from gatez.v1 import policy_pb2
from tests.agent.stages.flows import (
    ACME,
    GLOBEX,
    INITECH,
    agent,
    build_policy,
    call,
    request_flow,
    rpc,
    rule,
)

POLICY = build_policy()
STATELESS = "2026-07-28"


def routed(
    path: str = "/mcp/acme/github",
    *,
    caller: Principal = ACME,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    body: bytes | None = b"{}",
) -> Flow:
    flow = request_flow(
        POLICY,
        caller=caller,
        method=method,
        path=path,
        headers=headers,
        body=body if method == "POST" else None,
    )
    assert McpRouting().on_request_headers(flow) is CONTINUE
    return flow


@pytest.mark.parametrize(
    ("caller", "path"),
    [
        (ACME, "/mcp/globex/github"),
        (GLOBEX, "/mcp/acme/github"),
        (ACME, "/mcp/acme/nosuch"),
        (ACME, "/mcp/nosuch/github"),
    ],
)
def test_another_tenants_server_is_the_same_404_as_none(caller: Principal, path: str) -> None:
    flow = request_flow(POLICY, caller=caller, path=path, body=b"{}")
    with pytest.raises(NotFound) as caught:
        McpRouting().on_request_headers(flow)
    server = path.rsplit("/", 1)[1]
    assert caught.value.public_message == f"no MCP server '{server}' for this tenant"


def test_a_caller_without_an_agent_policy_is_403() -> None:
    flow = request_flow(POLICY, caller=INITECH, path="/mcp/initech/github", body=b"{}")
    with pytest.raises(PermissionDenied):
        McpRouting().on_request_headers(flow)


def test_a_policy_for_other_keys_gives_this_one_nothing() -> None:
    policy = build_policy(agent(api_key_ids=["key-a2"]))
    flow = request_flow(policy, body=b"{}")
    with pytest.raises(PermissionDenied):
        McpRouting().on_request_headers(flow)


def test_the_request_goes_to_the_servers_url_with_the_body_asked_for() -> None:
    flow = routed()
    pending = flow.pending.set_headers
    assert pending[CLUSTER_HEADER] == "gatez_upstream_tls"
    assert pending[":authority"] == "mcp.github.example"
    assert pending[":path"] == "/mcp"
    assert flow.pending.clear_route_cache
    assert flow.request_body_mode is BodyMode.BUFFERED
    assert flow.mcp is not None
    assert flow.mcp.server.name == "github"
    assert flow.mcp.protocol_version == "2025-03-26"


def test_a_server_mounted_with_a_trailing_slash_keeps_it() -> None:
    flow = routed("/mcp/acme/plain")
    assert flow.pending.set_headers[":path"] == "/mcp/"
    assert flow.pending.set_headers[":authority"] == "plain.internal:9000"


CLIENT_HEADERS = {
    "accept": "application/json, text/event-stream",
    "content-type": "application/json",
    "user-agent": "mcp-client/1.0",
    "mcp-session-id": "s-1",
    "mcp-protocol-version": "2025-06-18",
    "mcp-method": "tools/call",
    "mcp-name": "echo",
    "mcp-param-region": "us-west1",
    "last-event-id": "7",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "a=b",
    "authorization": "Bearer gz-client-key",
    "x-api-key": "gz-client-key",
    "cookie": "session=abc",
    "x-forwarded-for": "10.0.0.1",
    "x-forwarded-proto": "https",
    "x-forwarded-host": "evil.example",
    "x-real-ip": "10.0.0.1",
    "x-custom": "1",
    "forwarded": "for=10.0.0.1",
    "host": "gw.example",
    "content-length": "2",
    ":authority": "gw.example",
}
KEPT = {
    "accept",
    "content-type",
    "user-agent",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-param-region",
    "last-event-id",
    "traceparent",
    "tracestate",
    "host",
    "content-length",
    ":authority",
}


@pytest.mark.parametrize(
    ("server", "credential"),
    [
        ("github", ("authorization", "Bearer gh-secret")),
        ("files", ("x-api-key", "files-secret")),
        ("plain", None),
    ],
)
def test_only_mcp_headers_go_on_with_the_servers_credential(
    server: str, credential: tuple[str, str] | None
) -> None:
    flow = routed(f"/mcp/acme/{server}", headers=CLIENT_HEADERS)
    pending = flow.pending
    forwarded = {name for name in CLIENT_HEADERS if name not in pending.remove_headers} - set(
        pending.set_headers
    )
    assert forwarded == KEPT - {":authority"} - ({credential[0]} if credential else set())
    if credential is not None:
        name, value = credential
        assert pending.set_headers[name] == value
    # The client's credential reaches the server under no name.
    sent = {**{n: CLIENT_HEADERS[n] for n in forwarded}, **pending.set_headers}
    assert "gz-client-key" not in orjson.dumps(sent).decode()
    assert not {"cookie", "x-forwarded-for", "x-forwarded-host", "forwarded"} & set(sent)


def test_the_request_id_reaches_the_server() -> None:
    # Behind Envoy the flow's id is the proxy's x-request-id: it must not be removed.
    flow = request_flow(POLICY, body=b"{}")
    flow.request_headers["x-request-id"] = flow.request_id
    McpRouting().on_request_headers(flow)
    assert "x-request-id" not in flow.pending.remove_headers

    # A client's own id (behind APISIX) is replaced by the gateway's.
    flow = routed(headers={"x-request-id": "client-chosen"})
    assert flow.pending.set_headers["x-request-id"] == flow.request_id


def test_sessions_are_recorded_by_digest() -> None:
    flow = routed(headers={"mcp-session-id": "abc"})
    assert flow.mcp is not None
    assert flow.mcp.session_id == "abc"
    assert flow.mcp.session_digest == hashlib.sha256(b"abc").hexdigest()[:32]
    assert not flow.mcp.stateless


def test_the_stateless_revision_drops_a_session_id() -> None:
    flow = routed(headers={"mcp-protocol-version": STATELESS, "mcp-session-id": "abc"})
    assert flow.mcp is not None
    assert flow.mcp.stateless
    assert flow.mcp.session_id == flow.mcp.session_digest == ""
    assert "mcp-session-id" in flow.pending.remove_headers


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_the_stateless_revision_has_no_get_or_delete(method: str) -> None:
    flow = request_flow(POLICY, method=method, headers={"mcp-protocol-version": STATELESS})
    with pytest.raises(MethodNotAllowed) as caught:
        McpRouting().on_request_headers(flow)
    assert caught.value.http_status == 405


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_session_revisions_have_get_and_delete_without_a_body(method: str) -> None:
    flow = routed(method=method, headers={"mcp-session-id": "abc"})
    assert flow.request_body_mode is BodyMode.NONE
    assert flow.mcp is not None
    assert flow.mcp.method == method


def test_an_unsupported_version_is_refused() -> None:
    flow = request_flow(POLICY, headers={"mcp-protocol-version": "1999-01-01"}, body=b"{}")
    with pytest.raises(UnsupportedVersion):
        McpRouting().on_request_headers(flow)


def test_a_post_without_a_body_is_refused() -> None:
    flow = request_flow(POLICY)
    flow.request_has_body = False
    with pytest.raises(InvalidMessage):
        McpRouting().on_request_headers(flow)


# McpMessage


def read(
    body: bytes, policy: CompiledPolicy = POLICY, *, headers: dict[str, str] | None = None
) -> Flow:
    flow = request_flow(policy, headers=headers, body=body)
    McpRouting().on_request_headers(flow)
    assert McpMessage().on_request_body(flow) is CONTINUE
    return flow


def test_a_tool_call_is_read_once_with_its_digest() -> None:
    flow = read(call("echo", 9, text="hi", n=1))
    mcp = flow.mcp
    assert mcp is not None
    assert (mcp.kind, mcp.method, mcp.rpc_id, mcp.name) == ("request", "tools/call", 9, "echo")
    assert flow.request_json is not None
    assert flow.request_json["params"]["arguments"] == {"text": "hi", "n": 1}
    assert mcp.arguments_digest == hashlib.sha256(b'{"n":1,"text":"hi"}').hexdigest()
    # Raw arguments only when the policy says so.
    assert mcp.arguments_json == ""


def test_raw_arguments_are_kept_when_the_policy_says_so() -> None:
    policy = build_policy(agent(rule("*"), audit_raw_arguments=True))
    flow = read(call("echo", text="hi"), policy)
    assert flow.mcp is not None
    assert flow.mcp.arguments_json == '{"text":"hi"}'


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"not json", ParseError),
        (b"[]", InvalidMessage),
        (rpc("tools/call"), InvalidMessage),
        (rpc("tools/call", name=""), InvalidMessage),
        (rpc("tools/call", name=7), InvalidMessage),
        (rpc("tools/call", name="echo", arguments=[1]), InvalidMessage),
        (rpc("tools/call", name="echo", arguments="x"), InvalidMessage),
        (rpc("prompts/get"), InvalidMessage),
        (rpc("resources/read", name="x"), InvalidMessage),
    ],
)
def test_a_message_that_cannot_be_judged_is_refused(body: bytes, error: type[Exception]) -> None:
    flow = request_flow(POLICY, body=body)
    McpRouting().on_request_headers(flow)
    with pytest.raises(error):
        McpMessage().on_request_body(flow)


def test_a_message_over_the_argument_limit_is_413() -> None:
    policy = build_policy(
        agent(
            rule("*"),
            limits=policy_pb2.AgentLimits(max_argument_bytes=200),
        )
    )
    read(call("echo", text="x" * 40), policy)
    flow = request_flow(policy, body=call("echo", text="x" * 200))
    McpRouting().on_request_headers(flow)
    with pytest.raises(PayloadTooLarge) as caught:
        McpMessage().on_request_body(flow)
    assert caught.value.http_status == 413


def test_initialize_records_the_version_the_client_asks_for() -> None:
    flow = read(rpc("initialize", protocolVersion="2025-06-18", capabilities={}))
    assert flow.mcp is not None
    assert flow.mcp.protocol_version == "2025-06-18"


def test_a_notification_and_a_response_are_read_as_such() -> None:
    flow = read(rpc("notifications/initialized", None))
    assert flow.mcp is not None
    assert (flow.mcp.kind, flow.mcp.method, flow.mcp.rpc_id) == (
        "notification",
        "notifications/initialized",
        None,
    )
    flow = read(b'{"jsonrpc": "2.0", "id": "srv-1", "result": {}}')
    assert flow.mcp is not None
    assert (flow.mcp.kind, flow.mcp.method, flow.mcp.rpc_id) == ("response", "response", "srv-1")


def stateless_call(name: str, header_name: str) -> tuple[bytes, dict[str, str]]:
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": name,
                "arguments": {},
                "_meta": {"io.modelcontextprotocol/protocolVersion": STATELESS},
            },
        }
    )
    headers = {
        "mcp-protocol-version": STATELESS,
        "mcp-method": "tools/call",
        "mcp-name": header_name,
    }
    return body, headers


def test_stateless_headers_are_checked_against_the_body() -> None:
    body, headers = stateless_call("echo", "echo")
    flow = read(body, headers=headers)
    assert flow.mcp is not None
    assert flow.mcp.name == "echo"

    body, headers = stateless_call("delete_repo", "echo")
    flow = request_flow(POLICY, headers=headers, body=body)
    McpRouting().on_request_headers(flow)
    with pytest.raises(HeaderMismatch):
        McpMessage().on_request_body(flow)
    # The id is known by then: the 400 answers the request.
    assert flow.mcp is not None
    assert flow.mcp.rpc_id == 1
