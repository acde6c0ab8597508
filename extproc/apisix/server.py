"""The runner process as APISIX starts it: `ext-plugin.cmd` in APISIX's config.yaml runs
`python -m extproc.apisix` with `APISIX_LISTEN_ADDRESS=unix:/path.sock` and
`APISIX_CONF_EXPIRE_TIME` in the environment, restarts it 3 s after it exits, and stops it with
SIGTERM (then SIGKILL 1 s later). The data-plane wiring is `extproc.server`'s, shared with Envoy.

APISIX starts the runner in its own directory (`PREFIX/apisix`), so a relative path setting would
silently point there: `runner_environment` applies `--state-dir` and `--env-file` and refuses a
start by APISIX without an absolute state directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from extproc.apisix.runner import ExtPluginRunner
from extproc.grpc_h2 import remove_stale_socket
from extproc.server import DataPlaneCore, start_core
from gatez.errors import quoted
from gatez.settings import Settings
from gatez.telemetry import ValueCollector

log = logging.getLogger("gatez.apisix")

# Owner and group only: APISIX's reference runners make the socket world-writable (0766) so
# that nginx workers of any user can connect; we let only the runner's user and group connect.
# Where APISIX's workers run as another user, give them the socket's group
# (GATEZ_APISIX_SOCKET_GROUP).
SOCKET_MODE = 0o660
# APISIX sets this when it starts the runner (ext-plugin.cmd).
LISTEN_ADDRESS_VARIABLE: Final = "APISIX_LISTEN_ADDRESS"
STATE_DIR_VARIABLE: Final = "GATEZ_STATE_DIR"
# What a settings file (`--env-file`) may set: Gatez's settings and OpenTelemetry's.
ENV_FILE_PREFIXES: Final = ("GATEZ_", "OTEL_")


class StartupError(Exception):
    """The runner cannot start with what it was given; the message says what to set."""


def read_env_file(path: Path) -> dict[str, str]:
    """Settings from a file of `NAME=value` lines (blank lines and `#` comments skipped; the
    value is taken as written, up to the end of the line: no quotes, no expansion). Only
    `GATEZ_*` and `OTEL_*` names; a bad line is refused by number, its text never echoed (it
    may hold a secret)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise StartupError(f"cannot read the settings file {path}: {error.strerror}") from None
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, sep, value = stripped.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            raise StartupError(f"{path}, line {number}: expected NAME=value")
        if not name.startswith(ENV_FILE_PREFIXES):
            raise StartupError(
                f"{path}, line {number}: {quoted(name)} is not a setting of the runner "
                f"(only {' and '.join(p + '*' for p in ENV_FILE_PREFIXES)})"
            )
        values[name] = value
    return values


def runner_environment(
    environ: Mapping[str, str], *, state_dir: str | None = None, env_file: str | None = None
) -> dict[str, str]:
    """The environment the runner runs with: `environ`, then the settings file over it, then
    `state_dir` (as GATEZ_STATE_DIR) over both — what ext-plugin.cmd says wins over what the
    process that started APISIX happened to pass on.

    Started by APISIX (APISIX_LISTEN_ADDRESS set), the state directory must be given and
    absolute, and so must the settings file and every `GATEZ_*_FILE`: else they would resolve in
    APISIX's own directory."""
    by_apisix = LISTEN_ADDRESS_VARIABLE in environ
    env = dict(environ)
    if env_file is not None:
        if by_apisix and not Path(env_file).is_absolute():
            raise StartupError(f"--env-file must be an absolute path under APISIX, not {env_file}")
        env.update(read_env_file(Path(env_file)))
    if state_dir is not None:
        env[STATE_DIR_VARIABLE] = state_dir
    if not by_apisix:
        return env
    given = env.get(STATE_DIR_VARIABLE, "")
    if not given or not Path(given).is_absolute():
        raise StartupError(
            f"started by APISIX ({LISTEN_ADDRESS_VARIABLE} is set) without an absolute state "
            f"directory ({STATE_DIR_VARIABLE}={given!r}): it would be APISIX's working directory. "
            "Add --state-dir /absolute/path to ext-plugin.cmd"
        )
    for name, value in sorted(env.items()):
        path_setting = name.startswith("GATEZ_") and name.endswith("_FILE")
        if path_setting and value and not Path(value).is_absolute():
            raise StartupError(f"{name} must be an absolute path under APISIX, not {value}")
    return env


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
    # The socket file this runner bound (device, inode): on an APISIX reload the new runner
    # replaces it at the same path while this one still runs, and that one must stay.
    socket_file: tuple[int, int]

    async def stop(self) -> None:
        # The socket goes first: APISIX sends SIGKILL 1 s after SIGTERM, and a new runner
        # must find no stale socket even if the rest is cut short.
        self.server.close()
        with contextlib.suppress(FileNotFoundError):
            found = os.lstat(self.socket_path)
            if (found.st_dev, found.st_ino) == self.socket_file:
                self.socket_path.unlink()
        if self.core.approvals is not None:
            # Held calls answered while APISIX still waits on them.
            await self.core.approvals.close()
        await self.runner.close()
        await self.core.close()


# On `apisix reload` the new workers start a new runner while the old one still serves the old
# workers' requests; it is stopped when its worker exits — at the latest after nginx's
# worker_shutdown_timeout (APISIX's default: 240 s). The new runner waits that long for the
# state directory, leaving the socket to the old one meanwhile, and takes over when it stops.
TAKEOVER_WAIT_S = 300.0


async def start(settings: Settings, runner_settings: RunnerSettings) -> RunnerPlane:
    core = await start_core(
        settings, service_name="gatez-apisix-runner", takeover_wait_s=TAKEOVER_WAIT_S
    )
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
    bound = os.lstat(path)
    os.chmod(path, SOCKET_MODE)
    if runner_settings.socket_group:
        shutil.chown(path, group=runner_settings.socket_group)
    log.info("data plane %s serving APISIX ext-plugin on unix:%s", settings.node_id, path)
    return RunnerPlane(core, runner, server, path, (bound.st_dev, bound.st_ino))


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
