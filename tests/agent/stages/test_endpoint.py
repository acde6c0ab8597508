"""McpEndpoint: the server from the path, every error as JSON-RPC (401 with the login
challenge), and the protected-resource metadata documents."""

from __future__ import annotations

import orjson
import pytest

from agent.jsonrpc import (
    GATEWAY_REFUSED,
    INVALID_REQUEST,
    InvalidMessage,
    LimitExceeded,
    ParseError,
    Refused,
)
from agent.stages.endpoint import McpEndpoint, McpPath, MethodNotAllowed, parse_mcp_path
from gatez.errors import GatewayError, NotFound, PermissionDenied, Unauthenticated
from gatez.pipeline import CONTINUE, Respond
from tests.agent.stages.flows import (
    ACME_ISSUER,
    GLOBEX_ISSUER,
    build_policy,
    call,
    mcp_flow,
    rpc,
)
from tests.support.flows import make_flow

POLICY = build_policy()
METADATA = "/.well-known/oauth-protected-resource"


@pytest.mark.parametrize(
    ("path", "prefix", "expected"),
    [
        ("/mcp/acme/github", "/mcp", McpPath("acme", "github", "/mcp/acme/github")),
        ("/mcp/acme/github/", "/mcp", McpPath("acme", "github", "/mcp/acme/github")),
        ("/mcp/acme/github?x=1", "/mcp", McpPath("acme", "github", "/mcp/acme/github")),
        ("/mcp/acme/git.hub_2-x", "/mcp", McpPath("acme", "git.hub_2-x", "/mcp/acme/git.hub_2-x")),
        (
            "/agents/mcp/acme/github",
            "/agents/mcp",
            McpPath("acme", "github", "/agents/mcp/acme/github"),
        ),
        ("/mcp/acme/github", "/mcp/", McpPath("acme", "github", "/mcp/acme/github")),
        ("/mcp/acme/github/extra", "/mcp", None),
        ("/mcp/acme/github//", "/mcp", None),
        ("/mcp/acme", "/mcp", None),
        ("/mcp/acme/", "/mcp", None),
        ("/mcp", "/mcp", None),
        ("/mcp//acme/github", "/mcp", None),
        ("/mcpx/acme/github", "/mcp", None),
        ("/other/acme/github", "/mcp", None),
        ("/mcp/ACME/github", "/mcp", None),
        ("/mcp/acme_corp/github", "/mcp", None),
        ("/mcp/-acme/github", "/mcp", None),
        ("/mcp/acme/GitHub", "/mcp", None),
        ("/mcp/acme/git%68ub", "/mcp", None),
        ("/mcp/acme/..", "/mcp", None),
        ("/mcp/../github", "/mcp", None),
        ("/mcp/acme/" + "a" * 64, "/mcp", None),
    ],
)
def test_the_path_names_tenant_and_server(path: str, prefix: str, expected: McpPath | None) -> None:
    assert parse_mcp_path(path, prefix) == expected


def test_a_well_formed_path_goes_on_with_json_rpc_errors_from_then_on() -> None:
    flow = make_flow(POLICY, path="/mcp/acme/github", body=b"{}")
    assert McpEndpoint().on_request_headers(flow) is CONTINUE
    assert flow.error_format is not None


@pytest.mark.parametrize("path", ["/mcp/acme", "/mcp/acme/github/tools", "/mcp/Acme/github"])
def test_a_path_that_names_no_server_is_404_in_json_rpc(path: str) -> None:
    flow = make_flow(POLICY, path=path, body=b"{}")
    with pytest.raises(NotFound) as caught:
        McpEndpoint().on_request_headers(flow)
    assert flow.error_format is not None
    answer = flow.error_format(caught.value)
    assert answer.status == 404
    assert orjson.loads(answer.body)["error"]["code"] == GATEWAY_REFUSED
    assert "/mcp/<tenant>/<server>" in orjson.loads(answer.body)["error"]["message"]


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "HEAD"])
def test_other_methods_are_405(method: str) -> None:
    flow = make_flow(POLICY, method=method, path="/mcp/acme/github")
    with pytest.raises(MethodNotAllowed) as caught:
        McpEndpoint().on_request_headers(flow)
    assert caught.value.http_status == 405


