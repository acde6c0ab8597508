"""OpenAI Chat Completions ⇄ the shared model: requests, responses, SSE streams, error bodies.

Field names and shapes follow OpenAI's API reference ("Create chat completion", "The chat
completion object", "The chat completion chunk object"). Also the shape every OpenAI-compatible
server (vLLM, Ollama's /v1, Azure OpenAI) speaks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

from gatez.errors import quoted
from gatez.sse import SseSplitter, event_data
from gatez.translate._wire import (
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

SCHEMA: Final = "openai_chat"
NAME: Final = "OpenAI Chat Completions"

# Request fields the model represents; all others go to `Extras`.
_MODELLED: Final = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
    }
)
# Extras that only tag or account the call: another schema may go without them.
_TAGS: Final = frozenset(
    {
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "store",
        "metadata",
        "service_tier",
        "stream_options",
        "max_completion_tokens",
    }
)
# Extras that change nothing at these values (the API's defaults).
_NEUTRAL: Final[dict[str, object]] = {
    "n": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
    "logprobs": False,
}

_STOP_REASONS: Final = {
    # OpenAI does not tell a natural stop from a stop sequence: both are "stop".
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    "tool_calls": StopReason.TOOL_USE,
    "function_call": StopReason.TOOL_USE,
    "content_filter": StopReason.CONTENT_FILTER,
}
_FINISH_REASONS: Final = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.TOOL_USE: "tool_calls",
    StopReason.CONTENT_FILTER: "content_filter",
    # Chat Completions has no error finish reason; the error itself is sent as an error chunk.
    StopReason.ERROR: "stop",
}
_ERROR_TYPES: Final = {
    # As gatez.errors names them, which is what our own OpenAI-style errors already say.
    ErrorKind.INVALID_REQUEST: "invalid_request_error",
    ErrorKind.AUTHENTICATION: "authentication_error",
    ErrorKind.PERMISSION: "permission_error",
    ErrorKind.NOT_FOUND: "not_found_error",
    ErrorKind.REQUEST_TOO_LARGE: "invalid_request_error",
    ErrorKind.RATE_LIMIT: "rate_limit_error",
    ErrorKind.SERVER: "server_error",
    ErrorKind.OVERLOADED: "service_unavailable",
    ErrorKind.TIMEOUT: "timeout",
}

DONE: Final = b"data: [DONE]\n\n"


# --- requests ------------------------------------------------------------------------------


def decode_request(raw: bytes) -> ChatRequest:
    """A Chat Completions request body → the model. Raises MalformedRequest or Unsupported."""
    fail = MalformedRequest
    body = load_object(raw, fail, "the request body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise fail("'model' must be a non-empty string")
    system: list[str] = []
    messages: list[Message] = []
    for position, item in enumerate(as_list(body.get("messages"), fail, "messages")):
        where = f"messages[{position}]"
        message = as_object(item, fail, where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = _plain_text(message.get("content"), f"{where}.content")
            # Leading system prompts are the system prompt; a later one stays in its place.
            if not messages:
                system.append(text)
            else:
                messages.append(Message(Role.SYSTEM, (Text(text),)))
        elif role == "user":
            messages.append(Message(Role.USER, _user_parts(message.get("content"), where)))
        elif role == "assistant":
            messages.append(Message(Role.ASSISTANT, _assistant_parts(message, where)))
        elif role == "tool":
            result = ToolResult(
                tool_call_id=as_str(message.get("tool_call_id"), fail, f"{where}.tool_call_id"),
                content=(Text(_plain_text(message.get("content"), f"{where}.content")),),
            )
            # Consecutive tool messages answer one assistant turn: one user turn of results.
            last = messages[-1] if messages else None
            if last is not None and last.role is Role.USER and _all_results(last.content):
                messages[-1] = Message(Role.USER, (*last.content, result))
            else:
                messages.append(Message(Role.USER, (result,)))
        else:
            raise fail(f"'{where}.role' has an unknown value {quoted(str(role))}")
    max_tokens = opt_int(body.get("max_completion_tokens"), fail, "max_completion_tokens")
    if max_tokens is None:
        max_tokens = opt_int(body.get("max_tokens"), fail, "max_tokens")
    stop = body.get("stop")
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        system=tuple(system),
        tools=tuple(
            _tool(t, i) for i, t in enumerate(as_list(body.get("tools", []), fail, "tools"))
        ),
        tool_choice=_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        max_tokens=max_tokens,
        temperature=opt_number(body.get("temperature"), fail, "temperature"),
        top_p=opt_number(body.get("top_p"), fail, "top_p"),
        stop=(stop,)
        if isinstance(stop, str)
        else tuple(
            as_str(s, fail, "stop[]") for s in as_list([] if stop is None else stop, fail, "stop")
        ),
        stream=opt_bool(body.get("stream"), fail, "stream") or False,
        extras=_extras(body),
    )


def _extras(body: dict[str, Any]) -> Extras:
    fields = {k: v for k, v in body.items() if k not in _MODELLED}
    if "max_completion_tokens" in body:
        # Kept to send the same field name back on a same-schema pass.
        fields["max_completion_tokens"] = body["max_completion_tokens"]
    essential = tuple(
        k for k, v in fields.items() if k not in _TAGS and not (k in _NEUTRAL and v == _NEUTRAL[k])
    )
    return Extras(schema=SCHEMA, fields=fields, essential=essential)


def _plain_text(content: object, where: str) -> str:
    """A content that may only hold text (system, developer and tool messages)."""
    if isinstance(content, str):
        return content
    texts = []
    for position, item in enumerate(as_list(content, MalformedRequest, where)):
        part = as_object(item, MalformedRequest, f"{where}[{position}]")
        if part.get("type") != "text":
            raise Unsupported(f"'{where}[{position}]' must be a text part here")
        texts.append(as_str(part.get("text"), MalformedRequest, f"{where}[{position}].text"))
    return "".join(texts)


def _user_parts(content: object, where: str) -> tuple[Part, ...]:
    fail = MalformedRequest
    if isinstance(content, str):
        return (Text(content),)
    parts: list[Part] = []
    for position, item in enumerate(as_list(content, fail, f"{where}.content")):
        at = f"{where}.content[{position}]"
        part = as_object(item, fail, at)
        kind = part.get("type")
        if kind == "text":
            parts.append(Text(as_str(part.get("text"), fail, f"{at}.text")))
        elif kind == "image_url":
            image = as_object(part.get("image_url"), fail, f"{at}.image_url")
            parts.append(
                Image(
                    url=as_str(image.get("url"), fail, f"{at}.image_url.url"),
                    detail=opt_str(image.get("detail"), fail, f"{at}.image_url.detail"),
                )
            )
        else:
            raise Unsupported(
                f"the content part type {quoted(str(kind))} at '{at}' cannot be translated"
            )
    return tuple(parts)


def _assistant_parts(message: dict[str, Any], where: str) -> tuple[Part, ...]:
    fail = MalformedRequest
    content = message.get("content")
    parts: list[Part] = []
    if content is not None:
        text = _plain_text(content, f"{where}.content")
        if text:
            parts.append(Text(text))
    calls = message.get("tool_calls")
    for position, item in enumerate(
        as_list([] if calls is None else calls, fail, f"{where}.tool_calls")
    ):
        at = f"{where}.tool_calls[{position}]"
        call = as_object(item, fail, at)
        function = as_object(call.get("function"), fail, f"{at}.function")
        parts.append(
            ToolCall(
                id=as_str(call.get("id"), fail, f"{at}.id"),
                name=as_str(function.get("name"), fail, f"{at}.function.name"),
                arguments=as_str(function.get("arguments"), fail, f"{at}.function.arguments"),
            )
        )
    return tuple(parts)


def _all_results(parts: tuple[Part, ...]) -> bool:
    return all(isinstance(part, ToolResult) for part in parts)


def _tool(item: object, position: int) -> Tool:
    fail = MalformedRequest
    at = f"tools[{position}]"
    tool = as_object(item, fail, at)
    if tool.get("type") != "function":
        raise Unsupported(f"'{at}.type' {quoted(str(tool.get('type')))} cannot be translated")
    function = as_object(tool.get("function"), fail, f"{at}.function")
    if function.get("strict") is True:
        raise Unsupported(f"'{at}.function.strict' cannot be translated")
    return Tool(
        name=as_str(function.get("name"), fail, f"{at}.function.name"),
        description=opt_str(function.get("description"), fail, f"{at}.function.description"),
        parameters=as_object(
            function.get("parameters", {"type": "object", "properties": {}}),
            fail,
            f"{at}.function.parameters",
        ),
    )


def _tool_choice(choice: object, parallel: object) -> ToolChoice | None:
    fail = MalformedRequest
    parallel_calls = opt_bool(parallel, fail, "parallel_tool_calls")
    if choice is None:
        return (
            None
            if parallel_calls is None
            else ToolChoice(ToolChoiceMode.AUTO, None, parallel_calls)
        )
    if isinstance(choice, str):
        mode = one_of(
            choice,
            {
                "auto": ToolChoiceMode.AUTO,
                "none": ToolChoiceMode.NONE,
                "required": ToolChoiceMode.ANY,
            },
            fail,
            "tool_choice",
        )
        return ToolChoice(mode, None, parallel_calls)
    named = as_object(choice, fail, "tool_choice")
    function = as_object(named.get("function"), fail, "tool_choice.function")
    name = as_str(function.get("name"), fail, "tool_choice.function.name")
    return ToolChoice(ToolChoiceMode.TOOL, name, parallel_calls)


def encode_request(request: ChatRequest) -> bytes:
    """The model → a Chat Completions request body. A stream asks for usage
    (`stream_options.include_usage`), which metering needs."""
    request.extras.refuse_in(SCHEMA, NAME)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": text} for text in request.system
    ]
    for message in request.messages:
        messages.extend(_wire_messages(message))
    body: dict[str, Any] = {"model": request.model, "messages": messages}
    same_schema = request.extras.schema == SCHEMA
    if request.max_tokens is not None:
        # OpenAI's newer name only when the client used it: OpenAI-compatible servers know the
        # older one.
        uses_new = same_schema and "max_completion_tokens" in request.extras.fields
        body["max_completion_tokens" if uses_new else "max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop"] = list(request.stop)
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    **({"description": tool.description} if tool.description is not None else {}),
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
    choice = request.tool_choice
    if choice is not None:
        if choice.mode is ToolChoiceMode.TOOL:
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = (
                "required" if choice.mode is ToolChoiceMode.ANY else choice.mode.value
            )
        if choice.parallel is not None:
            body["parallel_tool_calls"] = choice.parallel
    if same_schema:
        for key, value in request.extras.fields.items():
            body.setdefault(key, value)
    if request.stream:
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {
            **(options if isinstance(options, dict) else {}),
            "include_usage": True,
        }
    return dumps(body)


def _wire_messages(message: Message) -> list[dict[str, Any]]:
    if message.role is Role.SYSTEM:
        return [{"role": "system", "content": _only_text(message.content, "a system message")}]
    if message.role is Role.ASSISTANT:
        texts = []
        calls = []
        for part in message.content:
            if isinstance(part, Text):
                texts.append(part.text)
            elif isinstance(part, ToolCall):
                calls.append(
                    {
                        "id": part.id,
                        "type": "function",
                        "function": {"name": part.name, "arguments": part.arguments},
                    }
                )
            else:
                raise Unsupported(
                    f"{NAME} cannot carry an {type(part).__name__} in an assistant message"
                )
        wire: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
        if calls:
            wire["tool_calls"] = calls
        return [wire]
    # Tool results become tool messages, which must follow the assistant's calls directly.
    out: list[dict[str, Any]] = []
    rest: list[dict[str, Any]] = []
    for part in message.content:
        if isinstance(part, ToolResult):
            text = _only_text(part.content, "a tool result")
            if part.is_error:
                # Chat Completions has no error flag on a tool message; say it in the text.
                text = f"Error: {text}"
            out.append({"role": "tool", "tool_call_id": part.tool_call_id, "content": text})
        elif isinstance(part, Text):
            rest.append({"type": "text", "text": part.text})
        elif isinstance(part, Image):
            image: dict[str, Any] = {"url": part.url}
            if part.detail is not None:
                image["detail"] = part.detail
            rest.append({"type": "image_url", "image_url": image})
        else:
            raise Unsupported(f"{NAME} cannot carry a tool call in a user message")
    if rest:
        single_text = len(rest) == 1 and rest[0]["type"] == "text"
        out.append({"role": "user", "content": rest[0]["text"] if single_text else rest})
    return out


def _only_text(parts: tuple[Part, ...], what: str) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, Text):
            raise Unsupported(f"{NAME} cannot carry an {type(part).__name__} in {what}")
        texts.append(part.text)
    return "".join(texts)


# --- responses -----------------------------------------------------------------------------


def decode_response(raw: bytes) -> ChatResponse:
    """A `chat.completion` object → the model. Raises MalformedResponse or Unsupported."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    choices = as_list(body.get("choices"), fail, "choices")
    if len(choices) > 1:
        raise Unsupported(f"a response with {len(choices)} choices cannot be translated")
    # No choice at all (a usage-only answer) is an empty reply.
    choice = as_object(choices[0], fail, "choices[0]") if choices else {"message": {}}
    message = as_object(choice.get("message"), fail, "choices[0].message")
    content: list[Text | ToolCall] = []
    text = opt_str(message.get("content"), fail, "choices[0].message.content")
    if text:
        content.append(Text(text))
    refusal = opt_str(message.get("refusal"), fail, "choices[0].message.refusal")
    if refusal:
        content.append(Text(refusal))
    for position, item in enumerate(_list_or_none(message.get("tool_calls"), "tool_calls")):
        at = f"choices[0].message.tool_calls[{position}]"
        call = as_object(item, fail, at)
        function = as_object(call.get("function"), fail, f"{at}.function")
        content.append(
            ToolCall(
                id=as_str(call.get("id"), fail, f"{at}.id"),
                name=as_str(function.get("name"), fail, f"{at}.function.name"),
                arguments=as_str(function.get("arguments"), fail, f"{at}.function.arguments"),
            )
        )
    usage = body.get("usage")
    return ChatResponse(
        id=opt_str(body.get("id"), fail, "id") or "",
        model=opt_str(body.get("model"), fail, "model") or "",
        content=tuple(content),
        stop_reason=_stop_reason(choice.get("finish_reason"), fail),
        usage=None if usage is None else usage_of(usage, fail),
    )


