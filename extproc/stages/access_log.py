"""The access log: one request-log row per exchange and one AI-log row per LLM call (a call
the provider saw, or one the answer cache answered).

Rows are handed to the LogSink when the exchange is over and written in batches off the hot path.
Text a client controls is clipped here (`logrows.clip`): a 60 KiB path or a long request id
makes a row of bounded size, never one that cannot be stored. No row holds request or answer
text: PII redaction's findings reach the AI row as counts by entity type only.
"""

from __future__ import annotations

import datetime as dt
import time

from extproc.logsink import LogSink
from gatez.logrows import PATH_LIMIT, AiLogRow, RequestLogRow, clip, pii_entity_counts
from gatez.pipeline import Flow, Stage
from gatez.prices import cost_usd


class AccessLog(Stage):
    """Turns a finished Flow into log rows."""

    def __init__(self, sink: LogSink, node_id: str) -> None:
        self._sink = sink
        self._node_id = node_id

    def on_done(self, flow: Flow) -> None:
        finished_ns = flow.finished_ns or time.monotonic_ns()
        latency_ms = (finished_ns - flow.started_ns) / 1e6
        started = dt.datetime.fromtimestamp(flow.started_at, dt.UTC)
        principal = flow.principal
        tenant_id = principal.tenant_id if principal else ""
        # A JWT caller's key id carries its subject.
        key_id = clip(principal.key_id) if principal else ""
        request_id = clip(flow.request_id)
        self._sink.add_request(
            RequestLogRow(
                time=started,
                request_id=request_id,
                tenant_id=tenant_id,
                key_id=key_id,
                method=clip(flow.method),
                path=clip(flow.path.partition("?")[0], PATH_LIMIT),
                status=flow.response_status,
                latency_ms=latency_ms,
                error=clip(flow.error),
                node_id=self._node_id,
            )
        )
        llm = flow.llm
        # An LLM call is one the provider saw, or one the answer cache answered in its place:
        # the gateway may have refused it before either.
        if llm is None or not (flow.upstream_reached or llm.cache_hit):
            return
        usage = None if llm.cache_hit else llm.usage
        prices = flow.policy.prices
        # The provider's own name of the model answers for a deployment name it knows no
        # price of (Azure deployments, say).
        price = prices.lookup(llm.target.upstream_model) or (
            prices.lookup(llm.response_model) if llm.response_model else None
        )
        if flow.first_byte_ns:
            ttft_ms = (flow.first_byte_ns - flow.started_ns) / 1e6
        else:
            # A cached answer leaves whole when the exchange ends.
            ttft_ms = latency_ms if llm.cache_hit else 0.0
        self._sink.add_ai(
            AiLogRow(
                time=started,
                request_id=request_id,
                tenant_id=tenant_id,
                key_id=key_id,
                provider=llm.target.provider.name,
                model_alias=llm.target.alias,
                upstream_model=llm.target.upstream_model,
                input_tokens=usage.input_tokens if usage else 0,
                output_tokens=usage.output_tokens if usage else 0,
                status=flow.response_status,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                streamed=llm.stream,
                node_id=self._node_id,
                usage_estimated=usage.estimated if usage else False,
                cached_input_tokens=usage.cached_input_tokens if usage else 0,
                cost_usd=cost_usd(usage, price) if usage and price else 0.0,
                # A cached answer's cost, 0, is known whatever the model's price.
                price_known=price is not None or bool(llm.cache_hit),
                attempts=tuple(llm.tried),
                cache_hit=llm.cache_hit,
                pii_entities=pii_entity_counts(flow.pii_counts),
            )
        )
