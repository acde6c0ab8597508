"""BudgetStore against a real redis-server (and once against a real Redis Cluster): holds,
refusals per budget, the concurrency proof, idempotency, lapsed holds, period rollover on a fake
clock, soft thresholds, and Redis away (fail closed and open)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from extproc.budgets import (
    PERIOD_GRACE_S,
    Admission,
    BudgetMark,
    BudgetStore,
    Cost,
    Reservation,
    Settlement,
    Spend,
    budget_key,
    holds_key,
    record_key,
)
from extproc.redis_pipe import PipelinedRedis, PipelinedRedisCluster, Script, hot_path_client
from gatez.budgets import BudgetLimits, Period, Scope, Unit
from gatez.processes import free_port
from gatez.redis_client import RedisTarget
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster

START = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


class FakeClock:
    """Epoch seconds, moved by the test."""

    def __init__(self, at: datetime = START) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    """The data plane's client on the test Redis (flushed by `redis_client`)."""
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


@pytest.fixture
async def dead_redis() -> AsyncIterator[PipelinedRedis]:
    """A client for a Redis that is not there (nothing listens on its port)."""
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    yield client
    await client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(pipelined: PipelinedRedis, clock: FakeClock) -> BudgetStore:
    return BudgetStore(pipelined, clock=clock, lease_s=60)


async def figures(client: aioredis.Redis, key: str) -> tuple[int, int, int, int]:
    """(tokens spent, tokens held, USD spent, USD held) of one budget hash."""
    values = await client.hmget(key, ["tokens_spent", "tokens_held", "usd_spent", "usd_held"])
    return tuple(int(v or 0) for v in values)  # type: ignore[return-value]


ROOMY = BudgetLimits(10**9, 10**9, 10**12, 10**12)


def tight_at(period: Period, unit: Unit, limit: int) -> BudgetLimits:
    """ROOMY but for one limit."""
    field = {
        (Period.DAY, Unit.TOKENS): "tokens_per_day",
        (Period.MONTH, Unit.TOKENS): "tokens_per_month",
        (Period.DAY, Unit.USD): "usd_micros_per_day",
        (Period.MONTH, Unit.USD): "usd_micros_per_month",
    }[period, unit]
    return replace(ROOMY, **{field: limit})


@pytest.mark.parametrize("scope", list(Scope))
@pytest.mark.parametrize("period", list(Period))
@pytest.mark.parametrize("unit", list(Unit))
async def test_each_budget_admits_within_its_limit_and_refuses_beyond_it_changing_nothing(
    store: BudgetStore,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    scope: Scope,
    period: Period,
    unit: Unit,
) -> None:
    tight = tight_at(period, unit, 100)
    # The tight budget is this (scope, period, unit); every other one has plenty of room.
    tenant_limits = tight if scope is Scope.TENANT else ROOMY
    key_limits = tight if scope is Scope.KEY else ROOMY
    cost = Cost(tokens=60, usd_micros=60)

    async def reserve(request_id: str) -> Reservation:
        return await store.reserve(
            request_id,
            "acme",
            cost,
            tenant_limits=tenant_limits,
            key_id="k1",
            key_limits=key_limits,
        )

    first = await reserve("r1")
    assert first.admission is Admission.ADMITTED
    all_keys = [budget_key("acme", owner, p, START) for owner in (None, "k1") for p in Period]
    before = [await figures(redis_client, key) for key in all_keys]
    assert all(f == (0, 60, 0, 60) for f in before)

    second = await reserve("r2")
    assert second.admission is Admission.REFUSED
    resets_at = (
        datetime(2026, 12, 3, tzinfo=UTC)
        if period is Period.DAY
        else datetime(2027, 1, 1, tzinfo=UTC)
    )
    assert second.exhausted == BudgetMark(scope, period, unit, resets_at)
    assert second.retry_after_s == round(resets_at.timestamp() - clock.now)
    # Refused: no budget moved, the roomy ones included.
    assert [await figures(redis_client, key) for key in all_keys] == before


