"""The runner process as APISIX starts it: `ext-plugin.cmd` in APISIX's config.yaml runs
`python -m extproc.apisix` with `APISIX_LISTEN_ADDRESS=unix:/path.sock` and
`APISIX_CONF_EXPIRE_TIME` in the environment, restarts it 3 s after it exits, and stops it with
SIGTERM (then SIGKILL 1 s later). The data-plane wiring is `extproc.server`'s, shared with Envoy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

from extproc.apisix.runner import ExtPluginRunner
from extproc.grpc_h2 import remove_stale_socket
from extproc.server import DataPlaneCore, start_core
from gatez.settings import Settings
from gatez.telemetry import ValueCollector

log = logging.getLogger("gatez.apisix")

# Owner and group only: APISIX's reference runners make the socket world-writable (0766) so
# that nginx workers of any user can connect; we let only the runner's user and group connect.
# Where APISIX's workers run as another user, give them the socket's group
# (GATEZ_APISIX_SOCKET_GROUP).
SOCKET_MODE = 0o660


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    """What APISIX tells its runner, read once from the environment."""

    socket_path: Path
    conf_expire_s: float
    # The group that may connect to the socket besides the runner's user ("" keeps the default).
    socket_group: str = ""

    @classmethod
    def from_env(cls, settings: Settings, environ: dict[str, str] | None = None) -> RunnerSettings:
        env = dict(os.environ if environ is None else environ)
        # Started by hand (ext-plugin.path_for_test), the socket defaults to the state directory.
        address = env.get("APISIX_LISTEN_ADDRESS", f"unix:{settings.state_dir / 'apisix.sock'}")
        if not address.startswith("unix:"):
            raise ValueError(f"APISIX_LISTEN_ADDRESS must be unix:/path, not {address!r}")
        return cls(
            socket_path=Path(address.removeprefix("unix:")),
            conf_expire_s=float(env.get("APISIX_CONF_EXPIRE_TIME", "3600")),
            socket_group=env.get("GATEZ_APISIX_SOCKET_GROUP", ""),
        )


@dataclass
class RunnerPlane:
    """A running APISIX runner; `stop()` releases everything `start()` built."""

    core: DataPlaneCore
    runner: ExtPluginRunner
    server: asyncio.Server
    socket_path: Path

    async def stop(self) -> None:
        # The socket goes first: APISIX sends SIGKILL 1 s after SIGTERM, and a new runner
        # must find no stale socket even if the rest is cut short.
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        await self.runner.close()
        await self.core.close()


async def start(settings: Settings, runner_settings: RunnerSettings) -> RunnerPlane:
    core = await start_core(settings, service_name="gatez-apisix-runner")
    runner = ExtPluginRunner(core.dispatcher, conf_expire_s=runner_settings.conf_expire_s)
    values = ValueCollector()
    values.gauge(
        "gatez_apisix_waiting_flows",
        "Flows waiting for their response call.",
        lambda: runner.waiting_flows,
    )
    core.telemetry.metrics.registry.register(values)
    path = runner_settings.socket_path
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path)
    try:
        server = await asyncio.start_unix_server(runner.serve_connection, path=str(path))
    except BaseException:
        await core.close()
        raise
    os.chmod(path, SOCKET_MODE)
    if runner_settings.socket_group:
        shutil.chown(path, group=runner_settings.socket_group)
    log.info("data plane %s serving APISIX ext-plugin on unix:%s", settings.node_id, path)
    return RunnerPlane(core, runner, server, path)


async def serve(settings: Settings, runner_settings: RunnerSettings) -> None:
    """Runs the runner until SIGTERM (what APISIX sends) or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    plane = await start(settings, runner_settings)
    try:
        await stop.wait()
    finally:
        await plane.stop()
