"""A private 3-node Redis Cluster for tests, assembled from `redis-server` processes: free
loopback ports, a password on every node, the 16384 slots split evenly, no replicas.

The cluster is put together by hand (CLUSTER ADDSLOTSRANGE, CLUSTER MEET) with redis-py, so the
tests need no `redis-cli`; it needs redis-server 7.0 or newer (Debian 12's), for ADDSLOTSRANGE
and `cluster-port`. Starting takes about two seconds: a new primary waits that long before it
declares the cluster OK. `move_slot` migrates one slot between nodes as a resharding does,
for tests of MOVED and ASK redirections.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import redis

from gatez.processes import (
    free_port,
    redis_config,
    require_binary,
    stop_process,
    wait_for_port,
    write_private,
)

SLOTS = 16384


class LocalRedisCluster:
    """`nodes` primaries in cluster mode, data in `directory`; `url` carries the password and
    names the first node (clients discover the others)."""

    def __init__(self, directory: Path, nodes: int = 3, password: str | None = None) -> None:
        self.directory = directory
        # The cluster bus port is set too: the default (port + 10000) may not exist.
        ports = distinct_free_ports(2 * nodes)
        self.ports, self.bus_ports = ports[:nodes], ports[nodes:]
        self.password = password or secrets.token_urlsafe(18)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis+cluster://:{quote(self.password, safe='')}@127.0.0.1:{self.ports[0]}"

    @property
    def seed_url(self) -> str:
        """`url` without the password (given to processes in a password file instead)."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def node(self, index: int) -> redis.Redis:
        """A plain (non-cluster) client of one node; close it after use."""
        return redis.Redis(port=self.ports[index], password=self.password)

    def start(self, timeout_s: float = 15.0) -> LocalRedisCluster:
        try:
            for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
                self._spawn(port, bus_port)
            for port in self.ports:
                wait_for_port(port)
            self._assemble(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, port: int, bus_port: int) -> None:
        directory = self.directory / str(port)
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "redis.conf"
        write_private(
            config,
            redis_config(
                port=port,
                directory=directory,
                password=self.password,
                cluster=True,
                extra=[("cluster-port", str(bus_port)), ("cluster-node-timeout", "3000")],
            ),
        )
        self.processes.append(
            subprocess.Popen(
                [require_binary("redis-server"), str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )

    def _assemble(self, timeout_s: float) -> None:
        count = len(self.ports)
        for index in range(count):
            with self.node(index) as node:
                first, last = SLOTS * index // count, SLOTS * (index + 1) // count - 1
                node.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
                # Distinct epochs up front, as redis-cli does: no collision to resolve later.
                node.execute_command("CLUSTER SET-CONFIG-EPOCH", index + 1)
        # Every node meets every other: the handshakes carry the slot maps at once, instead of
        # waiting for gossip to spread them (seconds).
        for index in range(count):
            with self.node(index) as node:
                for port, bus_port in zip(self.ports, self.bus_ports, strict=True):
                    if port != self.ports[index]:
                        node.execute_command("CLUSTER MEET", "127.0.0.1", port, bus_port)
        self._wait_settled(timeout_s)

    def _wait_settled(self, timeout_s: float) -> None:
        """Until every node is OK, knows every node and agrees on who owns which slot."""
        deadline = time.monotonic() + timeout_s
        while True:
            views = []
            for index in range(len(self.ports)):
                with self.node(index) as node:
                    info = node.execute_command("CLUSTER INFO")
                    slots = node.execute_command("CLUSTER SLOTS")
                ok = info["cluster_state"] == "ok" and (
                    int(info["cluster_known_nodes"]) == len(self.ports)
                )
                views.append((ok, sorted((s[0], s[1], s[2][1]) for s in slots)))
            if all(ok for ok, _ in views) and all(v[1] == views[0][1] for v in views):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Redis Cluster did not settle in {timeout_s}s")
            time.sleep(0.05)

    def node_id(self, index: int) -> str:
        with self.node(index) as node:
            return str(node.execute_command("CLUSTER MYID").decode())

    def owner(self, slot: int) -> int:
        """The index of the node that serves `slot`."""
        with self.node(0) as node:
            for first, last, primary, *_ in node.execute_command("CLUSTER SLOTS"):
                if first <= slot <= last:
                    return self.ports.index(int(primary[1]))
        raise LookupError(f"slot {slot} is not served")

    def start_migration(self, slot: int, target: int) -> int:
        """Marks `slot` as migrating from its owner to node `target` (keys not moved yet: the
        owner answers ASK for keys it no longer has). Returns the owner's index."""
        source = self.owner(slot)
        with self.node(target) as node:
            node.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", self.node_id(source))
        with self.node(source) as node:
            node.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", self.node_id(target))
        return source

    def cancel_migration(self, slot: int) -> None:
        """Clears the migrating and importing marks of `slot` everywhere (the owner stays)."""
        for index in range(len(self.ports)):
            with self.node(index) as node:
                node.execute_command("CLUSTER SETSLOT", slot, "STABLE")

    def move_slot(self, slot: int, target: int) -> None:
        """Moves `slot` and its keys to node `target`, as `redis-cli --cluster reshard` does;
        clients with the old map get MOVED."""
        source = self.start_migration(slot, target)
        with self.node(source) as node:
            while keys := node.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
                node.execute_command(
                    "MIGRATE", "127.0.0.1", self.ports[target], "", 0, 5000,
                    "AUTH", self.password, "KEYS", *keys,
                )  # fmt: skip
        target_id = self.node_id(target)
        for index in (target, source, *range(len(self.ports))):
            with self.node(index) as node:
                node.execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
        self._wait_settled(timeout_s=10)

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)
        self.processes.clear()

    def __enter__(self) -> LocalRedisCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def distinct_free_ports(count: int) -> list[int]:
    """`count` free ports, no two alike (each is released before the next is asked for)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
