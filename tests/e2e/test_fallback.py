"""Fallback chains through the proxy: a provider that keeps failing is skipped once its shared
circuit opens, and the alias is served by the next target of its chain."""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs

MESSAGES: list[Any] = [{"role": "user", "content": "hello fallback"}]
# CircuitConfig's default: failures in a row that open a circuit.
THRESHOLD = 5


def chained_tenant(admin: Admin) -> tuple[TenantAccess, str]:
    """A tenant whose alias `chain` goes first to a provider nobody listens for, then to the
    fake provider."""
    down = f"down-{uuid.uuid4().hex[:8]}"
    md = admin.metadata
    admin.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=down, kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="http://127.0.0.1:9/v1"
            ),
            api_key="sk-down",
        ),
        metadata=md,
    )
    access = provision(admin, models={})
    route = admin.control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                tenant_id=access.tenant_id,
                alias="chain",
                provider=down,
                upstream_model="m-down",
                fallbacks=[
                    policy_pb2.FallbackTarget(provider=PROVIDER, upstream_model="upstream-model-1")
                ],
            )
        ),
        metadata=md,
    )
    admin.wait_applied(route.policy_version)
    return access, down


def test_a_failing_provider_is_skipped_once_its_circuit_opens(
    stack: Stack, admin: Admin, gateway_url: str
) -> None:
    access, down = chained_tenant(admin)
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    if stack.config.proxy == "apisix":
        # The plugin moves each failed call on within the request: every call is answered.
        for _ in range(THRESHOLD + 2):
            reply = client.chat.completions.create(model="chain", messages=MESSAGES)
            assert reply.choices[0].message.content == "Echo: hello fallback"
        rows = wait_for_ai_logs(admin, access.tenant_id, THRESHOLD + 2)
        assert {(row.provider, row.status) for row in rows} == {(PROVIDER, 200)}
        attempts = [tuple(row.attempts) for row in rows]
        # Each call tried the dead target first until its circuit opened, then skipped it.
        tried = attempts.count((f"{down}/m-down=connect",))
        assert THRESHOLD <= tried <= THRESHOLD + 1
        assert attempts.count((f"{down}/m-down=skipped",)) == THRESHOLD + 2 - tried
        return
    failures = 0
    # The outcome is told to the circuit when each exchange ends: allow the last one's report
    # to land after the next request was picked.
    for _ in range(THRESHOLD + 2):
        try:
            reply = client.chat.completions.create(model="chain", messages=MESSAGES)
        except openai.APIStatusError as error:
            assert error.status_code in (502, 503)
            failures += 1
            continue
        break
    else:
        pytest.fail("the fallback never took over")
    assert THRESHOLD <= failures <= THRESHOLD + 1
    assert reply.choices[0].message.content == "Echo: hello fallback"

    # Streams go the same way while the circuit is open.
    stream = client.chat.completions.create(model="chain", messages=MESSAGES, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "Echo: hello fallback"

    rows = wait_for_ai_logs(admin, access.tenant_id, failures + 2)
    served = [row for row in rows if row.status == 200]
    assert len(served) == 2 and {row.provider for row in served} == {PROVIDER}
    assert {row.upstream_model for row in served} == {"upstream-model-1"}
    # The rows say which target was skipped for them, and the failed ones were the first's.
    assert {tuple(row.attempts) for row in served} == {(f"{down}/m-down=skipped",)}
    failed = [row for row in rows if row.status != 200]
    assert {(row.provider, row.upstream_model) for row in failed} == {(down, "m-down")}
