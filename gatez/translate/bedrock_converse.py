"""AWS Bedrock Runtime Converse / ConverseStream ⇄ the shared model: requests, responses,
event-stream frames, error bodies.

Field names and shapes follow the Bedrock API reference ("Converse", "ConverseStream",
"ContentBlock", "ConverseStreamOutput", "TokenUsage", "Errors").

The model id is not in Converse bodies: it is the `{modelId}` of the URL path
(`/model/{modelId}/converse`, or `/converse-stream` for a stream), and the response does not repeat
it. So `decode_request` takes it (and whether the path was the stream one) as arguments, and
`path_of(request)` gives the path to send an encoded request to; `decode_response` and
`StreamDecoder` take the model id (and the `x-amzn-requestid` header as the response id) from the
caller. Error types travel in the `x-amzn-ErrorType` header: `decode_error` takes it, and
`error_type(error)` gives the one to send with `encode_error`'s body.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Iterable, Mapping
from typing import Any, Final
from urllib.parse import quote

import orjson

from gatez.errors import quoted
from gatez.translate._wire import (
    Fail,
    as_list,
    as_object,
    as_str,
    count,
    dumps,
    load_object,
    one_of,
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

SCHEMA: Final = "bedrock_converse"
NAME: Final = "Bedrock Converse"

# Converse's temperature range is 0 to 1 (InferenceConfiguration).
MAX_TEMPERATURE: Final = 1.0

_MODELLED: Final = frozenset({"messages", "system", "inferenceConfig", "toolConfig"})
# Fields that only tag or route the call; the others (guardrailConfig,
# additionalModelRequestFields, promptVariables…) change the answer.
_TAGS: Final = frozenset({"requestMetadata", "performanceConfig", "serviceTier"})
_INFERENCE_FIELDS: Final = frozenset({"maxTokens", "temperature", "topP", "stopSequences"})

_STOP_REASONS: Final = {
    "end_turn": StopReason.END_TURN,
    "tool_use": StopReason.TOOL_USE,
    "max_tokens": StopReason.MAX_TOKENS,
    "stop_sequence": StopReason.STOP_SEQUENCE,
    "guardrail_intervened": StopReason.CONTENT_FILTER,
    "content_filtered": StopReason.CONTENT_FILTER,
    "model_context_window_exceeded": StopReason.MAX_TOKENS,
    "malformed_model_output": StopReason.ERROR,
    "malformed_tool_use": StopReason.ERROR,
}
_WIRE_STOP_REASONS: Final = {
    StopReason.END_TURN: "end_turn",
    StopReason.TOOL_USE: "tool_use",
    StopReason.MAX_TOKENS: "max_tokens",
    StopReason.STOP_SEQUENCE: "stop_sequence",
    StopReason.CONTENT_FILTER: "content_filtered",
    StopReason.ERROR: "malformed_model_output",
}
# ImageBlock.format's valid values, and the media types they stand for.
_IMAGE_FORMATS: Final = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
}
_FORMAT_OF_MEDIA_TYPE: Final = {
    **{media: name for name, media in _IMAGE_FORMATS.items()},
    "image/jpg": "jpeg",
}

# Converse's error types (API reference, "Errors") with their statuses.
_ERROR_KINDS: Final = {
    "AccessDeniedException": ErrorKind.PERMISSION,
    "UnrecognizedClientException": ErrorKind.AUTHENTICATION,
    "ValidationException": ErrorKind.INVALID_REQUEST,
    "ResourceNotFoundException": ErrorKind.NOT_FOUND,
    "ThrottlingException": ErrorKind.RATE_LIMIT,
    "ServiceQuotaExceededException": ErrorKind.RATE_LIMIT,
    "ModelNotReadyException": ErrorKind.OVERLOADED,
    "ServiceUnavailableException": ErrorKind.OVERLOADED,
    "InternalServerException": ErrorKind.SERVER,
    "ModelErrorException": ErrorKind.SERVER,
    "ModelStreamErrorException": ErrorKind.SERVER,
    "ModelTimeoutException": ErrorKind.TIMEOUT,
}
_ERROR_TYPES: Final = {
    ErrorKind.INVALID_REQUEST: "ValidationException",
    ErrorKind.AUTHENTICATION: "UnrecognizedClientException",
    ErrorKind.PERMISSION: "AccessDeniedException",
    ErrorKind.NOT_FOUND: "ResourceNotFoundException",
    # Converse has no "too large" error; an oversized input is a validation error.
    ErrorKind.REQUEST_TOO_LARGE: "ValidationException",
    ErrorKind.RATE_LIMIT: "ThrottlingException",
    ErrorKind.SERVER: "InternalServerException",
    ErrorKind.OVERLOADED: "ServiceUnavailableException",
    ErrorKind.TIMEOUT: "ModelTimeoutException",
}
_STATUS_OF_TYPE: Final = {
    "AccessDeniedException": 403,
    "UnrecognizedClientException": 403,
    "ValidationException": 400,
    "ResourceNotFoundException": 404,
    "ThrottlingException": 429,
    "ServiceQuotaExceededException": 400,
    "ModelNotReadyException": 429,
    "ServiceUnavailableException": 503,
    "InternalServerException": 500,
    "ModelErrorException": 424,
    "ModelStreamErrorException": 424,
    "ModelTimeoutException": 408,
}


# --- requests ------------------------------------------------------------------------------


def decode_request(raw: bytes, *, model_id: str, stream: bool = False) -> ChatRequest:
    """A Converse request body → the model. `model_id` is the path's `{modelId}` (URL-decoded)
    and `stream` says the path was `/converse-stream`. Raises MalformedRequest or Unsupported."""
    fail = MalformedRequest
    if not model_id:
        raise fail("the model id in the path must not be empty")
    body = load_object(raw, fail, "the request body")
    messages = []
    for position, item in enumerate(as_list(body.get("messages", []), fail, "messages")):
        where = f"messages[{position}]"
        message = as_object(item, fail, where)
        role = one_of(
            as_str(message.get("role"), fail, f"{where}.role"),
            {"user": Role.USER, "assistant": Role.ASSISTANT},
            fail,
            f"{where}.role",
        )
        messages.append(Message(role, _parts(message.get("content"), f"{where}.content", fail)))
    config = as_object(body.get("inferenceConfig", {}), fail, "inferenceConfig")
    unknown = sorted(set(config) - _INFERENCE_FIELDS)
    if unknown:
        raise fail(f"'inferenceConfig' has an unknown field {quoted(unknown[0])}")
    tools, tool_choice = _tool_config(body.get("toolConfig"))
    fields = {k: v for k, v in body.items() if k not in _MODELLED}
    return ChatRequest(
        model=model_id,
        messages=tuple(messages),
        system=_system(body.get("system")),
        tools=tools,
        tool_choice=tool_choice,
        max_tokens=opt_int(config.get("maxTokens"), fail, "inferenceConfig.maxTokens"),
        temperature=opt_number(config.get("temperature"), fail, "inferenceConfig.temperature"),
        top_p=opt_number(config.get("topP"), fail, "inferenceConfig.topP"),
        stop=tuple(
            as_str(s, fail, "inferenceConfig.stopSequences[]")
            for s in as_list(config.get("stopSequences", []), fail, "inferenceConfig.stopSequences")
        ),
        stream=stream,
        extras=Extras(
            schema=SCHEMA, fields=fields, essential=tuple(k for k in fields if k not in _TAGS)
        ),
    )


def _system(system: object) -> tuple[str, ...]:
    texts = []
    for position, item in enumerate(as_list(system or [], MalformedRequest, "system")):
        at = f"system[{position}]"
        block = as_object(item, MalformedRequest, at)
        if "cachePoint" in block:
            # A cost hint, not part of the prompt; a translation goes without it.
            continue
        if "text" not in block:
            raise Unsupported(f"the system block at '{at}' cannot be translated (text only)")
        texts.append(as_str(block["text"], MalformedRequest, f"{at}.text"))
    return tuple(texts)


def _parts(content: object, where: str, fail: Fail) -> tuple[Part, ...]:
    parts: list[Part] = []
    for position, item in enumerate(as_list(content, fail, where)):
        at = f"{where}[{position}]"
        block = as_object(item, fail, at)
        if "text" in block:
            parts.append(Text(as_str(block["text"], fail, f"{at}.text")))
        elif "image" in block:
            parts.append(_image(as_object(block["image"], fail, f"{at}.image"), at, fail))
        elif "toolUse" in block:
            parts.append(_tool_use(as_object(block["toolUse"], fail, f"{at}.toolUse"), at, fail))
        elif "toolResult" in block:
            parts.append(_tool_result(as_object(block["toolResult"], fail, at), at, fail))
        elif "cachePoint" in block:
            continue
        else:
            kind = next(iter(block), "")
            raise Unsupported(
                f"the content block type {quoted(str(kind))} at '{at}' cannot be translated"
            )
    return tuple(parts)


def _image(image: dict[str, Any], at: str, fail: Fail) -> Image:
    name = as_str(image.get("format"), fail, f"{at}.image.format")
    media_type = one_of(name, _IMAGE_FORMATS, fail, f"{at}.image.format")
    source = as_object(image.get("source"), fail, f"{at}.image.source")
    if "bytes" not in source:
        raise Unsupported(f"the image at '{at}' is not inline bytes and cannot be translated")
    data = as_str(source["bytes"], fail, f"{at}.image.source.bytes")
    return Image(url=f"data:{media_type};base64,{data}")


def _tool_use(block: dict[str, Any], at: str, fail: Fail) -> ToolCall:
    return ToolCall(
        id=as_str(block.get("toolUseId"), fail, f"{at}.toolUse.toolUseId"),
        name=as_str(block.get("name"), fail, f"{at}.toolUse.name"),
        arguments=dumps(as_object(block.get("input"), fail, f"{at}.toolUse.input")).decode(),
    )


def _tool_result(block: dict[str, Any], at: str, fail: Fail) -> ToolResult:
    content: list[Text | Image] = []
    for position, item in enumerate(as_list(block.get("content"), fail, f"{at}.content")):
        where = f"{at}.content[{position}]"
        inner = as_object(item, fail, where)
        if "text" in inner:
            content.append(Text(as_str(inner["text"], fail, f"{where}.text")))
        elif "json" in inner:
            # A JSON result reaches a text-only tool result as its JSON text.
            content.append(Text(dumps(inner["json"]).decode()))
        elif "image" in inner:
            content.append(_image(as_object(inner["image"], fail, f"{where}.image"), where, fail))
        else:
            kind = next(iter(inner), "")
            raise Unsupported(
                f"the tool result block type {quoted(str(kind))} at '{where}' cannot be translated"
            )
    status = opt_str(block.get("status"), fail, f"{at}.status")
    if status not in (None, "success", "error"):
        raise fail(f"'{at}.status' has an unknown value {quoted(str(status))}")
    return ToolResult(
        tool_call_id=as_str(block.get("toolUseId"), fail, f"{at}.toolUseId"),
        content=tuple(content),
        is_error=status == "error",
    )


def _tool_config(value: object) -> tuple[tuple[Tool, ...], ToolChoice | None]:
    fail = MalformedRequest
    if value is None:
        return (), None
    config = as_object(value, fail, "toolConfig")
    tools = []
    for position, item in enumerate(as_list(config.get("tools"), fail, "toolConfig.tools")):
        at = f"toolConfig.tools[{position}]"
        tool = as_object(item, fail, at)
        if "cachePoint" in tool:
            continue
        if "toolSpec" not in tool:
            kind = next(iter(tool), "")
            raise Unsupported(f"the tool type {quoted(str(kind))} at '{at}' cannot be translated")
        spec = as_object(tool["toolSpec"], fail, f"{at}.toolSpec")
        schema = as_object(spec.get("inputSchema"), fail, f"{at}.toolSpec.inputSchema")
        tools.append(
            Tool(
                name=as_str(spec.get("name"), fail, f"{at}.toolSpec.name"),
                description=opt_str(spec.get("description"), fail, f"{at}.toolSpec.description"),
                parameters=as_object(schema.get("json"), fail, f"{at}.toolSpec.inputSchema.json"),
            )
        )
    choice = config.get("toolChoice")
    if choice is None:
        return tuple(tools), None
    choice = as_object(choice, fail, "toolConfig.toolChoice")
    if "auto" in choice:
        return tuple(tools), ToolChoice(ToolChoiceMode.AUTO)
    if "any" in choice:
        return tuple(tools), ToolChoice(ToolChoiceMode.ANY)
    if "tool" in choice:
        named = as_object(choice["tool"], fail, "toolConfig.toolChoice.tool")
        name = as_str(named.get("name"), fail, "toolConfig.toolChoice.tool.name")
        return tuple(tools), ToolChoice(ToolChoiceMode.TOOL, name)
    raise fail("'toolConfig.toolChoice' must hold one of auto, any or tool")


def path_of(request: ChatRequest) -> str:
    """The URL path an encoded request goes to: the model id is part of it."""
    operation = "converse-stream" if request.stream else "converse"
    return f"/model/{quote(request.model, safe='')}/{operation}"


def encode_request(request: ChatRequest) -> bytes:
    """The model → a Converse request body (send it to `path_of(request)`). Raises Unsupported
    for what Converse cannot say."""
    request.extras.refuse_in(SCHEMA, NAME)
    if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
        raise Unsupported(f"{NAME} accepts a temperature from 0 to 1, not {request.temperature}")
    messages = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            raise Unsupported(f"{NAME} takes system prompts only before the conversation")
        messages.append(
            {"role": message.role.value, "content": [_wire_part(p) for p in message.content]}
        )
    body: dict[str, Any] = {"messages": messages}
    if request.system:
        body["system"] = [{"text": text} for text in request.system]
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if config:
        body["inferenceConfig"] = config
    tool_config = _wire_tool_config(request)
    if tool_config is not None:
        body["toolConfig"] = tool_config
    if request.extras.schema == SCHEMA:
        for key, value in request.extras.fields.items():
            body.setdefault(key, value)
    return dumps(body)


def _wire_tool_config(request: ChatRequest) -> dict[str, Any] | None:
    choice = request.tool_choice
    if choice is not None and choice.mode is ToolChoiceMode.NONE:
        raise Unsupported(f"{NAME} cannot forbid tool calls (no tool_choice none)")
    if choice is not None and choice.parallel is False:
        raise Unsupported(f"{NAME} cannot disable parallel tool calls")
    if not request.tools:
        if choice is not None and choice.mode is not ToolChoiceMode.AUTO:
            raise Unsupported(f"{NAME} needs tools for a tool_choice other than auto")
        return None
    config: dict[str, Any] = {
        "tools": [
            {
                "toolSpec": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description is not None else {}),
                    "inputSchema": {"json": tool.parameters},
                }
            }
            for tool in request.tools
        ]
    }
    if choice is not None:
        if choice.mode is ToolChoiceMode.TOOL:
            config["toolChoice"] = {"tool": {"name": choice.name}}
        else:
            config["toolChoice"] = {choice.mode.value: {}}
    return config


def _wire_part(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"text": part.text}
    if isinstance(part, Image):
        return {"image": _wire_image(part)}
    if isinstance(part, ToolCall):
        return {"toolUse": {"toolUseId": part.id, "name": part.name, "input": _input_of(part)}}
    result: dict[str, Any] = {
        "toolUseId": part.tool_call_id,
        "content": [_wire_part(p) for p in part.content],
    }
    if part.is_error:
        result["status"] = "error"
    return {"toolResult": result}


def _wire_image(image: Image) -> dict[str, Any]:
    if not image.url.startswith("data:"):
        raise Unsupported(f"{NAME} takes images as inline bytes only, not by URL")
    header, _, data = image.url[5:].partition(",")
    media_type, _, encoding = header.partition(";")
    image_format = _FORMAT_OF_MEDIA_TYPE.get(media_type)
    if encoding != "base64" or image_format is None:
        raise Unsupported(f"{NAME} takes png, jpeg, gif or webp images as base64 data only")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise Unsupported("an inline image is not valid base64") from None
    return {"format": image_format, "source": {"bytes": data}}


def _input_of(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Converse wants (empty text is no input)."""
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


