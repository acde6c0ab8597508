"""The per-request Flow that stages read and mutate.

A Flow is opened by the dispatcher when a request's headers arrive and lives until the exchange
ends. Stages record what they want the proxy to change in `flow.pending`; the adapter drains it
into wire mutations after every phase. Stages never see a protobuf or flatbuffers type.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gatez.errors import GatewayError, Unauthenticated
from gatez.pipeline.stage import REQUEST_PHASES, Phase
from gatez.pipeline.verdicts import Decision, Respond
from gatez.policy import CompiledPolicy, CompiledRoute, ModelTarget
from gatez.sse import SseSplitter

if TYPE_CHECKING:
    from gatez.agent_policy import AgentRules, McpServerTarget, ToolRule
    from gatez.pipeline.observe import FlowTrace
    from gatez.pipeline.stage import Stage
    from gatez.translate.model import ChatRequest, ChatResponse, ErrorInfo, StreamEvent
    from gatez.translate.schemas import StreamDecoder, StreamEncoder, WireSchema


class BodyMode(enum.Enum):
    """How much of a body a flow asks the proxy for. Each phase asked for is a round trip."""

    NONE = "none"
    BUFFERED = "buffered"
    STREAMED = "streamed"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: set by authentication, read by everything after it."""

    tenant_id: str
    # The API key id, or "jwt:<subject>" for a JWT caller.
    key_id: str
    subject: str
    # A JWT caller's groups (its identity provider's groups claim); they pick an agent policy.
    groups: tuple[str, ...] = ()


class ClientEndpoint(Protocol):
    """The provider API a client speaks (OpenAI Chat, Anthropic Messages…), as the stages
    before model routing need it: where its SDK may put the credential besides the headers."""

    # A query parameter that may carry the credential (Gemini's `key`), or "".
    @property
    def credential_query(self) -> str: ...


@dataclass(slots=True)
class TokenUsage:
    # In OpenAI's meaning: input_tokens includes the cached input and the cache writes.
    input_tokens: int
    output_tokens: int
    # Counted by the gateway: the provider's own report never came.
    estimated: bool = False
    # Of input_tokens, those read from the provider's prompt cache, and those written to it
    # (Anthropic's cache_creation_input_tokens); priced apart (`gatez.prices`).
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0


