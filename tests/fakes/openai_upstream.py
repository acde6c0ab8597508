"""A fake OpenAI upstream that speaks OpenAI's exact wire format, for the demo and the tests.

`make run` starts it as the local upstream so the quickstart works offline; the end-to-end tests
put it behind Envoy and the gateway and drive it with the official `openai` SDK. It serves:

- `POST /v1/chat/completions`, plain and streamed (SSE), with OpenAI's fields, headers and errors;
- `POST /v1/responses`, plain and streamed (OpenAI's named SSE events, `response.created` to
  `response.completed`), with the same deterministic reply;
- `POST /v1/embeddings`, one deterministic vector per input, as floats or (OpenAI's SDK asks for
  this by default) base64 of little-endian float32s;
- `GET /v1/models`;
- anything else: OpenAI's `Invalid URL (METHOD /path)` 404.

The "model" is deterministic so tests can assert exact values: the reply is `"Echo: "` followed by
the text of the last user message, streamed one word at a time (see `deterministic_reply`), and
tokens are counted by the documented rule in `count_prompt_tokens` / `count_completion_tokens`.

Every request is recorded (`RequestRecorder`), and tests can queue scripted failures
(`ErrorReply`) for the next requests, exactly as OpenAI sends them. `UpstreamServer` runs all of it
on a loopback port in a background thread, over plain HTTP or, given a certificate, over HTTPS
(recording the SNI server name of each TLS handshake); `python -m tests.fakes.openai_upstream`
runs it in the foreground until SIGINT/SIGTERM.

Wire formats follow OpenAI's API reference (the chat completion and chunk objects,
`stream_options.include_usage`, error codes) and api.openai.com responses captured in public
test fixtures; where OpenAI's behaviour is not documented the choice is said in a comment.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import signal
import ssl
import string
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import orjson
from aiohttp import web

from tests.fakes.serving import BackgroundServer, bound_socket, serve

logger = logging.getLogger(__name__)

JSONObject = dict[str, Any]
Clock = Callable[[], float]
FinishReason = Literal["stop", "length"]

CHAT_COMPLETIONS_PATH: Final = "/v1/chat/completions"
MODELS_PATH: Final = "/v1/models"
RESPONSES_PATH: Final = "/v1/responses"
EMBEDDINGS_PATH: Final = "/v1/embeddings"

#: Models listed by `GET /v1/models` when the server is not given a model list (any model is then
#: accepted).
DEFAULT_MODELS: Final = ("gpt-4o-mini", "gpt-4o")
DEMO_ORGANIZATION: Final = "org-gatezdemo"
DEMO_PROJECT: Final = "proj_gatezdemo"
DEMO_SYSTEM_FINGERPRINT: Final = "fp_6a3f1e9c2b"
#: The `created` of every listed model: a fixed value keeps `/v1/models` byte-for-byte stable.
MODEL_CREATED: Final = 1_715_367_049
OPENAI_VERSION: Final = "2020-10-01"
#: What the fake advertises in `x-ratelimit-*` headers. No limit is enforced; tests script 429s.
RATE_LIMIT_REQUESTS: Final = 10_000
RATE_LIMIT_TOKENS: Final = 10_000_000
#: Large enough for long chat histories; aiohttp's default (1 MiB) would answer 413 in plain text.
MAX_REQUEST_BYTES: Final = 32 * 1024 * 1024

_ID_ALPHABET: Final = string.ascii_letters + string.digits
_OBFUSCATION_ALPHABET: Final = "aZ3kQ9xW2mT7pL5vR8nY4bH6cJ1dF0gS"
_DELTA_PIECES: Final = re.compile(r"\s*\S+|\s+$")


# -- the deterministic model -------------------------------------------------------------------


def message_text(message: Mapping[str, Any]) -> str:
    """The text of one chat message: its string `content`, or its text parts joined by newlines.

    Non-text parts (images, audio, files) and a missing or null `content` contribute nothing.
    """
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return ""


def count_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """The fake tokenizer's prompt count: whitespace-separated words of each message, plus 1 each.

    Roles, names, tools and non-text parts are not counted. `[{"role": "user", "content":
    "hello there world"}]` is 4 tokens.
    """
    return sum(len(message_text(message).split()) + 1 for message in messages)


def count_completion_tokens(text: str) -> int:
    """The fake tokenizer's completion count: whitespace-separated words of the reply."""
    return len(text.split())


