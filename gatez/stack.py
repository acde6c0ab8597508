"""The whole stack on one machine: redis-server, the control service, a data plane and the
proxy in front of it, each a child process, stopped together.

`make run` (`python -m demo`) starts it on the fixed ports with the demo upstream and tenant; the
end-to-end tests and benchmarks use `Stack` with free ports and a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gatez import apisix_config
from gatez.apisix_process import ApisixInstall, RunningApisix
from gatez.envoy_config import CA_BUNDLE, EnvoyTracing, render
from gatez.processes import (
    redis_config,
    require_binary,
    stop_process,
    wait_for_port,
    write_private,
)
from gatez.redis_client import read_password
from gatez.settings import DEV_ADMIN_TOKEN
from gatez.tls import ServerTls, TlsListenerSettings

# `make run` takes the Redis password from here when set (else it generates one).
REDIS_PASSWORD_ENV = "GATEZ_REDIS_PASSWORD"
# Where APISIX is installed (`make apisix`), when not in the checkout's `.apisix`.
APISIX_PREFIX_ENV = "GATEZ_APISIX_PREFIX"
# Settings of the launcher and the control service that the APISIX runner must not get.
NOT_FOR_THE_RUNNER = frozenset(
    {
        "GATEZ_ADMIN_TOKEN",
        "GATEZ_DEMO_KEY",
        "GATEZ_EXTPROC_ADDRESS",
        "GATEZ_ENVOY_CDS_DIR",
        APISIX_PREFIX_ENV,
    }
)


def default_apisix_prefix() -> Path:
    """$GATEZ_APISIX_PREFIX, else `.apisix` in the checkout (where `make apisix` installs)."""
    configured = os.environ.get(APISIX_PREFIX_ENV)
    return Path(configured) if configured else apisix_config.CHECKOUT / ".apisix"


def _dying_with_parent(argv: list[str]) -> list[str]:
    """`argv` run so the kernel sends it SIGTERM if the launcher dies (util-linux's setpriv sets
    the parent-death signal, then execs it). Not a `preexec_fn`: that makes subprocess fork()
    and run Python in the child, where gRPC's fork handlers run too when the launcher has a
    channel open, as the tests do ("epoll_wait error: Bad file descriptor" in the child's log;
    once, a restarted control service that never listened)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else argv


