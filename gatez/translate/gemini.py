"""Google Gemini `generateContent` / `streamGenerateContent` (v1beta) ⇄ the shared model.

Field names and shapes follow Google's API reference ("Generating content", "Caching"…, the
`GenerateContentRequest` / `GenerateContentResponse` / `UsageMetadata` types) and the types of
the official `google-genai` SDK.

The model name and the streaming flag are in Gemini's URL, not in its body:
`POST /v1beta/models/{model}:generateContent` or `…:streamGenerateContent?alt=sse`. So
`decode_request(raw, model=…, stream=…)` takes them from the caller (`model_of_path` reads them
from a path), and `encode_request` returns only the body: `path_of(request)` gives the path to
send it to.

Gemini function calls may carry no `id` (older models never send one; responses are matched by
function name). Such a call gets an id beginning with `SYNTHETIC_ID_PREFIX` on decode, so the
other schemas (which need ids) can answer it; encoding back to Gemini leaves those ids out
again, and a `functionResponse` always carries the function's name, looked up from the call it
answers.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import parse_qs, unquote

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
    opt_int,
    opt_number,
    opt_str,
    or_empty,
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

SCHEMA: Final = "gemini"
NAME: Final = "Google Gemini"

API_PREFIX: Final = "/v1beta/models/"
SYNTHETIC_ID_PREFIX: Final = "gemini-call-"

# Top-level request fields the model represents; all others go to `Extras`.
_MODELLED: Final = frozenset(
    {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
)
# Extras that do not change the answer's content: another schema may go without them.
_TAGS: Final = frozenset({"safetySettings"})
# `generationConfig` fields the model represents; the others are kept as extras under the
# name "generationConfig" (a dict), and are essential unless neutral.
_MODELLED_CONFIG: Final = frozenset({"maxOutputTokens", "temperature", "topP", "stopSequences"})
_NEUTRAL_CONFIG: Final[dict[str, object]] = {"candidateCount": 1}

_STOP_REASONS: Final = {
    # Gemini says STOP both for a natural end and for a stop sequence (and for function calls:
    # a candidate holding a functionCall is read as TOOL_USE).
    "STOP": StopReason.END_TURN,
    "MAX_TOKENS": StopReason.MAX_TOKENS,
    "SAFETY": StopReason.CONTENT_FILTER,
    "RECITATION": StopReason.CONTENT_FILTER,
    "LANGUAGE": StopReason.CONTENT_FILTER,
    "BLOCKLIST": StopReason.CONTENT_FILTER,
    "PROHIBITED_CONTENT": StopReason.CONTENT_FILTER,
    "SPII": StopReason.CONTENT_FILTER,
    "IMAGE_SAFETY": StopReason.CONTENT_FILTER,
    "IMAGE_PROHIBITED_CONTENT": StopReason.CONTENT_FILTER,
    "IMAGE_RECITATION": StopReason.CONTENT_FILTER,
    "MODEL_ARMOR": StopReason.CONTENT_FILTER,
}
# Any other finish reason (OTHER, MALFORMED_FUNCTION_CALL, UNEXPECTED_TOOL_CALL, values Google
# adds later…) means the output ended without a proper answer.
_OTHER_STOP: Final = StopReason.ERROR
_FINISH_REASONS: Final = {
    StopReason.END_TURN: "STOP",
    StopReason.STOP_SEQUENCE: "STOP",
    StopReason.TOOL_USE: "STOP",
    StopReason.MAX_TOKENS: "MAX_TOKENS",
    StopReason.CONTENT_FILTER: "SAFETY",
    StopReason.ERROR: "OTHER",
}
# google.rpc status names (Gemini API reference, "Troubleshooting: error codes").
_ERROR_KINDS: Final = {
    "INVALID_ARGUMENT": ErrorKind.INVALID_REQUEST,
    "FAILED_PRECONDITION": ErrorKind.INVALID_REQUEST,
    "OUT_OF_RANGE": ErrorKind.INVALID_REQUEST,
    "UNAUTHENTICATED": ErrorKind.AUTHENTICATION,
    "PERMISSION_DENIED": ErrorKind.PERMISSION,
    "NOT_FOUND": ErrorKind.NOT_FOUND,
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMIT,
    "INTERNAL": ErrorKind.SERVER,
    "UNKNOWN": ErrorKind.SERVER,
    "UNAVAILABLE": ErrorKind.OVERLOADED,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
}
_ERROR_STATUSES: Final = {
    ErrorKind.INVALID_REQUEST: "INVALID_ARGUMENT",
    ErrorKind.AUTHENTICATION: "UNAUTHENTICATED",
    ErrorKind.PERMISSION: "PERMISSION_DENIED",
    ErrorKind.NOT_FOUND: "NOT_FOUND",
    ErrorKind.REQUEST_TOO_LARGE: "INVALID_ARGUMENT",
    ErrorKind.RATE_LIMIT: "RESOURCE_EXHAUSTED",
    ErrorKind.SERVER: "INTERNAL",
    ErrorKind.OVERLOADED: "UNAVAILABLE",
    ErrorKind.TIMEOUT: "DEADLINE_EXCEEDED",
}
_HTTP_OF_KIND: Final = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.AUTHENTICATION: 401,
    ErrorKind.PERMISSION: 403,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.REQUEST_TOO_LARGE: 400,
    ErrorKind.RATE_LIMIT: 429,
    ErrorKind.SERVER: 500,
    ErrorKind.OVERLOADED: 503,
    ErrorKind.TIMEOUT: 504,
}
# Gemini answers a bad API key with 400 INVALID_ARGUMENT; its ErrorInfo reason says what it is.
_AUTH_REASONS: Final = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


# --- paths ---------------------------------------------------------------------------------


def path_of(request: ChatRequest) -> str:
    """The v1beta path a request body from `encode_request` is posted to."""
    if request.stream:
        return f"{API_PREFIX}{request.model}:streamGenerateContent?alt=sse"
    return f"{API_PREFIX}{request.model}:generateContent"


def model_of_path(path: str) -> tuple[str, bool]:
    """`/v1beta/models/{model}:generateContent` or `…:streamGenerateContent?alt=sse` → (model,
    stream). Raises MalformedRequest for another path, Unsupported for a stream without
    `alt=sse` (Gemini's JSON-array stream)."""
    route, _, query = path.partition("?")
    prefix = next((p for p in (API_PREFIX, "/v1/models/") if route.startswith(p)), None)
    if prefix is None:
        raise MalformedRequest("the path is not a Gemini generateContent path")
    model, _, method = unquote(route[len(prefix) :]).rpartition(":")
    if not model or "/" in model:
        raise MalformedRequest("the path names no model")
    if method == "generateContent":
        return model, False
    if method == "streamGenerateContent":
        if parse_qs(query).get("alt") != ["sse"]:
            raise Unsupported("only streamGenerateContent with alt=sse can be translated")
        return model, True
    raise MalformedRequest(f"the method {quoted(method)} is not generateContent")


# --- requests ------------------------------------------------------------------------------


def decode_request(raw: bytes, *, model: str, stream: bool = False) -> ChatRequest:
    """A `GenerateContentRequest` body → the model. `model` and `stream` come from the URL
    (see `model_of_path`). Raises MalformedRequest or Unsupported."""
    fail = MalformedRequest
    body = load_object(raw, fail, "the request body")
    if not model:
        raise fail("the model name must not be empty")
    calls = _CallIds()
    messages = []
    for position, item in enumerate(as_list(body.get("contents"), fail, "contents")):
        where = f"contents[{position}]"
        content = as_object(item, fail, where)
        role = content.get("role", "user")
        if role == "user":
            message_role = Role.USER
        elif role == "model":
            message_role = Role.ASSISTANT
        else:
            raise fail(f"'{where}.role' has an unknown value {quoted(str(role))}")
        parts = _parts(content.get("parts"), f"{where}.parts", fail, calls)
        messages.append(Message(message_role, parts))
    config = as_object(or_empty(body.get("generationConfig")), fail, "generationConfig")
    tool_config = body.get("toolConfig")
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        system=_system(body.get("systemInstruction")),
        tools=_tools(body.get("tools")),
        tool_choice=None if tool_config is None else _tool_choice(tool_config),
        max_tokens=opt_int(config.get("maxOutputTokens"), fail, "generationConfig.maxOutputTokens"),
        temperature=opt_number(config.get("temperature"), fail, "generationConfig.temperature"),
        top_p=opt_number(config.get("topP"), fail, "generationConfig.topP"),
        stop=tuple(
            as_str(s, fail, "generationConfig.stopSequences[]")
            for s in as_list(
                _or_list(config.get("stopSequences")), fail, "generationConfig.stopSequences"
            )
        ),
        stream=stream,
        extras=_extras(body, config),
    )


