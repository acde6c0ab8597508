"""TLS to providers, end to end: the proxy sends SNI and checks the provider's certificate chain
and host name, and fails closed — the provider key never leaves — when either is wrong.

Each test runs its own HTTPS fake provider (a certificate from the session's test CA, which
every stack trusts beside the system CAs; or from a CA it does not trust) and reaches it as
`https://localhost:PORT/v1`, with the official SDK on the client side.
"""

from __future__ import annotations

import contextlib
import datetime
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs, wait_for_request_logs
from tests.fakes.openai_upstream import UpstreamServer
from tests.support.tls import CertificateFiles, LocalCertificateAuthority

# Not the session provider's key: a request that reached any other upstream would fail there.
PROVIDER_KEY = "sk-tls-provider-secret-for-tests"
MESSAGES: list[Any] = [{"role": "user", "content": "hello over tls"}]

CertificateMaker = Callable[[LocalCertificateAuthority, Path], CertificateFiles]


@dataclass(frozen=True)
class TlsProvider:
    """A fake HTTPS provider created in the policy, and a tenant routed to it."""

    upstream: UpstreamServer
    tenant: TenantAccess


@contextlib.contextmanager
def tls_provider(admin: Admin, certificate: CertificateFiles) -> Iterator[TlsProvider]:
    with UpstreamServer(
        api_key=PROVIDER_KEY, certfile=certificate.cert_file, keyfile=certificate.key_file
    ) as upstream:
        name = f"tls-{uuid.uuid4().hex[:10]}"
        admin.control.CreateProvider(
            control_pb2.CreateProviderRequest(
                provider=policy_pb2.Provider(
                    name=name,
                    kind=policy_pb2.PROVIDER_KIND_OPENAI,
                    base_url=f"https://localhost:{upstream.port}/v1",
                ),
                api_key=PROVIDER_KEY,
            ),
            metadata=admin.metadata,
        )
        yield TlsProvider(upstream, provision(admin, provider=name))


def test_verified_provider_gets_sni_and_its_key(
    gateway_url: str, admin: Admin, provider_ca: LocalCertificateAuthority
) -> None:
    certificate = provider_ca.issue(f"localhost-{uuid.uuid4().hex[:6]}", dns_names=["localhost"])
    with tls_provider(admin, certificate) as provider:
        client = openai.OpenAI(base_url=gateway_url, api_key=provider.tenant.api_key, max_retries=0)
        reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        stream = client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream)

        assert reply.choices[0].message.content == streamed == "Echo: hello over tls"
        upstream = provider.upstream
        assert upstream.server_names and set(upstream.server_names) == {"localhost"}
        assert [seen.header("authorization") for seen in upstream.requests] == [
            f"Bearer {PROVIDER_KEY}"
        ] * 2
        seen_headers = orjson.dumps(dict(upstream.requests[0].headers)).decode()
        assert provider.tenant.api_key not in seen_headers

    rows = wait_for_ai_logs(admin, provider.tenant.tenant_id, 2)
    assert sorted((row.status, row.streamed) for row in rows) == [(200, False), (200, True)]


def _other_host(authority: LocalCertificateAuthority, _tmp_path: Path) -> CertificateFiles:
    """Chain trusted, but the certificate names another host."""
    return authority.issue(f"other-{uuid.uuid4().hex[:6]}", dns_names=["other.example"])


def _untrusted_ca(_authority: LocalCertificateAuthority, tmp_path: Path) -> CertificateFiles:
    """The right name, from a CA the proxy does not trust."""
    stranger = LocalCertificateAuthority(tmp_path, "Untrusted test CA")
    return stranger.issue("localhost", dns_names=["localhost"])


def _expired(authority: LocalCertificateAuthority, _tmp_path: Path) -> CertificateFiles:
    """The right name and a trusted chain, expired yesterday."""
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    return authority.issue(
        f"expired-{uuid.uuid4().hex[:6]}",
        dns_names=["localhost"],
        not_before=past,
        not_after=past + datetime.timedelta(days=2),
    )


