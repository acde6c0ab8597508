"""The whole stack on one machine: redis-server, the control service, a data plane, Envoy and
(for `make run`) the demo upstream, each a child process, stopped together.

`python -m gatez.stack` is `make run`: it starts everything on the fixed ports, seeds the demo
tenant, prints where to point an SDK, and runs until Ctrl-C. The end-to-end tests use `Stack`
with free ports and a temporary directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from gatez.envoy_config import render
from gatez.settings import DEV_ADMIN_TOKEN, DEV_DEMO_KEY
from gatez.testing.processes import free_port, require_binary, stop_process, wait_for_port

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in each child before exec: the kernel sends it SIGTERM if the launcher dies."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class StackConfig:
    state_dir: Path
    listen_port: int = 9080
    envoy_admin_port: int = 9901
    control_port: int = 4001
    redis_port: int = 6380
    admin_token: str = DEV_ADMIN_TOKEN
    node_id: str = "dataplane-1"
    # Keep Redis data across restarts (`make run`); tests start clean.
    persist_redis: bool = True
    log_level: str = "INFO"
    extra_env: dict[str, str] = field(default_factory=dict)
    # "envoy", or "apisix": the APISIX runner behind the harness that plays APISIX
    # (gatez.testing.apisix), whose routes send to `apisix_upstream` (APISIX cannot run here).
    proxy: str = "envoy"
    apisix_upstream: str = ""

    @classmethod
    def ephemeral(cls, state_dir: Path) -> StackConfig:
        """Free ports everywhere, for tests and benchmarks."""
        return cls(
            state_dir=state_dir,
            listen_port=free_port(),
            envoy_admin_port=free_port(),
            control_port=free_port(),
            redis_port=free_port(),
            persist_redis=False,
        )

    @property
    def control_address(self) -> str:
        return f"127.0.0.1:{self.control_port}"

    @property
    def redis_socket(self) -> Path:
        return self.state_dir / "redis" / "redis.sock"

    @property
    def redis_url(self) -> str:
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

    def environment(self) -> dict[str, str]:
        """GATEZ_* variables shared by the control service and the data plane."""
        env = dict(os.environ)
        env.update(
            GATEZ_ADMIN_TOKEN=self.admin_token,
            GATEZ_CONTROL_ADDRESS=self.control_address,
            GATEZ_REDIS_URL=self.redis_url,
            GATEZ_CLICKHOUSE_DSN=f"chdb://{self.state_dir / 'clickhouse'}",
            GATEZ_QDRANT_PATH=str(self.state_dir / "qdrant"),
            GATEZ_EXTPROC_ADDRESS=f"unix:{self.extproc_socket}",
            GATEZ_NODE_ID=self.node_id,
            GATEZ_LOG_LEVEL=self.log_level,
        )
        env.update(self.extra_env)
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
        config = self.config
        directory = config.state_dir / "redis"
        directory.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes"] if config.persist_redis else ["--appendonly", "no"]
        self._spawn(
            "redis",
            [
                require_binary("redis-server"),
                "--bind", "127.0.0.1",
                "--port", str(config.redis_port),
                "--unixsocket", str(config.redis_socket.resolve()),
                "--unixsocketperm", "700",
                "--dir", str(directory),
                "--save", "",
                *persistence,
            ],
        )  # fmt: skip
        wait_for_port(config.redis_port)

    def start_control(self) -> None:
        self._spawn("control", [sys.executable, "-m", "control"], self.config.environment())
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
        self._spawn("dataplane", [sys.executable, "-m", "extproc"], env)
        _wait_for_file(socket, timeout_s=60, process=self.processes["dataplane"])

    def start_envoy(self) -> None:
        config = self.config
        path = config.state_dir / "envoy.yaml"
        path.write_text(
            render(
                listen_port=config.listen_port,
                admin_port=config.envoy_admin_port,
                extproc_socket=str(config.extproc_socket),
            )
        )
        self._spawn(
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
            APISIX_LISTEN_ADDRESS=f"unix:{socket}",
            APISIX_CONF_EXPIRE_TIME="3600",
        )
        self._spawn("dataplane", [sys.executable, "-m", "extproc.apisix"], env)
        _wait_for_file(socket, timeout_s=60, process=self.processes["dataplane"])

    def start_apisix(self) -> None:
        """The APISIX stand-in in front of the runner (APISIX itself cannot run here)."""
        config = self.config
        socket = config.apisix_socket
        self._spawn(
            "apisix",
            [
                sys.executable, "-m", "gatez.testing.apisix",
                "--port", str(config.listen_port),
                "--runner-socket", str(socket),
                "--upstream", config.apisix_upstream,
            ],
        )  # fmt: skip
        wait_for_port(config.listen_port, timeout_s=30)

    def start_demo_upstream(self, port: int, api_key: str) -> None:
        self._spawn(
            "upstream",
            [
                sys.executable, "-m", "gatez.demo.openai_upstream",
                "--host", "127.0.0.1", "--port", str(port), "--api-key", api_key,
            ],
        )  # fmt: skip
        wait_for_port(port)

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

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_file = (self.logs / f"{name}.log").open("ab")
        self._log_files[name] = log_file
        self.processes[name] = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )


def _wait_for_file(path: Path, timeout_s: float, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear in {timeout_s}s")
        time.sleep(0.02)


QUICKSTART = """
Gatez is up.

  Gateway (Envoy)  {gateway}     point OpenAI SDKs at {gateway}/v1
  Control (gRPC)   {control}   admin token: $GATEZ_ADMIN_TOKEN ({token_note})
  Demo tenant key  {key_note}
  Demo upstream    {upstream}   an offline OpenAI-compatible echo model
  Logs             {logs}/

