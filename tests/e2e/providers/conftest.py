"""Fixtures of the provider end-to-end tests: one replay fake per provider kind (Anthropic,
Gemini, Ollama, Bedrock) beside the session's fake OpenAI, each registered as a provider of its
kind through the control API, and tenants whose model aliases reach every one of them.

Everything that can be shared is: the fakes live for the session, the providers and one tenant
for each stack (session fixtures that depend on the parametrised stack are made once per
proxy). Tests that read AI-log rows provision a fresh tenant of their own (`fresh_tenant`).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Final

import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, UPSTREAM_KEY, Admin, TenantAccess
from tests.e2e.providers.calls import ALIASES, Gateway, Kind
from tests.fakes.openai_upstream import RecordedRequest, UpstreamServer
from tests.fakes.replay import ReplayServer

#: Each replay fake's own key: the gateway must send exactly this, where its kind wants it.
PROVIDER_KEYS: Final[Mapping[Kind, str]] = {
    Kind.OPENAI: UPSTREAM_KEY,
    Kind.ANTHROPIC: "sk-ant-replay-provider-key",
    Kind.GEMINI: "AIza-replay-provider-key",
    Kind.OLLAMA: "ollama-replay-provider-key",
    Kind.BEDROCK: "ABSK-replay-bedrock-api-key",
}
_PROVIDER_KINDS: Final = {
    Kind.ANTHROPIC: policy_pb2.PROVIDER_KIND_ANTHROPIC,
    Kind.GEMINI: policy_pb2.PROVIDER_KIND_GEMINI,
    Kind.OLLAMA: policy_pb2.PROVIDER_KIND_OLLAMA,
    Kind.BEDROCK: policy_pb2.PROVIDER_KIND_BEDROCK,
}


@dataclass(frozen=True)
class Fakes:
    """The fake provider of each kind: what it received, and errors to queue on it."""

    openai: UpstreamServer
    replays: Mapping[Kind, ReplayServer]

    def received(self, kind: Kind) -> int:
        """How many requests the fake of `kind` has received so far."""
        server = self.openai if kind is Kind.OPENAI else self.replays[kind]
        return len(server.requests)

    def requests_since(self, kind: Kind, count: int) -> list[RecordedRequest]:
        """The requests the fake of `kind` received after its first `count`."""
        server = self.openai if kind is Kind.OPENAI else self.replays[kind]
        return list(server.requests[count:])


@pytest.fixture(scope="session")
def replays() -> Iterator[dict[Kind, ReplayServer]]:
    with contextlib.ExitStack() as started:
        yield {
            kind: started.enter_context(ReplayServer(kind.value, api_key=PROVIDER_KEYS[kind]))
            for kind in _PROVIDER_KINDS
        }


@pytest.fixture(autouse=True)
def _fresh_replays(replays: dict[Kind, ReplayServer]) -> None:
    """No error queued by a test that failed before its call is left for the next test."""
    for server in replays.values():
        server.clear()


@pytest.fixture(scope="session")
def fakes(upstream: UpstreamServer, replays: dict[Kind, ReplayServer]) -> Fakes:
    return Fakes(upstream, replays)


@pytest.fixture(scope="session")
def provider_names(admin: Admin, replays: dict[Kind, ReplayServer]) -> dict[Kind, str]:
    """Each kind's provider on this stack (the OpenAI one is the session's `fake-openai`)."""
    names = {Kind.OPENAI: PROVIDER}
    version = 0
    suffix = uuid.uuid4().hex[:6]
    for kind, proto_kind in _PROVIDER_KINDS.items():
        provider = policy_pb2.Provider(
            name=f"replay-{kind.value}-{suffix}",
            kind=proto_kind,
            base_url=replays[kind].base_url,
            auth=policy_pb2.PROVIDER_AUTH_API_KEY,
        )
        if kind is Kind.BEDROCK:
            # A loopback base URL names no region to sign for.
            provider.aws_region = "us-east-1"
        created = admin.control.CreateProvider(
            control_pb2.CreateProviderRequest(provider=provider, api_key=PROVIDER_KEYS[kind]),
            metadata=admin.metadata,
        )
        names[kind] = provider.name
        version = created.policy_version
    admin.wait_applied(version, timeout_s=30)
    return names


def provision_all(admin: Admin, provider_names: Mapping[Kind, str]) -> TenantAccess:
    """A fresh tenant with one API key, and each alias of `ALIASES` routed to its provider."""
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    md = admin.metadata
    admin.control.CreateTenant(
        control_pb2.CreateTenantRequest(
            tenant=policy_pb2.Tenant(id=tenant_id, display_name=tenant_id)
        ),
        metadata=md,
    )
    key = admin.control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name="sdk-e2e"), metadata=md
    )
    version = key.policy_version
    for alias, (kind, upstream_model) in ALIASES.items():
        route = admin.control.CreateModelRoute(
            control_pb2.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    tenant_id=tenant_id,
                    alias=alias,
                    provider=provider_names[kind],
                    upstream_model=upstream_model,
                )
            ),
            metadata=md,
        )
        version = route.policy_version
    admin.wait_applied(version)
    return TenantAccess(tenant_id, key.secret, key.api_key.id)


@pytest.fixture(scope="session")
def shared_tenant(admin: Admin, provider_names: dict[Kind, str]) -> TenantAccess:
    """One tenant per stack, for the tests that read no AI-log rows."""
    return provision_all(admin, provider_names)


@pytest.fixture
def fresh_tenant(admin: Admin, provider_names: dict[Kind, str]) -> TenantAccess:
    return provision_all(admin, provider_names)


@pytest.fixture
def gateway(stack: Stack) -> Gateway:
    assert stack.tls is not None and stack.tls.ca_file is not None
    return Gateway(
        url=stack.config.gateway_url,
        tls_url=stack.config.gateway_tls_url,
        ca_file=str(stack.tls.ca_file),
    )
