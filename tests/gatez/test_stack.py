"""The stack's redis-server as `make run` starts it: a password on TCP and the Unix socket, none
of it readable by other users or in the process list, and the control state kept across a
crash of Redis (AOF)."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest

from control.store import PolicyStore
from gatez.processes import redis_config
from gatez.redis_client import RedisTarget, connect
from gatez.settings import Settings
from gatez.stack import Stack, StackConfig


def ask(address: tuple[str, int] | str, *commands: bytes) -> bytes:
    """Sends inline commands on a fresh connection (TCP or Unix socket) and returns what Redis
    answers to them, as a client with no library in between would see it."""
    family = socket.AF_INET if isinstance(address, tuple) else socket.AF_UNIX
    with socket.socket(family) as connection:
        connection.settimeout(5)
        connection.connect(address)
        connection.sendall(b"".join(command + b"\r\n" for command in commands))
        reply = b""
        while reply.count(b"\r\n") < len(commands):
            reply += connection.recv(4096)
        return reply


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def stack(tmp_path: Path) -> Stack:
    return Stack(StackConfig.ephemeral(tmp_path / "stack"))


def test_the_stack_redis_refuses_clients_without_its_password(stack: Stack) -> None:
    config = stack.config
    try:
        stack.start_redis()
        password = config.redis_password_file.read_text().strip()
        assert len(password) >= 32

        for address in (("127.0.0.1", config.redis_port), str(config.redis_socket)):
            # Any command from a client that has not logged in is refused, on both paths.
            assert ask(address, b"SET k v") == b"-NOAUTH Authentication required.\r\n"
            assert ask(address, b"AUTH wrong").startswith(b"-WRONGPASS")
            assert ask(address, b"AUTH " + password.encode(), b"PING") == b"+OK\r\n+PONG\r\n"

        # Only this user may read the password or use the socket and the data directory.
        assert mode(config.redis_password_file) == 0o600
        assert mode(config.redis_dir / "redis.conf") == 0o600
        assert mode(config.redis_dir) == 0o700
        assert mode(config.redis_socket) & 0o077 == 0
        # Not on redis-server's command line, nor in the stack processes' environment.
        pid = stack.processes["redis"].pid
        assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
        environment = config.environment()
        assert environment["GATEZ_REDIS_PASSWORD_FILE"] == str(config.redis_password_file)
        assert not any(password in value for value in environment.values())
    finally:
        stack.stop()

    # A restart keeps the password (running clients and tools hold it).
    stack.start_redis()
    try:
        assert config.redis_password_file.read_text().strip() == password
        assert ask(("127.0.0.1", config.redis_port), b"AUTH " + password.encode()) == b"+OK\r\n"
    finally:
        stack.stop()


async def test_the_control_state_survives_a_crash_of_redis(tmp_path: Path) -> None:
    config = StackConfig.ephemeral(tmp_path / "stack")
    config.persist_redis = True  # as `make run`
    stack = Stack(config)
    try:
        stack.start_redis()
        # The control service's store, as it connects (settings from the stack's environment).
        target = RedisTarget.from_settings(Settings.from_env(config.environment()))
        client = await connect(target)
        store = PolicyStore(client)
        await store.start()
        _, version = await store.update(lambda draft: draft.tenants.add(id="acme"))
        await store.stop()
        await client.aclose()

        stack.processes["redis"].kill()  # no shutdown of its own: what reached the AOF counts
        stack.stop_process("redis")
        stack.start_redis()

        client = await connect(target)
        store = PolicyStore(client)  # a control service starting afresh
        await store.start()
        assert store.current.version == version
        assert [tenant.id for tenant in store.current.tenants] == ["acme"]
        await store.stop()
        assert await client.config_get("append*") == {
            "appendonly": "yes",
            "appendfsync": "everysec",
            "appenddirname": "appendonlydir",
            "appendfilename": "appendonly.aof",
        }
        await client.aclose()
    finally:
        stack.stop()


def test_redis_config_values_are_quoted_for_redis_server(tmp_path: Path) -> None:
    # A path with a space and a password with quotes, a backslash and a tab survive.
    text = redis_config(
        port=6380, directory=tmp_path / "with space", password='p"w\\x\ty', append_only=True
    )
    assert f'dir "{tmp_path}/with space"\n' in text
    assert 'requirepass "p\\"w\\\\x\\x09y"\n' in text
    assert 'appendonly "yes"\n' in text and 'appendfsync "everysec"\n' in text


def test_make_run_takes_the_redis_password_from_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEZ_REDIS_PASSWORD", "chosen-by-the-operator")
    config = StackConfig.ephemeral(tmp_path / "stack")
    config.external_redis_url = "redis://127.0.0.1:1"  # only the password file is written
    Stack(config).start_redis()

    assert config.redis_password_file.read_text() == "chosen-by-the-operator\n"
    assert mode(config.redis_password_file) == 0o600
    # The stack's processes read the file; the variable itself is not passed on.
    assert "GATEZ_REDIS_PASSWORD" not in config.environment()
