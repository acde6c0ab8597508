"""Bad input and failures, answered in the client's own schema and seen through each SDK's own
exception types: a malformed body, an unknown model, a missing or wrong Gatez key, a feature
the provider's schema cannot express, and a provider's error body — translated when the
provider speaks another schema, passed on as it is when not. Nothing the gateway refuses
reaches a provider.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import anthropic
import httpx
import ollama
import openai
import pytest
from botocore.exceptions import ClientError
from google.genai import errors as genai_errors

from tests.e2e.conftest import TenantAccess
from tests.e2e.providers.calls import (
    ALIAS_OF,
    BEDROCK_MESSAGES,
    MESSAGES,
    PROMPT,
    Clients,
    Gateway,
    Kind,
    Sdk,
)
from tests.e2e.providers.conftest import Fakes

WRONG_KEY: Final = "gz-not-a-key-0123456789abcdef"


@pytest.fixture
def clients(gateway: Gateway, monkeypatch: pytest.MonkeyPatch) -> Clients:
    return Clients(gateway, monkeypatch)


@pytest.fixture
def untouched(fakes: Fakes) -> Iterator[None]:
    """Asserts that no provider received anything during the test."""
    before = {kind: fakes.received(kind) for kind in Kind}
    yield
    assert {kind: fakes.received(kind) for kind in Kind} == before


# -- each schema's error shape, from raw HTTP ---------------------------------------------------

#: How each client API is called over plain HTTP: path (for the alias), and credential header.
RAW_CALLS: Final[dict[Sdk, tuple[str, dict[str, str]]]] = {
    Sdk.OPENAI: ("/v1/chat/completions", {}),
    Sdk.ANTHROPIC: ("/v1/messages", {"anthropic-version": "2023-06-01"}),
    Sdk.GEMINI: ("/v1beta/models/{alias}:generateContent", {}),
    Sdk.OLLAMA: ("/api/chat", {}),
    Sdk.BEDROCK: ("/model/{alias}/converse", {}),
}
CREDENTIAL_HEADER: Final = {
    Sdk.OPENAI: ("authorization", "Bearer {key}"),
    Sdk.ANTHROPIC: ("x-api-key", "{key}"),
    Sdk.GEMINI: ("x-goog-api-key", "{key}"),
    Sdk.OLLAMA: ("authorization", "Bearer {key}"),
    Sdk.BEDROCK: ("authorization", "Bearer {key}"),
}


def raw_call(
    gateway: Gateway, sdk: Sdk, key: str | None, body: bytes, alias: str = "to-anthropic"
) -> httpx.Response:
    path, headers = RAW_CALLS[sdk]
    headers = {**headers, "content-type": "application/json"}
    if key is not None:
        name, value = CREDENTIAL_HEADER[sdk]
        headers[name] = value.format(key=key)
    url = f"{gateway.tls_url if sdk is Sdk.BEDROCK else gateway.url}{path.format(alias=alias)}"
    return httpx.post(url, content=body, headers=headers, verify=gateway.ca_file)


def error_of(sdk: Sdk, response: httpx.Response) -> tuple[str, str]:
    """(the error's kind in the schema's words, its message), asserting the schema's shape."""
    assert response.headers["content-type"].startswith("application/json"), response.text
    body: Any = response.json()
    if sdk is Sdk.OPENAI:
        assert set(body["error"]) >= {"message", "type", "param", "code"}, body
        return body["error"]["type"], body["error"]["message"]
    if sdk is Sdk.ANTHROPIC:
        assert body["type"] == "error", body
        return body["error"]["type"], body["error"]["message"]
    if sdk is Sdk.GEMINI:
        assert body["error"]["code"] == response.status_code, body
        return body["error"]["status"], body["error"]["message"]
    if sdk is Sdk.OLLAMA:
        assert set(body) == {"error"} and isinstance(body["error"], str), body
        return "", body["error"]
    # Bedrock: the type as boto3 reads it (the x-amzn-ErrorType header, or the body's __type).
    kind = response.headers.get("x-amzn-errortype") or body.get("__type", "")
    return kind.partition(":")[0], body["message"]


