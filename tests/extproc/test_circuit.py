"""Shared circuit state against a real redis-server and a real 3-node Redis Cluster: opening after
N failures within the window, skipping while open, Retry-After honoured and bounded, one probe
lease across concurrent clients, closing on the probe's success and reopening on its failure,
and failing open when Redis is down or silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
import redis
import redis.asyncio as aioredis
from redis.crc import key_slot

from extproc.circuit import (
    Attempt,
    ChainPick,
    CircuitBreaker,
    CircuitConfig,
    circuit_key,
    is_failure_status,
    parse_retry_after,
)
from extproc.redis_pipe import ScriptClient, hot_path_client
from extproc.stages.fallback import FallbackOutcome, fail_over
from gatez.pipeline import LlmCall
from gatez.policy import compile_policy
from gatez.processes import free_port
from gatez.redis_client import RedisTarget
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster

FAST = CircuitConfig(
    failure_threshold=3, window_s=5.0, cooldown_s=0.2, max_retry_after_s=0.6, probe_lease_s=5.0
)
CHAIN = ("openai-primary", "anthropic-backup", "ollama-local")

ClientFactory = Callable[[], ScriptClient]


@pytest.fixture(params=["redis-server", "redis-cluster"])
def store(request: pytest.FixtureRequest) -> RedisTarget:
    """One redis-server or a 3-node Redis Cluster, flushed."""
    if request.param == "redis-server":
        server: RedisServer = request.getfixturevalue("redis_server")
        with redis.Redis.from_url(server.url) as plain:
            plain.flushdb()
        return RedisTarget.parse(server.url)
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    for index in range(len(cluster.ports)):
        with cluster.node(index) as node:
            node.flushdb()
    return RedisTarget.parse(cluster.url)


@pytest.fixture
async def new_client(store: RedisTarget) -> AsyncIterator[ClientFactory]:
    """Builds hot-path clients (each as a separate data-plane process would)."""
    target = store
    clients: list[ScriptClient] = []

    def build() -> ScriptClient:
        clients.append(hot_path_client(target))
        return clients[-1]

    yield build
    for client in clients:
        await client.close()


@pytest.fixture
def breaker(new_client: ClientFactory) -> CircuitBreaker:
    return CircuitBreaker(new_client(), FAST, timeout_s=1.0)


async def fail(
    breaker: CircuitBreaker, attempt: Attempt, retry_after_s: float | None = None
) -> bool:
    recorded = breaker.record(attempt, success=False, retry_after_s=retry_after_s)
    assert recorded is not None
    return await recorded


def tried(pick: ChainPick) -> list[str]:
    return [attempt.target for attempt in pick.attempts]


async def open_circuit(
    breaker: CircuitBreaker, target: str, retry_after_s: float | None = None
) -> None:
    for _ in range(FAST.failure_threshold - 1):
        assert await fail(breaker, Attempt(target)) is False
    assert await fail(breaker, Attempt(target), retry_after_s) is True


async def wait_until(check: Callable[[], Awaitable[bool]], timeout_s: float = 3.0) -> float:
    """Polls `check` until true; returns how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await check():
        assert loop.time() - start < timeout_s, "condition not reached in time"
        await asyncio.sleep(0.02)
    return loop.time() - start


def test_every_key_shares_one_cluster_slot() -> None:
    slots = {key_slot(circuit_key(target).encode()) for target in (*CHAIN, "{odd}name", "x")}
    assert len(slots) == 1


async def test_clean_chain_is_tried_in_order_and_successes_cost_nothing(
    breaker: CircuitBreaker,
) -> None:
    pick = await breaker.pick(CHAIN)

    assert tried(pick) == list(CHAIN)
    assert pick.skipped == () and pick.shared
    assert not any(attempt.probe or attempt.counted for attempt in pick.attempts)
    assert breaker.record(pick.attempts[0], success=True) is None  # no round trip