def _extras(body: dict[str, Any], config: dict[str, Any]) -> Extras:
    fields: dict[str, Any] = {k: v for k, v in body.items() if k not in _MODELLED}
    essential = [k for k in fields if k not in _TAGS]
    rest = {k: v for k, v in config.items() if k not in _MODELLED_CONFIG}
    if rest:
        fields["generationConfig"] = rest
        essential.extend(
            f"generationConfig.{k}"
            for k, v in rest.items()
            if not (k in _NEUTRAL_CONFIG and v == _NEUTRAL_CONFIG[k])
        )
    return Extras(schema=SCHEMA, fields=fields, essential=tuple(essential))


class _CallIds:
    """Ids for the function calls of a conversation: the call's own, or a synthetic one; a
    response without an id answers the earliest unanswered call of its name."""

    __slots__ = ("_count", "_open")

    def __init__(self) -> None:
        self._count = 0
        self._open: list[tuple[str, str]] = []

    def call(self, name: str, given: str | None) -> str:
        call_id = given or f"{SYNTHETIC_ID_PREFIX}{self._count}"
        self._count += 1
        self._open.append((call_id, name))
        return call_id

    def answer(self, name: str, given: str | None, fail: Fail, at: str) -> str:
        for position, (call_id, call_name) in enumerate(self._open):
            if (given is not None and call_id == given) or (given is None and call_name == name):
                del self._open[position]
                return call_id
        if given is not None:
            return given
        raise fail(f"'{at}' answers no earlier functionCall named {quoted(name)}")


