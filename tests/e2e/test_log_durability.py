"""No lost log rows, end to end: the real processes (redis-server, the control service, the data
plane, Envoy) stopped and killed mid-run, the official `openai` SDK as the client, and the rows
that reach ClickHouse counted through the control API.

A stack of its own (processes are killed here), with a provider that streams slowly enough for a
client to hang up mid-stream.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest

from extproc.spool import parse_segment
from extproc.token_count import TokenCounter
from gatez.logrows import PATH_LIMIT
from gatez.stack import Stack, StackConfig
from gatez.v1 import control_pb2, logs_pb2
from tests.e2e.conftest import (
    UPSTREAM_KEY,
    Admin,
    TenantAccess,
    admin_of,
    provision,
    running,
)
from tests.fakes.openai_upstream import UpstreamServer

T = TypeVar("T")


@pytest.fixture(scope="module")
def slow_upstream() -> Iterator[UpstreamServer]:
    with UpstreamServer(api_key=UPSTREAM_KEY, chunk_delay_s=0.05) as server:
        yield server


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, slow_upstream: UpstreamServer
) -> Iterator[Stack]:
    config = StackConfig.ephemeral(Path(tmp_path_factory.mktemp("durable-stack")))
    with running(Stack(config)) as started:
        yield started


@pytest.fixture(scope="module")
def admin(stack: Stack, slow_upstream: UpstreamServer) -> Iterator[Admin]:
    with admin_of(stack, slow_upstream) as client:
        yield client


@pytest.fixture
def tenant(admin: Admin) -> TenantAccess:
    return provision(admin)


@pytest.fixture(scope="module")
def tokens() -> TokenCounter:
    counter = TokenCounter()
    counter.load()
    return counter


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 60) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = probe()
        if found is not None:
            return found
        time.sleep(0.1)
    raise TimeoutError(f"{what} within {timeout_s}s")


def request_rows(admin: Admin, tenant_id: str) -> list[logs_pb2.RequestLog]:
    return list(
        admin.control.ListRequestLogs(
            control_pb2.ListRequestLogsRequest(tenant_id=tenant_id, limit=1000),
            metadata=admin.metadata,
        ).request_logs
    )


def ai_rows(admin: Admin, tenant_id: str) -> list[logs_pb2.AiLog]:
    return list(
        admin.control.ListAiLogs(
            control_pb2.ListAiLogsRequest(tenant_id=tenant_id, limit=1000),
            metadata=admin.metadata,
        ).ai_logs
    )


def spool_dir(stack: Stack) -> Path:
    return stack.config.extproc_socket.parent / "spool"


def spooled(stack: Stack, tenant_id: str) -> tuple[int, int]:
    """Request and AI rows of a tenant in the data plane's spool, read as the files stand."""
    requests = ai = 0
    for path in sorted(spool_dir(stack).glob("*.seg")):
        for record in parse_segment(path.read_bytes()).records:
            batch = logs_pb2.LogBatch.FromString(record)
            requests += sum(1 for r in batch.request_logs if r.tenant_id == tenant_id)
            ai += sum(1 for r in batch.ai_logs if r.tenant_id == tenant_id)
    return requests, ai


def wait_until_serving(stack: Stack) -> None:
    """Envoy answers through the (re)started data plane: a 401 comes from the data plane (its row
    has no tenant, so the tenants' counts are untouched); a 5xx is Envoy not reaching it yet."""

    def answered() -> bool | None:
        reply = httpx.get(f"{stack.config.gateway_url}/v1/models", timeout=5)
        return True if reply.status_code == 401 else None

    eventually(answered, "the data plane serving through Envoy", timeout_s=30)


def chat(client: openai.OpenAI, n: int) -> None:
    reply = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": f"count me {n}"}]
    )
    assert reply.choices[0].message.content == f"Echo: count me {n}"


def kill(stack: Stack, name: str) -> None:
    process = stack.processes[name]
    process.send_signal(signal.SIGKILL)
    process.wait()
    stack.stop_process(name)


