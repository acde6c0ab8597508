"""A Redis client for the data plane's hot path: one connection, every command pipelined.

Why not redis-py here: its asyncio client takes a pooled connection, wraps each command in
retry and observability layers, and writes through asyncio streams — measured on the chat path
it cost more CPU than the whole rest of the rate-limit stage. This client keeps one connection
per process, writes every command a loop turn produced in one write, and reads replies in order
with hiredis's C parser. A command cancelled by its caller (a timeout) leaves the connection
usable: its reply is read and dropped in turn. When the connection is lost, every waiting command
fails with `ConnectionError` and the next command connects again.

The control plane, which is not on the hot path, keeps redis-py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from gatez.pipeline.futures import copy_outcome

Arg = bytes | str | int | float


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (`-ERR ...`)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    tls: bool = False

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        """`redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS), `unix:///path?db=N`."""
        parts = urlsplit(url)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            db = int(parse_qs(parts.query).get("db", ["0"])[0])
            return cls(unix_path=parts.path, username=username, password=password, db=db)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        path = parts.path.strip("/")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            username=username,
            password=password,
            db=int(path) if path else 0,
            tls=parts.scheme == "rediss",
        )


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script run by its SHA-1 (EVALSHA), loaded on the first NOSCRIPT."""

    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())


def encode_command(args: Sequence[Arg]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _RespConnection(asyncio.Protocol):
    """One connection: commands out in order, replies matched to waiters in the same order."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._reader = hiredis.Reader()
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._out: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queues a command for the write at the end of this loop turn."""
        if self.lost:
            raise ConnectionError("Redis connection lost")
        loop = asyncio.get_running_loop()
        if not self._out:
            loop.call_soon(self._flush)
        self._out.append(command)
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiters.append(waiter)
        return waiter

    def _flush(self) -> None:
        if self._out and self._transport is not None and not self.lost:
            self._transport.write(b"".join(self._out))
        self._out.clear()

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as error:
                self._fail(ConnectionError(f"Redis protocol error: {error}"))
                if self._transport is not None:
                    self._transport.abort()
                return
            if reply is False:
                return
            if not self._waiters:
                continue  # a reply nobody waits for (cannot happen with in-order pipelining)
            waiter = self._waiters.popleft()
            if waiter.done():
                continue  # its caller gave up (a timeout); the reply is dropped in order
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(RedisReplyError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(error)

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.close()


class PipelinedRedis:
    """The hot-path Redis client (see the module docstring). Build once; `close()` at the end."""

    def __init__(self, address: RedisAddress, *, connect_timeout_s: float = 1.0) -> None:
        self._address = address
        self._connect_timeout_s = connect_timeout_s
        self._connection: _RespConnection | None = None
        self._connecting: asyncio.Future[_RespConnection] | None = None
        # Commands that failed (error reply, connection refused or lost), for metrics.
        self.errors = 0

    @classmethod
    def from_url(cls, url: str, **options: float) -> PipelinedRedis:
        return cls(RedisAddress.from_url(url), **options)

    async def execute(self, *args: Arg) -> Any:
        """Runs one command; raises `RedisReplyError` for an error reply, `OSError` when Redis
        cannot be reached."""
        try:
            connection = self._connection
            if connection is None or connection.lost:
                connection = await self._connect()
            return await connection.send(encode_command(args))
        except (OSError, RedisReplyError) as error:
            if not str(error).startswith("NOSCRIPT"):
                self.errors += 1
            raise

    def submit_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """Queues a script call for this loop turn's write and returns its reply as a future:
        for a check that runs while the caller goes on (the rate limit, overlapping Envoy
        sending the body). Written after what the current callback writes — measured, waking
        Envoy before Redis gives the lower latency, Envoy's round trip being the longer one.
        Falls back to `run_script` in a task when not connected; a NOSCRIPT reply is retried
        with EVAL."""
        connection = self._connection
        if connection is None or connection.lost:
            return asyncio.ensure_future(self.run_script(script, keys, args))
        first = connection.send(encode_command(("EVALSHA", script.sha, len(keys), *keys, *args)))
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(sent: asyncio.Future[Any]) -> None:
            error = None if sent.cancelled() else sent.exception()
            if isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT"):
                if not reply.done():  # unless the caller gave up already
                    retry = asyncio.ensure_future(
                        self.execute("EVAL", script.source, len(keys), *keys, *args)
                    )
                    retry.add_done_callback(settle)
                return
            if error is not None and sent is first:  # a retry's error was counted by execute
                self.errors += 1
            copy_outcome(reply, sent)

        first.add_done_callback(settle)
        return reply

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """EVALSHA, falling back to EVAL (which also caches the script) after a NOSCRIPT."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except RedisReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
        return await self.execute("EVAL", script.source, len(keys), *keys, *args)

    async def _connect(self) -> _RespConnection:
        # Callers arriving while a connection is being made share it.
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._open())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if connecting.done():
                self._connecting = None

    async def _open(self) -> _RespConnection:
        loop = asyncio.get_running_loop()
        address = self._address
        async with asyncio.timeout(self._connect_timeout_s):
            if address.unix_path:
                _, connection = await loop.create_unix_connection(
                    _RespConnection, address.unix_path
                )
            else:
                _, connection = await loop.create_connection(
                    _RespConnection,
                    address.host,
                    address.port,
                    ssl=ssl.create_default_context() if address.tls else None,
                )
            setup: list[asyncio.Future[Any]] = []
            if address.password:
                credentials = (
                    [address.username, address.password] if address.username else [address.password]
                )
                setup.append(connection.send(encode_command(["AUTH", *credentials])))
            if address.db:
                setup.append(connection.send(encode_command(["SELECT", address.db])))
            try:
                for reply in setup:
                    await reply
            except BaseException:
                connection.close()
                raise
        self._connection = connection
        return connection

    async def close(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            with contextlib.suppress(BaseException):
                await self._connecting
        if self._connection is not None:
            self._connection.close()
            self._connection = None
