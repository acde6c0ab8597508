"""Wiring for a data-plane process, in one place: every client built once, the pipelines of each
route kind with their stages in a fixed order, the policy watched from the control service — and
the Envoy adapter and Envoy's access log served over gRPC (the APISIX runner,
`extproc.apisix.server`, starts from the same `start_core`)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from agent.approvals import ApprovalGate
from agent.pins import pin_store
from agent.stages.admission import ToolCallAdmission
from agent.stages.answers import McpAnswers
from agent.stages.approval import ApprovalGateStage, NoApprovals
from agent.stages.audit import AgentAudit
from agent.stages.endpoint import McpEndpoint
from agent.stages.routing import McpMessage, McpRouting
from agent.stages.session import McpSessions
from agent.stages.tools import ToolPolicy
from extproc.circuit import CircuitBreaker
from extproc.envoy_access_log import EnvoyAccessLog
from extproc.envoy_adapter import ExternalProcessor
from extproc.envoy_chains import EnvoyChains
from extproc.grpc_h2 import GrpcServer
from extproc.grpcio_server import GRPC_OPTIONS, serve_grpcio
from extproc.jwks import JwksCache
from extproc.logsink import ClickHouseLogWriter, ControlLogWriter, LogSink, LogWriter
from extproc.policy_source import PolicyHolder, PolicyWatcher
from extproc.provider_embeddings import ProviderEmbeddings, upstream_ssl_context
from extproc.redis_pipe import ScriptClient, hot_path_client
from extproc.spool import Spool, SpoolLocked
from extproc.stages.access_log import AccessLog
from extproc.stages.authenticate import Authenticate
from extproc.stages.budget import TokenBudget, budget_values
from extproc.stages.cache import AnswerCache
from extproc.stages.client_api import ClientApi
from extproc.stages.fallback import FallbackOutcome
from extproc.stages.model_route import ModelRouting
from extproc.stages.pii import RedactAnswer, RedactPrompt
from extproc.stages.provider_headers import ProviderHeaders
from extproc.stages.rate_limit import RateLimit
from extproc.stages.response import DecodeResponse, EncodeResponse
from extproc.stages.rest_route import RestRouting
from extproc.stages.usage import UsageMeter
from extproc.token_count import TokenCounter
from gatez.approvals import ApprovalStore
from gatez.logstore import LogStore
from gatez.pipeline import Dispatcher, FlowObserver, NoPolicy, NoRoute, Pipeline
from gatez.policy import CompiledPolicy, RouteKind
from gatez.redis_client import RedisTarget, connect
from gatez.secrets import dataplane_tokens, secret_box
from gatez.semantic_cache import SemanticIndex
from gatez.settings import Settings
from gatez.telemetry import (
    DataPlaneMetrics,
    DataPlaneTelemetry,
    FlowTracing,
    LateMetricsServer,
    MetricsServer,
    StageCollector,
    Tracing,
    ValueCollector,
    new_registry,
)

log = logging.getLogger("gatez.dataplane")

# Allocations before a young-generation collection (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000


# Rows refused by the store as invalid, kept for an operator (not replayed).
QUARANTINE_MAX_BYTES = 64 * 1024 * 1024


def build_dispatcher(
    policy: Callable[[], CompiledPolicy | None],
    *,
    jwks: JwksCache,
    redis: ScriptClient,
    sink: LogSink,
    node_id: str,
    tokens: TokenCounter | None = None,
    observer: FlowObserver | None = None,
    chains: EnvoyChains | None = None,
    approvals: tuple[ApprovalStore, ApprovalGate] | None = None,
    semantic: SemanticIndex | None = None,
    provider_embeddings: ProviderEmbeddings | None = None,
) -> Dispatcher:
    """Every pipeline a data plane runs, one per route kind, with the stages in policy order;
    each position has a reason. Stage instances are shared between pipelines (a tenant has one
    rate-limit lease, whatever route it calls). `chains`: behind Envoy, fallback chains' later
    targets are reached by Envoy's retries (their attempts routed by the LLM pipeline).
    `approvals`: the store and gate that hold tool calls for a human decision (without them, a
    call a policy marks for approval is refused). `semantic`: the answer cache's semantic tier
    (None: exact matches only); the answer cache closes it. `provider_embeddings`: embeds the
    questions of routes whose cache policy asks for a provider's embeddings."""
    # Nothing runs for a caller we do not know; the tenant found here scopes all after.
    authenticate = Authenticate(jwks)
    # Before any body is buffered: a limited tenant costs one Redis round trip, no more.
    rate_limit = RateLimit(redis)
    # Last, so the rows see everything the stages before recorded.
    access_log = AccessLog(sink, node_id)
    # Fallback chains' shared circuit state (a Redis round trip only for aliases with a chain).
    circuits = CircuitBreaker(redis)
    answers = AnswerCache(redis, semantic, provider_embeddings=provider_embeddings)
    llm = Pipeline(
        [
            # The client's API, from the path: where its SDK puts the key, and the error format
            # of every answer the gateway makes itself from here on.
            ClientApi(),
            authenticate,
            rate_limit,
            # The tenant's PII rules on the client's own body, before routing reads it: the
            # provider, the translation, the cache key, the budget and a fallback's re-run
            # only ever see the redacted prompt; a blocked type answers 400 here.
            RedactPrompt(),
            # Needs the tenant (routes are per tenant); asks for the body on LLM paths only.
            ModelRouting(circuits, chains),
            # Needs the provider model routing chose: only its allowlisted client headers go on.
            ProviderHeaders(),
            # Response side: the provider's bytes read into the shared model (streams as
            # events), which the stages after read, whatever the schemas...
            DecodeResponse(),
            # ... redacted when the tenant's rules scan answers (the events, before anything
            # reads their text: the cache keeps the redacted answer) ...
            RedactAnswer(),
            # ... the usage (estimated when it never comes, before the access log writes it) ...
            UsageMeter(tokens),
            # Request body: after routing (the alias is known), before the budget (a hit
            # reserves nothing); a hit is answered here. Response: the answer kept once the
            # exchange is over.
            answers,
            # Request body: the worst case reserved against the tenant's and key's budgets
            # (429 when one is exhausted), after the cache (a hit costs nothing). When the
            # exchange is over, after the usage meter's estimate: settled to the usage.
            TokenBudget(redis),
            # ... and the client's bytes written last: the provider's own, or translated.
            EncodeResponse(),
            # A chain's outcome told to its target's circuit, once the status is final.
            FallbackOutcome(circuits),
            access_log,
        ]
    )
    if chains is not None:
        # An attempt of a chain call is routed by this pipeline's body phase, run again.
        chains.body_phase = llm.start_request_body
    rest = Pipeline([authenticate, rate_limit, RestRouting(), access_log])
    # The tenants' tool pins, on the hot-path Redis client; the tool-call admission, which
    # remembers pinned verdicts for a moment, is told whenever a list was judged here.
    pins = pin_store(redis)
    admission = ToolCallAdmission(redis)
    mcp = Pipeline(
        [
            # Before authentication: every answer from here on is JSON-RPC, and a 401 tells
            # the client where to log in (protected-resource metadata, also served here).
            McpEndpoint(),
            authenticate,
            rate_limit,
            # The caller's own server (another tenant's is a 404), its agent policy (none:
            # no access), the upstream request with the server's credential.
            McpRouting(),
            # A session id is checked against who bound it before anything else reads it.
            McpSessions(redis),
            # The body: size, JSON-RPC, protocol revision, 2026-07-28 headers against it.
            McpMessage(),
            # Deny by default: the tool, prompt or resource, and the call's arguments...
            ToolPolicy(),
            # ... then, in one Redis round trip, no blocked tool definition (rug pull, poison,
            # collision) and the limits, counted only for calls the policy lets through (a held
            # call holds its slot: it is in flight)...
            admission,
            # ... and last before the server, the human decision, asked only for calls that
            # passed every other check.
            ApprovalGateStage(*approvals) if approvals is not None else NoApprovals(),
            # Answers: lists filtered (and pinned), results scanned, sizes bounded.
            McpAnswers(pins, on_observed=admission.forget_pins),
            # One audit row per agent action, before the request log row.
            AgentAudit(sink, node_id),
            access_log,
        ]
    )
    return Dispatcher(
        policy,
        {RouteKind.LLM: llm, RouteKind.REST: rest, RouteKind.MCP: mcp},
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
    access_log: EnvoyAccessLog
    approvals: ApprovalGate | None = None

    async def stop(self) -> None:
        if self.approvals is not None:
            # Held calls answered while Envoy's streams are still open.
            await self.approvals.close()
        await self.server.stop(2)
        # Reset flows still waiting for Envoy's entry are logged before the sink's last flush.
        self.access_log.close()
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
    # Holds tool calls for a human decision; closed first on the way out, so every held call
    # is answered ("gateway stopping") while the proxy still listens.
    approvals: ApprovalGate | None = None

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
    chains = None
    if settings.envoy_cds_dir is not None:
        chains = EnvoyChains(settings.envoy_cds_dir, settings.upstream_ca_bundle)
    core = await start_core(settings, chains=chains)
    if chains is not None:
        # Written before Envoy starts (it loads the file at start), then with every policy.
        core.holder.on_applied.append(chains.write)
        chains.write(core.holder.current)
    # ext_proc, and Envoy's access log for the requests it answered without us.
    access_log = EnvoyAccessLog(core.sink, settings.node_id)
    methods = {
        **ExternalProcessor(core.dispatcher, access_log, chains).methods(),
        **access_log.methods(),
    }
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
        settings,
        server,
        core.holder,
        core.watcher,
        core.sink,
        core.tasks,
        core.closers,
        access_log,
        core.approvals,
    )


