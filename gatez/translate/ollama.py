"""Ollama's native API ⇄ the shared model: `/api/chat` and `/api/generate` requests, responses,
NDJSON streams and error bodies.

Field names and shapes follow Ollama's API reference (`docs/api.md`: "Generate a chat
completion", "Generate a completion", "Streaming responses") and the types of the official
`ollama` SDK. What sets Ollama apart from the other schemas:

- `stream` is true unless the request says false; a stream is NDJSON (one JSON object a line),
  not SSE, and its last object has `done: true`, the `done_reason` and the token counts.
- Tool calls carry their arguments as a JSON object and arrive whole, never in pieces; they
  have no id (newer servers may send one, which is kept). A tool message names the tool it
  answers (`tool_name`), not a call id.
- Images are bare base64 strings in a message's `images`, without a media type.
- Sampling settings live in `options` (`num_predict` is the output token limit).
- There is no tool choice, and a response has no id.
- A reply's `thinking` (reasoning models) is not carried by the model and is skipped, as the
  Anthropic module skips thinking blocks; `thinking` in a request's history is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import Any, Final

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
    ToolChoiceMode,
    ToolResult,
    Unsupported,
    Usage,
    UsageUpdate,
    kind_of_status,
    merge_usage,
)

SCHEMA: Final = "ollama"
NAME: Final = "Ollama"

# One NDJSON line may not grow past this: a provider that never ends its line is cut off
# rather than held in memory without bound. A line carries one token or one whole tool call.
MAX_LINE_BYTES: Final = 1 << 20

_MODELLED: Final = frozenset({"model", "messages", "tools", "options", "stream"})
_GENERATE_MODELLED: Final = frozenset({"model", "prompt", "system", "images", "options", "stream"})
# Top-level extras that only manage the server (how long the model stays loaded).
_TAGS: Final = frozenset({"keep_alive"})
_MODELLED_OPTIONS: Final = frozenset({"num_predict", "temperature", "top_p", "stop"})
# Options that place or size the model on the server without changing what it samples
# (the Modelfile reference's runner parameters): another provider may go without them.
_RUNNER_OPTIONS: Final = frozenset(
    {
        "numa",
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "low_vram",
        "vocab_only",
        "use_mmap",
        "use_mlock",
        "num_thread",
    }
)

_STOP_REASONS: Final = {
    # Ollama says "stop" for a natural end, a stop sequence and a turn of tool calls alike.
    "stop": StopReason.END_TURN,
    "length": StopReason.MAX_TOKENS,
    # Answers to an empty request that only loads or unloads the model.
    "load": StopReason.END_TURN,
    "unload": StopReason.END_TURN,
}
_DONE_REASONS: Final = {
    StopReason.END_TURN: "stop",
    StopReason.STOP_SEQUENCE: "stop",
    StopReason.MAX_TOKENS: "length",
    StopReason.TOOL_USE: "stop",
    StopReason.CONTENT_FILTER: "stop",
    StopReason.ERROR: "stop",
}
# The first bytes of base64 image data → its media type (Ollama's images carry none).
_IMAGE_SIGNATURES: Final = (
    ("iVBORw0KGgo", "image/png"),
    ("/9j/", "image/jpeg"),
    ("R0lGOD", "image/gif"),
    ("UklGR", "image/webp"),
)
UNKNOWN_IMAGE_TYPE: Final = "application/octet-stream"


# --- requests ------------------------------------------------------------------------------


def decode_request(raw: bytes) -> ChatRequest:
    """An `/api/chat` request body → the model. Raises MalformedRequest or Unsupported."""
    fail = MalformedRequest
    body = load_object(raw, fail, "the request body")
    model = _model(body)
    system: list[str] = []
    messages: list[Message] = []
    # Calls of the latest assistant turn not answered yet, for tool messages that name a tool.
    pending: list[ToolCall] = []
    calls_seen = 0
    for position, item in enumerate(as_list(_none_empty(body.get("messages")), fail, "messages")):
        where = f"messages[{position}]"
        message = as_object(item, fail, where)
        role = message.get("role")
        content = opt_str(message.get("content"), fail, f"{where}.content") or ""
        images = _images(message.get("images"), f"{where}.images")
        if opt_str(message.get("thinking"), fail, f"{where}.thinking"):
            # The model has no reasoning blocks; dropping the history's would change the turn.
            raise Unsupported(f"'{where}.thinking' cannot be translated")
        if role == "system":
            if images:
                raise Unsupported(f"'{where}' is a system message with images")
            if not messages:
                system.append(content)
            else:
                messages.append(Message(Role.SYSTEM, (Text(content),)))
        elif role == "user":
            parts: list[Part] = [Text(content)] if content or not images else []
            messages.append(Message(Role.USER, (*parts, *images)))
        elif role == "assistant":
            if images:
                raise Unsupported(f"'{where}' is an assistant message with images")
            first = calls_seen
            calls = _tool_calls(
                message.get("tool_calls"),
                f"{where}.tool_calls",
                fail,
                _numbered(first),
            )
            calls_seen += len(calls)
            pending = list(calls)
            text: list[Part] = [Text(content)] if content else []
            messages.append(Message(Role.ASSISTANT, (*text, *calls)))
        elif role == "tool":
            if images:
                raise Unsupported(f"'{where}' is a tool message with images")
            result = ToolResult(_answered(message, pending, where), (Text(content),))
            last = messages[-1] if messages else None
            if last is not None and last.role is Role.USER and _all_results(last.content):
                messages[-1] = Message(Role.USER, (*last.content, result))
            else:
                messages.append(Message(Role.USER, (result,)))
        else:
            raise fail(f"'{where}.role' has an unknown value {quoted(str(role))}")
    options = _options(body.get("options"))
    extras = _extras(body, _MODELLED, options)
    return ChatRequest(
        model=model,
        messages=tuple(messages),
        system=tuple(system),
        tools=tuple(
            _tool(t, i)
            for i, t in enumerate(as_list(_none_empty(body.get("tools")), fail, "tools"))
        ),
        max_tokens=_max_tokens(options),
        temperature=opt_number(options.get("temperature"), fail, "options.temperature"),
        top_p=opt_number(options.get("top_p"), fail, "options.top_p"),
        stop=_stop(options.get("stop")),
        stream=_stream(body),
        extras=extras,
    )


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise MalformedRequest("'model' must be a non-empty string")
    return model


def _stream(body: dict[str, Any]) -> bool:
    # Ollama streams unless told not to (the API reference: "Streaming can be disabled").
    stream = opt_bool(body.get("stream"), MalformedRequest, "stream")
    return True if stream is None else stream


def _options(value: object) -> dict[str, Any]:
    return {} if value is None else as_object(value, MalformedRequest, "options")


def _stop(value: object) -> tuple[str, ...]:
    fail = MalformedRequest
    if isinstance(value, str):
        return (value,)
    return tuple(
        as_str(s, fail, "options.stop[]") for s in as_list(_none_empty(value), fail, "options.stop")
    )


def _extras(body: dict[str, Any], modelled: frozenset[str], options: dict[str, Any]) -> Extras:
    fields = {k: v for k, v in body.items() if k not in modelled}
    other_options = {
        k: v for k, v in options.items() if k not in _MODELLED_OPTIONS or _no_limit(k, v)
    }
    if other_options:
        fields["options"] = other_options
    essential = [k for k in fields if k not in _TAGS and k != "options"]
    essential += [
        f"options.{k}"
        for k, v in other_options.items()
        # num_predict -1 is no limit, Ollama's default and every other schema's.
        if k not in _RUNNER_OPTIONS and not (k == "num_predict" and v == -1)
    ]
    # The API's defaults: `format: ""` is free text, `think: false` no reasoning (what a
    # provider of another schema does unless asked); any other value changes the answer.
    for key, default in (("format", ""), ("think", False)):
        if key in fields and type(fields[key]) is type(default) and fields[key] == default:
            essential.remove(key)
    return Extras(schema=SCHEMA, fields=fields, essential=tuple(essential))


def _no_limit(key: str, value: object) -> bool:
    """`num_predict` below zero: -1 generates without limit, -2 until the context is full."""
    return key == "num_predict" and isinstance(value, int) and value < 0


def _max_tokens(options: dict[str, Any]) -> int | None:
    limit = opt_int(options.get("num_predict"), MalformedRequest, "options.num_predict")
    return None if limit is None or limit < 0 else limit


def _images(value: object, where: str) -> tuple[Image, ...]:
    fail = MalformedRequest
    return tuple(
        _image(as_str(item, fail, f"{where}[{position}]"))
        for position, item in enumerate(as_list(_none_empty(value), fail, where))
    )


def _image(data: str) -> Image:
    """A bare base64 image → a data URL, its media type recognised from the data's first
    bytes (the model's other schemas need one); encoding back to Ollama strips it again."""
    media_type = next(
        (kind for prefix, kind in _IMAGE_SIGNATURES if data.startswith(prefix)),
        UNKNOWN_IMAGE_TYPE,
    )
    return Image(url=f"data:{media_type};base64,{data}")


def _tool_calls(
    value: object, where: str, fail: Fail, default_id: Callable[[int], str]
) -> tuple[ToolCall, ...]:
    """Wire tool calls → ToolCalls; a call without an id (Ollama sends none) gets
    `default_id(its position)`."""
    calls = []
    for position, item in enumerate(as_list(_none_empty(value), fail, where)):
        at = f"{where}[{position}]"
        call = as_object(item, fail, at)
        function = as_object(call.get("function"), fail, f"{at}.function")
        arguments = function.get("arguments")
        call_id = opt_str(call.get("id"), fail, f"{at}.id")
        calls.append(
            ToolCall(
                id=call_id or default_id(position),
                name=as_str(function.get("name"), fail, f"{at}.function.name"),
                arguments=dumps(
                    as_object(or_empty(arguments), fail, f"{at}.function.arguments")
                ).decode(),
            )
        )
    return tuple(calls)


def _numbered(first: int) -> Callable[[int], str]:
    """Ids for the tool calls of a request, numbered through the conversation."""
    return lambda position: f"call_{first + position}"


def _answered(message: dict[str, Any], pending: list[ToolCall], where: str) -> str:
    """The id of the call a tool message answers: its `tool_call_id` when it has one, else the
    first pending call of the tool it names (`tool_name`), else the first pending call."""
    fail = MalformedRequest
    call_id = opt_str(message.get("tool_call_id"), fail, f"{where}.tool_call_id")
    name = opt_str(message.get("tool_name"), fail, f"{where}.tool_name")
    for call in pending:
        if call.id == call_id or (call_id is None and (name is None or call.name == name)):
            pending.remove(call)
            return call.id
    if call_id is not None:
        return call_id
    # Ollama only renders it into the prompt; the other schemas need the call it answers.
    raise Unsupported(f"'{where}' answers no tool call of the assistant message before it")


def _all_results(parts: tuple[Part, ...]) -> bool:
    return all(isinstance(part, ToolResult) for part in parts)


def _tool(item: object, position: int) -> Tool:
    fail = MalformedRequest
    at = f"tools[{position}]"
    tool = as_object(item, fail, at)
    if tool.get("type", "function") != "function":
        raise Unsupported(f"'{at}.type' {quoted(str(tool.get('type')))} cannot be translated")
    function = as_object(tool.get("function"), fail, f"{at}.function")
    return Tool(
        name=as_str(function.get("name"), fail, f"{at}.function.name"),
        description=opt_str(function.get("description"), fail, f"{at}.function.description"),
        parameters=as_object(
            function.get("parameters", {"type": "object", "properties": {}}),
            fail,
            f"{at}.function.parameters",
        ),
    )


def encode_request(request: ChatRequest) -> bytes:
    """The model → an `/api/chat` request body. Raises Unsupported for what Ollama cannot say
    (a tool choice other than auto, images by URL, images in tool results…)."""
    request.extras.refuse_in(SCHEMA, NAME)
    _refuse_tool_choice(request)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": text} for text in request.system
    ]
    names: dict[str, str] = {}
    for message in request.messages:
        messages.extend(_wire_messages(message, names))
    body: dict[str, Any] = {"model": request.model, "messages": messages}
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
    _put_options(body, request)
    # Always said: Ollama's default is to stream, every other schema's is not to.
    body["stream"] = request.stream
    return dumps(body)


