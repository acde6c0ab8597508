"""Policies and Flows for the agent stage tests: an MCP request as the pipeline leaves it after
the endpoint, authentication, routing and the message stages."""

from __future__ import annotations

from typing import Any

import orjson

from agent.stages.endpoint import McpEndpoint
from agent.stages.routing import McpMessage, McpRouting
from gatez import keys
from gatez.pipeline import Flow, Principal
from gatez.policy import CompiledPolicy, compile_policy
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

ALLOW = policy_pb2.TOOL_ACTION_ALLOW
DENY = policy_pb2.TOOL_ACTION_DENY
APPROVAL = policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL
ACME_ISSUER = "https://login.acme.example"
GLOBEX_ISSUER = "https://login.globex.example"
ACME = Principal(tenant_id="acme", key_id="key-a1", subject="key-a1")
ACME_OTHER = Principal(tenant_id="acme", key_id="key-a2", subject="key-a2")
GLOBEX = Principal(tenant_id="globex", key_id="key-g1", subject="key-g1")
INITECH = Principal(tenant_id="initech", key_id="key-i1", subject="key-i1")


def rule(
    tool: str, action: policy_pb2.ToolAction = ALLOW, server: str = "", **fields: Any
) -> policy_pb2.ToolRule:
    return policy_pb2.ToolRule(server=server, tool=tool, action=action, **fields)


def agent(*tools: policy_pb2.ToolRule, **fields: Any) -> policy_pb2.AgentPolicy:
    """acme's policy for every caller (unless `tenant_id`, `api_key_ids` or `id` say other)."""
    fields.setdefault("id", "default")
    fields.setdefault("tenant_id", "acme")
    return policy_pb2.AgentPolicy(tools=list(tools), **fields)


def build_policy(*policies: policy_pb2.AgentPolicy) -> CompiledPolicy:
    """Tenants acme (servers github with a Bearer credential, files with a raw x-api-key one,
    plain with none), globex (github) and initech (github, no agent policy), each with an
    identity provider (initech none) and API keys."""
    servers = [
        ("acme", "github", "https://mcp.github.example/mcp", ""),
        ("acme", "files", "http://files.internal:8000/v1/mcp", "x-api-key"),
        ("acme", "plain", "http://plain.internal:9000/mcp/", ""),
        ("globex", "github", "https://mcp.globex.example/mcp", ""),
        ("initech", "github", "https://mcp.initech.example/mcp", ""),
    ]
    return compile_policy(
        policy_pb2.PolicySnapshot(
            version=1,
            tenants=[policy_pb2.Tenant(id=t) for t in ("acme", "globex", "initech")],
            api_keys=[
                policy_pb2.ApiKey(
                    id=p.key_id, tenant_id=p.tenant_id, secret_sha256=keys.digest(p.key_id)
                )
                for p in (ACME, ACME_OTHER, GLOBEX, INITECH)
            ],
            identity_providers=[
                policy_pb2.IdentityProvider(
                    id=f"idp-{tenant}",
                    tenant_id=tenant,
                    issuer=issuer,
                    jwks_url=f"{issuer}/jwks",
                    audience="gatez",
                )
                for tenant, issuer in (("acme", ACME_ISSUER), ("globex", GLOBEX_ISSUER))
            ],
            mcp_servers=[
                policy_pb2.McpServer(tenant_id=t, name=n, url=u, credential_header=h)
                for t, n, u, h in servers
            ],
            mcp_server_credentials=[
                policy_pb2.ProviderCredential(provider="mcp:acme/github", api_key="gh-secret"),
                policy_pb2.ProviderCredential(provider="mcp:acme/files", api_key="files-secret"),
                policy_pb2.ProviderCredential(provider="mcp:globex/github", api_key="gx-secret"),
            ],
            agent_policies=list(policies)
            or [agent(rule("*")), agent(rule("*"), id="globex", tenant_id="globex")],
        )
    )


def rpc(method: str, request_id: str | int | None = 1, **params: Any) -> bytes:
    """A JSON-RPC request (a notification when `request_id` is None)."""
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if request_id is not None:
        message["id"] = request_id
    if params:
        message["params"] = params
    return orjson.dumps(message)


def call(tool: str, request_id: str | int = 1, /, **arguments: Any) -> bytes:
    return rpc("tools/call", request_id, name=tool, arguments=arguments)


def request_flow(
    policy: CompiledPolicy,
    *,
    caller: Principal | None = ACME,
    method: str = "POST",
    path: str = "/mcp/acme/github",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Flow:
    """A flow after the endpoint and (with a caller) authentication: nothing routed yet."""
    sent = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    if body is None and method != "POST":
        sent = {"accept": "text/event-stream"}
    flow = make_flow(
        policy, method=method, path=path, headers={**sent, **(headers or {})}, body=body
    )
    McpEndpoint().on_request_headers(flow)
    flow.principal = caller
    return flow


def mcp_flow(
    policy: CompiledPolicy,
    body: bytes | None = None,
    *,
    caller: Principal = ACME,
    method: str = "POST",
    path: str = "/mcp/acme/github",
    headers: dict[str, str] | None = None,
) -> Flow:
    """A flow as the stages before `ToolPolicy` leave it: routed, its message read."""
    flow = request_flow(policy, caller=caller, method=method, path=path, headers=headers, body=body)
    McpRouting().on_request_headers(flow)
    flow.take_pending()
    if body is not None:
        McpMessage().on_request_body(flow)
    return flow


def respond(
    flow: Flow, status: int = 200, headers: dict[str, str] | None = None, body: bytes = b""
) -> None:
    """The upstream's response headers (and, when given, the whole body as one chunk) arrived."""
    flow.upstream_reached = True
    flow.response_status = status
    flow.response_headers = headers or {"content-type": "application/json"}
    flow.response_chunk = body
    flow.end_of_stream = True
