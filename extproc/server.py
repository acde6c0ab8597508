"""Wiring for a data-plane process, in one place: every client built once, the pipelines of each
route kind with their stages in a fixed order, the policy watched from the control service — and
the Envoy adapter served over gRPC (the APISIX runner, `extproc.apisix.server`, starts from the
same `start_core`)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import grpc

from extproc.envoy_adapter import ExternalProcessor
from extproc.grpc_h2 import GrpcServer
from extproc.grpcio_server import GRPC_OPTIONS, serve_grpcio
from extproc.jwks import JwksCache
from extproc.logsink import ClickHouseLogWriter, ControlLogWriter, LogSink, LogWriter
from extproc.policy_source import PolicyHolder, PolicyWatcher
from extproc.redis_pipe import PipelinedRedis
from extproc.stages.access_log import AccessLog
from extproc.stages.authenticate import Authenticate
from extproc.stages.model_route import ModelRouting
from extproc.stages.rate_limit import RateLimit
from extproc.stages.rest_route import RestRouting
from extproc.stages.usage import UsageMeter
from gatez.logstore import LogStore
from gatez.pipeline import Dispatcher, FlowObserver, NoPolicy, NoRoute, Pipeline
from gatez.policy import CompiledPolicy, RouteKind
from gatez.settings import Settings
from gatez.telemetry import (
    DataPlaneMetrics,
    DataPlaneTelemetry,
    FlowTracing,
    MetricsServer,
    StageCollector,
    Tracing,
    ValueCollector,
    new_registry,
)

log = logging.getLogger("gatez.dataplane")

# Allocations before a young-generation collection (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def build_dispatcher(
    policy: Callable[[], CompiledPolicy | None],
    *,
    jwks: JwksCache,
    redis: PipelinedRedis,
    sink: LogSink,
    node_id: str,
    observer: FlowObserver | None = None,
) -> Dispatcher:
    """Every pipeline a data plane runs, one per route kind, with the stages in policy order;
    each position has a reason. Stage instances are shared between pipelines (a tenant has one
    rate-limit lease, whatever route it calls)."""
    # Nothing runs for a caller we do not know; the tenant found here scopes all after.
    authenticate = Authenticate(jwks)
    # Before any body is buffered: a limited tenant costs one Redis round trip, no more.
    rate_limit = RateLimit(redis)
    # Last, so the rows see everything the stages before recorded.
    access_log = AccessLog(sink, node_id)
    llm = Pipeline(
        [
            authenticate,
            rate_limit,
            # Needs the tenant (routes are per tenant); asks for the body on LLM paths only.
            ModelRouting(),
            # Response side: switches SSE to streamed mode and reads the provider's usage.
            UsageMeter(),
            access_log,
        ]
    )
    rest = Pipeline([authenticate, rate_limit, RestRouting(), access_log])
    return Dispatcher(
        policy,
        {RouteKind.LLM: llm, RouteKind.REST: rest},
        unrouted=Pipeline([NoRoute(), access_log]),
        unavailable=Pipeline([NoPolicy(), access_log]),
        observer=observer,
    )


@dataclass
class DataPlane:
    """A running data plane; `stop()` releases everything `start()` built."""

    settings: Settings
    server: GrpcServer | grpc.aio.Server
    holder: PolicyHolder
    watcher: PolicyWatcher
    sink: LogSink
    tasks: list[asyncio.Task[None]]
    closers: list[Any]

    async def stop(self) -> None:
        await self.server.stop(2)
        await _release(self.tasks, self.sink, self.closers)


@dataclass
class DataPlaneCore:
    """Everything a data plane runs except its proxy transport: clients, policy, pipelines.

    Both transports (Envoy's gRPC server here, the APISIX runner in `extproc.apisix.server`)
    start from it, so the wiring exists once."""

    settings: Settings
    holder: PolicyHolder
    watcher: PolicyWatcher
    sink: LogSink
    dispatcher: Dispatcher
    tasks: list[asyncio.Task[None]]
    closers: list[Any]
    telemetry: DataPlaneTelemetry
    # Serving /metrics when settings.metrics_address asks for it.
    metrics: MetricsServer | None = None

    async def close(self) -> None:
        await _release(self.tasks, self.sink, self.closers)


async def _release(tasks: list[asyncio.Task[None]], sink: LogSink, closers: list[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await sink.close()
    for close in reversed(closers):
        with contextlib.suppress(Exception):
            result = close()
            if asyncio.iscoroutine(result):
                await result


async def start(settings: Settings) -> DataPlane:
    """Builds the clients, loads the persisted policy, starts serving and watching."""
    core = await start_core(settings)
    methods = ExternalProcessor(core.dispatcher).methods()
    server: GrpcServer | grpc.aio.Server
    if settings.extproc_server == "grpcio":
        server = await serve_grpcio(methods, settings.extproc_address)
    else:
        server = GrpcServer(methods)
        await server.listen(settings.extproc_address)
    log.info(
        "data plane %s serving ext_proc on %s (%s)",
        settings.node_id,
        settings.extproc_address,
        settings.extproc_server,
    )
    return DataPlane(
        settings, server, core.holder, core.watcher, core.sink, core.tasks, core.closers
    )


async def start_core(settings: Settings, service_name: str = "gatez-dataplane") -> DataPlaneCore:
    """Builds the clients and the pipeline, loads the persisted policy and starts watching.
    `service_name` names the process in traces (OTEL_SERVICE_NAME overrides it)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    closers: list[Any] = []
    tracing = Tracing.from_env(service_name, instance_id=settings.node_id)
    if tracing is not None:
        # Last to close: spans of the requests that end while the rest shuts down are kept.
        closers.append(partial(asyncio.to_thread, tracing.shutdown))
    registry = new_registry()
    flow_tracing = None
    if tracing is not None:
        flow_tracing = FlowTracing(tracing, stage_min_us=settings.trace_stage_min_us)
    telemetry = DataPlaneTelemetry(DataPlaneMetrics(registry), flow_tracing)
    redis = PipelinedRedis.from_url(settings.redis_url)
    closers.append(redis.close)
    http = aiohttp.ClientSession()
    closers.append(http.close)
    control = grpc.aio.insecure_channel(settings.control_address, options=GRPC_OPTIONS)
    closers.append(control.close)
    if settings.qdrant_path:
        # Opened here, where the semantic cache will use it; local mode is single-process.
        from qdrant_client import AsyncQdrantClient

        qdrant = AsyncQdrantClient(path=settings.qdrant_path)
        closers.append(qdrant.close)

    writer: LogWriter
    if settings.clickhouse_is_embedded:
        writer = ControlLogWriter(control, settings.admin_token)
    else:
        store = LogStore(settings.clickhouse_dsn)
        closers.append(store.close)
        writer = ClickHouseLogWriter(store)
    sink = LogSink(writer)
    sink.start()

    holder = PolicyHolder(settings.state_dir)
    holder.load_persisted()
    watcher = PolicyWatcher(holder, control, settings.admin_token, settings.node_id)
    tasks = [asyncio.create_task(watcher.run(), name="gatez-policy-watch")]

    dispatcher = build_dispatcher(
        holder.get,
        jwks=JwksCache(http),
        redis=redis,
        sink=sink,
        node_id=settings.node_id,
        observer=telemetry,
    )
    # Closed in reverse order: the stages (giving back held rate-limit tokens) before Redis.
    closers.append(dispatcher.close)
    registry.register(StageCollector(dispatcher.named_pipelines()))
    registry.register(_data_plane_values(holder, sink, redis))
    metrics = None
    if settings.metrics_address:
        metrics = MetricsServer.start(settings.metrics_address, registry)
        closers.append(metrics.stop)
    return DataPlaneCore(
        settings, holder, watcher, sink, dispatcher, tasks, closers, telemetry, metrics
    )


def _data_plane_values(
    holder: PolicyHolder, sink: LogSink, redis: PipelinedRedis
) -> ValueCollector:
    """What a data plane's objects already count, read at scrape time."""
    values = ValueCollector()
    values.gauge(
        "gatez_policy_version",
        "Version of the policy in force (-1: none yet).",
        lambda: holder.current.version if holder.current is not None else -1,
    )
    values.gauge("gatez_log_queue_rows", "Log rows waiting in memory.", sink_queued_rows(sink))
    values.counter(
        "gatez_log_rows",
        "Log rows by what became of them: written to the store, spooled to disk, replayed "
        "from the spool, quarantined, dropped.",
        sink_row_counts(sink),
        "outcome",
    )
    values.counter(
        "gatez_redis_errors",
        "Hot-path Redis commands that failed (error reply, connection refused or lost).",
        lambda: {"hot_path": redis.errors},
        "client",
    )
    return values


async def serve(settings: Settings) -> None:
    """Runs a data plane until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plane = await start(settings)
    # What start-up built (modules, compiled policy, clients) lives as long as the process:
    # keep it out of the collector's scans, and collect the young generation less often, so
    # full collections do not stall requests for milliseconds.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    try:
        await stop.wait()
    finally:
        await plane.stop()


# What became of log rows, as LogSink counts them: `rows_<outcome>` on the spooling sink, and
# `written`/`dropped` on the sink before it (read by name so metrics hold across that change).
LOG_ROW_OUTCOMES = ("written", "spooled", "replayed", "quarantined", "dropped")


def sink_row_counts(sink: LogSink) -> Callable[[], Mapping[str, float]]:
    def read() -> dict[str, float]:
        counts: dict[str, float] = {}
        for outcome in LOG_ROW_OUTCOMES:
            value = getattr(sink, f"rows_{outcome}", getattr(sink, outcome, None))
            if isinstance(value, int):
                counts[outcome] = value
        return counts

    return read


def sink_queued_rows(sink: LogSink) -> Callable[[], float | None]:
    def read() -> float | None:
        queued = getattr(sink, "queued_rows", None)
        if isinstance(queued, int):
            return queued
        queues = [getattr(sink, name, None) for name in ("_requests", "_ai")]
        return sum(len(queue) for queue in queues if queue is not None)

    return read