Try it:

  .venv/bin/python - <<'PY'
  from openai import OpenAI
  client = OpenAI(base_url="{gateway}/v1", api_key="{key}")
  reply = client.chat.completions.create(
      model="gpt-4o-mini", messages=[{{"role": "user", "content": "hello gateway"}}])
  print(reply.choices[0].message.content, reply.usage)
  PY

  grpcurl -plaintext -H "authorization: Bearer {token}" {control} list
  grpcurl -plaintext -H "authorization: Bearer {token}" \\
      -d '{{"tenant_id": "demo"}}' {control} gatez.v1.ControlService/ListAiLogs

Ctrl-C stops everything.
"""


def main() -> None:
    """`make run`: the whole stack on 127.0.0.1 in the foreground, with the demo seeded."""
    import asyncio

    from gatez.admin import AdminClient, seed_demo

    state_dir = Path(os.environ.get("GATEZ_STATE_DIR", ".gatez")).resolve()
    config = StackConfig(state_dir=state_dir)
    config.admin_token = os.environ.get("GATEZ_ADMIN_TOKEN", DEV_ADMIN_TOKEN)
    demo_key = os.environ.get("GATEZ_DEMO_KEY", DEV_DEMO_KEY)
    upstream_port = int(os.environ.get("GATEZ_DEMO_UPSTREAM_PORT", "18000"))
    upstream_key = "demo-upstream-key"
    stack = Stack(config)
    # Ctrl-C reaches every child (one process group); SIGTERM to the launcher stops them too.
    # SIGINT is set explicitly: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        stack.start()
        stack.start_demo_upstream(upstream_port, upstream_key)

        async def seed() -> None:
            async with AdminClient(config.control_address, config.admin_token) as admin:
                await seed_demo(
                    admin,
                    demo_key=demo_key,
                    upstream_url=f"http://127.0.0.1:{upstream_port}/v1",
                    upstream_key=upstream_key,
                )

        asyncio.run(seed())
        print(
            QUICKSTART.format(
                gateway=config.gateway_url,
                control=config.control_address,
                token=config.admin_token,
                token_note="the dev default" if "GATEZ_ADMIN_TOKEN" not in os.environ else "set",
                key=demo_key,
                key_note=f"$GATEZ_DEMO_KEY = {demo_key}",
                upstream=f"http://127.0.0.1:{upstream_port}/v1",
                logs=stack.logs,
            ),
            flush=True,
        )
        while True:
            for name, process in stack.processes.items():
                if process.poll() is not None:
                    raise SystemExit(f"{name} exited with {process.returncode}; see {stack.logs}")
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping…", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
