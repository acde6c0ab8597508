"""Redis clients for the data plane's hot path: one connection per Redis node, every command
pipelined.

Why not redis-py here: its asyncio client takes a pooled connection per command, wraps each in
retry and observability layers, and writes through asyncio streams. These clients keep one
connection per node, write every command a loop turn produced in one write, and read replies
in order with hiredis's C parser. A command cancelled by its caller (a timeout) leaves the
connection usable: its reply is read and dropped in turn. When the connection is lost, every
waiting command fails with `ConnectionError` and the next command connects again.

Measured (2-core VM shared with other work, uvloop; 2026-12):
- per rate-limit call (`python -m bench.redis_clients`: the GCRA script, 16 calls in flight):
  PipelinedRedis 6.4-6.5 us of CPU per call against redis-py's `Redis` 43-47 us (7x less);
  PipelinedRedisCluster 13-15.5 us against redis-py's `RedisCluster` 55-68 us (4x less).
- per request on the chat path (`python -m bench.dataplane`, 3 runs each): 0.133-0.146 ms of
  CPU per request with PipelinedRedis against 0.169-0.177 ms with redis-py (+25%); when every
  request makes a Redis call (a tenant whose burst allows no lease ahead), 0.165 ms against
  0.22-0.24 ms (+35-45%). On a 3-node Redis Cluster, 0.142-0.148 ms (0.166-0.176 ms).
So the hot path keeps these clients; the control plane, which is not on it, uses redis-py.

`hot_path_client` builds the right one from a `gatez.redis_client.RedisTarget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final, Protocol, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.crc import key_slot

from gatez.pipeline.futures import copy_outcome
from gatez.redis_client import RedisTarget

log = logging.getLogger("gatez.redis")

Arg = bytes | str | int | float


class RedisReplyError(Exception):
    """Redis answered a command with an error reply (`-ERR ...`)."""


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    unix_path: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
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
        # None: a reply nobody waits for (ASKING's +OK), read and dropped in turn.
        self._waiters: deque[asyncio.Future[Any] | None] = deque()
        self._out: list[bytes] = []
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Queues a command for the write at the end of this loop turn."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(command, waiter)
        return waiter

    def send_unanswered(self, command: bytes) -> None:
        """Queues a command whose reply is dropped (ASKING: the next command's answer says all)."""
        self._queue(command, None)

    def _queue(self, command: bytes, waiter: asyncio.Future[Any] | None) -> None:
        if self.lost:
            raise ConnectionError("Redis connection lost")
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(command)
        self._waiters.append(waiter)

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
            if waiter is None or waiter.done():
                continue  # unanswered, or its caller gave up (a timeout): dropped in order
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
            if waiter is not None and not waiter.done():
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

    @property
    def address(self) -> RedisAddress:
        return self._address

    def submit(self, *args: Arg, asking: bool = False) -> asyncio.Future[Any]:
        """Queues one command for this loop turn's write and returns its reply as a future
        (`RedisReplyError` for an error reply, `OSError` when Redis cannot be reached). Not
        connected: connects first, in a task. `asking`: preceded by ASKING on the same
        connection (a Redis Cluster's ASK redirection)."""
        connection = self._connection
        if connection is None or connection.lost:
            return asyncio.ensure_future(self._submit_connected(args, asking))
        return _send(connection, args, asking)

    async def _submit_connected(self, args: Sequence[Arg], asking: bool) -> Any:
        return await _send(await self._connect(), args, asking)

    async def execute(self, *args: Arg) -> Any:
        """Runs one command; raises `RedisReplyError` for an error reply, `OSError` when Redis
        cannot be reached."""
        try:
            return await self.submit(*args)
        except (OSError, RedisReplyError) as error:
            if not str(error).startswith("NOSCRIPT"):
                self.errors += 1
            raise

    def submit_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg], *, asking: bool = False
    ) -> asyncio.Future[Any]:
        """Queues a script call for this loop turn's write and returns its reply as a future:
        for a check that runs while the caller goes on (the rate limit, overlapping Envoy
        sending the body). Written after what the current callback writes — measured, waking
        Envoy before Redis gives the lower latency, Envoy's round trip being the longer one.
        Sent as EVALSHA; a NOSCRIPT reply is retried with EVAL (which also caches the script).
        Keys in different hash slots are refused here too, so a script that would fail on a
        Redis Cluster fails on one redis-server as well."""
        if len(keys) > 1:
            _slot_of(keys)
        first = self.submit("EVALSHA", script.sha, len(keys), *keys, *args, asking=asking)
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def settle(sent: asyncio.Future[Any]) -> None:
            error = None if sent.cancelled() else sent.exception()
            if isinstance(error, RedisReplyError) and str(error).startswith("NOSCRIPT"):
                if not reply.done():  # unless the caller gave up already
                    retry = self.submit(
                        "EVAL", script.source, len(keys), *keys, *args, asking=asking
                    )
                    retry.add_done_callback(settle)  # EVAL never answers NOSCRIPT
                return
            if error is not None and not (
                isinstance(error, RedisReplyError) and _redirection(error) is not None
            ):
                self.errors += 1  # a cluster's MOVED/ASK is a redirection, not a failure
            copy_outcome(reply, sent)

        first.add_done_callback(settle)
        return reply

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """`submit_script`, awaited."""
        return await self.submit_script(script, keys, args)

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