async def test_opens_after_n_consecutive_failures_and_is_skipped_while_open(
    breaker: CircuitBreaker,
) -> None:
    first = Attempt(CHAIN[0])
    assert await fail(breaker, first) is False
    assert await fail(breaker, first) is False
    pick = await breaker.pick(CHAIN)
    assert tried(pick) == list(CHAIN)
    assert pick.attempts[0].counted  # its success must now reset the count

    assert await fail(breaker, first) is True

    pick = await breaker.pick(CHAIN)
    assert tried(pick) == list(CHAIN[1:])
    assert pick.skipped == (CHAIN[0],)
    # A second client (another data-plane process) sees the same.
    assert tried(await breaker.pick(CHAIN[:2])) == [CHAIN[1]]


async def test_a_success_resets_the_consecutive_count(breaker: CircuitBreaker) -> None:
    first = Attempt(CHAIN[0])
    for _ in range(FAST.failure_threshold - 1):
        await fail(breaker, first)
    recorded = breaker.record(first, success=True)
    assert recorded is not None and await recorded is False
    for _ in range(FAST.failure_threshold - 1):
        assert await fail(breaker, first) is False
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN)


async def test_failures_outside_the_window_do_not_add_up(new_client: ClientFactory) -> None:
    short = CircuitConfig(failure_threshold=2, window_s=0.15, cooldown_s=5.0)
    breaker = CircuitBreaker(new_client(), short)
    first = Attempt(CHAIN[0])
    assert await fail(breaker, first) is False
    await asyncio.sleep(0.25)
    assert await fail(breaker, first) is False  # the count started again
    assert await fail(breaker, first) is True


async def test_half_open_after_cooldown_gives_one_probe_and_its_success_closes(
    breaker: CircuitBreaker,
) -> None:
    await open_circuit(breaker, CHAIN[0])

    async def probe_due() -> bool:
        return bool((await breaker.pick(CHAIN[:1])).attempts)

    waited = await wait_until(probe_due)
    assert waited >= FAST.cooldown_s * 0.5  # it was open for the cooldown first
    # The lease was taken by that pick; everyone else keeps skipping the target.
    pick = await breaker.pick(CHAIN)
    assert tried(pick) == list(CHAIN[1:])


async def test_probe_success_closes_and_probe_failure_reopens(breaker: CircuitBreaker) -> None:
    await open_circuit(breaker, CHAIN[0])
    await asyncio.sleep(FAST.cooldown_s)
    probe = (await breaker.pick(CHAIN)).attempts[0]
    assert probe == Attempt(CHAIN[0], probe=True, counted=True)

    assert await fail(breaker, probe) is True  # reopened, for a full cooldown
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN[1:])
    await asyncio.sleep(FAST.cooldown_s)

    probe = (await breaker.pick(CHAIN)).attempts[0]
    assert probe.probe
    recorded = breaker.record(probe, success=True)
    assert recorded is not None and await recorded is False
    pick = await breaker.pick(CHAIN)
    assert tried(pick) == list(CHAIN)
    assert not any(attempt.probe or attempt.counted for attempt in pick.attempts)


async def test_a_late_success_of_a_non_probe_does_not_close_an_open_circuit(
    breaker: CircuitBreaker,
) -> None:
    picked_before = (await breaker.pick(CHAIN)).attempts[0]
    await open_circuit(breaker, CHAIN[0])

    recorded = breaker.record(Attempt(picked_before.target, counted=True), success=True)

    assert recorded is not None and await recorded is True
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN[1:])


async def test_only_the_head_of_the_list_gets_a_probe_lease(breaker: CircuitBreaker) -> None:
    await open_circuit(breaker, CHAIN[1])
    await asyncio.sleep(FAST.cooldown_s)

    # A healthy target comes first: the half-open one would likely go unused, so no lease.
    pick = await breaker.pick(CHAIN)
    assert tried(pick) == [CHAIN[0], CHAIN[2]]
    # First in line: it gets the lease.
    pick = await breaker.pick(CHAIN[1:])
    assert pick.attempts[0] == Attempt(CHAIN[1], probe=True, counted=True)


