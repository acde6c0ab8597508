"""Pointing the proxy at an upstream: the one way routing stages say where a request goes.

On Envoy the cluster header picks one of the two dynamic-forward-proxy clusters (plain or TLS),
`:authority` the host, and clearing the route cache makes Envoy read them again; the APISIX
adapter turns the same changes into a Rewrite.
"""

from __future__ import annotations

from typing import Final

from gatez.pipeline import Flow

CLUSTER_HEADER: Final = "x-gatez-cluster"


def route_to(flow: Flow, *, cluster: str, authority: str, path: str) -> None:
    """Sends the request to `authority` over `cluster` with `path` (query included)."""
    flow.set_upstream_header(CLUSTER_HEADER, cluster)
    flow.set_upstream_header(":authority", authority)
    flow.set_upstream_header(":path", path)
    flow.pending.clear_route_cache = True