@dataclass(slots=True)
class LlmCall:
    """What model routing decided for an LLM request, and what the response reported.

    The response side is read through the shared model (`gatez.translate`): the provider's
    bytes are decoded into `chunk_events` (a stream) or `response` (a whole answer) or
    `provider_error`, every stage reads those, and the last one writes the client's bytes —
    the provider's own when both speak one schema, a translation when not.
    """

    target: ModelTarget
    stream: bool
    # The client asked for stream usage itself (stream_options.include_usage).
    client_wants_usage: bool
    # The schemas the client and the provider speak (the same object when they are one).
    client_schema: WireSchema | None = None
    provider_schema: WireSchema | None = None
    # An API passed through as it is ("responses", "embeddings"), not chat: "" for chat.
    passthrough: str = ""
    # A fallback chain's pick: the target's circuit ("provider/model"), whether this call is
    # its half-open probe, whether its circuit had failures counted ("" when the alias has no
    # chain); the targets still to try when this one fails, with the same two flags; the
    # client's own request body, to route again; the targets tried or skipped so far
    # ("provider/model=skipped|<status>") and the failed ones' circuit reports (circuit,
    # probe, counted, Retry-After seconds), told to the circuits when the exchange ends.
    circuit: str = ""
    probe: bool = False
    counted: bool = False
    plan: tuple[tuple[ModelTarget, bool, bool], ...] = ()
    client_body: bytes = b""
    tried: list[str] = field(default_factory=list)
    failed: list[tuple[str, bool, bool, float | None]] = field(default_factory=list)
    usage: TokenUsage | None = None
    # The model the provider says answered (its response's "model"), when it said.
    response_model: str = ""
    # Streams: the provider's decoder, the client's encoder when translating, and the events
    # the current chunk completed.
    decoder: StreamDecoder | None = None
    encoder: StreamEncoder | None = None
    chunk_events: list[StreamEvent] = field(default_factory=list)
    # The provider's own-schema answer could not be decoded (passed on untouched, estimated).
    undecoded: bool = False
    # A whole answer, decoded; or the provider's error answer, decoded.
    response: ChatResponse | None = None
    provider_error: ErrorInfo | None = None
    # OpenAI to OpenAI streams whose usage the gateway asked for: the raw events, to strip it.
    events: SseSplitter | None = None
    # The generated text seen so far (up to a bound) and its full length in characters: what
    # usage is estimated from when the provider's own usage never arrives.
    output_texts: list[str] = field(default_factory=list)
    output_chars: int = 0
    kept_chars: int = 0
    # The request in the shared model, once a stage needed it (`extproc.stages.llm_request`).
    request: ChatRequest | None = None
    # The answer is written from the model even when both sides speak one schema (a stage
    # rewrites it: output redaction).
    reencode: bool = False
    # Answered from the answer cache: "exact" or "semantic" ("" when not).
    cache_hit: str = ""
    # The answer cache's record of this call (opaque here: `extproc.stages.cache`'s).
    answer_cache: object = None
    # The budget reservation this call holds (opaque here: `extproc.stages.budget`'s).
    reservation: object = None
    # Output PII redaction's state for this answer (opaque here: `extproc.stages.pii`'s).
    redaction: object = None

    @property
    def translated(self) -> bool:
        return self.client_schema is not self.provider_schema

    @property
    def rewrites(self) -> bool:
        """A successful answer is written from the model, not passed on as the provider's."""
        return self.reencode or self.client_schema is not self.provider_schema


@dataclass(slots=True)
class McpCall:
    """What the agent stages learned of an MCP exchange (`agent/`), and what its audit row
    records. One HTTP exchange carries at most one JSON-RPC message (batches are refused)."""

    server: McpServerTarget
    # The revision the request speaks; stateless for 2026-07-28 (no sessions).
    protocol_version: str = ""
    stateless: bool = False
    # The client's Mcp-Session-Id, and its digest (what Redis keys and logs hold).
    session_id: str = ""
    session_digest: str = ""
    # The JSON-RPC message: kind ("request", "notification", "response"; "" for GET and
    # DELETE), method (or the HTTP method), id, and the tool, prompt or resource it names.
    kind: str = ""
    method: str = ""
    rpc_id: str | int | None = None
    name: str = ""
    arguments_digest: str = ""
    arguments_json: str = ""
    # The agent policy that applies to the caller, and the tool rule that decided the call.
    rules: AgentRules | None = None
    rule: ToolRule | None = None
    # The gateway's decision and why, and who approved or denied a held call.
    decision: str = ""
    reason: str = ""
    approver: str = ""
    # Bytes of the upstream's answer passed on, and the SSE events being split (JSON answers
    # are judged whole); `cut` once the answer went over the policy's size limit.
    result_bytes: int = 0
    events: SseSplitter | None = None
    cut: bool = False
    # Concurrency slots taken in Redis (released when the exchange ends), under this scope
    # (the session's digest, or the sessionless caller's hourly one).
    slots_taken: bool = False
    limits_scope: str = ""
    # The admission stage's own record of the session the call runs under (opaque here).
    lease: object = None


@dataclass(slots=True)
class Pending:
    """Changes for the proxy, collected during one phase and drained by the adapter after it."""

    set_headers: dict[str, str] = field(default_factory=dict)
    remove_headers: list[str] = field(default_factory=list)
    body: bytes | None = None
    clear_route_cache: bool = False

    def __bool__(self) -> bool:
        return bool(self.set_headers or self.remove_headers or self.body is not None) or (
            self.clear_route_cache
        )


