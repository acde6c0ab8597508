"""PII redaction in the LLM pipeline: prompts before any provider sees them, answers before the
client does. `gatez.pii` finds and replaces; this module decides what is scanned and when.

`RedactPrompt` runs in the request-body phase before model routing, so routing, translation,
the cache key, budgets and a fallback's re-run all see the redacted body. For a tenant whose
PII policy scans prompts it parses the body once (the parse model routing then uses) and walks
the fields that carry prompt text in the client's API: the messages, system prompts, Responses
and embeddings `input`, Ollama's `prompt`. Inside them every string is scanned but those that
are structure — model, roles, ids, type tags, names — and media: images, documents, audio and
files (base64 data, `data:` and file URLs), which are skipped by their field name, and any string
that is a `data:` URL. In tool-call arguments and tool results every string is scanned, whatever
its field name (they are the caller's data); OpenAI's arguments, JSON in a string, are parsed
and written back only when something in them was replaced. Signed or encrypted
reasoning echoed back (Anthropic's thinking blocks, Bedrock's reasoning content, Responses'
`encrypted_content`) is left as it is: the provider verifies it, so a changed one is refused.
Tool definitions (their JSON schemas) are outside the walked fields. A BLOCK type found refuses
the request (`PiiBlocked`: 400 in the client's schema naming the types, never the values).

`RedactAnswer` makes the answer be written from the shared model (`LlmCall.reencode`) for a
tenant that scans output, so it can be changed even when client and provider speak one schema
(the price: provider-specific extras of the answer, such as OpenAI's `system_fingerprint` or
`logprobs`, are not in the model and do not reach the client). Between `DecodeResponse` and
`EncodeResponse` it redacts a whole answer's text and tool-call arguments, and a stream's text
through one `StreamRedactor` per block: text is given to it in steps of `STREAM_STEP_CHARS`,
each step releases what lies further back than the look-behind window (`STREAM_WINDOW_CHARS`),
and the rest is released when the block ends, another block starts or the stream ends — an
entity split across chunks is still caught. A streamed tool
call's arguments are held until the end of their block and redacted as JSON (their text, cut
anywhere, cannot be redacted safely: a replacement could land inside a JSON escape). On output
BLOCK acts as REPLACE: what was streamed cannot be taken back. Passed-through APIs (OpenAI
Responses, Embeddings) are not scanned on output.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

import orjson

from extproc.stages.client_api import Endpoint, Operation
from gatez.errors import InvalidRequest
from gatez.guardrails import PiiRules
from gatez.pipeline import CONTINUE, Flow, Stage, Verdict
from gatez.translate.model import (
    ChatResponse,
    StreamEvent,
    Text,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Unsupported,
)
from gatez.translate.schemas import (
    ANTHROPIC_MESSAGES,
    BEDROCK_CONVERSE,
    GEMINI,
    OLLAMA_CHAT,
    OLLAMA_GENERATE,
    OPENAI_CHAT,
)

if TYPE_CHECKING:
    # gatez.pii (Presidio) is imported by the policy compile when a tenant has PII rules, and
    # only then reached from here (see gatez.guardrails).
    from gatez.pii import Action, PiiScanner, StreamRedactor

# The shortest text any recognizer reports: "::", the unspecified IPv6 address.
MIN_ENTITY_CHARS: Final = 2
# How much of a streamed answer is held back (PiiPolicy.scan_output documents 128).
STREAM_WINDOW_CHARS: Final = 128
# Streamed text reaches the redactor in steps of at least this many characters: each step
# rescans the window and its context (~250 characters), so a step per 4-character token would
# cost ~190 µs of CPU per chunk (bench/pii_stages.py); steps of 32 cost an eighth of that, and
# release text 32 characters at a time.
STREAM_STEP_CHARS: Final = 32

# The top-level fields that carry prompt text, per client schema (chat) or operation.
_CHAT_PROMPT_FIELDS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        OPENAI_CHAT.id: ("messages", "prediction"),
        ANTHROPIC_MESSAGES.id: ("system", "messages"),
        # Gemini's REST API takes proto field names too.
        GEMINI.id: ("contents", "systemInstruction", "system_instruction"),
        OLLAMA_CHAT.id: ("messages",),
        OLLAMA_GENERATE.id: ("prompt", "system", "suffix"),
        BEDROCK_CONVERSE.id: ("system", "messages", "promptVariables"),
    }
)
_PASSTHROUGH_PROMPT_FIELDS: Final[Mapping[Operation, tuple[str, ...]]] = MappingProxyType(
    {
        Operation.RESPONSES: ("input", "instructions", "prompt"),
        Operation.EMBEDDINGS: ("input",),
    }
)

# Inside the prompt fields, the fields that are not prompt text, in any of the schemas.
_NOT_TEXT: Final = frozenset(
    {
        # Names, roles, ids and type tags.
        "model",
        "role",
        "type",
        "id",
        "name",
        "object",
        "status",
        "format",
        "detail",
        "language",
        "outcome",
        "qualifiers",
        "version",
        "tool_call_id",
        "tool_use_id",
        "toolUseId",
        "call_id",
        "tool_name",
        "cache_control",
        "cachePoint",
        "citations",
        "citationsContent",
        "annotations",
        # Media and files: inline bytes, data: and file URLs, references.
        "data",
        "source",
        "url",
        "image",
        "image_url",
        "images",
        "input_audio",
        "audio",
        "video",
        "document",
        "file",
        "file_id",
        "file_data",
        "file_url",
        "filename",
        "inlineData",
        "inline_data",
        "fileData",
        "fileUri",
        "file_uri",
        "videoMetadata",
        "video_metadata",
        "mimeType",
        "mime_type",
        "media_type",
        # Reasoning the provider signed or encrypted: a changed one is refused.
        "thinking",
        "signature",
        "thoughtSignature",
        "thought_signature",
        "encrypted_content",
        "reasoningContent",
        "redactedContent",
    }
)
# Fields holding a tool call's arguments or a tool's result as free-form JSON: every string in
# them is the caller's data, whatever its field name.
_FREE_FORM: Final = frozenset({"input", "args", "arguments", "response", "json"})
# OpenAI's (and Responses') tool-call arguments: JSON in a string.
_JSON_TEXT: Final = "arguments"
# A data: URL (RFC 2397): media type and parameters, then the comma before the data.
_DATA_URL: Final = re.compile(r"data:[^,\s]*,")


class PiiBlocked(InvalidRequest):
    """The prompt holds an entity type the tenant's PII policy blocks: 400 in the client's
    schema, naming the types found (never the values)."""

    code = "pii_blocked"


@dataclass(slots=True)
class _Redaction:
    """One prompt's or answer's redaction under a tenant's rules, and what it found."""

    scanner: PiiScanner
    actions: Mapping[str, Action]
    salt: bytes
    counts: Counter[str] = field(default_factory=Counter)
    blocked: set[str] = field(default_factory=set)
    changed: bool = False

    def text(self, value: str) -> str:
        """`value` redacted (itself when nothing was found)."""
        if len(value) < MIN_ENTITY_CHARS or (
            value.startswith("data:") and _DATA_URL.match(value) is not None
        ):
            return value
        result = self.scanner.redact(value, self.actions, salt=self.salt)
        if not result.counts:
            return value
        self.counts.update(result.counts)
        self.blocked.update(result.blocked)
        self.changed = True
        return result.text

    def json_text(self, value: str) -> str:
        """JSON in a string (tool-call arguments): its strings redacted, written back only when
        one changed; text that is not JSON is redacted as text."""
        if value.lstrip()[:1] in ("{", "["):
            try:
                parsed = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
            else:
                changed, self.changed = self.changed, False
                holder = [parsed]
                self.walk(holder, 0, free=True)
                if not self.changed:
                    self.changed = changed
                    return value
                return orjson.dumps(holder[0]).decode()
        return self.text(value)

    def walk(self, parent: Any, key: str | int, *, free: bool) -> None:
        """Redacts, in place, the strings under `parent[key]` that can carry prompt text (every
        string when `free`). Iterative: a deeply nested body cannot exhaust the stack."""
        stack: list[tuple[Any, str | int, bool]] = [(parent, key, free)]
        while stack:
            container, at, free_form = stack.pop()
            value = container[at]
            if isinstance(value, str):
                if at == _JSON_TEXT:
                    container[at] = self.json_text(value)
                else:
                    container[at] = self.text(value)
            elif isinstance(value, dict):
                for name in value:
                    if free_form:
                        stack.append((value, name, True))
                    elif name not in _NOT_TEXT:
                        stack.append((value, name, name in _FREE_FORM))
            elif isinstance(value, list):
                stack.extend((value, position, free_form) for position in range(len(value)))


