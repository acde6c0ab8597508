"""Wiring: builds the control service from `Settings`, serves it, and shuts it down cleanly.

The control service owns the log store: with the embedded chDB (single-node mode) it is the one
process that may open it, and data planes send their rows here with `IngestLogs`. On its first
start it creates the data-plane token file and the secret key file when they are missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Final

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from control.auth import CredentialInterceptor, Role
from control.guardrail_state import GuardrailState
from control.service import ControlServicer, DataPlaneRegistry, DataPlaneServicer
from control.store import PolicyStore
from gatez.approvals import ApprovalStore
from gatez.errors import InvalidPolicy
from gatez.logstore import LogStore
from gatez.redis_client import RedisTarget, connect
from gatez.secrets import (
    SecretBox,
    SecretConfigError,
    all_credentials,
    dataplane_tokens,
    secret_box,
)
from gatez.settings import Settings
from gatez.telemetry import (
    GrpcServerTelemetry,
    MetricsServer,
    Tracing,
    ValueCollector,
    new_registry,
)
from gatez.tool_pins import RedisPyScripts, ToolPinStore
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2

CONTROL_SERVICE: Final = control_pb2.DESCRIPTOR.services_by_name["ControlService"].full_name
DATA_PLANE_SERVICE: Final = control_pb2.DESCRIPTOR.services_by_name["DataPlaneService"].full_name
STOP_GRACE_S: Final = 5.0

log = logging.getLogger("gatez.control")


class ControlServer:
    """A running control service. Build it with `start(settings)`; end it with `stop()`."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        store: PolicyStore,
        health_servicer: Any,
        resources: contextlib.AsyncExitStack,
    ) -> None:
        self._server = server
        self.port = port
        self._store = store
        self._health = health_servicer
        self._resources = resources

    async def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """Reports NOT_SERVING, ends Watch streams (data planes reconnect elsewhere), lets
        in-flight calls finish for up to `grace_s`, then closes Redis and the log store."""
        await self._health.enter_graceful_shutdown()
        await self._store.stop()
        await self._server.stop(grace_s)
        await self._resources.aclose()
        log.info("control service stopped")


async def start(settings: Settings) -> ControlServer:
    """Connects to Redis and ClickHouse, and serves the control service on
    `settings.control_address` (port 0 picks a free port; see `ControlServer.port`)."""
    box = secret_box(settings, create=True)
    if settings.pii_ner_model:
        # Policies naming PERSON or LOCATION compile only where an NER model is configured;
        # checked here, loaded on first use (this service never scans).
        from gatez.pii import configure_ner

        configure_ner(settings.pii_ner_model, load=False)
    interceptor = CredentialInterceptor(
        {CONTROL_SERVICE: Role.ADMIN, DATA_PLANE_SERVICE: Role.DATA_PLANE},
        admin_tokens=[settings.admin_token],
        dataplane_tokens=dataplane_tokens(settings, create=True),
    )
    resources = contextlib.AsyncExitStack()
    try:
        redis = await connect(RedisTarget.from_settings(settings))
        resources.push_async_callback(redis.aclose)
        store = PolicyStore(redis, cipher=box)
        await store.start()
        resources.push_async_callback(store.stop)
        _check_opens(store.current, box)
        logs = await asyncio.to_thread(LogStore, settings.clickhouse_dsn)
        resources.push_async_callback(asyncio.to_thread, logs.close)

        data_planes = DataPlaneRegistry()
        registry = new_registry()
        registry.register(_control_values(store, data_planes))
        tracing = Tracing.from_env("gatez-control")
        if tracing is not None:
            resources.push_async_callback(asyncio.to_thread, tracing.shutdown)
        # so_reuseport off: a second control service on the same port must fail, not share it.
        server = grpc.aio.server(
            # Telemetry first, so refused calls are counted (and traced) too.
            interceptors=[GrpcServerTelemetry(registry, tracing), interceptor],
            options=[("grpc.so_reuseport", 0)],
        )
        control_pb2_grpc.add_ControlServiceServicer_to_server(
            ControlServicer(
                store,
                logs,
                data_planes,
                box,
                tool_pins=ToolPinStore(RedisPyScripts(redis)),
                guardrail_state=GuardrailState(redis),
                approvals=ApprovalStore(redis),
            ),
            server,
        )
        control_pb2_grpc.add_DataPlaneServiceServicer_to_server(
            DataPlaneServicer(store, logs, data_planes), server
        )
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        for service in ("", CONTROL_SERVICE, DATA_PLANE_SERVICE):
            await health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            (CONTROL_SERVICE, DATA_PLANE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            server,
        )
        port = server.add_insecure_port(settings.control_address)
        if port == 0:
            raise RuntimeError(f"cannot listen on {settings.control_address}")
        await server.start()
        if settings.metrics_address:
            metrics = MetricsServer.start(settings.metrics_address, registry)
            resources.callback(metrics.stop)
    except BaseException:
        await resources.aclose()
        raise
    log.info("control service listening on %s (port %d)", settings.control_address, port)
    return ControlServer(server, port, store, health_servicer, resources)


def _check_opens(snapshot: policy_pb2.PolicySnapshot, box: SecretBox) -> None:
    """Refuses to start with a secret key that cannot open the stored credentials: every change
    would fail, and a data plane given the same key would refuse every snapshot."""
    for credential in all_credentials(snapshot):
        if credential.sealed_api_key:
            try:
                box.open_credential(credential)
            except InvalidPolicy as error:
                raise SecretConfigError(
                    f"the stored policy (version {snapshot.version}): {error.public_message}"
                ) from None


def _control_values(store: PolicyStore, data_planes: DataPlaneRegistry) -> ValueCollector:
    values = ValueCollector()
    values.gauge(
        "gatez_policy_version",
        "Version of the newest policy snapshot.",
        lambda: store.current.version,
    )
    values.gauge(
        "gatez_data_planes_connected",
        "Data planes watching the policy now.",
        lambda: sum(report.connected for report in data_planes.reports()),
    )
    return values


async def serve(settings: Settings) -> None:
    """Runs the control service until SIGINT or SIGTERM, then stops it cleanly."""
    server = await start(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stopping.set)
    try:
        await stopping.wait()
        log.info("stopping the control service")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
        await server.stop()