@pytest.mark.parametrize(
    "make_certificate",
    [_other_host, _untrusted_ca, _expired],
    ids=["other-host", "untrusted-ca", "expired"],
)
def test_unverifiable_provider_fails_closed(
    gateway_url: str,
    admin: Admin,
    provider_ca: LocalCertificateAuthority,
    tmp_path: Path,
    make_certificate: CertificateMaker,
) -> None:
    certificate = make_certificate(provider_ca, tmp_path)
    with tls_provider(admin, certificate) as provider:
        client = openai.OpenAI(base_url=gateway_url, api_key=provider.tenant.api_key, max_retries=0)
        with pytest.raises(openai.APIStatusError) as refused:
            client.chat.completions.create(model="gpt-test", messages=MESSAGES)

        assert refused.value.status_code in (502, 503)
        assert refused.value.response.headers["content-type"].startswith("application/json")
        error = refused.value.response.json()["error"]
        assert set(error) >= {"message", "type", "code"}
        # The proxy reached the provider and said hello with SNI, then refused its certificate:
        # no HTTP request, so the provider key never left.
        upstream = provider.upstream
        assert upstream.server_names and set(upstream.server_names) == {"localhost"}
        assert upstream.requests == []

    (row,) = wait_for_ai_logs(admin, provider.tenant.tenant_id, 1)
    assert row.status == refused.value.status_code
    (request_row,) = wait_for_request_logs(admin, provider.tenant.tenant_id, 1)
    assert request_row.status == refused.value.status_code


@pytest.mark.parametrize("verified", [True, False], ids=["right-host", "other-host"])
def test_a_rest_routes_https_upstream_is_verified_too(
    stack: Stack,
    admin: Admin,
    tenant: TenantAccess,
    provider_ca: LocalCertificateAuthority,
    verified: bool,
) -> None:
    """REST routes go through the proxy's own upstream path (Envoy's TLS cluster; APISIX's
    nginx proxy, told to verify): SNI, chain and host name are checked there too."""
    name = f"rest-tls-{uuid.uuid4().hex[:6]}"
    certificate = provider_ca.issue(name, dns_names=["localhost" if verified else "other.example"])
    with UpstreamServer(
        api_key=PROVIDER_KEY, certfile=certificate.cert_file, keyfile=certificate.key_file
    ) as upstream:
        prefix = f"/{name}"
        response = admin.control.CreateRoute(
            control_pb2.CreateRouteRequest(
                route=policy_pb2.Route(
                    id=name,
                    path_prefix=prefix,
                    kind=policy_pb2.ROUTE_KIND_REST,
                    upstream_url=f"https://localhost:{upstream.port}",
                    strip_prefix=True,
                )
            ),
            metadata=admin.metadata,
        )
        admin.wait_applied(response.policy_version)
        if stack.config.proxy == "apisix":
            # Under APISIX a REST route's upstream is the APISIX route's.
            stack.set_apisix_routes([apisix_rest_route(prefix, upstream.port)])
        try:
            answer = httpx.get(
                f"{stack.config.gateway_url}{prefix}/v1/models",
                headers={"authorization": f"Bearer {tenant.api_key}"},
                timeout=10,
            )
        finally:
            if stack.config.proxy == "apisix":
                stack.set_apisix_routes([])
        assert upstream.server_names, (answer.status_code, answer.text[:300])
        assert set(upstream.server_names) == {"localhost"}
        if verified:
            # Reached: the fake wants its own key, which a REST route does not add.
            assert [seen.path for seen in upstream.requests] == ["/v1/models"]
            assert answer.status_code == 401
        else:
            assert upstream.requests == []
            assert answer.status_code in (502, 503)


def apisix_rest_route(prefix: str, port: int) -> dict[str, object]:
    return {
        "id": prefix.removeprefix("/"),
        "uris": [f"{prefix}/*"],
        "priority": 20,
        "upstream": {
            "type": "roundrobin",
            "scheme": "https",
            "pass_host": "node",
            "nodes": {f"localhost:{port}": 1},
        },
        "plugins": {
            "ext-plugin-pre-req": {
                "conf": [{"name": "gatez", "value": "{}"}],
                "allow_degradation": False,
            },
            "gatez": {},
        },
    }