def reply_text(messages: Sequence[Mapping[str, Any]]) -> str:
    """The full reply before any `max_tokens` cut: `"Echo: "` + the last user message's text."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return "Echo: " + message_text(message)
    return "Echo: "


@dataclass(frozen=True, slots=True)
class Reply:
    """What the deterministic model answers: the streamed deltas, why it stopped, and usage."""

    deltas: tuple[str, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.deltas)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def deterministic_reply(
    messages: Sequence[Mapping[str, Any]], max_tokens: int | None = None
) -> Reply:
    """The reply to `messages`, cut to `max_tokens` words (then `finish_reason` is `"length"`).

    Deltas are one word each with its leading whitespace (`"Echo:"`, `" hello"`, ...), like
    OpenAI's tokens; they concatenate to the exact reply text.
    """
    pieces = _DELTA_PIECES.findall(reply_text(messages))
    finish_reason: FinishReason = "stop"
    if max_tokens is not None and count_completion_tokens("".join(pieces)) > max_tokens:
        pieces = [piece for piece in pieces if not piece.isspace()][:max_tokens]
        finish_reason = "length"
    deltas = tuple(pieces)
    return Reply(
        deltas=deltas,
        finish_reason=finish_reason,
        prompt_tokens=count_prompt_tokens(messages),
        completion_tokens=count_completion_tokens("".join(deltas)),
    )


# -- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error exactly as OpenAI sends it: HTTP status, `{"error": {...}}` body, extra headers.

    The server builds these for auth and validation failures; tests queue them with
    `UpstreamServer.queue_error` to script failures. With `after_chunks` set, a streamed chat
    completion first sends the role chunk and that many content chunks, then the error as an SSE
    `data:` event and no `[DONE]`, as OpenAI does when a stream fails midway (the SDK raises
    `openai.APIError`); a non-streamed request gets the plain HTTP error.
    """

    status: int
    message: str
    error_type: str
    code: str | None = None
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    after_chunks: int | None = None

    def __post_init__(self) -> None:
        # Frozen all the way down: a queued error must not change while it waits in the queue.
        object.__setattr__(self, "headers", MappingProxyType(dict(self.headers)))

    def body(self) -> JSONObject:
        """The JSON body: `{"error": {"message", "type", "param", "code"}}`, in OpenAI's order."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }

    def mid_stream(self, after_chunks: int) -> ErrorReply:
        """This error, sent inside a stream after `after_chunks` content chunks."""
        return dataclasses.replace(self, after_chunks=after_chunks)

    @classmethod
    def rate_limit(
        cls,
        *,
        model: str = DEFAULT_MODELS[0],
        limit: int = 3,
        retry_after_s: int = 20,
        organization: str = DEMO_ORGANIZATION,
        headers: Mapping[str, str] | None = None,
    ) -> ErrorReply:
        """OpenAI's 429 for a requests-per-minute limit (`type` "requests", `code`
        "rate_limit_exceeded"), with `retry-after` and `x-ratelimit-*` headers."""
        message = (
            f"Rate limit reached for {model} in organization {organization} on requests per min "
            f"(RPM): Limit {limit}, Used {limit}, Requested 1. Please try again in "
            f"{retry_after_s}s. Visit https://platform.openai.com/account/rate-limits to learn "
            "more."
        )
        rate_headers = {
            "retry-after": str(retry_after_s),
            "x-ratelimit-limit-requests": str(limit),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{retry_after_s}s",
        }
        return cls(
            status=429,
            message=message,
            error_type="requests",
            code="rate_limit_exceeded",
            headers=rate_headers | dict(headers or {}),
        )

    @classmethod
    def insufficient_quota(cls, *, headers: Mapping[str, str] | None = None) -> ErrorReply:
        """OpenAI's 429 for an exhausted quota, which clients must not retry."""
        return cls(
            status=429,
            message=(
                "You exceeded your current quota, please check your plan and billing details. "
                "For more information on this error, read the docs: "
                "https://platform.openai.com/docs/guides/error-codes/api-errors."
            ),
            error_type="insufficient_quota",
            code="insufficient_quota",
            headers=dict(headers or {}),
        )

    @classmethod
    def server_error(cls, *, headers: Mapping[str, str] | None = None) -> ErrorReply:
        """OpenAI's 500: `type` "server_error", `param` and `code` null."""
        return cls(
            status=500,
            message="The server had an error while processing your request. Sorry about that!",
            error_type="server_error",
            headers=dict(headers or {}),
        )

    @classmethod
    def for_status(cls, status: int, *, retry_after_s: int | None = None) -> ErrorReply:
        """OpenAI's usual error for an HTTP status: 429 is `rate_limit`, 5xx is `server_error`
        (with that status), any other status an `invalid_request_error` named after its reason
        phrase. `retry_after_s` adds a `retry-after` header (and sets the 429's wait)."""
        retry_headers = {} if retry_after_s is None else {"retry-after": str(retry_after_s)}
        if status == 429:
            if retry_after_s is None:
                return cls.rate_limit()
            return cls.rate_limit(retry_after_s=retry_after_s)
        if status >= 500:
            return dataclasses.replace(cls.server_error(headers=retry_headers), status=status)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = f"HTTP {status}"
        return cls(
            status=status,
            message=f"{phrase}.",
            error_type="invalid_request_error",
            headers=retry_headers,
        )

    @classmethod
    def missing_api_key(cls) -> ErrorReply:
        """OpenAI's 401 when no `Authorization: Bearer` key was sent (its `code` is null)."""
        return cls(
            status=401,
            message=(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or as the password field (with blank username) if you're accessing the API "
                "from your browser and are prompted for a username and password. You can obtain "
                "an API key from https://platform.openai.com/account/api-keys."
            ),
            error_type="invalid_request_error",
        )

    @classmethod
    def incorrect_api_key(cls, presented_key: str) -> ErrorReply:
        """OpenAI's 401 `invalid_api_key`; like OpenAI it shows only the ends of the key."""
        return cls(
            status=401,
            message=(
                f"Incorrect API key provided: {mask_api_key(presented_key)}. You can find your "
                "API key at https://platform.openai.com/account/api-keys."
            ),
            error_type="invalid_request_error",
            code="invalid_api_key",
        )

    @classmethod
    def unparseable_json(cls) -> ErrorReply:
        """OpenAI's 400 for a body that is not a JSON object."""
        return cls(
            status=400,
            message=(
                "We could not parse the JSON body of your request. (HINT: This likely means you "
                "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                "but what was sent was not valid JSON. If you have trouble figuring out how to fix "
                "this, please contact us through our help center at help.openai.com.)"
            ),
            error_type="invalid_request_error",
        )

    @classmethod
    def model_not_found(cls, model: str) -> ErrorReply:
        """OpenAI's 404 `model_not_found`."""
        return cls(
            status=404,
            message=f"The model `{model}` does not exist or you do not have access to it.",
            error_type="invalid_request_error",
            code="model_not_found",
        )

    @classmethod
    def invalid_url(cls, method: str, path: str) -> ErrorReply:
        """OpenAI's 404 for a path or method it does not serve."""
        return cls(
            status=404,
            message=f"Invalid URL ({method} {path})",
            error_type="invalid_request_error",
        )

    @classmethod
    def invalid_request(
        cls, message: str, *, param: str | None = None, code: str | None = None
    ) -> ErrorReply:
        """A 400 `invalid_request_error`, for request validation."""
        return cls(
            status=400, message=message, error_type="invalid_request_error", param=param, code=code
        )


