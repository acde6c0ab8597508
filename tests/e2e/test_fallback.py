"""Fallback chains through the proxy: a failed call moves on to the next target of its chain
within the request (APISIX: the Gatez plugin calls it; Envoy: the route's retries, each attempt
rewritten by the chain cluster's upstream ext_proc), and a provider that keeps failing is
skipped once its shared circuit opens."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from typing import Any

import openai

from extproc.envoy_chains import NEW_CLUSTER_SETTLE_S
from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.tls import LocalCertificateAuthority

MESSAGES: list[Any] = [{"role": "user", "content": "hello fallback"}]
# CircuitConfig's default: failures in a row that open a circuit.
THRESHOLD = 5


def wait_for_chain_clusters(stack: Stack, timeout_s: float = 10.0) -> None:
    """Behind Envoy: until Envoy has loaded every chain cluster the data plane wrote for the
    policy applied (Envoy reads the file as it changes, a moment after the data plane ACKs),
    and the data plane routes to new ones (`NEW_CLUSTER_SETTLE_S` after writing them)."""
    if stack.config.proxy == "apisix":
        return
    path = stack.config.envoy_cds_dir / "cds.json"
    admin = f"http://127.0.0.1:{stack.config.envoy_admin_port}/clusters"
    deadline = time.monotonic() + timeout_s
    while True:
        names = {cluster["name"] for cluster in json.loads(path.read_text())["resources"]}
        with urllib.request.urlopen(admin) as answer:
            loaded = answer.read().decode()
        if all(f"{name}::" in loaded for name in names):
            time.sleep(max(0.0, path.stat().st_mtime + NEW_CLUSTER_SETTLE_S - time.time()))
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"Envoy did not load the chain clusters in {timeout_s}s")
        time.sleep(0.02)


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
    wait_for_chain_clusters(stack)
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    # Each failed call moves on within the request: every call is answered, plain and streamed.
    for index in range(THRESHOLD + 2):
        if index % 2:
            stream = client.chat.completions.create(model="chain", messages=MESSAGES, stream=True)
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        else:
            reply = client.chat.completions.create(model="chain", messages=MESSAGES)
            text = reply.choices[0].message.content or ""
        assert text == "Echo: hello fallback"
    rows = wait_for_ai_logs(admin, access.tenant_id, THRESHOLD + 2)
    assert {(row.provider, row.upstream_model, row.status) for row in rows} == {
        (PROVIDER, "upstream-model-1", 200)
    }
    attempts = [tuple(row.attempts) for row in rows]
    # Each call tried the dead target first until its circuit opened, then skipped it (the
    # outcome is told to the circuit when each exchange ends: the last report may land after
    # the next request was picked).
    tried = attempts.count((f"{down}/m-down=connect",))
    assert THRESHOLD <= tried <= THRESHOLD + 1
    assert attempts.count((f"{down}/m-down=skipped",)) == THRESHOLD + 2 - tried


def test_a_call_moves_on_to_a_tls_target_with_its_own_sni_and_key(
    stack: Stack, admin: Admin, gateway_url: str, provider_ca: LocalCertificateAuthority
) -> None:
    """The next target over TLS: reached with its SNI and its certificate checked (Envoy: the
    chain cluster's transport socket for that target), given its own key only."""
    access, down = chained_tenant(admin)
    certificate = provider_ca.issue(f"chain-{uuid.uuid4().hex[:6]}", dns_names=["localhost"])
    key = "sk-tls-chain-target"
    with UpstreamServer(
        api_key=key, certfile=certificate.cert_file, keyfile=certificate.key_file
    ) as secure:
        name = f"tls-{uuid.uuid4().hex[:8]}"
        admin.control.CreateProvider(
            control_pb2.CreateProviderRequest(
                provider=policy_pb2.Provider(
                    name=name,
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url=f"https://localhost:{secure.port}/v1",
                ),
                api_key=key,
            ),
            metadata=admin.metadata,
        )
        route = admin.control.CreateModelRoute(
            control_pb2.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    tenant_id=access.tenant_id,
                    alias="chain-tls",
                    provider=down,
                    upstream_model="m-down-tls",
                    fallbacks=[policy_pb2.FallbackTarget(provider=name, upstream_model="secure")],
                )
            ),
            metadata=admin.metadata,
        )
        admin.wait_applied(route.policy_version)
        wait_for_chain_clusters(stack)
        client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
        stream = client.chat.completions.create(model="chain-tls", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "Echo: hello fallback"
        assert set(secure.server_names) == {"localhost"}
        assert [seen.header("authorization") for seen in secure.requests] == [f"Bearer {key}"]
    (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
    assert (row.provider, row.status) == (name, 200)
    assert list(row.attempts) == [f"{down}/m-down-tls=connect"]