def _system(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    fail = MalformedRequest
    content = as_object(value, fail, "systemInstruction")
    texts = []
    for position, item in enumerate(as_list(content.get("parts"), fail, "systemInstruction.parts")):
        at = f"systemInstruction.parts[{position}]"
        part = as_object(item, fail, at)
        if "text" not in part:
            raise Unsupported(f"'{at}' is not text; only text system instructions translate")
        texts.append(as_str(part["text"], fail, f"{at}.text"))
    return tuple(texts)


def _parts(value: object, where: str, fail: Fail, calls: _CallIds) -> tuple[Part, ...]:
    parts: list[Part] = []
    for position, item in enumerate(as_list(value, fail, where)):
        at = f"{where}[{position}]"
        part = as_object(item, fail, at)
        if part.get("thought") is True:
            # A thought summary the model showed earlier: it is not part of the conversation.
            continue
        if "text" in part:
            parts.append(Text(as_str(part["text"], fail, f"{at}.text")))
        elif "inlineData" in part:
            parts.append(_image(as_object(part["inlineData"], fail, f"{at}.inlineData"), at, fail))
        elif "functionCall" in part:
            call = as_object(part["functionCall"], fail, f"{at}.functionCall")
            name = as_str(call.get("name"), fail, f"{at}.functionCall.name")
            call_id = calls.call(name, opt_str(call.get("id"), fail, f"{at}.functionCall.id"))
            parts.append(ToolCall(call_id, name, _arguments(call, f"{at}.functionCall", fail)))
        elif "functionResponse" in part:
            parts.append(_function_response(part["functionResponse"], at, fail, calls))
        else:
            kind = next(iter(part), "")
            raise Unsupported(f"the part kind {quoted(kind)} at '{at}' cannot be translated")
    return tuple(parts)


def _image(blob: dict[str, Any], at: str, fail: Fail) -> Image:
    mime_type = as_str(blob.get("mimeType"), fail, f"{at}.inlineData.mimeType")
    data = as_str(blob.get("data"), fail, f"{at}.inlineData.data")
    if not mime_type.startswith("image/"):
        raise Unsupported(f"inline data of type {quoted(mime_type)} at '{at}' cannot be translated")
    return Image(url=f"data:{mime_type};base64,{data}")


def _arguments(call: dict[str, Any], at: str, fail: Fail) -> str:
    args = call.get("args")
    return dumps(as_object({} if args is None else args, fail, f"{at}.args")).decode()


def _function_response(value: object, at: str, fail: Fail, calls: _CallIds) -> ToolResult:
    """A functionResponse → ToolResult. Gemini's documented convention is `{"output": …}` or
    `{"error": …}`; a string under either becomes the result's text, any other object its JSON."""
    response = as_object(value, fail, f"{at}.functionResponse")
    name = as_str(response.get("name"), fail, f"{at}.functionResponse.name")
    given = opt_str(response.get("id"), fail, f"{at}.functionResponse.id")
    body = as_object(response.get("response"), fail, f"{at}.functionResponse.response")
    call_id = calls.answer(name, given, fail, f"{at}.functionResponse")
    if len(body) == 1 and isinstance(body.get("output"), str):
        return ToolResult(call_id, (Text(body["output"]),))
    if len(body) == 1 and isinstance(body.get("error"), str):
        return ToolResult(call_id, (Text(body["error"]),), is_error=True)
    return ToolResult(call_id, (Text(dumps(body).decode()),))


def _tools(value: object) -> tuple[Tool, ...]:
    if value is None:
        return ()
    fail = MalformedRequest
    tools = []
    for position, item in enumerate(as_list(value, fail, "tools")):
        at = f"tools[{position}]"
        tool = as_object(item, fail, at)
        other = [k for k in tool if k != "functionDeclarations"]
        if other:
            raise Unsupported(f"the tool {quoted(other[0])} at '{at}' cannot be translated")
        declarations = as_list(tool.get("functionDeclarations"), fail, f"{at}.functionDeclarations")
        for index, entry in enumerate(declarations):
            where = f"{at}.functionDeclarations[{index}]"
            declaration = as_object(entry, fail, where)
            schema = declaration.get("parameters", declaration.get("parametersJsonSchema"))
            tools.append(
                Tool(
                    name=as_str(declaration.get("name"), fail, f"{where}.name"),
                    description=opt_str(
                        declaration.get("description"), fail, f"{where}.description"
                    ),
                    parameters=as_object(
                        {"type": "object", "properties": {}} if schema is None else schema,
                        fail,
                        f"{where}.parameters",
                    ),
                )
            )
    return tuple(tools)


def _tool_choice(value: object) -> ToolChoice | None:
    fail = MalformedRequest
    config = as_object(value, fail, "toolConfig")
    calling = config.get("functionCallingConfig")
    if calling is None:
        return None
    calling = as_object(calling, fail, "toolConfig.functionCallingConfig")
    mode = as_str(calling.get("mode", "AUTO"), fail, "toolConfig.functionCallingConfig.mode")
    names = [
        as_str(name, fail, "toolConfig.functionCallingConfig.allowedFunctionNames[]")
        for name in as_list(
            _or_list(calling.get("allowedFunctionNames")),
            fail,
            "toolConfig.functionCallingConfig.allowedFunctionNames",
        )
    ]
    if mode in ("AUTO", "MODE_UNSPECIFIED", "NONE") and not names:
        return ToolChoice(ToolChoiceMode.NONE if mode == "NONE" else ToolChoiceMode.AUTO)
    if mode == "ANY":
        if not names:
            return ToolChoice(ToolChoiceMode.ANY)
        if len(names) == 1:
            return ToolChoice(ToolChoiceMode.TOOL, names[0])
        raise Unsupported("a choice among several allowedFunctionNames cannot be translated")
    raise Unsupported(f"the function calling mode {quoted(mode)} cannot be translated")


def encode_request(request: ChatRequest) -> bytes:
    """The model → a `GenerateContentRequest` body (post it to `path_of(request)`). Raises
    Unsupported for what Gemini cannot say."""
    request.extras.refuse_in(SCHEMA, NAME)
    names: dict[str, str] = {}
    contents = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            raise Unsupported(f"{NAME} takes system instructions only before the conversation")
        role = "model" if message.role is Role.ASSISTANT else "user"
        contents.append({"role": role, "parts": [_wire_part(p, names) for p in message.content]})
    body: dict[str, Any] = {"contents": contents}
    if request.system:
        body["systemInstruction"] = {"parts": [{"text": text} for text in request.system]}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": tool.name,
                        **(
                            {"description": tool.description}
                            if tool.description is not None
                            else {}
                        ),
                        "parameters": tool.parameters,
                    }
                    for tool in request.tools
                ]
            }
        ]
    choice = request.tool_choice
    if choice is not None:
        if choice.parallel is False:
            raise Unsupported(f"{NAME} cannot be told to make one function call at a time")
        calling: dict[str, Any] = {
            "mode": {
                ToolChoiceMode.AUTO: "AUTO",
                ToolChoiceMode.NONE: "NONE",
                ToolChoiceMode.ANY: "ANY",
                ToolChoiceMode.TOOL: "ANY",
            }[choice.mode]
        }
        if choice.mode is ToolChoiceMode.TOOL:
            calling["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": calling}
    config: dict[str, Any] = {}
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.extras.schema == SCHEMA:
        for key, value in request.extras.fields.items():
            if key == "generationConfig":
                config.update(value)
            else:
                body.setdefault(key, value)
    if config:
        body["generationConfig"] = config
    return dumps(body)