ASKING: Final = encode_command(["ASKING"])


def _send(connection: _RespConnection, args: Sequence[Arg], asking: bool) -> asyncio.Future[Any]:
    if asking:
        connection.send_unanswered(ASKING)  # same loop turn: the two go out back to back
    return connection.send(encode_command(args))


class PipelinedRedisCluster:
    """The hot-path client for a Redis Cluster: one `PipelinedRedis` per primary, each script
    call sent to the primary serving its keys' hash slot.

    The slot map comes from CLUSTER SLOTS (asked of the seed node, or any node known since) on
    the first call. A MOVED reply updates that slot at once, re-sends the call to the node it
    names and re-reads the whole map in the background; an ASK reply re-sends it there once,
    preceded by ASKING. At most MAX_REDIRECTS per call. TRYAGAIN, CLUSTERDOWN and a node that
    cannot be reached are errors for the caller (the rate limit fails closed); a lost node also
    has the map re-read (a failover moves its slots), at most once per REFRESH_INTERVAL_S.
    """

    def __init__(self, seed: RedisAddress, *, connect_timeout_s: float = 1.0) -> None:
        if seed.unix_path is not None:
            raise ValueError("a Redis Cluster is reached over TCP, not a Unix socket")
        if seed.db:
            raise ValueError("a Redis Cluster has database 0 only")
        self._seed = seed
        self._connect_timeout_s = connect_timeout_s
        self._nodes: dict[tuple[str, int], PipelinedRedis] = {}
        self._owners: list[PipelinedRedis | None] = [None] * SLOTS
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -math.inf

    @classmethod
    def from_url(cls, url: str, **options: float) -> PipelinedRedisCluster:
        """`redis://…` or `rediss://…` naming one node of the cluster."""
        return cls(RedisAddress.from_url(url), **options)

    def submit_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]:
        """As `PipelinedRedis.submit_script`, on the node serving the keys' slot (every key
        must be in the same slot: give them one `{hash tag}`)."""
        slot = _slot_of(keys)
        node = self._owners[slot]
        if node is None:
            # No map yet (the first call), or the slot was unserved at the last look.
            return asyncio.ensure_future(self._submit_mapped(slot, script, keys, args))
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(node, script, keys, args, reply, MAX_REDIRECTS, asking=False)
        return reply

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """`submit_script`, awaited."""
        return await self.submit_script(script, keys, args)

    @property
    def errors(self) -> int:
        """Commands that failed on any node (redirections not counted), for metrics."""
        return sum(node.errors for node in self._nodes.values())

    async def _submit_mapped(
        self, slot: int, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> Any:
        # A slot still unserved a moment after the last read fails at once: no read per call.
        if self._refreshing is not None or (
            time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL_S
        ):
            await self._refresh()
        node = self._owners[slot]
        if node is None:
            raise ConnectionError(f"no Redis Cluster node is known to serve hash slot {slot}")
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._send(node, script, keys, args, reply, MAX_REDIRECTS, asking=False)
        return await reply

    def _send(
        self,
        node: PipelinedRedis,
        script: Script,
        keys: Sequence[Arg],
        args: Sequence[Arg],
        reply: asyncio.Future[Any],
        redirects_left: int,
        *,
        asking: bool,
    ) -> None:
        def settle(sent: asyncio.Future[Any]) -> None:
            if reply.done():
                return  # the caller gave up
            error = None if sent.cancelled() else sent.exception()
            if isinstance(error, RedisReplyError) and redirects_left > 0:
                redirect = _redirection(error)
                if redirect is not None:
                    kind, slot, host, port = redirect
                    target = self._node(host, port)
                    if kind == "MOVED":
                        self._owners[slot] = target
                        self._refresh_soon()
                    self._send(
                        target, script, keys, args, reply, redirects_left - 1, asking=kind == "ASK"
                    )
                    return
            elif isinstance(error, OSError):
                self._refresh_soon()
            copy_outcome(reply, sent)

        node.submit_script(script, keys, args, asking=asking).add_done_callback(settle)

    def _node(self, host: str, port: int) -> PipelinedRedis:
        node = self._nodes.get((host, port))
        if node is None:
            address = replace(self._seed, host=host, port=port)
            node = PipelinedRedis(address, connect_timeout_s=self._connect_timeout_s)
            self._nodes[host, port] = node
        return node

    def _refresh_soon(self) -> None:
        """Re-reads the slot map in the background, unless that happened less than
        REFRESH_INTERVAL_S ago or is under way."""
        if self._refreshing is not None or (
            time.monotonic() - self._refreshed_at < REFRESH_INTERVAL_S
        ):
            return
        asyncio.ensure_future(self._refresh()).add_done_callback(_log_refresh_failure)

    async def _refresh(self) -> None:
        """Reads the slot map; callers arriving meanwhile share the one read."""
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._read_slot_map())
        refreshing = self._refreshing
        try:
            await asyncio.shield(refreshing)
        finally:
            if refreshing.done() and self._refreshing is refreshing:
                self._refreshing = None

    async def _read_slot_map(self) -> None:
        self._refreshed_at = time.monotonic()
        seed = self._node(self._seed.host, self._seed.port)
        failures: list[str] = []
        for node in dict.fromkeys([seed, *self._nodes.values()]):
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    shards = await node.execute("CLUSTER", "SLOTS")
            except (OSError, RedisReplyError, TimeoutError) as error:
                failures.append(f"{node.address.host}:{node.address.port}: {error!r}")
                continue
            self._apply(shards, node.address.host)
            return
        raise ConnectionError(f"no Redis Cluster node gave its slot map ({'; '.join(failures)})")

    def _apply(self, shards: list[Any], asked_host: str) -> None:
        owners: list[PipelinedRedis | None] = [None] * SLOTS
        for first, last, primary, *_replicas in shards:
            host = primary[0].decode() if primary[0] else ""
            # An empty or "?" endpoint means "where you asked" (CLUSTER SLOTS in Redis 7).
            node = self._node(asked_host if host in ("", "?") else host, int(primary[1]))
            owners[first : last + 1] = [node] * (last - first + 1)
        self._owners = owners

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            with contextlib.suppress(BaseException):
                await self._refreshing
        for node in list(self._nodes.values()):
            await node.close()
        self._nodes.clear()


