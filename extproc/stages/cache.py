"""The answer cache: a repeated (or, by policy, similar) question answered without the provider.

It sits after model routing (the alias is known, the request decoded) and before the token
budget (a hit reserves nothing). Settings come from the policy per tenant and route
(`flow.policy.guardrails.cache_for`); none: the stage does nothing.

- **Lookup** (request body): the request's fingerprint (`gatez.answer_cache`), then its exact
  entry in Redis (one round trip), then — unless the route is exact-only — a similar question
  of the same scope in the semantic index (`gatez.semantic_cache`), whose entry is read from
  Redis too. Each tier is bounded by a timeout; a failure or a timeout is a miss, logged. A
  route whose policy embeds with a provider (`embeddings: PROVIDER`) has its questions embedded
  by the provider model its `embedding_model` alias routes to (`extproc.provider_embeddings`),
  under a bound of its own (2.1 s by default, against 50 ms for the local embedder); an alias
  that routes nowhere, or to a provider without an embeddings API, leaves it the exact tier. A
  hit is answered at once in the client's schema, replayed as its stream kind when it asked
  for a stream, with `x-gatez-cache: hit` and `x-gatez-cache-kind: exact|semantic`. A miss
  or a bypass says so in the response's `x-gatez-cache` header.
- **Usage of a hit**: the provider is not called, so `llm.usage` is zero (the AI log charges
  nothing); the client's body carries the usage figures of the answer as the provider first
  reported them, since clients use them to track context length, and the header says the
  answer cost nothing.
- **Fill** (when the exchange is over): the provider's answer — whole, or gathered from its
  stream events — written when the call reached the provider, got a 2xx, ended normally (no
  stream error, no client disconnect, no gateway answer) and the answer may be kept
  (`CachedAnswer.refusal`). The Redis write is not waited for; once it succeeded the question
  is queued for the semantic index, which embeds and writes it in the background — with the
  provider model the lookup used, for a provider-embedding route.
- **Cache-Control** (request): `no-cache` skips the lookup, `no-store` the write.
- A cached answer longer than the request's `max_tokens` (by its reported output tokens) is
  not served to it.

Counters for a metrics collector are plain ints on the stage.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

from extproc.answer_cache import AnswerStore
from extproc.provider_embeddings import ProviderEmbedder, ProviderEmbeddings
from extproc.redis_pipe import ScriptClient
from extproc.stages.llm_request import chat_request
from gatez.answer_cache import (
    MAX_ANSWER_BYTES,
    CachedAnswer,
    Fingerprint,
    StreamedAnswer,
    fingerprint,
)
from gatez.guardrails import CacheSettings, EmbeddingSource
from gatez.pipeline import (
    CONTINUE,
    FailureMode,
    Flow,
    LlmCall,
    Respond,
    Stage,
    StageResult,
    TokenUsage,
    Verdict,
)
from gatez.semantic_cache import SemanticIndex
from gatez.translate.model import TranslationError
from gatez.translate.schemas import JSON

log = logging.getLogger("gatez.cache")

CACHE_HEADER: Final = "x-gatez-cache"
KIND_HEADER: Final = "x-gatez-cache-kind"
# A Redis round trip's bound (a Redis that stopped answering costs a lookup no more).
EXACT_TIMEOUT_S: Final = 0.1
SEMANTIC_TIMEOUT_S: Final = 0.05
# A provider's embeddings call (bounded by its own 2 s, `extproc.provider_embeddings`), then
# the search and the entry's read.
PROVIDER_SEMANTIC_TIMEOUT_S: Final = 2.1
MODEL_NAME_LIMIT: Final = 256


@dataclass(slots=True)
class _Record:
    """What the stage knows of one call (kept on `LlmCall.answer_cache`)."""

    settings: CacheSettings
    fingerprint: Fingerprint
    # What the response header says: "miss" or "bypass".
    outcome: str
    # The answer may be written when the exchange ends.
    store: bool
    max_tokens: int | None = None
    streamed: StreamedAnswer | None = None
    # The semantic tier applies to this call (looked up, and written once answered) ...
    semantic: bool = False
    # ... embedding with this provider model (None: the local embedder).
    embedder: ProviderEmbedder | None = None


class AnswerCache(Stage):
    """Answers from the cache, and fills it (see the module doc).

    `redis`: the hot-path client (the exact tier; the caller closes it). `semantic`: the
    semantic index, which the caller `start()`s on the event loop and the stage closes (None:
    the exact tier only). `provider_embeddings`: what embeds the questions of routes whose
    policy asks for a provider's embeddings (None: such routes use the exact tier only).
    """

    # Whatever goes wrong here, the provider can still answer.
    failure_mode = FailureMode.OPEN

    def __init__(
        self,
        redis: ScriptClient,
        semantic: SemanticIndex | None,
        *,
        provider_embeddings: ProviderEmbeddings | None = None,
        exact_timeout_s: float = EXACT_TIMEOUT_S,
        semantic_timeout_s: float = SEMANTIC_TIMEOUT_S,
        provider_semantic_timeout_s: float = PROVIDER_SEMANTIC_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._answers = AnswerStore(redis)
        self._semantic = semantic
        self._provider_embeddings = provider_embeddings
        self._exact_timeout_s = exact_timeout_s
        self._semantic_timeout_s = semantic_timeout_s
        self._provider_semantic_timeout_s = provider_semantic_timeout_s
        self._clock = clock
        self._writing: set[asyncio.Future[Any]] = set()
        # Counters for a metrics collector.
        self.hits_exact = 0
        self.hits_semantic = 0
        self.misses = 0
        self.bypasses = 0
        self.writes = 0
        self.errors = 0

    # --- lookup ----------------------------------------------------------------------------

    def on_request_body(self, flow: Flow) -> StageResult:
        llm = flow.llm
        if llm is None or llm.passthrough:
            return CONTINUE
        route_id = flow.route.id if flow.route is not None else ""
        settings = flow.policy.guardrails.cache_for(flow.caller.tenant_id, route_id)
        if settings is None:
            return CONTINUE
        request = chat_request(flow)
        if request is None:
            self.bypasses += 1
            return CONTINUE
        pii = flow.policy.guardrails.pii.get(flow.caller.tenant_id)
        key = fingerprint(
            request,
            alias=llm.target.alias,
            settings=settings,
            variant=pii.output_rules if pii is not None else "",
        )
        directives = _directives(flow.request_headers.get("cache-control", ""))
        record = _Record(
            settings,
            key,
            outcome="miss",
            store=key.cacheable and "no-store" not in directives,
            max_tokens=request.max_tokens,
        )
        llm.answer_cache = record
        if not key.cacheable or "no-cache" in directives:
            record.outcome = "bypass"
            self.bypasses += 1
            if record.store:
                self._choose_embedder(flow, record)
            return CONTINUE
        self._choose_embedder(flow, record)
        return self._lookup(flow, llm, record)

    def _choose_embedder(self, flow: Flow, record: _Record) -> None:
        """Whether the semantic tier applies to the call, and with which embedder."""
        settings = record.settings
        if self._semantic is None or not self._semantic.ready or settings.exact_only:
            return
        if settings.embeddings is EmbeddingSource.LOCAL:
            record.semantic = True
        elif self._provider_embeddings is not None:
            record.embedder = self._provider_embeddings.embedder(
                flow.policy, flow.caller.tenant_id, settings.embedding_model
            )
            record.semantic = record.embedder is not None

    async def _lookup(self, flow: Flow, llm: LlmCall, record: _Record) -> Verdict:
        tenant_id = flow.caller.tenant_id
        key = record.fingerprint
        try:
            raw = await _reply_within(
                self._answers.get(tenant_id, key.exact), self._exact_timeout_s
            )
        except Exception as error:
            # Redis away or slow: the semantic tier would need it too.
            self._failed("exact lookup", tenant_id, error)
            self.misses += 1
            return CONTINUE
        kind = "exact"
        if raw is None and record.semantic:
            kind = "semantic"
            raw = await self._semantic_lookup(tenant_id, record)
        answer = self._decode(raw, tenant_id) if raw is not None else None
        if answer is None or _too_long(answer, record.max_tokens):
            self.misses += 1
            return CONTINUE
        return self._hit(flow, llm, answer, kind)

    async def _semantic_lookup(self, tenant_id: str, record: _Record) -> bytes | None:
        assert self._semantic is not None
        embedder = record.embedder
        timeout_s = (
            self._semantic_timeout_s if embedder is None else self._provider_semantic_timeout_s
        )
        try:
            async with asyncio.timeout(timeout_s):
                match = await self._semantic.lookup(
                    tenant_id,
                    record.fingerprint,
                    record.settings.similarity_threshold,
                    embedder=embedder,
                )
                if match is None:
                    return None
                raw: bytes | None = await self._answers.get(tenant_id, match.exact)
                return raw
        except Exception as error:
            self._failed("semantic lookup", tenant_id, error)
            return None

    def _decode(self, raw: bytes, tenant_id: str) -> CachedAnswer | None:
        try:
            return CachedAnswer.from_bytes(raw)
        except ValueError as error:
            self._failed("reading a cached answer", tenant_id, error)
            return None

    def _hit(self, flow: Flow, llm: LlmCall, answer: CachedAnswer, kind: str) -> Verdict:
        client = llm.client_schema
        assert client is not None
        try:
            if llm.stream:
                encoder = client.stream_encoder(include_usage=llm.client_wants_usage)
                body = encoder.encode(answer.events(include_usage=llm.client_wants_usage))
                content_type = client.stream_content_type
            else:
                body = client.encode_response(answer.response)
                content_type = JSON
        except TranslationError as error:
            # An answer this client's schema cannot carry (a tool call to Ollama's generate).
            log.info("cached answer not served to a %s client: %s", client.name, error)
            self.misses += 1
            return CONTINUE
        llm.cache_hit = kind
        # No provider tokens: the AI log charges nothing for a hit.
        llm.usage = TokenUsage(0, 0)
        llm.response_model = answer.response.model[:MODEL_NAME_LIMIT]
        if kind == "exact":
            self.hits_exact += 1
        else:
            self.hits_semantic += 1
        headers = (("content-type", content_type), (CACHE_HEADER, "hit"), (KIND_HEADER, kind))
        return Respond(200, body, headers, reason="cache_hit")

    # --- response --------------------------------------------------------------------------

    def on_response_headers(self, flow: Flow) -> Verdict:
        record = _record(flow)
        if record is not None:
            flow.set_upstream_header(CACHE_HEADER, record.outcome)
        return CONTINUE

    def on_response_body(self, flow: Flow) -> Verdict:
        record = _record(flow)
        llm = flow.llm
        if (
            record is None
            or llm is None
            or not record.store
            or llm.decoder is None
            or not 200 <= flow.response_status < 300
        ):
            return CONTINUE
        if record.streamed is None:
            record.streamed = StreamedAnswer()
        record.streamed.feed(llm.chunk_events)
        return CONTINUE

    # --- fill ------------------------------------------------------------------------------

    def on_done(self, flow: Flow) -> None:
        """Writes the provider's answer when the exchange succeeded (module doc); the Redis
        write is sent, not waited for."""
        llm = flow.llm
        record = _record(flow)
        if (
            llm is None
            or record is None
            or not record.store
            or llm.cache_hit
            or flow.error
            or not flow.upstream_reached
            or not 200 <= flow.response_status < 300
        ):
            return
        if llm.stream:
            response = record.streamed.answer() if record.streamed is not None else None
        else:
            response = llm.response
        settings = record.settings
        if (
            response is None
            or CachedAnswer.refusal(response, cache_tool_calls=settings.cache_tool_calls)
            is not None
        ):
            return
        raw = CachedAnswer(response).to_bytes()
        if len(raw) > MAX_ANSWER_BYTES:
            return
        tenant_id = flow.caller.tenant_id
        expires_at = self._clock() + settings.ttl_s
        try:
            written = self._answers.put(tenant_id, record.fingerprint.exact, raw, settings.ttl_s)
        except Exception as error:
            self._failed("writing an answer", tenant_id, error)
            return
        self._writing.add(written)
        written.add_done_callback(partial(self._written, tenant_id, record, expires_at))

    def _written(
        self, tenant_id: str, record: _Record, expires_at: float, done: asyncio.Future[Any]
    ) -> None:
        self._writing.discard(done)
        error = None if done.cancelled() else done.exception()
        if done.cancelled() or error is not None:
            self._failed("writing an answer", tenant_id, error or "cancelled")
            return
        self.writes += 1
        if record.semantic and self._semantic is not None:
            # Only once Redis holds the answer: a point always names an answer that was there.
            self._semantic.add(tenant_id, record.fingerprint, expires_at, embedder=record.embedder)

    def _failed(self, what: str, tenant_id: str, error: object) -> None:
        self.errors += 1
        log.warning(
            "answer cache: %s failed for tenant %s: %s",
            what,
            tenant_id,
            error.__class__.__name__ if isinstance(error, TimeoutError) else error,
        )

    async def flush(self) -> None:
        """Waits for the writes under way, and for the semantic index's queue (tests, and a
        data plane stopping)."""
        if self._writing:
            await asyncio.gather(*self._writing, return_exceptions=True)
        if self._semantic is not None:
            await self._semantic.flush()

    async def close(self) -> None:
        if self._semantic is not None:
            await self._semantic.close()


def _record(flow: Flow) -> _Record | None:
    llm = flow.llm
    record = llm.answer_cache if llm is not None else None
    return record if isinstance(record, _Record) else None


def _directives(cache_control: str) -> frozenset[str]:
    """The directive names of a Cache-Control header, lower-cased (`no-cache`, `no-store`)."""
    if not cache_control:
        return frozenset()
    return frozenset(part.partition("=")[0].strip().lower() for part in cache_control.split(","))


def _too_long(answer: CachedAnswer, max_tokens: int | None) -> bool:
    usage = answer.response.usage
    return max_tokens is not None and usage is not None and usage.output_tokens > max_tokens


async def _reply_within(reply: asyncio.Future[Any], timeout_s: float) -> Any:
    """`reply`'s result, or TimeoutError when it has not come within `timeout_s`. Judged by the
    reply itself once the bound is over: a data plane starved of CPU for longer than the bound
    (two cores shared with the proxy under load) still takes a reply that arrived meanwhile,
    where `asyncio.timeout` would cancel the wait and count a hit as a miss — measured:
    bench.guardrails at eight connections lost exact hits that way."""
    await asyncio.wait((reply,), timeout=timeout_s)
    if not reply.done():
        # Left to finish on its own; its outcome is read so none is reported lost.
        reply.add_done_callback(_read_outcome)
        raise TimeoutError
    return reply.result()


def _read_outcome(reply: asyncio.Future[Any]) -> None:
    if not reply.cancelled():
        reply.exception()