def decode_response(raw: bytes, *, model_id: str, request_id: str = "") -> ChatResponse:
    """A Converse response body → the model. The body names neither the model nor the call:
    `model_id` is the request path's, `request_id` the `x-amzn-requestid` header's.
    Raises MalformedResponse or Unsupported."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    output = as_object(body.get("output"), fail, "output")
    message = as_object(output.get("message"), fail, "output.message")
    content: list[Text | ToolCall] = []
    for position, item in enumerate(
        as_list(message.get("content"), fail, "output.message.content")
    ):
        at = f"output.message.content[{position}]"
        block = as_object(item, fail, at)
        if "text" in block:
            content.append(Text(as_str(block["text"], fail, f"{at}.text")))
        elif "toolUse" in block:
            content.append(_tool_use(as_object(block["toolUse"], fail, f"{at}.toolUse"), at, fail))
        else:
            kind = next(iter(block), "")
            raise Unsupported(f"the content block type {quoted(str(kind))} cannot be translated")
    usage = body.get("usage")
    return ChatResponse(
        id=request_id,
        model=model_id,
        content=tuple(content),
        stop_reason=_stop_reason(body.get("stopReason")),
        usage=None if usage is None else usage_of(usage),
    )


def _stop_reason(value: object) -> StopReason | None:
    reason = opt_str(value, MalformedResponse, "stopReason")
    if reason is None:
        return None
    stop: StopReason = one_of(reason, _STOP_REASONS, MalformedResponse, "stopReason")
    return stop


def usage_of(value: object) -> Usage:
    """Bedrock's `TokenUsage` → Usage. Bedrock's `inputTokens` excludes cache reads and writes
    (`totalTokens` adds them); the model's input counts them all."""
    fail = MalformedResponse
    usage = as_object(value, fail, "usage")
    cache_read = count(usage.get("cacheReadInputTokens"), fail, "usage.cacheReadInputTokens")
    cache_write = count(usage.get("cacheWriteInputTokens"), fail, "usage.cacheWriteInputTokens")
    return Usage(
        input_tokens=count(usage.get("inputTokens"), fail, "usage.inputTokens")
        + cache_read
        + cache_write,
        output_tokens=count(usage.get("outputTokens"), fail, "usage.outputTokens"),
        cached_input_tokens=cache_read,
        cache_write_input_tokens=cache_write,
    )