def scripted_error(
    error: ErrorReply | int,
    *,
    message: str | None = None,
    error_type: str | None = None,
    code: str | None = None,
    param: str | None = None,
    retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> ErrorReply:
    """An `ErrorReply` from either a ready one or a status (`ErrorReply.for_status`), with the
    given fields replaced and `headers` added. Fields left as None keep their value, so to send
    a null `code` or `param` where the preset has one, pass a complete `ErrorReply`."""
    if isinstance(error, ErrorReply):
        base = error
        if retry_after_s is not None:
            retry_header = {"retry-after": str(retry_after_s)}
            base = dataclasses.replace(base, headers=dict(base.headers) | retry_header)
    else:
        base = ErrorReply.for_status(error, retry_after_s=retry_after_s)
    return dataclasses.replace(
        base,
        message=base.message if message is None else message,
        error_type=base.error_type if error_type is None else error_type,
        code=base.code if code is None else code,
        param=base.param if param is None else param,
        headers=dict(base.headers) | dict(headers or {}),
    )


def mask_api_key(key: str) -> str:
    """`sk-4yNZz***...6mjw`: the first 8 and last 4 characters, the rest starred.

    Keys of 12 characters or fewer cannot be masked that way and are shown as sent.
    """
    if len(key) <= 12:
        return key
    return key[:8] + "*" * (len(key) - 12) + key[-4:]


# -- the recorder ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the upstream received it.

    `headers` has lower-cased names (repeated headers are joined with ", "); `json` is the parsed
    body, or None when the body is empty or not JSON.
    """

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]
    body: bytes
    json: Any

    def header(self, name: str) -> str | None:
        """The value of header `name`, in any case, or None."""
        return self.headers.get(name.lower())


def record_of(
    method: str, path: str, query_string: str, headers: Mapping[str, str], body: bytes
) -> RecordedRequest:
    """A `RecordedRequest` from the wire parts. `headers` may be a multi-mapping such as
    aiohttp's, whose `items()` yields a repeated header once per value."""
    lowered: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
    parsed: Any = None
    if body:
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            parsed = None
    return RecordedRequest(
        method=method,
        path=path,
        query_string=query_string,
        headers=MappingProxyType(lowered),
        body=body,
        json=parsed,
    )


@dataclass(frozen=True, slots=True)
class StreamPause:
    """A provider that thinks mid-stream: nothing is sent for `seconds` after the role chunk and
    `after_chunks` content chunks (a proxy with a shorter read timeout cuts the stream there)."""

    seconds: float
    after_chunks: int = 1


class RequestRecorder:
    """Every request the upstream received, the SNI server name of every TLS handshake (when it
    serves HTTPS), and the failures scripted for the next requests.

    Thread-safe: the server records from its own thread while a test reads and scripts from
    another. `max_requests` bounds the history (oldest first out) for long-running demos.
    """

    def __init__(self, *, max_requests: int | None = None) -> None:
        self._lock = threading.Lock()
        self._requests: deque[RecordedRequest] = deque(maxlen=max_requests)
        self._server_names: deque[str | None] = deque(maxlen=max_requests)
        self._queued_errors: deque[tuple[ErrorReply, str | None]] = deque()
        self._queued_pauses: deque[StreamPause] = deque()

    def record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def record_server_name(self, server_name: str | None) -> None:
        """A TLS client said hello with this SNI server name (None: it sent none)."""
        with self._lock:
            self._server_names.append(server_name)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def server_names(self) -> list[str | None]:
        """The SNI server name of each TLS handshake begun, oldest first; the handshake may
        then have failed (a client that rejects the certificate still said hello)."""
        with self._lock:
            return list(self._server_names)

    def queue_error(self, error: ErrorReply, *, times: int = 1, path: str | None = None) -> None:
        """Answer the next `times` requests with `error` (only requests to `path`, if given).

        Queued errors are used in order; each one answers one request.
        """
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._queued_errors.extend([(error, path)] * times)

    def queue_pause(self, pause: StreamPause) -> None:
        """The next streamed chat completion stops for `pause.seconds` after
        `pause.after_chunks` content chunks, then goes on."""
        with self._lock:
            self._queued_pauses.append(pause)

    def take_pause(self) -> StreamPause | None:
        with self._lock:
            return self._queued_pauses.popleft() if self._queued_pauses else None

    def take_error(self, path: str) -> ErrorReply | None:
        """Remove and return the first queued error that applies to a request to `path`."""
        with self._lock:
            for index, (error, only_path) in enumerate(self._queued_errors):
                if only_path is None or only_path == path:
                    del self._queued_errors[index]
                    return error
        return None

    @property
    def pending_errors(self) -> int:
        """How many queued errors are still waiting for a request."""
        with self._lock:
            return len(self._queued_errors)

    def clear(self) -> None:
        """Forget the recorded requests and server names, and drop every queued error."""
        with self._lock:
            self._requests.clear()
            self._server_names.clear()
            self._queued_errors.clear()


# -- requests and wire objects -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """How the fake upstream behaves.

    `api_key`: when set, requests must carry `Authorization: Bearer <api_key>`.
    `models`: when set, the only models served (others get 404 `model_not_found`) and the ones
    listed; when None, any model is served and `DEFAULT_MODELS` are listed.
    `chunk_delay_s`: pause between streamed chunks, so a proxy sees them arrive separately.
    """

    api_key: str | None = None
    models: tuple[str, ...] | None = None
    chunk_delay_s: float = 0.0
    system_fingerprint: str = DEMO_SYSTEM_FINGERPRINT
    organization: str = DEMO_ORGANIZATION
    project: str = DEMO_PROJECT


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """The parts of a chat completion request the fake model uses."""

    model: str
    messages: tuple[Mapping[str, Any], ...]
    stream: bool
    include_usage: bool
    include_obfuscation: bool
    max_tokens: int | None
    service_tier: str


def _json_type_name(value: Any) -> str:
    """The JSON type name OpenAI's validation messages use."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _served_tier(requested: Any) -> str:
    """The `service_tier` OpenAI reports: "auto" and unknown tiers are served as "default",
    and "fast" is reported as "priority"."""
    if requested == "fast":
        return "priority"
    if requested in ("flex", "priority", "scale"):
        return str(requested)
    return "default"


def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return value
    return None


def parse_chat_request(body: bytes, models: tuple[str, ...] | None) -> ChatRequest | ErrorReply:
    """Validate a chat completion body the way OpenAI does, in the order it does.

    Only what the fake uses is checked; other parameters are accepted and ignored.
    """
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ErrorReply.unparseable_json()
    if not isinstance(payload, dict):
        return ErrorReply.unparseable_json()
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        # OpenAI answers a missing model with this message and a null `param`.
        return ErrorReply.invalid_request("you must provide a model parameter")
    if "messages" not in payload:
        return ErrorReply.invalid_request(
            "Missing required parameter: 'messages'.",
            param="messages",
            code="missing_required_parameter",
        )
    messages = payload["messages"]
    if not isinstance(messages, list):
        return ErrorReply.invalid_request(
            f"Invalid type for 'messages': expected an array of objects, but got "
            f"{_json_type_name(messages)} instead.",
            param="messages",
            code="invalid_type",
        )
    if not messages:
        return ErrorReply.invalid_request(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            param="messages",
            code="empty_array",
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return ErrorReply.invalid_request(
                f"Invalid type for 'messages[{index}]': expected an object, but got "
                f"{_json_type_name(message)} instead.",
                param=f"messages[{index}]",
                code="invalid_type",
            )
    if models is not None and model not in models:
        return ErrorReply.model_not_found(model)
    stream_options = payload.get("stream_options")
    if not isinstance(stream_options, dict):
        stream_options = {}
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        stream=payload.get("stream") is True,
        include_usage=stream_options.get("include_usage") is True,
        # OpenAI includes `obfuscation` unless the client opts out.
        include_obfuscation=stream_options.get("include_obfuscation") is not False,
        max_tokens=_positive_int(payload.get("max_completion_tokens"))
        or _positive_int(payload.get("max_tokens")),
        service_tier=_served_tier(payload.get("service_tier")),
    )


def usage_object(prompt_tokens: int, completion_tokens: int) -> JSONObject:
    """A `usage` object with every detail field OpenAI returns (all zero for the fake model)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion_object(
    request: ChatRequest,
    reply: Reply,
    *,
    completion_id: str,
    created: int,
    system_fingerprint: str,
) -> JSONObject:
    """A `chat.completion` object, with OpenAI's fields in OpenAI's order."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": reply.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": usage_object(reply.prompt_tokens, reply.completion_tokens),
        "service_tier": request.service_tier,
        "system_fingerprint": system_fingerprint,
    }


