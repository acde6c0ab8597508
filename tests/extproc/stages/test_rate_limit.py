"""RateLimit on Flows against a real redis-server: GCRA buckets per tenant, 429s, failure modes."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from extproc.redis_pipe import PipelinedRedis
from extproc.stages.rate_limit import RateLimit, bucket_key
from gatez.errors import RateLimited, Unauthenticated, Unavailable
from gatez.pipeline import CONTINUE, FailureMode, Flow, Principal, Respond
from gatez.policy import CompiledPolicy, compile_policy
from gatez.processes import free_port
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow, run_stage
from tests.support.redis import RedisServer


def build_policy(**limits: tuple[int, int] | None) -> CompiledPolicy:
    """Tenants named by keyword, each with (requests_per_minute, burst) or None for no limit."""
    tenants = []
    for tenant_id, limit in limits.items():
        tenant = policy_pb2.Tenant(id=tenant_id)
        if limit is not None:
            tenant.rate_limit.CopyFrom(
                policy_pb2.RateLimit(requests_per_minute=limit[0], burst=limit[1])
            )
        tenants.append(tenant)
    return compile_policy(policy_pb2.PolicySnapshot(version=1, tenants=tenants))


def flow_for(policy: CompiledPolicy | None, tenant_id: str) -> Flow:
    """A flow as Authenticate leaves it."""
    flow = make_flow(policy)
    flow.principal = Principal(tenant_id=tenant_id, key_id=f"key-{tenant_id}", subject="test")
    return flow


@pytest.fixture
async def pipelined(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> AsyncIterator[PipelinedRedis]:
    """The data plane's client on the test Redis (flushed by `redis_client`)."""
    client = PipelinedRedis.from_url(redis_server.url)
    yield client
    await client.close()


@pytest.fixture
def stage(pipelined: PipelinedRedis) -> RateLimit:
    return RateLimit(pipelined)


@pytest.fixture
async def dead_redis() -> AsyncIterator[PipelinedRedis]:
    """A client for a Redis that is not there (nothing listens on its port)."""
    client = PipelinedRedis.from_url(f"redis://127.0.0.1:{free_port()}")
    yield client
    await client.close()


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A port that accepts connections (the kernel does, from the backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


async def test_requests_under_the_limit_pass(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(60, 5))

    for _ in range(5):
        assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE

    # One key per tenant, named with a literal Cluster hash tag, expiring when the bucket
    # would be full again (5 requests at one per second: about 5 s).
    assert await redis_client.keys("*") == [b"rl:{acme}:requests"]
    assert 4_000 < await redis_client.pttl(bucket_key("acme")) <= 5_000


@pytest.mark.parametrize(
    ("requests_per_minute", "burst", "retry_after_s"),
    [(60, 5, 1), (600, 10, 1), (6, 2, 10), (1, 1, 60), (4, 3, 15)],
)
async def test_request_beyond_the_burst_is_429_with_retry_after(
    stage: RateLimit, requests_per_minute: int, burst: int, retry_after_s: int
) -> None:
    policy = build_policy(acme=(requests_per_minute, burst))
    for _ in range(burst):
        assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE

    with pytest.raises(RateLimited) as caught:
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    # The wait is one emission interval, less the moments the test took.
    assert caught.value.retry_after_s == retry_after_s
    response = Respond.from_error(caught.value)
    assert response.status == 429
    assert ("retry-after", str(retry_after_s)) in response.headers


async def test_refused_requests_do_not_drain_the_bucket(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 2))  # no refill during the test
    for _ in range(2):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))
    bucket = await redis_client.get(bucket_key("acme"))

    for _ in range(20):
        with pytest.raises(RateLimited):
            await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    # A refusal writes nothing, so a client hammering through its 429s recovers on time.
    assert await redis_client.get(bucket_key("acme")) == bucket


async def test_bucket_refills_at_the_sustained_rate(stage: RateLimit) -> None:
    policy = build_policy(acme=(600, 1))  # one request per 100 ms
    await run_stage(stage.on_request_headers, flow_for(policy, "acme"))
    with pytest.raises(RateLimited):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    await asyncio.sleep(0.12)

    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE


