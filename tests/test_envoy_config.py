"""The Envoy bootstrap renders completely and the real Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from gatez.envoy_config import EnvoyTracing, render
from gatez.processes import require_binary
from gatez.tls import local_server_tls


def test_rendered_bootstrap_validates(tmp_path: Path) -> None:
    config = tmp_path / "envoy.yaml"
    config.write_text(
        render(listen_port=19080, admin_port=19901, extproc_socket=f"unix:{tmp_path}/x.sock")
    )
    assert "${" not in config.read_text()
    result = subprocess.run(
        [require_binary("envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "OK" in result.stdout + result.stderr


def validate(config: Path) -> None:
    result = subprocess.run(
        [require_binary("envoy"), "--mode", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_tracing_blocks_are_rendered_only_when_traces_are_exported(tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/x.sock"
    off = render(listen_port=19080, admin_port=19901, extproc_socket=socket)
    on = render(
        listen_port=19080,
        admin_port=19901,
        extproc_socket=socket,
        tracing=EnvoyTracing("127.0.0.1", 14317, sampling_percent=25.0, flush_interval_ms=200),
    )

    assert "envoy.tracers.opentelemetry" not in off and "gatez_otlp" not in off
    assert "# @tracing-begin" not in off
    assert "envoy.tracers.opentelemetry" in on
    assert "port_value: 14317" in on and "value: 25.0" in on
    assert "flush_interval_ms: 200" in on
    for name, text in (("off", off), ("on", on)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        assert "${" not in text
        validate(config)


def test_the_https_listener_is_rendered_only_with_a_certificate(tmp_path: Path) -> None:
    socket = f"unix:{tmp_path}/x.sock"
    plain = render(listen_port=19080, admin_port=19901, extproc_socket=socket)
    tls = local_server_tls(tmp_path / "tls")
    both = render(
        listen_port=19080, admin_port=19901, extproc_socket=socket, tls_port=19443, tls=tls
    )

    assert "gatez_tls" not in plain and "DownstreamTlsContext" not in plain
    assert "# @tls-begin" not in plain
    assert "port_value: 19443" in both and str(tls.key_file) in both
    # One connection manager, run by both listeners (a YAML alias, not a copy).
    document = yaml.safe_load(both)
    listeners = document["static_resources"]["listeners"]
    assert [listener["name"] for listener in listeners] == ["gatez", "gatez_tls"]
    managers = [
        listener["filter_chains"][0]["filters"][0]["typed_config"] for listener in listeners
    ]
    assert managers[0] == managers[1] and managers[0]["stat_prefix"] == "gatez"
    context = listeners[1]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert context["common_tls_context"]["alpn_protocols"] == ["h2", "http/1.1"]
    assert context["common_tls_context"]["tls_params"]["tls_minimum_protocol_version"] == "TLSv1_2"
    assert both.count("local_reply_config:") == 1
    for name, text in (("plain", plain), ("both", both)):
        config = tmp_path / f"{name}.yaml"
        config.write_text(text)
        validate(config)
    with pytest.raises(ValueError, match="needs a port"):
        render(listen_port=19080, admin_port=19901, extproc_socket=socket, tls=tls)


def test_chain_clusters_and_their_retrying_routes_are_rendered_only_with_their_directory(
    tmp_path: Path,
) -> None:
    socket = f"unix:{tmp_path}/x.sock"
    off = render(listen_port=19080, admin_port=19901, extproc_socket=socket)
    cds = tmp_path / "cds"
    on = render(listen_port=19080, admin_port=19901, extproc_socket=socket, cds_dir=cds)
    assert "dynamic_resources" not in off and "retry_policy" not in off
    assert "# @chains-begin" not in off
    loaded = yaml.safe_load(on)
    assert loaded["dynamic_resources"]["cds_config"]["path_config_source"] == {
        "path": str(cds.resolve() / "cds.json"),
        "watched_directory": {"path": str(cds.resolve())},
    }
    routes = loaded["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]["route_config"]["virtual_hosts"][0]["routes"]
    chain_routes = [r for r in routes if "retry_policy" in r["route"]]
    assert len(chain_routes) == 2
    for route in chain_routes:
        retry = route["route"]["retry_policy"]
        assert retry["retry_on"] == "5xx,reset,connect-failure,retriable-status-codes"
        assert retry["retriable_status_codes"] == [429]
        assert "rate_limited_retry_back_off" not in retry
        assert retry["retry_back_off"]["base_interval"] == "0.001s"
    # Only the chain routes retry, and they come before the catch-all routes.
    assert [("retry_policy" in r["route"]) for r in routes] == [True, True, False, False]
    cds.mkdir()
    (cds / "cds.json").write_text('{"resources": []}')
    config = tmp_path / "on.yaml"
    config.write_text(on)
    assert "${" not in on
    validate(config)
