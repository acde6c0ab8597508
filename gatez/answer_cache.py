"""The answer cache's pure parts: what a chat request is keyed by, and what is kept of an answer.

**Keys.** `fingerprint` reduces a request (`ChatRequest`, whatever client schema it came in) to
canonical JSON and hashes it:

- `exact`: the model alias, the system prompt, the tools (name, description, parameters), the
  tool choice, every message (role and parts; text with its whitespace collapsed, tool-call ids
  renumbered in order of appearance, tool arguments as sorted JSON), temperature, top_p, the
  stop sequences (as a set) and the request's essential extras (those of its own schema that
  change the answer: `response_format`, `seed`…). Not `max_tokens` and not `stream`: a streamed
  and a plain request share an entry, and so do an OpenAI and an Anthropic client asking the
  same thing of the same alias. Tag-like extras (`user`, `metadata`) do not count.
- `scope`: the same without the last user message, which is kept as `question` — what the
  semantic tier compares. Two requests may share an answer by similarity only when their
  scopes are equal: the same alias, system prompt, tools, sampling and earlier turns.

**What is not cached** (`Fingerprint.why_not`):
- turns whose history holds tool calls or tool results (agentic traffic: the answer depends on
  what a tool returned), unless the policy sets `cache_tool_calls`;
- requests with no user message, or whose last user message has no text;
- non-deterministic sampling, unless the policy sets `cache_sampled`: a temperature above 0 or
  a top_p below 1 set explicitly, several candidates (`n`, `candidateCount` > 1) or top-k
  sampling (`top_k` other than 1). An UNSET temperature counts as deterministic, although
  most providers then sample at 1.0: nearly every client leaves it unset, and a cache that
  never answered them would be useless. A tenant who wants fresh samples sends
  `Cache-Control: no-cache` or turns the cache off for the route;
- requests whose answer holds what the shared model cannot keep (log-probabilities, thinking,
  audio, web-search annotations): a replay would silently lack it.

**Answers.** `CachedAnswer` holds a `ChatResponse` — text and tool calls, stop reason and
sequence, model, usage — as compact JSON bytes (orjson). Only finished answers are kept: an
END_TURN or STOP_SEQUENCE stop (TOOL_USE only when tool calls are cached), with content.
`CachedAnswer.events` replays one as the stream events a schema's encoder turns into the
client's SSE or NDJSON; `StreamedAnswer` gathers a provider's stream back into an answer.

Redis keys are `{tenant_id}:cache:answer:<exact digest>`; `{tenant_id}` is a Redis Cluster
hash tag (so a tenant id must not contain braces, as for the budgets).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from itertools import pairwise
from typing import Any, Final

import orjson

from gatez.guardrails import CacheSettings
from gatez.translate.model import (
    BlockStop,
    ChatRequest,
    ChatResponse,
    Image,
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
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    ToolChoiceMode,
    ToolResult,
    Usage,
    UsageUpdate,
    merge_usage,
)

# Changes when what a digest covers changes, so old entries are never read as new ones.
KEY_VERSION: Final = b"gatez-answer-cache/1"
FORMAT_VERSION: Final = 1
# An answer larger than this (serialised) is not kept: it would crowd Redis out.
MAX_ANSWER_BYTES: Final = 512 * 1024
# Words per text delta when a cached answer is replayed as a stream.
WORDS_PER_DELTA: Final = 4

# Essential extras (by their last name segment, lower-cased) that ask for several candidates
# or for top-k sampling; 1 is the deterministic value of each.
_CANDIDATES: Final = frozenset({"n", "candidatecount", "best_of"})
_TOP_K: Final = frozenset({"top_k", "topk"})
# Essential extras that add to the answer what the shared model does not keep.
_UNREPRESENTABLE: Final = frozenset(
    {
        "logprobs",
        "top_logprobs",
        "responselogprobs",
        "thinking",
        "think",
        "thinkingconfig",
        "audio",
        "modalities",
        "responsemodalities",
        "web_search_options",
    }
)
_WORD: Final = re.compile(r"\S+")


class Bypass(StrEnum):
    """Why a request is neither answered from nor written to the cache."""

    TOOL_CALLS = "tool_calls"
    NO_QUESTION = "no_question"
    SAMPLED = "sampled"
    UNREPRESENTABLE = "unrepresentable"


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """A request's cache keys (hex SHA-256 digests) and its question (see the module doc)."""

    exact: str
    scope: str
    # The last user message's text, whitespace collapsed; "" when it has parts other than
    # text (an image): similarity of the words alone would not be similarity of the question.
    question: str
    why_not: Bypass | None = None

    @property
    def cacheable(self) -> bool:
        return self.why_not is None


