"""Policy changes reach the data plane live, and the data plane outlives the control service."""

from __future__ import annotations

import time

import httpx

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, Admin, provision


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