def _add_counts(flow: Flow, counts: Mapping[str, int]) -> None:
    for entity, count in counts.items():
        flow.pii_counts[entity] = flow.pii_counts.get(entity, 0) + count


def _rules(flow: Flow) -> PiiRules | None:
    return flow.policy.guardrails.pii.get(flow.caller.tenant_id)


def _prompt_fields(api: Endpoint) -> tuple[str, ...]:
    if api.operation is Operation.CHAT:
        return _CHAT_PROMPT_FIELDS.get(api.schema.id, ())
    return _PASSTHROUGH_PROMPT_FIELDS.get(api.operation, ())


class RedactPrompt(Stage):
    """Redacts the prompt of an LLM request by the tenant's PII policy, or refuses it (see the
    module doc). Runs before model routing."""

    def on_request_body(self, flow: Flow) -> Verdict:
        if flow.llm is not None:
            # A fallback's re-run: the body model routing kept is the one redacted here.
            return CONTINUE
        api = flow.api
        if not isinstance(api, Endpoint):
            return CONTINUE
        rules = _rules(flow)
        if rules is None or not rules.scan_prompts:
            return CONTINUE
        fields = _prompt_fields(api)
        if not fields:
            return CONTINUE
        try:
            body = orjson.loads(flow.request_body)
        except orjson.JSONDecodeError:
            return CONTINUE  # model routing answers it, as it would without this stage
        if not isinstance(body, dict):
            return CONTINUE
        flow.request_json = body
        redaction = _Redaction(rules.scanner, rules.actions, rules.salt)
        for name in fields:
            if name in body:
                redaction.walk(body, name, free=False)
        _add_counts(flow, redaction.counts)
        if redaction.blocked:
            raise PiiBlocked(
                "the request was refused: it contains "
                f"{', '.join(sorted(redaction.blocked))}, which this gateway does not forward"
            )
        if redaction.changed:
            flow.replace_request_body(orjson.dumps(body))
        return CONTINUE


