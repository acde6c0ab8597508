"""ControlService: the guardrails. PII policies (the HASH salt drawn once, kept, never returned),
budgets with the spend the data plane's BudgetStore wrote in the same Redis, spend resets that
leave calls in flight settling right, cache policies per tenant and route, cache purges, and
what deleting a tenant or revoking a key takes with it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.message import Message

from extproc.budgets import Admission, BudgetStore, Cost, Reservation, Settlement
from extproc.redis_pipe import ScriptClient, hot_path_client
from gatez.budgets import Period, Scope, Unit, budget_key, period_end, period_label
from gatez.guardrails import TenantBudgets
from gatez.policy import compile_policy
from gatez.redis_client import RedisTarget
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, rpc_error
from tests.control.test_admin import create_tenant, current_snapshot, policy_version
from tests.control.test_agent_policies import create_key
from tests.support.redis import RedisServer

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND


def pii(tenant_id: str = "acme", **fields: Any) -> policy_pb2.PiiPolicy:
    return policy_pb2.PiiPolicy(tenant_id=tenant_id, **fields)


def budget(tenant_id: str = "acme", **fields: Any) -> policy_pb2.Budget:
    return policy_pb2.Budget(tenant_id=tenant_id, **fields)


def cache(tenant_id: str = "acme", **fields: Any) -> policy_pb2.CachePolicy:
    return policy_pb2.CachePolicy(tenant_id=tenant_id, **({"enabled": True} | fields))


async def set_pii(api: Api, policy: policy_pb2.PiiPolicy) -> Any:
    return await api.control.SetPiiPolicy(
        api_pb.SetPiiPolicyRequest(pii_policy=policy), metadata=AUTH
    )


async def get_pii(api: Api, tenant_id: str = "acme") -> policy_pb2.PiiPolicy:
    got = await api.control.GetPiiPolicy(
        api_pb.GetPiiPolicyRequest(tenant_id=tenant_id), metadata=AUTH
    )
    policy: policy_pb2.PiiPolicy = got.pii_policy
    return policy


async def set_budget(api: Api, limits: policy_pb2.Budget) -> Any:
    return await api.control.SetBudget(api_pb.SetBudgetRequest(budget=limits), metadata=AUTH)


async def list_budgets(api: Api, tenant_id: str = "acme") -> list[api_pb.BudgetStatus]:
    listed = await api.control.ListBudgets(
        api_pb.ListBudgetsRequest(tenant_id=tenant_id), metadata=AUTH
    )
    return list(listed.budgets)


async def reset_spend(
    api: Api, tenant_id: str = "acme", key_id: str = "", period: str = ""
) -> None:
    await api.control.ResetBudgetSpend(
        api_pb.ResetBudgetSpendRequest(tenant_id=tenant_id, api_key_id=key_id, period=period),
        metadata=AUTH,
    )


async def set_cache(api: Api, policy: policy_pb2.CachePolicy) -> Any:
    return await api.control.SetCachePolicy(
        api_pb.SetCachePolicyRequest(cache_policy=policy), metadata=AUTH
    )


async def list_cache(api: Api, tenant_id: str = "acme") -> list[policy_pb2.CachePolicy]:
    listed = await api.control.ListCachePolicies(
        api_pb.ListCachePoliciesRequest(tenant_id=tenant_id), metadata=AUTH
    )
    return list(listed.cache_policies)


async def purge(api: Api, tenant_id: str = "acme") -> api_pb.PurgeCacheResponse:
    purged: api_pb.PurgeCacheResponse = await api.control.PurgeCache(
        api_pb.PurgeCacheRequest(tenant_id=tenant_id), metadata=AUTH
    )
    return purged


async def stored_salt(api: Api, tenant_id: str = "acme") -> bytes:
    """The salt as data planes receive it (the only place it travels)."""
    snapshot = await current_snapshot(api)
    (policy,) = [p for p in snapshot.pii_policies if p.tenant_id == tenant_id]
    return policy.hash_salt


async def compiled_budgets(api: Api, tenant_id: str = "acme") -> TenantBudgets:
    """The budgets as a data plane compiles them from its snapshot."""
    return compile_policy(await current_snapshot(api)).guardrails.budgets[tenant_id]


@pytest.fixture
async def data_plane(redis_server: RedisServer, redis_client: aioredis.Redis) -> Any:
    """The data plane's hot-path client on the control service's Redis."""
    client: ScriptClient = hot_path_client(RedisTarget.parse(redis_server.url))
    yield client
    await client.close()


# PII policies


async def test_pii_policy_set_replaced_read_and_deleted_with_its_salt_kept(api: Api) -> None:
    await create_tenant(api, "acme")
    before = await policy_version(api)
    first = pii(
        default_action=policy_pb2.PII_ACTION_HASH,
        entities={"URL": policy_pb2.PII_ACTION_MASK},
        scan_output=True,
        min_score=0.7,
    )

    created = await set_pii(api, first)

    assert created.policy_version == before + 1
    assert created.pii_policy == first  # no salt in the answer
    assert await get_pii(api) == first
    salt = await stored_salt(api)
    assert len(salt) >= 16

    # Replaced whole; a salt the caller sends is ignored, the drawn one kept.
    second = pii(entities={"IP_ADDRESS": policy_pb2.PII_ACTION_HASH})
    replaced = await set_pii(api, pii(hash_salt=b"chosen-by-the-caller-0123", **_fields(second)))
    assert replaced.policy_version == before + 2
    assert replaced.pii_policy == second
    assert not replaced.pii_policy.hash_salt
    assert await get_pii(api) == second
    assert await stored_salt(api) == salt
    snapshot = await current_snapshot(api)
    assert len(snapshot.pii_policies) == 1

    deleted = await api.control.DeletePiiPolicy(
        api_pb.DeletePiiPolicyRequest(tenant_id="acme"), metadata=AUTH
    )
    assert deleted.policy_version == before + 3
    error = await rpc_error(get_pii(api))
    assert (error.code(), error.details()) == (NOT_FOUND, "tenant 'acme' has no PII policy")
    # Set anew, the tenant has no salt: a new one is drawn.
    await set_pii(api, second)
    assert await stored_salt(api) not in (salt, b"")


async def test_each_tenant_draws_its_own_salt(api: Api) -> None:
    for tenant_id in ("acme", "globex"):
        await create_tenant(api, tenant_id)
        await set_pii(api, pii(tenant_id))
    assert await stored_salt(api, "acme") != await stored_salt(api, "globex")


def _fields(message: Message) -> dict[str, Any]:
    """A message's set fields, for building a variant of it."""
    return {field.name: value for field, value in message.ListFields() if field.name != "tenant_id"}


