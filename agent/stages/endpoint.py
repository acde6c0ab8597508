"""The MCP endpoint: which server a request is for, how its errors read, and how to log in.

Every MCP request's path is "{route prefix}/{tenant_id}/{server}". This stage runs first, before
authentication, so that every answer from then on is a JSON-RPC error body, and a 401 carries the
`WWW-Authenticate: Bearer resource_metadata="…"` challenge of the MCP authorization
specification (RFC 9728), pointing at this gateway's protected-resource metadata for the server.
That metadata document is served here too (route `/.well-known/oauth-protected-resource`): the
resource's URL and the authorization servers (the tenant's identity-provider issuers) a standard
MCP client logs in with. Whether the tenant and server exist is only said to its own callers
(`McpRouting`, after authentication), except through that metadata, which must be public.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import orjson

from agent.jsonrpc import error_body, rpc_code_of
from gatez.agent_policy import MCP_SERVER_NAME, PROTECTED_RESOURCE_PREFIX
from gatez.errors import GatewayError, InvalidRequest, NotFound, quoted
from gatez.pipeline import CONTINUE, Flow, Respond, Stage, Verdict
from gatez.policy import TENANT_ID_PATTERN, RouteKind

JSON: Final = "application/json"
_TENANT_AND_SERVER: Final = re.compile(r"/([^/]+)/([^/]+)/?")
ALLOWED_METHODS: Final = frozenset({"POST", "GET", "DELETE"})


class MethodNotAllowed(InvalidRequest):
    http_status = 405
    kind = "method_not_allowed"


@dataclass(frozen=True, slots=True)
class McpPath:
    """The tenant and server a request's path names, and the resource URL clients know."""

    tenant_id: str
    server: str
    # "/mcp/{tenant}/{server}" as the client called it (the route's prefix included).
    resource_path: str


def parse_mcp_path(path: str, prefix: str) -> McpPath | None:
    """`{prefix}/{tenant}/{server}` (a trailing slash allowed), or None."""
    path = path.partition("?")[0]
    if not path.startswith(prefix):
        return None
    matched = _TENANT_AND_SERVER.fullmatch(path[len(prefix.rstrip("/")) :])
    if matched is None:
        return None
    tenant, server = matched.groups()
    if not TENANT_ID_PATTERN.fullmatch(tenant) or not MCP_SERVER_NAME.fullmatch(server):
        return None
    return McpPath(tenant, server, f"{prefix.rstrip('/')}/{tenant}/{server}")


def public_base_url(flow: Flow) -> str:
    """The scheme and host the client used, as the proxy saw them."""
    headers = flow.request_headers
    scheme = headers.get("x-forwarded-proto") or headers.get(":scheme") or "http"
    scheme = "https" if scheme.split(",")[0].strip() == "https" else "http"
    host = headers.get(":authority") or headers.get("host") or "localhost"
    return f"{scheme}://{host}"


def metadata_url(flow: Flow, resource_path: str) -> str:
    """RFC 9728 section 3.1: the well-known prefix, then the resource's own path."""
    return f"{public_base_url(flow)}{PROTECTED_RESOURCE_PREFIX}{resource_path}"


class McpEndpoint(Stage):
    """Reads the server from the path, renders every error as JSON-RPC, and answers the
    protected-resource metadata documents."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        route = flow.route
        assert route is not None
        if route.path_prefix == PROTECTED_RESOURCE_PREFIX:
            return self._metadata(flow)
        target = parse_mcp_path(flow.path, route.path_prefix)
        flow.error_format = _error_format(flow, target)
        if target is None:
            raise NotFound(
                f"no MCP server at {quoted(flow.path.partition('?')[0], 128)}: "
                f"MCP servers are at {route.path_prefix}/<tenant>/<server>"
            )
        if flow.method not in ALLOWED_METHODS:
            raise MethodNotAllowed(f"MCP endpoints accept POST, GET and DELETE, not {flow.method}")
        return CONTINUE

    def _metadata(self, flow: Flow) -> Verdict:
        path = flow.path.partition("?")[0]
        resource_path = path[len(PROTECTED_RESOURCE_PREFIX) :]
        if flow.method not in ("GET", "HEAD"):
            raise MethodNotAllowed("protected-resource metadata is read with GET")
        policy = flow.policy
        for route in policy.routes:
            if route.kind is not RouteKind.MCP or route.path_prefix == PROTECTED_RESOURCE_PREFIX:
                continue
            target = parse_mcp_path(resource_path, route.path_prefix)
            if target is None:
                continue
            if (target.tenant_id, target.server) not in policy.mcp_servers:
                break
            issuers = sorted(
                {
                    rule.issuer
                    for rules in policy.identity_providers_by_issuer.values()
                    for rule in rules
                    if rule.tenant_id == target.tenant_id
                }
            )
            document = {
                "resource": f"{public_base_url(flow)}{target.resource_path}",
                "authorization_servers": issuers,
                "bearer_methods_supported": ["header"],
                "resource_name": f"{target.tenant_id}/{target.server} through Gatez",
            }
            return Respond(
                200,
                orjson.dumps(document),
                (("content-type", JSON), ("cache-control", "max-age=300")),
            )
        raise NotFound(f"no protected resource at {quoted(resource_path, 128)}")


def _error_format(flow: Flow, target: McpPath | None) -> Callable[[GatewayError], Respond]:
    """Renders the gateway's errors on an MCP route as JSON-RPC error responses (with the id
    of the request once known), a 401 with the challenge that leads a client to log in."""

    def render(error: GatewayError) -> Respond:
        mcp = flow.mcp
        rpc_id = mcp.rpc_id if mcp is not None else None
        status = error.http_status
        if status == 200 and (mcp is None or mcp.kind != "request"):
            # Only a request has a response to carry the refusal; anything else is refused
            # at the HTTP level, as the transport says for notifications.
            status = 403
        headers: tuple[tuple[str, str], ...] = (("content-type", JSON),)
        if status == 401 and target is not None:
            challenge = f'Bearer resource_metadata="{metadata_url(flow, target.resource_path)}"'
            headers += (("www-authenticate", challenge),)
        if error.retry_after_s is not None:
            headers += (("retry-after", str(error.retry_after_s)),)
        body = error_body(rpc_id, rpc_code_of(error), error.public_message)
        return Respond(status, body, headers, error.reason, None)

    return render