SLOTS: Final = 16384
# Redirections followed per call: one MOVED after a reshard, maybe an ASK during one.
MAX_REDIRECTS: Final = 3
# A lost node has the slot map re-read at most this often.
REFRESH_INTERVAL_S: Final = 1.0


def _slot_of(keys: Sequence[Arg]) -> int:
    if not keys:
        raise ValueError("a script sent to a Redis Cluster needs a key to route it")
    slots = {key_slot(_key_bytes(key)) for key in keys}
    if len(slots) > 1:
        raise ValueError("the keys of one script must share a hash slot: give them one {tag}")
    return slots.pop()


def _key_bytes(key: Arg) -> bytes:
    return key if isinstance(key, bytes) else str(key).encode()


def _redirection(error: RedisReplyError) -> tuple[str, int, str, int] | None:
    """("MOVED" | "ASK", slot, host, port) from a redirection reply, else None."""
    kind, _, rest = str(error).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    slot, _, endpoint = rest.partition(" ")
    host, _, port = endpoint.rpartition(":")
    return kind, int(slot), host, int(port)


def _log_refresh_failure(refresh: asyncio.Future[None]) -> None:
    if not refresh.cancelled() and (error := refresh.exception()) is not None:
        log.warning("could not re-read the Redis Cluster slot map: %r", error)


class ScriptClient(Protocol):
    """What the data plane's stages need from Redis: scripts run by SHA, replies as futures.
    Both `PipelinedRedis` and `PipelinedRedisCluster` are one."""

    def submit_script(
        self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]
    ) -> asyncio.Future[Any]: ...

    async def close(self) -> None: ...

    @property
    def errors(self) -> int:
        """Commands that failed (error reply, connection refused or lost), for metrics."""
        ...


def hot_path_client(target: RedisTarget, *, connect_timeout_s: float = 1.0) -> ScriptClient:
    """The data plane's Redis client for `target` (see gatez.redis_client): one pipelined
    connection, or one per primary of a Redis Cluster. Nothing is sent until the first call."""
    address = RedisAddress.from_url(target.url)
    if target.password is not None:
        address = replace(address, password=target.password)
    if target.cluster:
        return PipelinedRedisCluster(address, connect_timeout_s=connect_timeout_s)
    return PipelinedRedis(address, connect_timeout_s=connect_timeout_s)