@dataclass(slots=True)
class _AnswerRedaction:
    """An answer's redaction: the whole answer's, or a stream's per-block redactors."""

    redaction: _Redaction
    # Streams: each text block's redactor, each tool-call block's arguments so far, the block
    # whose text or arguments are (maybe) held back, and its text not yet given to the
    # redactor (less than a step).
    texts: dict[int, StreamRedactor] = field(default_factory=dict)
    calls: dict[int, list[str]] = field(default_factory=dict)
    holding: int | None = None
    unfed: list[str] = field(default_factory=list)
    unfed_chars: int = 0

    def response(self, response: ChatResponse) -> ChatResponse:
        redaction = self.redaction
        changed, redaction.changed = redaction.changed, False
        content: list[Text | ToolCall] = []
        for part in response.content:
            if isinstance(part, Text):
                content.append(Text(redaction.text(part.text)))
            else:
                content.append(replace(part, arguments=redaction.json_text(part.arguments)))
        if not redaction.changed:
            redaction.changed = changed
            return response
        return replace(response, content=tuple(content))

    def events(self, events: list[StreamEvent], *, end: bool) -> list[StreamEvent]:
        """A chunk's events with their text redacted and the window's text held back."""
        out: list[StreamEvent] = []
        for event in events:
            if isinstance(event, TextDelta):
                if self.holding is not None and self.holding != event.index:
                    self._release(out)
                redactor = self.texts.get(event.index)
                if redactor is None:
                    redaction = self.redaction
                    from gatez.pii import StreamRedactor

                    redactor = self.texts[event.index] = StreamRedactor(
                        redaction.scanner,
                        redaction.actions,
                        window_chars=STREAM_WINDOW_CHARS,
                        salt=redaction.salt,
                    )
                self.holding = event.index
                self.unfed.append(event.text)
                self.unfed_chars += len(event.text)
                if self.unfed_chars >= STREAM_STEP_CHARS:
                    text = redactor.feed(self._take_unfed())
                    if text:
                        out.append(TextDelta(event.index, text))
            elif isinstance(event, ToolCallDelta):
                if self.holding is not None and self.holding != event.index:
                    self._release(out)
                self.holding = event.index
                self.calls.setdefault(event.index, []).append(event.partial_json)
            else:
                # A block's end, another block's start, the message's end: nothing held back
                # may come after it.
                if self.holding is not None:
                    self._release(out)
                out.append(event)
        if end and self.holding is not None:
            self._release(out)
        return out

    def _release(self, out: list[StreamEvent]) -> None:
        index = self.holding
        assert index is not None
        self.holding = None
        redactor = self.texts.get(index)
        if redactor is not None:
            unfed = self._take_unfed()
            text = (redactor.feed(unfed) if unfed else "") + redactor.finish()
            if text:
                out.append(TextDelta(index, text))
        parts = self.calls.pop(index, None)
        if parts:
            arguments = "".join(parts)
            if arguments:
                out.append(ToolCallDelta(index, self.redaction.json_text(arguments)))

    def _take_unfed(self) -> str:
        text = "".join(self.unfed)
        self.unfed.clear()
        self.unfed_chars = 0
        return text

    def counts(self) -> Counter[str]:
        total = Counter(self.redaction.counts)
        for redactor in self.texts.values():
            total.update(redactor.counts)
        return total