def _wire_usage(usage: Usage) -> dict[str, Any]:
    uncached = usage.input_tokens - usage.cached_input_tokens - usage.cache_write_input_tokens
    wire: dict[str, Any] = {
        "inputTokens": max(uncached, 0),
        "outputTokens": usage.output_tokens,
        "totalTokens": usage.input_tokens + usage.output_tokens,
    }
    if usage.cached_input_tokens:
        wire["cacheReadInputTokens"] = usage.cached_input_tokens
    if usage.cache_write_input_tokens:
        wire["cacheWriteInputTokens"] = usage.cache_write_input_tokens
    return wire


def encode_response(response: ChatResponse, *, latency_ms: int = 0) -> bytes:
    """The model → a Converse response body. `metrics.latencyMs` is required by the schema;
    the caller passes the call's measured latency."""
    reason = response.stop_reason
    return dumps(
        {
            "output": {
                "message": {
                    "role": "assistant",
                    "content": [_wire_part(part) for part in response.content],
                }
            },
            "stopReason": _WIRE_STOP_REASONS[reason or StopReason.END_TURN],
            "usage": _wire_usage(response.usage or Usage()),
            "metrics": {"latencyMs": latency_ms},
        }
    )


# --- AWS event-stream framing --------------------------------------------------------------
# A message: total length and headers length (uint32 BE), the CRC32 of those 8 bytes, the
# headers, the payload, the CRC32 of everything before it.

