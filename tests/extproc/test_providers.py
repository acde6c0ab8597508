"""extproc.providers: each kind's request path and headers, and Bedrock's SigV4 signature —
verified on the receiving side by an implementation of AWS's spec written here (hashlib and
hmac only) and shown equal to stock botocore's, with the path boto3 itself sends."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import quote

import boto3
import orjson
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config

from extproc.providers import (
    EMBEDDINGS,
    RESPONSES,
    ProviderRequest,
    models_list_request,
    provider_request,
)
from gatez.errors import InvalidRequest
from gatez.policy import ProviderTarget, compile_policy
from gatez.v1 import policy_pb2

BODY = orjson.dumps({"messages": [{"role": "user", "content": [{"text": "Hello"}]}]})
JSON = ("content-type", "application/json")
ACCESS_KEY = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-v1:0"


def target(
    kind: policy_pb2.ProviderKind,
    base_url: str,
    credential: str | None = "key",
    **fields: Any,
) -> ProviderTarget:
    """The provider as a data plane compiles it."""
    snapshot = policy_pb2.PolicySnapshot(
        providers=[policy_pb2.Provider(name="p", kind=kind, base_url=base_url, **fields)]
    )
    if credential is not None:
        snapshot.provider_credentials.add(provider="p", api_key=credential)
    return compile_policy(snapshot).providers["p"]


def key_pair(token: str = "") -> str:
    fields = {"access_key_id": ACCESS_KEY, "secret_access_key": SECRET}
    return orjson.dumps(fields | ({"session_token": token} if token else {})).decode()


OPENAI = target(policy_pb2.PROVIDER_KIND_OPENAI, "https://api.openai.com/v1")
AZURE = target(
    policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
    "https://acme.openai.azure.com",
    azure_api_version="2024-10-21",
)
AZURE_V1 = target(
    policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
    "https://acme.openai.azure.com/openai/v1/",
    azure_api_version="v1",
)
ANTHROPIC = target(policy_pb2.PROVIDER_KIND_ANTHROPIC, "https://api.anthropic.com")
GEMINI = target(policy_pb2.PROVIDER_KIND_GEMINI, "https://generativelanguage.googleapis.com")
OLLAMA = target(policy_pb2.PROVIDER_KIND_OLLAMA, "http://ollama:11434", credential=None)
BEDROCK_URL = "https://bedrock-runtime.us-east-1.amazonaws.com"
BEDROCK_KEY = target(
    policy_pb2.PROVIDER_KIND_BEDROCK, BEDROCK_URL, auth=policy_pb2.PROVIDER_AUTH_API_KEY
)
BEDROCK = target(policy_pb2.PROVIDER_KIND_BEDROCK, BEDROCK_URL, key_pair())
BEDROCK_TEMPORARY = target(policy_pb2.PROVIDER_KIND_BEDROCK, BEDROCK_URL, key_pair("FQoGZX-token"))


@pytest.mark.parametrize(
    ("provider", "model", "stream", "path", "headers"),
    [
        (
            OPENAI,
            "gpt-4o",
            True,
            "/v1/chat/completions",
            (JSON, ("authorization", "Bearer key")),
        ),
        (
            AZURE,
            "gpt-4o-prod",
            False,
            "/openai/deployments/gpt-4o-prod/chat/completions?api-version=2024-10-21",
            (JSON, ("api-key", "key")),
        ),
        (AZURE_V1, "gpt-4o-prod", True, "/openai/v1/chat/completions", (JSON, ("api-key", "key"))),
        (
            ANTHROPIC,
            "claude-sonnet-4-5",
            True,
            "/v1/messages",
            (JSON, ("x-api-key", "key"), ("anthropic-version", "2023-06-01")),
        ),
        (
            GEMINI,
            "gemini-2.0-flash",
            False,
            "/v1beta/models/gemini-2.0-flash:generateContent",
            (JSON, ("x-goog-api-key", "key")),
        ),
        (
            GEMINI,
            "gemini-2.0-flash",
            True,
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse",
            (JSON, ("x-goog-api-key", "key")),
        ),
        (
            GEMINI,
            "models/gemini-2.5-pro",
            True,
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
            (JSON, ("x-goog-api-key", "key")),
        ),
        (OLLAMA, "llama3.2", True, "/api/chat", (JSON,)),
        (
            BEDROCK_KEY,
            CLAUDE,
            False,
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
            (JSON, ("authorization", "Bearer key")),
        ),
        (
            BEDROCK_KEY,
            PROFILE_ARN,
            True,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
            "us.anthropic.claude-v1%3A0/converse-stream",
            (JSON, ("authorization", "Bearer key")),
        ),
    ],
    ids=[
        "openai",
        "azure-deployment",
        "azure-v1",
        "anthropic",
        "gemini",
        "gemini-stream",
        "gemini-models-prefix",
        "ollama-no-key",
        "bedrock-api-key",
        "bedrock-arn-stream",
    ],
)
def test_each_kind_gets_its_path_and_headers(
    provider: ProviderTarget,
    model: str,
    stream: bool,
    path: str,
    headers: tuple[tuple[str, str], ...],
) -> None:
    assert provider_request(provider, model=model, stream=stream, body=BODY) == ProviderRequest(
        path, headers
    )


def test_base_url_forms_of_a_kind_reach_the_same_paths() -> None:
    with_v1 = target(policy_pb2.PROVIDER_KIND_ANTHROPIC, "https://api.anthropic.com/v1/")
    gemini_v1 = target(
        policy_pb2.PROVIDER_KIND_GEMINI, "https://generativelanguage.googleapis.com/v1"
    )
    azure_openai = target(
        policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
        "https://apim.example.com/llm/openai",
        azure_api_version="2025-04-01-preview",
    )
    ollama_key = target(policy_pb2.PROVIDER_KIND_OLLAMA, "https://ollama.com")

    def path(provider: ProviderTarget, model: str = "m") -> str:
        return provider_request(provider, model=model, stream=False, body=BODY).path

    assert path(with_v1) == "/v1/messages"
    assert path(gemini_v1) == "/v1/models/m:generateContent"
    assert path(azure_openai) == (
        "/llm/openai/deployments/m/chat/completions?api-version=2025-04-01-preview"
    )
    assert provider_request(ollama_key, model="m", stream=False, body=BODY).headers == (
        JSON,
        ("authorization", "Bearer key"),
    )


@pytest.mark.parametrize(
    ("provider", "stream", "query", "path"),
    [
        (OPENAI, False, "timeout=3&key=gz-secret", "/v1/chat/completions?timeout=3"),
        (OPENAI, False, "key=gz-secret", "/v1/chat/completions"),
        (
            AZURE,
            False,
            "api-version=2023-05-15&x=1",
            "/openai/deployments/d/chat/completions?api-version=2024-10-21&x=1",
        ),
        (
            GEMINI,
            True,
            "alt=json&ke%79=gz-secret&KEY=gz&$fields=candidates",
            "/v1beta/models/d:streamGenerateContent?alt=sse&$fields=candidates",
        ),
        (GEMINI, False, "alt=sse", "/v1beta/models/d:generateContent"),
        (BEDROCK_KEY, False, "x=1", "/model/d/converse"),
    ],
    ids=["openai", "openai-only-key", "azure", "gemini-stream", "gemini", "bedrock"],
)
def test_the_clients_query_goes_on_without_credentials_or_what_the_gateway_sets(
    provider: ProviderTarget, stream: bool, query: str, path: str
) -> None:
    assert provider_request(provider, model="d", stream=stream, body=BODY, query=query).path == path


@pytest.mark.parametrize(
    ("provider", "operation", "path"),
    [
        (OPENAI, EMBEDDINGS, "/v1/embeddings"),
        (OPENAI, RESPONSES, "/v1/responses"),
        (AZURE, EMBEDDINGS, "/openai/deployments/emb/embeddings?api-version=2024-10-21"),
        (AZURE, RESPONSES, "/openai/responses?api-version=2024-10-21"),
        (AZURE_V1, EMBEDDINGS, "/openai/v1/embeddings"),
        (AZURE_V1, RESPONSES, "/openai/v1/responses"),
    ],
)
def test_openai_operations_on_openai_and_azure(
    provider: ProviderTarget, operation: str, path: str
) -> None:
    request = provider_request(provider, model="emb", stream=False, body=BODY, operation=operation)
    assert request.path == path


@pytest.mark.parametrize("provider", [ANTHROPIC, GEMINI, OLLAMA, BEDROCK])
def test_other_kinds_refuse_openai_operations(provider: ProviderTarget) -> None:
    with pytest.raises(InvalidRequest, match=r"provider 'p' \(\w+\) has no embeddings API"):
        provider_request(provider, model="m", stream=False, body=BODY, operation=EMBEDDINGS)


@pytest.mark.parametrize(
    ("provider", "path", "headers"),
    [
        (OPENAI, "/v1/models", (("authorization", "Bearer key"),)),
        (AZURE, "/openai/models?api-version=2024-10-21", (("api-key", "key"),)),
        (AZURE_V1, "/openai/v1/models", (("api-key", "key"),)),
        (
            ANTHROPIC,
            "/v1/models",
            (("x-api-key", "key"), ("anthropic-version", "2023-06-01")),
        ),
        (GEMINI, "/v1beta/models", (("x-goog-api-key", "key"),)),
        (OLLAMA, "/api/tags", ()),
    ],
)
def test_models_list_per_kind(
    provider: ProviderTarget, path: str, headers: tuple[tuple[str, str], ...]
) -> None:
    assert models_list_request(provider) == ProviderRequest(path, headers, "GET")


def test_bedrock_has_no_models_list_on_its_runtime_host() -> None:
    assert models_list_request(BEDROCK) is None


# SigV4, verified on the receiving side.


def verify_sigv4(
    method: str, host: str, path: str, headers: Mapping[str, str], body: bytes, secret: str
) -> bool:
    """A Bedrock endpoint's check, from AWS's spec (Signature Version 4: create a canonical
    request, a string to sign, the signing key, the signature), with hashlib and hmac only."""
    algorithm, _, fields = headers["authorization"].partition(" ")
    parts = dict(part.strip().split("=", 1) for part in fields.split(","))
    access_key, day, region, service, terminator = parts["Credential"].split("/")
    signed_names = parts["SignedHeaders"].split(";")
    received = {**headers, "host": host}
    assert {"host", "x-amz-date"} <= set(signed_names)
    canonical = "\n".join(
        [
            method,
            # Every segment URI-encoded twice for services other than S3: the path on the wire
            # is encoded once already.
            quote(path.partition("?")[0], safe="/-_.~"),
            "",
            "".join(f"{name}:{' '.join(received[name].split())}\n" for name in signed_names),
            ";".join(signed_names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    to_sign = "\n".join(
        [
            algorithm,
            headers["x-amz-date"],
            f"{day}/{region}/{service}/{terminator}",
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for step in (day, region, service, terminator):
        key = hmac.digest(key, step.encode(), "sha256")
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        access_key == ACCESS_KEY
        and headers["x-amz-date"].startswith(day)
        and hmac.compare_digest(expected, parts["Signature"])
    )


def sent(request: ProviderRequest) -> dict[str, str]:
    headers = dict(request.headers)
    assert len(headers) == len(request.headers), "a header set twice"
    return headers


@pytest.mark.parametrize("provider", [BEDROCK, BEDROCK_TEMPORARY], ids=["keys", "temporary"])
@pytest.mark.parametrize("model", [CLAUDE, PROFILE_ARN])
def test_a_sigv4_signature_verifies_on_the_receiving_side(
    provider: ProviderTarget, model: str
) -> None:
    request = provider_request(provider, model=model, stream=True, body=BODY)
    headers = sent(request)
    host = provider.authority
    assert host == "bedrock-runtime.us-east-1.amazonaws.com"
    assert headers["authorization"].startswith(
        f"AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{headers['x-amz-date'][:8]}/us-east-1/"
        "bedrock/aws4_request, SignedHeaders=host;x-amz-date"
    )
    assert verify_sigv4("POST", host, request.path, headers, BODY, SECRET)
    # The check could fail: a wrong secret, another body, host or path do not verify.
    assert not verify_sigv4("POST", host, request.path, headers, BODY, SECRET[:-1] + "X")
    assert not verify_sigv4("POST", host, request.path, headers, BODY + b" ", SECRET)
    assert not verify_sigv4("POST", host + ":443", request.path, headers, BODY, SECRET)
    assert not verify_sigv4("POST", host, request.path + "x", headers, BODY, SECRET)


def test_a_session_token_is_sent_and_signed() -> None:
    headers = sent(provider_request(BEDROCK_TEMPORARY, model=CLAUDE, stream=False, body=BODY))
    assert headers["x-amz-security-token"] == "FQoGZX-token"
    assert "SignedHeaders=host;x-amz-date;x-amz-security-token," in headers["authorization"]
    assert not verify_sigv4(
        "POST",
        BEDROCK.authority,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse",
        {**headers, "x-amz-security-token": "another-token"},
        BODY,
        SECRET,
    )
    long_lived = sent(provider_request(BEDROCK, model=CLAUDE, stream=False, body=BODY))
    assert "x-amz-security-token" not in long_lived
    assert "SignedHeaders=host;x-amz-date," in long_lived["authorization"]


def test_a_non_default_port_is_part_of_the_signed_host() -> None:
    provider = target(
        policy_pb2.PROVIDER_KIND_BEDROCK,
        "https://bedrock.proxy.internal:8443/aws",
        key_pair(),
        aws_region="eu-central-1",
    )
    request = provider_request(provider, model=CLAUDE, stream=False, body=BODY)
    assert request.path == "/aws/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    headers = sent(request)
    assert "/eu-central-1/bedrock/aws4_request" in headers["authorization"]
    host = "bedrock.proxy.internal:8443"
    assert provider.authority == host
    assert verify_sigv4("POST", host, request.path, headers, BODY, SECRET)
    assert not verify_sigv4("POST", "bedrock.proxy.internal", request.path, headers, BODY, SECRET)


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> dt.datetime:
    moment = dt.datetime(2026, 12, 2, 6, 30, 5)
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: moment)
    return moment


@pytest.mark.parametrize("provider", [BEDROCK, BEDROCK_TEMPORARY], ids=["keys", "temporary"])
def test_the_signature_is_botocores_over_the_sent_host_path_and_body(
    provider: ProviderTarget, frozen_clock: dt.datetime
) -> None:
    request = provider_request(provider, model=PROFILE_ARN, stream=False, body=BODY)
    stock = AWSRequest(
        method="POST",
        url=f"https://{provider.authority}{request.path}",
        data=BODY,
        headers={"host": provider.authority},
    )
    assert provider.aws_credentials is not None
    SigV4Auth(provider.aws_credentials, "bedrock", "us-east-1").add_auth(stock)
    headers = sent(request)
    assert headers["x-amz-date"] == "20261202T063005Z" == stock.headers["X-Amz-Date"]
    assert headers["authorization"] == stock.headers["Authorization"]


class Captured(Exception):
    """Stops boto3 once it has signed its request."""

    def __init__(self, request: AWSRequest) -> None:
        super().__init__("captured")
        self.request = request


@pytest.fixture
def boto3_request() -> Iterator[Any]:
    """The request boto3's own bedrock-runtime client signs for a Converse call."""
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET,
        config=Config(retries={"max_attempts": 1}),
    )

    def capture(request: AWSRequest, **_: Any) -> None:
        raise Captured(request)

    client.meta.events.register("before-send.bedrock-runtime.*", capture)

    def converse(model: str, stream: bool) -> AWSRequest:
        call = client.converse_stream if stream else client.converse
        with pytest.raises(Captured) as caught:
            call(modelId=model, messages=[{"role": "user", "content": [{"text": "Hello"}]}])
        return caught.value.request

    yield converse
    client.close()


@pytest.mark.parametrize("model", [CLAUDE, PROFILE_ARN, "us.amazon.nova-pro-v1:0"])
@pytest.mark.parametrize("stream", [False, True])
def test_the_path_and_signed_host_are_the_ones_boto3_sends(
    boto3_request: Any, model: str, stream: bool
) -> None:
    theirs = boto3_request(model, stream)
    ours = provider_request(BEDROCK, model=model, stream=stream, body=BODY)
    assert f"{BEDROCK_URL}{ours.path}" == theirs.url
    # boto3 signs the host without the default port, as the gateway sends it.
    assert theirs.headers["Authorization"].startswith(b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "host" in theirs.headers["Authorization"].decode().split("SignedHeaders=")[1]
    assert BEDROCK.authority == theirs.url.split("/")[2]
