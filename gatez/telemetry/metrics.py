"""Prometheus metrics (prometheus-client): one registry per process, served on `/metrics`.

What is counted per request is counted once, when the flow is finished (requests by pipeline,
route and status; latency by pipeline and route; LLM tokens), on label children created once per
label set and cached. Per stage call the pipeline keeps plain integers itself (calls, time,
verdicts, waits per pipeline, stage and phase), and `StageCollector` reads them at scrape time:
a prometheus-client child per stage call measured ~0.7-1.3 µs (Counter.inc) and ~1.4-3.9 µs
(Histogram.observe) here, and a chat request makes about eight stage calls, so stage latency is
a sum of seconds and a count of calls (an average per stage), not a histogram. The request
latency histogram is one observation per request.

Everything that is not per request (log queue depth, log rows, policy version, Redis errors) is
read at scrape time from the objects that already count it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gatez.pipeline import Flow, Pipeline

log = logging.getLogger("gatez.telemetry")

# Seconds: from a cache hit answered inline to a long streamed completion.
LATENCY_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
)  # fmt: skip


def new_registry() -> CollectorRegistry:
    """A process's registry, with the process, platform and garbage-collector metrics."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass
class MetricsServer:
    """`/metrics` over HTTP, served from a thread of its own (prometheus-client's server)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @classmethod
    def start(cls, address: str, registry: CollectorRegistry) -> MetricsServer:
        """Serves `registry` on `host:port` (port 0: any free port, see `port`)."""
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a metrics address is host:port, not {address!r}")
        server, thread = start_http_server(int(port), host.strip("[]"), registry)
        log.info("metrics on http://%s:%d/metrics", host, server.server_port)
        return cls(server, thread)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LateMetricsServer:
    """`/metrics` on a port another process still holds: tried again every `retry_s` until it
    is free. An APISIX reload starts the new runner before the old one has stopped (it stops
    once its worker's requests are done), and both are told the same metrics address."""

    def __init__(self, address: str, registry: CollectorRegistry, retry_s: float = 1.0) -> None:
        self.server: MetricsServer | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._retry, args=(address, registry, retry_s), daemon=True
        )
        self._thread.start()

    def _retry(self, address: str, registry: CollectorRegistry, retry_s: float) -> None:
        while not self._stopped.wait(retry_s):
            try:
                self.server = MetricsServer.start(address, registry)
            except OSError:
                continue
            return

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        if self.server is not None:
            self.server.stop()


class DataPlaneMetrics:
    """The request-level metrics of a data plane, counted when each flow is finished."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests = Counter(
            "gatez_requests",
            "Requests finished, by pipeline (route kind), policy route and response status.",
            ["pipeline", "route", "status"],
            registry=registry,
        )
        self._latency = Histogram(
            "gatez_request_duration_seconds",
            "From the request's headers to the end of the exchange, as the data plane saw it.",
            ["pipeline", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._tokens = Counter(
            "gatez_llm_tokens",
            "Tokens the providers reported, by provider, upstream model and type.",
            ["provider", "model", "type"],
            registry=registry,
        )
        # Label children by label values, created on first use and kept.
        self._request_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}
        self._token_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def finished(self, flow: Flow, pipeline: str) -> None:
        route = flow.route.id if flow.route is not None else ""
        key = (pipeline, route, flow.response_status)
        requests = self._request_children.get(key)
        if requests is None:
            requests = self._requests.labels(pipeline, route, str(flow.response_status))
            self._request_children[key] = requests
        requests.inc()
        latency = self._latency_children.get(key[:2])
        if latency is None:
            latency = self._latency.labels(pipeline, route)
            self._latency_children[key[:2]] = latency
        finished_ns = flow.finished_ns or time.monotonic_ns()
        latency.observe((finished_ns - flow.started_ns) / 1e9)
        llm = flow.llm
        if llm is not None and llm.usage is not None:
            target = llm.target
            token_key = (target.provider.name, target.upstream_model)
            tokens = self._token_children.get(token_key)
            if tokens is None:
                tokens = (
                    self._tokens.labels(*token_key, "input"),
                    self._tokens.labels(*token_key, "output"),
                )
                self._token_children[token_key] = tokens
            tokens[0].inc(llm.usage.input_tokens)
            tokens[1].inc(llm.usage.output_tokens)


class StageCollector(Collector):
    """Reads the pipelines' own stage counters at scrape time."""

    def __init__(self, pipelines: Mapping[str, Pipeline]) -> None:
        self._pipelines = dict(pipelines)

    def collect(self) -> Iterator[Metric]:
        labels = ["pipeline", "stage", "phase"]
        calls = CounterMetricFamily(
            "gatez_stage_calls", "Stage calls, by pipeline, stage and phase.", labels=labels
        )
        seconds = CounterMetricFamily(
            "gatez_stage_seconds",
            "Time from each stage call to its verdict (waits included); divided by "
            "gatez_stage_calls_total, the mean per call.",
            labels=labels,
        )
        verdicts = CounterMetricFamily(
            "gatez_stage_verdicts",
            "Stage verdicts: continue, respond (the stage answered: 401, 429, ...) or error "
            "(an unexpected failure). A deferred check's refusal counts under its stage.",
            labels=[*labels, "verdict"],
        )
        waits = CounterMetricFamily(
            "gatez_stage_waits",
            "Stage calls that had to wait (answered with an awaitable or a hold).",
            labels=labels,
        )
        for name, pipeline in self._pipelines.items():
            for stats in pipeline.stage_stats():
                values = [name, stats.stage, stats.phase.name.lower()]
                calls.add_metric(values, stats.calls)
                seconds.add_metric(values, stats.seconds)
                waits.add_metric(values, stats.waited)
                verdicts.add_metric([*values, "continue"], stats.continued)
                verdicts.add_metric([*values, "respond"], stats.responded)
                verdicts.add_metric([*values, "error"], stats.failed)
        yield from (calls, seconds, verdicts, waits)


class ValueCollector(Collector):
    """Gauges and counters whose values are read from callables at scrape time."""

    def __init__(self) -> None:
        self._readers: list[Callable[[], Metric | None]] = []

    def gauge(self, name: str, documentation: str, read: Callable[[], float | None]) -> None:
        def metric() -> Metric | None:
            value = read()
            if value is None:
                return None
            family = GaugeMetricFamily(name, documentation)
            family.add_metric([], value)
            return family

        self._readers.append(metric)

    def counter(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Mapping[str, float]],
        label: str,
    ) -> None:
        """A counter with one label, read as {label value: count}."""

        def metric() -> Metric | None:
            family = CounterMetricFamily(name, documentation, labels=[label])
            for value, count in read().items():
                family.add_metric([value], count)
            return family

        self._readers.append(metric)

    def labelled_counter(
        self,
        name: str,
        documentation: str,
        read: Callable[[], Mapping[tuple[str, ...], float]],
        labels: Sequence[str],
    ) -> None:
        """A counter with several labels, read as {(label values, in `labels` order): count}."""

        def metric() -> Metric | None:
            family = CounterMetricFamily(name, documentation, labels=list(labels))
            for values, count in read().items():
                family.add_metric(list(values), count)
            return family

        self._readers.append(metric)

    def collect(self) -> Iterable[Metric]:
        for read in self._readers:
            try:
                metric = read()
            except Exception:
                log.exception("reading a metric failed")
                continue
            if metric is not None:
                yield metric
