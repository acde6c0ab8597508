"""Renders APISIX 3.x's `config.yaml` and standalone `apisix.yaml` for one deployment with Gatez
as its external-plugin runner (what `gatez/envoy_config.py` is for Envoy).

The stack launcher writes both into `PREFIX/apisix/conf/` before `apisix start`; `apisix/` in the
checkout holds the commented copies an operator starts from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import yaml

from gatez.envoy_config import CA_BUNDLE

if TYPE_CHECKING:
    from gatez.tls import ServerTls

CHECKOUT: Final = Path(__file__).resolve().parent.parent
# The Gatez Lua plugin, loaded as `apisix.plugins.gatez` through `extra_lua_path`.
GATEZ_PLUGIN: Final = Path("apisix") / "plugins" / "gatez.lua"
PRE_REQ: Final = "ext-plugin-pre-req"
# Long generations need long timeouts (seconds).
LLM_TIMEOUT: Final = {"connect": 5, "send": 600, "read": 600}
# MCP: a GET stream may carry nothing for long stretches.
MCP_TIMEOUT: Final = {"connect": 5, "send": 600, "read": 3600}
UPSTREAM_TLS_VERIFY: Final = "proxy_ssl_verify on;\nproxy_ssl_verify_depth 5;\n"
# APISIX loads a standalone routes file only when it ends with this line.
END_MARKER: Final = "#END"
# The HTTPS listener's protocols (nginx's spelling), as Envoy's: TLS 1.2 and 1.3.
TLS_PROTOCOLS: Final = "TLSv1.2 TLSv1.3"
# The name APISIX matches a certificate by when the client sends no SNI.
NO_SNI_NAME: Final = "localhost"
# How the runner's refusal to start begins (on stderr, which APISIX copies into its error log).
RUNNER_REFUSAL: Final = "gatez APISIX runner: not started:"


def runner_command(python: str, *, state_dir: Path, env_file: Path | None = None) -> list[str]:
    """`ext-plugin.cmd`: the runner with its state directory (and settings file) given as
    absolute paths, so nothing depends on the directory APISIX starts it in."""
    command = [python, "-m", "extproc.apisix", "--state-dir", str(state_dir.resolve())]
    if env_file is not None:
        command += ["--env-file", str(env_file.resolve())]
    return command


def render_config(
    *,
    listen_port: int,
    runner_command: Sequence[str],
    envs: Sequence[str] = (),
    listen_address: str = "127.0.0.1",
    checkout: Path = CHECKOUT,
    ca_bundle: str = CA_BUNDLE,
    error_log: Path | None = None,
    tls_port: int = 0,
) -> str:
    """`conf/config.yaml`: standalone (routes from `conf/apisix.yaml`), one HTTP/1.1 listener
    and, when `tls_port` is not 0, an HTTPS one (its certificate is an SSL object in
    `apisix.yaml`, see `render_routes`); no admin or control API. APISIX's TLS clients trust
    `ca_bundle` only.

    `envs` are the variables nginx passes on to the runner (`NAME`, or `NAME=value` to set
    one); nginx drops every other. The Gatez Lua plugin comes from `checkout`."""
    plugins = [PRE_REQ, "gatez", "proxy-rewrite", "request-id"]
    nginx_config: dict[str, object] = {
        # This APISIX build runs with one worker only (see ../shared/apisix-runtime).
        "worker_processes": 1,
        # nginx checks no upstream certificate unless told (APISIX's `tls.verify` needs its
        # own nginx module): REST routes' https upstreams are verified like providers, against
        # `ca_bundle`, with SNI and the name from `proxy_ssl_name` (the upstream's host).
        "http_server_configuration_snippet": UPSTREAM_TLS_VERIFY,
        "envs": list(envs),
        # Gatez writes its own request logs; nginx's access log would be a second copy.
        "http": {"enable_access_log": False},
    }
    if error_log is not None:
        # Also where the runner's stdout and stderr land (APISIX relays them at `warn`).
        nginx_config["error_log"] = str(error_log)
    config = {
        "deployment": {"role": "data_plane", "role_data_plane": {"config_provider": "yaml"}},
        "apisix": {
            "node_listen": [{"ip": listen_address, "port": listen_port}],
            "enable_admin": False,
            "enable_control": False,
            # This nginx (1.22) has no `http2 on`.
            "enable_http2": False,
            "extra_lua_path": f"{checkout.resolve()}/?.lua",
            "ssl": _ssl_config(listen_address, tls_port, ca_bundle),
        },
        "nginx_config": nginx_config,
        "ext-plugin": {"cmd": list(runner_command)},
        "plugins": plugins,
        "stream_plugins": [],
    }
    return _dump(config)


def _ssl_config(listen_address: str, tls_port: int, ca_bundle: str) -> dict[str, object]:
    if not tls_port:
        return {"enable": False, "ssl_trusted_certificate": ca_bundle}
    return {
        "enable": True,
        "listen": [{"ip": listen_address, "port": tls_port}],
        "ssl_protocols": TLS_PROTOCOLS,
        # APISIX picks a certificate by the client's SNI only, and refuses the handshake of a
        # client that sends none (one connecting by IP address, as SDKs pointed at
        # https://127.0.0.1 do) unless this names one for it (apisix/ssl.lua, server_name).
        # Gatez's SSL object serves every name (`sni: "*"`), so any name does here.
        "fallback_sni": NO_SNI_NAME,
        "ssl_trusted_certificate": ca_bundle,
    }


def gateway_ssl(tls: ServerTls) -> dict[str, object]:
    """The SSL object of the gateway's HTTPS listener: its certificate (chain) and key, served
    whatever name the client asks for, as Envoy's listener does (the client checks the name).
    A single `sni` of "*" is APISIX's wildcard for every name (radixtree_sni.lua); an `snis`
    list holding "*" would match only names without a dot."""
    return {
        "id": "gatez-tls",
        "type": "server",
        "sni": "*",
        "cert": tls.cert_file.read_text(),
        "key": tls.key_file.read_text(),
        "ssl_protocols": TLS_PROTOCOLS.split(),
    }


@dataclass(frozen=True, slots=True)
class Upstream:
    """An APISIX upstream of one node, from a URL (its path is not used: APISIX proxies the
    request's own path, as the runner rewrote it)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def from_url(cls, url: str) -> Upstream:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"an upstream URL is http(s)://host[:port], not {url!r}")
        return cls(
            parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
        )

    def as_config(self) -> dict[str, object]:
        node = f"[{self.host}]" if ":" in self.host else self.host
        return {
            "type": "roundrobin",
            "scheme": self.scheme,
            # The Host header the upstream expects is its own, as with Envoy.
            "pass_host": "node",
            "nodes": {f"{node}:{self.port}": 1},
        }


def llm_route() -> dict[str, object]:
    """The LLM route `/v1/*`: the runner (ext-plugin-pre-req) on its request — authentication,
    rate limit, model routing — and the Gatez plugin, which makes the provider call and streams
    it through the runner. No upstream: without the plugin APISIX has nowhere to send the
    request, so a provider key never leaves by another path."""
    return {
        "id": "gatez-llm",
        # Gemini's /v1beta too; Ollama's /api/… and Bedrock's /model come by the catch-all, whose
        # plugin takes over the same way (a policy may give those prefixes to REST routes).
        "uris": ["/v1/*", "/v1beta/*"],
        "priority": 10,
        "timeout": dict(LLM_TIMEOUT),
        "plugins": {
            PRE_REQ: {"conf": _runner_conf(), "allow_degradation": False},
            "gatez": {},
        },
    }


def mcp_route() -> dict[str, object]:
    """The built-in MCP routes, `/mcp/*` and the protected-resource metadata: like the LLM
    route (the runner, then the Gatez plugin making the server call), with a read timeout long
    enough for a server's GET stream to stay quiet for an hour (a held tool call waits in the
    runner's request phase, kept alive there)."""
    return {
        "id": "gatez-mcp",
        "uris": ["/mcp/*", "/.well-known/oauth-protected-resource/*"],
        "priority": 10,
        "timeout": dict(MCP_TIMEOUT),
        "plugins": {
            PRE_REQ: {"conf": _runner_conf(), "allow_degradation": False},
            "gatez": {},
        },
    }


def rest_route(upstream_url: str) -> dict[str, object]:
    """The catch-all `/*`: the runner on the request only (authentication, rate limit, the
    policy route's rewrite), then the APISIX route's own upstream."""
    return {
        "id": "gatez-rest",
        "uris": ["/*"],
        "upstream": Upstream.from_url(upstream_url).as_config(),
        # The gatez plugin makes APISIX's own refusals JSON (it leaves REST traffic to nginx).
        "plugins": {PRE_REQ: {"conf": _runner_conf(), "allow_degradation": False}, "gatez": {}},
    }


def render_routes(
    *,
    rest_upstream_url: str,
    extra_routes: Sequence[dict[str, object]] = (),
    tls: ServerTls | None = None,
) -> str:
    """`conf/apisix.yaml`: the LLM route and the REST catch-all (and `extra_routes`, such as a
    benchmark's plain route), and with `tls` the HTTPS listener's SSL object (the file then
    holds its private key: write it mode 0600). Gatez's policy decides what each path is; a
    path no policy route knows is the runner's 404 JSON, whichever APISIX route it came by."""
    routes = [llm_route(), mcp_route(), rest_route(rest_upstream_url), *extra_routes]
    document: dict[str, object] = {"routes": routes}
    if tls is not None:
        document["ssls"] = [gateway_ssl(tls)]
    return _dump(document) + END_MARKER + "\n"


def _runner_conf() -> list[dict[str, str]]:
    """A route's runner conf: it only names us (the pipeline comes from Gatez's policy, by
    path). A new list each time, so the YAML has no anchors."""
    return [{"name": "gatez", "value": "{}"}]


def _dump(document: dict[str, object]) -> str:
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=False)