# Budgets


async def test_budgets_list_with_what_the_data_plane_spent(
    api: Api, data_plane: ScriptClient
) -> None:
    await create_tenant(api, "acme")
    key = await create_key(api)
    other_key = await create_key(api)
    before = await policy_version(api)
    set_first = await set_budget(api, budget(tokens_per_day=500, usd_per_month=9))
    assert set_first.policy_version == before + 1
    assert set_first.budget == budget(tokens_per_day=500, usd_per_month=9)
    # Setting the tenant's budget again replaces it.
    tenant_budget = budget(tokens_per_day=1000, usd_per_month=5, soft_percent=90)
    await set_budget(api, tenant_budget)
    key_budget = budget(api_key_id=key, tokens_per_month=400)
    await set_budget(api, key_budget)
    assert await policy_version(api) == before + 3

    compiled = await compiled_budgets(api)
    store = BudgetStore(data_plane)

    async def reserve(request_id: str, cost: Cost) -> Reservation:
        tenant_limits, key_limits = compiled.for_key(key)
        return await store.reserve(
            request_id, "acme", cost, tenant_limits=tenant_limits, key_id=key, key_limits=key_limits
        )

    done = await reserve("r1", Cost(300, 1_500_000))
    await store.settle(done, Cost(120, 600_000))
    in_flight = await reserve("r2", Cost(50, 250_000))
    assert in_flight.admission is Admission.ADMITTED

    listed = await list_budgets(api)
    now = datetime.now(UTC)

    def spend(period: Period, **figures: Any) -> api_pb.BudgetSpend:
        entry = api_pb.BudgetSpend(
            period=str(period), period_label=period_label(period, now), **figures
        )
        entry.reset_time.FromDatetime(period_end(period, now))
        return entry

    assert listed == [
        api_pb.BudgetStatus(
            budget=tenant_budget,
            spend=[
                spend(
                    Period.DAY,
                    tokens_spent=120,
                    tokens_held=50,
                    usd_spent=0.6,
                    usd_held=0.25,
                    tokens_limit=1000,
                ),
                spend(
                    Period.MONTH,
                    tokens_spent=120,
                    tokens_held=50,
                    usd_spent=0.6,
                    usd_held=0.25,
                    usd_limit=5,
                ),
            ],
        ),
        # The key has a monthly limit only: its days are not counted, so not shown.
        api_pb.BudgetStatus(
            budget=key_budget,
            spend=[
                spend(
                    Period.MONTH,
                    tokens_spent=120,
                    tokens_held=50,
                    usd_spent=0.6,
                    usd_held=0.25,
                    tokens_limit=400,
                ),
            ],
        ),
    ]
    # A key with no budget is not listed; one set now starts from nothing spent.
    await set_budget(api, budget(api_key_id=other_key, usd_per_day=1))
    listed = await list_budgets(api)
    assert [b.budget.api_key_id for b in listed] == ["", *sorted([key, other_key])]
    (fresh,) = [b for b in listed if b.budget.api_key_id == other_key]
    (day,) = fresh.spend
    assert (day.period, day.tokens_spent, day.usd_spent, day.usd_limit) == ("day", 0, 0.0, 1.0)
    assert day.HasField("tokens_spent") and not day.HasField("tokens_limit")