_PRELUDE: Final = 12
_MIN_MESSAGE: Final = _PRELUDE + 4
# botocore's limits: payloads up to 16 MiB, headers up to 128 KiB. The buffer never holds more
# than one message beyond them, so a stream cannot make the decoder grow without bound.
MAX_PAYLOAD: Final = 16 * 1024 * 1024
MAX_HEADERS: Final = 128 * 1024
_STRING: Final = 7
# Fixed sizes of the other header value types (0/1 are booleans with no value bytes).
_FIXED_SIZES: Final = {0: 0, 1: 0, 2: 1, 3: 2, 4: 4, 5: 8, 8: 8, 9: 16}


def encode_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message with string headers."""
    encoded = b"".join(
        struct.pack("!B", len(name)) + name + struct.pack("!BH", _STRING, len(value)) + value
        for name, value in ((n.encode(), v.encode()) for n, v in headers.items())
    )
    prelude = struct.pack("!II", _PRELUDE + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack("!I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack("!I", binascii.crc32(message))


class FrameSplitter:
    """Event-stream bytes, cut anywhere → (headers, payload) per whole message, CRCs checked."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[tuple[dict[str, str], bytes]]:
        self._buffer += chunk
        messages = []
        while len(self._buffer) >= _PRELUDE:
            total, headers_length, prelude_crc = struct.unpack_from("!III", self._buffer)
            if binascii.crc32(self._buffer[:8]) != prelude_crc:
                raise MalformedResponse("an event-stream message has a bad prelude CRC")
            if headers_length > MAX_HEADERS:
                raise MalformedResponse("an event-stream message has too large headers")
            if total < _MIN_MESSAGE + headers_length or total > (
                _MIN_MESSAGE + MAX_HEADERS + MAX_PAYLOAD
            ):
                raise MalformedResponse("an event-stream message has an impossible length")
            if len(self._buffer) < total:
                break
            message = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack_from("!I", message, total - 4)
            if binascii.crc32(message[:-4]) != message_crc:
                raise MalformedResponse("an event-stream message has a bad CRC")
            end = _PRELUDE + headers_length
            messages.append((_headers(message[_PRELUDE:end]), message[end:-4]))
        return messages

    def pending(self) -> int:
        """How many bytes wait for the rest of their message."""
        return len(self._buffer)