def answer_key(tenant_id: str, exact: str) -> str:
    """The Redis key of a tenant's cached answer to the request whose exact digest is `exact`."""
    return f"{{{tenant_id}}}:cache:answer:{exact}"


def answer_key_pattern(tenant_id: str) -> str:
    """A SCAN pattern matching every cached answer of a tenant (to purge them)."""
    tenant = re.sub(r"([*?\[\]\\])", r"\\\1", tenant_id)
    return f"{{{tenant}}}:cache:answer:*"


def fingerprint(
    request: ChatRequest, *, alias: str, settings: CacheSettings, variant: str = ""
) -> Fingerprint:
    """The cache keys of `request` sent to the model alias `alias` (see the module doc).
    `variant` separates answers written under different rules of their own (the tenant's output
    redaction: an answer kept before it was turned on must not be served after)."""
    messages = request.messages
    last_user = next(
        (i for i in range(len(messages) - 1, -1, -1) if messages[i].role is Role.USER), None
    )
    ids: dict[str, int] = {}
    turns: list[Any] = []
    has_tools = False
    for position, message in enumerate(messages):
        if position == last_user:
            # Its place in the conversation stays in the scope; its content does not.
            turns.append("question")
            continue
        turns.append(_message(message, ids))
        has_tools = has_tools or _has_tool_parts(message)
    scope_json = orjson.dumps(
        [
            alias,
            variant,
            _text(" ".join(request.system)),
            [[t.name, t.description or "", t.parameters] for t in request.tools],
            _tool_choice(request),
            turns,
            None if request.temperature is None else float(request.temperature),
            None if request.top_p is None or request.top_p >= 1 else float(request.top_p),
            sorted(set(request.stop)),
            _essential(request),
        ],
        option=orjson.OPT_SORT_KEYS,
    )
    scope = hashlib.sha256(KEY_VERSION + b"\0scope\0" + scope_json)
    question_message = messages[last_user] if last_user is not None else None
    exact = scope.copy()
    if question_message is not None:
        exact.update(b"\0question\0")
        exact.update(orjson.dumps(_message(question_message, ids), option=orjson.OPT_SORT_KEYS))
        has_tools = has_tools or _has_tool_parts(question_message)
    question = ""
    if question_message is not None:
        texts = [part.text for part in question_message.content if isinstance(part, Text)]
        if len(texts) == len(question_message.content):
            question = _text(" ".join(texts))
    return Fingerprint(
        exact=exact.hexdigest(),
        scope=scope.hexdigest(),
        question=question,
        why_not=_why_not(request, question_message, has_tools, settings),
    )


def _why_not(
    request: ChatRequest, question: Message | None, has_tools: bool, settings: CacheSettings
) -> Bypass | None:
    if has_tools and not settings.cache_tool_calls:
        return Bypass.TOOL_CALLS
    if question is None:
        return Bypass.NO_QUESTION
    if not any(isinstance(part, Text) and part.text.strip() for part in question.content) and not (
        settings.cache_tool_calls and any(isinstance(part, ToolResult) for part in question.content)
    ):
        return Bypass.NO_QUESTION
    unrepresentable, sampled = _extras_kind(request)
    if unrepresentable:
        return Bypass.UNREPRESENTABLE
    if not settings.cache_sampled and (
        sampled
        or (request.temperature is not None and request.temperature > 0)
        or (request.top_p is not None and request.top_p < 1)
    ):
        return Bypass.SAMPLED
    return None


def _extras_kind(request: ChatRequest) -> tuple[bool, bool]:
    """(an essential extra adds what the model cannot keep, one samples non-deterministically)."""
    unrepresentable = sampled = False
    for name, value in _essential_items(request):
        leaf = name.rpartition(".")[2].lower()
        if leaf in _UNREPRESENTABLE and value not in (None, False, 0, "", [], {}):
            unrepresentable = True
        elif (leaf in _CANDIDATES or leaf in _TOP_K) and value != 1:
            sampled = True
    return unrepresentable, sampled


def _essential_items(request: ChatRequest) -> Iterable[tuple[str, Any]]:
    """The essential extras by name (`generationConfig.topK` read inside its object)."""
    fields = request.extras.fields
    for name in request.extras.essential:
        head, _, rest = name.partition(".")
        value = fields.get(head)
        if rest:
            value = value.get(rest) if isinstance(value, Mapping) else None
        yield name, value


