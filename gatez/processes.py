"""Starting and stopping the binaries the stack runs (redis-server, Envoy, APISIX).

A missing binary is an error, never a skip: the set-up (`make run`, `make test`) installs them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str) -> str:
    """The path of `name`: from the virtualenv first, then PATH. Raises when it is missing."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed; run `make test`, which installs it")
    return found


def wait_for_port(port: int, timeout_s: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout_s}s")


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_private(path: Path, text: str) -> None:
    """Writes `text` to a file only its owner can read or write (0600), replaced whole; the file
    is created with that mode, never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    with open(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        os.fchmod(out.fileno(), 0o600)  # a leftover partial file keeps its old mode otherwise
        out.write(text)
    os.replace(partial, path)


def redis_config(
    *,
    port: int,
    directory: Path,
    password: str,
    unix_socket: Path | None = None,
    append_only: bool = False,
    cluster: bool = False,
    extra: Sequence[tuple[str, str]] = (),
) -> str:
    """A redis-server config file: loopback only, a password for every client (TCP and Unix
    socket alike), the socket usable by its owner only, AOF persistence when asked.

    The password goes in the file (written with `write_private`), not on the command line,
    where any local user could read it in the process list."""
    directives: list[tuple[str, str]] = [
        ("bind", "127.0.0.1"),
        ("port", str(port)),
        ("protected-mode", "yes"),
        ("requirepass", password),
        ("dir", str(directory)),
        # No RDB snapshots: with AOF on, the append-only file is the copy that counts.
        ("save", ""),
        ("appendonly", "yes" if append_only else "no"),
        # At most one second of writes lost on a crash of the machine; none on a crash of Redis.
        ("appendfsync", "everysec"),
    ]
    if unix_socket is not None:
        directives += [("unixsocket", str(unix_socket)), ("unixsocketperm", "700")]
    if cluster:
        directives += [
            ("cluster-enabled", "yes"),
            ("cluster-config-file", "nodes.conf"),
            # Replicas and the redis-cli --cluster tool log in to other nodes with this.
            ("masterauth", password),
        ]
    directives += extra
    return "".join(f"{name} {_quoted(value)}\n" for name, value in directives)


def _quoted(value: str) -> str:
    """A value as redis-server's config parser reads a double-quoted string (sdssplitargs):
    paths with spaces and any password survive."""
    escaped = "".join(
        f"\\{c}" if c in '"\\' else f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c
        for c in value
    )
    return f'"{escaped}"'