def test_rows_survive_a_control_outage_and_data_plane_restarts(
    stack: Stack, admin: Admin, tenant: TenantAccess
) -> None:
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=tenant.api_key, max_retries=0
    )
    stack.stop_process("control")

    # The log store is away: the data plane serves from its last policy and keeps the rows.
    for n in range(8):
        chat(client, n)
    # A clean stop (SIGTERM) with the rows still in memory: they go to the spool.
    stack.stop_process("dataplane")
    assert spooled(stack, tenant.tenant_id) == (8, 8)

    # Restarted with the store still away: new rows join the spool ...
    stack.start_data_plane()
    wait_until_serving(stack)
    for n in range(8, 15):
        chat(client, n)
    eventually(
        lambda: True if spooled(stack, tenant.tenant_id) == (15, 15) else None,
        "the new rows spooled",
        timeout_s=15,
    )
    # ... and survive a kill -9.
    kill(stack, "dataplane")

    stack.start_data_plane()
    stack.start_control()
    eventually(
        lambda: True if len(request_rows(admin, tenant.tenant_id)) >= 15 else None,
        "15 request rows in the store",
    )
    eventually(
        lambda: True if len(ai_rows(admin, tenant.tenant_id)) >= 15 else None,
        "15 AI rows in the store",
    )
    eventually(lambda: True if spooled(stack, tenant.tenant_id) == (0, 0) else None, "replayed")
    time.sleep(1.5)  # one more turn of the sink: nothing is written twice
    stored = request_rows(admin, tenant.tenant_id)
    assert len(stored) == 15 and len({r.request_id for r in stored}) == 15
    calls = ai_rows(admin, tenant.tenant_id)
    assert len(calls) == 15 and all(c.status == 200 and not c.usage_estimated for c in calls)
    assert not list(spool_dir(stack).glob("*.seg"))


def test_long_paths_cannot_stop_logging(stack: Stack, admin: Admin, tenant: TenantAccess) -> None:
    # 120 paths of 50 KB: 6 MB of rows if kept whole, over the control service's 4 MiB limit.
    wait_until_serving(stack)
    headers = {"authorization": f"Bearer {tenant.api_key}"}
    with httpx.Client(base_url=stack.config.gateway_url, headers=headers, timeout=10) as http:
        for n in range(120):
            reply = http.get(f"/v1/{n}-" + "p" * 50_000)
            assert reply.status_code == 404
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=tenant.api_key, max_retries=0
    )
    chat(client, 0)
    rows = eventually(
        lambda: rows if len(rows := request_rows(admin, tenant.tenant_id)) >= 121 else None,
        "121 request rows",
    )
    assert len(rows) == 121
    long = [r for r in rows if r.status == 404]
    assert len(long) == 120 and all(len(r.path) == PATH_LIMIT for r in long)
    assert eventually(lambda: ai_rows(admin, tenant.tenant_id) or None, "the AI row")


def test_a_stream_the_client_leaves_is_metered_by_estimate(
    stack: Stack, admin: Admin, tenant: TenantAccess, tokens: TokenCounter
) -> None:
    wait_until_serving(stack)
    log = stack.logs / "dataplane.log"
    eventually(
        lambda: True if "tokenizer o200k_base loaded" in log.read_text(errors="replace") else None,
        "the data plane's tokenizer loaded",
    )
    words = " ".join(f"word{n}" for n in range(200))
    messages: list[Any] = [{"role": "user", "content": words}]
    client = openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=tenant.api_key, max_retries=0
    )
    received = []
    stream = client.chat.completions.create(model="gpt-test", messages=messages, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received.append(chunk.choices[0].delta.content)
        if len(received) == 5:
            break
    stream.close()  # hangs up: the provider's usage chunk never comes

    [call] = eventually(lambda: ai_rows(admin, tenant.tenant_id) or None, "the AI row")
    assert call.streamed and call.usage_estimated
    assert call.input_tokens == tokens.count_messages("upstream-model-1", {"messages": messages})
    # At least what the client got (more may have passed the gateway before it saw the hang-up),
    # far less than the whole reply.
    whole = tokens.count("upstream-model-1", ["Echo: " + words])
    assert tokens.count("upstream-model-1", ["".join(received)]) <= call.output_tokens < whole / 2
