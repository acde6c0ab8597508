"""APISIX's config as the stack renders it (the end-to-end suite runs a real APISIX on it), and
a prefix without APISIX refused with what to do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gatez import apisix_config
from gatez.apisix_process import ApisixError, ApisixInstall
from gatez.stack import Stack, StackConfig
from gatez.tls import local_server_tls


def rendered_config(tmp_path: Path, **overrides: Any) -> Any:
    arguments: dict[str, Any] = {
        "listen_port": 19380,
        "runner_command": apisix_config.runner_command(
            "/venv/bin/python", state_dir=tmp_path / "state", env_file=tmp_path / "runner.env"
        ),
        "envs": ["GATEZ_CONTROL_ADDRESS", "PYTHONPATH=/checkout"],
        "checkout": tmp_path,
        "ca_bundle": "/etc/gatez/ca.pem",
        "error_log": tmp_path / "apisix.log",
    }
    return yaml.safe_load(apisix_config.render_config(**{**arguments, **overrides}))


def test_the_config_serves_on_loopback_with_the_runner_given_absolute_paths(
    tmp_path: Path,
) -> None:
    config = rendered_config(tmp_path)
    assert config["deployment"]["role_data_plane"] == {"config_provider": "yaml"}
    assert config["apisix"]["node_listen"] == [{"ip": "127.0.0.1", "port": 19380}]
    for api in ("enable_admin", "enable_control", "enable_http2"):
        assert config["apisix"][api] is False
    # No TLS listener; APISIX's TLS clients trust the given bundle.
    assert config["apisix"]["ssl"] == {
        "enable": False,
        "ssl_trusted_certificate": "/etc/gatez/ca.pem",
    }
    assert config["apisix"]["extra_lua_path"] == f"{tmp_path}/?.lua"
    assert config["nginx_config"]["worker_processes"] == 1
    assert config["nginx_config"]["envs"] == ["GATEZ_CONTROL_ADDRESS", "PYTHONPATH=/checkout"]
    assert config["nginx_config"]["error_log"] == str(tmp_path / "apisix.log")
    assert config["ext-plugin"]["cmd"] == [
        "/venv/bin/python", "-m", "extproc.apisix",
        "--state-dir", str(tmp_path / "state"), "--env-file", str(tmp_path / "runner.env"),
    ]  # fmt: skip
    assert config["stream_plugins"] == []


def test_the_plugins_are_the_runner_and_the_gatez_plugin_never_post_resp(tmp_path: Path) -> None:
    plugins = rendered_config(tmp_path)["plugins"]
    assert plugins == ["ext-plugin-pre-req", "gatez", "proxy-rewrite", "request-id"]


def test_the_routes_end_with_the_end_marker_and_fail_closed() -> None:
    text = apisix_config.render_routes(rest_upstream_url="http://[::1]:8080")
    assert text.endswith("\n#END\n")
    llm, mcp, rest = yaml.safe_load(text)["routes"]
    assert (llm["uris"], rest["uris"]) == (["/v1/*", "/v1beta/*"], ["/*"])
    assert mcp["uris"] == ["/mcp/*", "/.well-known/oauth-protected-resource/*"]
    assert rest["upstream"]["nodes"] == {"[::1]:8080": 1}
    assert set(rest["plugins"]) == {"ext-plugin-pre-req", "gatez"}
    # Without the runner, no traffic (degradation would pass requests unchecked).
    runner = {"conf": [{"name": "gatez", "value": "{}"}], "allow_degradation": False}
    assert rest["plugins"]["ext-plugin-pre-req"] == runner
    # The provider comes from Gatez's policy through the plugin; without it, nowhere to go.
    assert "upstream" not in llm
    assert llm["plugins"] == {"ext-plugin-pre-req": runner, "gatez": {}}
    assert llm["timeout"] == {"connect": 5, "send": 600, "read": 600}
    # MCP: the server calls go through the plugin too; a GET stream may stay quiet for long.
    assert "upstream" not in mcp
    assert mcp["plugins"] == {"ext-plugin-pre-req": runner, "gatez": {}}
    assert mcp["timeout"] == {"connect": 5, "send": 600, "read": 3600}


def test_an_upstream_url_must_name_http_or_https_and_a_host() -> None:
    with pytest.raises(ValueError, match="http\\(s\\)://host\\[:port\\]"):
        apisix_config.render_routes(rest_upstream_url="ftp://x")


def test_a_prefix_without_apisix_is_refused_with_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ApisixError) as refused:
        ApisixInstall(tmp_path / "nowhere").require()
    assert "APISIX is not installed in" in str(refused.value)
    assert "make apisix" in str(refused.value) and "GATEZ_APISIX_PREFIX" in str(refused.value)

    config = StackConfig.ephemeral(tmp_path / "stack")
    config.proxy, config.apisix_prefix = "apisix", tmp_path / "nowhere"
    with pytest.raises(ApisixError, match="make apisix"):
        Stack(config).start_data_plane()


def test_the_runner_gets_its_settings_but_not_the_admin_token(tmp_path: Path) -> None:
    config = StackConfig.ephemeral(tmp_path / "stack")
    settings = config.runner_settings()
    assert "GATEZ_ADMIN_TOKEN" not in settings
    assert settings["GATEZ_STATE_DIR"] == str((tmp_path / "stack" / "dataplane").resolve())
    assert settings["GATEZ_METRICS_ADDRESS"] == f"127.0.0.1:{config.data_plane_metrics_port}"
    assert settings["GATEZ_CONTROL_ADDRESS"] == config.control_address


def test_the_https_listener_serves_the_gateway_certificate_to_every_name(tmp_path: Path) -> None:
    tls = local_server_tls(tmp_path / "tls")
    ssl = rendered_config(tmp_path, tls_port=19443)["apisix"]["ssl"]
    assert ssl["enable"] is True
    assert ssl["listen"] == [{"ip": "127.0.0.1", "port": 19443}]
    assert ssl["ssl_protocols"] == "TLSv1.2 TLSv1.3"
    assert ssl["ssl_trusted_certificate"] == "/etc/gatez/ca.pem"
    # A client connecting by IP address sends no SNI: APISIX refuses it without this.
    assert ssl["fallback_sni"]

    (entry,) = yaml.safe_load(
        apisix_config.render_routes(rest_upstream_url="http://127.0.0.1:1", tls=tls)
    )["ssls"]
    # One name "*", not a list: APISIX's wildcard that also matches names with dots.
    assert entry["sni"] == "*" and "snis" not in entry
    assert entry["cert"] == tls.cert_file.read_text()
    assert entry["key"] == tls.key_file.read_text()
    assert "ssls" not in yaml.safe_load(apisix_config.render_routes(rest_upstream_url="http://x"))