async def test_tenants_have_independent_buckets(stage: RateLimit) -> None:
    policy = build_policy(acme=(1, 3), globex=(1, 3))
    for _ in range(3):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))
    with pytest.raises(RateLimited):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    for _ in range(3):
        assert await run_stage(stage.on_request_headers, flow_for(policy, "globex")) is CONTINUE


async def test_concurrent_requests_get_exactly_the_burst(
    stage: RateLimit, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    # Also through a second client, as a second data plane would be.
    second = PipelinedRedis.from_url(redis_server.url)
    other_plane = RateLimit(second)
    policy = build_policy(acme=(1, 10))  # no refill during the test

    results = await asyncio.gather(
        *(
            run_stage(
                (stage if n % 2 else other_plane).on_request_headers, flow_for(policy, "acme")
            )
            for n in range(50)
        ),
        return_exceptions=True,
    )

    assert sum(r is CONTINUE for r in results) == 10
    assert sum(isinstance(r, RateLimited) for r in results) == 40
    await second.close()


async def test_no_limit_configured_touches_no_redis(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis, dead_redis: PipelinedRedis
) -> None:
    policy = build_policy(initech=None)

    assert (
        await run_stage(RateLimit(pipelined).on_request_headers, flow_for(policy, "initech"))
        is CONTINUE
    )
    # Not even a round trip: a stage on a Redis that is not there passes too.
    assert (
        await run_stage(RateLimit(dead_redis).on_request_headers, flow_for(policy, "initech"))
        is CONTINUE
    )
    assert await redis_client.dbsize() == 0


async def test_script_is_reloaded_when_redis_forgot_it(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(60, 5))
    await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    await redis_client.script_flush()  # as after a Redis restart or failover

    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE


@pytest.mark.parametrize("failure", ["refused", "hung"])
async def test_redis_down_fails_closed_with_503_in_bounded_time(
    failure: str, dead_redis: PipelinedRedis, hung_port: int
) -> None:
    policy = build_policy(acme=(60, 5))
    client = {
        "refused": dead_redis,
        # Accepted by the kernel, never answered: only the stage's own deadline ends the wait.
        "hung": PipelinedRedis.from_url(f"redis://127.0.0.1:{hung_port}"),
    }[failure]
    stage = RateLimit(client, timeout_s=0.3)

    started = time.monotonic()
    with pytest.raises(Unavailable) as caught:
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))

    assert time.monotonic() - started < 1.0
    assert caught.value.http_status == 503
    assert caught.value.public_message == "rate limiter unavailable"
    await client.close()


@pytest.mark.parametrize("failure", ["refused", "hung"])
async def test_redis_down_passes_when_fail_open(
    failure: str, dead_redis: PipelinedRedis, hung_port: int
) -> None:
    policy = build_policy(acme=(60, 5))
    client = (
        dead_redis
        if failure == "refused"
        else PipelinedRedis.from_url(f"redis://127.0.0.1:{hung_port}")
    )
    stage = RateLimit(client, fail_open=True, timeout_s=0.3)

    assert stage.failure_mode is FailureMode.OPEN
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await client.close()


async def test_an_unknown_tenant_or_no_principal_is_401(stage: RateLimit) -> None:
    with pytest.raises(Unauthenticated):
        await run_stage(stage.on_request_headers, flow_for(None, "acme"))
    with pytest.raises(Unauthenticated):
        await run_stage(stage.on_request_headers, make_flow(build_policy(acme=(60, 5))))


async def wait_for_token_ahead(stage: RateLimit, tenant_id: str) -> None:
    """Until the token taken ahead for the tenant has arrived (held, or refused)."""
    ahead = stage._ahead.get(tenant_id)
    if ahead is not None:
        await asyncio.wait([ahead.reply], timeout=2)
        await asyncio.sleep(0)  # its callback runs on the next turn


