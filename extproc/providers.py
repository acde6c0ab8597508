"""How the gateway reaches each kind of provider: the path (with query) and the headers of the
request it sends, for a compiled `ProviderTarget`.

Pure code, no I/O: everything a target needs beyond string joins was compiled with the policy
(`gatez.policy._provider`: the normalised path prefix, the Azure api-version, the AWS region and
botocore `Credentials`). Per request, building costs string joins, and for Bedrock with SigV4 a
SHA-256 of the body and the HMACs of the signature (botocore's `SigV4Auth`).

The request's `:authority` must be `target.authority`, exactly: a SigV4 signature covers it.
The body given is the one that will be sent, byte for byte, for the same reason.

Where each fact comes from (checked against the providers' API references):
- OpenAI: `POST {base}/chat/completions`, `/embeddings`, `GET /models`, `Authorization: Bearer`
  (platform.openai.com/docs/api-reference).
- Azure OpenAI: `POST {endpoint}/openai/deployments/{deployment}/chat/completions
  ?api-version=…` with an `api-key` header (learn.microsoft.com/azure/ai-services/openai/
  reference); the v1 API at `{endpoint}/openai/v1/…` takes no api-version and names the
  deployment in the body's `model` (learn.microsoft.com/azure/ai-foundry/openai/
  api-version-lifecycle).
- Anthropic: `POST /v1/messages`, `GET /v1/models`, headers `x-api-key` and
  `anthropic-version: 2023-06-01` (docs.anthropic.com/en/api/overview, /versioning).
- Gemini: `POST /v1beta/{model=models/*}:generateContent`, `:streamGenerateContent` with
  `?alt=sse` for server-sent events, `GET /v1beta/models`, header `x-goog-api-key`
  (ai.google.dev/api/generate-content, ai.google.dev/api/rest/v1beta/models).
- Ollama: `POST /api/chat`, `GET /api/tags` (github.com/ollama/ollama docs/api.md).
- Bedrock Runtime: `POST /model/{modelId}/converse` and `/converse-stream`
  (docs.aws.amazon.com/bedrock/latest/APIReference/API_runtime_Converse.html), the model id
  percent-encoded as the AWS SDKs do (botocore `percent_encode`: all but `-_.~`, so `:` is
  `%3A` and an ARN's `/` is `%2F`); SigV4 for service "bedrock", or a Bedrock API key as
  `Authorization: Bearer` (docs.aws.amazon.com/bedrock/latest/userguide/api-keys-use.html).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote_plus

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from gatez.errors import InvalidRequest, quoted
from gatez.policy import AZURE_V1_API, UPSTREAM_CLUSTER_TLS, ProviderKind, ProviderTarget
from gatez.translate.schemas import (
    ANTHROPIC_MESSAGES,
    BEDROCK_CONVERSE,
    GEMINI,
    OLLAMA_CHAT,
    OPENAI_CHAT,
    WireSchema,
)

ANTHROPIC_VERSION: Final = "2023-06-01"
# The SigV4 signing name of Bedrock Runtime (its endpoint is "bedrock-runtime", its signing
# name "bedrock", as botocore's service model says).
BEDROCK_SIGNING_NAME: Final = "bedrock"
_JSON: Final = ("content-type", "application/json")
# Client query parameters never forwarded: a client's own credential (Gemini's `key`, a Gatez
# key there) and the parameters the gateway sets itself.
_RESERVED_QUERY: Final = frozenset({"key", "api-version", "alt"})
# What botocore leaves unencoded in a URI label (`botocore.utils.percent_encode`).
_AWS_LABEL_SAFE: Final = "-_.~"


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """The provider's side of a call: `path` (query included) and the headers to set on the
    upstream request (the credential, a version header, content-type; for SigV4 the date,
    session token and signature)."""

    path: str
    headers: tuple[tuple[str, str], ...]
    method: str = "POST"


# The OpenAI-schema operations besides Chat Completions, as `provider_request`'s `operation`.
RESPONSES: Final = "/responses"
EMBEDDINGS: Final = "/embeddings"
CHAT_COMPLETIONS: Final = "/chat/completions"


def provider_request(
    provider: ProviderTarget,
    *,
    model: str,
    stream: bool,
    body: bytes,
    query: str = "",
    operation: str = "",
) -> ProviderRequest:
    """The request for `provider`: by default its chat / generation API (OpenAI Chat
    Completions, Azure OpenAI, Anthropic Messages, Gemini generateContent, Ollama /api/chat,
    Bedrock Converse), streamed or not as `stream` says. `operation` "/responses" or
    "/embeddings" asks for that OpenAI API instead (OpenAI and Azure OpenAI providers only;
    InvalidRequest for the others). `model` is the provider's model (Azure: the deployment);
    `body` the exact body that will be sent; `query` the client's query string (without '?'),
    forwarded except for credentials and what the gateway sets itself (never to Bedrock)."""
    kind = provider.kind
    prefix = provider.path_prefix
    if operation and operation != CHAT_COMPLETIONS:
        _check_operation(provider, operation)
    if kind is ProviderKind.OPENAI:
        path = _with_query(prefix + (operation or CHAT_COMPLETIONS), query)
    elif kind is ProviderKind.AZURE_OPENAI:
        path = _azure_path(provider, model, operation or CHAT_COMPLETIONS, query)
    elif kind is ProviderKind.ANTHROPIC:
        path = _with_query(prefix + "/messages", query)
    elif kind is ProviderKind.GEMINI:
        resource = model if model.startswith(("models/", "tunedModels/")) else "models/" + model
        path = f"{prefix}/{_encoded(resource, '/' + _AWS_LABEL_SAFE)}"
        path = (
            _with_query(path + ":streamGenerateContent?alt=sse", query, joiner="&")
            if stream
            else _with_query(path + ":generateContent", query)
        )
    elif kind is ProviderKind.OLLAMA:
        path = _with_query(prefix + "/api/chat", query)
    else:
        operation = "/converse-stream" if stream else "/converse"
        path = f"{prefix}/model/{_encoded(model, _AWS_LABEL_SAFE)}{operation}"
        if provider.aws_credentials is not None:
            return ProviderRequest(path, (_JSON, *_sigv4(provider, path, body)))
    return ProviderRequest(path, (_JSON, *_key_headers(provider)))


def models_list_request(provider: ProviderTarget, *, query: str = "") -> ProviderRequest | None:
    """`GET` the provider's list of models; None for Bedrock (ListFoundationModels lives on
    another host, bedrock.<region>.amazonaws.com, not the runtime's)."""
    kind = provider.kind
    prefix = provider.path_prefix
    if kind is ProviderKind.AZURE_OPENAI:
        version = provider.azure_api_version
        if version == AZURE_V1_API:
            path = _with_query(prefix + "/openai/v1/models", query)
        else:
            path = _with_query(f"{prefix}/openai/models?api-version={version}", query, joiner="&")
    elif kind is ProviderKind.OLLAMA:
        path = _with_query(prefix + "/api/tags", query)
    elif kind is ProviderKind.BEDROCK:
        return None
    else:
        path = _with_query(prefix + "/models", query)
    return ProviderRequest(path, _key_headers(provider), "GET")


