"""MCP routing and the message: the caller's server, the upstream request, the JSON-RPC body.

`McpRouting` runs after authentication: the path's tenant must be the caller's own (another
tenant's server, or one that does not exist, is the same 404, so servers cannot be probed), and
the caller must have an agent policy (deny by default: none, no MCP access). The request then
goes to the server's URL with only the headers MCP needs, and with the server's own credential
(the client's was removed by authentication and is never forwarded).

`McpMessage` reads the body (POST): its size against the policy's limit, the JSON-RPC message
(`agent.jsonrpc`), the protocol revision, and for 2026-07-28 the headers against the body.
"""

from __future__ import annotations

import hashlib
from typing import Final

import orjson

from agent.jsonrpc import InvalidMessage, MessageKind, RpcError, parse_message
from agent.protocol import (
    NAMED_METHODS,
    SESSION_HEADER,
    STATELESS_VERSION,
    VERSION_HEADER,
    check_stateless_headers,
    request_version,
)
from agent.stages.endpoint import MethodNotAllowed, parse_mcp_path
from extproc.stages.upstream import route_to
from gatez.errors import NotFound, PermissionDenied, quoted
from gatez.pipeline import CONTINUE, BodyMode, Flow, McpCall, Stage, Verdict

REQUEST_ID_HEADER: Final = "x-request-id"
# The client headers an MCP server receives; every other one is removed (cookies, the proxy's
# forwarding headers, the client's own credential headers were already). x-request-id is the
# proxy's own (Envoy never keeps a client's, and it is the flow's id).
FORWARDED_HEADERS: Final = frozenset(
    {
        REQUEST_ID_HEADER,
        "accept",
        "content-type",
        "user-agent",
        SESSION_HEADER,
        VERSION_HEADER,
        "mcp-method",
        "mcp-name",
        "last-event-id",
        "traceparent",
        "tracestate",
    }
)
# Forwarded by prefix: tool parameters a tool mirrors into headers (2026-07-28).
FORWARDED_PREFIX: Final = "mcp-param-"
PROXY_HEADERS: Final = frozenset({"host", "content-length", "transfer-encoding"})
ARGUMENTS_JSON_LIMIT: Final = 16 * 1024


class PayloadTooLarge(RpcError):
    http_status = 413
    rpc_code = -32600
    kind = "payload_too_large"


def digest(value: str | bytes) -> str:
    """The first 32 hex digits of a SHA-256: what logs and keys hold instead of a secret."""
    data = value.encode() if isinstance(value, str) else value
    return hashlib.sha256(data).hexdigest()[:32]


class McpRouting(Stage):
    """Points the request at the caller's MCP server (see the module doc)."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        route = flow.route
        assert route is not None
        target = parse_mcp_path(flow.path, route.path_prefix)
        assert target is not None  # McpEndpoint refused any other path
        caller = flow.caller
        server = flow.policy.mcp_servers.get((target.tenant_id, target.server))
        if target.tenant_id != caller.tenant_id or server is None:
            raise NotFound(f"no MCP server {quoted(target.server)} for this tenant")
        rules = flow.policy.agent_policies_of(caller.tenant_id).for_caller(
            caller.key_id, caller.groups
        )
        if rules is None:
            raise PermissionDenied("no agent policy gives this caller access to MCP servers")
        headers = flow.request_headers
        version = request_version(headers)
        mcp = McpCall(server, protocol_version=version, rules=rules, method=flow.method)
        mcp.stateless = version == STATELESS_VERSION
        flow.mcp = mcp
        if mcp.stateless:
            if flow.method != "POST":
                # No GET stream and no sessions to end in 2026-07-28.
                raise MethodNotAllowed(f"{STATELESS_VERSION} has no {flow.method} on MCP")
        else:
            session = headers.get(SESSION_HEADER, "")
            mcp.session_id = session
            mcp.session_digest = digest(session) if session else ""
        route_to(flow, cluster=server.cluster, authority=server.authority, path=server.path)
        if server.credential_value is not None:
            flow.set_upstream_header(server.credential_header, server.credential_value)
        if headers.get(REQUEST_ID_HEADER) != flow.request_id:
            flow.set_upstream_header(REQUEST_ID_HEADER, flow.request_id)
        ours = flow.pending.set_headers
        for name in headers:
            if (
                name not in FORWARDED_HEADERS
                and name not in ours
                and name not in PROXY_HEADERS
                and not name.startswith((":", FORWARDED_PREFIX))
            ):
                flow.remove_header(name)
        if mcp.stateless and SESSION_HEADER in headers:
            # 2026-07-28: an Mcp-Session-Id is ignored, and so not passed on.
            flow.remove_header(SESSION_HEADER)
        if flow.method == "POST":
            if not flow.request_has_body:
                raise InvalidMessage("a POST carries one JSON-RPC message")
            flow.request_body_mode = BodyMode.BUFFERED
        return CONTINUE


class McpMessage(Stage):
    """Reads and checks the JSON-RPC message of a POST (see the module doc)."""

    def on_request_body(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        if mcp is None:
            return CONTINUE
        assert mcp.rules is not None
        body = flow.request_body
        if len(body) > mcp.rules.limits.max_argument_bytes:
            raise PayloadTooLarge(
                f"the message is {len(body)} bytes; this policy allows "
                f"{mcp.rules.limits.max_argument_bytes}"
            )
        message = parse_message(body)
        mcp.kind = message.kind.value
        mcp.rpc_id = message.id
        flow.request_json = message.raw
        if message.kind is MessageKind.RESPONSE:
            mcp.method = "response"
            return CONTINUE
        mcp.method = message.method
        if mcp.stateless:
            check_stateless_headers(flow.request_headers, message)
        elif message.method == "initialize":
            requested = message.params.get("protocolVersion")
            if isinstance(requested, str):
                mcp.protocol_version = requested[:32]
        param = NAMED_METHODS.get(message.method)
        if param is not None:
            name = message.params.get(param)
            if not isinstance(name, str) or not name:
                raise InvalidMessage(f"{message.method} needs params.{param}, a string")
            mcp.name = name
            if message.method == "tools/call":
                arguments = message.params.get("arguments")
                if arguments is not None and not isinstance(arguments, dict):
                    raise InvalidMessage("tools/call params.arguments must be an object")
                encoded = orjson.dumps(arguments or {}, option=orjson.OPT_SORT_KEYS)
                mcp.arguments_digest = hashlib.sha256(encoded).hexdigest()
                if mcp.rules.audit_raw_arguments:
                    mcp.arguments_json = encoded[:ARGUMENTS_JSON_LIMIT].decode("utf-8", "replace")
        return CONTINUE
