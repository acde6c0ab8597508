"""REST routes: the request goes to the route's upstream, its path rewritten as the route says."""

from __future__ import annotations

from extproc.stages.upstream import route_to
from gatez.pipeline import CONTINUE, Flow, Stage, Verdict


class RestRouting(Stage):
    """Points the proxy at a REST route's upstream: its path prefix prepended, the route's own
    prefix removed first when the route strips it; the query is kept as it came."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        route = flow.route
        # The dispatcher runs this pipeline for REST routes only, which always have one.
        assert route is not None and route.upstream is not None
        upstream = route.upstream
        path, mark, query = flow.path.partition("?")
        if route.strip_prefix and route.path_prefix != "/":
            path = path[len(route.path_prefix) :]
        path = upstream.path_prefix + path or "/"
        route_to(
            flow,
            cluster=upstream.cluster,
            authority=upstream.authority,
            path=f"{path}{mark}{query}",
        )
        return CONTINUE
