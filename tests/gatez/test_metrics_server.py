"""`/metrics` on an address another process still holds (an APISIX reload runs the new runner
beside the old one): served as soon as the port is free, and stoppable before that."""

from __future__ import annotations

import socket
import time
import urllib.request

from prometheus_client import CollectorRegistry, Counter

from gatez.processes import free_port
from gatez.telemetry import LateMetricsServer


def _held(port: int) -> socket.socket:
    holder = socket.socket()
    # Connections just closed leave TIME_WAIT behind; a listener on the port still refuses.
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


def test_a_held_metrics_port_is_served_once_its_holder_lets_go() -> None:
    registry = CollectorRegistry()
    Counter("gatez_test_late", "A counter only this registry has.", registry=registry).inc()
    port = free_port()
    holder = _held(port)
    late = LateMetricsServer(f"127.0.0.1:{port}", registry, retry_s=0.05)
    try:
        time.sleep(0.2)
        assert late.server is None
        holder.close()
        deadline = time.monotonic() + 5
        while late.server is None:
            assert time.monotonic() < deadline, "the freed port was never taken"
            time.sleep(0.02)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        assert b"gatez_test_late_total 1.0" in body
    finally:
        late.stop()
    # Stopped: the port is free again.
    _held(port).close()


def test_stopping_before_the_port_is_free_ends_the_retries() -> None:
    port = free_port()
    holder = _held(port)
    try:
        late = LateMetricsServer(f"127.0.0.1:{port}", CollectorRegistry(), retry_s=0.05)
        late.stop()
        assert late.server is None and not late._thread.is_alive()
    finally:
        holder.close()
