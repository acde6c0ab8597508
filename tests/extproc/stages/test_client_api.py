"""ClientApi: each SDK's paths are recognised, mounted or not, and the gateway's own errors come
back in that SDK's error format."""

from __future__ import annotations

import orjson
import pytest

from extproc.stages.client_api import (
    ANTHROPIC_API,
    ANTHROPIC_MODELS_API,
    EMBEDDINGS_API,
    GEMINI_MODELS_API,
    OLLAMA_CHAT_API,
    OLLAMA_GENERATE_API,
    OLLAMA_TAGS_API,
    OPENAI_CHAT_API,
    OPENAI_MODELS_API,
    RESPONSES_API,
    Endpoint,
    Operation,
    endpoint_of,
)
from gatez.errors import GatewayError, NotFound, RateLimited, Unauthenticated
from gatez.translate.schemas import BEDROCK_CONVERSE, GEMINI


@pytest.mark.parametrize(
    ("method", "path", "headers", "api"),
    [
        ("POST", "/v1/chat/completions", {}, OPENAI_CHAT_API),
        ("POST", "/v1/chat/completions?x=1", {}, OPENAI_CHAT_API),
        ("POST", "/v1/responses", {}, RESPONSES_API),
        ("POST", "/v1/embeddings", {}, EMBEDDINGS_API),
        ("GET", "/v1/models", {}, OPENAI_MODELS_API),
        ("GET", "/v1/models", {"anthropic-version": "2023-06-01"}, ANTHROPIC_MODELS_API),
        ("GET", "/v1/models", {"x-goog-api-key": "k"}, GEMINI_MODELS_API),
        ("GET", "/v1beta/models", {}, GEMINI_MODELS_API),
        ("POST", "/v1/messages", {}, ANTHROPIC_API),
        ("POST", "/api/chat", {}, OLLAMA_CHAT_API),
        ("POST", "/api/generate", {}, OLLAMA_GENERATE_API),
        ("GET", "/api/tags", {}, OLLAMA_TAGS_API),
        # A known path with the wrong method keeps its API (its error format).
        ("GET", "/v1/chat/completions", {}, OPENAI_CHAT_API),
        ("GET", "/v1/messages", {}, ANTHROPIC_API),
    ],
)
def test_each_sdk_path_is_its_api(
    method: str, path: str, headers: dict[str, str], api: Endpoint
) -> None:
    assert endpoint_of(method, path, headers, "/v1")[0] is api


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/v1beta/models/gemini-2.5-flash:generateContent", "gemini-2.5-flash", False),
        ("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", "gemini-2.5-flash", True),
        ("/v1/models/fast:generateContent", "fast", False),
    ],
)
def test_gemini_names_the_model_and_streaming_in_its_path(
    path: str, model: str, stream: bool
) -> None:
    api, _ = endpoint_of("POST", path, {}, "/v1beta")
    assert api is not None and api.schema is GEMINI and api.operation is Operation.CHAT
    assert (api.path_model, api.path_stream, api.credential_query) == (model, stream, "key")


@pytest.mark.parametrize(
    ("path", "model", "stream"),
    [
        ("/model/anthropic.claude-v1%3A0/converse", "anthropic.claude-v1%3A0", False),
        ("/model/fast/converse-stream", "fast", True),
    ],
)  # fmt: skip
def test_bedrock_names_the_model_and_streaming_in_its_path(
    path: str, model: str, stream: bool
) -> None:
    api, _ = endpoint_of("POST", path, {}, "/model")
    assert api is not None and api.schema is BEDROCK_CONVERSE
    assert (api.path_model, api.path_stream, api.credential_query) == (model, stream, "")


def test_a_route_mounted_elsewhere_serves_every_api_below_its_prefix() -> None:
    assert endpoint_of("POST", "/llm/v1/messages", {}, "/llm") == (ANTHROPIC_API, "/v1/messages")
    assert endpoint_of("POST", "/llm/api/chat", {}, "/llm") == (OLLAMA_CHAT_API, "/api/chat")
    api, path = endpoint_of("POST", "/llm/model/m/converse", {}, "/llm")
    assert api is not None and api.schema is BEDROCK_CONVERSE and path == "/model/m/converse"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/completions"),
        ("POST", "/v1/chat/completions/x"),
        ("POST", "/v10/chat/completions"),
        ("POST", "/v1beta/models/x:countTokens"),
        ("POST", "/model/x/invoke"),
        ("DELETE", "/v1/models"),
        ("POST", "/llmx/v1/messages"),
    ],
)
def test_other_paths_are_no_api(method: str, path: str) -> None:
    assert endpoint_of(method, path, {}, "/llm")[0] is None


def test_errors_come_in_each_apis_own_format() -> None:
    refused = ANTHROPIC_API.error_response(Unauthenticated("invalid API key"))
    assert refused.status == 401
    assert orjson.loads(refused.body) == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "invalid API key"},
    }
    limited = GEMINI_MODELS_API.error_response(RateLimited("slow down", retry_after_s=3))
    assert limited.status == 429 and ("retry-after", "3") in limited.headers
    error = orjson.loads(limited.body)["error"]
    assert (error["code"], error["status"], error["message"]) == (
        429,
        "RESOURCE_EXHAUSTED",
        "slow down",
    )
    ollama = OLLAMA_CHAT_API.error_response(Unauthenticated("invalid API key"))
    assert orjson.loads(ollama.body) == {"error": "invalid API key"}


@pytest.mark.parametrize(
    ("error", "error_type"),
    [
        (Unauthenticated("invalid API key"), "UnrecognizedClientException"),
        (NotFound("no model 'x'"), "ResourceNotFoundException"),
        (RateLimited("slow down", retry_after_s=3), "ThrottlingException"),
    ],
)
def test_bedrock_errors_name_their_type_in_the_header_aws_sdks_read(
    error: GatewayError, error_type: str
) -> None:
    api, _ = endpoint_of("POST", "/model/m/converse", {}, "")
    assert api is not None
    answer = api.error_response(error)
    # boto3 raises client.exceptions.<type> from this header; without it, a bare status code.
    assert ("x-amzn-errortype", error_type) in answer.headers
    assert orjson.loads(answer.body) == {"message": error.public_message}
    # No other schema sends it.
    assert all(
        name != "x-amzn-errortype" for name, _ in ANTHROPIC_API.error_response(error).headers
    )
