"""The Envoy bootstrap renders completely and the real Envoy accepts it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from gatez.envoy_config import render
from gatez.processes import require_binary


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