def _refuse_tool_choice(request: ChatRequest) -> None:
    choice = request.tool_choice
    if choice is None:
        return
    if choice.mode is ToolChoiceMode.NONE and not request.tools:
        return
    if choice.mode is not ToolChoiceMode.AUTO:
        raise Unsupported(f"{NAME} cannot express the tool choice {choice.mode.value!r}")
    if choice.parallel is False:
        raise Unsupported(f"{NAME} cannot disable parallel tool calls")


def _put_options(body: dict[str, Any], request: ChatRequest) -> None:
    same_schema = request.extras.schema == SCHEMA
    options: dict[str, Any] = {}
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.top_p is not None:
        options["top_p"] = request.top_p
    if request.stop:
        options["stop"] = list(request.stop)
    if same_schema:
        kept = request.extras.fields.get("options")
        if isinstance(kept, dict):
            options.update(kept)
        for key, value in request.extras.fields.items():
            if key != "options":
                body.setdefault(key, value)
    if options:
        body["options"] = options


def _wire_messages(message: Message, names: dict[str, str]) -> list[dict[str, Any]]:
    """One model message → Ollama messages; `names` maps the call ids seen so far to their
    tool, which a tool message names."""
    if message.role is Role.SYSTEM:
        return [{"role": "system", "content": _only_text(message.content, "a system message")}]
    if message.role is Role.ASSISTANT:
        texts = []
        calls = []
        for part in message.content:
            if isinstance(part, Text):
                texts.append(part.text)
            elif isinstance(part, ToolCall):
                names[part.id] = part.name
                calls.append({"function": {"name": part.name, "arguments": _arguments(part)}})
            else:
                raise Unsupported(
                    f"{NAME} cannot carry an {type(part).__name__} in an assistant message"
                )
        wire: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
        if calls:
            wire["tool_calls"] = calls
        return [wire]
    out: list[dict[str, Any]] = []
    texts, images = [], []
    for part in message.content:
        if isinstance(part, ToolResult):
            text = _only_text(part.content, "a tool result")
            if part.is_error:
                # Ollama has no error flag on a tool message; say it in the text.
                text = f"Error: {text}"
            tool: dict[str, Any] = {"role": "tool", "content": text}
            name = names.get(part.tool_call_id)
            if name is not None:
                tool["tool_name"] = name
            out.append(tool)
        elif isinstance(part, Text):
            texts.append(part.text)
        elif isinstance(part, Image):
            images.append(_wire_image(part))
        else:
            raise Unsupported(f"{NAME} cannot carry a tool call in a user message")
    if texts or images:
        user: dict[str, Any] = {"role": "user", "content": "".join(texts)}
        if images:
            user["images"] = images
        out.append(user)
    return out