async def test_usd_amounts_beyond_lua_number_printing_stay_exact(
    store: BudgetStore, redis_client: aioredis.Redis
) -> None:
    # 10^15 micro-dollars: Lua prints such a number as 1e+15, which HINCRBY would refuse.
    limits = BudgetLimits(usd_micros_per_month=3 * 10**15)
    big = Cost(tokens=1, usd_micros=10**15 + 7)
    reservation = await store.reserve("r1", "acme", big, tenant_limits=limits)
    assert reservation.admitted
    outcome = await store.settle(reservation, Cost(tokens=1, usd_micros=10**15 + 3))
    assert outcome.settlement is Settlement.DONE
    key = budget_key("acme", None, Period.MONTH, START)
    assert await figures(redis_client, key) == (1, 0, 10**15 + 3, 0)


async def test_no_budget_configured_costs_no_redis_call(dead_redis: PipelinedRedis) -> None:
    store = BudgetStore(dead_redis)
    reservation = await store.reserve("r1", "acme", Cost(10, 10), tenant_limits=None)
    assert reservation.admission is Admission.ADMITTED
    assert (await store.settle(reservation, Cost(5, 5))).settlement is Settlement.NOTHING
    assert dead_redis.errors == 0


async def test_concurrent_reservations_admit_exactly_what_fits_and_spend_never_exceeds(
    store: BudgetStore, redis_client: aioredis.Redis
) -> None:
    """The concurrency proof: 200 calls of 100 tokens at once against 5,000 tokens admit 50;
    settled with actual usage at most what they reserved, spend stays within the limit; a
    second wave then admits exactly what the unused part of the reservations left."""
    limits = BudgetLimits(tokens_per_day=5_000)
    cost = Cost(tokens=100, usd_micros=0)
    key = budget_key("acme", None, Period.DAY, START)

    async def wave(name: str) -> list[Reservation]:
        return list(
            await asyncio.gather(
                *(
                    store.reserve(f"{name}-{i}", "acme", cost, tenant_limits=limits)
                    for i in range(200)
                )
            )
        )

    first = await wave("a")
    admitted = [r for r in first if r.admitted]
    assert len(admitted) == 50
    assert await figures(redis_client, key) == (0, 5_000, 0, 0)

    rng = random.Random(11)
    actual = [rng.randint(1, 100) for _ in admitted]
    await asyncio.gather(
        *(
            store.settle(r, Cost(tokens=used, usd_micros=0))
            for r, used in zip(admitted, actual, strict=True)
        )
    )
    spent = sum(actual)
    assert await figures(redis_client, key) == (spent, 0, 0, 0)
    assert spent <= 5_000

    second = await wave("b")
    admitted_again = [r for r in second if r.admitted]
    assert len(admitted_again) == (5_000 - spent) // 100
    await asyncio.gather(*(store.settle(r, cost) for r in admitted_again))
    tokens_spent, held, _, _ = await figures(redis_client, key)
    assert held == 0
    assert tokens_spent <= 5_000


async def test_interleaved_calls_never_take_the_budget_past_its_limit(
    store: BudgetStore, redis_client: aioredis.Redis
) -> None:
    """Calls starting while others settle (a stream of streamed requests): sampled as it runs,
    spent + held never passes the limit, and at the end spent alone is within it."""
    limits = BudgetLimits(tokens_per_day=5_000, usd_micros_per_day=50_000)
    key = budget_key("acme", None, Period.DAY, START)
    rng = random.Random(7)
    admitted = 0

    async def call(i: int) -> None:
        nonlocal admitted
        await asyncio.sleep(rng.random() * 0.2)
        reservation = await store.reserve(f"r{i}", "acme", Cost(100, 1_000), tenant_limits=limits)
        if not reservation.admitted:
            return
        admitted += 1
        await asyncio.sleep(rng.random() * 0.05)  # the stream runs
        used = rng.randint(0, 100)
        await store.settle(reservation, Cost(used, used * 10))

    samples = []

    async def sample() -> None:
        for _ in range(60):
            samples.append(await figures(redis_client, key))
            await asyncio.sleep(0.005)

    await asyncio.gather(sample(), *(call(i) for i in range(400)))
    assert all(s[0] + s[1] <= 5_000 and s[2] + s[3] <= 50_000 for s in samples)
    tokens_spent, tokens_held, usd_spent, usd_held = await figures(redis_client, key)
    assert (tokens_held, usd_held) == (0, 0)
    assert tokens_spent <= 5_000 and usd_spent == tokens_spent * 10
    assert admitted > 50  # settling gave unused tokens back to later calls


