"""ControlService: providers of every kind — created, updated, compiled as data planes compile
them — and each kind's faults refused with INVALID_ARGUMENT naming the fault, never the secret."""

from __future__ import annotations

from typing import Any

import grpc
import orjson
import pytest

from gatez.policy import ProviderKind, compile_policy
from gatez.secrets import SecretBox
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, rpc_error
from tests.control.test_admin import current_snapshot

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
AWS_KEY_PAIR = orjson.dumps(
    {"access_key_id": "AKIDEXAMPLE", "secret_access_key": AWS_SECRET, "session_token": "tok"}
).decode()

# (provider, credential, what the data plane compiles it to: kind, authority, path prefix)
KINDS: list[tuple[policy_pb2.Provider, str, tuple[ProviderKind, str, str]]] = [
    (
        policy_pb2.Provider(
            name="openai",
            kind=policy_pb2.PROVIDER_KIND_OPENAI,
            base_url="https://api.openai.com/v1",
        ),
        "sk-openai",
        (ProviderKind.OPENAI, "api.openai.com", "/v1"),
    ),
    (
        policy_pb2.Provider(
            name="azure",
            kind=policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
            base_url="https://acme.openai.azure.com/",
            azure_api_version="2024-10-21",
        ),
        "azure-key",
        (ProviderKind.AZURE_OPENAI, "acme.openai.azure.com", ""),
    ),
    (
        policy_pb2.Provider(
            name="anthropic",
            kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
            base_url="https://api.anthropic.com",
        ),
        "sk-ant",
        (ProviderKind.ANTHROPIC, "api.anthropic.com", "/v1"),
    ),
    (
        policy_pb2.Provider(
            name="gemini",
            kind=policy_pb2.PROVIDER_KIND_GEMINI,
            base_url="https://generativelanguage.googleapis.com",
        ),
        "AIza-key",
        (ProviderKind.GEMINI, "generativelanguage.googleapis.com", "/v1beta"),
    ),
    (
        policy_pb2.Provider(
            name="ollama", kind=policy_pb2.PROVIDER_KIND_OLLAMA, base_url="http://ollama:11434"
        ),
        "",
        (ProviderKind.OLLAMA, "ollama:11434", ""),
    ),
    (
        policy_pb2.Provider(
            name="bedrock",
            kind=policy_pb2.PROVIDER_KIND_BEDROCK,
            base_url="https://bedrock-runtime.eu-west-3.amazonaws.com",
        ),
        AWS_KEY_PAIR,
        (ProviderKind.BEDROCK, "bedrock-runtime.eu-west-3.amazonaws.com", ""),
    ),
]


async def create(api: Api, provider: policy_pb2.Provider, api_key: str = "") -> Any:
    return await api.control.CreateProvider(
        api_pb.CreateProviderRequest(provider=provider, api_key=api_key), metadata=AUTH
    )


async def update(api: Api, provider: policy_pb2.Provider, api_key: str = "") -> Any:
    return await api.control.UpdateProvider(
        api_pb.UpdateProviderRequest(provider=provider, api_key=api_key), metadata=AUTH
    )


async def test_every_kind_is_created_and_compiles_as_data_planes_compile_it(
    api: Api, box: SecretBox
) -> None:
    for provider, credential, _ in KINDS:
        created = await create(api, provider, credential)
        assert created.provider.has_credential is bool(credential)
    compiled = compile_policy(await current_snapshot(api), box)
    for provider, _, (kind, authority, prefix) in KINDS:
        target = compiled.providers[provider.name]
        assert (target.kind, target.authority, target.path_prefix) == (kind, authority, prefix)
    bedrock = compiled.providers["bedrock"]
    assert bedrock.aws_region == "eu-west-3" and bedrock.api_key is None
    assert bedrock.aws_credentials is not None
    assert bedrock.aws_credentials.secret_key == AWS_SECRET
    assert compiled.providers["azure"].azure_api_version == "2024-10-21"
    listed = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert [p.kind for p in listed.providers] == [p.kind for p, _, _ in KINDS]


async def test_update_replaces_settings_and_keeps_the_credential(api: Api, box: SecretBox) -> None:
    bedrock = policy_pb2.Provider()
    bedrock.CopyFrom(KINDS[-1][0])
    await create(api, bedrock, AWS_KEY_PAIR)
    bedrock.aws_region = "us-gov-west-1"
    bedrock.forward_headers.append("x-trace")
    updated = await update(api, bedrock)
    assert updated.provider.aws_region == "us-gov-west-1"
    assert updated.provider.has_credential
    target = compile_policy(await current_snapshot(api), box).providers["bedrock"]
    assert target.aws_region == "us-gov-west-1" and "x-trace" in target.forward_headers
    assert target.aws_credentials is not None and target.aws_credentials.token == "tok"

    # Moving to a Bedrock API key needs a credential of that form: given in the same call.
    bedrock.auth = policy_pb2.PROVIDER_AUTH_API_KEY
    await update(api, bedrock, api_key="bedrock-api-key-123")
    target = compile_policy(await current_snapshot(api), box).providers["bedrock"]
    assert (target.api_key, target.aws_credentials) == ("bedrock-api-key-123", None)