def _only_text(parts: tuple[Part, ...], what: str) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, Text):
            raise Unsupported(f"{NAME} cannot carry an {type(part).__name__} in {what}")
        texts.append(part.text)
    return "".join(texts)


def _wire_image(image: Image) -> str:
    if not image.url.startswith("data:"):
        raise Unsupported(f"{NAME} takes images as inline base64 data only, not by URL")
    header, _, data = image.url[5:].partition(",")
    if not header.endswith(";base64"):
        raise Unsupported(f"{NAME} takes inline images as base64 data only")
    return data


def _arguments(call: ToolCall) -> dict[str, Any]:
    """A tool call's arguments as the JSON object Ollama wants (empty text is no argument)."""
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


# --- /api/generate requests ----------------------------------------------------------------


def decode_generate_request(raw: bytes) -> ChatRequest:
    """An `/api/generate` request body → the model: one user turn of the prompt (and images),
    `system` as the system prompt. `raw`, `template`, `suffix` and `context` shape the prompt
    in ways no chat schema can say, so they are essential extras."""
    fail = MalformedRequest
    body = load_object(raw, fail, "the request body")
    model = _model(body)
    prompt = as_str(body.get("prompt", ""), fail, "prompt")
    images = _images(body.get("images"), "images")
    system = opt_str(body.get("system"), fail, "system")
    options = _options(body.get("options"))
    extras = _extras(body, _GENERATE_MODELLED, options)
    if body.get("raw") is False:
        extras = Extras(SCHEMA, extras.fields, tuple(k for k in extras.essential if k != "raw"))
    parts: list[Part] = [Text(prompt)] if prompt or not images else []
    return ChatRequest(
        model=model,
        messages=(Message(Role.USER, (*parts, *images)),) if parts or images else (),
        system=(system,) if system else (),
        max_tokens=_max_tokens(options),
        temperature=opt_number(options.get("temperature"), fail, "options.temperature"),
        top_p=opt_number(options.get("top_p"), fail, "options.top_p"),
        stop=_stop(options.get("stop")),
        stream=_stream(body),
        extras=extras,
    )