async def test_settle_and_release_twice_count_once(
    store: BudgetStore, redis_client: aioredis.Redis
) -> None:
    limits = BudgetLimits(tokens_per_day=1_000, usd_micros_per_day=1_000)
    key = budget_key("acme", None, Period.DAY, START)

    settled = await store.reserve("r1", "acme", Cost(100, 100), tenant_limits=limits)
    first, second = await asyncio.gather(
        store.settle(settled, Cost(40, 30)), store.settle(settled, Cost(40, 30))
    )
    assert {first.settlement, second.settlement} == {Settlement.DONE, Settlement.ALREADY}
    assert (await store.release(settled)).settlement is Settlement.ALREADY
    assert await figures(redis_client, key) == (40, 0, 30, 0)

    released = await store.reserve("r2", "acme", Cost(100, 100), tenant_limits=limits)
    assert (await store.release(released)).settlement is Settlement.DONE
    assert (await store.release(released)).settlement is Settlement.ALREADY
    # A settle after the release is a caller's mistake: it must not charge either.
    assert (await store.settle(released, Cost(50, 50))).settlement is Settlement.ALREADY
    assert await figures(redis_client, key) == (40, 0, 30, 0)
    assert await redis_client.zcard(holds_key("acme")) == 0


async def test_reserve_rerun_with_the_same_request_id_holds_once(
    store: BudgetStore, redis_client: aioredis.Redis
) -> None:
    limits = BudgetLimits(tokens_per_day=150)
    key = budget_key("acme", None, Period.DAY, START)
    first = await store.reserve("req-1", "acme", Cost(100, 0), tenant_limits=limits)
    # A failover re-runs the body phase: the same request reserves again, and is let on.
    rerun = await store.reserve("req-1", "acme", Cost(100, 0), tenant_limits=limits)
    assert first.admission is Admission.ADMITTED and not first.replayed
    assert rerun.admission is Admission.ADMITTED and rerun.replayed
    assert await figures(redis_client, key) == (0, 100, 0, 0)

    await store.settle(rerun, Cost(80, 0))
    after_settle = await store.reserve("req-1", "acme", Cost(100, 0), tenant_limits=limits)
    assert after_settle.replayed
    assert await figures(redis_client, key) == (80, 0, 0, 0)

    # A released request that runs again is a new attempt: it holds again.
    other = await store.reserve("req-2", "acme", Cost(50, 0), tenant_limits=limits)
    await store.release(other)
    again = await store.reserve("req-2", "acme", Cost(50, 0), tenant_limits=limits)
    assert again.admission is Admission.ADMITTED and not again.replayed
    assert await figures(redis_client, key) == (80, 50, 0, 0)


async def test_a_crashed_data_planes_hold_lapses_and_a_late_settle_still_charges(
    store: BudgetStore, redis_client: aioredis.Redis, clock: FakeClock
) -> None:
    limits = BudgetLimits(tokens_per_day=100)
    key = budget_key("acme", None, Period.DAY, START)
    orphan = await store.reserve("crashed", "acme", Cost(100, 0), tenant_limits=limits)
    assert orphan.admitted

    clock.advance(59)  # within the lease (60 s): still held
    blocked = await store.reserve("r2", "acme", Cost(1, 0), tenant_limits=limits)
    assert blocked.admission is Admission.REFUSED

    clock.advance(2)  # lapsed: the next reserve sweeps it
    fresh = await store.reserve("r3", "acme", Cost(100, 0), tenant_limits=limits)
    assert fresh.admission is Admission.ADMITTED
    assert await figures(redis_client, key) == (0, 100, 0, 0)
    assert await redis_client.zrange(holds_key("acme"), 0, -1) == [b"r3"]

    # The call behind the lapsed hold did finish after all: its usage is charged, and the
    # live hold is untouched.
    assert (await store.settle(orphan, Cost(30, 0))).settlement is Settlement.DONE
    assert await figures(redis_client, key) == (30, 100, 0, 0)
    assert (await store.release(orphan)).settlement is Settlement.ALREADY


