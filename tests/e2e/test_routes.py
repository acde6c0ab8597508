"""Route kinds chosen by policy, through both proxies: a REST route goes to its upstream after
authentication and the rate limit; a path no route knows is a logged 404 JSON."""

from __future__ import annotations

import uuid

import httpx

from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess
from tests.e2e.test_chat import wait_for_request_logs
from tests.fakes.openai_upstream import UpstreamServer


def create_rest_route(admin: Admin, upstream: UpstreamServer) -> str:
    """A REST route `/r-<id>` to the upstream's `/v1`, prefix stripped; returns the prefix."""
    prefix = f"/r-{uuid.uuid4().hex[:8]}"
    response = admin.control.CreateRoute(
        control_pb2.CreateRouteRequest(
            route=policy_pb2.Route(
                id=prefix.removeprefix("/"),
                path_prefix=prefix,
                kind=policy_pb2.ROUTE_KIND_REST,
                upstream_url=upstream.base_url,
                strip_prefix=True,
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(response.policy_version)
    return prefix


def test_a_rest_route_reaches_its_upstream_without_the_gatez_key(
    admin: Admin, tenant: TenantAccess, upstream: UpstreamServer, gateway_url: str
) -> None:
    prefix = create_rest_route(admin, upstream)
    origin = gateway_url.removesuffix("/v1")
    before = len(upstream.recorder.requests)

    response = httpx.get(
        f"{origin}{prefix}/models?limit=3",
        headers={"authorization": f"Bearer {tenant.api_key}", "x-trace": "t1"},
    )

    # The fake provider wants its own key, which a REST route does not add: its own 401 is the
    # proof the request reached it, rewritten and without the client's Gatez key.
    assert response.status_code == 401
    assert "You didn't provide an API key" in response.json()["error"]["message"]
    (reached,) = upstream.recorder.requests[before:]
    assert (reached.method, reached.path, reached.query_string) == ("GET", "/v1/models", "limit=3")
    assert reached.header("authorization") is None
    assert tenant.api_key not in str(dict(reached.headers))
    (row,) = wait_for_request_logs(admin, tenant.tenant_id, 1)
    assert (row.path, row.key_id) == (f"{prefix}/models", tenant.api_key_id)


def test_a_rest_route_authenticates_first(
    admin: Admin, upstream: UpstreamServer, gateway_url: str
) -> None:
    prefix = create_rest_route(admin, upstream)
    before = len(upstream.recorder.requests)
    response = httpx.get(f"{gateway_url.removesuffix('/v1')}{prefix}/models")
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    assert len(upstream.recorder.requests) == before


def test_an_unknown_path_is_a_404_json_and_never_reaches_an_upstream(
    admin: Admin, tenant: TenantAccess, upstream: UpstreamServer, gateway_url: str
) -> None:
    before = len(upstream.recorder.requests)
    response = httpx.get(
        f"{gateway_url.removesuffix('/v1')}/nowhere/{uuid.uuid4().hex}",
        headers={"authorization": f"Bearer {tenant.api_key}"},
    )
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["type"] == "not_found_error"
    assert len(upstream.recorder.requests) == before