def _output_actions(rules: PiiRules) -> Mapping[str, Action]:
    """The tenant's actions for answers: BLOCK replaces (an answer cannot be refused once it
    streams, and a whole one is as good redacted)."""
    from gatez.pii import Action

    if not rules.blocks:
        return rules.actions
    return {
        entity: Action.REPLACE if action is Action.BLOCK else action
        for entity, action in rules.actions.items()
    }


class RedactAnswer(Stage):
    """Redacts a chat call's answer by the tenant's PII policy, streamed or whole (see the
    module doc). Its request phase runs after model routing; its response phase between
    `DecodeResponse` and `EncodeResponse`."""

    def on_request_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None or llm.passthrough:
            return CONTINUE
        rules = _rules(flow)
        if rules is None or not rules.scan_output:
            return CONTINUE
        body = flow.request_json
        if llm.client_schema is OPENAI_CHAT and body is not None:
            choices = body.get("n")
            if isinstance(choices, int) and choices > 1:
                # The model holds one choice: several could not be read, so not redacted.
                raise Unsupported("'n' greater than 1 cannot be used with output PII redaction")
        llm.reencode = True
        llm.redaction = _AnswerRedaction(
            _Redaction(rules.scanner, _output_actions(rules), rules.salt)
        )
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        llm = flow.llm
        if llm is None:
            return CONTINUE
        state = llm.redaction
        if not isinstance(state, _AnswerRedaction):
            return CONTINUE
        if llm.decoder is not None:
            llm.chunk_events[:] = state.events(llm.chunk_events, end=flow.end_of_stream)
        elif llm.response is not None:
            llm.response = state.response(llm.response)
        return CONTINUE

    def on_done(self, flow: Flow) -> None:
        """What the answer's redaction found is counted once the exchange is over (a stream
        may end anywhere, the client hanging up included)."""
        llm = flow.llm
        if llm is not None and isinstance(llm.redaction, _AnswerRedaction):
            _add_counts(flow, llm.redaction.counts())