async def test_period_rollover_on_the_fake_clock(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    clock = FakeClock(datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC))
    store = BudgetStore(pipelined, clock=clock, lease_s=60)
    limits = BudgetLimits(tokens_per_day=100, tokens_per_month=1_000)
    day = budget_key("acme", None, Period.DAY, datetime(2026, 12, 31, tzinfo=UTC))
    assert day == "{acme}:budget:tenant:day:2026-12-31"

    late = await store.reserve("r1", "acme", Cost(100, 0), tenant_limits=limits)
    refused = await store.reserve("r2", "acme", Cost(1, 0), tenant_limits=limits)
    assert refused.exhausted is not None and refused.exhausted.period is Period.DAY
    assert refused.retry_after_s == 30
    day_end = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    assert await redis_client.pexpiretime(day) == (day_end + PERIOD_GRACE_S) * 1000

    clock.advance(40)  # 2027-01-01 00:00:10: a new day and a new month
    fresh = await store.reserve("r3", "acme", Cost(100, 0), tenant_limits=limits)
    assert fresh.admission is Admission.ADMITTED
    assert {b.key for b in fresh.budgets} == {
        "{acme}:budget:tenant:day:2027-01-01",
        "{acme}:budget:tenant:month:2027-01",
    }
    # Settled after midnight, the December call is charged to December.
    await store.settle(late, Cost(70, 0))
    assert await figures(redis_client, day) == (70, 0, 0, 0)
    assert await figures(redis_client, "{acme}:budget:tenant:month:2026-12") == (70, 0, 0, 0)
    assert await figures(redis_client, "{acme}:budget:tenant:day:2027-01-01") == (0, 100, 0, 0)


async def test_soft_threshold_is_reported_once_per_budget_and_period(
    store: BudgetStore, clock: FakeClock
) -> None:
    limits = BudgetLimits(tokens_per_day=1_000, usd_micros_per_month=10_000)

    async def call(request_id: str, used: Cost) -> tuple[BudgetMark, ...]:
        reservation = await store.reserve(
            request_id, "acme", Cost(100, 1_000), tenant_limits=limits
        )
        assert reservation.admitted
        return (await store.settle(reservation, used)).soft_crossed

    assert await call("r1", Cost(500, 5_000)) == ()
    crossed = await call("r2", Cost(100, 3_000))  # 600 tokens, 8,000 micro-dollars
    assert crossed == (
        BudgetMark(Scope.TENANT, Period.MONTH, Unit.USD, datetime(2027, 1, 1, tzinfo=UTC)),
    )
    crossed = await call("r3", Cost(250, 0))  # 850 tokens
    assert [(m.period, m.unit) for m in crossed] == [(Period.DAY, Unit.TOKENS)]
    assert await call("r4", Cost(50, 500)) == ()  # past both already: not again

    clock.advance(24 * 3600)  # the next day: the day's flag starts afresh, the month's not
    assert await call("r5", Cost(820, 0)) == (
        BudgetMark(Scope.TENANT, Period.DAY, Unit.TOKENS, datetime(2026, 12, 4, tzinfo=UTC)),
    )


async def test_soft_threshold_of_a_lowered_limit_is_reported_by_the_reserve(
    store: BudgetStore,
) -> None:
    reservation = await store.reserve(
        "r1", "acme", Cost(100, 0), tenant_limits=BudgetLimits(tokens_per_day=1_000)
    )
    await store.settle(reservation, Cost(100, 0))
    lowered = await store.reserve(
        "r2", "acme", Cost(10, 0), tenant_limits=BudgetLimits(tokens_per_day=120)
    )
    assert [(m.period, m.unit) for m in lowered.soft_crossed] == [(Period.DAY, Unit.TOKENS)]


