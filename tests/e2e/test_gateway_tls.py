"""The gateway's HTTPS listener, through both proxies: SDKs that trust the stack's local CA get
the same answers as over plain HTTP, clients that do not are refused, the certificate survives
a restart of the proxy, and boto3's Bedrock client sends its bearer token (which it does only
over HTTPS) to the data plane."""

from __future__ import annotations

import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import openai
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509

from gatez.stack import Stack
from gatez.tls import ServerTls
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess
from tests.e2e.test_routes import create_rest_route
from tests.fakes.openai_upstream import UpstreamServer

MESSAGES: list[Any] = [{"role": "user", "content": "hello over tls"}]


@pytest.fixture
def server_tls(stack: Stack) -> ServerTls:
    assert stack.tls is not None and stack.tls.ca_file is not None
    return stack.tls


@pytest.fixture
def trusting_client(server_tls: ServerTls) -> Iterator[openai.DefaultHttpxClient]:
    """The openai SDK's HTTP client, trusting the stack's CA."""
    assert server_tls.ca_file is not None
    context = ssl.create_default_context(cafile=server_tls.ca_file)
    with openai.DefaultHttpxClient(verify=context) as client:
        yield client


def served_certificate(stack: Stack, ca_file: Path) -> x509.Certificate:
    """The certificate the HTTPS listener presents to a client that sends no SNI (by IP)."""
    pem = ssl.get_server_certificate(("127.0.0.1", stack.config.tls_port), ca_certs=str(ca_file))
    return x509.load_pem_x509_certificate(pem.encode())


def test_the_openai_sdk_over_https_is_answered_as_over_http(
    stack: Stack, tenant: TenantAccess, trusting_client: openai.DefaultHttpxClient
) -> None:
    secure = openai.OpenAI(
        base_url=f"{stack.config.gateway_tls_url}/v1",
        api_key=tenant.api_key,
        http_client=trusting_client,
        max_retries=0,
    )
    plain = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=tenant.api_key, max_retries=0
    )
    for client in (secure, plain):
        reply = client.chat.completions.create(model="gpt-test", messages=MESSAGES)
        assert reply.choices[0].message.content == "Echo: hello over tls"
        assert reply.usage is not None and reply.usage.prompt_tokens > 0

        chunks = list(
            client.chat.completions.create(model="gpt-test", messages=MESSAGES, stream=True)
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Echo: hello over tls"
        # The gateway hides the usage chunk it asked for; the client did not.
        assert all(chunk.usage is None for chunk in chunks)

    # The gateway's own answers too (a bad key).
    with pytest.raises(openai.AuthenticationError):
        secure.with_options(api_key="gz-not-a-key-0123456789").models.list()


def test_a_client_that_does_not_trust_the_local_ca_is_refused(stack: Stack) -> None:
    # The default trust store (certifi's public CAs) does not hold the stack's own CA.
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_tls_url}/v1", api_key="gz-any", max_retries=0
    )
    with pytest.raises(openai.APIConnectionError) as refused:
        client.models.list()
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value.__cause__)
    # Nor is a name the certificate does not hold accepted by a client that trusts the CA.
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        served_by_name(stack, "gateway.example.com")


def served_by_name(stack: Stack, server_hostname: str) -> None:
    """A TLS handshake with the listener, asking for `server_hostname` (SNI and name check)."""
    assert stack.tls is not None and stack.tls.ca_file is not None
    context = ssl.create_default_context(cafile=stack.tls.ca_file)
    with (
        socket.create_connection(("127.0.0.1", stack.config.tls_port), timeout=5) as sock,
        context.wrap_socket(sock, server_hostname=server_hostname),
    ):
        pass