async def test_update_can_change_the_kind(api: Api, box: SecretBox) -> None:
    await create(api, KINDS[0][0], "sk-openai")
    azure = policy_pb2.Provider()
    azure.CopyFrom(KINDS[1][0])
    azure.name = "openai"
    await update(api, azure)
    target = compile_policy(await current_snapshot(api), box).providers["openai"]
    assert (target.kind, target.api_key) == (ProviderKind.AZURE_OPENAI, "sk-openai")


async def test_update_of_a_missing_provider_is_not_found(api: Api) -> None:
    error = await rpc_error(update(api, KINDS[0][0]))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "provider 'openai' not found" in (error.details() or "")


def _bedrock(**fields: Any) -> policy_pb2.Provider:
    return policy_pb2.Provider(
        name="bedrock",
        kind=policy_pb2.PROVIDER_KIND_BEDROCK,
        base_url=fields.pop("base_url", "https://bedrock-runtime.us-east-1.amazonaws.com"),
        **fields,
    )


REFUSED: list[tuple[str, policy_pb2.Provider, str, str]] = [
    (
        "no-kind",
        policy_pb2.Provider(name="x", base_url="https://x"),
        "",
        "provider.kind is required: one of PROVIDER_KIND_OPENAI, PROVIDER_KIND_AZURE_OPENAI",
    ),
    (
        "azure-no-version",
        policy_pb2.Provider(
            name="azure",
            kind=policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
            base_url="https://acme.openai.azure.com",
        ),
        "",
        "provider 'azure': azure_api_version is required",
    ),
    (
        "azure-deployment-url",
        policy_pb2.Provider(
            name="azure",
            kind=policy_pb2.PROVIDER_KIND_AZURE_OPENAI,
            base_url="https://acme.openai.azure.com/openai/deployments/gpt4o",
            azure_api_version="2024-10-21",
        ),
        "",
        "the deployment is the model route's upstream_model",
    ),
    (
        "version-on-openai",
        policy_pb2.Provider(
            name="openai",
            kind=policy_pb2.PROVIDER_KIND_OPENAI,
            base_url="https://api.openai.com/v1",
            azure_api_version="2024-10-21",
        ),
        "",
        "azure_api_version is for AZURE_OPENAI providers only",
    ),
    (
        "ollama-api-path",
        policy_pb2.Provider(
            name="ollama", kind=policy_pb2.PROVIDER_KIND_OLLAMA, base_url="http://ollama/api"
        ),
        "",
        "without /api",
    ),
    (
        "bedrock-no-region",
        _bedrock(base_url="https://llm-proxy.internal"),
        "",
        "provider 'bedrock': aws_region is required",
    ),
    ("bedrock-bad-region", _bedrock(aws_region="Mars-1"), "", "'Mars-1' is not an AWS region"),
    (
        "bedrock-key-not-json",
        _bedrock(),
        "AKIDEXAMPLE:" + AWS_SECRET,
        "the credential for auth AWS_SIGV4 must be a JSON object",
    ),
    (
        "bedrock-key-no-secret",
        _bedrock(),
        orjson.dumps({"access_key_id": "AKIDEXAMPLE"}).decode(),
        "secret_access_key must be a non-empty string",
    ),
    (
        "sigv4-on-anthropic",
        policy_pb2.Provider(
            name="anthropic",
            kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
            base_url="https://api.anthropic.com",
            auth=policy_pb2.PROVIDER_AUTH_AWS_SIGV4,
        ),
        "",
        "auth AWS_SIGV4 is for BEDROCK providers only",
    ),
]


@pytest.mark.parametrize(
    ("provider", "credential", "words"),
    [case[1:] for case in REFUSED],
    ids=[case[0] for case in REFUSED],
)
async def test_a_kinds_faults_are_refused_naming_the_fault(
    api: Api, provider: policy_pb2.Provider, credential: str, words: str
) -> None:
    error = await rpc_error(create(api, provider, credential))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (error.details() or "")
    assert AWS_SECRET not in (error.details() or "")
    # Nothing was saved: the same provider, made valid, is created afterwards.
    listed = await api.control.ListProviders(api_pb.ListProvidersRequest(), metadata=AUTH)
    assert list(listed.providers) == []


async def test_an_update_that_breaks_the_credential_is_refused_and_loses_nothing(
    api: Api, box: SecretBox
) -> None:
    await create(api, _bedrock(auth=policy_pb2.PROVIDER_AUTH_API_KEY), "bedrock-api-key-123")
    # SigV4 with the API key still set as the credential: not a key pair.
    error = await rpc_error(update(api, _bedrock(auth=policy_pb2.PROVIDER_AUTH_AWS_SIGV4)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "must be a JSON object" in (error.details() or "")
    assert "bedrock-api-key-123" not in (error.details() or "")
    target = compile_policy(await current_snapshot(api), box).providers["bedrock"]
    assert target.api_key == "bedrock-api-key-123"