def encode_generate_request(request: ChatRequest) -> bytes:
    """The model → an `/api/generate` request body; only a single user turn of text and
    images (with at most one system prompt) and no tools fits one."""
    request.extras.refuse_in(SCHEMA, NAME)
    if request.tools or request.tool_choice is not None:
        raise Unsupported(f"{NAME} /api/generate cannot take tools")
    if len(request.system) > 1:
        raise Unsupported(f"{NAME} /api/generate takes one system prompt")
    if len(request.messages) > 1 or any(m.role is not Role.USER for m in request.messages):
        raise Unsupported(f"{NAME} /api/generate takes a single user prompt, not a conversation")
    texts, images = [], []
    for part in request.messages[0].content if request.messages else ():
        if isinstance(part, Text):
            texts.append(part.text)
        elif isinstance(part, Image):
            images.append(_wire_image(part))
        else:
            raise Unsupported(f"{NAME} /api/generate cannot carry a {type(part).__name__}")
    body: dict[str, Any] = {"model": request.model, "prompt": "".join(texts)}
    if request.system:
        body["system"] = request.system[0]
    if images:
        body["images"] = images
    _put_options(body, request)
    body["stream"] = request.stream
    return dumps(body)


# --- responses -----------------------------------------------------------------------------


def response_id(model: str, created_at: str) -> str:
    """Ollama answers carry no id; the model needs one, so it is derived from what identifies
    the answer (its model and its nanosecond timestamp): the same answer always gets the same."""
    digest = hashlib.blake2b(f"{model}\0{created_at}".encode(), digest_size=12).hexdigest()
    return f"ollama-{digest}"


