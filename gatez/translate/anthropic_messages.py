"""Anthropic Messages ⇄ the shared model: requests, responses, SSE streams, error bodies.

Field names and shapes follow Anthropic's API reference ("Messages", "Streaming Messages",
"Errors") and the types of the official `anthropic` SDK.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any, Final

import orjson

from gatez.errors import quoted
from gatez.sse import SseSplitter, event_data
from gatez.translate._wire import (
    Fail,
    as_list,
    as_object,
    as_str,
    count,
    dumps,
    load_object,
    one_of,
    opt_bool,
    opt_int,
    opt_number,
    opt_str,
    retry_after_seconds,
)
from gatez.translate.model import (
    BlockStop,
    ChatRequest,
    ChatResponse,
    ErrorInfo,
    ErrorKind,
    Extras,
    Image,
    MalformedRequest,
    MalformedResponse,
    Message,
    MessageDelta,
    MessageStart,
    MessageStop,
    Part,
    Role,
    StopReason,
    StreamError,
    StreamEvent,
    Text,
    TextDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoice,
    ToolChoiceMode,
    ToolResult,
    Unsupported,
    Usage,
    UsageUpdate,
    kind_of_status,
    merge_usage,
)

SCHEMA: Final = "anthropic_messages"
NAME: Final = "Anthropic Messages"

# Anthropic requires max_tokens; a client of a schema where it is optional gets this.
DEFAULT_MAX_TOKENS: Final = 4096
# Anthropic's temperature range is 0 to 1 (OpenAI's is 0 to 2).
MAX_TEMPERATURE: Final = 1.0

_MODELLED: Final = frozenset(
    {
        "model",
        "messages",
        "system",
        "max_tokens",
        "temperature",
        "top_p",
        "stop_sequences",
        "stream",
        "tools",
        "tool_choice",
    }
)
_TAGS: Final = frozenset({"metadata", "service_tier"})

_STOP_REASONS: Final = {
    "end_turn": StopReason.END_TURN,
    "max_tokens": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "tool_use": StopReason.TOOL_USE,
    "refusal": StopReason.CONTENT_FILTER,
    # The context window filled up: as far as the client can tell, output was cut at a limit.
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    # A server tool's long turn paused; the turn ended without a final answer.
    "pause_turn": StopReason.END_TURN,
}
_WIRE_STOP_REASONS: Final = {
    StopReason.END_TURN: "end_turn",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.TOOL_USE: "tool_use",
    StopReason.CONTENT_FILTER: "refusal",
    # Messages has no error stop reason; the error itself is sent as an `error` event.
    StopReason.ERROR: "end_turn",
}
# Anthropic's error types (API reference, "Errors").
_ERROR_KINDS: Final = {
    "invalid_request_error": ErrorKind.INVALID_REQUEST,
    "authentication_error": ErrorKind.AUTHENTICATION,
    "billing_error": ErrorKind.PERMISSION,
    "permission_error": ErrorKind.PERMISSION,
    "not_found_error": ErrorKind.NOT_FOUND,
    "request_too_large": ErrorKind.REQUEST_TOO_LARGE,
    "rate_limit_error": ErrorKind.RATE_LIMIT,
    "api_error": ErrorKind.SERVER,
    "overloaded_error": ErrorKind.OVERLOADED,
    "timeout_error": ErrorKind.TIMEOUT,
}
_ERROR_TYPES: Final = {
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.REQUEST_TOO_LARGE: "request_too_large",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.SERVER: "api_error",
    ErrorKind.OVERLOADED: "overloaded_error",
    ErrorKind.TIMEOUT: "timeout_error",
}
_STATUS_OF_KIND: Final = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.REQUEST_TOO_LARGE: 413,
    ErrorKind.RATE_LIMIT: 429,
    ErrorKind.SERVER: 500,
    ErrorKind.OVERLOADED: 529,
    ErrorKind.TIMEOUT: 504,
}


# --- requests ------------------------------------------------------------------------------


def decode_request(raw: bytes) -> ChatRequest:
    """A Messages request body → the model. Raises MalformedRequest or Unsupported."""
    fail = MalformedRequest
    body = load_object(raw, fail, "the request body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise fail("'model' must be a non-empty string")
    messages = []
    for position, item in enumerate(as_list(body.get("messages"), fail, "messages")):
        where = f"messages[{position}]"
        message = as_object(item, fail, where)
        role = one_of(
            as_str(message.get("role"), fail, f"{where}.role"),
            {"user": Role.USER, "assistant": Role.ASSISTANT},
            fail,
            f"{where}.role",
        )
        messages.append(Message(role, _parts(message.get("content"), f"{where}.content", fail)))
    tool_choice = body.get("tool_choice")
    fields = {k: v for k, v in body.items() if k not in _MODELLED}
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        system=_system(body.get("system")),
        tools=tuple(
            _tool(t, i) for i, t in enumerate(as_list(body.get("tools", []), fail, "tools"))
        ),
        tool_choice=None if tool_choice is None else _tool_choice(tool_choice),
        max_tokens=opt_int(body.get("max_tokens"), fail, "max_tokens"),
        temperature=opt_number(body.get("temperature"), fail, "temperature"),
        top_p=opt_number(body.get("top_p"), fail, "top_p"),
        stop=tuple(
            as_str(s, fail, "stop_sequences[]")
            for s in as_list(_none_empty(body.get("stop_sequences")), fail, "stop_sequences")
        ),
        stream=opt_bool(body.get("stream"), fail, "stream") or False,
        extras=Extras(
            schema=SCHEMA, fields=fields, essential=tuple(k for k in fields if k not in _TAGS)
        ),
    )


def _system(system: object) -> tuple[str, ...]:
    if system is None:
        return ()
    if isinstance(system, str):
        return (system,)
    texts = []
    for position, item in enumerate(as_list(system, MalformedRequest, "system")):
        block = as_object(item, MalformedRequest, f"system[{position}]")
        if block.get("type") != "text":
            raise MalformedRequest(f"'system[{position}]' must be a text block")
        # `cache_control` is a cost hint, not part of the prompt; a translation goes without it.
        texts.append(as_str(block.get("text"), MalformedRequest, f"system[{position}].text"))
    return tuple(texts)


def _parts(content: object, where: str, fail: Fail) -> tuple[Part, ...]:
    if isinstance(content, str):
        return (Text(content),)
    parts: list[Part] = []
    for position, item in enumerate(as_list(content, fail, where)):
        at = f"{where}[{position}]"
        block = as_object(item, fail, at)
        kind = block.get("type")
        if kind == "text":
            parts.append(Text(as_str(block.get("text"), fail, f"{at}.text")))
        elif kind == "image":
            parts.append(_image(as_object(block.get("source"), fail, f"{at}.source"), at, fail))
        elif kind == "tool_use":
            parts.append(_tool_use(block, at, fail))
        elif kind == "tool_result":
            inner = block.get("content", "")
            results = _parts(inner, f"{at}.content", fail)
            if not all(isinstance(part, Text | Image) for part in results):
                raise fail(f"'{at}.content' may hold text and images only")
            parts.append(
                ToolResult(
                    tool_call_id=as_str(block.get("tool_use_id"), fail, f"{at}.tool_use_id"),
                    content=tuple(p for p in results if isinstance(p, Text | Image)),
                    is_error=opt_bool(block.get("is_error"), fail, f"{at}.is_error") or False,
                )
            )
        else:
            raise Unsupported(
                f"the content block type {quoted(str(kind))} at '{at}' cannot be translated"
            )
    return tuple(parts)


def _image(source: dict[str, Any], at: str, fail: Fail) -> Image:
    kind = source.get("type")
    if kind == "base64":
        media_type = as_str(source.get("media_type"), fail, f"{at}.source.media_type")
        data = as_str(source.get("data"), fail, f"{at}.source.data")
        return Image(url=f"data:{media_type};base64,{data}")
    if kind == "url":
        return Image(url=as_str(source.get("url"), fail, f"{at}.source.url"))
    raise Unsupported(f"the image source type {quoted(str(kind))} at '{at}' cannot be translated")


def _tool_use(block: dict[str, Any], at: str, fail: Fail) -> ToolCall:
    return ToolCall(
        id=as_str(block.get("id"), fail, f"{at}.id"),
        name=as_str(block.get("name"), fail, f"{at}.name"),
        arguments=dumps(as_object(block.get("input"), fail, f"{at}.input")).decode(),
    )


def _tool(item: object, position: int) -> Tool:
    fail = MalformedRequest
    at = f"tools[{position}]"
    tool = as_object(item, fail, at)
    # Client tools have no type or "custom"; server tools (web search, bash…) run at Anthropic.
    if tool.get("type", "custom") != "custom":
        raise Unsupported(
            f"the tool type {quoted(str(tool.get('type')))} at '{at}' cannot be translated"
        )
    return Tool(
        name=as_str(tool.get("name"), fail, f"{at}.name"),
        description=opt_str(tool.get("description"), fail, f"{at}.description"),
        parameters=as_object(tool.get("input_schema"), fail, f"{at}.input_schema"),
    )


def _tool_choice(value: object) -> ToolChoice:
    fail = MalformedRequest
    choice = as_object(value, fail, "tool_choice")
    mode = one_of(
        as_str(choice.get("type"), fail, "tool_choice.type"),
        {
            "auto": ToolChoiceMode.AUTO,
            "any": ToolChoiceMode.ANY,
            "tool": ToolChoiceMode.TOOL,
            "none": ToolChoiceMode.NONE,
        },
        fail,
        "tool_choice.type",
    )
    name = (
        as_str(choice.get("name"), fail, "tool_choice.name")
        if mode is ToolChoiceMode.TOOL
        else None
    )
    disable = opt_bool(
        choice.get("disable_parallel_tool_use"), fail, "tool_choice.disable_parallel_tool_use"
    )
    return ToolChoice(mode, name, None if disable is None else not disable)


def encode_request(request: ChatRequest, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> bytes:
    """The model → a Messages request body. Raises Unsupported for what Messages cannot say."""
    request.extras.refuse_in(SCHEMA, NAME)
    if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
        raise Unsupported(f"{NAME} accepts a temperature from 0 to 1, not {request.temperature}")
    messages = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            raise Unsupported(f"{NAME} takes system prompts only before the conversation")
        messages.append({"role": message.role.value, "content": _wire_parts(message)})
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else default_max_tokens,
        "messages": messages,
    }
    if len(request.system) == 1:
        body["system"] = request.system[0]
    elif request.system:
        body["system"] = [{"type": "text", "text": text} for text in request.system]
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.stream:
        body["stream"] = True
    if request.tools:
        body["tools"] = [
            {
                "name": tool.name,
                **({"description": tool.description} if tool.description is not None else {}),
                "input_schema": tool.parameters,
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        wire: dict[str, Any] = {"type": choice.mode.value}
        if choice.mode is ToolChoiceMode.TOOL:
            wire["name"] = choice.name
        if choice.parallel is False:
            if choice.mode is ToolChoiceMode.NONE:
                raise Unsupported(f"{NAME} cannot disable parallel calls with tool_choice none")
            wire["disable_parallel_tool_use"] = True
        body["tool_choice"] = wire
    if request.extras.schema == SCHEMA:
        for key, value in request.extras.fields.items():
            body.setdefault(key, value)
    return dumps(body)


def _wire_parts(message: Message) -> str | list[dict[str, Any]]:
    if len(message.content) == 1 and isinstance(text := message.content[0], Text):
        return text.text
    return [_wire_part(part) for part in message.content]


def _wire_part(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        return {"type": "image", "source": _wire_image(part)}
    if isinstance(part, ToolCall):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": _input_of(part)}
    result: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": part.tool_call_id,
        "content": [_wire_part(p) for p in part.content],
    }
    if part.is_error:
        result["is_error"] = True
    return result


def _wire_image(image: Image) -> dict[str, Any]:
    if not image.url.startswith("data:"):
        return {"type": "url", "url": image.url}
    header, _, data = image.url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    if encoding != "base64" or not media_type:
        raise Unsupported(f"{NAME} takes inline images as base64 data URLs only")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise Unsupported("an inline image is not valid base64") from None
    return {"type": "base64", "media_type": media_type, "data": data}


def _input_of(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Messages wants (empty text is no input)."""
    if not call.arguments:
        return {}
    try:
        value = orjson.loads(call.arguments)
    except orjson.JSONDecodeError:
        raise Unsupported(
            f"the arguments of tool call {quoted(call.id)} are not JSON; {NAME} needs an object"
        ) from None
    if not isinstance(value, dict):
        raise Unsupported(f"the arguments of tool call {quoted(call.id)} are not a JSON object")
    return value