def _wire_part(part: Part, names: dict[str, str]) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"text": part.text}
    if isinstance(part, Image):
        return {"inlineData": _wire_image(part)}
    if isinstance(part, ToolCall):
        names[part.id] = part.name
        call: dict[str, Any] = {"name": part.name, "args": _args_of(part)}
        if not part.id.startswith(SYNTHETIC_ID_PREFIX):
            call = {"id": part.id, **call}
        return {"functionCall": call}
    name = names.get(part.tool_call_id)
    if name is None:
        raise Unsupported(
            f"the tool result for {quoted(part.tool_call_id)} answers no earlier tool call; "
            f"{NAME} needs the function's name"
        )
    texts = []
    for item in part.content:
        if not isinstance(item, Text):
            raise Unsupported(f"{NAME} cannot carry an image in a function response")
        texts.append(item.text)
    response: dict[str, Any] = {"name": name, "response": _response_of("".join(texts), part)}
    if not part.tool_call_id.startswith(SYNTHETIC_ID_PREFIX):
        response = {"id": part.tool_call_id, **response}
    return {"functionResponse": response}


def _response_of(text: str, result: ToolResult) -> dict[str, Any]:
    if result.is_error:
        return {"error": text}
    if text.startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        if isinstance(value, dict):
            return value
    return {"output": text}