def _headers(raw: bytes) -> dict[str, str]:
    """The string headers of a message; headers of other types are skipped."""
    headers: dict[str, str] = {}
    at = 0
    try:
        while at < len(raw):
            name_length = raw[at]
            name = raw[at + 1 : at + 1 + name_length].decode()
            at += 1 + name_length
            kind = raw[at]
            at += 1
            if kind in (6, _STRING):
                (length,) = struct.unpack_from("!H", raw, at)
                value = raw[at + 2 : at + 2 + length]
                at += 2 + length
                if kind == _STRING:
                    headers[name] = value.decode()
            elif kind in _FIXED_SIZES:
                at += _FIXED_SIZES[kind]
            else:
                raise MalformedResponse(f"an event-stream header has an unknown type {kind}")
        if at != len(raw):
            raise MalformedResponse("the event-stream headers overrun their length")
    except (IndexError, struct.error, UnicodeDecodeError):
        raise MalformedResponse("an event-stream message has malformed headers") from None
    return headers


# --- streams -------------------------------------------------------------------------------


_STREAM_EVENTS: Final = frozenset(
    {
        "messageStart",
        "contentBlockStart",
        "contentBlockDelta",
        "contentBlockStop",
        "messageStop",
        "metadata",
    }
)


class StreamDecoder:
    """ConverseStream event-stream bytes, cut anywhere → model events, incrementally.

    The stream names neither the model nor the call: `model_id` and `request_id` come from the
    caller (path and `x-amzn-requestid`). Bedrock reports the stop reason (`messageStop`) before
    the usage (`metadata`): `messageStop` becomes a MessageDelta, `metadata` a UsageUpdate and
    then the MessageStop (or `finish` sends it when no metadata came). Exception messages become
    StreamErrors; unknown event types are skipped.
    """

    __slots__ = ("_frames", "_id", "_model", "_stopping", "_tools")

    def __init__(self, *, model_id: str = "", request_id: str = "") -> None:
        self._frames = FrameSplitter()
        self._model = model_id
        self._id = request_id
        self._stopping = False
        self._tools: set[int] = set()

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for headers, payload in self._frames.feed(chunk):
            self._decode(headers, payload, out)
        return out

    def finish(self) -> list[StreamEvent]:
        if self._frames.pending():
            raise MalformedResponse("the event stream ended inside a message")
        if self._stopping:
            self._stopping = False
            return [MessageStop()]
        return []

    def _decode(self, headers: dict[str, str], payload: bytes, out: list[StreamEvent]) -> None:
        fail = MalformedResponse
        message_type = headers.get(":message-type", "event")
        if message_type == "exception":
            name = headers.get(":exception-type", "")
            out.append(StreamError(_stream_error(name, payload)))
            return
        if message_type == "error":
            # A protocol error: `:error-code` and `:error-message` headers, no payload.
            code = headers.get(":error-code", "")
            info = _error_info(None, {"message": headers.get(":error-message")}, code, None)
            out.append(StreamError(info))
            return
        kind = headers.get(":event-type")
        if kind not in _STREAM_EVENTS:
            # New event types may be added; a client skips what it does not know.
            return
        body = load_object(payload, fail, "a stream event")
        if kind == "contentBlockDelta":
            index = self._index(body)
            delta = as_object(body.get("delta"), fail, "delta")
            if "text" in delta:
                text = as_str(delta["text"], fail, "delta.text")
                if text:
                    out.append(TextDelta(index, text))
            elif "toolUse" in delta:
                tool = as_object(delta["toolUse"], fail, "delta.toolUse")
                partial = as_str(tool.get("input"), fail, "delta.toolUse.input")
                if partial:
                    out.append(ToolCallDelta(index, partial))
            # Other deltas (reasoningContent, citation…) come only when the request enabled
            # them, which a translation refuses.
        elif kind == "contentBlockStart":
            index = self._index(body)
            start = as_object(body.get("start"), fail, "start")
            if "toolUse" in start:
                tool = as_object(start["toolUse"], fail, "start.toolUse")
                self._tools.add(index)
                out.append(
                    ToolCallStart(
                        index,
                        as_str(tool.get("toolUseId"), fail, "start.toolUse.toolUseId"),
                        as_str(tool.get("name"), fail, "start.toolUse.name"),
                    )
                )
        elif kind == "contentBlockStop":
            out.append(BlockStop(self._index(body)))
        elif kind == "messageStart":
            out.append(MessageStart(id=self._id, model=self._model))
        elif kind == "messageStop":
            self._stopping = True
            out.append(MessageDelta(stop_reason=_stop_reason(body.get("stopReason"))))
        elif kind == "metadata":
            usage = body.get("usage")
            if usage is not None:
                out.append(UsageUpdate(usage_of(usage)))
            if self._stopping:
                self._stopping = False
                out.append(MessageStop())

    @staticmethod
    def _index(body: dict[str, Any]) -> int:
        index = opt_int(body.get("contentBlockIndex"), MalformedResponse, "contentBlockIndex")
        if index is None:
            raise MalformedResponse("a content block event has no 'contentBlockIndex'")
        return index