async def test_a_tenant_without_budgets_lists_none(api: Api) -> None:
    await create_tenant(api, "acme")
    assert await list_budgets(api) == []


async def test_delete_budget_removes_it_from_the_policy(api: Api) -> None:
    await create_tenant(api, "acme")
    key = await create_key(api)
    await set_budget(api, budget(tokens_per_day=10))
    await set_budget(api, budget(api_key_id=key, tokens_per_day=5))
    before = await policy_version(api)

    deleted = await api.control.DeleteBudget(
        api_pb.DeleteBudgetRequest(tenant_id="acme", api_key_id=key), metadata=AUTH
    )

    assert deleted.policy_version == before + 1
    assert [b.budget for b in await list_budgets(api)] == [budget(tokens_per_day=10)]
    error = await rpc_error(
        api.control.DeleteBudget(
            api_pb.DeleteBudgetRequest(tenant_id="acme", api_key_id=key), metadata=AUTH
        )
    )
    assert (error.code(), error.details()) == (
        NOT_FOUND,
        f"budget of API key '{key}' of tenant 'acme' not found",
    )
    await api.control.DeleteBudget(api_pb.DeleteBudgetRequest(tenant_id="acme"), metadata=AUTH)
    assert await list_budgets(api) == []


async def test_a_reset_forgets_the_spent_figures_and_calls_in_flight_still_settle(
    api: Api, data_plane: ScriptClient, redis_client: aioredis.Redis
) -> None:
    await create_tenant(api, "acme")
    key = await create_key(api)
    await set_budget(api, budget(tokens_per_day=100))  # soft threshold at 80
    await set_budget(api, budget(api_key_id=key, tokens_per_month=1000))
    compiled = await compiled_budgets(api)
    store = BudgetStore(data_plane, soft_fraction=0.8)
    tenant_limits, key_limits = compiled.for_key(key)

    async def reserve(request_id: str, tokens: int) -> Reservation:
        return await store.reserve(
            request_id,
            "acme",
            Cost(tokens, 0),
            tenant_limits=tenant_limits,
            key_id=key,
            key_limits=key_limits,
        )

    settled = await store.settle(await reserve("r1", 90), Cost(90, 0))
    assert [(m.scope, m.period, m.unit) for m in settled.soft_crossed] == [
        (Scope.TENANT, Period.DAY, Unit.TOKENS)
    ]
    assert (await reserve("r2", 30)).admission is Admission.REFUSED  # 90 + 30 > 100
    in_flight = await reserve("r3", 10)
    assert in_flight.admission is Admission.ADMITTED

    await reset_spend(api, period="day")

    def figures(status: api_pb.BudgetStatus) -> list[tuple[str, int, int]]:
        return [(s.period, s.tokens_spent, s.tokens_held) for s in status.spend]

    tenant, of_key = await list_budgets(api)
    assert figures(tenant) == [("day", 0, 10)]  # the call in flight keeps its hold
    assert figures(of_key) == [("month", 90, 10)]  # another owner: untouched
    after = await reserve("r4", 30)
    assert after.admission is Admission.ADMITTED  # 0 + 10 + 30 <= 100
    # The call in flight settles: its hold goes, its usage counts in the reset day.
    assert (await store.settle(in_flight, Cost(5, 0))).settlement is Settlement.DONE
    # The soft threshold is reported again once crossed again.
    crossed = await store.settle(after, Cost(80, 0))
    assert [(m.scope, m.period) for m in crossed.soft_crossed] == [(Scope.TENANT, Period.DAY)]
    tenant, of_key = await list_budgets(api)
    assert figures(tenant) == [("day", 85, 0)]
    assert figures(of_key) == [("month", 175, 0)]

    # The key's own, both periods (it has a month only; no day hash is made).
    await reset_spend(api, key_id=key)
    tenant, of_key = await list_budgets(api)
    assert (figures(tenant), figures(of_key)) == ([("day", 85, 0)], [("month", 0, 0)])
    now = datetime.now(UTC)
    assert not await redis_client.exists(budget_key("acme", key, Period.DAY, now))
    month = budget_key("acme", key, Period.MONTH, now)
    assert await redis_client.pttl(month) > 0  # the reset keeps the expiry


