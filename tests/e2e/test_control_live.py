"""Policy changes reach the data plane live, and the data plane outlives the control service; a
control service restarted on an empty Redis cannot take it back; secrets at rest stay sealed."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable

import httpx
import redis

from control.store import CHANGES_CHANNEL, SNAPSHOT_KEY
from gatez.redis_client import RedisTarget
from gatez.settings import Settings
from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, UPSTREAM_KEY, Admin, provision


def chat_status(gateway_url: str, api_key: str, model: str) -> int:
    response = httpx.post(
        f"{gateway_url}/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {api_key}"},
    )
    return response.status_code


def test_a_new_model_route_is_in_force_within_one_second(gateway_url: str, admin: Admin) -> None:
    access = provision(admin)
    assert chat_status(gateway_url, access.api_key, "late-model") == 404

    started = time.monotonic()
    admin.control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                tenant_id=access.tenant_id,
                alias="late-model",
                provider=PROVIDER,
                upstream_model="upstream-model-2",
            )
        ),
        metadata=admin.metadata,
    )
    while chat_status(gateway_url, access.api_key, "late-model") != 200:
        assert time.monotonic() - started < 1.0, "the change was not in force within 1 s"
        time.sleep(0.02)
    assert time.monotonic() - started < 1.0


def test_data_plane_restarts_and_serves_while_the_control_service_is_down(
    gateway_url: str, admin: Admin, stack: Stack
) -> None:
    access = provision(admin)
    stack.stop_process("control")
    try:
        stack.stop_process("dataplane")
        stack.start_data_plane()
        assert chat_status(gateway_url, access.api_key, "gpt-test") == 200
        assert chat_status(gateway_url, "gz-unknown-key", "gpt-test") == 401
    finally:
        stack.start_control()
    # Once the control service is back, the data plane reconnects and acknowledges.
    status = admin.control.GetPolicyStatus(
        control_pb2.GetPolicyStatusRequest(), metadata=admin.metadata
    )
    admin.wait_applied(status.version, timeout_s=15)


def policy_status(admin: Admin) -> control_pb2.GetPolicyStatusResponse:
    # wait_for_ready: the admin channel may be in its reconnect backoff after a restart.
    status: control_pb2.GetPolicyStatusResponse = admin.control.GetPolicyStatus(
        control_pb2.GetPolicyStatusRequest(),
        metadata=admin.metadata,
        wait_for_ready=True,
        timeout=30,
    )
    return status


def data_plane_status(admin: Admin, stack: Stack) -> control_pb2.DataPlaneStatus:
    found = [p for p in policy_status(admin).data_planes if p.node_id == stack.config.node_id]
    return found[0] if found else control_pb2.DataPlaneStatus()


def wait_for(
    probe: Callable[[], control_pb2.DataPlaneStatus],
    accept: Callable[[control_pb2.DataPlaneStatus], bool],
    timeout_s: float = 15.0,
) -> control_pb2.DataPlaneStatus:
    deadline = time.monotonic() + timeout_s
    while not accept(value := probe()):
        assert time.monotonic() < deadline, f"not reached within {timeout_s}s: {value}"
        time.sleep(0.05)
    return value


def raw_redis(stack: Stack) -> redis.Redis | redis.RedisCluster:
    """The stack's Redis as a tool would reach it: its URL, with the stack's password."""
    target = RedisTarget.from_settings(Settings.from_env(stack.config.environment()))
    if target.cluster:
        return redis.RedisCluster.from_url(target.url, password=target.password)
    return redis.Redis.from_url(target.url, password=target.password)


def test_a_control_service_restarted_on_an_empty_redis_cannot_take_the_data_plane_back(
    gateway_url: str, admin: Admin, stack: Stack
) -> None:
    access = provision(admin)
    held = policy_status(admin)
    store = raw_redis(stack)
    stack.stop_process("control")
    # What restoring Redis from its persistence brings back: the control state (the buckets
    # do not matter here). One key, so the same on one server and on a cluster.
    saved = store.get(SNAPSHOT_KEY)
    assert saved is not None
    try:
        store.flushall()
        stack.start_control()
        admin.control.CreateTenant(
            control_pb2.CreateTenantRequest(tenant=policy_pb2.Tenant(id="t-new-lineage")),
            metadata=admin.metadata,
            wait_for_ready=True,
            timeout=30,
        )
        fresh = policy_status(admin)
        assert fresh.version == 1 and fresh.lineage not in ("", held.lineage)

        refused = wait_for(
            lambda: data_plane_status(admin, stack), lambda p: p.rejected_version == 1
        )
        assert (refused.applied_version, refused.applied_lineage) == (held.version, held.lineage)
        assert "lineage" in refused.error
        assert held.lineage in refused.conflict and fresh.lineage in refused.conflict
        # It keeps serving the policy it holds: the old tenant's key still works.
        assert chat_status(gateway_url, access.api_key, "gpt-test") == 200
    finally:
        # The operator's way out that keeps the policy: Redis restored from its persistence. The
        # control service reloads it as when Redis comes back (announced here, as it resubscribes
        # there), adopting the restored lineage over the one it started.
        store.set(SNAPSHOT_KEY, saved)
        store.publish(CHANGES_CHANNEL, b"restored")
        store.close()
    resolved = wait_for(
        lambda: data_plane_status(admin, stack),
        lambda p: p.connected and p.applied_version == held.version and not p.conflict,
    )
    assert resolved.applied_lineage == held.lineage
    assert chat_status(gateway_url, access.api_key, "gpt-test") == 200


def test_secrets_at_rest_are_private_and_provider_keys_sealed(admin: Admin, stack: Stack) -> None:
    state = stack.config.state_dir
    for secret_file in (state / "dataplane.token", state / "secret.key"):
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    snapshot = state / "dataplane" / "snapshot.pb"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert PROVIDER.encode() in snapshot.read_bytes()
    assert UPSTREAM_KEY.encode() not in snapshot.read_bytes()
    store = raw_redis(stack)
    try:
        # scan_iter visits every primary of a cluster.
        values = [store.get(key) for key in store.scan_iter() if store.type(key) == b"string"]
    finally:
        store.close()
    assert any(PROVIDER.encode() in value for value in values if value)
    assert not any(UPSTREAM_KEY.encode() in value for value in values if value)