class StreamEncoder:
    """Model events → ConverseStream event-stream bytes, in Bedrock's order: `messageStart`,
    per block `contentBlockStart` (tool calls only) / `contentBlockDelta`… /
    `contentBlockStop`, `messageStop` with the stop reason, `metadata` with the usage.

    The stop reason is held until MessageStop, so usage reported after it (OpenAI's final usage
    chunk) still reaches `metadata`. Blocks are renumbered from 0 in the order they start, and
    an open block is stopped when the next starts.
    """

    __slots__ = ("_blocks", "_delta", "_latency_ms", "_open", "_usage")

    def __init__(self, *, latency_ms: int = 0) -> None:
        self._blocks: dict[int, int] = {}
        self._open: int | None = None
        self._delta: MessageDelta | None = None
        self._usage: Usage | None = None
        self._latency_ms = latency_ms

    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The event-stream bytes of several events, in order."""
        return b"".join(self.encode_one(event) for event in events)

    def encode_one(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            start = b"" if event.index in self._blocks else self._start(event.index, None)
            return start + self._block_delta(event.index, {"text": event.text})
        if isinstance(event, ToolCallDelta):
            return self._block_delta(event.index, {"toolUse": {"input": event.partial_json}})
        if isinstance(event, ToolCallStart):
            return self._start(
                event.index, {"toolUse": {"toolUseId": event.id, "name": event.name}}
            )
        if isinstance(event, BlockStop):
            return self._stop(event.index)
        if isinstance(event, MessageStart):
            self._usage = merge_usage(self._usage, event.usage)
            return _event("messageStart", {"role": "assistant"})
        if isinstance(event, MessageDelta):
            self._delta = event
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, UsageUpdate):
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageStop):
            closing = self._stop(self._open) if self._open is not None else b""
            reason = self._delta.stop_reason if self._delta is not None else None
            metadata = {
                "usage": _wire_usage(self._usage or Usage()),
                "metrics": {"latencyMs": self._latency_ms},
            }
            return (
                closing
                + _event(
                    "messageStop", {"stopReason": _WIRE_STOP_REASONS[reason or StopReason.END_TURN]}
                )
                + _event("metadata", metadata)
            )
        return encode_frame(
            {
                ":exception-type": _stream_exception_type(event.error.kind),
                ":content-type": "application/json",
                ":message-type": "exception",
            },
            dumps({"message": event.error.message}),
        )

    def _start(self, index: int, start: dict[str, Any] | None) -> bytes:
        closing = self._stop(self._open) if self._open is not None else b""
        wire_index = self._blocks[index] = len(self._blocks)
        self._open = index
        if start is None:
            # Bedrock starts text blocks with their first delta, not with a contentBlockStart.
            return closing
        return closing + _event(
            "contentBlockStart", {"contentBlockIndex": wire_index, "start": start}
        )

    def _block_delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return _event(
            "contentBlockDelta", {"contentBlockIndex": self._blocks[index], "delta": delta}
        )

    def _stop(self, index: int) -> bytes:
        if index != self._open:
            return b""
        self._open = None
        return _event("contentBlockStop", {"contentBlockIndex": self._blocks[index]})


def _event(name: str, body: dict[str, Any]) -> bytes:
    return encode_frame(
        {":event-type": name, ":content-type": "application/json", ":message-type": "event"},
        dumps(body),
    )


# ConverseStream's exception events (ConverseStreamOutput), by error kind.
_STREAM_EXCEPTIONS: Final = {
    ErrorKind.INVALID_REQUEST: "validationException",
    ErrorKind.REQUEST_TOO_LARGE: "validationException",
    ErrorKind.RATE_LIMIT: "throttlingException",
    ErrorKind.OVERLOADED: "serviceUnavailableException",
}


def _stream_exception_type(kind: ErrorKind) -> str:
    return _STREAM_EXCEPTIONS.get(kind, "internalServerException")


def _stream_error(event_type: str, payload: bytes) -> ErrorInfo:
    try:
        body = load_object(payload, MalformedResponse, "an exception event")
    except MalformedResponse:
        body = {}
    # Exception events are named in camel case (throttlingException); error types are not.
    name = event_type[:1].upper() + event_type[1:]
    return _error_info(None, body, name, None)


# --- errors --------------------------------------------------------------------------------


def decode_error(
    status: int, raw: bytes, retry_after: str | None = None, error_type: str | None = None
) -> ErrorInfo:
    """An error answer → ErrorInfo. The type is the `x-amzn-ErrorType` header (`error_type`,
    e.g. `ThrottlingException:http://internal.amazon.com/…`), else the body's `__type`; the
    message is the body's `message` (or `Message`). A body of another shape still gives an
    ErrorInfo from the status alone."""
    try:
        body = load_object(raw, MalformedResponse, "the error body")
    except MalformedResponse:
        body = {}
    name = error_type or body.get("__type")
    name = name if isinstance(name, str) else ""
    # The header may carry a `:` suffix (a namespace URL); `__type` may carry a `#` prefix.
    name = name.partition(":")[0].rpartition("#")[2]
    return _error_info(status, body, name, retry_after)


def _error_info(
    status: int | None, body: dict[str, Any], name: str, retry_after: str | None
) -> ErrorInfo:
    message = body.get("message", body.get("Message"))
    kind = _ERROR_KINDS.get(name)
    if status is None:
        # An exception event inside a 200 stream: the status its type would have had.
        status = _STATUS_OF_TYPE.get(name, 500)
    return ErrorInfo(
        status=status,
        kind=kind or kind_of_status(status),
        message=message if isinstance(message, str) else f"the provider answered {status}",
        retry_after_s=retry_after_seconds(retry_after),
        provider_type=name or None,
    )


def error_type(error: ErrorInfo) -> str:
    """The `x-amzn-ErrorType` header to send with `encode_error`'s body."""
    return _ERROR_TYPES[error.kind]


def encode_error(error: ErrorInfo) -> bytes:
    """ErrorInfo → a Bedrock error body (send it with `error.status` and the
    `x-amzn-ErrorType: error_type(error)` header)."""
    return dumps({"message": error.message})