def _stop_reason(value: object, fail: type[MalformedResponse]) -> StopReason | None:
    reason = opt_str(value, fail, "finish_reason")
    if reason is None:
        return None
    stop: StopReason = one_of(reason, _STOP_REASONS, fail, "finish_reason")
    return stop


def usage_of(value: object, fail: type[MalformedResponse] = MalformedResponse) -> Usage:
    """An OpenAI `usage` object → Usage (prompt tokens include cached ones, as in the model)."""
    usage = as_object(value, fail, "usage")
    details = usage.get("prompt_tokens_details")
    cached = as_object(details, fail, "usage.prompt_tokens_details") if details is not None else {}
    return Usage(
        input_tokens=count(usage.get("prompt_tokens"), fail, "usage.prompt_tokens"),
        output_tokens=count(usage.get("completion_tokens"), fail, "usage.completion_tokens"),
        cached_input_tokens=count(
            cached.get("cached_tokens"), fail, "usage.prompt_tokens_details.cached_tokens"
        ),
    )


def _wire_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
    }


def encode_response(response: ChatResponse, *, created: int) -> bytes:
    """The model → a `chat.completion` object; `created` is the Unix time to stamp it with."""
    texts = [part.text for part in response.content if isinstance(part, Text)]
    calls = [
        {"id": p.id, "type": "function", "function": {"name": p.name, "arguments": p.arguments}}
        for p in response.content
        if isinstance(p, ToolCall)
    ]
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts else None,
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {
        "id": response.id,
        "object": "chat.completion",
        "created": created,
        "model": response.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": _finish_reason(response.stop_reason),
            }
        ],
    }
    if response.usage is not None:
        body["usage"] = _wire_usage(response.usage)
    return dumps(body)


