"""Renders `envoy/envoy.yaml` for one deployment (ports, the data plane's socket)."""

from __future__ import annotations

from pathlib import Path
from string import Template

TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "envoy.yaml"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def render(
    *,
    listen_port: int,
    admin_port: int,
    extproc_socket: str,
    listen_address: str = "127.0.0.1",
    ca_bundle: str = CA_BUNDLE,
    message_timeout: str = "5s",
) -> str:
    """The bootstrap YAML with every placeholder filled (a missing one is an error)."""
    return Template(TEMPLATE.read_text()).substitute(
        LISTEN_ADDRESS=listen_address,
        LISTEN_PORT=listen_port,
        ADMIN_PORT=admin_port,
        EXTPROC_SOCKET=extproc_socket.removeprefix("unix:"),
        CA_BUNDLE=ca_bundle,
        MESSAGE_TIMEOUT=message_timeout,
    )