async def start_core(
    settings: Settings,
    service_name: str = "gatez-dataplane",
    *,
    takeover_wait_s: float = 0.0,
    chains: EnvoyChains | None = None,
) -> DataPlaneCore:
    """Builds the clients and the pipeline, loads the persisted policy and starts watching.
    `service_name` names the process in traces (OTEL_SERVICE_NAME overrides it); `chains`:
    Envoy's fallback chains (extproc.envoy_chains).

    The state directory belongs to one process at a time (its spool is locked). When another
    still holds it, this one waits up to `takeover_wait_s` for it to stop (0: fails at once)."""
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    # Read first: a data plane without its credential or the secret key fails at start, naming
    # what to set, rather than serving with a policy it could never update.
    token = dataplane_tokens(settings, create=False)[0]
    box = secret_box(settings, create=False)
    if settings.pii_ner_model:
        # Before the saved policy compiles: its PERSON and LOCATION rules need the model,
        # loaded once here (a second or so) rather than by the first request.
        from gatez.pii import configure_ner

        await asyncio.to_thread(configure_ner, settings.pii_ner_model)
    # Before any client exists: nothing to close while waiting, nothing started twice.
    spool, quarantine = await _take_spools(settings, takeover_wait_s)
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
    target = RedisTarget.from_settings(settings)
    redis = hot_path_client(target)
    closers.append(redis.close)
    # Off the hot path (held tool calls): redis-py, for its Pub/Sub.
    approval_redis = await connect(target)
    closers.append(approval_redis.aclose)
    approval_store = ApprovalStore(approval_redis)
    gate = ApprovalGate(approval_store)
    http = aiohttp.ClientSession()
    closers.append(http.close)
    # The answer cache's provider embeddings: sent by the data plane over the shared session,
    # HTTPS checked against the CA bundle Envoy's provider clusters trust.
    provider_embeddings = ProviderEmbeddings(
        http, ssl_context=upstream_ssl_context(settings.upstream_ca_bundle)
    )
    control = grpc.aio.insecure_channel(settings.control_address, options=GRPC_OPTIONS)
    closers.append(control.close)
    writer: LogWriter
    if settings.clickhouse_is_embedded:
        writer = ControlLogWriter(control, token)
    else:
        store = LogStore(settings.clickhouse_dsn)
        closers.append(store.close)
        writer = ClickHouseLogWriter(store)
    sink = LogSink(writer, spool=spool, quarantine=quarantine)
    sink.start()
    tokens = TokenCounter()
    tokens.load_in_background()

    # The answer cache's semantic tier: a Qdrant server shared by every data plane, or the
    # state directory's own embedded Qdrant — this process's alone, which the spool lock taken
    # above guarantees (gatez.semantic_cache). Loads in the background; skipped until ready.
    embedder_cache = settings.state_dir / "wordllama"
    semantic = (
        SemanticIndex.remote(settings.qdrant_url, embedder_cache=embedder_cache)
        if settings.qdrant_url
        else SemanticIndex.local(Path(settings.qdrant_path), embedder_cache=embedder_cache)
    )
    semantic.start()

    holder = PolicyHolder(settings.state_dir, box)
    holder.load_persisted()
    watcher = PolicyWatcher(holder, control, token, settings.node_id)
    tasks = [asyncio.create_task(watcher.run(), name="gatez-policy-watch")]

    dispatcher = build_dispatcher(
        holder.get,
        jwks=JwksCache(http),
        redis=redis,
        sink=sink,
        node_id=settings.node_id,
        tokens=tokens,
        observer=telemetry,
        chains=chains,
        approvals=(approval_store, gate),
        semantic=semantic,
        provider_embeddings=provider_embeddings,
    )
    # Also closed by the transports before they stop serving (see `DataPlane.stop`); again
    # here in case a start-up failed half-way.
    closers.append(gate.close)
    # Closed in reverse order: the stages (giving back held rate-limit tokens) before Redis.
    closers.append(dispatcher.close)
    registry.register(StageCollector(dispatcher.named_pipelines()))
    registry.register(_data_plane_values(holder, sink, redis))
    for collector in _guardrail_values(dispatcher):
        registry.register(collector)
    metrics = None
    if settings.metrics_address:
        try:
            metrics = MetricsServer.start(settings.metrics_address, registry)
            closers.append(metrics.stop)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            # Still held by the data plane this one replaces (APISIX starts the new runner on
            # a reload before the old one stops): served as soon as it is free.
            log.warning("metrics address %s in use; serving it once free", settings.metrics_address)
            closers.append(LateMetricsServer(settings.metrics_address, registry).stop)
    return DataPlaneCore(
        settings, holder, watcher, sink, dispatcher, tasks, closers, telemetry, metrics, gate
    )