@pytest.mark.parametrize(
    ("headers", "base"),
    [
        ({":authority": "gw.example:8443"}, "http://gw.example:8443"),
        ({"host": "gw.example"}, "http://gw.example"),
        ({":authority": "gw.example", ":scheme": "https"}, "https://gw.example"),
        ({":authority": "gw.example", "x-forwarded-proto": "https, http"}, "https://gw.example"),
        ({":authority": "gw.example", "x-forwarded-proto": "gopher"}, "http://gw.example"),
        ({}, "http://localhost"),
    ],
)
def test_a_401_carries_the_challenge_to_the_servers_metadata(
    headers: dict[str, str], base: str
) -> None:
    flow = make_flow(POLICY, path="/mcp/acme/github/", headers=headers, body=b"{}")
    McpEndpoint().on_request_headers(flow)
    assert flow.error_format is not None

    answer = flow.error_format(Unauthenticated("missing credential"))

    assert answer.status == 401
    assert (
        "www-authenticate",
        f'Bearer resource_metadata="{base}{METADATA}/mcp/acme/github"',
    ) in answer.headers
    assert ("content-type", "application/json") in answer.headers
    assert orjson.loads(answer.body) == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": GATEWAY_REFUSED, "message": "missing credential"},
    }


@pytest.mark.parametrize(
    ("body", "error", "status", "rpc_id"),
    [
        # A refused request is the call's error: HTTP 200 with the request's id.
        (call("echo", 42), Refused("no"), 200, 42),
        (call("echo", "r-1"), LimitExceeded("no"), 200, "r-1"),
        # A refused notification has no response to carry it: 403.
        (rpc("notifications/cancelled", None, requestId=1), Refused("no"), 403, None),
        # A refused response (to a server's request) likewise.
        (b'{"jsonrpc": "2.0", "id": 5, "result": {}}', Refused("no"), 403, 5),
        # Before the message is read its id is unknown.
        (None, PermissionDenied("no policy"), 403, None),
        (None, ParseError("bad"), 400, None),
    ],
)
def test_errors_are_json_rpc_with_the_id_once_known(
    body: bytes | None, error: GatewayError, status: int, rpc_id: object
) -> None:
    flow = mcp_flow(POLICY, body) if body is not None else mcp_flow(POLICY, method="GET")
    assert flow.error_format is not None
    answer = flow.error_format(error)
    assert answer.status == status
    decoded = orjson.loads(answer.body)
    assert decoded["id"] == rpc_id
    assert decoded["jsonrpc"] == "2.0"
    assert decoded["error"]["message"] == error.public_message
    assert not any(name == "www-authenticate" for name, _ in answer.headers)


def test_an_invalid_message_is_400_invalid_request() -> None:
    flow = mcp_flow(POLICY, call("echo"))
    assert flow.error_format is not None
    answer = flow.error_format(InvalidMessage("bad"))
    assert answer.status == 400
    assert orjson.loads(answer.body)["error"]["code"] == INVALID_REQUEST


def test_retry_after_is_passed_on() -> None:
    flow = mcp_flow(POLICY, call("echo"))
    assert flow.error_format is not None
    answer = flow.error_format(LimitExceeded("slow down", retry_after_s=7))
    assert ("retry-after", "7") in answer.headers


def metadata(path: str, method: str = "GET", **headers: str) -> Respond:
    flow = make_flow(
        POLICY, method=method, path=path, headers={":authority": "gw.example", **headers}
    )
    verdict = McpEndpoint().on_request_headers(flow)
    assert isinstance(verdict, Respond)
    return verdict


@pytest.mark.parametrize(
    ("server", "issuers"),
    [
        ("/mcp/acme/github", [ACME_ISSUER]),
        ("/mcp/acme/files/", [ACME_ISSUER]),
        ("/mcp/globex/github", [GLOBEX_ISSUER]),
        # A tenant without an identity provider logs in with API keys only.
        ("/mcp/initech/github", []),
    ],
)
def test_metadata_names_only_the_tenants_own_issuers(server: str, issuers: list[str]) -> None:
    answer = metadata(METADATA + server, **{"x-forwarded-proto": "https"})
    assert answer.status == 200
    assert ("content-type", "application/json") in answer.headers
    document = orjson.loads(answer.body)
    assert document["resource"] == "https://gw.example" + server.rstrip("/")
    assert document["authorization_servers"] == issuers
    assert document["bearer_methods_supported"] == ["header"]


def test_metadata_is_read_with_head_too() -> None:
    assert metadata(METADATA + "/mcp/acme/github", method="HEAD").status == 200


@pytest.mark.parametrize(
    "path",
    [
        METADATA,
        METADATA + "/",
        METADATA + "/mcp/acme/nosuch",
        METADATA + "/mcp/nosuch/github",
        METADATA + "/mcp/acme/github/extra",
        METADATA + "/v1/chat/completions",
    ],
)
def test_metadata_of_an_unknown_server_is_404(path: str) -> None:
    flow = make_flow(POLICY, method="GET", path=path)
    with pytest.raises(NotFound):
        McpEndpoint().on_request_headers(flow)


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metadata_is_only_read(method: str) -> None:
    flow = make_flow(POLICY, method=method, path=METADATA + "/mcp/acme/github")
    with pytest.raises(MethodNotAllowed):
        McpEndpoint().on_request_headers(flow)
