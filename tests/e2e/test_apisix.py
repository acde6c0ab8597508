"""The real APISIX as the stack runs it: one per install prefix, stopped with nothing left behind
(nginx master, workers, the runner it spawned), and a runner that refuses to start fails the
start at once with its reason, not after a timeout."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from gatez.apisix_process import ApisixError, descendants, wait_gone
from gatez.stack import Stack, StackConfig
from tests.e2e.conftest import TenantAccess

APISIX_ONLY = pytest.mark.parametrize("stack", ["apisix"], indirect=True)


def models_status(stack: Stack, tenant: TenantAccess) -> int:
    response = httpx.get(
        f"{stack.config.gateway_url}/v1/models",
        headers={"authorization": f"Bearer {tenant.api_key}"},
    )
    return response.status_code


@APISIX_ONLY
def test_a_second_apisix_from_the_same_prefix_is_refused_and_the_first_keeps_serving(
    stack: Stack, tenant: TenantAccess, tmp_path: Path
) -> None:
    assert stack.apisix is not None
    routes = stack.apisix.install.conf_dir / "apisix.yaml"
    before = routes.read_text()
    second = StackConfig.ephemeral(tmp_path / "second")
    second.proxy = "apisix"
    second.apisix_prefix = stack.config.apisix_prefix
    with pytest.raises(ApisixError, match="is already running") as refused:
        Stack(second).start_apisix()
    assert f"{stack.apisix.install.cli} stop" in str(refused.value)
    # Its config was left alone (APISIX re-reads apisix.yaml when it changes).
    assert routes.read_text() == before
    assert models_status(stack, tenant) == 200


@APISIX_ONLY
def test_stopped_nothing_is_left_and_a_refusing_runner_fails_the_start_at_once(
    stack: Stack, tenant: TenantAccess
) -> None:
    apisix = stack.apisix
    assert apisix is not None
    family = [apisix.master_pid, *descendants(apisix.master_pid)]
    # The master, its worker and the runner the worker spawned (a Python process).
    assert any(b"extproc.apisix" in Path(f"/proc/{pid}/cmdline").read_bytes() for pid in family)
    stack.stop_process("dataplane")
    assert stack.apisix is None
    assert wait_gone(family, timeout_s=0)
    assert apisix.install.running_master() is None
    assert not apisix.runner_socket.exists()

    # APISIX starts the runner in its own directory: a relative path setting is refused there.
    stack.config.extra_env["GATEZ_SECRET_KEY_FILE"] = "secret.key"
    started = time.monotonic()
    try:
        with pytest.raises(ApisixError, match="runner refused to start: GATEZ_SECRET_KEY_FILE"):
            stack.start_data_plane()
    finally:
        del stack.config.extra_env["GATEZ_SECRET_KEY_FILE"]
    assert time.monotonic() - started < 20
    assert apisix.install.running_master() is None

    stack.start_data_plane()
    assert models_status(stack, tenant) == 200