async def test_a_reset_of_the_month_leaves_the_day(api: Api, data_plane: ScriptClient) -> None:
    await create_tenant(api, "acme")
    await set_budget(api, budget(tokens_per_day=100, tokens_per_month=1000))
    limits = (await compiled_budgets(api)).tenant
    store = BudgetStore(data_plane)
    await store.settle(
        await store.reserve("r1", "acme", Cost(7, 0), tenant_limits=limits), Cost(7, 0)
    )

    await reset_spend(api, period="month")

    (tenant,) = await list_budgets(api)
    assert [(s.period, s.tokens_spent) for s in tenant.spend] == [("day", 7), ("month", 0)]


# Cache policies


async def test_cache_policies_per_tenant_and_route(api: Api) -> None:
    for tenant_id in ("acme", "globex"):
        await create_tenant(api, tenant_id)
    await api.control.CreateRoute(
        api_pb.CreateRouteRequest(
            route=policy_pb2.Route(id="chat", path_prefix="/chat", kind=policy_pb2.ROUTE_KIND_LLM)
        ),
        metadata=AUTH,
    )
    before = await policy_version(api)
    tenant_wide = cache(ttl_s=600)

    created = await set_cache(api, tenant_wide)

    assert (created.cache_policy, created.policy_version) == (tenant_wide, before + 1)
    await set_cache(api, cache(route_id="chat", similarity_threshold=0.95))
    await set_cache(api, cache(route_id="default-llm", enabled=False))
    await set_cache(api, cache("globex", exact_only=True))
    # Replaced per (tenant, route).
    chat = cache(route_id="chat", exact_only=True)
    await set_cache(api, chat)
    assert await policy_version(api) == before + 5
    assert await list_cache(api) == [
        tenant_wide,
        chat,
        cache(route_id="default-llm", enabled=False),
    ]
    assert [(p.tenant_id, p.route_id) for p in await list_cache(api, "")] == [
        ("acme", ""),
        ("acme", "chat"),
        ("acme", "default-llm"),
        ("globex", ""),
    ]
    compiled = compile_policy(await current_snapshot(api)).guardrails
    assert compiled.cache_for("acme", "default-llm") is None
    settings = compiled.cache_for("acme", "default-llm-gemini")
    assert settings is not None and settings.ttl_s == 600

    deleted = await api.control.DeleteCachePolicy(
        api_pb.DeleteCachePolicyRequest(tenant_id="acme", route_id="chat"), metadata=AUTH
    )
    assert deleted.policy_version == before + 6
    await api.control.DeleteCachePolicy(
        api_pb.DeleteCachePolicyRequest(tenant_id="acme"), metadata=AUTH
    )
    assert await list_cache(api) == [cache(route_id="default-llm", enabled=False)]
    error = await rpc_error(
        api.control.DeleteCachePolicy(
            api_pb.DeleteCachePolicyRequest(tenant_id="acme"), metadata=AUTH
        )
    )
    assert (error.code(), error.details()) == (
        NOT_FOUND,
        "tenant 'acme' has no cache policy for every route (tenant-wide)",
    )


