"""Provider kinds in the compiled policy: each kind's base_url forms, Azure's api-version,
Bedrock's region and SigV4 key pair; faults refuse the snapshot naming them, never a secret."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gatez.errors import InvalidPolicy
from gatez.policy import ProviderKind, ProviderTarget, compile_policy
from gatez.v1 import policy_pb2

K = policy_pb2
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"


def compiled(
    kind: policy_pb2.ProviderKind, base_url: str, credential: str | None = None, **fields: Any
) -> ProviderTarget:
    snapshot = policy_pb2.PolicySnapshot(
        providers=[policy_pb2.Provider(name="p", kind=kind, base_url=base_url, **fields)]
    )
    if credential is not None:
        snapshot.provider_credentials.add(provider="p", api_key=credential)
    return compile_policy(snapshot).providers["p"]


@pytest.mark.parametrize(
    ("kind", "base_url", "fields", "authority", "prefix"),
    [
        (K.PROVIDER_KIND_ANTHROPIC, "https://api.anthropic.com", {}, "api.anthropic.com", "/v1"),
        (
            K.PROVIDER_KIND_ANTHROPIC,
            "https://api.anthropic.com/v1/",
            {},
            "api.anthropic.com",
            "/v1",
        ),
        (
            K.PROVIDER_KIND_ANTHROPIC,
            "https://api.deepseek.com/anthropic",
            {},
            "api.deepseek.com",
            "/anthropic/v1",
        ),
        (
            K.PROVIDER_KIND_GEMINI,
            "https://generativelanguage.googleapis.com",
            {},
            "generativelanguage.googleapis.com",
            "/v1beta",
        ),
        (
            K.PROVIDER_KIND_GEMINI,
            "https://generativelanguage.googleapis.com/v1",
            {},
            "generativelanguage.googleapis.com",
            "/v1",
        ),
        (K.PROVIDER_KIND_OLLAMA, "http://localhost:11434", {}, "localhost:11434", ""),
        (
            K.PROVIDER_KIND_AZURE_OPENAI,
            "https://acme.openai.azure.com/openai",
            {"azure_api_version": "2024-10-21"},
            "acme.openai.azure.com",
            "",
        ),
        (
            K.PROVIDER_KIND_AZURE_OPENAI,
            "https://acme.openai.azure.com/openai/v1",
            {"azure_api_version": "v1"},
            "acme.openai.azure.com",
            "",
        ),
        (
            K.PROVIDER_KIND_AZURE_OPENAI,
            "https://acme.cognitiveservices.azure.com",
            {"azure_api_version": "2025-04-01-preview"},
            "acme.cognitiveservices.azure.com",
            "",
        ),
        (
            K.PROVIDER_KIND_BEDROCK,
            "https://bedrock-runtime.ap-southeast-2.amazonaws.com/",
            {},
            "bedrock-runtime.ap-southeast-2.amazonaws.com",
            "",
        ),
    ],
)
def test_each_kinds_base_url_forms(
    kind: policy_pb2.ProviderKind,
    base_url: str,
    fields: dict[str, Any],
    authority: str,
    prefix: str,
) -> None:
    provider = compiled(kind, base_url, **fields)
    assert (provider.authority, provider.path_prefix) == (authority, prefix)


@pytest.mark.parametrize(
    ("base_url", "region"),
    [
        ("https://bedrock-runtime.us-east-1.amazonaws.com", "us-east-1"),
        ("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1"),
        ("https://bedrock-runtime.cn-north-1.amazonaws.com.cn", "cn-north-1"),
        (
            "https://vpce-0a1b2c3d-e4f5.bedrock-runtime.eu-west-1.vpce.amazonaws.com",
            "eu-west-1",
        ),
    ],
)
def test_bedrocks_region_comes_from_its_host(base_url: str, region: str) -> None:
    provider = compiled(K.PROVIDER_KIND_BEDROCK, base_url)
    assert provider.aws_region == region
    # No credential yet: nothing to sign with (Bedrock answers 403 until one is set).
    assert (provider.aws_credentials, provider.api_key) == (None, None)


def test_an_explicit_region_wins_over_the_hosts() -> None:
    provider = compiled(
        K.PROVIDER_KIND_BEDROCK,
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        aws_region="us-west-2",
    )
    assert provider.aws_region == "us-west-2"


def test_a_sigv4_key_pair_compiles_to_botocore_credentials() -> None:
    credential = orjson.dumps(
        {"access_key_id": "AKIDEXAMPLE", "secret_access_key": SECRET, "session_token": "tok"}
    ).decode()
    provider = compiled(
        K.PROVIDER_KIND_BEDROCK, "https://bedrock-runtime.us-east-1.amazonaws.com", credential
    )
    assert provider.kind is ProviderKind.BEDROCK and provider.api_key is None
    assert provider.aws_credentials is not None
    frozen = provider.aws_credentials.get_frozen_credentials()
    assert (frozen.access_key, frozen.secret_key, frozen.token) == ("AKIDEXAMPLE", SECRET, "tok")


def test_a_bedrock_api_key_is_kept_as_the_api_key() -> None:
    provider = compiled(
        K.PROVIDER_KIND_BEDROCK,
        "https://bedrock-runtime.us-east-1.amazonaws.com",
        "bedrock-api-key-abc",
        auth=K.PROVIDER_AUTH_API_KEY,
    )
    assert (provider.api_key, provider.aws_credentials) == ("bedrock-api-key-abc", None)


BEDROCK = "https://bedrock-runtime.us-east-1.amazonaws.com"


@pytest.mark.parametrize(
    ("kind", "base_url", "credential", "fields", "message"),
    [
        (
            K.PROVIDER_KIND_AZURE_OPENAI,
            "https://a.openai.azure.com",
            None,
            {"azure_api_version": "2024-10"},
            "azure_api_version is required: a dated version",
        ),
        (
            K.PROVIDER_KIND_AZURE_OPENAI,
            "https://a.openai.azure.com/openai/v1",
            None,
            {"azure_api_version": "2024-10-21"},
            "ends in /openai/v1 (the v1 API) but azure_api_version is '2024-10-21'",
        ),
        (
            K.PROVIDER_KIND_OLLAMA,
            "http://localhost:11434/v1",
            None,
            {},
            "Ollama's OpenAI-compatible /v1 is a provider of kind OPENAI",
        ),
        (
            K.PROVIDER_KIND_GEMINI,
            "https://generativelanguage.googleapis.com",
            None,
            {"aws_region": "us-east-1"},
            "aws_region is for BEDROCK providers only",
        ),
        (
            K.PROVIDER_KIND_BEDROCK,
            "https://bedrock.example.com",
            None,
            {},
            "aws_region is required",
        ),
        (
            K.PROVIDER_KIND_BEDROCK,
            BEDROCK,
            SECRET,
            {},
            "the credential for auth AWS_SIGV4 must be a JSON object",
        ),
        (K.PROVIDER_KIND_BEDROCK, BEDROCK, f'["{SECRET}"]', {}, "must be a JSON object"),
        (
            K.PROVIDER_KIND_BEDROCK,
            BEDROCK,
            f'{{"access_key_id": "A", "secret_access_key": "{SECRET}", "{SECRET}": 1}}',
            {},
            "has fields other than access_key_id, secret_access_key, session_token",
        ),
        (
            K.PROVIDER_KIND_BEDROCK,
            BEDROCK,
            f'{{"access_key_id": "", "secret_access_key": "{SECRET}"}}',
            {},
            "access_key_id must be a non-empty string",
        ),
        (
            K.PROVIDER_KIND_BEDROCK,
            BEDROCK,
            f'{{"access_key_id": "A", "secret_access_key": "{SECRET}", "session_token": 7}}',
            {},
            "session_token must be a string",
        ),
        (K.PROVIDER_KIND_OPENAI, "https://api.openai.com/v1", None, {"auth": 9}, "auth 9 unknown"),
    ],
)
def test_a_kinds_faults_refuse_the_policy_without_echoing_the_secret(
    kind: policy_pb2.ProviderKind,
    base_url: str,
    credential: str | None,
    fields: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(InvalidPolicy) as refused:
        compiled(kind, base_url, credential, **fields)
    assert message in str(refused.value)
    assert str(refused.value).startswith("provider 'p': ")
    assert SECRET not in str(refused.value)