def _obfuscation(content: str) -> str:
    """Padding for the `obfuscation` field. OpenAI sends random characters so chunk sizes do not
    leak token lengths; the fake pads deterministically so streams are reproducible."""
    return _OBFUSCATION_ALPHABET[: 1 + (15 - len(content)) % 16]


def chat_completion_chunks(
    request: ChatRequest,
    reply: Reply,
    *,
    completion_id: str,
    created: int,
    system_fingerprint: str,
) -> list[JSONObject]:
    """The `chat.completion.chunk` objects of a streamed reply, in order, without `[DONE]`.

    First a delta with the role and empty content, then one delta per word, then an empty delta
    with `finish_reason`. With `include_usage`, every one of those carries `"usage": null` and a
    last chunk with `"choices": []` carries the usage; without it no chunk has a `usage` key.
    """

    def chunk(choices: list[JSONObject], usage: JSONObject | None, content: str) -> JSONObject:
        data: JSONObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": request.model,
            "service_tier": request.service_tier,
            "system_fingerprint": system_fingerprint,
            "choices": choices,
        }
        if request.include_usage:
            data["usage"] = usage
        if request.include_obfuscation:
            data["obfuscation"] = _obfuscation(content)
        return data

    def choice(delta: JSONObject, finish_reason: FinishReason | None = None) -> JSONObject:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}

    chunks = [chunk([choice({"role": "assistant", "content": "", "refusal": None})], None, "")]
    chunks.extend(chunk([choice({"content": piece})], None, piece) for piece in reply.deltas)
    chunks.append(chunk([choice({}, reply.finish_reason)], None, ""))
    if request.include_usage:
        usage = usage_object(reply.prompt_tokens, reply.completion_tokens)
        chunks.append(chunk([], usage, ""))
    return chunks


def sse_event(data: JSONObject) -> bytes:
    """One SSE event as OpenAI frames it: `data: <compact JSON>` and a blank line."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


SSE_DONE: Final = b"data: [DONE]\n\n"


def models_list_object(models: Sequence[str]) -> JSONObject:
    """The `GET /v1/models` body."""
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": MODEL_CREATED, "owned_by": "system"}
            for model in models
        ],
    }


# -- the Responses API -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """The parts of a `POST /v1/responses` body the fake model uses.

    `messages` is the input as chat-like messages (`instructions` first, as a system message),
    so the Chat Completions rules for the reply and the token counts apply unchanged.
    """

    model: str
    messages: tuple[Mapping[str, Any], ...]
    instructions: str | None
    stream: bool
    max_output_tokens: int | None
    service_tier: str


def _input_item_text(content: Any) -> str:
    """The text of a Responses input item's `content`: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping)
            and part.get("type") in ("input_text", "output_text", "text")
            and isinstance(part.get("text"), str)
        )
    return ""