async def test_soft_fractions_are_each_owners_own_and_the_settle_keeps_the_reserves(
    store: BudgetStore,
) -> None:
    """The tenant says 50 %, its key 90 %, of one 1,000-token day: each crosses at its own."""
    limits = BudgetLimits(tokens_per_day=1_000)

    async def call(request_id: str, used: int) -> list[Scope]:
        reservation = await store.reserve(
            request_id,
            "acme",
            Cost(100, 0),
            tenant_limits=limits,
            key_id="k1",
            key_limits=limits,
            tenant_soft_fraction=0.5,
            key_soft_fraction=0.9,
        )
        assert reservation.soft_crossed == ()
        settled = await store.settle(reservation, Cost(used, 0))
        return [mark.scope for mark in settled.soft_crossed]

    assert await call("r1", 499) == []
    assert await call("r2", 1) == [Scope.TENANT]  # 500 spent: the tenant's 50 %
    assert await call("r3", 399) == []  # 899: below the key's 90 %
    assert await call("r4", 1) == [Scope.KEY]
    # No fraction from the owner: the store's (0.8, already passed), 0: none at all.
    none = store.budgets("acme", limits, "k1", limits, key_soft_fraction=0.0)
    assert [b.soft_fraction for b in none] == [0.8, 0.0]


@pytest.mark.parametrize(
    ("fail_open", "admission"), [(False, Admission.UNAVAILABLE), (True, Admission.UNCHECKED)]
)
async def test_redis_away_fails_closed_by_default_or_open_by_choice(
    dead_redis: PipelinedRedis, fail_open: bool, admission: Admission
) -> None:
    store = BudgetStore(dead_redis, timeout_s=0.5)
    reservation = await store.reserve(
        "r1",
        "acme",
        Cost(10, 10),
        tenant_limits=BudgetLimits(tokens_per_day=100),
        fail_open=fail_open,
    )
    assert reservation.admission is admission
    assert reservation.admitted is fail_open
    assert (await store.settle(reservation, Cost(5, 5))).settlement is Settlement.FAILED
    assert (await store.release(reservation)).settlement is Settlement.FAILED


async def test_fail_closed_is_the_default_of_reserve(dead_redis: PipelinedRedis) -> None:
    store = BudgetStore(dead_redis)
    reservation = await store.reserve(
        "r1", "acme", Cost(10, 10), tenant_limits=BudgetLimits(tokens_per_day=100)
    )
    assert reservation.admission is Admission.UNAVAILABLE


@pytest.mark.parametrize("fail_open", [False, True])
async def test_a_reply_past_the_deadline_leaves_no_hold_behind_a_refusal(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis, fail_open: bool
) -> None:
    store = BudgetStore(pipelined, clock=FakeClock(), timeout_s=0.1)
    limits = BudgetLimits(tokens_per_day=1_000)
    key = budget_key("acme", None, Period.DAY, START)
    await pipelined.run_script(Script("return 1"), (), ())  # connected before the pause
    # Scripts wait while clients are paused: the reserve's reply comes after its deadline.
    await redis_client.client_pause(400, all=False)
    reservation = await store.reserve(
        "r1", "acme", Cost(100, 0), tenant_limits=limits, fail_open=fail_open
    )
    assert reservation.admission is (Admission.UNCHECKED if fail_open else Admission.UNAVAILABLE)
    await asyncio.sleep(0.6)
    if fail_open:
        # Let through and held late: its settle settles that hold.
        assert await figures(redis_client, key) == (0, 100, 0, 0)
        assert (await store.settle(reservation, Cost(70, 0))).settlement is Settlement.DONE
        assert await figures(redis_client, key) == (70, 0, 0, 0)
    else:
        assert await figures(redis_client, key) == (0, 0, 0, 0)
        assert await redis_client.hget(record_key("acme", "r1"), "state") == b"released"