def _finish_reason(reason: StopReason | None) -> str | None:
    return None if reason is None else _FINISH_REASONS[reason]


# --- streams -------------------------------------------------------------------------------


class StreamDecoder:
    """Chat Completions SSE bytes, cut anywhere → model events, incrementally.

    Each `chat.completion.chunk` is parsed once. Text and each tool call become blocks numbered
    in the order they start; a block ends when the next one starts or the choice finishes.
    """

    __slots__ = ("_blocks", "_events", "_open", "_started", "_text_block")

    def __init__(self) -> None:
        self._events = SseSplitter()
        self._started = False
        self._text_block: int | None = None
        # OpenAI's tool call index → our block index.
        self._blocks: dict[int, int] = {}
        self._open: int | None = None

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
        if data == b"[DONE]":
            self._close(out)
            out.append(MessageStop())
            return
        fail = MalformedResponse
        chunk = load_object(data, fail, "a stream chunk")
        if "error" in chunk:
            out.append(StreamError(_error_info(500, chunk, None)))
            return
        if not self._started:
            self._started = True
            out.append(
                MessageStart(
                    # OpenAI-compatible servers do not all send these: not needed to translate.
                    id=opt_str(chunk.get("id"), fail, "id") or "",
                    model=opt_str(chunk.get("model"), fail, "model") or "",
                )
            )
        for item in _list_or_none(chunk.get("choices"), "choices"):
            choice = as_object(item, fail, "choices[]")
            if choice.get("index", 0) != 0:
                raise Unsupported("a stream with several choices cannot be translated")
            self._decode_delta(as_object(or_empty(choice.get("delta")), fail, "delta"), out)
            reason = choice.get("finish_reason")
            if reason is not None:
                self._close(out)
                out.append(MessageDelta(stop_reason=_stop_reason(reason, fail)))
        usage = chunk.get("usage")
        if usage is not None:
            out.append(UsageUpdate(usage_of(usage)))

    def _decode_delta(self, delta: dict[str, Any], out: list[StreamEvent]) -> None:
        fail = MalformedResponse
        text = delta.get("content") or delta.get("refusal")
        if text:
            if self._text_block is None or self._open != self._text_block:
                self._close(out)
                self._text_block = self._open = self._next_block()
            out.append(TextDelta(self._text_block, as_str(text, fail, "delta.content")))
        for item in _list_or_none(delta.get("tool_calls"), "delta.tool_calls"):
            call = as_object(item, fail, "delta.tool_calls[]")
            position = opt_int(call.get("index"), fail, "delta.tool_calls[].index") or 0
            function = as_object(
                or_empty(call.get("function")), fail, "delta.tool_calls[].function"
            )
            block = self._blocks.get(position)
            if block is None:
                self._close(out)
                block = self._blocks[position] = self._open = self._next_block()
                out.append(
                    ToolCallStart(
                        block,
                        as_str(call.get("id"), fail, "delta.tool_calls[].id"),
                        as_str(function.get("name"), fail, "delta.tool_calls[].function.name"),
                    )
                )
            arguments = function.get("arguments")
            if arguments:
                out.append(ToolCallDelta(block, as_str(arguments, fail, "function.arguments")))

    def _next_block(self) -> int:
        return len(self._blocks) + (self._text_block is not None)

    def _close(self, out: list[StreamEvent]) -> None:
        if self._open is not None:
            out.append(BlockStop(self._open))
            self._open = None


