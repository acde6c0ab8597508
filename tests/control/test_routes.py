"""ControlService routes: which pipeline a path runs, validated by the policy compiler."""

from __future__ import annotations

import grpc

from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, rpc_error

ORDERS = policy_pb2.Route(
    id="orders",
    path_prefix="/api/orders",
    kind=policy_pb2.ROUTE_KIND_REST,
    upstream_url="https://orders.internal/v2",
    strip_prefix=True,
)


async def test_route_crud(api: Api) -> None:
    created = await api.control.CreateRoute(api_pb.CreateRouteRequest(route=ORDERS), metadata=AUTH)
    assert created.route == ORDERS and created.policy_version == 1
    generated = await api.control.CreateRoute(
        api_pb.CreateRouteRequest(
            route=policy_pb2.Route(
                path_prefix="/api/users",
                kind=policy_pb2.ROUTE_KIND_REST,
                upstream_url="http://users:8080",
            )
        ),
        metadata=AUTH,
    )
    assert generated.route.id.startswith("route-")

    listed = await api.control.ListRoutes(api_pb.ListRoutesRequest(), metadata=AUTH)
    assert [r.id for r in listed.routes] == ["orders", generated.route.id]

    await api.control.DeleteRoute(api_pb.DeleteRouteRequest(route_id="orders"), metadata=AUTH)
    listed = await api.control.ListRoutes(api_pb.ListRoutesRequest(), metadata=AUTH)
    assert [r.id for r in listed.routes] == [generated.route.id]


async def test_refused_routes_name_the_problem_and_save_nothing(api: Api) -> None:
    await api.control.CreateRoute(api_pb.CreateRouteRequest(route=ORDERS), metadata=AUTH)
    same_prefix = policy_pb2.Route()
    same_prefix.CopyFrom(ORDERS)
    same_prefix.id = "orders-2"
    a2a = policy_pb2.Route(id="agents", path_prefix="/a2a", kind=policy_pb2.ROUTE_KIND_A2A)
    no_upstream = policy_pb2.Route(id="x", path_prefix="/x", kind=policy_pb2.ROUTE_KIND_REST)
    cases = [
        (ORDERS, grpc.StatusCode.ALREADY_EXISTS, "route 'orders' already exists"),
        (same_prefix, grpc.StatusCode.ALREADY_EXISTS, "'/api/orders' is already routed"),
        (a2a, grpc.StatusCode.INVALID_ARGUMENT, "a2a routes are not served yet"),
        (no_upstream, grpc.StatusCode.INVALID_ARGUMENT, "upstream_url must be a URL"),
        (policy_pb2.Route(id="y"), grpc.StatusCode.INVALID_ARGUMENT, "path_prefix is required"),
    ]
    for route, code, message in cases:
        error = await rpc_error(
            api.control.CreateRoute(api_pb.CreateRouteRequest(route=route), metadata=AUTH)
        )
        assert error.code() == code
        assert message in (error.details() or "")
    listed = await api.control.ListRoutes(api_pb.ListRoutesRequest(), metadata=AUTH)
    assert [r.id for r in listed.routes] == ["orders"]


async def test_deleting_an_unknown_route_is_not_found(api: Api) -> None:
    error = await rpc_error(
        api.control.DeleteRoute(api_pb.DeleteRouteRequest(route_id="nope"), metadata=AUTH)
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