# --- responses -----------------------------------------------------------------------------


def decode_response(raw: bytes) -> ChatResponse:
    """A Messages `message` object → the model. Raises MalformedResponse or Unsupported."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    content: list[Text | ToolCall] = []
    for position, item in enumerate(as_list(body.get("content"), fail, "content")):
        at = f"content[{position}]"
        block = as_object(item, fail, at)
        kind = block.get("type")
        if kind == "text":
            content.append(Text(as_str(block.get("text"), fail, f"{at}.text")))
        elif kind == "tool_use":
            content.append(_tool_use(block, at, fail))
        else:
            raise Unsupported(f"the content block type {quoted(str(kind))} cannot be translated")
    return ChatResponse(
        id=as_str(body.get("id"), fail, "id"),
        model=as_str(body.get("model"), fail, "model"),
        content=tuple(content),
        stop_reason=_stop_reason(body.get("stop_reason")),
        usage=usage_of(body.get("usage")) if body.get("usage") is not None else None,
        stop_sequence=opt_str(body.get("stop_sequence"), fail, "stop_sequence"),
    )


def _stop_reason(value: object) -> StopReason | None:
    reason = opt_str(value, MalformedResponse, "stop_reason")
    if reason is None:
        return None
    stop: StopReason = one_of(reason, _STOP_REASONS, MalformedResponse, "stop_reason")
    return stop


def usage_of(value: object) -> Usage:
    """Anthropic's `usage` → Usage. Anthropic's `input_tokens` excludes cache reads and writes
    ("Total input tokens … is the summation of input_tokens, cache_creation_input_tokens, and
    cache_read_input_tokens", SDK `Usage` docs); the model's input counts them all."""
    fail = MalformedResponse
    usage = as_object(value, fail, "usage")
    cache_read = count(usage.get("cache_read_input_tokens"), fail, "usage.cache_read_input_tokens")
    cache_write = count(
        usage.get("cache_creation_input_tokens"), fail, "usage.cache_creation_input_tokens"
    )
    return Usage(
        input_tokens=count(usage.get("input_tokens"), fail, "usage.input_tokens")
        + cache_read
        + cache_write,
        output_tokens=count(usage.get("output_tokens"), fail, "usage.output_tokens"),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
    )


def _wire_usage(usage: Usage) -> dict[str, Any]:
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_input_tokens
    return {
        "input_tokens": max(uncached, 0),
        "cache_creation_input_tokens": usage.cache_write_input_tokens,
        "cache_read_input_tokens": usage.cached_input_tokens,
        "output_tokens": usage.output_tokens,
    }


def encode_response(response: ChatResponse) -> bytes:
    """The model → a Messages `message` object."""
    reason = response.stop_reason
    return dumps(
        {
            "id": response.id,
            "type": "message",
            "role": "assistant",
            "model": response.model,
            "content": [_wire_part(part) for part in response.content],
            "stop_reason": None if reason is None else _WIRE_STOP_REASONS[reason],
            "stop_sequence": response.stop_sequence,
            "usage": _wire_usage(response.usage or Usage()),
        }
    )


# --- streams -------------------------------------------------------------------------------


class StreamDecoder:
    """Messages SSE bytes, cut anywhere → model events, incrementally.

    Each event's `data` is parsed once (its `type` repeats the `event:` line). Block kinds the
    model does not carry (thinking…) only come when the request enabled them, which a
    translation refuses; they are skipped, and so are unknown event types, as Anthropic asks
    of clients ("Other events": new event types may be added).
    """

    __slots__ = ("_events", "_skipped")

    def __init__(self) -> None:
        self._events = SseSplitter()
        self._skipped: set[int] = set()

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in self._events.feed(chunk):
            self._decode(event, out)
        return out

    def finish(self) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        tail = self._events.flush()
        if tail.strip():
            self._decode(tail, out)
        return out

    def _decode(self, event: bytes, out: list[StreamEvent]) -> None:
        data = event_data(event)
        if data is None:
            return
        fail = MalformedResponse
        body = load_object(data, fail, "a stream event")
        kind = body.get("type")
        if kind == "content_block_delta":
            index = self._index(body)
            delta = as_object(body.get("delta"), fail, "delta")
            delta_kind = delta.get("type")
            if index in self._skipped:
                return
            if delta_kind == "text_delta":
                out.append(TextDelta(index, as_str(delta.get("text"), fail, "delta.text")))
            elif delta_kind == "input_json_delta":
                partial = as_str(delta.get("partial_json"), fail, "delta.partial_json")
                # Anthropic opens with an empty piece; it says nothing.
                if partial:
                    out.append(ToolCallDelta(index, partial))
        elif kind == "content_block_start":
            index = self._index(body)
            block = as_object(body.get("content_block"), fail, "content_block")
            block_kind = block.get("type")
            if block_kind == "text":
                text = as_str(block.get("text", ""), fail, "content_block.text")
                if text:
                    out.append(TextDelta(index, text))
            elif block_kind == "tool_use":
                out.append(
                    ToolCallStart(
                        index,
                        as_str(block.get("id"), fail, "content_block.id"),
                        as_str(block.get("name"), fail, "content_block.name"),
                    )
                )
            else:
                self._skipped.add(index)
        elif kind == "content_block_stop":
            index = self._index(body)
            if index not in self._skipped:
                out.append(BlockStop(index))
        elif kind == "message_start":
            message = as_object(body.get("message"), fail, "message")
            usage = message.get("usage")
            out.append(
                MessageStart(
                    id=as_str(message.get("id"), fail, "message.id"),
                    model=as_str(message.get("model"), fail, "message.model"),
                    usage=None if usage is None else usage_of(usage),
                )
            )
        elif kind == "message_delta":
            delta = as_object(body.get("delta"), fail, "delta")
            usage = body.get("usage")
            out.append(
                MessageDelta(
                    stop_reason=_stop_reason(delta.get("stop_reason")),
                    stop_sequence=opt_str(delta.get("stop_sequence"), fail, "delta.stop_sequence"),
                    usage=None if usage is None else usage_of(usage),
                )
            )
        elif kind == "message_stop":
            out.append(MessageStop())
        elif kind == "error":
            info = _error_info(None, body, None)
            out.append(StreamError(info))

    @staticmethod
    def _index(body: dict[str, Any]) -> int:
        index = opt_int(body.get("index"), MalformedResponse, "index")
        if index is None:
            raise MalformedResponse("a content block event has no 'index'")
        return index


class StreamEncoder:
    """Model events → Messages SSE bytes, in Anthropic's order: `message_start`, per block
    `content_block_start` / `content_block_delta`… / `content_block_stop` (a `ping` after the
    first start, as Anthropic sends one), `message_delta` with the stop reason and the final
    usage, `message_stop`.

    `message_delta` is held until `message_stop`: a provider reporting usage after its stop
    reason (OpenAI's final usage chunk) still has it in `message_delta`, where clients read it.
    Blocks are renumbered from 0 in the order they start.
    """

    __slots__ = ("_blocks", "_delta", "_open", "_pinged", "_usage")

    def __init__(self) -> None:
        self._blocks: dict[int, int] = {}
        self._open: int | None = None
        self._pinged = False
        self._delta: MessageDelta | None = None
        self._usage: Usage | None = None

    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The SSE bytes of several events, in order."""
        return b"".join(self.encode_one(event) for event in events)

    def encode_one(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            start = b""
            if event.index not in self._blocks:
                start = self._start(event.index, {"type": "text", "text": ""})
            delta = {"type": "text_delta", "text": event.text}
            return start + self._block_delta(event.index, delta)
        if isinstance(event, ToolCallDelta):
            delta = {"type": "input_json_delta", "partial_json": event.partial_json}
            return self._block_delta(event.index, delta)
        if isinstance(event, ToolCallStart):
            block = {"type": "tool_use", "id": event.id, "name": event.name, "input": {}}
            return self._start(event.index, block)
        if isinstance(event, BlockStop):
            return self._stop(event.index)
        if isinstance(event, MessageStart):
            self._usage = merge_usage(self._usage, event.usage)
            message: dict[str, Any] = {
                "id": event.id,
                "type": "message",
                "role": "assistant",
                "model": event.model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": _wire_usage(self._usage or Usage()),
            }
            return _sse("message_start", {"type": "message_start", "message": message})
        if isinstance(event, MessageDelta):
            self._delta = event
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, UsageUpdate):
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageStop):
            closing = self._stop(self._open) if self._open is not None else b""
            held = self._delta or MessageDelta(stop_reason=None)
            reason = held.stop_reason
            message_delta = {
                "type": "message_delta",
                "delta": {
                    "stop_reason": None if reason is None else _WIRE_STOP_REASONS[reason],
                    "stop_sequence": held.stop_sequence,
                },
                "usage": _wire_usage(self._usage or Usage()),
            }
            return (
                closing
                + _sse("message_delta", message_delta)
                + _sse("message_stop", {"type": "message_stop"})
            )
        return _sse("error", _error_body(event.error))

    def _start(self, index: int, block: dict[str, Any]) -> bytes:
        closing = self._stop(self._open) if self._open is not None else b""
        wire_index = self._blocks[index] = len(self._blocks)
        self._open = index
        start = {"type": "content_block_start", "index": wire_index, "content_block": block}
        out = closing + _sse("content_block_start", start)
        if not self._pinged:
            self._pinged = True
            out += _sse("ping", {"type": "ping"})
        return out

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        body = {"type": "content_block_delta", "index": self._blocks[index], "delta": delta}
        return _sse("content_block_delta", body)

    def _stop(self, index: int) -> bytes:
        if index != self._open:
            return b""
        self._open = None
        body = {"type": "content_block_stop", "index": self._blocks[index]}
        return _sse("content_block_stop", body)


def _sse(name: str, body: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + dumps(body) + b"\n\n"


# --- errors --------------------------------------------------------------------------------


def decode_error(status: int, raw: bytes, retry_after: str | None = None) -> ErrorInfo:
    """An error answer (`{"type":"error","error":{...}}`) → ErrorInfo; a body of another shape
    still gives an ErrorInfo from the status alone."""
    try:
        body = load_object(raw, MalformedResponse, "the error body")
    except MalformedResponse:
        body = {}
    return _error_info(status, body, retry_after)


def _error_info(status: int | None, body: dict[str, Any], retry_after: str | None) -> ErrorInfo:
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    kind_name = error.get("type")
    message = error.get("message")
    kind = _ERROR_KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if status is None:
        # An error event inside a 200 stream: the status its type would have had.
        status = _STATUS_OF_KIND[kind] if kind is not None else 500
    return ErrorInfo(
        status=status,
        kind=kind or kind_of_status(status),
        message=message if isinstance(message, str) else f"the provider answered {status}",
        retry_after_s=retry_after_seconds(retry_after),
        provider_type=kind_name if isinstance(kind_name, str) else None,
    )


def _error_body(error: ErrorInfo) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES[error.kind], "message": error.message}}


def encode_error(error: ErrorInfo) -> bytes:
    """ErrorInfo → an Anthropic error body (send it with `error.status`)."""
    return dumps(_error_body(error))


def _none_empty(value: object) -> object:
    return [] if value is None else value