def _list_or_none(value: object, where: str) -> list[Any]:
    return [] if value is None else as_list(value, MalformedResponse, where)


class StreamEncoder:
    """Model events → Chat Completions SSE bytes, as OpenAI streams them.

    `include_usage`: the client asked for `stream_options.include_usage`, so every chunk carries
    `"usage":null` and a usage-only chunk (empty `choices`) precedes `data: [DONE]`.
    `created` is the Unix time stamped on every chunk (the same on each, as OpenAI does).
    """

    __slots__ = ("_created", "_id", "_include_usage", "_model", "_tool_positions", "_usage")

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._created = created
        self._include_usage = include_usage
        self._id = ""
        self._model = ""
        self._tool_positions: dict[int, int] = {}
        self._usage: Usage | None = None

    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The SSE bytes of several events, in order."""
        return b"".join(self.encode_one(event) for event in events)

    def encode_one(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text})
        if isinstance(event, ToolCallDelta):
            position = self._tool_positions[event.index]
            return self._chunk(
                {"tool_calls": [{"index": position, "function": {"arguments": event.partial_json}}]}
            )
        if isinstance(event, ToolCallStart):
            position = self._tool_positions[event.index] = len(self._tool_positions)
            call = {
                "index": position,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, MessageStart):
            self._id, self._model = event.id, event.model
            self._usage = merge_usage(self._usage, event.usage)
            return self._chunk({"role": "assistant", "content": ""})
        if isinstance(event, MessageDelta):
            self._usage = merge_usage(self._usage, event.usage)
            return self._chunk({}, _finish_reason(event.stop_reason))
        if isinstance(event, UsageUpdate):
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageStop):
            if not self._include_usage:
                return DONE
            usage = _wire_usage(self._usage or Usage())
            return self._frame([], usage) + DONE
        if isinstance(event, StreamError):
            return b"data: " + encode_error(event.error) + b"\n\n"
        return b""  # BlockStop: Chat Completions does not mark block ends

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return self._frame([choice], None)

    def _frame(self, choices: list[Any], usage: dict[str, Any] | None) -> bytes:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage
        return b"data: " + dumps(chunk) + b"\n\n"


# --- errors --------------------------------------------------------------------------------


def decode_error(status: int, raw: bytes, retry_after: str | None = None) -> ErrorInfo:
    """An error answer (`{"error": {...}}`) → ErrorInfo. A body that is not OpenAI's shape
    (an HTML page from a proxy…) still gives an ErrorInfo from the status alone."""
    try:
        body = load_object(raw, MalformedResponse, "the error body")
    except MalformedResponse:
        body = {}
    return _error_info(status, body, retry_after)


def _error_info(status: int, body: dict[str, Any], retry_after: str | None) -> ErrorInfo:
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    kind = error.get("type")
    code = error.get("code")
    return ErrorInfo(
        status=status,
        kind=kind_of_status(status),
        message=message if isinstance(message, str) else f"the provider answered {status}",
        retry_after_s=retry_after_seconds(retry_after),
        provider_type=kind if isinstance(kind, str) else None,
        code=code if isinstance(code, str) else None,
    )


def encode_error(error: ErrorInfo) -> bytes:
    """ErrorInfo → an OpenAI error body (send it with `error.status`)."""
    kind = _ERROR_TYPES[error.kind]
    return dumps(
        {
            "error": {
                "message": error.message,
                "type": kind,
                "param": None,
                "code": error.code or kind,
            }
        }
    )