def answer_keys(tenant_id: str, count: int) -> dict[str, bytes]:
    return {f"{{{tenant_id}}}:cache:answer:{i:04x}": b"answer" for i in range(count)}


async def test_purge_deletes_the_tenants_cached_answers_only(
    api: Api, redis_client: aioredis.Redis
) -> None:
    for tenant_id in ("acme", "acme2"):
        await create_tenant(api, tenant_id)
    # More than one SCAN page's worth.
    await redis_client.mset(answer_keys("acme", 1234))
    others = {
        **answer_keys("acme2", 3),  # a tenant whose id starts like acme's
        "{acme}:budget:tenant:day:2026-12-02": b"kept",
        "{acme}:cache:index": b"kept",
    }
    await redis_client.mset(others)

    purged = await purge(api)

    assert purged.entries == 1234
    assert sorted(await redis_client.keys("{*")) == sorted(k.encode() for k in others)
    again = await purge(api)
    assert again.HasField("entries") and again.entries == 0


# Deleting tenants and revoking keys


async def test_deleting_a_tenant_deletes_its_guardrails_and_their_redis_state(
    api: Api, redis_client: aioredis.Redis, data_plane: ScriptClient
) -> None:
    for tenant_id in ("acme", "globex"):
        await create_tenant(api, tenant_id)
        key = await create_key(api, tenant_id)
        await set_pii(api, pii(tenant_id))
        await set_budget(api, budget(tenant_id, tokens_per_day=100))
        await set_budget(api, budget(tenant_id, api_key_id=key, tokens_per_day=10))
        await set_cache(api, cache(tenant_id))
        await set_cache(api, cache(tenant_id, route_id="default-llm"))
        await redis_client.mset(answer_keys(tenant_id, 3))
        limits = (await compiled_budgets(api, tenant_id)).tenant
        await BudgetStore(data_plane).reserve("r1", tenant_id, Cost(1, 0), tenant_limits=limits)
    salt = await stored_salt(api, "acme")

    await api.control.DeleteTenant(api_pb.DeleteTenantRequest(tenant_id="acme"), metadata=AUTH)

    snapshot = await current_snapshot(api)
    assert {p.tenant_id for p in snapshot.pii_policies} == {"globex"}
    assert {b.tenant_id for b in snapshot.budgets} == {"globex"}
    assert {c.tenant_id for c in snapshot.cache_policies} == {"globex"}
    assert await redis_client.keys("{acme}*") == []
    assert len(await redis_client.keys("{globex}:cache:answer:*")) == 3
    assert await redis_client.keys("{globex}:budget:*")
    # Made again under the id, the tenant starts with nothing: no policy, a new salt.
    await create_tenant(api, "acme")
    assert await list_budgets(api) == []
    assert await list_cache(api) == []
    await set_pii(api, pii())
    assert await stored_salt(api, "acme") != salt


