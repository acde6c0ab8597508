"""Which pipeline a request runs: the policy's route for its path, by kind.

Both adapters open every Flow here, so route kinds are chosen by policy the same way behind
Envoy and behind APISIX. A path no route matches runs the `unrouted` pipeline (a 404, logged);
a data plane with no policy yet runs the `unavailable` one (a 503, logged).

The dispatcher names each pipeline for metrics and traces (the route kind, `unrouted`,
`unavailable`) and tells its observer of every flow it opens.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Final

from gatez.errors import NotFound, Unavailable, quoted
from gatez.pipeline.flow import Flow
from gatez.pipeline.observe import FlowObserver
from gatez.pipeline.runner import Pipeline
from gatez.pipeline.stage import Stage
from gatez.pipeline.verdicts import Verdict
from gatez.policy import EMPTY_POLICY, CompiledPolicy, RouteKind

# How much of a path an error message quotes.
PATH_QUOTE_LIMIT: Final = 128


class NoRoute(Stage):
    """Answers a request whose path no route of the policy matches: 404, never a pass-through."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        path = flow.path.partition("?")[0]
        raise NotFound(f"no route for {flow.method} {quoted(path, PATH_QUOTE_LIMIT)}")


class NoPolicy(Stage):
    """Answers every request while the data plane has no policy at all: 503."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        raise Unavailable("no policy yet")


class Dispatcher:
    """Opens a Flow per request and picks its pipeline by the route its path matches."""

    def __init__(
        self,
        policy: Callable[[], CompiledPolicy | None],
        pipelines: Mapping[RouteKind, Pipeline],
        *,
        unrouted: Pipeline,
        unavailable: Pipeline,
        observer: FlowObserver | None = None,
    ) -> None:
        self._policy = policy
        self._pipelines = dict(pipelines)
        self._unrouted = unrouted
        self._unavailable = unavailable
        self._observer = observer
        for name, pipeline in self.named_pipelines().items():
            pipeline.bind(name, observer)

    def named_pipelines(self) -> dict[str, Pipeline]:
        """Every pipeline by the name metrics and traces use: the route kind's value,
        `unrouted` and `unavailable`."""
        named = {kind.value: pipeline for kind, pipeline in self._pipelines.items()}
        named["unrouted"] = self._unrouted
        named["unavailable"] = self._unavailable
        return named

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Every stage of every pipeline, once each (stages are shared between pipelines)."""
        every = [*self._pipelines.values(), self._unrouted, self._unavailable]
        return tuple({id(s): s for p in every for s in p.stages}.values())

    async def close(self) -> None:
        """Lets every stage give back what it holds outside the process (each once)."""
        await Pipeline(self.stages).close()

    def open(
        self,
        *,
        request_id: str,
        method: str,
        path: str,
        headers: dict[str, str],
        has_body: bool,
        traceparent: str | None = None,
    ) -> tuple[Flow, Pipeline]:
        """The Flow of a request whose headers just arrived, and the pipeline it runs.
        `traceparent`: the trace context the proxy sent (W3C), continued by the flow's trace."""
        policy = self._policy()
        route = None
        if policy is None:
            policy, pipeline = EMPTY_POLICY, self._unavailable
        else:
            route = policy.routes.match(path)
            served = self._pipelines.get(route.kind) if route is not None else None
            pipeline = served if served is not None else self._unrouted
        flow = Flow(
            request_id=request_id,
            policy=policy,
            route=route,
            started_ns=time.monotonic_ns(),
            started_at=time.time(),
            method=method,
            path=path,
            request_headers=headers,
            request_has_body=has_body,
        )
        if self._observer is not None:
            self._observer.opened(flow, pipeline.name, traceparent)
        return flow, pipeline
