"""Which provider API a client speaks, from its request's path: the first LLM stage.

Clients use their own SDK unchanged, so the gateway serves each provider's paths:

- OpenAI: `POST /v1/chat/completions`, `/v1/responses`, `/v1/embeddings`, `GET /v1/models`
- Anthropic: `POST /v1/messages`, `GET /v1/models` (told from OpenAI's by `anthropic-version`)
- Gemini: `POST /v1beta/models/{model}:generateContent`, `…:streamGenerateContent?alt=sse`
  (or under `/v1`), `GET /v1beta/models`
- Ollama: `POST /api/chat`, `/api/generate`, `GET /api/tags` (its OpenAI-compatible `/v1` is
  OpenAI's)
- Bedrock Runtime: `POST /model/{modelId}/converse`, `/model/{modelId}/converse-stream`

A path is matched as it is, then (for a route mounted elsewhere, say `/llm`) with the route's
prefix taken off, so `/llm/v1/messages` is Anthropic's and `/llm/api/chat` Ollama's.

The endpoint found is the flow's `api`: authentication reads a credential where that SDK puts it,
and every answer the gateway makes itself — a 401, a 429, an unknown model — comes in the
client's own error format.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Final

from gatez.errors import GatewayError
from gatez.pipeline import CONTINUE, Flow, Respond, Stage, Verdict
from gatez.translate.schemas import (
    ANTHROPIC_MESSAGES,
    BEDROCK_CONVERSE,
    GEMINI,
    JSON,
    OLLAMA_CHAT,
    OLLAMA_GENERATE,
    OPENAI_CHAT,
    WireSchema,
    error_headers,
    error_info,
)


class Operation(enum.Enum):
    CHAT = "chat"
    LIST_MODELS = "list_models"
    # OpenAI's Responses and Embeddings APIs: passed through to OpenAI-kind providers.
    RESPONSES = "responses"
    EMBEDDINGS = "embeddings"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A client-facing API: what it does, and the schema its bodies and errors are in."""

    operation: Operation
    schema: WireSchema
    # The query parameter the SDK may carry its key in (Gemini's `?key=`), else "".
    credential_query: str = ""
    # Where the model and streaming are said, when the URL says them (Gemini, Bedrock).
    path_model: str | None = None
    path_stream: bool = False
    # The upstream operation's path tail, for passthrough operations ("/responses").
    passthrough_path: str = ""

    def error_response(self, error: GatewayError) -> Respond:
        """The gateway's own error, in this API's error format."""
        info = error_info(error)
        headers = (("content-type", JSON), *error.headers(), *error_headers(self.schema, info))
        body = self.schema.encode_error(info)
        return Respond(error.http_status, body, headers, error.reason, error)


OPENAI_CHAT_API: Final = Endpoint(Operation.CHAT, OPENAI_CHAT)
OPENAI_MODELS_API: Final = Endpoint(Operation.LIST_MODELS, OPENAI_CHAT)
RESPONSES_API: Final = Endpoint(Operation.RESPONSES, OPENAI_CHAT, passthrough_path="/responses")
EMBEDDINGS_API: Final = Endpoint(Operation.EMBEDDINGS, OPENAI_CHAT, passthrough_path="/embeddings")
ANTHROPIC_API: Final = Endpoint(Operation.CHAT, ANTHROPIC_MESSAGES)
ANTHROPIC_MODELS_API: Final = Endpoint(Operation.LIST_MODELS, ANTHROPIC_MESSAGES)
GEMINI_MODELS_API: Final = Endpoint(Operation.LIST_MODELS, GEMINI, credential_query="key")
OLLAMA_CHAT_API: Final = Endpoint(Operation.CHAT, OLLAMA_CHAT)
OLLAMA_GENERATE_API: Final = Endpoint(Operation.CHAT, OLLAMA_GENERATE)
OLLAMA_TAGS_API: Final = Endpoint(Operation.LIST_MODELS, OLLAMA_CHAT)

_FIXED: Final = {
    ("POST", "/v1/chat/completions"): OPENAI_CHAT_API,
    ("POST", "/v1/responses"): RESPONSES_API,
    ("POST", "/v1/embeddings"): EMBEDDINGS_API,
    ("POST", "/v1/messages"): ANTHROPIC_API,
    ("POST", "/api/chat"): OLLAMA_CHAT_API,
    ("POST", "/api/generate"): OLLAMA_GENERATE_API,
    ("GET", "/api/tags"): OLLAMA_TAGS_API,
    ("GET", "/v1beta/models"): GEMINI_MODELS_API,
}
_KNOWN_PATHS: Final = {path: api for (_, path), api in _FIXED.items()}
_GEMINI_CALL: Final = re.compile(
    r"/v1(?:beta)?/models/([^/?]+):(generateContent|streamGenerateContent)"
)
_BEDROCK_CALL: Final = re.compile(r"/model/([^/?]+)/(converse|converse-stream)")


def endpoint_of(
    method: str, path: str, headers: dict[str, str], prefix: str
) -> tuple[Endpoint | None, str]:
    """The API a request calls and the path as that API sees it (the route's prefix off when
    the path only matched that way); (None, path) when it is none of them."""
    route = path.partition("?")[0]
    candidates = [route]
    if prefix not in ("/", "") and route.startswith(prefix + "/"):
        candidates.append(route[len(prefix) :])
    for candidate in candidates:
        api = _match(method, candidate, headers)
        if api is not None:
            return api, candidate
    return None, route


def _match(method: str, path: str, headers: dict[str, str]) -> Endpoint | None:
    api = _FIXED.get((method, path))
    if api is not None:
        return api
    if path == "/v1/models" and method == "GET":
        if "anthropic-version" in headers:
            return ANTHROPIC_MODELS_API
        if "x-goog-api-key" in headers:
            return GEMINI_MODELS_API
        return OPENAI_MODELS_API
    if method == "POST" and (call := _GEMINI_CALL.fullmatch(path)) is not None:
        return Endpoint(
            Operation.CHAT,
            GEMINI,
            credential_query="key",
            path_model=call.group(1),
            path_stream=call.group(2) == "streamGenerateContent",
        )
    if method == "POST" and (call := _BEDROCK_CALL.fullmatch(path)) is not None:
        return Endpoint(
            Operation.CHAT,
            BEDROCK_CONVERSE,
            path_model=call.group(1),
            path_stream=call.group(2) == "converse-stream",
        )
    # A known path called with another method: the API is still known, for its error format.
    return _KNOWN_PATHS.get(path)


class ClientApi(Stage):
    """Recognises the client's API (`flow.api`); it refuses nothing itself — model routing
    answers a path that is no API, after authentication."""

    def on_request_headers(self, flow: Flow) -> Verdict:
        route = flow.route
        api, _ = endpoint_of(
            flow.method, flow.path, flow.request_headers, route.path_prefix if route else ""
        )
        flow.api = api
        if api is not None and api.schema is not OPENAI_CHAT:
            # OpenAI's format is the gateway's own: only other APIs re-render its errors.
            flow.error_format = api.error_response
        return CONTINUE
