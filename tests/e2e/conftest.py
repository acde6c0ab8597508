"""End-to-end fixtures: the real stack (redis-server, control service, data plane, Envoy) as
child processes on free ports, a fake OpenAI upstream and a local OIDC issuer in-process, and
a synchronous admin client — every test provisions its own tenants, so tests stay independent.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, control_pb2_grpc, policy_pb2
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.mcp_servers import mcp_upstreams
from tests.support.oidc import OidcIssuer
from tests.support.redis_cluster import LocalRedisCluster
from tests.support.tls import LocalCertificateAuthority

__all__ = ["mcp_upstreams"]

UPSTREAM_KEY = "sk-upstream-secret-for-tests"
PROVIDER = "fake-openai"


class Admin:
    """The control service as `grpcurl` would use it, plus a wait for data planes to apply."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.control = control_pb2_grpc.ControlServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)

    def wait_applied(self, version: int, timeout_s: float = 5.0) -> float:
        """Seconds until every connected data plane applied `version`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            status = self.control.GetPolicyStatus(
                control_pb2.GetPolicyStatusRequest(), metadata=self.metadata
            )
            planes = [p for p in status.data_planes if p.connected]
            if planes and all(p.applied_version >= version for p in planes):
                return time.monotonic() - started
            time.sleep(0.01)
        raise TimeoutError(f"policy version {version} not applied within {timeout_s}s")


@dataclass(frozen=True)
class TenantAccess:
    tenant_id: str
    api_key: str
    api_key_id: str


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def oidc() -> Iterator[OidcIssuer]:
    with OidcIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def provider_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCertificateAuthority:
    """The CA of the tests' TLS providers; every stack trusts it beside the system CAs."""
    return LocalCertificateAuthority(Path(tmp_path_factory.mktemp("provider-ca")))


@pytest.fixture(scope="session", params=["envoy", "envoy-grpcio", "apisix", "envoy-cluster"])
def stack(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: UpstreamServer,
    provider_ca: LocalCertificateAuthority,
) -> Iterator[Stack]:
    """The same suite runs through both adapters: Envoy + ext_proc (served by the lean HTTP/2
    server, and by the grpc.aio fallback), and a real APISIX 3.18 (installed by `make apisix`
    under $GATEZ_APISIX_PREFIX, default `.apisix` in the checkout) with the runner it spawns,
    its routes sent to the fake upstream; and once with Redis as a 3-node Redis Cluster instead
    of the stack's own redis-server. A missing APISIX fails the APISIX cases, never skips them.
    Each also serves HTTPS, with a certificate the stack makes (tests/e2e/test_gateway_tls.py)."""
    proxy, _, variant = request.param.partition("-")
    # The cluster runs before the stack picks its free ports, so none of them collide.
    cluster: LocalRedisCluster | None = (
        request.getfixturevalue("redis_cluster") if variant == "cluster" else None
    )
    config = StackConfig.ephemeral(
        Path(tmp_path_factory.mktemp(f"stack-{request.param}")), tls=True
    )
    config.proxy = proxy
    config.ca_bundle = str(provider_ca.bundle())
    if cluster is not None:
        config.external_redis_url = cluster.seed_url
        config.redis_password = cluster.password
    elif variant:
        config.extra_env["GATEZ_EXTPROC_SERVER"] = variant
    # Under APISIX, its routes' upstreams: the fake provider (LLM and REST alike).
    config.apisix_rest_upstream_url = upstream.base_url
    with running(Stack(config)) as started:
        yield started


@contextlib.contextmanager
def running(stack: Stack) -> Iterator[Stack]:
    """The stack started, stopped at the end, with the tail of each process's log printed
    (pytest shows it when a test failed)."""
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        for log in sorted(stack.logs.glob("*.log")):
            tail = log.read_text(errors="replace")[-3000:]
            print(f"\n===== {log.name} (tail) =====\n{tail}")


@contextlib.contextmanager
def admin_of(stack: Stack, upstream: UpstreamServer) -> Iterator[Admin]:
    """An admin client of the stack, with the fake provider created and applied."""
    client = Admin(stack.config.control_address, stack.config.admin_token)
    response = client.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=PROVIDER, kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url=upstream.base_url
            ),
            api_key=UPSTREAM_KEY,
        ),
        metadata=client.metadata,
    )
    client.wait_applied(response.policy_version, timeout_s=30)
    try:
        yield client
    finally:
        client.channel.close()


@pytest.fixture(scope="session")
def admin(stack: Stack, upstream: UpstreamServer) -> Iterator[Admin]:
    with admin_of(stack, upstream) as client:
        yield client


@pytest.fixture
def gateway_url(stack: Stack) -> str:
    return f"{stack.config.gateway_url}/v1"


def provision(
    admin: Admin,
    *,
    rate_limit: policy_pb2.RateLimit | None = None,
    models: dict[str, str] | None = None,
    provider: str = PROVIDER,
) -> TenantAccess:
    """A fresh tenant with one API key and its own model routes (to `provider`), applied on
    the data plane."""
    tenant_id = f"t-{uuid.uuid4().hex[:10]}"
    md = admin.metadata
    tenant = policy_pb2.Tenant(id=tenant_id, display_name=tenant_id)
    if rate_limit is not None:
        tenant.rate_limit.CopyFrom(rate_limit)
    admin.control.CreateTenant(control_pb2.CreateTenantRequest(tenant=tenant), metadata=md)
    key = admin.control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=tenant_id, name="e2e"), metadata=md
    )
    version = key.policy_version
    for alias, model in (models or {"gpt-test": "upstream-model-1"}).items():
        route = admin.control.CreateModelRoute(
            control_pb2.CreateModelRouteRequest(
                model_route=policy_pb2.ModelRoute(
                    tenant_id=tenant_id, alias=alias, provider=provider, upstream_model=model
                )
            ),
            metadata=md,
        )
        version = route.policy_version
    admin.wait_applied(version)
    return TenantAccess(tenant_id, key.secret, key.api_key.id)


@pytest.fixture
def tenant(admin: Admin) -> TenantAccess:
    return provision(admin)