@dataclass
class StackConfig:
    state_dir: Path
    listen_port: int = 9080
    envoy_admin_port: int = 9901
    control_port: int = 4001
    redis_port: int = 6380
    # Prometheus /metrics of the control service and of the data plane (0: not served).
    control_metrics_port: int = 9464
    data_plane_metrics_port: int = 9465
    admin_token: str = DEV_ADMIN_TOKEN
    node_id: str = "dataplane-1"
    # Keep Redis data across restarts (AOF, fsync every second: `make run`); tests start clean.
    persist_redis: bool = True
    # The Redis password: this, else $GATEZ_REDIS_PASSWORD, else the one generated into
    # `redis_password_file` on the first start (kept there for restarts and tools).
    redis_password: str | None = field(default=None, repr=False)
    # A Redis (or Redis Cluster, `redis+cluster://`) run elsewhere instead of the stack's own
    # redis-server; its password is `redis_password` (the tests' 3-node cluster).
    external_redis_url: str | None = None
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    # "envoy", or "apisix": a real APISIX from `apisix_prefix`, which runs the data plane as its
    # ext-plugin runner.
    proxy: str = "envoy"
    apisix_prefix: Path = field(default_factory=default_apisix_prefix)
    # The upstream of APISIX's REST catch-all route (http(s)://host:port); LLM routes reach the
    # providers of Gatez's policy through the Gatez plugin.
    apisix_rest_upstream_url: str = "http://127.0.0.1:18000"
    # More APISIX routes, as apisix.yaml holds them (the benchmark's route without plugins).
    apisix_extra_routes: list[dict[str, object]] = field(default_factory=list)
    # The one file of CA certificates the proxy trusts for TLS to providers (tests: the system
    # bundle plus their own CA).
    ca_bundle: str = CA_BUNDLE
    # The proxy's HTTPS listener (None: plain HTTP only); without the operator's certificate,
    # one made in `tls_dir` (a local CA and a server certificate for localhost).
    tls: TlsListenerSettings | None = None

    @classmethod
    def ephemeral(cls, state_dir: Path, *, tls: bool = False) -> StackConfig:
        """Free ports everywhere (six different ones, seven `tls`), for tests and benchmarks."""
        listen, admin, control, redis, control_metrics, data_plane_metrics, *https = _free_ports(
            7 if tls else 6
        )
        return cls(
            tls=TlsListenerSettings(port=https[0]) if https else None,
            state_dir=state_dir,
            listen_port=listen,
            envoy_admin_port=admin,
            control_port=control,
            redis_port=redis,
            control_metrics_port=control_metrics,
            data_plane_metrics_port=data_plane_metrics,
            persist_redis=False,
        )

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def redis_dir(self) -> Path:
        return self.state_dir / "redis"

    @property
    def redis_socket(self) -> Path:
        return self.redis_dir / "redis.sock"

    @property
    def redis_password_file(self) -> Path:
        return (self.redis_dir / "password").resolve()

    @property
    def redis_url(self) -> str:
        if self.external_redis_url is not None:
            return self.external_redis_url
        # The stack's own processes use the Unix socket: a round trip costs less than over
        # loopback TCP (the port stays open for tools such as redis-cli).
        return f"unix://{self.redis_socket.resolve()}?db=0"

    @property
    def extproc_socket(self) -> Path:
        return self.state_dir / "dataplane" / "extproc.sock"

    @property
    def envoy_cds_dir(self) -> Path:
        """Where the data plane writes fallback chains' clusters for Envoy, which watches it."""
        return (self.state_dir / "envoy-cds").resolve()

    @property
    def data_plane_dir(self) -> Path:
        """The data plane's state directory (its snapshot, spool and socket)."""
        return self.state_dir / "dataplane"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    @property
    def tls_port(self) -> int:
        """The HTTPS listener's port (0: none)."""
        return self.tls.port if self.tls else 0

    @property
    def gateway_tls_url(self) -> str:
        """The HTTPS listener's URL (ValueError when there is none)."""
        if not self.tls_port:
            raise ValueError("this stack has no HTTPS listener")
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def tls_dir(self) -> Path:
        """Where the local CA and the gateway's own certificate are kept."""
        return self.state_dir / "tls"

    @property
    def control_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.control_metrics_port}/metrics"

    @property
    def data_plane_metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.data_plane_metrics_port}/metrics"

    def metrics_address(self, port: int) -> str:
        return f"127.0.0.1:{port}" if port else ""

    def environment(self) -> dict[str, str]:
        """GATEZ_* variables shared by the control service and the data plane."""
        env = dict(os.environ)
        env.update(
            GATEZ_ADMIN_TOKEN=self.admin_token,
            # Created by the control service on its first start (mode 0600), read by data planes.
            GATEZ_DATAPLANE_TOKEN_FILE=str(self.state_dir.resolve() / "dataplane.token"),
            GATEZ_SECRET_KEY_FILE=str(self.state_dir.resolve() / "secret.key"),
            GATEZ_CONTROL_ADDRESS=self.control_address,
            GATEZ_REDIS_URL=self.redis_url,
            # A file, not the password itself: environments show up in `ps e`.
            GATEZ_REDIS_PASSWORD_FILE=str(self.redis_password_file),
            GATEZ_CLICKHOUSE_DSN=f"chdb://{self.state_dir / 'clickhouse'}",
            GATEZ_QDRANT_PATH=str(self.state_dir / "qdrant"),
            GATEZ_EXTPROC_ADDRESS=f"unix:{self.extproc_socket}",
            # Behind Envoy: the chain clusters, checking providers' certificates as Envoy does.
            GATEZ_ENVOY_CDS_DIR=str(self.envoy_cds_dir),
            GATEZ_UPSTREAM_CA_BUNDLE=self.ca_bundle,
            GATEZ_NODE_ID=self.node_id,
            GATEZ_LOG_LEVEL=self.log_level,
        )
        env.update(self.extra_env)
        env.pop(REDIS_PASSWORD_ENV, None)
        return env

    def runner_settings(self) -> dict[str, str]:
        """The APISIX runner's settings (GATEZ_* and OTEL_*), as its `--env-file` holds them."""
        env = {
            name: value
            for name, value in self.environment().items()
            if name.startswith(("GATEZ_", "OTEL_")) and name not in NOT_FOR_THE_RUNNER
        }
        env.update(
            GATEZ_STATE_DIR=str(self.data_plane_dir.resolve()),
            GATEZ_METRICS_ADDRESS=self.metrics_address(self.data_plane_metrics_port),
        )
        return env