def _wire_image(image: Image) -> dict[str, Any]:
    if not image.url.startswith("data:"):
        raise Unsupported(f"{NAME} takes images inline (base64 data URLs) only, not by URL")
    header, _, data = image.url[5:].partition(",")
    mime_type, _, encoding = header.partition(";")
    if encoding != "base64" or not mime_type:
        raise Unsupported(f"{NAME} takes inline images as base64 data URLs only")
    try:
        base64.b64decode(data, validate=True)
    except binascii.Error:
        raise Unsupported("an inline image is not valid base64") from None
    return {"mimeType": mime_type, "data": data}


def _args_of(call: ToolCall) -> dict[str, Any]:
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
    """A `GenerateContentResponse` → the model. Raises MalformedResponse or Unsupported."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    response_id = opt_str(body.get("responseId"), fail, "responseId") or ""
    content: list[Text | ToolCall] = []
    reason: StopReason | None = None
    candidate = _only_candidate(body)
    if candidate is None:
        # No candidate: the prompt itself was blocked (promptFeedback.blockReason).
        reason = StopReason.CONTENT_FILTER if body.get("promptFeedback") else None
    else:
        for part in _candidate_parts(candidate):
            if "text" in part:
                content.append(Text(as_str(part["text"], fail, "parts[].text")))
            elif "functionCall" in part:
                content.append(_response_call(part["functionCall"], response_id, len(content)))
            else:
                kind = next(iter(part), "")
                raise Unsupported(f"the response part kind {quoted(kind)} cannot be translated")
        reason = _stop_reason(candidate.get("finishReason"), content)
    usage = body.get("usageMetadata")
    return ChatResponse(
        id=response_id,
        model=opt_str(body.get("modelVersion"), fail, "modelVersion") or "",
        content=tuple(content),
        stop_reason=reason,
        usage=None if usage is None else usage_of(usage),
    )


def _only_candidate(body: dict[str, Any]) -> dict[str, Any] | None:
    candidates = as_list(_or_list(body.get("candidates")), MalformedResponse, "candidates")
    if not candidates:
        return None
    if len(candidates) != 1:
        raise Unsupported(f"a response with {len(candidates)} candidates cannot be translated")
    return as_object(candidates[0], MalformedResponse, "candidates[0]")


def _candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate's parts, thought summaries left out (a translation never asks for them)."""
    fail = MalformedResponse
    content = as_object(or_empty(candidate.get("content")), fail, "candidates[0].content")
    parts = []
    for item in as_list(_or_list(content.get("parts")), fail, "candidates[0].content.parts"):
        part = as_object(item, fail, "candidates[0].content.parts[]")
        if part.get("thought") is not True:
            parts.append(part)
    return parts


