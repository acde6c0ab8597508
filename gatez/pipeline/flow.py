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
from typing import TYPE_CHECKING, Any

from gatez.errors import Unauthenticated
from gatez.pipeline.stage import REQUEST_PHASES, Phase
from gatez.pipeline.verdicts import Decision
from gatez.policy import CompiledPolicy, CompiledRoute, ModelTarget
from gatez.sse import SseSplitter

if TYPE_CHECKING:
    from gatez.pipeline.observe import FlowTrace
    from gatez.pipeline.stage import Stage


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
    """What model routing decided for an LLM request, and what the response reported."""

    target: ModelTarget
    stream: bool
    # The client asked for stream usage itself (stream_options.include_usage).
    client_wants_usage: bool
    usage: TokenUsage | None = None
    # The model the provider says answered (its response's "model"), when it said.
    response_model: str = ""
    # Set when the response turned out to be SSE: the events seen so far, cut at boundaries.
    events: SseSplitter | None = None
    # The stream as the provider sent it (its first bytes, up to a bound) and its full length:
    # what usage is estimated from when the provider's own usage never arrives.
    stream_head: bytearray = field(default_factory=bytearray)
    stream_bytes: int = 0


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
    llm: LlmCall | None = None
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