def responses_messages(input_value: Any, instructions: str | None) -> tuple[JSONObject, ...]:
    """A Responses `input` as chat messages: a string is one user message; each list item with a
    `role` (an "easy" message or a `"type": "message"` item) is a message of its text parts.
    Other items (function calls and their outputs, reasoning) count as nothing."""
    messages: list[JSONObject] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    if isinstance(input_value, str):
        messages.append({"role": "user", "content": input_value})
    elif isinstance(input_value, list):
        messages.extend(
            {"role": item["role"], "content": _input_item_text(item.get("content"))}
            for item in input_value
            if isinstance(item, Mapping) and isinstance(item.get("role"), str)
        )
    return tuple(messages)


def parse_responses_request(
    body: bytes, models: tuple[str, ...] | None
) -> ResponsesRequest | ErrorReply:
    """Validate a Responses body: a JSON object with a model the server serves, an `input`
    string or array. Other parameters are accepted and ignored."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ErrorReply.unparseable_json()
    if not isinstance(payload, dict):
        return ErrorReply.unparseable_json()
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return ErrorReply.invalid_request(
            "Missing required parameter: 'model'.",
            param="model",
            code="missing_required_parameter",
        )
    input_value = payload.get("input")
    if input_value is not None and not isinstance(input_value, str | list):
        return ErrorReply.invalid_request(
            f"Invalid type for 'input': expected one of a string or array of input items, but "
            f"got {_json_type_name(input_value)} instead.",
            param="input",
            code="invalid_type",
        )
    if models is not None and model not in models:
        return ErrorReply.model_not_found(model)
    instructions = payload.get("instructions")
    instructions = instructions if isinstance(instructions, str) else None
    return ResponsesRequest(
        model=model,
        messages=responses_messages(input_value, instructions),
        instructions=instructions,
        stream=payload.get("stream") is True,
        max_output_tokens=_positive_int(payload.get("max_output_tokens")),
        service_tier=_served_tier(payload.get("service_tier")),
    )


def responses_usage_object(input_tokens: int, output_tokens: int) -> JSONObject:
    """The Responses `usage`: input and output tokens with their details, and the total."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def output_text_part(text: str) -> JSONObject:
    """An `output_text` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def output_message_item(message_id: str, text: str | None) -> JSONObject:
    """The assistant's output message item: in progress and empty while `text` is None."""
    return {
        "id": message_id,
        "type": "message",
        "status": "in_progress" if text is None else "completed",
        "content": [] if text is None else [output_text_part(text)],
        "role": "assistant",
    }


@dataclass(frozen=True, slots=True)
class ResponseIds:
    """The ids and creation time of one Responses call."""

    response_id: str
    message_id: str
    created_at: int


def response_object(
    request: ResponsesRequest, reply: Reply, ids: ResponseIds, *, done: bool = True
) -> JSONObject:
    """A `response` object, with the fields of OpenAI's API reference in its order. Not `done`:
    the in-progress response that `response.created` carries (no output, null usage)."""
    cut = reply.finish_reason == "length"
    status = "in_progress" if not done else "incomplete" if cut else "completed"
    return {
        "id": ids.response_id,
        "object": "response",
        "created_at": ids.created_at,
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if done and cut else None,
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": None,
        "model": request.model,
        "output": [output_message_item(ids.message_id, reply.text)] if done else [],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": request.service_tier if done else "auto",
        "store": True,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": responses_usage_object(reply.prompt_tokens, reply.completion_tokens)
        if done
        else None,
        "user": None,
        "metadata": {},
    }


def response_stream_events(
    request: ResponsesRequest, reply: Reply, ids: ResponseIds
) -> list[JSONObject]:
    """The events of a streamed Responses call, in OpenAI's order, numbered from 0:
    `response.created`, `response.in_progress`, `response.output_item.added`,
    `response.content_part.added`, one `response.output_text.delta` per word,
    `response.output_text.done`, `response.content_part.done`, `response.output_item.done`, and
    `response.completed` (`response.incomplete` when `max_output_tokens` cut the reply), whose
    response carries the usage. Responses streams end there: no `[DONE]`."""
    item = {"item_id": ids.message_id, "output_index": 0}
    part = item | {"content_index": 0}
    started = response_object(request, reply, ids, done=False)
    finished = response_object(request, reply, ids)
    last = "response.incomplete" if finished["status"] == "incomplete" else "response.completed"
    bodies: list[tuple[str, JSONObject]] = [
        ("response.created", {"response": started}),
        ("response.in_progress", {"response": started}),
        (
            "response.output_item.added",
            {"output_index": 0, "item": output_message_item(ids.message_id, None)},
        ),
        ("response.content_part.added", part | {"part": output_text_part("")}),
    ]
    bodies.extend(
        (
            "response.output_text.delta",
            part | {"delta": delta, "logprobs": [], "obfuscation": _obfuscation(delta)},
        )
        for delta in reply.deltas
    )
    bodies += [
        ("response.output_text.done", part | {"text": reply.text, "logprobs": []}),
        ("response.content_part.done", part | {"part": output_text_part(reply.text)}),
        (
            "response.output_item.done",
            {"output_index": 0, "item": output_message_item(ids.message_id, reply.text)},
        ),
        (last, {"response": finished}),
    ]
    return [
        {"type": event_type, "sequence_number": number} | fields
        for number, (event_type, fields) in enumerate(bodies)
    ]


def named_sse_event(data: JSONObject) -> bytes:
    """One SSE event as the Responses API frames it: `event: <type>`, then `data: <JSON>`."""
    return b"event: " + str(data["type"]).encode() + b"\n" + sse_event(data)


# -- the Embeddings API ------------------------------------------------------------------------

#: The length of the fake's vectors when the request sets no `dimensions`.
DEFAULT_EMBEDDING_DIMENSIONS: Final = 8


@dataclass(frozen=True, slots=True)
class EmbeddingsRequest:
    """The parts of a `POST /v1/embeddings` body the fake model uses."""

    model: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int
    base64: bool


