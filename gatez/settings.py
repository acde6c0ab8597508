"""Settings for every Gatez process, read once from the environment.

Every value has a single-node default so `make run` needs no configuration. Secrets are kept
out of `repr`; the data-plane credential and the secret key are read by `gatez.secrets` from the
variable, or else from its file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from gatez.envoy_config import CA_BUNDLE

DEV_ADMIN_TOKEN = "gatez-dev-admin-token"
DEV_DEMO_KEY = "gz-demo-key-0123456789abcdef"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where things are and which secrets to use. Built by `Settings.from_env()`."""

    state_dir: Path
    admin_token: str = field(repr=False)
    # Data planes' credential to the control service (tokens, comma-separated, the first sent);
    # when empty, the file's lines.
    dataplane_token: str = field(repr=False)
    dataplane_token_file: Path
    # AES-256 keys in base64 (comma-separated, the first seals) for provider credentials at rest;
    # when empty, the file's lines.
    secret_key: str = field(repr=False)
    secret_key_file: Path
    control_address: str
    extproc_address: str
    # "h2" (extproc.grpc_h2, the default) or "grpcio" (grpc.aio, a slower fallback).
    extproc_server: str
    redis_url: str = field(repr=False)  # it may hold a password
    # A file holding the Redis password (instead of putting it in the URL); see gatez.redis_client.
    redis_password_file: Path | None
    clickhouse_dsn: str
    qdrant_path: str
    node_id: str
    log_level: str
    # Disk a data plane may fill with log rows while the log store is away (its spool).
    spool_max_bytes: int
    # host:port serving Prometheus `/metrics` ("" = not served). Traces are configured by the
    # standard OTEL_* variables (see gatez.telemetry.tracing).
    metrics_address: str = ""
    # A stage call that went on at once is a span of its own from this long (µs; 0: all).
    trace_stage_min_us: float = 100.0
    # Behind Envoy: the directory Envoy watches for fallback chains' clusters, which the data
    # plane writes (None: not written, and a chain's failed call is answered, not moved on).
    envoy_cds_dir: Path | None = None
    # The CA certificates the chain clusters check providers' certificates against (Envoy's).
    upstream_ca_bundle: str = CA_BUNDLE
    # A Qdrant server for the semantic cache, shared by data planes ("": each data plane's own
    # local Qdrant at `qdrant_path`; see gatez.semantic_cache).
    qdrant_url: str = ""
    # A spaCy pipeline for PERSON and LOCATION in PII policies: an installed package name
    # (`en_core_web_sm`) or a saved pipeline's directory; "" (the default): no NER, and policies
    # naming those types are refused. Never downloaded. The control service and every data
    # plane must agree on it (see gatez.pii.configure_ner).
    pii_ner_model: str = ""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        state_dir = Path(env.get("GATEZ_STATE_DIR", ".gatez")).resolve()
        return cls(
            state_dir=state_dir,
            admin_token=env.get("GATEZ_ADMIN_TOKEN", DEV_ADMIN_TOKEN),
            dataplane_token=env.get("GATEZ_DATAPLANE_TOKEN", ""),
            dataplane_token_file=_path(
                env, "GATEZ_DATAPLANE_TOKEN_FILE", state_dir, "dataplane.token"
            ),
            secret_key=env.get("GATEZ_SECRET_KEY", ""),
            secret_key_file=_path(env, "GATEZ_SECRET_KEY_FILE", state_dir, "secret.key"),
            control_address=env.get("GATEZ_CONTROL_ADDRESS", "127.0.0.1:4001"),
            extproc_address=env.get("GATEZ_EXTPROC_ADDRESS", f"unix:{state_dir / 'extproc.sock'}"),
            extproc_server=_choice(env, "GATEZ_EXTPROC_SERVER", ("h2", "grpcio")),
            redis_url=env.get("GATEZ_REDIS_URL", "redis://127.0.0.1:6380/0"),
            redis_password_file=_optional_path(env.get("GATEZ_REDIS_PASSWORD_FILE")),
            clickhouse_dsn=env.get("GATEZ_CLICKHOUSE_DSN", f"chdb://{state_dir / 'clickhouse'}"),
            qdrant_path=env.get("GATEZ_QDRANT_PATH", str(state_dir / "qdrant")),
            node_id=env.get("GATEZ_NODE_ID", f"dataplane-{os.getpid()}"),
            log_level=env.get("GATEZ_LOG_LEVEL", "INFO"),
            spool_max_bytes=int(env.get("GATEZ_SPOOL_MAX_MB", "1024")) * 1024 * 1024,
            metrics_address=env.get("GATEZ_METRICS_ADDRESS", ""),
            trace_stage_min_us=float(env.get("GATEZ_TRACE_STAGE_MIN_US", "100")),
            envoy_cds_dir=_optional_path(env.get("GATEZ_ENVOY_CDS_DIR")),
            upstream_ca_bundle=env.get("GATEZ_UPSTREAM_CA_BUNDLE", CA_BUNDLE),
            qdrant_url=env.get("GATEZ_QDRANT_URL", ""),
            pii_ner_model=env.get("GATEZ_PII_NER_MODEL", "").strip(),
        )

    @property
    def clickhouse_is_embedded(self) -> bool:
        """chDB runs in-process and single-writer: the control service owns it."""
        return self.clickhouse_dsn.startswith("chdb://")


def _optional_path(value: str | None) -> Path | None:
    return Path(value).resolve() if value else None


def _choice(env: dict[str, str], name: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, allowed[0])
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


def _path(env: dict[str, str], name: str, state_dir: Path, default: str) -> Path:
    value = env.get(name)
    return Path(value).resolve() if value else state_dir / default