def _check_operation(provider: ProviderTarget, operation: str) -> None:
    if operation not in (RESPONSES, EMBEDDINGS):
        raise ValueError(f"unknown operation {operation!r}")
    if provider.kind not in (ProviderKind.OPENAI, ProviderKind.AZURE_OPENAI):
        raise InvalidRequest(
            f"provider {quoted(provider.name)} ({provider.kind.name}) has no "
            f"{operation.strip('/')} API"
        )


def _azure_path(target: ProviderTarget, deployment: str, operation: str, query: str) -> str:
    version = target.azure_api_version
    if version == AZURE_V1_API:
        return _with_query(f"{target.path_prefix}/openai/v1{operation}", query)
    if operation == RESPONSES:
        # The Responses API has no deployment path: the deployment is the body's `model`.
        path = f"{target.path_prefix}/openai/responses?api-version={version}"
    else:
        path = (
            f"{target.path_prefix}/openai/deployments/{_encoded(deployment, '')}{operation}"
            f"?api-version={version}"
        )
    return _with_query(path, query, joiner="&")


@functools.lru_cache(maxsize=1024)
def _encoded(model: str, safe: str) -> str:
    """A model name as a URL path segment. Memoised: the names are the policy's upstream models,
    few and repeated, and `quote` costs a few µs a call."""
    return quote(model, safe=safe)