MALFORMED: Final = {
    Sdk.OPENAI: "invalid_request_error",
    Sdk.ANTHROPIC: "invalid_request_error",
    Sdk.GEMINI: "INVALID_ARGUMENT",
    Sdk.OLLAMA: "",
    Sdk.BEDROCK: "ValidationException",
}


@pytest.mark.parametrize("sdk", list(Sdk), ids=[sdk.value for sdk in Sdk])
@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]"], ids=["not-json", "not-object"])
def test_a_malformed_body_is_a_400_in_the_clients_schema(
    gateway: Gateway, shared_tenant: TenantAccess, untouched: None, sdk: Sdk, body: bytes
) -> None:
    response = raw_call(gateway, sdk, shared_tenant.api_key, body)
    assert response.status_code == 400, response.text
    kind, message = error_of(sdk, response)
    assert kind == MALFORMED[sdk]
    assert message


UNAUTHENTICATED: Final = {
    Sdk.OPENAI: "authentication_error",
    Sdk.ANTHROPIC: "authentication_error",
    Sdk.GEMINI: "UNAUTHENTICATED",
    Sdk.OLLAMA: "",
    Sdk.BEDROCK: "UnrecognizedClientException",
}


@pytest.mark.parametrize("sdk", list(Sdk), ids=[sdk.value for sdk in Sdk])
@pytest.mark.parametrize("key", [None, WRONG_KEY], ids=["missing-key", "wrong-key"])
def test_no_valid_gatez_key_is_a_401_in_the_clients_schema(
    gateway: Gateway, untouched: None, sdk: Sdk, key: str | None
) -> None:
    response = raw_call(gateway, sdk, key, b'{"model": "to-anthropic"}')
    assert response.status_code == 401, response.text
    kind, message = error_of(sdk, response)
    assert kind == UNAUTHENTICATED[sdk]
    assert WRONG_KEY not in message


# -- through the SDKs ---------------------------------------------------------------------------