def test_the_certificate_is_the_one_kept_and_survives_a_proxy_restart(
    stack: Stack,
    server_tls: ServerTls,
    tenant: TenantAccess,
    trusting_client: openai.DefaultHttpxClient,
) -> None:
    assert server_tls.ca_file is not None
    assert server_tls.cert_file.parent == stack.config.tls_dir
    before = served_certificate(stack, server_tls.ca_file)
    assert before == x509.load_pem_x509_certificate(server_tls.cert_file.read_bytes())
    kept = server_tls.cert_file.read_bytes(), server_tls.key_file.read_bytes()
    served_by_name(stack, "localhost")

    proxy = "apisix" if stack.config.proxy == "apisix" else "envoy"
    stack.stop_process(proxy)
    if proxy == "apisix":
        stack.start_data_plane()
    else:
        stack.start_envoy()

    assert stack.tls == server_tls
    assert (server_tls.cert_file.read_bytes(), server_tls.key_file.read_bytes()) == kept
    assert served_certificate(stack, server_tls.ca_file) == before
    answer = trusting_client.get(
        f"{stack.config.gateway_tls_url}/v1/models",
        headers={"authorization": f"Bearer {tenant.api_key}"},
    )
    assert answer.status_code == 200, answer.text


def bedrock_client(stack: Stack, prefix: str, token: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    assert stack.tls is not None and stack.tls.ca_file is not None
    # botocore ≥ 1.39 signs Bedrock calls with this token (Authorization: Bearer), over HTTPS only.
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", token)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    return boto3.Session().client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=f"{stack.config.gateway_tls_url}{prefix}",
        verify=str(stack.tls.ca_file),
        config=Config(retries={"max_attempts": 1}),
    )


def test_boto3_bedrock_sends_its_bearer_token_to_the_gateway_over_https(
    stack: Stack, admin: Admin, tenant: TenantAccess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An LLM route of its own: requests under it are authenticated, then answered by the
    # gateway (Bedrock's paths are not routed to a provider: a 404 after authentication).
    prefix = f"/bedrock-{uuid.uuid4().hex[:8]}"
    created = admin.control.CreateRoute(
        control_pb2.CreateRouteRequest(
            route=policy_pb2.Route(
                id=prefix.removeprefix("/"), path_prefix=prefix, kind=policy_pb2.ROUTE_KIND_LLM
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    call = {"modelId": "no-such-model", "messages": [{"role": "user", "content": [{"text": "hi"}]}]}

    with pytest.raises(ClientError) as wrong_key:
        bedrock_client(stack, prefix, "gz-not-a-key-0123456789", monkeypatch).converse(**call)
    with pytest.raises(ClientError) as right_key:
        bedrock_client(stack, prefix, tenant.api_key, monkeypatch).converse(**call)

    # The token arrived (a wrong one is refused as invalid, not as missing) ...
    refused = wrong_key.value.response
    assert refused["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert "missing credential" not in str(refused)
    # ... and the right one authenticated the tenant, whose request the gateway answered.
    answered = right_key.value.response
    assert answered["ResponseMetadata"]["HTTPStatusCode"] == 404, answered
    assert answered["ResponseMetadata"]["HTTPHeaders"]["x-request-id"]
    assert [(row.path, row.status) for row in request_logs(admin, tenant.tenant_id)] == [
        (f"{prefix}/model/no-such-model/converse", 404)
    ]


def request_logs(admin: Admin, tenant_id: str) -> list[Any]:
    """The tenant's request log rows, once there is one (rows are written in batches)."""
    deadline = time.monotonic() + 10
    while True:
        rows = admin.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
        ).request_logs
        if rows or time.monotonic() > deadline:
            return list(rows)
        time.sleep(0.1)


def test_a_rest_upstream_learns_the_client_came_over_https(
    stack: Stack,
    admin: Admin,
    tenant: TenantAccess,
    upstream: UpstreamServer,
    trusting_client: openai.DefaultHttpxClient,
) -> None:
    prefix = create_rest_route(admin, upstream)
    seen = []
    for origin in (stack.config.gateway_tls_url, stack.config.gateway_url):
        before = len(upstream.recorder.requests)
        trusting_client.get(
            f"{origin}{prefix}/models", headers={"authorization": f"Bearer {tenant.api_key}"}
        )
        (reached,) = upstream.recorder.requests[before:]
        seen.append(reached.header("x-forwarded-proto"))
    assert seen == ["https", "http"]
