"""Token budgets end to end, through both adapters with the official SDKs (issue 11): calls pass
until a day's budget is spent, then 429 in the client's format with Retry-After; the spend the
control API shows is the provider's reported usage; a reset lets calls through again; a key's
budget and its tenant's each hold; and many parallel streams against a small budget never
overshoot it (each call holds its worst case before it is sent).

The fake provider's usage is exact (`count_prompt_tokens` / `count_completion_tokens`): a
prompt of thirty words is 31 tokens, and its echo cut at max_tokens is 10 more, so every call
uses exactly its true worst case. The gateway holds more than that (its prompt bound is a token
per body byte); a refusal says how much the call would have held ("may use up to N tokens"),
which the tests read to check each refusal was due.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import anthropic
import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import UPSTREAM_KEY, Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs
from tests.fakes.openai_upstream import UpstreamServer

pytestmark = pytest.mark.e2e

PROMPT: Final = " ".join(["go"] * 30)
MESSAGES: Final[list[Any]] = [{"role": "user", "content": PROMPT}]
#: Every call caps its output; the fake's echo is longer, so the cap is what it uses.
MAX_TOKENS: Final = 10
#: The fake's usage of one call: 30 words + 1, and MAX_TOKENS words of its echo.
CALL_TOKENS: Final = 31 + MAX_TOKENS
DAY: Final = 86_400
HELD: Final = re.compile(r"may use up to (\d+) tokens")


def set_budget(admin: Admin, tenant_id: str, api_key_id: str = "", **limits: Any) -> None:
    response = admin.control.SetBudget(
        control_pb2.SetBudgetRequest(
            budget=policy_pb2.Budget(tenant_id=tenant_id, api_key_id=api_key_id, **limits)
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(response.policy_version)


def day_spend(admin: Admin, tenant_id: str, api_key_id: str = "") -> control_pb2.BudgetSpend:
    """The current day's spend of the tenant's budget (or its key's)."""
    budgets = admin.control.ListBudgets(
        control_pb2.ListBudgetsRequest(tenant_id=tenant_id), metadata=admin.metadata
    ).budgets
    (status,) = [b for b in budgets if b.budget.api_key_id == api_key_id]
    days: list[control_pb2.BudgetSpend] = [s for s in status.spend if s.period == "day"]
    (day,) = days
    return day


def settled_spend(
    admin: Admin, tenant_id: str, api_key_id: str = "", timeout_s: float = 5.0
) -> control_pb2.BudgetSpend:
    """The day's spend once no call holds any of it (calls settle after their answer ends)."""
    deadline = time.monotonic() + timeout_s
    while (spend := day_spend(admin, tenant_id, api_key_id)).tokens_held:
        assert time.monotonic() < deadline, f"still held: {spend}"
        time.sleep(0.02)
    return spend


def openai_call(stack: Stack, access: TenantAccess) -> Callable[[], int]:
    """One plain call by the OpenAI SDK; returns the usage the provider reported."""
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=access.api_key, max_retries=0
    )

    def call() -> int:
        reply = client.chat.completions.create(
            model="gpt-test", messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert reply.usage is not None
        return reply.usage.total_tokens

    return call


def anthropic_call(stack: Stack, access: TenantAccess) -> Callable[[], int]:
    """One plain call by the Anthropic SDK (translated to the OpenAI fake)."""
    client = anthropic.Anthropic(
        base_url=stack.config.gateway_url, api_key=access.api_key, max_retries=0
    )

    def call() -> int:
        message = client.messages.create(model="gpt-test", messages=MESSAGES, max_tokens=MAX_TOKENS)
        return message.usage.input_tokens + message.usage.output_tokens

    return call


REFUSALS: Final = {"openai": openai.RateLimitError, "anthropic": anthropic.RateLimitError}


def spend_until_refused(
    call: Callable[[], int], refusal: type[Exception], admin: Admin, tenant_id: str
) -> tuple[list[int], Any]:
    """Calls one at a time (each settled before the next) until the budget refuses one;
    returns each admitted call's usage and the refusal."""
    used: list[int] = []
    for _ in range(20):
        try:
            used.append(call())
        except refusal as error:
            return used, error
        settled_spend(admin, tenant_id)
    raise AssertionError(f"20 calls and no refusal: {used}")


def assert_refused_by_budget(error: Any, *names: str) -> int:
    """A 429 with Retry-After (at most a day: the day's budget resets at midnight UTC) whose
    message names the budget; returns what the call would have held."""
    assert error.status_code == 429
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= DAY
    message = error.message.lower()
    assert "budget" in message, error.message
    for name in names:
        assert name.lower() in message, error.message
    held = HELD.search(error.message)
    assert held is not None, error.message
    worst_case = int(held.group(1))
    # At least the call's true worst case: its prompt's tokens and its output cap.
    assert worst_case >= CALL_TOKENS
    return worst_case


def assert_refusal_was_due(spent: int, worst_case: int, limit: int) -> None:
    """Refused only when the call's hold no longer fit beside what was spent, and not while
    the previous call (then held the same way, settled before the next) still fit."""
    assert spent + worst_case > limit >= spent - CALL_TOKENS + worst_case, (
        spent,
        worst_case,
        limit,
    )


#: Room for a few calls: each holds its byte-bounded worst case (about 170 tokens) and uses 41.
SEQUENTIAL_LIMIT: Final = 400


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_calls_pass_until_the_days_budget_is_spent_then_429_until_reset(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str
) -> None:
    model = f"budget-{uuid.uuid4().hex[:8]}"
    access = provision(admin, models={"gpt-test": model})
    set_budget(admin, access.tenant_id, tokens_per_day=SEQUENTIAL_LIMIT)
    call = (openai_call if sdk == "openai" else anthropic_call)(stack, access)

    used, refusal = spend_until_refused(call, REFUSALS[sdk], admin, access.tenant_id)

    worst_case = assert_refused_by_budget(refusal, "tenant", "daily", "token")
    assert len(used) >= 2 and all(u == CALL_TOKENS for u in used), used
    provider_calls = [r for r in upstream.requests if r.json and r.json.get("model") == model]
    assert len(provider_calls) == len(used), "the refused call reached the provider"
    spend = settled_spend(admin, access.tenant_id)
    # What is spent is what the provider reported, call by call.
    assert spend.tokens_spent == sum(used) <= SEQUENTIAL_LIMIT
    assert_refusal_was_due(spend.tokens_spent, worst_case, SEQUENTIAL_LIMIT)
    assert spend.tokens_limit == SEQUENTIAL_LIMIT
    assert spend.period_label == time.strftime("%Y-%m-%d", time.gmtime())
    if sdk == "openai":  # the log rows once (a wait costs a log flush)
        rows = wait_for_ai_logs(admin, access.tenant_id, len(used))
        assert sum(r.input_tokens + r.output_tokens for r in rows) == spend.tokens_spent
    # Still refused with every hold settled: what is spent leaves no room for the call.
    with pytest.raises(REFUSALS[sdk]):
        call()

    admin.control.ResetBudgetSpend(
        control_pb2.ResetBudgetSpendRequest(tenant_id=access.tenant_id, period="day"),
        metadata=admin.metadata,
    )
    assert call() == CALL_TOKENS
    assert settled_spend(admin, access.tenant_id).tokens_spent == CALL_TOKENS


def test_a_keys_budget_and_its_tenants_each_hold(stack: Stack, admin: Admin) -> None:
    first = provision(admin)
    second_key = admin.control.CreateApiKey(
        control_pb2.CreateApiKeyRequest(tenant_id=first.tenant_id, name="second"),
        metadata=admin.metadata,
    )
    admin.wait_applied(second_key.policy_version)
    second = TenantAccess(first.tenant_id, second_key.secret, second_key.api_key.id)
    key_limit, tenant_limit = 300, 700
    set_budget(admin, first.tenant_id, first.api_key_id, tokens_per_day=key_limit)
    set_budget(admin, first.tenant_id, tokens_per_day=tenant_limit)

    by_first, refusal = spend_until_refused(
        openai_call(stack, first), openai.RateLimitError, admin, first.tenant_id
    )
    worst_case = assert_refused_by_budget(refusal, "API key")
    first_spend = settled_spend(admin, first.tenant_id, first.api_key_id)
    assert first_spend.tokens_spent == sum(by_first)
    assert_refusal_was_due(first_spend.tokens_spent, worst_case, key_limit)
    # The other key still has the tenant's budget to spend, and then the tenant's refuses it.
    by_second, refusal = spend_until_refused(
        openai_call(stack, second), openai.RateLimitError, admin, first.tenant_id
    )
    assert by_second, "the first key's budget refused the second key"
    worst_case = assert_refused_by_budget(refusal, "tenant")
    tenant_spend = settled_spend(admin, first.tenant_id)
    assert tenant_spend.tokens_spent == sum(by_first) + sum(by_second)
    assert_refusal_was_due(tenant_spend.tokens_spent, worst_case, tenant_limit)
    budgets = admin.control.ListBudgets(
        control_pb2.ListBudgetsRequest(tenant_id=first.tenant_id), metadata=admin.metadata
    ).budgets
    assert [b.budget.api_key_id for b in budgets] == ["", first.api_key_id]

    # Resetting the tenant's day frees the second key; the first is still held by its own.
    admin.control.ResetBudgetSpend(
        control_pb2.ResetBudgetSpendRequest(tenant_id=first.tenant_id, period="day"),
        metadata=admin.metadata,
    )
    assert openai_call(stack, second)() == CALL_TOKENS
    with pytest.raises(openai.RateLimitError) as caught:
        openai_call(stack, first)()
    assert_refused_by_budget(caught.value, "API key")


# -- many parallel streams against a small budget ----------------------------------------------

PARALLEL: Final = 30
#: Room for a few worst cases (about 240 tokens each, a streamed body being longer), and less
#: than all calls would use (30 x 41) if the budget were only checked, not held, before each.
CONCURRENT_LIMIT: Final = 1000
#: Long enough that every call is decided while the admitted streams still run (a stream is
#: about a dozen events).
CHUNK_DELAY_S: Final = 0.1
SLOW_PROVIDER: Final = "slow-openai-budgets"


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY, chunk_delay_s=CHUNK_DELAY_S) as server:
        yield server