async def test_revoking_a_key_deletes_its_budgets(api: Api) -> None:
    await create_tenant(api, "acme")
    revoked, kept = await create_key(api), await create_key(api)
    await set_budget(api, budget(tokens_per_day=100))
    for key in (revoked, kept):
        await set_budget(api, budget(api_key_id=key, tokens_per_day=10))

    await api.control.RevokeApiKey(api_pb.RevokeApiKeyRequest(api_key_id=revoked), metadata=AUTH)

    assert [b.budget.api_key_id for b in await list_budgets(api)] == ["", kept]


# Refusals


REFUSED: list[tuple[str, Message, grpc.StatusCode, str]] = [
    ("SetPiiPolicy", api_pb.SetPiiPolicyRequest(), INVALID, "pii_policy is required"),
    (
        "SetPiiPolicy",
        api_pb.SetPiiPolicyRequest(pii_policy=pii("")),
        INVALID,
        "pii_policy.tenant_id is required",
    ),
    (
        "SetPiiPolicy",
        api_pb.SetPiiPolicyRequest(pii_policy=pii("nope")),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "SetPiiPolicy",
        api_pb.SetPiiPolicyRequest(pii_policy=pii(entities={"PERSON": policy_pb2.PII_ACTION_MASK})),
        INVALID,
        "PII policy of tenant 'acme': PERSON needs a spaCy NER model, which this gateway does "
        "not load",
    ),
    (
        "SetPiiPolicy",
        api_pb.SetPiiPolicyRequest(pii_policy=pii(min_score=2)),
        INVALID,
        "PII policy of tenant 'acme': min_score must be from 0 to 1",
    ),
    ("GetPiiPolicy", api_pb.GetPiiPolicyRequest(), INVALID, "tenant_id is required"),
    ("GetPiiPolicy", api_pb.GetPiiPolicyRequest(tenant_id="nope"), NOT_FOUND, "tenant 'nope'"),
    (
        "GetPiiPolicy",
        api_pb.GetPiiPolicyRequest(tenant_id="acme"),
        NOT_FOUND,
        "tenant 'acme' has no PII policy",
    ),
    ("DeletePiiPolicy", api_pb.DeletePiiPolicyRequest(), INVALID, "tenant_id is required"),
    (
        "DeletePiiPolicy",
        api_pb.DeletePiiPolicyRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "DeletePiiPolicy",
        api_pb.DeletePiiPolicyRequest(tenant_id="acme"),
        NOT_FOUND,
        "tenant 'acme' has no PII policy",
    ),
    ("SetBudget", api_pb.SetBudgetRequest(), INVALID, "budget is required"),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget("", tokens_per_day=1)),
        INVALID,
        "budget.tenant_id is required",
    ),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget("nope", tokens_per_day=1)),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget(api_key_id="key-nope", tokens_per_day=1)),
        NOT_FOUND,
        "API key 'key-nope' of tenant 'acme' not found",
    ),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget(fail_open=True)),
        INVALID,
        "budget of tenant 'acme' sets no limit",
    ),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget(usd_per_day=-5)),
        INVALID,
        "budget of tenant 'acme': usd_per_day must be from 0 to 1e+12",
    ),
    (
        "SetBudget",
        api_pb.SetBudgetRequest(budget=budget(tokens_per_day=1, soft_percent=150)),
        INVALID,
        "budget of tenant 'acme': soft_percent must be from 0 to 100",
    ),
    ("ListBudgets", api_pb.ListBudgetsRequest(), INVALID, "tenant_id is required"),
    (
        "ListBudgets",
        api_pb.ListBudgetsRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    ("DeleteBudget", api_pb.DeleteBudgetRequest(), INVALID, "tenant_id is required"),
    (
        "DeleteBudget",
        api_pb.DeleteBudgetRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "DeleteBudget",
        api_pb.DeleteBudgetRequest(tenant_id="acme"),
        NOT_FOUND,
        "budget of tenant 'acme' not found",
    ),
    ("ResetBudgetSpend", api_pb.ResetBudgetSpendRequest(), INVALID, "tenant_id is required"),
    (
        "ResetBudgetSpend",
        api_pb.ResetBudgetSpendRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "ResetBudgetSpend",
        api_pb.ResetBudgetSpendRequest(tenant_id="acme", api_key_id="key-nope"),
        NOT_FOUND,
        "API key 'key-nope' of tenant 'acme' not found",
    ),
    (
        "ResetBudgetSpend",
        api_pb.ResetBudgetSpendRequest(tenant_id="acme", period="week"),
        INVALID,
        'period \'week\' is not valid: use "day" or "month", or leave it empty for both',
    ),
    ("SetCachePolicy", api_pb.SetCachePolicyRequest(), INVALID, "cache_policy is required"),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache("")),
        INVALID,
        "cache_policy.tenant_id is required",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache("nope")),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache(route_id="Chat Route")),
        INVALID,
        "cache_policy.route_id 'Chat Route' is not valid",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache(route_id="chat")),
        NOT_FOUND,
        "route 'chat' not found: name a policy route or a built-in LLM route (default-llm, ",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache(route_id="orders")),
        INVALID,
        "route 'orders' is not an LLM route: the answer cache serves LLM calls only",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(cache_policy=cache(ttl_s=10**9)),
        INVALID,
        "cache policy of tenant 'acme': ttl_s may be at most 2592000",
    ),
    (
        "SetCachePolicy",
        api_pb.SetCachePolicyRequest(
            cache_policy=cache(embeddings=policy_pb2.EMBEDDING_SOURCE_PROVIDER)
        ),
        INVALID,
        "cache policy of tenant 'acme': PROVIDER embeddings need an embedding_model",
    ),
    (
        "ListCachePolicies",
        api_pb.ListCachePoliciesRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    ("DeleteCachePolicy", api_pb.DeleteCachePolicyRequest(), INVALID, "tenant_id is required"),
    (
        "DeleteCachePolicy",
        api_pb.DeleteCachePolicyRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "DeleteCachePolicy",
        api_pb.DeleteCachePolicyRequest(tenant_id="acme", route_id="chat"),
        NOT_FOUND,
        "tenant 'acme' has no cache policy for route 'chat'",
    ),
    ("PurgeCache", api_pb.PurgeCacheRequest(), INVALID, "tenant_id is required"),
    (
        "PurgeCache",
        api_pb.PurgeCacheRequest(tenant_id="nope"),
        NOT_FOUND,
        "tenant 'nope' not found",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "code", "words"),
    REFUSED,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(REFUSED)],
)
async def test_refusals_name_the_problem_and_save_nothing(
    api: Api, method: str, request_message: Message, code: grpc.StatusCode, words: str
) -> None:
    await create_tenant(api, "acme")
    await api.control.CreateRoute(
        api_pb.CreateRouteRequest(
            route=policy_pb2.Route(
                id="orders",
                path_prefix="/orders",
                kind=policy_pb2.ROUTE_KIND_REST,
                upstream_url="http://orders.internal:8080",
            )
        ),
        metadata=AUTH,
    )
    before = await policy_version(api)

    error = await rpc_error(getattr(api.control, method)(request_message, metadata=AUTH))

    assert error.code() == code, error.details()
    assert (error.details() or "").startswith(words), error.details()
    assert await policy_version(api) == before


async def test_another_tenants_key_is_not_found(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    globex_key = await create_key(api, "globex")
    for call in (
        set_budget(api, budget(api_key_id=globex_key, tokens_per_day=1)),
        reset_spend(api, key_id=globex_key),
    ):
        error = await rpc_error(call)
        assert (error.code(), error.details()) == (
            NOT_FOUND,
            f"API key '{globex_key}' of tenant 'acme' not found",
        )
