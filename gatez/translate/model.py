"""The provider-neutral model every schema module converts to and from.

Requests, responses, stream events and errors, as frozen slotted values. A schema module decodes
its wire form into these and encodes these back into its wire form; a translation between two
schemas is a decode by one module followed by an encode by the other, and a stage reading a
stream only ever sees `StreamEvent`s, whatever the provider.

Content is a list of blocks, as in Anthropic Messages (the richer of the two shapes): a message
holds text, images, tool calls and tool results in order. Token counts follow OpenAI's meaning
(input includes cached input), which is what cost is computed from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, TypeAlias

import grpc

from gatez.errors import GatewayError

EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})


# --- content -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    """A run of text."""

    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """An image by reference: an https URL, or a `data:<media type>;base64,<data>` URL for
    inline bytes (both schemas can carry either)."""

    url: str
    # OpenAI's `detail` (auto / low / high); Anthropic has no equivalent.
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model asks for a tool: `arguments` is the JSON text of the input object, kept as text
    (OpenAI's form) so a same-schema pass never re-serialises it."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a tool returned, answering the call `tool_call_id`."""

    tool_call_id: str
    content: tuple[Text | Image, ...]
    is_error: bool = False


Part: TypeAlias = Text | Image | ToolCall | ToolResult


class Role(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"
    # A system message in the middle of a conversation (OpenAI allows it; Anthropic does not).
    SYSTEM = "system"


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: tuple[Part, ...]


# --- request -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call; `parameters` is its JSON schema, passed through as is."""

    name: str
    description: str | None
    parameters: Mapping[str, Any]


class ToolChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    # The model must call some tool (OpenAI `required`, Anthropic `any`).
    ANY = "any"
    # The model must call the tool named in `ToolChoice.name`.
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class ToolChoice:
    mode: ToolChoiceMode
    name: str | None = None
    # None: the schema's default (both allow parallel calls unless told otherwise).
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class Extras:
    """Request fields of the source schema that the model does not represent.

    A same-schema encode puts all of them back, so a passthrough loses nothing. A cross-schema
    encode refuses (`Unsupported`) when any of `essential` is present: those change the answer
    (OpenAI `n`, Anthropic `top_k`…); the others (`user`, `metadata`…) only tag the call.
    """

    schema: str
    fields: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    essential: tuple[str, ...] = ()

    def refuse_in(self, schema: str, name: str) -> None:
        """Raises Unsupported when these came from another schema and one is essential;
        `schema` and `name` are the target's id and display name."""
        if self.essential and self.schema != schema:
            fields = ", ".join(repr(field) for field in self.essential[:5])
            raise Unsupported(f"{name} cannot express the request field(s) {fields}")


NO_EXTRAS: Final = Extras(schema="")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat call, provider-neutral. `system` holds the leading system prompt(s)."""

    model: str
    messages: tuple[Message, ...]
    system: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    extras: Extras = NO_EXTRAS


# --- response ------------------------------------------------------------------------------


class StopReason(StrEnum):
    END_TURN = "end_turn"
    MAX_TOKENS = "max_tokens"
    STOP_SEQUENCE = "stop_sequence"
    TOOL_USE = "tool_use"
    CONTENT_FILTER = "content_filter"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of one call. `input_tokens` counts all input, cached or not (OpenAI's
    meaning); `cached_input_tokens` and `cache_write_input_tokens` are the parts of it read
    from and written to a prompt cache (priced differently)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0


def merge_usage(old: Usage | None, new: Usage | None) -> Usage | None:
    """Usage reports are cumulative (Anthropic's `message_start` then `message_delta`, OpenAI's
    one final chunk): the larger figure of each count is the latest."""
    if new is None:
        return old
    if old is None:
        return new
    return Usage(
        input_tokens=max(old.input_tokens, new.input_tokens),
        output_tokens=max(old.output_tokens, new.output_tokens),
        cached_input_tokens=max(old.cached_input_tokens, new.cached_input_tokens),
        cache_write_input_tokens=max(old.cache_write_input_tokens, new.cache_write_input_tokens),
    )


@dataclass(frozen=True, slots=True)
class ChatResponse:
    id: str
    model: str
    content: tuple[Text | ToolCall, ...]
    stop_reason: StopReason | None
    usage: Usage | None
    # The stop sequence that ended the output, when the provider says (Anthropic does).
    stop_sequence: str | None = None


# --- stream events -------------------------------------------------------------------------
# Blocks are numbered by `index` in output order (text and tool calls share the numbering, as in
# Anthropic's stream). A block starts with its first delta (text) or a ToolCallStart, and ends
# with BlockStop. A well-formed stream is: MessageStart, blocks, MessageDelta, MessageStop;
# UsageUpdate may come anywhere after MessageStart.


@dataclass(frozen=True, slots=True)
class MessageStart:
    id: str
    model: str
    # Input usage when the provider reports it up front (Anthropic does, OpenAI does not).
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of the tool call's arguments: partial JSON, valid only once joined."""

    index: int
    partial_json: str


@dataclass(frozen=True, slots=True)
class BlockStop:
    index: int


@dataclass(frozen=True, slots=True)
class MessageDelta:
    """The end of the output: why it stopped, and the usage so far when the provider says."""

    stop_reason: StopReason | None
    stop_sequence: str | None = None
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class UsageUpdate:
    """The whole call's usage, reported on its own (OpenAI's final usage chunk)."""

    usage: Usage


@dataclass(frozen=True, slots=True)
class MessageStop:
    pass


@dataclass(frozen=True, slots=True)
class StreamError:
    """The provider reported an error inside the stream (after its 200)."""

    error: ErrorInfo


StreamEvent: TypeAlias = (
    MessageStart
    | TextDelta
    | ToolCallStart
    | ToolCallDelta
    | BlockStop
    | MessageDelta
    | UsageUpdate
    | MessageStop
    | StreamError
)


# --- errors --------------------------------------------------------------------------------


class ErrorKind(StrEnum):
    INVALID_REQUEST = "invalid_request"
    AUTHENTICATION = "authentication"
    PERMISSION = "permission"
    NOT_FOUND = "not_found"
    REQUEST_TOO_LARGE = "request_too_large"
    RATE_LIMIT = "rate_limit"
    SERVER = "server"
    OVERLOADED = "overloaded"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error answer, provider-neutral. `provider_type` and `code` are the provider's own
    labels (kept for logs and same-schema passes)."""

    status: int
    kind: ErrorKind
    message: str
    retry_after_s: float | None = None
    provider_type: str | None = None
    code: str | None = None
    details: Mapping[str, Any] = field(default_factory=lambda: EMPTY)


def kind_of_status(status: int) -> ErrorKind:
    """The error kind an HTTP status means when the body does not say more."""
    return _KIND_BY_STATUS.get(status) or (
        ErrorKind.SERVER if status >= 500 else ErrorKind.INVALID_REQUEST
    )


_KIND_BY_STATUS: Final = {
    400: ErrorKind.INVALID_REQUEST,
    401: ErrorKind.AUTHENTICATION,
    403: ErrorKind.PERMISSION,
    404: ErrorKind.NOT_FOUND,
    408: ErrorKind.TIMEOUT,
    413: ErrorKind.REQUEST_TOO_LARGE,
    429: ErrorKind.RATE_LIMIT,
    503: ErrorKind.OVERLOADED,
    504: ErrorKind.TIMEOUT,
    529: ErrorKind.OVERLOADED,
}


class TranslationError(GatewayError):
    """Root of what translation raises; the caller answers it in the client's schema."""


class Unsupported(TranslationError):
    """One side cannot express a feature the other side used: a 400, never a silent drop."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_request_error"
    code = "unsupported_feature"


class MalformedRequest(TranslationError):
    """A client's request body is not what its schema says."""

    http_status = 400
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid_request_error"


class MalformedResponse(TranslationError):
    """A provider's response, stream or error body is not what its schema says: 502."""

    http_status = 502
    grpc_code = grpc.StatusCode.UNAVAILABLE
    kind = "bad_gateway"