def _embedding_inputs(value: Any) -> tuple[str | tuple[int, ...], ...] | None:
    """The inputs of an embeddings request (a string, an array of strings, an array of token
    ids, or an array of such arrays), or None when `value` is none of those."""
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(item, str) for item in value):
        return tuple(value)
    if all(_is_token(item) for item in value):
        return (tuple(value),)
    if all(isinstance(item, list) and item and all(map(_is_token, item)) for item in value):
        return tuple(tuple(item) for item in value)
    return None


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def parse_embeddings_request(
    body: bytes, models: tuple[str, ...] | None
) -> EmbeddingsRequest | ErrorReply:
    """Validate an embeddings body the way OpenAI does: a model, an `input` of a non-empty
    string, array of strings or token arrays, and an `encoding_format` of "float" or "base64"."""
    try:
        payload: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ErrorReply.unparseable_json()
    if not isinstance(payload, dict):
        return ErrorReply.unparseable_json()
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return ErrorReply.invalid_request("you must provide a model parameter")
    if "input" not in payload:
        return ErrorReply.invalid_request(
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    inputs = _embedding_inputs(payload["input"])
    if inputs is None or "" in inputs:
        # OpenAI's answer to an empty string or array, or an input of the wrong type.
        return ErrorReply.invalid_request(
            "'$.input' is invalid. Please check the API reference: "
            "https://platform.openai.com/docs/api-reference."
        )
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        return ErrorReply.invalid_request(
            f"Invalid value for 'encoding_format': expected one of 'float' or 'base64', but "
            f"got {quoted_value(encoding)} instead.",
            param="encoding_format",
            code="invalid_value",
        )
    if models is not None and model not in models:
        return ErrorReply.model_not_found(model)
    return EmbeddingsRequest(
        model=model,
        inputs=inputs,
        dimensions=_positive_int(payload.get("dimensions")) or DEFAULT_EMBEDDING_DIMENSIONS,
        base64=encoding == "base64",
    )


def quoted_value(value: Any) -> str:
    """A client value in a validation message, cut short so a message stays bounded."""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else f"'{value}'"
    return text if len(text) <= 40 else text[:37] + "..."


def count_embedding_tokens(item: str | tuple[int, ...]) -> int:
    """The fake tokenizer's count for one embeddings input: words of a string, or the length of
    a token array. `["hello world", "hi"]` is 3 tokens."""
    return len(item) if isinstance(item, tuple) else len(item.split())


def embedding_vector(item: str | tuple[int, ...], dimensions: int) -> list[float]:
    """The fake model's vector for one input: SHA-256 bytes of the input (its UTF-8 text, or its
    token ids as JSON) mapped to multiples of 1/128 in [-1, 1). Exact in float32, so the base64
    encoding decodes to the very same values."""
    seed = item.encode() if isinstance(item, str) else orjson.dumps(list(item))
    digest = b""
    counter = 0
    while len(digest) < dimensions:
        digest += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    return [(byte - 128) / 128 for byte in digest[:dimensions]]


def encoded_embedding(vector: Sequence[float]) -> str:
    """A vector as `encoding_format: "base64"` sends it: base64 of little-endian float32s."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_object(request: EmbeddingsRequest) -> JSONObject:
    """The embeddings `list` object: one `embedding` per input, in order, and the usage."""
    data: list[JSONObject] = []
    for index, item in enumerate(request.inputs):
        vector = embedding_vector(item, request.dimensions)
        data.append(
            {
                "object": "embedding",
                "index": index,
                "embedding": encoded_embedding(vector) if request.base64 else vector,
            }
        )
    tokens = sum(count_embedding_tokens(item) for item in request.inputs)
    return {
        "object": "list",
        "data": data,
        "model": request.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def new_completion_id() -> str:
    """`chatcmpl-` and 29 random letters and digits, the shape of OpenAI's ids."""
    return "chatcmpl-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(29))


def new_response_ids(created_at: int) -> ResponseIds:
    """`resp_` and `msg_` ids of 48 random hex digits, the shape of OpenAI's."""
    return ResponseIds("resp_" + secrets.token_hex(24), "msg_" + secrets.token_hex(24), created_at)


def new_request_id() -> str:
    """`req_` and 32 random hex digits, the shape of OpenAI's `x-request-id`."""
    return "req_" + secrets.token_hex(16)


# -- the HTTP application ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One request in flight: what the handlers need besides the aiohttp request."""

    request: web.Request
    body: bytes
    request_id: str
    started: float
    mid_stream_error: ErrorReply | None


Handler = Callable[[Exchange], Awaitable[web.StreamResponse]]


class OpenAIUpstream:
    """The fake's HTTP handlers: one method per endpoint, dispatched from one catch-all route.

    The catch-all route records every request and applies queued errors before anything else, so
    even a request that fails auth or hits an unknown path is recorded and can be scripted.
    """

    def __init__(
        self, config: UpstreamConfig, recorder: RequestRecorder, *, clock: Clock = time.time
    ) -> None:
        self.config = config
        self.recorder = recorder
        self._clock = clock
        self._routes: dict[tuple[str, str], Handler] = {
            ("POST", CHAT_COMPLETIONS_PATH): self.chat_completions,
            ("GET", MODELS_PATH): self.list_models,
            ("POST", RESPONSES_PATH): self.responses,
            ("POST", EMBEDDINGS_PATH): self.embeddings,
        }

    def create_app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await request.read()
        self.recorder.record(
            record_of(request.method, request.path, request.query_string, request.headers, body)
        )
        exchange = Exchange(request, body, new_request_id(), started, mid_stream_error=None)
        scripted = self.recorder.take_error(request.path)
        if scripted is not None:
            if scripted.after_chunks is None or request.path != CHAT_COMPLETIONS_PATH:
                return self._error_response(exchange, scripted)
            exchange = dataclasses.replace(exchange, mid_stream_error=scripted)
        handler = self._routes.get((request.method, request.path))
        if handler is None:
            return self._error_response(
                exchange, ErrorReply.invalid_url(request.method, request.path)
            )
        return await handler(exchange)

    async def list_models(self, exchange: Exchange) -> web.StreamResponse:
        denied = self._authenticate(exchange.request)
        if denied is not None:
            return self._error_response(exchange, denied)
        models = self.config.models if self.config.models is not None else DEFAULT_MODELS
        return self._json_response(exchange, models_list_object(models), {})

    async def chat_completions(self, exchange: Exchange) -> web.StreamResponse:
        denied = self._authenticate(exchange.request)
        if denied is not None:
            return self._error_response(exchange, denied)
        parsed = parse_chat_request(exchange.body, self.config.models)
        if isinstance(parsed, ErrorReply):
            return self._error_response(exchange, parsed)
        if exchange.mid_stream_error is not None and not parsed.stream:
            return self._error_response(exchange, exchange.mid_stream_error)
        reply = deterministic_reply(parsed.messages, parsed.max_tokens)
        completion_id = new_completion_id()
        created = int(self._clock())
        rate_headers = self._rate_limit_headers(reply.prompt_tokens)
        if parsed.stream:
            chunks = chat_completion_chunks(
                parsed,
                reply,
                completion_id=completion_id,
                created=created,
                system_fingerprint=self.config.system_fingerprint,
            )
            return await self._stream(exchange, chunks, rate_headers)
        completion = chat_completion_object(
            parsed,
            reply,
            completion_id=completion_id,
            created=created,
            system_fingerprint=self.config.system_fingerprint,
        )
        return self._json_response(exchange, completion, rate_headers)

    async def responses(self, exchange: Exchange) -> web.StreamResponse:
        """`POST /v1/responses`: the deterministic reply as a `response` object, or streamed as
        OpenAI's named SSE events."""
        denied = self._authenticate(exchange.request)
        if denied is not None:
            return self._error_response(exchange, denied)
        parsed = parse_responses_request(exchange.body, self.config.models)
        if isinstance(parsed, ErrorReply):
            return self._error_response(exchange, parsed)
        reply = deterministic_reply(parsed.messages, parsed.max_output_tokens)
        ids = new_response_ids(int(self._clock()))
        rate_headers = self._rate_limit_headers(reply.prompt_tokens)
        if parsed.stream:
            events = [named_sse_event(e) for e in response_stream_events(parsed, reply, ids)]
            return await self._send_events(exchange, events, rate_headers, pause=None)
        return self._json_response(exchange, response_object(parsed, reply, ids), rate_headers)

    async def embeddings(self, exchange: Exchange) -> web.StreamResponse:
        """`POST /v1/embeddings`: one deterministic vector per input, floats or base64."""
        denied = self._authenticate(exchange.request)
        if denied is not None:
            return self._error_response(exchange, denied)
        parsed = parse_embeddings_request(exchange.body, self.config.models)
        if isinstance(parsed, ErrorReply):
            return self._error_response(exchange, parsed)
        answer = embeddings_object(parsed)
        rate_headers = self._rate_limit_headers(answer["usage"]["prompt_tokens"])
        return self._json_response(exchange, answer, rate_headers)

    def _authenticate(self, request: web.Request) -> ErrorReply | None:
        if self.config.api_key is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return ErrorReply.missing_api_key()
        # Bytes, because compare_digest refuses non-ASCII str and header values can be Latin-1.
        if not hmac.compare_digest(token.encode(), self.config.api_key.encode()):
            return ErrorReply.incorrect_api_key(token)
        return None

    def _common_headers(self, exchange: Exchange) -> dict[str, str]:
        elapsed_ms = round((time.perf_counter() - exchange.started) * 1000)
        return {
            "x-request-id": exchange.request_id,
            "openai-organization": self.config.organization,
            "openai-project": self.config.project,
            "openai-processing-ms": str(elapsed_ms),
            "openai-version": OPENAI_VERSION,
            "access-control-expose-headers": "X-Request-ID",
        }

    def _rate_limit_headers(self, prompt_tokens: int) -> dict[str, str]:
        return {
            "x-ratelimit-limit-requests": str(RATE_LIMIT_REQUESTS),
            "x-ratelimit-limit-tokens": str(RATE_LIMIT_TOKENS),
            "x-ratelimit-remaining-requests": str(RATE_LIMIT_REQUESTS - 1),
            "x-ratelimit-remaining-tokens": str(RATE_LIMIT_TOKENS - prompt_tokens),
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-reset-tokens": "0s",
        }

    def _json_response(
        self, exchange: Exchange, payload: JSONObject, extra_headers: Mapping[str, str]
    ) -> web.Response:
        headers = self._common_headers(exchange) | dict(extra_headers)
        headers["content-type"] = "application/json"
        # OpenAI pretty-prints non-streamed bodies with two-space indents.
        return web.Response(body=orjson.dumps(payload, option=orjson.OPT_INDENT_2), headers=headers)

    def _error_response(self, exchange: Exchange, error: ErrorReply) -> web.Response:
        headers = self._common_headers(exchange)
        headers["content-type"] = "application/json; charset=utf-8"
        headers |= error.headers
        # OpenAI's error bodies are indented by four spaces and end with a newline.
        body = (json.dumps(error.body(), indent=4) + "\n").encode()
        return web.Response(status=error.status, body=body, headers=headers)

    async def _stream(
        self, exchange: Exchange, chunks: list[JSONObject], rate_headers: Mapping[str, str]
    ) -> web.StreamResponse:
        failure = exchange.mid_stream_error
        if failure is not None and failure.after_chunks is not None:
            # The role chunk, then `after_chunks` content chunks, then the error; never [DONE].
            events = [sse_event(chunk) for chunk in chunks[: 1 + failure.after_chunks]]
            events.append(sse_event(failure.body()))
        else:
            events = [sse_event(chunk) for chunk in chunks]
            events.append(SSE_DONE)
        pause = self.recorder.take_pause()
        return await self._send_events(exchange, events, rate_headers, pause=pause)

    async def _send_events(
        self,
        exchange: Exchange,
        events: list[bytes],
        rate_headers: Mapping[str, str],
        *,
        pause: StreamPause | None,
    ) -> web.StreamResponse:
        headers = self._common_headers(exchange) | dict(rate_headers)
        headers["content-type"] = "text/event-stream; charset=utf-8"
        response = web.StreamResponse(status=200, headers=headers)
        await response.prepare(exchange.request)
        try:
            for index, event in enumerate(events):
                if index and self.config.chunk_delay_s > 0:
                    await asyncio.sleep(self.config.chunk_delay_s)
                if pause is not None and index == 1 + pause.after_chunks:
                    await asyncio.sleep(pause.seconds)
                # Each write goes out as its own HTTP chunk: real streaming, not one buffered body.
                await response.write(event)
            await response.write_eof()
        except ConnectionResetError:
            # The client went away mid-stream, as clients do; there is nobody left to answer.
            logger.debug("client closed the stream of %s", exchange.request_id)
        return response


# -- running it --------------------------------------------------------------------------------


class UpstreamServer(BackgroundServer):
    """The fake upstream on a loopback port, in a background thread with its own event loop.

    `port=0` (the default) binds a free port; the port is known as soon as `start()` returns.
    With `certfile` and `keyfile` (PEM, as `ssl.SSLContext.load_cert_chain` takes them) it
    serves HTTPS (HTTP/1.1) with that certificate and records each handshake's SNI server name
    (`server_names`). Use as a context manager, or call `start()` and `stop()`.
    """

    kind = "upstream"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        models: Sequence[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        chunk_delay_s: float = 0.0,
        clock: Clock = time.time,
        certfile: str | Path | None = None,
        keyfile: str | Path | None = None,
    ) -> None:
        super().__init__(host=host, port=port, certfile=certfile, keyfile=keyfile)
        self.config = UpstreamConfig(
            api_key=api_key,
            models=tuple(models) if models is not None else None,
            chunk_delay_s=chunk_delay_s,
        )
        self.recorder = RequestRecorder()
        self._clock = clock

    @property
    def base_url(self) -> str:
        """The `base_url` to give an OpenAI client: `http://127.0.0.1:PORT/v1` (`https://`
        when serving TLS)."""
        return f"{self.scheme}://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, oldest first."""
        return self.recorder.requests

    @property
    def server_names(self) -> list[str | None]:
        """The SNI server name of every TLS handshake begun so far, oldest first."""
        return self.recorder.server_names

    def queue_error(
        self,
        error: ErrorReply | int,
        *,
        message: str | None = None,
        error_type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: int | None = None,
        headers: Mapping[str, str] | None = None,
        times: int = 1,
        path: str | None = None,
    ) -> ErrorReply:
        """Answer the next `times` requests (to `path`, if given) with an error; returns it.

        `error` is an `ErrorReply` or just a status, for OpenAI's usual error for it
        (`queue_error(429, retry_after_s=7)`); the other fields override (see `scripted_error`).
        """
        scripted = scripted_error(
            error,
            message=message,
            error_type=error_type,
            code=code,
            param=param,
            retry_after_s=retry_after_s,
            headers=headers,
        )
        self.recorder.queue_error(scripted, times=times, path=path)
        return scripted

    def clear(self) -> None:
        """Forget recorded requests and drop queued errors."""
        self.recorder.clear()

    def create_app(self) -> web.Application:
        return OpenAIUpstream(self.config, self.recorder, clock=self._clock).create_app()

    def configure_tls(self, context: ssl.SSLContext) -> None:
        recorder = self.recorder

        def record_server_name(
            _connection: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
        ) -> None:
            recorder.record_server_name(server_name)

        context.sni_callback = record_server_name


async def serve_in_foreground(config: UpstreamConfig, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM. The history is bounded so a long demo does not grow."""
    recorder = RequestRecorder(max_requests=1000)
    app = OpenAIUpstream(config, recorder).create_app()
    sock = bound_socket(host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)

    def announce() -> None:
        bound_host, bound_port = sock.getsockname()[:2]
        logger.info("fake OpenAI upstream listening on http://%s:%s/v1", bound_host, bound_port)

    try:
        await serve(
            app, sock, stop, on_started=announce, access_log=logging.getLogger("aiohttp.access")
        )
    finally:
        sock.close()
        logger.info("fake OpenAI upstream stopped")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.openai_upstream",
        description="A fake OpenAI Chat Completions upstream speaking OpenAI's wire format.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=18000)
    parser.add_argument("--api-key", default=None, help="require this Bearer key (default: none)")
    parser.add_argument(
        "--model",
        action="append",
        dest="models",
        default=None,
        help="serve only this model (repeatable; default: any model)",
    )
    parser.add_argument(
        "--chunk-delay-ms", type=float, default=0.0, help="pause between streamed chunks"
    )
    arguments = parser.parse_args(argv)
    if arguments.chunk_delay_ms < 0:
        parser.error("--chunk-delay-ms must not be negative")
    return arguments


def main(argv: Sequence[str] | None = None) -> int:
    arguments = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = UpstreamConfig(
        api_key=arguments.api_key,
        models=tuple(arguments.models) if arguments.models else None,
        chunk_delay_s=arguments.chunk_delay_ms / 1000,
    )
    try:
        asyncio.run(serve_in_foreground(config, arguments.host, arguments.port))
    except KeyboardInterrupt:
        # SIGINT before the signal handlers are installed: still a clean, quiet exit.
        return 0
    except OSError as error:
        print(f"cannot serve on {arguments.host}:{arguments.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