async def test_one_probe_lease_only_across_concurrent_clients(new_client: ClientFactory) -> None:
    processes = [CircuitBreaker(new_client(), FAST, timeout_s=1.0) for _ in range(8)]
    await open_circuit(processes[0], CHAIN[0])
    await asyncio.sleep(FAST.cooldown_s)

    picks = await asyncio.gather(*(process.pick(CHAIN) for process in processes))

    probes = [pick.attempts[0] for pick in picks if pick.attempts[0].target == CHAIN[0]]
    assert len(probes) == 1 and probes[0].probe
    others = [pick for pick in picks if pick.attempts[0].target != CHAIN[0]]
    assert len(others) == 7
    assert all(tried(pick) == list(CHAIN[1:]) for pick in others)


async def test_a_lease_never_answered_is_given_again(new_client: ClientFactory) -> None:
    config = CircuitConfig(failure_threshold=1, cooldown_s=0.1, probe_lease_s=0.2)
    breaker = CircuitBreaker(new_client(), config)
    await fail(breaker, Attempt(CHAIN[0]))
    await asyncio.sleep(config.cooldown_s)
    assert (await breaker.pick(CHAIN)).attempts[0].probe  # this prober "dies"
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN[1:])

    await asyncio.sleep(config.probe_lease_s)

    assert (await breaker.pick(CHAIN)).attempts[0] == Attempt(CHAIN[0], probe=True)


async def test_retry_after_keeps_it_open_past_the_cooldown(breaker: CircuitBreaker) -> None:
    await open_circuit(breaker, CHAIN[0], retry_after_s=0.5)

    await asyncio.sleep(FAST.cooldown_s + 0.1)
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN[1:])  # the cooldown alone is over

    async def probe_due() -> bool:
        return bool((await breaker.pick(CHAIN)).attempts[0].probe)

    await wait_until(probe_due)


async def test_retry_after_is_bounded(breaker: CircuitBreaker) -> None:
    await open_circuit(breaker, CHAIN[0], retry_after_s=3600)
    pick = await breaker.pick(CHAIN[:1])
    assert pick.attempts == () and pick.retry_after_s == 1  # 0.6 s left, said as whole seconds

    async def probe_due() -> bool:
        return bool((await breaker.pick(CHAIN)).attempts[0].probe)

    waited = await wait_until(probe_due)
    assert waited < FAST.max_retry_after_s + 0.5


async def test_a_failure_while_open_may_only_push_the_opening_later(
    breaker: CircuitBreaker,
) -> None:
    await open_circuit(breaker, CHAIN[0])
    assert await fail(breaker, Attempt(CHAIN[0]), retry_after_s=0.5) is True  # a late attempt
    await asyncio.sleep(FAST.cooldown_s + 0.1)
    assert tried(await breaker.pick(CHAIN)) == list(CHAIN[1:])


async def test_every_target_open_says_when_to_retry(breaker: CircuitBreaker) -> None:
    for target in CHAIN:
        await open_circuit(breaker, target, retry_after_s=0.6 if target == CHAIN[0] else None)

    pick = await breaker.pick(CHAIN)

    assert pick.attempts == () and pick.skipped == CHAIN
    assert pick.retry_after_s == 1


async def test_idle_state_expires(redis_server: RedisServer, redis_client: aioredis.Redis) -> None:
    config = CircuitConfig(failure_threshold=2, window_s=0.2, cooldown_s=0.1)
    client = hot_path_client(RedisTarget.parse(redis_server.url))
    breaker = CircuitBreaker(client, config)
    try:
        await fail(breaker, Attempt(CHAIN[0]))
        key = circuit_key(CHAIN[0])
        assert 0 < await redis_client.pttl(key) <= 200
        await fail(breaker, Attempt(CHAIN[0]))
        assert 0 < await redis_client.pttl(key) <= 300  # open 0.1 s, then remembered a window
    finally:
        await client.close()