def _call_id(message_id: str, position: int) -> str:
    return f"call_{message_id.removeprefix('ollama-')[:16]}_{position}"


def decode_response(raw: bytes) -> ChatResponse:
    """An `/api/chat` answer (`stream: false`) → the model. Raises MalformedResponse."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    model = as_str(body.get("model"), fail, "model")
    created_at = as_str(body.get("created_at", ""), fail, "created_at")
    identity = response_id(model, created_at)
    message = as_object(body.get("message"), fail, "message")
    content: list[Text | ToolCall] = []
    text = opt_str(message.get("content"), fail, "message.content")
    if text:
        content.append(Text(text))
    content.extend(
        _tool_calls(
            message.get("tool_calls"), "message.tool_calls", fail, lambda p: _call_id(identity, p)
        )
    )
    return _response(body, identity, model, tuple(content))


def _response(
    body: dict[str, Any], identity: str, model: str, content: tuple[Text | ToolCall, ...]
) -> ChatResponse:
    fail = MalformedResponse
    done = opt_bool(body.get("done"), fail, "done")
    reason = _stop_reason(body.get("done_reason"), done)
    if reason is StopReason.END_TURN and any(isinstance(p, ToolCall) for p in content):
        reason = StopReason.TOOL_USE
    return ChatResponse(
        id=identity,
        model=model,
        content=content,
        stop_reason=reason,
        usage=usage_of(body) if done else None,
    )


def _stop_reason(value: object, done: bool | None) -> StopReason | None:
    reason = opt_str(value, MalformedResponse, "done_reason")
    if reason is None:
        # Older servers end without a reason; that end is a natural one.
        return StopReason.END_TURN if done else None
    stop: StopReason = one_of(reason, _STOP_REASONS, MalformedResponse, "done_reason")
    return stop


def usage_of(body: dict[str, Any]) -> Usage:
    """The token counts of a final object: `prompt_eval_count` in, `eval_count` out."""
    fail = MalformedResponse
    return Usage(
        input_tokens=count(body.get("prompt_eval_count"), fail, "prompt_eval_count"),
        output_tokens=count(body.get("eval_count"), fail, "eval_count"),
    )


def _final_fields(reason: StopReason | None, usage: Usage | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"done_reason": _DONE_REASONS[reason or StopReason.END_TURN]}
    fields["done"] = True
    if usage is not None:
        fields["prompt_eval_count"] = usage.input_tokens
        fields["eval_count"] = usage.output_tokens
    return fields


def encode_response(response: ChatResponse, *, created_at: str) -> bytes:
    """The model → an `/api/chat` answer; `created_at` is the RFC 3339 time to stamp it with.
    Ollama's durations are the server's own timings and are not invented."""
    texts = [part.text for part in response.content if isinstance(part, Text)]
    calls = [
        {"function": {"name": p.name, "arguments": _arguments(p)}}
        for p in response.content
        if isinstance(p, ToolCall)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    body: dict[str, Any] = {"model": response.model, "created_at": created_at, "message": message}
    body.update(_final_fields(response.stop_reason, response.usage))
    return dumps(body)


def decode_generate_response(raw: bytes) -> ChatResponse:
    """An `/api/generate` answer (`stream: false`) → the model."""
    fail = MalformedResponse
    body = load_object(raw, fail, "the response body")
    model = as_str(body.get("model"), fail, "model")
    identity = response_id(model, as_str(body.get("created_at", ""), fail, "created_at"))
    text = opt_str(body.get("response"), fail, "response")
    return _response(body, identity, model, (Text(text),) if text else ())


def encode_generate_response(response: ChatResponse, *, created_at: str) -> bytes:
    """The model → an `/api/generate` answer; a response with tool calls has no such form."""
    if any(isinstance(part, ToolCall) for part in response.content):
        raise Unsupported(f"{NAME} /api/generate cannot carry tool calls")
    text = "".join(part.text for part in response.content if isinstance(part, Text))
    body: dict[str, Any] = {"model": response.model, "created_at": created_at, "response": text}
    body.update(_final_fields(response.stop_reason, response.usage))
    return dumps(body)


# --- streams -------------------------------------------------------------------------------


class NdjsonSplitter:
    """Feeds raw chunks in, yields whole lines (without their newline) out; blank lines are
    dropped. A line cut by a chunk boundary is held until the rest arrives, up to
    `max_line_bytes`, past which the stream is malformed (a bounded buffer)."""

    __slots__ = ("_max", "_tail")

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._tail = b""
        self._max = max_line_bytes

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._tail + chunk if self._tail else chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > self._max:
            self._tail = b""
            raise MalformedResponse(f"an NDJSON line is longer than {self._max} bytes")
        return [line for line in lines if line.strip()]

    def flush(self) -> bytes:
        tail, self._tail = self._tail, b""
        return tail


class StreamDecoder:
    """Ollama NDJSON bytes, cut anywhere → model events, incrementally.

    Each line is parsed once. Text pieces form one block; each tool call, arriving whole, is a
    block of its own (start, its arguments in one piece, stop). The object with `done: true`
    ends the stream with the stop reason and the usage. `generate`: the lines are
    `/api/generate` objects (text in `response`) rather than `/api/chat` ones.
    """

    __slots__ = ("_blocks", "_calls", "_generate", "_id", "_lines", "_open", "_started")

    def __init__(self, *, generate: bool = False) -> None:
        self._lines = NdjsonSplitter()
        self._generate = generate
        self._started = False
        self._id = ""
        self._blocks = 0
        self._calls = 0
        self._open: int | None = None

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        for line in self._lines.feed(chunk):
            self._decode(line, out)
        return out

    def finish(self) -> list[StreamEvent]:
        """The events of a last line the stream did not end with a newline."""
        out: list[StreamEvent] = []
        tail = self._lines.flush()
        if tail.strip():
            self._decode(tail, out)
        return out

    def _decode(self, line: bytes, out: list[StreamEvent]) -> None:
        fail = MalformedResponse
        body = load_object(line, fail, "a stream line")
        if "error" in body:
            out.append(StreamError(_error_info(500, body, None)))
            return
        if not self._started:
            self._started = True
            model = as_str(body.get("model"), fail, "model")
            self._id = response_id(model, as_str(body.get("created_at", ""), fail, "created_at"))
            out.append(MessageStart(id=self._id, model=model))
        if self._generate:
            text = opt_str(body.get("response"), fail, "response")
            wire_calls: object = None
        else:
            message = as_object(or_empty(body.get("message")), fail, "message")
            text = opt_str(message.get("content"), fail, "message.content")
            wire_calls = message.get("tool_calls")
        if text:
            if self._open is None:
                self._open = self._blocks
                self._blocks += 1
            out.append(TextDelta(self._open, text))
        first = self._calls
        calls = _tool_calls(
            wire_calls, "message.tool_calls", fail, lambda p: _call_id(self._id, first + p)
        )
        for call in calls:
            self._close(out)
            index = self._blocks
            self._blocks += 1
            self._calls += 1
            out.append(ToolCallStart(index, call.id, call.name))
            out.append(ToolCallDelta(index, call.arguments))
            out.append(BlockStop(index))
        if opt_bool(body.get("done"), fail, "done"):
            self._close(out)
            reason = _stop_reason(body.get("done_reason"), True)
            if reason is StopReason.END_TURN and self._calls:
                reason = StopReason.TOOL_USE
            out.append(MessageDelta(stop_reason=reason, usage=usage_of(body)))
            out.append(MessageStop())

    def _close(self, out: list[StreamEvent]) -> None:
        if self._open is not None:
            out.append(BlockStop(self._open))
            self._open = None


class StreamEncoder:
    """Model events → Ollama NDJSON bytes, as Ollama streams them: a line per text piece, a
    line per tool call (held until its block stops, since Ollama sends calls whole), and a
    final line with `done: true`, `done_reason` and the token counts.

    `created_at` is the RFC 3339 time stamped on every line. `generate`: write
    `/api/generate` lines (text in `response`), which cannot carry tool calls.
    """

    __slots__ = ("_call", "_created_at", "_delta", "_generate", "_model", "_usage")

    def __init__(self, *, created_at: str, generate: bool = False) -> None:
        self._created_at = created_at
        self._generate = generate
        self._model = ""
        self._call: tuple[int, str, list[str]] | None = None
        self._delta: MessageDelta | None = None
        self._usage: Usage | None = None

    def encode(self, events: Iterable[StreamEvent]) -> bytes:
        """The NDJSON bytes of several events, in order."""
        return b"".join(self.encode_one(event) for event in events)

    def encode_one(self, event: StreamEvent) -> bytes:
        if isinstance(event, TextDelta):
            return self._line({"role": "assistant", "content": event.text}, event.text)
        if isinstance(event, ToolCallDelta):
            if self._call is not None and self._call[0] == event.index:
                self._call[2].append(event.partial_json)
            return b""
        if isinstance(event, ToolCallStart):
            if self._generate:
                raise Unsupported(f"{NAME} /api/generate cannot carry tool calls")
            closing = self._flush_call()
            self._call = (event.index, event.name, [])
            return closing
        if isinstance(event, BlockStop):
            return self._flush_call() if self._call and self._call[0] == event.index else b""
        if isinstance(event, MessageStart):
            self._model = event.model
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageDelta):
            self._delta = event
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, UsageUpdate):
            self._usage = merge_usage(self._usage, event.usage)
            return b""
        if isinstance(event, MessageStop):
            closing = self._flush_call()
            reason = self._delta.stop_reason if self._delta is not None else None
            final = self._body({"role": "assistant", "content": ""}, "")
            final.update(_final_fields(reason, self._usage or Usage()))
            return closing + dumps(final) + b"\n"
        return encode_error(event.error) + b"\n"

    def _flush_call(self) -> bytes:
        if self._call is None:
            return b""
        _, name, pieces = self._call
        self._call = None
        call = ToolCall("", name, "".join(pieces))
        try:
            arguments = _arguments(call)
        except Unsupported:
            raise MalformedResponse(
                f"the streamed arguments of tool call {quoted(name)} are not a JSON object"
            ) from None
        message = {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": name, "arguments": arguments}}],
        }
        return self._line(message, "")

    def _body(self, message: dict[str, Any], text: str) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "created_at": self._created_at}
        if self._generate:
            body["response"] = text
        else:
            body["message"] = message
        return body

    def _line(self, message: dict[str, Any], text: str) -> bytes:
        body = self._body(message, text)
        body["done"] = False
        return dumps(body) + b"\n"


# --- errors --------------------------------------------------------------------------------


def decode_error(status: int, raw: bytes, retry_after: str | None = None) -> ErrorInfo:
    """An error answer (`{"error": "..."}`) → ErrorInfo, its kind from the status (Ollama's
    body says nothing more); a body of another shape still gives one from the status alone."""
    try:
        body = load_object(raw, MalformedResponse, "the error body")
    except MalformedResponse:
        body = {}
    return _error_info(status, body, retry_after)


def _error_info(status: int, body: dict[str, Any], retry_after: str | None) -> ErrorInfo:
    message = body.get("error")
    return ErrorInfo(
        status=status,
        kind=kind_of_status(status),
        message=message if isinstance(message, str) else f"the provider answered {status}",
        retry_after_s=retry_after_seconds(retry_after),
    )


def encode_error(error: ErrorInfo) -> bytes:
    """ErrorInfo → an Ollama error body (send it with `error.status`)."""
    return dumps({"error": error.message})


def _none_empty(value: object) -> object:
    return [] if value is None else value