def _essential(request: ChatRequest) -> list[Any]:
    if not request.extras.essential:
        return []
    # Named in their own schema's terms: requests of two schemas share an entry only when
    # neither has any.
    return [request.extras.schema, sorted(_essential_items(request), key=lambda item: item[0])]


def _tool_choice(request: ChatRequest) -> list[Any] | None:
    choice = request.tool_choice
    if choice is None or (choice.mode is ToolChoiceMode.AUTO and choice.parallel is None):
        return None  # auto is every schema's default
    return [choice.mode.value, choice.name, choice.parallel]


def _message(message: Message, ids: dict[str, int]) -> list[Any]:
    parts: list[Any] = []
    texts: list[str] = []
    for part in message.content:
        if isinstance(part, Text):
            # Adjacent text parts are one text (a string and a list of text parts mean the same).
            texts.append(part.text)
            continue
        if texts:
            parts.append(["text", _text(" ".join(texts))])
            texts = []
        parts.append(_part(part, ids))
    if texts:
        parts.append(["text", _text(" ".join(texts))])
    return [message.role.value, parts]


def _part(part: Part, ids: dict[str, int]) -> list[Any]:
    if isinstance(part, Image):
        return ["image", part.url, part.detail]
    if isinstance(part, ToolCall):
        # Ids are the provider's own, different on every call: only their pairing counts.
        return ["tool_call", ids.setdefault(part.id, len(ids)), part.name, _json(part.arguments)]
    if isinstance(part, ToolResult):
        content = [
            ["text", _text(p.text)] if isinstance(p, Text) else ["image", p.url, p.detail]
            for p in part.content
        ]
        return ["tool_result", ids.setdefault(part.tool_call_id, len(ids)), content, part.is_error]
    return ["text", _text(part.text)]


def _has_tool_parts(message: Message) -> bool:
    return any(isinstance(part, ToolCall | ToolResult) for part in message.content)


def _text(text: str) -> str:
    return " ".join(text.split())


