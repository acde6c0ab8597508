"""Renders `envoy/envoy.yaml` for one deployment (ports, the data plane's socket, tracing, the
HTTPS listener's certificate, the directory of the fallback chains' clusters)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gatez.tls import ServerTls

TEMPLATE = Path(__file__).resolve().parent.parent / "envoy" / "envoy.yaml"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _optional_block(name: str) -> re.Pattern[str]:
    """The template's blocks `name`, each between its two marker comments (indentation
    included)."""
    return re.compile(rf"^[ \t]*# @{name}-begin\n.*?^[ \t]*# @{name}-end\n", re.M | re.S)


TRACING_BLOCK: Final = _optional_block("tracing")
TLS_BLOCK: Final = _optional_block("tls")
CHAINS_BLOCK: Final = _optional_block("chains")
# The clusters of fallback chains: named with this prefix (the routes that retry match it), in
# this file of the directory the data plane writes them to (extproc.envoy_chains).
CHAIN_CLUSTER_PREFIX: Final = "gatez-chain-"
CDS_FILE: Final = "cds.json"
# Retries of a chain call when the data plane does not say (it sets x-envoy-max-retries to the
# chain's targets left): the longest chain retried.
CHAIN_MAX_RETRIES: Final = 7
OTLP_GRPC_PORT: Final = 4317


@dataclass(frozen=True, slots=True)
class EnvoyTracing:
    """Where and how Envoy's OpenTelemetry tracer exports (OTLP/gRPC, plaintext)."""

    collector_host: str
    collector_port: int = OTLP_GRPC_PORT
    service_name: str = "gatez-envoy"
    # Of the requests that arrive without a sampling decision (no traceparent).
    sampling_percent: float = 100.0
    flush_interval_ms: int = 1000
    min_flush_spans: int = 200

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EnvoyTracing | None:
        """Envoy's tracing from the standard variables the data plane reads too, or None when
        they do not ask for trace export. The sampler's ratio becomes Envoy's sampling rate."""
        from gatez.telemetry.tracing import ENDPOINT_VARIABLES, otlp_protocol, tracing_enabled

        env = os.environ if environ is None else environ
        if not tracing_enabled(env):
            return None
        if otlp_protocol(env) != "grpc":
            raise ValueError(
                "Envoy's tracer exports OTLP over gRPC: set OTEL_EXPORTER_OTLP_PROTOCOL=grpc"
            )
        endpoint = next(env[name] for name in ENDPOINT_VARIABLES if env.get(name, "").strip())
        parts = urlsplit(endpoint.strip() if "://" in endpoint else f"http://{endpoint.strip()}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"Envoy exports traces to a plaintext OTLP/gRPC endpoint (http://host:port), "
                f"not {endpoint!r}"
            )
        return cls(
            collector_host=parts.hostname,
            collector_port=parts.port or OTLP_GRPC_PORT,
            sampling_percent=_sampling_percent(env),
        )


def _sampling_percent(env: Mapping[str, str]) -> float:
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler.endswith("always_off"):
        return 0.0
    if sampler.endswith("traceidratio"):
        try:
            ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
        except ValueError:
            ratio = 1.0
        return min(max(ratio, 0.0), 1.0) * 100
    return 100.0


def render(
    *,
    listen_port: int,
    admin_port: int,
    extproc_socket: str,
    listen_address: str = "127.0.0.1",
    ca_bundle: str = CA_BUNDLE,
    message_timeout: str = "5s",
    tracing: EnvoyTracing | None = None,
    tls_port: int = 0,
    tls: ServerTls | None = None,
    cds_dir: Path | None = None,
) -> str:
    """The bootstrap YAML with every placeholder filled (a missing one is an error); the
    tracing blocks only when `tracing` is given, the HTTPS listener on `tls_port` only when
    `tls` (its certificate) is, the fallback chains' clusters and routes only when `cds_dir`
    (where the data plane writes them) is."""
    template = TEMPLATE.read_text()
    values: dict[str, object] = {
        "LISTEN_ADDRESS": listen_address,
        "LISTEN_PORT": listen_port,
        "ADMIN_PORT": admin_port,
        "EXTPROC_SOCKET": extproc_socket.removeprefix("unix:"),
        "CA_BUNDLE": ca_bundle,
        "MESSAGE_TIMEOUT": message_timeout,
    }
    if tls is None:
        template = TLS_BLOCK.sub("", template)
    elif not 0 < tls_port < 65536:
        raise ValueError(f"the HTTPS listener needs a port, not {tls_port}")
    else:
        values.update(
            TLS_PORT=tls_port,
            TLS_CERT_FILE=tls.cert_file.resolve(),
            TLS_KEY_FILE=tls.key_file.resolve(),
        )
    if cds_dir is None:
        template = CHAINS_BLOCK.sub("", template)
    else:
        cds_dir = cds_dir.resolve()
        values.update(
            CDS_DIR=cds_dir,
            CDS_PATH=cds_dir / CDS_FILE,
            CHAIN_CLUSTER_PREFIX=CHAIN_CLUSTER_PREFIX,
            CHAIN_MAX_RETRIES=CHAIN_MAX_RETRIES,
        )
    if tracing is None:
        template = TRACING_BLOCK.sub("", template)
    else:
        values.update(
            OTLP_HOST=tracing.collector_host,
            OTLP_PORT=tracing.collector_port,
            TRACE_SERVICE_NAME=tracing.service_name,
            TRACE_SAMPLING_PERCENT=tracing.sampling_percent,
            TRACE_FLUSH_INTERVAL_MS=tracing.flush_interval_ms,
            TRACE_MIN_FLUSH_SPANS=tracing.min_flush_spans,
        )
    return Template(template).substitute(values)