async def test_the_next_request_uses_a_token_taken_ahead_without_waiting(
    stage: RateLimit, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 3))  # no refill during the test
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await wait_for_token_ahead(stage, "acme")

    flow = flow_for(policy, "acme")
    # Answered on the spot: nothing deferred, no Redis round trip on this request's way.
    assert stage.on_request_headers(flow) is CONTINUE
    assert flow.deferred == []
    await wait_for_token_ahead(stage, "acme")

    # Two requests and one token held for the next: the bucket is empty to everyone else.
    other_plane = RateLimit(PipelinedRedis.from_url(redis_server.url))
    with pytest.raises(RateLimited):
        await run_stage(other_plane.on_request_headers, flow_for(policy, "acme"))
    # ...and this plane's next request is the third and last of the burst.
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    with pytest.raises(RateLimited):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))


async def test_a_token_taken_ahead_and_not_used_is_given_back(
    pipelined: PipelinedRedis, redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 2))  # no refill during the test
    stage = RateLimit(pipelined, hold_s=0.05)
    other_plane = RateLimit(PipelinedRedis.from_url(redis_server.url))
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await wait_for_token_ahead(stage, "acme")
    assert "acme" in stage._ahead  # the second token, held

    await asyncio.sleep(0.15)  # unused past hold_s: given back

    assert "acme" not in stage._ahead
    assert await run_stage(other_plane.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await wait_for_token_ahead(other_plane, "acme")
    with pytest.raises(RateLimited):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))


async def test_closing_gives_back_the_tokens_taken_ahead(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 2))
    stage = RateLimit(pipelined)
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await wait_for_token_ahead(stage, "acme")
    held = await redis_client.get(bucket_key("acme"))

    await stage.close()

    # One emission interval (60 s at 1 per minute) given back.
    after = await redis_client.get(bucket_key("acme"))
    assert isinstance(held, bytes) and isinstance(after, bytes)
    assert int(held) - int(after) == 60_000_000


async def test_a_token_taken_under_an_older_rule_is_given_back_not_used(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    first = flow_for(build_policy(acme=(1, 5)), "acme")
    assert await run_stage(stage.on_request_headers, first) is CONTINUE
    await wait_for_token_ahead(stage, "acme")

    flow = flow_for(build_policy(acme=(1, 2)), "acme")  # the tenant's limit changed
    stage.on_request_headers(flow)

    assert len(flow.deferred) == 1  # judged anew by Redis, under the new rule
    assert await run_stage(lambda _: CONTINUE, flow) is CONTINUE


async def test_a_busy_tenant_takes_several_tokens_per_round_trip_and_counts_exactly(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 100))  # a lease of 8; no refill during the test
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    await wait_for_token_ahead(stage, "acme")

    for _ in range(8):
        flow = flow_for(policy, "acme")
        assert stage.on_request_headers(flow) is CONTINUE
        assert flow.deferred == []  # no Redis round trip for any of the eight
    await wait_for_token_ahead(stage, "acme")  # the next lease, taken after the last claim
    await stage.close()  # gives that unclaimed lease back

    # Nine requests, nine tokens: the bucket's TAT is nine intervals (of 60 s) ahead of now.
    tat = await redis_client.get(bucket_key("acme"))
    (seconds, micros) = await redis_client.time()
    assert isinstance(tat, bytes)
    ahead_s = (int(tat) - (seconds * 1_000_000 + micros)) / 1e6
    assert 9 * 60 - 5 < ahead_s <= 9 * 60


async def test_a_refused_lease_does_not_refuse_a_request_one_token_would_pass(
    stage: RateLimit, redis_client: aioredis.Redis
) -> None:
    policy = build_policy(acme=(1, 100))
    (seconds, micros) = await redis_client.time()
    # 95 of 100 tokens gone: one request passes, a lease of eight does not.
    await redis_client.set(bucket_key("acme"), (seconds * 1_000_000 + micros) + 95 * 60_000_000)

    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    # The lease is on its way (and will be refused); this request claims it meanwhile.
    assert "acme" in stage._ahead and not stage._ahead["acme"].reply.done()
    assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    # And with the refused lease known, requests ask for themselves until the bucket is empty.
    for _ in range(3):
        assert await run_stage(stage.on_request_headers, flow_for(policy, "acme")) is CONTINUE
    with pytest.raises(RateLimited):
        await run_stage(stage.on_request_headers, flow_for(policy, "acme"))
