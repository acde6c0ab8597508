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

# `make run` takes the Redis password from here when set (else it generates one).
REDIS_PASSWORD_ENV = "GATEZ_REDIS_PASSWORD"


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
    # "envoy", or "apisix": the data plane as APISIX's ext-plugin runner, with
    # `apisix_command` as the process in front of it (run with the listen port and the runner's
    # socket appended as `--port N --runner-socket PATH`).
    proxy: str = "envoy"
    apisix_command: tuple[str, ...] = ()
    # The one file of CA certificates the proxy trusts for TLS to providers (tests: the system
    # bundle plus their own CA).
    ca_bundle: str = CA_BUNDLE

    @classmethod
    def ephemeral(cls, state_dir: Path) -> StackConfig:
        """Free ports everywhere (six different ones), for tests and benchmarks."""
        listen, admin, control, redis, control_metrics, data_plane_metrics = _free_ports(6)
        return cls(
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
    def apisix_socket(self) -> Path:
        return self.state_dir / "dataplane" / "apisix.sock"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

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
            GATEZ_NODE_ID=self.node_id,
            GATEZ_LOG_LEVEL=self.log_level,
        )
        env.update(self.extra_env)
        env.pop(REDIS_PASSWORD_ENV, None)
        return env


class Stack:
    """Starts and stops the stack's processes; each can be stopped and started on its own."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.logs = config.state_dir / "logs"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: dict[str, IO[bytes]] = {}

    def start(self) -> Stack:
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self.start_redis()
            self.start_control()
            self.start_data_plane()
            if self.config.proxy == "apisix":
                self.start_apisix()
            else:
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
        if self.config.proxy == "apisix":
            self.start_apisix_runner()
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

    def start_envoy(self) -> None:
        config = self.config
        path = config.state_dir / "envoy.yaml"
        path.write_text(
            render(
                listen_port=config.listen_port,
                admin_port=config.envoy_admin_port,
                extproc_socket=str(config.extproc_socket),
                ca_bundle=config.ca_bundle,
                # Traced when the data plane is (the same OTEL_* variables).
                tracing=EnvoyTracing.from_env(config.environment()),
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

    def start_apisix_runner(self) -> None:
        """The data plane as APISIX's ext-plugin runner, started as APISIX starts it."""
        socket = self.config.apisix_socket
        socket.parent.mkdir(parents=True, exist_ok=True)
        env = self.config.environment()
        env.update(
            GATEZ_STATE_DIR=str(socket.parent),
            GATEZ_METRICS_ADDRESS=self.config.metrics_address(self.config.data_plane_metrics_port),
            APISIX_LISTEN_ADDRESS=f"unix:{socket}",
            APISIX_CONF_EXPIRE_TIME="3600",
        )
        self.spawn("dataplane", [sys.executable, "-m", "extproc.apisix"], env)
        _wait_for_file(socket, timeout_s=60, process=self.processes["dataplane"])

    def start_apisix(self) -> None:
        """The process in front of the runner (`apisix_command`)."""
        config = self.config
        if not config.apisix_command:
            raise RuntimeError("StackConfig.apisix_command is not set: nothing to run as APISIX")
        self.spawn(
            "apisix",
            [
                *config.apisix_command,
                "--port", str(config.listen_port),
                "--runner-socket", str(config.apisix_socket),
            ],
        )  # fmt: skip
        wait_for_port(config.listen_port, timeout_s=30)

    def stop_process(self, name: str) -> None:
        process = self.processes.pop(name, None)
        if process is not None:
            stop_process(process)
        log_file = self._log_files.pop(name, None)
        if log_file is not None:
            log_file.close()

    def stop(self) -> None:
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


def _wait_for_file(path: Path, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s}s")
        time.sleep(0.02)