def test_sdks_see_a_wrong_key_as_their_own_authentication_error(
    clients: Clients, untouched: None
) -> None:
    with pytest.raises(openai.AuthenticationError):
        clients.openai_client(WRONG_KEY).chat.completions.create(
            model="to-anthropic", messages=MESSAGES
        )
    with pytest.raises(anthropic.AuthenticationError) as anthropic_error:
        clients.anthropic_client(WRONG_KEY).messages.create(
            model="to-openai", max_tokens=8, messages=MESSAGES
        )
    assert isinstance(anthropic_error.value.body, dict)
    assert anthropic_error.value.body["error"]["type"] == "authentication_error"
    gemini = clients.gemini_client(WRONG_KEY)  # a collected client closes its connections
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        gemini.models.generate_content(model="to-openai", contents=PROMPT)
    assert (gemini_error.value.code, gemini_error.value.status) == (401, "UNAUTHENTICATED")
    with pytest.raises(ollama.ResponseError) as ollama_error:
        clients.ollama_client(WRONG_KEY).chat(model="to-openai", messages=MESSAGES)
    assert ollama_error.value.status_code == 401
    with pytest.raises(ClientError) as bedrock_error:
        clients.bedrock_client(WRONG_KEY).converse(modelId="to-openai", messages=BEDROCK_MESSAGES)
    assert bedrock_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
    assert bedrock_error.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_gemini_key_in_the_query_is_accepted_and_never_forwarded(
    gateway: Gateway, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    before = fakes.received(Kind.GEMINI)
    url = f"{gateway.url}/v1beta/models/to-gemini:generateContent"
    body = {"contents": [{"parts": [{"text": PROMPT}]}]}
    answered = httpx.post(url, params={"key": shared_tenant.api_key}, json=body)
    assert answered.status_code == 200, answered.text
    (sent,) = fakes.requests_since(Kind.GEMINI, before)
    assert sent.query_string == ""
    refused = httpx.post(url, params={"key": WRONG_KEY}, json=body)
    assert refused.status_code == 401
    assert refused.json()["error"]["status"] == "UNAUTHENTICATED"


def test_an_unknown_model_is_each_sdks_not_found_error(
    clients: Clients, shared_tenant: TenantAccess, untouched: None
) -> None:
    key = shared_tenant.api_key
    with pytest.raises(openai.NotFoundError) as openai_error:
        clients.openai_client(key).chat.completions.create(model="no-such", messages=MESSAGES)
    assert "no-such" in openai_error.value.message
    with pytest.raises(anthropic.NotFoundError) as anthropic_error:
        clients.anthropic_client(key).messages.create(
            model="no-such", max_tokens=8, messages=MESSAGES
        )
    body = anthropic_error.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "not_found_error" and "no-such" in body["error"]["message"]
    gemini = clients.gemini_client(key)
    with pytest.raises(genai_errors.APIError) as gemini_error:
        gemini.models.generate_content(model="no-such", contents=PROMPT)
    assert (gemini_error.value.code, gemini_error.value.status) == (404, "NOT_FOUND")
    with pytest.raises(ollama.ResponseError) as ollama_error:
        clients.ollama_client(key).chat(model="no-such", messages=MESSAGES)
    assert ollama_error.value.status_code == 404 and "no-such" in ollama_error.value.error
    bedrock = clients.bedrock_client(key)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.converse(modelId="no-such", messages=BEDROCK_MESSAGES)


def test_a_feature_the_provider_cannot_express_is_a_400_in_the_clients_schema(
    clients: Clients, shared_tenant: TenantAccess, untouched: None
) -> None:
    key = shared_tenant.api_key
    # OpenAI's n (several choices): Anthropic has no such thing.
    with pytest.raises(openai.BadRequestError) as openai_error:
        clients.openai_client(key).chat.completions.create(
            model=ALIAS_OF[Kind.ANTHROPIC], messages=MESSAGES, n=2
        )
    assert "'n'" in openai_error.value.message
    # Anthropic's top_k: OpenAI has none.
    with pytest.raises(anthropic.BadRequestError) as anthropic_error:
        clients.anthropic_client(key).messages.create(
            model=ALIAS_OF[Kind.OPENAI], max_tokens=8, messages=MESSAGES, extra_body={"top_k": 5}
        )
    body = anthropic_error.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
    assert "top_k" in body["error"]["message"]
    # OpenAI's Responses API is passed through to OpenAI-kind providers only.
    with pytest.raises(openai.BadRequestError):
        clients.openai_client(key).responses.create(model=ALIAS_OF[Kind.ANTHROPIC], input=PROMPT)


def test_a_translated_request_with_a_malformed_field_is_the_sdks_bad_request(
    clients: Clients, shared_tenant: TenantAccess, untouched: None
) -> None:
    key = shared_tenant.api_key
    messages: Any = "not a list"
    with pytest.raises(anthropic.BadRequestError):
        clients.anthropic_client(key).messages.create(
            model=ALIAS_OF[Kind.GEMINI], max_tokens=8, messages=messages
        )
    with pytest.raises(openai.BadRequestError):
        clients.openai_client(key).chat.completions.create(
            model=ALIAS_OF[Kind.BEDROCK], messages=messages
        )
    bedrock = clients.bedrock_client(key)
    with pytest.raises(bedrock.exceptions.ValidationException):
        bedrock.converse(
            modelId=ALIAS_OF[Kind.OPENAI],
            messages=[{"role": "user", "content": [{"text": PROMPT}]}],
            inferenceConfig={"temperature": 1.0},
            additionalModelRequestFields={"top_k": 5},
        )


# -- a provider's error body --------------------------------------------------------------------


def test_an_anthropic_rate_limit_reaches_the_openai_sdk_as_its_rate_limit_error(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/rate_limit")
    with pytest.raises(openai.RateLimitError) as raised:
        clients.openai_client(shared_tenant.api_key).chat.completions.create(
            model=ALIAS_OF[Kind.ANTHROPIC], messages=MESSAGES
        )
    error = raised.value
    assert error.response.headers["retry-after"] == "7"
    assert isinstance(error.body, dict)
    assert error.body["type"] == "rate_limit_error"
    assert error.body["message"] == (
        "Number of request tokens has exceeded your per-minute rate limit"
    )


def test_an_overloaded_anthropic_reaches_the_openai_sdk_as_a_server_error_and_streams_too(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    client = clients.openai_client(shared_tenant.api_key)
    for stream in (False, True):
        fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/overloaded")
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(
                model=ALIAS_OF[Kind.ANTHROPIC], messages=MESSAGES, stream=stream
            )
        assert isinstance(raised.value.body, dict), stream
        assert raised.value.body["message"] == "Overloaded"


def test_the_anthropic_sdk_gets_its_providers_own_error_unchanged(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/overloaded")
    with pytest.raises(anthropic.OverloadedError) as raised:
        clients.anthropic_client(shared_tenant.api_key).messages.create(
            model=ALIAS_OF[Kind.ANTHROPIC], max_tokens=8, messages=MESSAGES
        )
    assert raised.value.status_code == 529
    assert raised.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
        "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy",
    }


def test_provider_errors_translated_for_every_other_sdk(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    key = shared_tenant.api_key
    # Gemini's 429 → the Anthropic SDK.
    fakes.replays[Kind.GEMINI].queue_error("gemini/errors/rate_limit")
    with pytest.raises(anthropic.RateLimitError) as anthropic_error:
        clients.anthropic_client(key).messages.create(
            model=ALIAS_OF[Kind.GEMINI], max_tokens=8, messages=MESSAGES
        )
    body = anthropic_error.value.body
    assert isinstance(body, dict) and body["error"]["type"] == "rate_limit_error"
    assert body["error"]["message"].startswith("You exceeded your current quota")
    # Bedrock's throttling → google-genai.
    fakes.replays[Kind.BEDROCK].queue_error("bedrock/errors/throttling")
    gemini = clients.gemini_client(key)
    with pytest.raises(genai_errors.ClientError) as gemini_error:
        gemini.models.generate_content(model=ALIAS_OF[Kind.BEDROCK], contents=PROMPT)
    assert (gemini_error.value.code, gemini_error.value.status) == (429, "RESOURCE_EXHAUSTED")
    assert gemini_error.value.message == "Too many requests, please wait before trying again."
    # Anthropic's 500 → Ollama's SDK.
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/api_error")
    with pytest.raises(ollama.ResponseError) as ollama_error:
        clients.ollama_client(key).chat(model=ALIAS_OF[Kind.ANTHROPIC], messages=MESSAGES)
    assert ollama_error.value.status_code == 500
    # OpenAI's 429 → boto3, as Bedrock's own throttling.
    fakes.openai.queue_error(429, retry_after_s=3)
    bedrock = clients.bedrock_client(key)
    with pytest.raises(bedrock.exceptions.ThrottlingException) as bedrock_error:
        bedrock.converse(modelId=ALIAS_OF[Kind.OPENAI], messages=BEDROCK_MESSAGES)
    assert bedrock_error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429


def test_boto3_gets_its_providers_throttling_unchanged(
    clients: Clients, shared_tenant: TenantAccess, fakes: Fakes
) -> None:
    fakes.replays[Kind.BEDROCK].queue_error("bedrock/errors/throttling")
    bedrock = clients.bedrock_client(shared_tenant.api_key)
    with pytest.raises(bedrock.exceptions.ThrottlingException) as raised:
        bedrock.converse(modelId=ALIAS_OF[Kind.BEDROCK], messages=BEDROCK_MESSAGES)
    assert raised.value.response["Error"]["Message"] == (
        "Too many requests, please wait before trying again."
    )