class Stack:
    """Starts and stops the stack's processes; each can be stopped and started on its own."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.logs = config.state_dir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, IO[bytes]] = {}
        # Under APISIX: the APISIX started (its runner is the data plane).
        self.apisix: RunningApisix | None = None
        # The HTTPS listener's certificate, as the proxy last started with it.
        self.tls: ServerTls | None = None

    def start(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_control()
            self.start_data_plane()
            if self.config.proxy != "apisix":
                self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_redis(self) -> None:
        """Starts the stack's redis-server: a password required over TCP and the Unix socket
        alike (the socket and the data directory usable by this user only), the password in a
        0600 config file rather than on the command line, AOF persistence when
        `persist_redis`. With an external Redis, only writes its password file."""
        config = self.config
        directory = config.redis_dir
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        password = self._redis_password()
        if config.external_redis_url is not None:
            return
        conf = directory / "redis.conf"
        write_private(
            conf,
            redis_config(
                port=config.redis_port,
                directory=directory.resolve(),
                password=password,
                unix_socket=config.redis_socket.resolve(),
                append_only=config.persist_redis,
            ),
        )
        self.spawn("redis", [require_binary("redis-server"), str(conf)])
        wait_for_port(config.redis_port)

    def _redis_password(self) -> str:
        """The configured password, or the one kept from an earlier start, or a new one; written
        to `redis_password_file` (0600) for the stack's processes either way."""
        path = self.config.redis_password_file
        password = self.config.redis_password or os.environ.get(REDIS_PASSWORD_ENV)
        if not password and path.exists():
            password = read_password(path)
        if not password:
            password = secrets.token_urlsafe(32)
        if not path.exists() or read_password(path) != password:
            write_private(path, password + "\n")
        return password

    def start_control(self) -> None:
        env = self.config.environment()
        env["GATEZ_METRICS_ADDRESS"] = self.config.metrics_address(self.config.control_metrics_port)
        self.spawn("control", [sys.executable, "-m", "control"], env)
        wait_for_port(self.config.control_port, timeout_s=60)

    def start_data_plane(self) -> None:
        """The data plane; under APISIX, APISIX itself, which starts the runner."""
        if self.config.proxy == "apisix":
            self.start_apisix()
            return
        socket = self.config.extproc_socket
        socket.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket.unlink()
        env = self.config.environment()
        env["GATEZ_STATE_DIR"] = str(socket.parent)
        env["GATEZ_METRICS_ADDRESS"] = self.config.metrics_address(
            self.config.data_plane_metrics_port
        )
        self.spawn("dataplane", [sys.executable, "-m", "extproc"], env)
        _wait_for_file(socket, timeout_s=60, process=self.processes["dataplane"])

    def server_tls(self) -> ServerTls | None:
        """The HTTPS listener's certificate (made or renewed now when it is the local one), or
        None without an HTTPS listener; kept in `self.tls`."""
        settings = self.config.tls
        self.tls = settings.server_tls(self.config.tls_dir) if settings and settings.port else None
        return self.tls

    def start_envoy(self) -> None:
        config = self.config
        path = config.state_dir / "envoy.yaml"
        tls = self.server_tls()
        path.write_text(
            render(
                listen_port=config.listen_port,
                admin_port=config.envoy_admin_port,
                extproc_socket=str(config.extproc_socket),
                ca_bundle=config.ca_bundle,
                # Traced when the data plane is (the same OTEL_* variables).
                tracing=EnvoyTracing.from_env(config.environment()),
                tls_port=config.tls_port,
                tls=tls,
                # The data plane writes them there (GATEZ_ENVOY_CDS_DIR).
                cds_dir=config.envoy_cds_dir,
            )
        )
        self.spawn(
            "envoy",
            [
                require_binary("envoy"),
                "-c", str(path),
                "--log-level", "warn",
                "--base-id", str(config.listen_port),
                "--concurrency", "1",
            ],
        )  # fmt: skip
        wait_for_port(config.listen_port, timeout_s=30)
        if tls is not None:
            wait_for_port(config.tls_port, timeout_s=30)

    def start_apisix(self) -> None:
        """A real APISIX from `apisix_prefix` (config written into its `conf/`), which spawns
        the data plane as its ext-plugin runner with an absolute state directory and the
        runner's settings in a 0600 file; returns once the listener and the runner's socket
        accept. Refuses while an APISIX from the same prefix runs."""
        config = self.config
        install = ApisixInstall(config.apisix_prefix.resolve())
        install.require()
        # Before writing its config: a running APISIX re-reads apisix.yaml when it changes.
        install.require_stopped()
        tls = self.server_tls()
        state = config.data_plane_dir.resolve()
        state.mkdir(parents=True, exist_ok=True)
        settings = config.runner_settings()
        env_file = state / "runner.env"
        if any("\n" in value for value in settings.values()):
            raise ValueError("a setting for the APISIX runner holds a line break")
        write_private(env_file, "".join(f"{name}={value}\n" for name, value in settings.items()))
        # The checkout first on the runner's import path: APISIX starts it in its own directory.
        python_path = os.pathsep.join(
            filter(None, [str(apisix_config.CHECKOUT), os.environ.get("PYTHONPATH")])
        )
        log = self.logs / "apisix.log"
        self.logs.mkdir(parents=True, exist_ok=True)
        log.touch()
        (install.conf_dir / "config.yaml").write_text(
            apisix_config.render_config(
                listen_port=config.listen_port,
                runner_command=apisix_config.runner_command(
                    sys.executable, state_dir=state, env_file=env_file
                ),
                envs=[*settings, f"PYTHONPATH={python_path}"],
                ca_bundle=config.ca_bundle,
                error_log=log.resolve(),
                tls_port=config.tls_port,
            )
        )
        # Private: with an HTTPS listener it holds the certificate's key.
        write_private(
            install.conf_dir / "apisix.yaml",
            apisix_config.render_routes(
                rest_upstream_url=config.apisix_rest_upstream_url,
                extra_routes=config.apisix_extra_routes,
                tls=tls,
            ),
        )
        # APISIX's own environment holds no setting the runner must not have (the admin token).
        env = {
            **{k: v for k, v in config.environment().items() if k not in NOT_FOR_THE_RUNNER},
            **settings,
            "APISIX_WORKER_PROCESSES": "1",
        }
        start_offset = log.stat().st_size
        self.apisix = install.start(
            env,
            listen_port=config.listen_port,
            failed=lambda: _runner_refusal(log, start_offset),
        )

    def set_apisix_routes(
        self, extra_routes: list[dict[str, object]], timeout_s: float = 10
    ) -> None:
        """Serves these extra routes (besides Gatez's two) from the running APISIX: rewrites
        `apisix.yaml` and waits until APISIX logs that it read it again."""
        if self.apisix is None:
            raise RuntimeError("APISIX is not running")
        self.config.apisix_extra_routes = list(extra_routes)
        log = self.logs / "apisix.log"
        marker = "apisix.yaml reloaded"
        seen = log.read_text(errors="replace").count(marker)
        routes = self.apisix.install.conf_dir / "apisix.yaml"
        previous = routes.stat().st_mtime
        write_private(
            routes,
            apisix_config.render_routes(
                rest_upstream_url=self.config.apisix_rest_upstream_url,
                extra_routes=self.config.apisix_extra_routes,
                tls=self.tls,
            ),
        )
        # APISIX notices a change by the file's mtime, in whole seconds.
        changed = max(time.time(), previous + 1)
        os.utime(routes, (changed, changed))
        deadline = time.monotonic() + timeout_s
        while log.read_text(errors="replace").count(marker) <= seen:
            if time.monotonic() > deadline:
                raise TimeoutError(f"APISIX did not read the new routes within {timeout_s} s")
            time.sleep(0.05)
        # The routes module takes the new file up in its own loop, which sleeps 0.1 s between
        # turns (apisix/core/config_yaml.lua); a few turns later the routes serve.
        time.sleep(0.5)

    def stop_apisix(self) -> None:
        """`apisix stop`, waiting until APISIX and its runner are gone."""
        apisix, self.apisix = self.apisix, None
        if apisix is not None:
            apisix.stop()

    def stop_process(self, name: str) -> None:
        """Stops one process; under APISIX, "dataplane" (or "apisix") stops APISIX and its
        runner together, and `start_data_plane()` starts them again."""
        if name in ("dataplane", "apisix") and self.config.proxy == "apisix":
            self.stop_apisix()
            return
        process = self.processes.pop(name, None)
        if process is not None:
            stop_process(process)
        log_file = self._log_files.pop(name, None)
        if log_file is not None:
            log_file.close()

    def stop(self) -> None:
        self.stop_apisix()
        for name in reversed(list(self.processes)):
            self.stop_process(name)

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_file = (self.logs / f"{name}.log").open("ab")
        self._log_files[name] = log_file
        self.processes[name] = subprocess.Popen(
            _dying_with_parent(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )


def _free_ports(count: int) -> list[int]:
    """Ports free now, all different (each held open until all are chosen)."""
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _runner_refusal(log: Path, offset: int) -> str | None:
    """Why the runner refused to start, if APISIX's error log shows it since `offset` (the
    runner's stderr, relayed line by line)."""
    with log.open("rb") as lines:
        lines.seek(offset)
        tail = lines.read().decode(errors="replace")
    _, found, reason = tail.partition(apisix_config.RUNNER_REFUSAL)
    if not found:
        return None
    return f"APISIX's ext-plugin runner refused to start: {reason.strip().splitlines()[0]}"


def _wait_for_file(path: Path, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s}s")
        time.sleep(0.02)