async def test_unchecked_call_is_charged_when_redis_is_back(
    dead_redis: PipelinedRedis, pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    clock = FakeClock()
    limits = BudgetLimits(tokens_per_day=100)
    away = BudgetStore(dead_redis, clock=clock)
    reservation = await away.reserve(
        "r1", "acme", Cost(50, 0), tenant_limits=limits, fail_open=True
    )
    assert reservation.admission is Admission.UNCHECKED
    back = BudgetStore(pipelined, clock=clock)
    assert (await back.settle(reservation, Cost(40, 0))).settlement is Settlement.DONE
    assert await figures(redis_client, budget_key("acme", None, Period.DAY, START)) == (
        40,
        0,
        0,
        0,
    )


async def test_read_spend_of_tenant_and_key(store: BudgetStore) -> None:
    tenant_limits = BudgetLimits(tokens_per_day=1_000, usd_micros_per_month=10**6)
    key_limits = BudgetLimits(tokens_per_month=500)
    settled = await store.reserve(
        "r1",
        "acme",
        Cost(100, 2_000),
        tenant_limits=tenant_limits,
        key_id="k1",
        key_limits=key_limits,
    )
    await store.settle(settled, Cost(60, 1_500))
    await store.reserve(
        "r2",
        "acme",
        Cost(100, 2_000),
        tenant_limits=tenant_limits,
        key_id="k1",
        key_limits=key_limits,
    )
    assert await store.read_spend("acme") == (
        Spend(Scope.TENANT, Period.DAY, "2026-12-02", 60, 100, 1_500, 2_000),
        Spend(Scope.TENANT, Period.MONTH, "2026-12", 60, 100, 1_500, 2_000),
    )
    assert await store.read_spend("acme", "k1") == (
        Spend(Scope.KEY, Period.DAY, "2026-12-02", 0, 0, 0, 0),  # the key has no day budget
        Spend(Scope.KEY, Period.MONTH, "2026-12", 60, 100, 1_500, 2_000),
    )
    assert await store.read_spend("nobody") == (
        Spend(Scope.TENANT, Period.DAY, "2026-12-02", 0, 0, 0, 0),
        Spend(Scope.TENANT, Period.MONTH, "2026-12", 0, 0, 0, 0),
    )


def test_tenant_ids_with_braces_are_refused() -> None:
    with pytest.raises(ValueError, match="hash tag"):
        holds_key("a}b")


async def test_on_a_redis_cluster(
    redis_cluster: LocalRedisCluster, redis_cluster_client: aioredis.RedisCluster
) -> None:
    """Every key of a tenant is in its hash slot: the scripts run on a Redis Cluster."""
    client = hot_path_client(RedisTarget.parse(redis_cluster.url))
    assert isinstance(client, PipelinedRedisCluster)
    try:
        clock = FakeClock()
        store = BudgetStore(client, clock=clock, lease_s=60)
        limits = BudgetLimits(tokens_per_day=500, usd_micros_per_month=10**6)
        key_limits = BudgetLimits(tokens_per_month=400)
        results = await asyncio.gather(
            *(
                store.reserve(
                    f"r{i}",
                    tenant,
                    Cost(100, 10),
                    tenant_limits=limits,
                    key_id="k1",
                    key_limits=key_limits,
                )
                for tenant in ("acme", "initech", "globex")
                for i in range(10)
            )
        )
        assert sum(r.admitted for r in results) == 3 * 4  # the key's 400 tokens a month
        await asyncio.gather(*(store.settle(r, Cost(50, 5)) for r in results if r.admitted))
        spend = await store.read_spend("initech")
        assert [(s.tokens_spent, s.tokens_held) for s in spend] == [(200, 0), (200, 0)]
        clock.advance(61)
        orphan = await store.reserve(
            "orphan", "globex", Cost(1, 0), tenant_limits=limits, key_id="k2"
        )
        assert orphan.admitted
    finally:
        await client.close()
