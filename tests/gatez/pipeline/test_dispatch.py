"""The dispatcher: the policy's route for a path picks the pipeline, on both adapters alike."""

from __future__ import annotations

import orjson
import pytest

from gatez.pipeline import Dispatcher, Flow, NoPolicy, NoRoute, Pipeline, Respond, Stage
from gatez.policy import EMPTY_POLICY, CompiledPolicy, RouteKind, compile_policy
from gatez.v1 import policy_pb2


class Marker(Stage):
    """Stands for a pipeline's stages; the tests only look at which pipeline was chosen."""


def policy(*routes: policy_pb2.Route) -> CompiledPolicy:
    return compile_policy(policy_pb2.PolicySnapshot(version=2, routes=routes))


REST = policy_pb2.Route(
    id="orders",
    path_prefix="/api/orders",
    kind=policy_pb2.ROUTE_KIND_REST,
    upstream_url="http://orders.internal:8080/v2",
)


@pytest.fixture
def pipelines() -> dict[str, Pipeline]:
    return {
        "llm": Pipeline([Marker()]),
        "rest": Pipeline([Marker()]),
        "unrouted": Pipeline([NoRoute()]),
        "unavailable": Pipeline([NoPolicy()]),
    }


def dispatcher(current: CompiledPolicy | None, pipelines: dict[str, Pipeline]) -> Dispatcher:
    return Dispatcher(
        lambda: current,
        {RouteKind.LLM: pipelines["llm"], RouteKind.REST: pipelines["rest"]},
        unrouted=pipelines["unrouted"],
        unavailable=pipelines["unavailable"],
    )


def open_flow(chosen: Dispatcher, path: str) -> tuple[Flow, Pipeline]:
    return chosen.open(request_id="r1", method="GET", path=path, headers={}, has_body=False)


@pytest.mark.parametrize(
    ("path", "expected", "route_id"),
    [
        ("/v1/chat/completions", "llm", "default-llm"),
        ("/v1", "llm", "default-llm"),
        ("/api/orders", "rest", "orders"),
        ("/api/orders/17?expand=lines", "rest", "orders"),
        ("/api/ordersx", "unrouted", None),
        ("/api", "unrouted", None),
        ("/v10/chat/completions", "unrouted", None),
        ("/", "unrouted", None),
    ],
)
def test_the_longest_matching_prefix_picks_the_pipeline(
    pipelines: dict[str, Pipeline], path: str, expected: str, route_id: str | None
) -> None:
    flow, chosen = open_flow(dispatcher(policy(REST), pipelines), path)
    assert chosen is pipelines[expected]
    assert (flow.route.id if flow.route else None) == route_id
    assert flow.path == path


def test_a_route_for_v1_replaces_the_built_in_llm_route(pipelines: dict[str, Pipeline]) -> None:
    rest_v1 = policy_pb2.Route(
        id="legacy",
        path_prefix="/v1",
        kind=policy_pb2.ROUTE_KIND_REST,
        upstream_url="https://legacy.example",
    )
    _, chosen = open_flow(dispatcher(policy(rest_v1), pipelines), "/v1/chat/completions")
    assert chosen is pipelines["rest"]


def test_a_catch_all_route_takes_every_other_path(pipelines: dict[str, Pipeline]) -> None:
    everything = policy_pb2.Route(
        id="all", path_prefix="/", kind=policy_pb2.ROUTE_KIND_REST, upstream_url="http://b"
    )
    chosen = dispatcher(policy(everything), pipelines)
    assert open_flow(chosen, "/anything/else")[1] is pipelines["rest"]
    assert open_flow(chosen, "/v1/models")[1] is pipelines["llm"]


def test_without_a_policy_every_request_runs_the_unavailable_pipeline(
    pipelines: dict[str, Pipeline],
) -> None:
    flow, chosen = open_flow(dispatcher(None, pipelines), "/v1/chat/completions")
    assert chosen is pipelines["unavailable"]
    assert flow.policy is EMPTY_POLICY and flow.route is None


async def test_an_unrouted_path_is_a_404_quoting_a_bounded_path(
    pipelines: dict[str, Pipeline],
) -> None:
    path = "/nope/" + "x" * 10_000 + "?secret=1"
    flow, chosen = open_flow(dispatcher(policy(), pipelines), path)
    verdict = await chosen.request_headers(flow)
    assert isinstance(verdict, Respond) and verdict.status == 404
    message = orjson.loads(verdict.body)["error"]["message"]
    assert message.startswith("no route for GET '/nope/xxx")
    assert len(message) < 200 and "secret" not in message
    assert flow.error == "not_found_error"


async def test_no_policy_is_a_503(pipelines: dict[str, Pipeline]) -> None:
    flow, chosen = open_flow(dispatcher(None, pipelines), "/v1/models")
    verdict = await chosen.request_headers(flow)
    assert isinstance(verdict, Respond) and verdict.status == 503


def test_stages_shared_by_pipelines_are_listed_once() -> None:
    shared, other = Marker(), Marker()
    chosen = Dispatcher(
        lambda: None,
        {RouteKind.LLM: Pipeline([shared, other]), RouteKind.REST: Pipeline([shared])},
        unrouted=Pipeline([shared]),
        unavailable=Pipeline([other]),
    )
    assert chosen.stages == (shared, other)