@pytest.fixture(scope="module")
def slow_provider(admin: Admin, slow_upstream: UpstreamServer) -> str:
    created = admin.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=SLOW_PROVIDER,
                kind=policy_pb2.PROVIDER_KIND_OPENAI,
                base_url=slow_upstream.base_url,
            ),
            api_key=UPSTREAM_KEY,
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    return SLOW_PROVIDER


class SpendWatch:
    """Reads the budget's day spend in a thread while the streams run, and keeps the highest
    spent + held and the highest held seen."""

    def __init__(self, admin: Admin, tenant_id: str) -> None:
        self.admin, self.tenant_id = admin, tenant_id
        self.highest = 0
        self.held_seen = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SpendWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        while not self._stop.is_set():
            spend = day_spend(self.admin, self.tenant_id)
            self.highest = max(self.highest, spend.tokens_spent + spend.tokens_held)
            self.held_seen = max(self.held_seen, spend.tokens_held)
            time.sleep(0.01)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One streamed call: its usage (None: refused), when it was decided (refusal or first
    chunk) and when it ended, in monotonic seconds; and the refusal's worst case."""

    usage: int | None
    decided: float
    ended: float
    worst_case: int = 0


async def one_stream(client: openai.AsyncOpenAI) -> Outcome:
    try:
        stream = await client.chat.completions.create(
            model="slow",
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
    except openai.RateLimitError as error:
        now = time.monotonic()
        return Outcome(None, now, now, assert_refused_by_budget(error, "tenant", "daily"))
    decided = time.monotonic()
    chunks = [chunk async for chunk in stream]
    usage = chunks[-1].usage
    assert usage is not None
    return Outcome(usage.total_tokens, decided, time.monotonic())


@pytest.mark.parametrize("stack", ["envoy", "apisix", "envoy-cluster"], indirect=True)
async def test_parallel_streams_never_overshoot_a_small_budget(
    stack: Stack, admin: Admin, slow_provider: str, slow_upstream: UpstreamServer
) -> None:
    model = f"budget-race-{uuid.uuid4().hex[:8]}"
    access = provision(admin, models={"slow": model}, provider=slow_provider)
    set_budget(admin, access.tenant_id, tokens_per_day=CONCURRENT_LIMIT)
    client = openai.AsyncOpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=access.api_key, max_retries=0
    )

    with SpendWatch(admin, access.tenant_id) as watch:
        outcomes = await asyncio.gather(*(one_stream(client) for _ in range(PARALLEL)))
    await client.close()

    admitted = [o for o in outcomes if o.usage is not None]
    refused = [o for o in outcomes if o.usage is None]
    assert admitted and refused, outcomes
    assert all(o.usage == CALL_TOKENS for o in admitted)
    # The proof's precondition: every call was decided while all admitted calls still ran
    # (held their worst case, none settled yet).
    assert max(o.decided for o in outcomes) < min(o.ended for o in admitted), outcomes
    (worst_case,) = {o.worst_case for o in refused}
    # So exactly as many were admitted as worst cases fit in the limit, no more.
    assert len(admitted) == CONCURRENT_LIMIT // worst_case
    spend = settled_spend(admin, access.tenant_id)
    assert spend.tokens_spent == sum(o.usage or 0 for o in admitted) <= CONCURRENT_LIMIT
    # Never more spent and held at once than the limit; the holds were visible meanwhile.
    assert worst_case <= watch.held_seen <= watch.highest <= CONCURRENT_LIMIT
    provider_calls = [r for r in slow_upstream.requests if r.json and r.json.get("model") == model]
    assert len(provider_calls) == len(admitted), "a refused call reached the provider"


@pytest.mark.parametrize("stack", ["envoy", "apisix"], indirect=True)
def test_a_stream_the_client_leaves_is_settled_from_what_was_streamed(
    stack: Stack, admin: Admin, slow_provider: str
) -> None:
    access = provision(
        admin, models={"slow": f"budget-left-{uuid.uuid4().hex[:8]}"}, provider=slow_provider
    )
    set_budget(admin, access.tenant_id, tokens_per_day=CONCURRENT_LIMIT)
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=access.api_key, max_retries=0
    )

    stream = client.chat.completions.create(
        model="slow", messages=MESSAGES, max_tokens=MAX_TOKENS, stream=True
    )
    received_words = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received_words += 1
        if received_words == 2:
            break
    held = day_spend(admin, access.tenant_id).tokens_held
    stream.close()

    # The hold is given back and what the gateway counted (the prompt, the words streamed
    # before the client left) is charged: no more than the call held.
    spend = settled_spend(admin, access.tenant_id)
    assert held >= CALL_TOKENS
    assert 31 + 2 <= spend.tokens_spent <= held
