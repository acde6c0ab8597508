"""Token budgets on LLM calls: a call holds its worst case against its tenant's (and API key's)
budgets before it is sent, and is charged what it used when it ends (`extproc.budgets`).

Where it runs: last of the request-body stages, after model routing (the target, hence the
price, and the body the provider gets) and after the answer cache's lookup (a hit costs no
provider tokens and holds nothing). Its settle runs when the exchange is over, after the usage
meter's, which estimates the usage of a stream the client hung up on. A call that never got
usage (the provider was not reached, or answered an error) gives its hold back.

The worst case a call holds:
- Prompt: one token per byte of the body the provider gets. Measured bytes of an OpenAI body per
  prompt token (`python -m bench.prompt_bound`: o200k_base, cl100k_base and Llama 2's tokenizer,
  the one needing the most tokens): English prose 4.2, source code 2.0-3.2, JSON 2.5, Chinese
  and Japanese 2.4-2.6, Hindi and Arabic 2.3-2.5, and 1.0-1.2 for digits, hex, base64, random
  ASCII, emoji and rare CJK. A bytes/3 rule undercounts code, JSON tool results and non-Latin
  text; bytes/2 undercounts the numbers, ids and encoded blobs that agents pass around. One
  per byte holds for all of them: no token of a byte-level BPE tokenizer (or a SentencePiece
  one with byte fallback) is shorter than a byte, and a message's JSON framing is longer than
  the few tokens a chat template adds for it. It costs a `len`; its price is a hold of about
  four times the prompt of English text while the call runs, given back when it settles.
  Two exceptions: an inline image (a `data:image/…;base64,` URL, as OpenAI's APIs carry them)
  counts `IMAGE_TOKENS` instead of the bytes of its encoding (a megabyte screenshot would hold a
  million tokens); a call that defines tools counts `TOOL_PROMPT_TOKENS` more, for the system
  prompt providers add for tools. What the body does not carry is not held: images by URL,
  files by id, a Responses call's `previous_response_id`, a Gemini `cachedContent`; such calls
  are charged what they used, and may overshoot by it.
- Output: the request's cap (`max_tokens`, `max_completion_tokens`, Gemini's `maxOutputTokens`,
  Ollama's `num_predict`, Bedrock's `maxTokens`, Responses' `max_output_tokens`; times OpenAI's
  `n` or Gemini's `candidateCount`), else the tenant's `default_max_tokens`; embeddings
  generate nothing.
- USD: both at the routed model's price, every prompt token at the dearest input rate (cache
  writes cost more than input); a model without a price costs nothing. The settle prices the
  usage at the same price.

The reservation id is the request id: a fallback chain's next target keeps the hold (model
routing carries it over), and a body phase run again for the same request replays, so nothing
is held twice.

Redis away: the call is refused with 503 (`BudgetsUnavailable`), unless every budget it counts
against fails open; then it goes on unchecked (the store logs a warning), and its settle still
charges it if Redis is back by then.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeGuard

from extproc.budgets import (
    Admission,
    BudgetMark,
    BudgetStore,
    Clock,
    Cost,
    Reservation,
    Settlement,
)
from extproc.redis_pipe import ScriptClient
from extproc.stages.llm_request import chat_request
from gatez.budgets import Period, Scope, Unit
from gatez.errors import RateLimited, Unavailable
from gatez.guardrails import USD_MICROS, TenantBudgets
from gatez.pipeline import (
    CONTINUE,
    Flow,
    LlmCall,
    Principal,
    Stage,
    StageResult,
    TokenUsage,
    Verdict,
)
from gatez.prices import ModelPrice, cost_usd
from gatez.telemetry import ValueCollector
from gatez.translate.schemas import OPENAI_CHAT

log = logging.getLogger("gatez.budget")

# An inline image's allowance: above what OpenAI's tile and patch models (up to about 3,800),
# Anthropic's (up to about 4,800 on its high-resolution models) and Gemini bill for one image.
# Not above gpt-4o-mini's, which bills images at ~33 times gpt-4o's tokens (its price per
# image is gpt-4o's): its vision calls may overshoot by the difference.
IMAGE_TOKENS: Final = 8_192
# Defining tools makes providers add a system prompt (Anthropic documents 313-346 tokens).
TOOL_PROMPT_TOKENS: Final = 512
# The body markers. A tool key ends in `":`, which text cannot (its quotes are escaped); an
# image URL is a string that starts after a `:`, `,` or `[` (text would have a backslash there).
_INLINE_IMAGE: Final = b'"data:image/'
_VALUE_START: Final = frozenset(b":,[ \n")
_TOOLS: Final = (b'"tools":', b'"toolConfig":')
# Output caps of the APIs passed through as they are, and of a body its schema cannot decode.
_CAP_FIELDS: Final = ("max_output_tokens", "max_completion_tokens", "max_tokens")
COUNTER_LABELS: Final = ("tenant", "budget", "unit")

# (tenant, budget name such as "tenant:day", unit): how often.
BudgetCounts = dict[tuple[str, ...], int]


class BudgetExhausted(RateLimited):
    """A budget has no room for the call's worst case: 429 (every SDK's RateLimitError), with
    Retry-After until the budget resets, and no SDK retry (a budget frees up at its reset, or
    when calls in flight settle: the caller's decision, not a loop's)."""

    code = "budget_exhausted"
    should_retry = False


class BudgetsUnavailable(Unavailable):
    """Redis cannot answer and the budgets fail closed: 503."""

    code = "budgets_unavailable"


@dataclass(frozen=True, slots=True)
class BudgetCounters:
    """What the stage counted, copied at one moment (a scrape runs in another thread)."""

    soft_crossed: Mapping[tuple[str, ...], int]
    exhausted: Mapping[tuple[str, ...], int]


class TokenBudget(Stage):
    """Holds each LLM call's worst case against its budgets, refusing it when one has no room
    (see the module doc), and settles it to its usage when it ends."""

    def __init__(self, redis: ScriptClient, *, clock: Clock = time.time) -> None:
        self._store = BudgetStore(redis, clock=clock)
        # Counted once per budget, unit and period (the store reports a crossing once).
        self.soft_crossed: BudgetCounts = {}
        # Counted per refused call.
        self.exhausted: BudgetCounts = {}

    def on_request_body(self, flow: Flow) -> StageResult:
        llm = flow.llm
        if llm is None or llm.reservation is not None:
            # Not a call, or one already holding for this request (a chain's next target).
            return CONTINUE
        caller = flow.caller
        budgets = flow.policy.guardrails.budgets.get(caller.tenant_id)
        if budgets is None:
            return CONTINUE
        key_id = api_key_id(caller)
        key_limits = budgets.keys.get(key_id) if key_id is not None else None
        if budgets.tenant is None and key_limits is None:
            return CONTINUE
        return self._reserve(flow, llm, budgets, key_id, worst_case(flow, llm, budgets))

    async def _reserve(
        self, flow: Flow, llm: LlmCall, budgets: TenantBudgets, key_id: str | None, cost: Cost
    ) -> Verdict:
        tenant_id = flow.caller.tenant_id
        key_limits = budgets.keys.get(key_id) if key_id is not None else None
        tenant_soft = budgets.soft_fraction.get("")
        key_soft = budgets.soft_fraction.get(key_id) if key_id is not None else None
        # Counted as held while the reply is on its way: a call cancelled meanwhile (the
        # client went away) still gives back, from on_done, what the reserve takes.
        llm.reservation = Reservation(
            flow.request_id,
            tenant_id,
            Admission.ADMITTED,
            cost,
            self._store.budgets(
                tenant_id,
                budgets.tenant,
                key_id,
                key_limits,
                tenant_soft_fraction=tenant_soft,
                key_soft_fraction=key_soft,
            ),
        )
        reservation = await self._store.reserve(
            flow.request_id,
            tenant_id,
            cost,
            tenant_limits=budgets.tenant,
            key_id=key_id,
            key_limits=key_limits,
            fail_open=budgets.fails_open(key_id or ""),
            tenant_soft_fraction=tenant_soft,
            key_soft_fraction=key_soft,
        )
        # Only what holds (or, failing open, may hold by a late reply) is settled later.
        llm.reservation = reservation if reservation.admitted else None
        if reservation.admission is Admission.REFUSED:
            mark = reservation.exhausted
            assert mark is not None
            _count(self.exhausted, tenant_id, mark)
            raise BudgetExhausted(
                exhausted_message(mark, cost), retry_after_s=reservation.retry_after_s
            )
        if reservation.admission is Admission.UNAVAILABLE:
            # The store logged why.
            raise BudgetsUnavailable("token budgets are unavailable; try again shortly")
        self._soft_crossed(flow, reservation.soft_crossed)
        return CONTINUE

    async def on_done(self, flow: Flow) -> None:
        """Charges the call's usage (the provider's, or the meter's estimate), or gives the hold
        back when there is none. Never raises: a lost settle leaves a hold that lapses."""
        llm = flow.llm
        if llm is None or not isinstance(llm.reservation, Reservation):
            return
        reservation = llm.reservation
        try:
            if llm.usage is None:
                outcome = await self._store.release(reservation)
            else:
                outcome = await self._store.settle(reservation, actual_cost(flow, llm, llm.usage))
        except Exception:
            log.exception("settling the token budgets of request %s failed", flow.request_id)
            return
        if outcome.settlement is Settlement.FAILED:
            log.warning(
                "token budgets unavailable: request %s of tenant %s not settled (its hold "
                "lapses by itself)",
                flow.request_id,
                reservation.tenant_id,
            )
        self._soft_crossed(flow, outcome.soft_crossed)

    def counters(self) -> BudgetCounters:
        """The counts so far, copied (read by `budget_values` at scrape time)."""
        return BudgetCounters(dict(self.soft_crossed), dict(self.exhausted))

    def _soft_crossed(self, flow: Flow, marks: tuple[BudgetMark, ...]) -> None:
        tenant_id = flow.caller.tenant_id
        for mark in marks:
            budget, unit = _count(self.soft_crossed, tenant_id, mark)
            log.warning(
                "budget soft threshold crossed: tenant %s, %s budget, %s",
                tenant_id,
                budget,
                unit,
                extra={
                    "tenant": tenant_id,
                    "budget": budget,
                    "unit": unit,
                    "request_id": flow.request_id,
                },
            )


def budget_values(stage: TokenBudget) -> ValueCollector:
    """The stage's counts as Prometheus counters, by tenant, budget and unit."""
    values = ValueCollector()
    values.labelled_counter(
        "gatez_budget_soft_threshold_crossed",
        "Budgets whose spending crossed their soft threshold (once per budget, unit and period).",
        lambda: stage.counters().soft_crossed,
        COUNTER_LABELS,
    )
    values.labelled_counter(
        "gatez_budget_exhausted",
        "Calls refused because a budget had no room for their worst case.",
        lambda: stage.counters().exhausted,
        COUNTER_LABELS,
    )
    return values