async def _take_spools(settings: Settings, wait_s: float) -> tuple[Spool, Spool]:
    """The state directory's spools, locked for this process; waits up to `wait_s` while
    another process holds them."""
    spool_dir = settings.state_dir / "spool"
    deadline = time.monotonic() + wait_s
    next_word = 0.0
    while True:
        try:
            spool = Spool(spool_dir, max_bytes=settings.spool_max_bytes)
        except SpoolLocked:
            now = time.monotonic()
            if now >= deadline:
                raise
            if now >= next_word:
                log.warning(
                    "state directory %s is held by another data plane (the runner this one "
                    "replaces, still finishing); waiting for it",
                    settings.state_dir,
                )
                next_word = now + 10
            await asyncio.sleep(0.1)
            continue
        try:
            return spool, Spool(spool_dir / "quarantine", max_bytes=QUARANTINE_MAX_BYTES)
        except BaseException:
            spool.close()
            raise


def _data_plane_values(holder: PolicyHolder, sink: LogSink, redis: ScriptClient) -> ValueCollector:
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


def _guardrail_values(dispatcher: Dispatcher) -> list[ValueCollector]:
    """What the LLM pipeline's guardrail stages count, read at scrape time."""
    values = ValueCollector()
    collectors = [values]
    stages = dispatcher.named_pipelines()[RouteKind.LLM.value].stages
    for stage in stages:
        if isinstance(stage, TokenBudget):
            collectors.append(budget_values(stage))
        if isinstance(stage, AnswerCache):
            values.counter(
                "gatez_cache_lookups",
                "Answer-cache lookups by outcome: hit_exact, hit_semantic, miss, bypass (not "
                "cacheable, or Cache-Control: no-cache).",
                partial(_cache_lookups, stage),
                "outcome",
            )
            values.counter(
                "gatez_cache_writes",
                "Answers written to the cache, and cache operations that failed.",
                partial(_cache_writes, stage),
                "outcome",
            )
    return collectors


def _cache_lookups(stage: AnswerCache) -> dict[str, float]:
    return {
        "hit_exact": stage.hits_exact,
        "hit_semantic": stage.hits_semantic,
        "miss": stage.misses,
        "bypass": stage.bypasses,
    }


def _cache_writes(stage: AnswerCache) -> dict[str, float]:
    return {"written": stage.writes, "failed": stage.errors}


# What became of log rows, as LogSink counts them: `rows_<outcome>` on the spooling sink, and
# `written`/`dropped` on the sink before it (read by name so metrics hold across that change).
def sink_row_counts(sink: LogSink) -> Callable[[], Mapping[str, float]]:
    """The sink's row counters by outcome, read at scrape time."""

    def read() -> dict[str, float]:
        return {
            "written": sink.rows_written,
            "spooled": sink.rows_spooled,
            "replayed": sink.rows_replayed,
            "quarantined": sink.rows_quarantined,
            "dropped": sink.rows_dropped,
        }

    return read


def sink_queued_rows(sink: LogSink) -> Callable[[], float | None]:
    """The rows waiting in the sink's memory, read at scrape time."""
    return lambda: sink.queued_rows