@dataclass(slots=True)
class Flow:
    """One HTTP exchange as the pipeline sees it."""

    request_id: str
    # The policy in force when the request arrived, kept for the whole exchange.
    policy: CompiledPolicy
    # The policy route the path matched (its kind chose the pipeline); None when none did.
    route: CompiledRoute | None
    # Monotonic, for durations; `started_at` is the wall clock (epoch seconds), for log rows.
    started_ns: int
    started_at: float
    method: str
    path: str
    # Lower-case names; repeated headers joined with ", ".
    request_headers: dict[str, str]
    request_has_body: bool
    request_body: bytes = b""
    # The request body parsed once, by the first stage that needs it.
    request_json: dict[str, Any] | None = None
    # What the flow asks the proxy for next; stages raise these, the adapter reads them.
    request_body_mode: BodyMode = BodyMode.NONE
    response_body_mode: BodyMode = BodyMode.NONE
    principal: Principal | None = None
    # On LLM routes: the client's API, found from the path before authentication.
    api: ClientEndpoint | None = None
    # Renders the gateway's own errors in the client's API format (None: OpenAI's, the
    # default); `Respond.error` answers are passed through it.
    error_format: Callable[[GatewayError], Respond] | None = None
    llm: LlmCall | None = None
    # On MCP routes: the agent gateway's view of the exchange.
    mcp: McpCall | None = None
    # Sensitive data PII redaction found, by entity type (request and answer together).
    pii_counts: dict[str, int] = field(default_factory=dict)
    # Set when upstream response headers arrived (the provider saw the request).
    upstream_reached: bool = False
    response_status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    # The response body chunk of the current phase (all of it when buffered).
    response_chunk: bytes = b""
    end_of_stream: bool = False
    first_byte_ns: int | None = None
    finished_ns: int | None = None
    # Set when the gateway answered itself (the Respond reason), or by the adapter when the proxy
    # ended the exchange first ("aborted", or the proxy's own reason for its reply).
    error: str = ""
    pending: Pending = field(default_factory=Pending)
    # The phase running now (set by the pipeline).
    phase: Phase = Phase.REQUEST_HEADERS
    # Checks started by stages and not yet settled (see `defer`).
    deferred: list[tuple[Stage, asyncio.Future[Decision]]] = field(default_factory=list)
    # Set by the adapter: called with the longest wait before a stage's Hold is waited out, so
    # the proxy gives the request that long (Envoy: override_message_timeout).
    on_hold: Callable[[float], None] | None = None
    # Set when the flow is traced (sampled): the stage calls the pipeline recorded for spans.
    trace: FlowTrace | None = None

    @property
    def caller(self) -> Principal:
        """Who is calling; stages after authentication rely on it (authentication is first)."""
        if self.principal is None:
            raise Unauthenticated("missing credential")
        return self.principal

    def defer(self, stage: Stage, check: asyncio.Future[Decision]) -> None:
        """Lets the request go on while `check` runs; the pipeline settles it before anything
        reaches the upstream, and its refusal answers in `stage`'s place. Only request phases may
        defer: afterwards nothing is left to hold back."""
        if self.phase not in REQUEST_PHASES:
            raise RuntimeError(f"{stage.name} deferred a check in {self.phase.name}")
        self.deferred.append((stage, check))

    def set_upstream_header(self, name: str, value: str) -> None:
        self.pending.set_headers[name] = value

    def remove_header(self, name: str) -> None:
        self.pending.remove_headers.append(name)

    def replace_request_body(self, body: bytes) -> None:
        """Replaces the buffered request body; content-length follows (the proxy will not)."""
        self.request_body = body
        self.pending.body = body
        self.pending.set_headers["content-length"] = str(len(body))

    def replace_response_chunk(self, chunk: bytes) -> None:
        self.response_chunk = chunk
        self.pending.body = chunk

    def take_pending(self) -> Pending:
        pending, self.pending = self.pending, Pending()
        return pending