def api_key_id(caller: Principal) -> str | None:
    """The API key a caller used; None for a JWT caller (its key id is "jwt:<subject>")."""
    return None if caller.key_id.startswith("jwt:") else caller.key_id


def worst_case(flow: Flow, llm: LlmCall, budgets: TenantBudgets) -> Cost:
    """The most the call may use: its prompt bound and output cap, in tokens and in USD."""
    prompt = prompt_tokens_bound(flow.request_body)
    output = output_cap(flow, llm, budgets.default_max_tokens)
    price = flow.policy.prices.lookup(llm.target.upstream_model)
    usd = 0
    if price is not None:
        micros = cost_usd(_dearest_usage(prompt, output, price), price) * USD_MICROS
        # Up to the next micro-dollar, once float noise (984.0000000001) is rounded off.
        usd = math.ceil(round(micros, 6))
    return Cost(prompt + output, usd)


def prompt_tokens_bound(body: bytes) -> int:
    """At least the prompt tokens of a request body (see the module doc)."""
    tokens = len(body)
    if _INLINE_IMAGE in body:
        start = 0
        while (begin := body.find(_INLINE_IMAGE, start)) != -1:
            end = body.find(b'"', begin + 1)
            if end == -1:
                break
            if begin > 0 and body[begin - 1] in _VALUE_START:
                tokens += IMAGE_TOKENS - (end + 1 - begin)
            start = end + 1
    if any(marker in body for marker in _TOOLS):
        tokens += TOOL_PROMPT_TOKENS
    return max(tokens, 0)