async def test_redis_down_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    client = hot_path_client(RedisTarget.parse(f"redis://127.0.0.1:{free_port()}/0"))
    breaker = CircuitBreaker(client, FAST)
    try:
        pick = await breaker.pick(CHAIN)
        assert tried(pick) == list(CHAIN)
        assert not pick.shared and not any(attempt.probe for attempt in pick.attempts)
        recorded = breaker.record(pick.attempts[0], success=False, retry_after_s=1)
        assert recorded is not None and await recorded is False
        await breaker.pick(CHAIN)
    finally:
        await client.close()
    warnings = [record for record in caplog.records if record.name == "gatez.circuit"]
    assert len(warnings) == 1  # once per outage, not per request


async def test_silent_redis_fails_open_within_the_timeout() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # reads commands, answers nothing
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = hot_path_client(RedisTarget.parse(f"redis://127.0.0.1:{port}/0"))
    breaker = CircuitBreaker(client, FAST, timeout_s=0.05)
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pick = await breaker.pick(CHAIN)
        assert loop.time() - start < 0.5
        assert tried(pick) == list(CHAIN) and not pick.shared
    finally:
        await client.close()
        server.close()


async def test_empty_chain_needs_no_redis() -> None:
    client = hot_path_client(RedisTarget.parse(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        assert await CircuitBreaker(client).pick(()) == ChainPick(())
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("30", 30.0),
        (b" 2 ", 2.0),
        ("0.5", 0.5),
        ("-4", 0.0),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
        ("", None),
        ("soon", None),
        ("nan", None),
        (None, None),
    ],
)
def test_retry_after_header_is_read(value: str | bytes | None, seconds: float | None) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds


@pytest.mark.parametrize(
    ("status", "failure"),
    [(200, False), (400, False), (404, False), (429, True), (500, True), (503, True)],
)
def test_failure_statuses(status: int, failure: bool) -> None:
    assert is_failure_status(status) is failure


@pytest.mark.parametrize(
    "settings",
    [
        {"failure_threshold": 0},
        {"window_s": 0},
        {"cooldown_s": -1},
        {"max_retry_after_s": 0},
        {"probe_lease_s": 0},
    ],
)
def test_bad_config_is_refused(settings: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        CircuitConfig(**settings)  # type: ignore[arg-type]


async def test_a_moved_on_call_answered_by_the_gateway_reports_only_its_failure(
    breaker: CircuitBreaker,
) -> None:
    """A failed attempt whose next target could not take the request (the gateway answered
    400): the failure counts, and the 400 is no success of the failed target."""
    policy = compile_policy(
        policy_pb2.PolicySnapshot(
            tenants=[policy_pb2.Tenant(id="acme")],
            providers=[
                policy_pb2.Provider(
                    name="p", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="http://p.test/v1"
                )
            ],
            model_routes=[policy_pb2.ModelRoute(alias="fast", provider="p", upstream_model="m")],
        )
    )
    target = policy.resolve_model("acme", "fast")
    assert target is not None
    for _ in range(FAST.failure_threshold - 2):
        assert await fail(breaker, Attempt(target.circuit)) is False
    flow = make_flow(policy)
    flow.llm = LlmCall(target=target, stream=False, client_wants_usage=False)
    flow.llm.circuit, flow.llm.counted = target.circuit, True
    flow.llm.plan = ((target, False, True),)
    assert fail_over(flow, "503", "30")
    # Routing the next target refused the request: the gateway's 400 ends the exchange.
    flow.response_status = 400
    FallbackOutcome(breaker).on_done(flow)
    assert flow.llm.tried == [f"{target.circuit}=503"]
    # The failures add up (a success would have reset them): one more opens the circuit.
    await asyncio.sleep(0.1)
    assert await fail(breaker, Attempt(target.circuit)) is True