def _with_query(path: str, query: str, *, joiner: str = "?") -> str:
    """`path` with the client's query parameters that may go on (none reserved)."""
    if not query:
        return path
    kept = "&".join(
        part
        for part in query.split("&")
        if part and unquote_plus(part.partition("=")[0]).lower() not in _RESERVED_QUERY
    )
    return f"{path}{joiner}{kept}" if kept else path


def _key_headers(target: ProviderTarget) -> tuple[tuple[str, str], ...]:
    """The API key in the kind's header (and Anthropic's version header); none without a key
    (an Ollama server without auth; a provider whose key is not set yet answers 401)."""
    kind = target.kind
    key = target.api_key
    if kind is ProviderKind.ANTHROPIC:
        version = ("anthropic-version", ANTHROPIC_VERSION)
        return (version,) if key is None else (("x-api-key", key), version)
    if key is None:
        return ()
    if kind is ProviderKind.AZURE_OPENAI:
        return (("api-key", key),)
    if kind is ProviderKind.GEMINI:
        return (("x-goog-api-key", key),)
    # OpenAI, Ollama, and Bedrock with a Bedrock API key.
    return (("authorization", "Bearer " + key),)


def _sigv4(target: ProviderTarget, path: str, body: bytes) -> tuple[tuple[str, str], ...]:
    """SigV4 headers over exactly the host, path and body that will be sent."""
    credentials = target.aws_credentials
    assert credentials is not None
    scheme = "https" if target.cluster == UPSTREAM_CLUSTER_TLS else "http"
    request = AWSRequest(
        method="POST",
        url=f"{scheme}://{target.authority}{path}",
        data=body,
        headers={"host": target.authority},
    )
    # Signed: host and x-amz-date (and the session token), the only headers on the request
    # signed here. Content-type stays out, so a proxy normalising it cannot break the
    # signature; the body is covered by its SHA-256.
    SigV4Auth(credentials, BEDROCK_SIGNING_NAME, target.aws_region).add_auth(request)
    signed = request.headers
    date = ("x-amz-date", signed["X-Amz-Date"])
    authorization = ("authorization", signed["Authorization"])
    if credentials.token:
        return (date, ("x-amz-security-token", credentials.token), authorization)
    return (date, authorization)


# The wire schema each kind of provider speaks (Azure OpenAI is OpenAI's Chat Completions).
_SCHEMAS: Final[dict[ProviderKind, WireSchema]] = {
    ProviderKind.OPENAI: OPENAI_CHAT,
    ProviderKind.AZURE_OPENAI: OPENAI_CHAT,
    ProviderKind.ANTHROPIC: ANTHROPIC_MESSAGES,
    ProviderKind.GEMINI: GEMINI,
    ProviderKind.OLLAMA: OLLAMA_CHAT,
    ProviderKind.BEDROCK: BEDROCK_CONVERSE,
}


def provider_schema(provider: ProviderTarget) -> WireSchema:
    """The schema `provider` speaks: what a client's request is translated into for it."""
    return _SCHEMAS[provider.kind]