def output_cap(flow: Flow, llm: LlmCall, default: int) -> int:
    """The most output tokens the call may generate."""
    if llm.passthrough == "embeddings":
        return 0
    body = flow.request_json or {}
    cap: int | None = None
    # An OpenAI chat body not decoded yet says its cap in the fields a decode would read
    # (max_completion_tokens, else max_tokens): read there, sparing the decode (~30 µs for 5 KB).
    if not llm.passthrough and not (llm.request is None and llm.provider_schema is OPENAI_CHAT):
        request = chat_request(flow)
        cap = request.max_tokens if request is not None else None
    if cap is None:
        cap = next((value for f in _CAP_FIELDS if _is_count(value := body.get(f))), None)
    return (default if cap is None else cap) * _choices(body)


def actual_cost(flow: Flow, llm: LlmCall, usage: TokenUsage) -> Cost:
    """What the call used, priced as its worst case was."""
    price = flow.policy.prices.lookup(llm.target.upstream_model)
    usd = 0 if price is None else round(cost_usd(usage, price) * USD_MICROS)
    return Cost(max(usage.input_tokens + usage.output_tokens, 0), max(usd, 0))


def exhausted_message(mark: BudgetMark, cost: Cost) -> str:
    """Names the budget, what the call needed room for, and when the budget resets."""
    owner = "the tenant's" if mark.scope is Scope.TENANT else "this API key's"
    period = "daily" if mark.period is Period.DAY else "monthly"
    if mark.unit is Unit.TOKENS:
        unit, needed = "token", f"{cost.tokens} tokens"
    else:
        unit, needed = "USD", f"USD {cost.usd_micros / USD_MICROS:.6f}".rstrip("0").rstrip(".")
    resets = mark.resets_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"{owner} {period} {unit} budget is exhausted (this request may use up to {needed}); "
        f"it resets at {resets}"
    )


def _dearest_usage(prompt: int, output: int, price: ModelPrice) -> TokenUsage:
    """A usage whose prompt is all billed at the dearest input rate."""
    dearest = max(
        price.input_usd_per_mtok,
        price.cached_input_usd_per_mtok,
        price.cache_write_input_usd_per_mtok,
    )
    if dearest == price.input_usd_per_mtok:
        return TokenUsage(prompt, output)
    if dearest == price.cache_write_input_usd_per_mtok:
        return TokenUsage(prompt, output, cache_write_input_tokens=prompt)
    return TokenUsage(prompt, output, cached_input_tokens=prompt)


def _choices(body: Mapping[str, Any]) -> int:
    """How many answers the call asks for: OpenAI's `n`, Gemini's `candidateCount`."""
    count = body.get("n")
    config = body.get("generationConfig")
    if isinstance(config, dict):
        count = config.get("candidateCount", count)
    return count if _is_count(count) and count > 0 else 1


def _count(counts: BudgetCounts, tenant_id: str, mark: BudgetMark) -> tuple[str, str]:
    budget, unit = f"{mark.scope}:{mark.period}", str(mark.unit)
    key = (tenant_id, budget, unit)
    counts[key] = counts.get(key, 0) + 1
    return budget, unit


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