def _response_call(value: object, response_id: str, position: int) -> ToolCall:
    fail = MalformedResponse
    call = as_object(value, fail, "functionCall")
    call_id = opt_str(call.get("id"), fail, "functionCall.id")
    return ToolCall(
        id=call_id or f"{SYNTHETIC_ID_PREFIX}{response_id}-{position}",
        name=as_str(call.get("name"), fail, "functionCall.name"),
        arguments=_arguments(call, "functionCall", fail),
    )


def _stop_reason(value: object, content: Iterable[object]) -> StopReason | None:
    reason = opt_str(value, MalformedResponse, "finishReason")
    if reason is None:
        return None
    stop = _STOP_REASONS.get(reason, _OTHER_STOP)
    if stop is StopReason.END_TURN and any(isinstance(part, ToolCall) for part in content):
        return StopReason.TOOL_USE
    return stop


def usage_of(value: object) -> Usage:
    """Gemini's `usageMetadata` → Usage. `promptTokenCount` already includes the cached
    content's tokens (as the model's input does); tool-use prompt tokens are input too, and
    thinking tokens are output (billed as such)."""
    fail = MalformedResponse
    usage = as_object(value, fail, "usageMetadata")
    return Usage(
        input_tokens=count(usage.get("promptTokenCount"), fail, "usageMetadata.promptTokenCount")
        + count(
            usage.get("toolUsePromptTokenCount"), fail, "usageMetadata.toolUsePromptTokenCount"
        ),
        output_tokens=count(
            usage.get("candidatesTokenCount"), fail, "usageMetadata.candidatesTokenCount"
        )
        + count(usage.get("thoughtsTokenCount"), fail, "usageMetadata.thoughtsTokenCount"),
        cached_input_tokens=count(
            usage.get("cachedContentTokenCount"), fail, "usageMetadata.cachedContentTokenCount"
        ),
    )


def _wire_usage(usage: Usage) -> dict[str, Any]:
    wire: dict[str, Any] = {"promptTokenCount": usage.input_tokens}
    if usage.output_tokens:
        wire["candidatesTokenCount"] = usage.output_tokens
    wire["totalTokenCount"] = usage.input_tokens + usage.output_tokens
    if usage.cached_input_tokens:
        wire["cachedContentTokenCount"] = usage.cached_input_tokens
    return wire