def _json(text: str) -> Any:
    """A tool call's arguments as a value, so `{"a": 1}` and `{"a":1}` are one key."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return _text(text)


# --- answers -----------------------------------------------------------------------------------


class NotStorable(StrEnum):
    """Why an answer is not kept."""

    UNFINISHED = "unfinished"
    TOOL_USE = "tool_use"
    EMPTY = "empty"
    TOO_LARGE = "too_large"


_STORED_STOPS: Final = frozenset({StopReason.END_TURN, StopReason.STOP_SEQUENCE})


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """An answer as the cache keeps it (see the module doc)."""

    response: ChatResponse

    @staticmethod
    def refusal(response: ChatResponse, *, cache_tool_calls: bool) -> NotStorable | None:
        """Why `response` must not be kept (None: it may)."""
        stop = response.stop_reason
        if stop is StopReason.TOOL_USE:
            if not cache_tool_calls:
                return NotStorable.TOOL_USE
        elif stop not in _STORED_STOPS:
            return NotStorable.UNFINISHED
        if not any(
            part.text.strip() if isinstance(part, Text) else part.name for part in response.content
        ):
            return NotStorable.EMPTY
        return None

    def to_bytes(self) -> bytes:
        response = self.response
        usage = response.usage
        return orjson.dumps(
            {
                "v": FORMAT_VERSION,
                "id": response.id,
                "model": response.model,
                "stop": None if response.stop_reason is None else response.stop_reason.value,
                "seq": response.stop_sequence,
                "content": [
                    ["t", part.text]
                    if isinstance(part, Text)
                    else ["f", part.id, part.name, part.arguments]
                    for part in response.content
                ],
                "usage": None
                if usage is None
                else [
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cached_input_tokens,
                    usage.cache_write_input_tokens,
                ],
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> CachedAnswer:
        """Raises ValueError for bytes this version did not write."""
        try:
            body = orjson.loads(raw)
            if body["v"] != FORMAT_VERSION:
                raise ValueError(f"cached answer format {body['v']!r}")
            content: list[Text | ToolCall] = []
            for part in body["content"]:
                if part[0] == "t":
                    content.append(Text(str(part[1])))
                else:
                    content.append(ToolCall(str(part[1]), str(part[2]), str(part[3])))
            usage = body["usage"]
            stop = body["stop"]
            return cls(
                ChatResponse(
                    id=str(body["id"]),
                    model=str(body["model"]),
                    content=tuple(content),
                    stop_reason=None if stop is None else StopReason(stop),
                    usage=None if usage is None else Usage(*(int(n) for n in usage)),
                    stop_sequence=body["seq"],
                )
            )
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError) as error:
            raise ValueError(f"not a cached answer: {error}") from None

    def events(self, *, include_usage: bool) -> list[StreamEvent]:
        """The answer as a stream: MessageStart, text in pieces of a few words, each tool call
        whole, the stop reason with the usage (and the usage alone when `include_usage`: the
        client asked for OpenAI's usage chunk), MessageStop."""
        response = self.response
        usage = response.usage
        opening = (
            None
            if usage is None
            else Usage(
                usage.input_tokens, 0, usage.cached_input_tokens, usage.cache_write_input_tokens
            )
        )
        events: list[StreamEvent] = [MessageStart(response.id, response.model, opening)]
        for index, part in enumerate(response.content):
            if isinstance(part, Text):
                events.extend(TextDelta(index, piece) for piece in _pieces(part.text))
            else:
                events.append(ToolCallStart(index, part.id, part.name))
                if part.arguments:
                    events.append(ToolCallDelta(index, part.arguments))
            events.append(BlockStop(index))
        events.append(MessageDelta(response.stop_reason, response.stop_sequence, usage))
        if include_usage and usage is not None:
            events.append(UsageUpdate(usage))
        events.append(MessageStop())
        return events


def _pieces(text: str) -> list[str]:
    """`text` cut before every WORDS_PER_DELTA-th word; the pieces join back to `text`."""
    starts = [match.start() for match in _WORD.finditer(text)][WORDS_PER_DELTA::WORDS_PER_DELTA]
    return [text[a:b] for a, b in pairwise([0, *starts, len(text)]) if b > a] or [text]


@dataclass(slots=True)
class _Block:
    text: list[str] = field(default_factory=list)
    # A tool call's id and name (None for text).
    call: tuple[str, str] | None = None


@dataclass(slots=True)
class StreamedAnswer:
    """A provider's stream gathered back into a whole answer, event by event.

    `answer()` gives it once the stream ended normally (MessageStop); never after a
    StreamError, nor past `max_chars` of content.
    """

    max_chars: int = MAX_ANSWER_BYTES
    id: str = ""
    model: str = ""
    blocks: dict[int, _Block] = field(default_factory=dict)
    stop_reason: StopReason | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None
    chars: int = 0
    ended: bool = False
    broken: bool = False

    def feed(self, events: Iterable[StreamEvent]) -> None:
        if self.broken:
            return
        for event in events:
            if isinstance(event, TextDelta):
                self._add(event.index, None, event.text)
            elif isinstance(event, ToolCallDelta):
                self._add(event.index, None, event.partial_json)
            elif isinstance(event, ToolCallStart):
                self._add(event.index, (event.id, event.name), "")
            elif isinstance(event, MessageStart):
                self.id, self.model = event.id, event.model
                self.usage = merge_usage(self.usage, event.usage)
            elif isinstance(event, MessageDelta):
                self.stop_reason = event.stop_reason
                self.stop_sequence = event.stop_sequence
                self.usage = merge_usage(self.usage, event.usage)
            elif isinstance(event, UsageUpdate):
                self.usage = merge_usage(self.usage, event.usage)
            elif isinstance(event, MessageStop):
                self.ended = True
            elif isinstance(event, StreamError):
                self.broken = True
                return

    def _add(self, index: int, call: tuple[str, str] | None, text: str) -> None:
        block = self.blocks.get(index)
        if block is None:
            block = self.blocks[index] = _Block()
        if call is not None:
            block.call = call
        if text:
            block.text.append(text)
            self.chars += len(text)
            if self.chars > self.max_chars:
                self.broken = True

    def answer(self) -> ChatResponse | None:
        if not self.ended or self.broken:
            return None
        content: list[Text | ToolCall] = []
        for _, block in sorted(self.blocks.items()):
            joined = "".join(block.text)
            if block.call is None:
                content.append(Text(joined))
            else:
                content.append(ToolCall(block.call[0], block.call[1], joined))
        return ChatResponse(
            id=self.id,
            model=self.model,
            content=tuple(content),
            stop_reason=self.stop_reason,
            usage=self.usage,
            stop_sequence=self.stop_sequence,
        )
