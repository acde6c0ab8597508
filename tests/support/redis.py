"""A private redis-server for tests: a free loopback port and a Unix socket, a password required
on both (as the stack runs it)."""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from urllib.parse import quote

from gatez.processes import (
    free_port,
    redis_config,
    require_binary,
    stop_process,
    wait_for_port,
    write_private,
)


class RedisServer:
    """A private redis-server on a free loopback port and a Unix socket in `directory`, with
    its data there too. `url` and `unix_url` carry the password."""

    def __init__(
        self, directory: Path, port: int | None = None, password: str | None = None
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(18)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"

    @property
    def unix_url(self) -> str:
        return f"unix://:{quote(self.password, safe='')}@{self.socket}?db=0"

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "redis.conf"
        write_private(
            config,
            redis_config(
                port=self.port,
                directory=self.directory,
                password=self.password,
                unix_socket=self.socket,
            ),
        )
        self.process = subprocess.Popen(
            [require_binary("redis-server"), str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