def _wire_content(content: Iterable[Text | ToolCall]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    for part in content:
        if isinstance(part, Text):
            parts.append({"text": part.text})
        else:
            parts.append(_wire_part(part, {}))
    return parts


def encode_response(response: ChatResponse) -> bytes:
    """The model → a `GenerateContentResponse`."""
    candidate: dict[str, Any] = {
        "content": {"parts": _wire_content(response.content), "role": "model"}
    }
    if response.stop_reason is not None:
        candidate["finishReason"] = _FINISH_REASONS[response.stop_reason]
    candidate["index"] = 0
    body: dict[str, Any] = {"candidates": [candidate]}
    if response.usage is not None:
        body["usageMetadata"] = _wire_usage(response.usage)
    body["modelVersion"] = response.model
    body["responseId"] = response.id
    return dumps(body)


# --- streams -------------------------------------------------------------------------------


class StreamDecoder:
    """`streamGenerateContent?alt=sse` bytes, cut anywhere → model events, incrementally.

    Every event is a whole `GenerateContentResponse`, parsed once. Text parts extend the open
    text block; a function call arrives whole and becomes ToolCallStart, one ToolCallDelta with
    all its arguments, and BlockStop. The chunk carrying `finishReason` (the last one; it also
    holds the final usage) ends the message: MessageDelta, then MessageStop. Usage on the
    others is reported as UsageUpdate when it changes.
    """

    __slots__ = ("_blocks", "_called", "_events", "_id", "_open", "_started", "_stopped", "_usage")

    def __init__(self) -> None:
        self._events = SseSplitter()
        self._started = False
        self._stopped = False
        self._id = ""
        self._blocks = 0
        self._open: int | None = None
        self._called = False
        self._usage: Usage | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for event in self._events.feed(chunk):
            self._decode(event, out)
        return out

    def finish(self) -> list[StreamEvent]:
        """The events of whatever the stream held after its last blank line."""
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
        body = load_object(data, fail, "a stream chunk")
        if "error" in body:
            out.append(StreamError(_error_info(None, body, None)))
            return
        usage_value = body.get("usageMetadata")
        usage = None if usage_value is None else usage_of(usage_value)
        if not self._started:
            self._started = True
            self._id = opt_str(body.get("responseId"), fail, "responseId") or ""
            self._usage = usage
            out.append(
                MessageStart(
                    id=self._id,
                    model=opt_str(body.get("modelVersion"), fail, "modelVersion") or "",
                    usage=usage,
                )
            )
        candidate = _only_candidate(body)
        reason: str | None = None
        if candidate is not None:
            for part in _candidate_parts(candidate):
                self._decode_part(part, out)
            reason = opt_str(candidate.get("finishReason"), fail, "finishReason")
        elif body.get("promptFeedback"):
            reason = "SAFETY"  # the prompt itself was blocked: no candidate comes
        if usage is not None and usage != self._usage:
            self._usage = merge_usage(self._usage, usage)
            out.append(UsageUpdate(usage))
        if reason is not None and not self._stopped:
            self._stopped = True
            self._close(out)
            stop = _STOP_REASONS.get(reason, _OTHER_STOP)
            if stop is StopReason.END_TURN and self._called:
                stop = StopReason.TOOL_USE
            out.append(MessageDelta(stop_reason=stop))
            out.append(MessageStop())

    def _decode_part(self, part: dict[str, Any], out: list[StreamEvent]) -> None:
        fail = MalformedResponse
        if "text" in part:
            text = as_str(part["text"], fail, "parts[].text")
            if not text:
                return
            if self._open is None:
                self._open = self._blocks
                self._blocks += 1
            out.append(TextDelta(self._open, text))
        elif "functionCall" in part:
            self._close(out)
            index = self._blocks
            self._blocks += 1
            call = _response_call(part["functionCall"], self._id, index)
            self._called = True
            out.append(ToolCallStart(index, call.id, call.name))
            out.append(ToolCallDelta(index, call.arguments))
            out.append(BlockStop(index))
        else:
            kind = next(iter(part), "")
            raise Unsupported(f"the response part kind {quoted(kind)} cannot be translated")

    def _close(self, out: list[StreamEvent]) -> None:
        if self._open is not None:
            out.append(BlockStop(self._open))
            self._open = None


class StreamEncoder:
    """Model events → `streamGenerateContent?alt=sse` bytes, as Gemini streams them: one whole
    `GenerateContentResponse` per text piece or function call, each with the usage so far; the
    last one carries `finishReason` and the final usage.

    A function call is held until its block stops (Gemini sends calls whole), and the finish
    reason until MessageStop, so usage reported after it (OpenAI's final usage chunk) is still
    in the last chunk, where clients read it.
    """

    __slots__ = ("_calls", "_id", "_model", "_reason", "_usage")

    def __init__(self) -> None:
        self._id = ""
        self._model = ""
        self._usage: Usage | None = None
        self._reason: StopReason | None = None
        # Block index → [id, name, arguments so far] of a call not yet sent.
        self._calls: dict[int, list[str]] = {}

    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The SSE bytes of several events, in order."""
        return b"".join(self.encode_one(event) for event in events)

    def encode_one(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk([{"text": event.text}])
        if isinstance(event, ToolCallStart):
            self._calls[event.index] = [event.id, event.name, ""]
            return b""
        if isinstance(event, ToolCallDelta):
            call = self._calls.get(event.index)
            if call is not None:
                call[2] += event.partial_json
            return b""
        if isinstance(event, BlockStop):
            held = self._calls.pop(event.index, None)
            if held is None:
                return b""
            return self._chunk(_wire_content([ToolCall(*held)]))
        if isinstance(event, MessageStart):
            self._id, self._model = event.id, event.model
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageDelta):
            self._reason = event.stop_reason
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, UsageUpdate):
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageStop):
            unsent = [ToolCall(*call) for call in self._calls.values()]
            self._calls.clear()
            reason = _FINISH_REASONS[self._reason or StopReason.END_TURN]
            return self._chunk(_wire_content(unsent), reason)
        return b"data: " + encode_error(event.error) + b"\n\n"

    def _chunk(self, parts: list[dict[str, Any]], finish_reason: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
        body: dict[str, Any] = {"candidates": [candidate]}
        if self._usage is not None:
            body["usageMetadata"] = _wire_usage(self._usage)
        body["modelVersion"] = self._model
        body["responseId"] = self._id
        return b"data: " + dumps(body) + b"\r\n\r\n"


# --- errors --------------------------------------------------------------------------------


def decode_error(status: int, raw: bytes, retry_after: str | None = None) -> ErrorInfo:
    """An error answer (`{"error": {"code", "message", "status", "details"}}`) → ErrorInfo; a
    body of another shape still gives an ErrorInfo from the status alone."""
    try:
        body = load_object(raw, MalformedResponse, "the error body")
    except MalformedResponse:
        body = {}
    return _error_info(status, body, retry_after)


def _error_info(status: int | None, body: dict[str, Any], retry_after: str | None) -> ErrorInfo:
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    name = error.get("status")
    name = name if isinstance(name, str) else None
    message = error.get("message")
    code = error.get("code")
    if status is None:
        # An error inside a 200 stream: the HTTP status its body names.
        status = code if isinstance(code, int) and not isinstance(code, bool) else 500
    kind = _ERROR_KINDS.get(name) if name is not None else None
    reason = _reason_of(error.get("details"))
    if reason in _AUTH_REASONS:
        kind = ErrorKind.AUTHENTICATION
    return ErrorInfo(
        status=status,
        kind=kind or kind_of_status(status),
        message=message if isinstance(message, str) else f"the provider answered {status}",
        retry_after_s=retry_after_seconds(retry_after),
        provider_type=name,
        code=reason,
    )


def _reason_of(details: object) -> str | None:
    """The `reason` of the first google.rpc.ErrorInfo detail, if any."""
    if not isinstance(details, list):
        return None
    for detail in details:
        if isinstance(detail, dict) and isinstance(detail.get("reason"), str):
            reason: str = detail["reason"]
            return reason
    return None


def encode_error(error: ErrorInfo) -> bytes:
    """ErrorInfo → a Gemini error body (send it with `error.status`)."""
    status = error.status if error.status >= 400 else _HTTP_OF_KIND[error.kind]
    return dumps(
        {"error": {"code": status, "message": error.message, "status": _ERROR_STATUSES[error.kind]}}
    )


def _or_list(value: object) -> object:
    return [] if value is None else value
