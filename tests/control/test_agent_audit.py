"""The agent audit log through the real control service: data planes ship agent rows with
`IngestLogs`, operators read them with `ListAgentAudit` (per tenant, newest first, filtered, a
bounded limit), and rows written while the control service is away are spooled and replayed
once it is back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from control import ControlServer, start
from extproc.logsink import CONVERT_SLICE, Batch, ControlLogWriter, LogSink
from extproc.spool import Spool
from gatez.logrows import AgentLogRow, agent_log_from_proto
from gatez.settings import Settings
from gatez.v1 import control_pb2
from tests.control.support import AUTH, DATAPLANE_AUTH, DATAPLANE_TOKEN, Api, eventually, rpc_error

START = dt.datetime(2026, 11, 25, 9, 30, 0, 123_000, tzinfo=dt.UTC)
SESSION_A = "5d41402abc4b2a76b9719d911017c592"
SESSION_B = "7d793037a0760186574b0282f2f435e7"


def agent_row(
    n: int,
    tenant: str = "acme",
    *,
    server: str = "github",
    session: str = SESSION_A,
    decision: str = "allowed",
) -> AgentLogRow:
    return AgentLogRow(
        time=START + dt.timedelta(milliseconds=n),
        request_id=f"req-{n:04d}",
        tenant_id=tenant,
        caller="key-1",
        session_id_digest=session,
        server=server,
        method="tools/call",
        tool="create_issue",
        decision=decision,
        reason="" if decision == "allowed" else f"{decision} by policy",
        approver="ops@example.com" if decision == "approved" else "",
        arguments_digest="9b" * 32,
        arguments_json='{"title": "é"}',
        status=200,
        latency_ms=1.5 + n,
        result_bytes=10 * n,
        protocol_version="2025-06-18",
        node_id="dataplane-1",
    )


async def audit(api: Api, tenant: str, **request: Any) -> list[AgentLogRow]:
    listed = await api.control.ListAgentAudit(
        control_pb2.ListAgentAuditRequest(tenant_id=tenant, **request), metadata=AUTH
    )
    return [agent_log_from_proto(m) for m in listed.agent_logs]


def numbers(rows: Sequence[AgentLogRow]) -> list[int]:
    return [int(row.request_id.removeprefix("req-")) for row in rows]


# acme's rows 0..5 and globex's rows 100..103, with the same servers, sessions and decisions.
ROWS = [
    agent_row(0),
    agent_row(1, decision="denied"),
    agent_row(2, server="jira", session=SESSION_B),
    agent_row(3, decision="approved"),
    agent_row(4, server="jira", session=SESSION_B, decision="denied"),
    agent_row(5, session=""),
    agent_row(100, "globex"),
    agent_row(101, "globex", decision="denied"),
    agent_row(102, "globex", server="jira", session=SESSION_B, decision="denied"),
    agent_row(103, "globex", session=SESSION_B),
]


async def test_ingested_agent_rows_are_listed_newest_first_for_their_tenant_only(
    channel: grpc.aio.Channel, api: Api
) -> None:
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(Batch(agents=ROWS))
    # Every field as the data plane sent it.
    assert await audit(api, "acme") == [r for r in reversed(ROWS) if r.tenant_id == "acme"]
    assert numbers(await audit(api, "globex")) == [103, 102, 101, 100]
    assert await audit(api, "initech") == []


@pytest.mark.parametrize(
    ("filters", "acme", "globex"),
    [
        ({"server": "jira"}, [4, 2], [102]),
        ({"session_id_digest": SESSION_B}, [4, 2], [103, 102]),
        ({"decision": "denied"}, [4, 1], [102, 101]),
        ({"decision": "approved"}, [3], []),
        ({"server": "github", "decision": "denied"}, [1], [101]),
        ({"server": "jira", "session_id_digest": SESSION_B, "decision": "denied"}, [4], [102]),
        ({"server": "github' OR '1'='1"}, [], []),
    ],
)
async def test_filters_narrow_a_tenants_rows_and_never_reach_another_tenants(
    channel: grpc.aio.Channel,
    api: Api,
    filters: dict[str, str],
    acme: list[int],
    globex: list[int],
) -> None:
    await ControlLogWriter(channel, DATAPLANE_TOKEN).write(Batch(agents=ROWS))
    assert numbers(await audit(api, "acme", **filters)) == acme
    assert numbers(await audit(api, "globex", **filters)) == globex


async def test_the_limit_is_100_by_default_and_at_most_1000(
    channel: grpc.aio.Channel, api: Api
) -> None:
    rows = [agent_row(n) for n in range(1005)]
    writer = ControlLogWriter(channel, DATAPLANE_TOKEN)
    # More than a conversion slice per write: the control service receives them whole.
    assert len(rows) > 2 * CONVERT_SLICE
    await writer.write(Batch(agents=rows))
    assert numbers(await audit(api, "acme")) == list(range(1004, 904, -1))
    assert numbers(await audit(api, "acme", limit=3)) == [1004, 1003, 1002]
    assert numbers(await audit(api, "acme", limit=5000)) == list(range(1004, 4, -1))


async def test_a_listing_needs_a_tenant_and_the_admin_token(api: Api) -> None:
    missing = await rpc_error(
        api.control.ListAgentAudit(control_pb2.ListAgentAuditRequest(), metadata=AUTH)
    )
    assert missing.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "tenant_id" in (missing.details() or "")
    for metadata, code in (
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (DATAPLANE_AUTH, grpc.StatusCode.PERMISSION_DENIED),
    ):
        refused = await rpc_error(
            api.control.ListAgentAudit(
                control_pb2.ListAgentAuditRequest(tenant_id="acme"), metadata=metadata
            )
        )
        assert refused.code() == code


# --- the control service away: spooled, then replayed ------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
async def away_then_back(
    settings: Settings, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[Settings, list[ControlServer]]]:
    """Settings for a control service on a fixed port that is not running yet; the test starts
    (and stops) it, and every server it starts is stopped at the end."""
    fixed = dataclasses.replace(settings, control_address=f"127.0.0.1:{free_port()}")
    servers: list[ControlServer] = []
    yield fixed, servers
    for server in servers:
        await server.stop(grace_s=0.5)


async def test_agent_rows_written_while_the_control_service_is_away_are_replayed(
    away_then_back: tuple[Settings, list[ControlServer]], tmp_path: Path
) -> None:
    settings, servers = away_then_back
    # Quick reconnects: the test waits for the channel to notice the service is back.
    options = [
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 200),
    ]
    async with grpc.aio.insecure_channel(settings.control_address, options=options) as channel:
        spool = Spool(tmp_path / "spool", max_bytes=1 << 20)
        sink = LogSink(
            ControlLogWriter(channel, DATAPLANE_TOKEN, timeout_s=2),
            spool=spool,
            batch_rows=4,
            interval_s=0.05,
        )
        sink.start()
        try:
            # Away from the start: every row goes to the spool.
            for n in range(10):
                sink.add_agent(agent_row(n))
            await eventually(lambda: _value(sink.rows_spooled), lambda spooled: spooled == 10)
            assert sink.rows_written == 0

            servers.append(await start(settings))
            api = Api.on(channel)
            await eventually(lambda: _stored(api), lambda rows: len(rows) == 10, 20)

            # Up, then away again mid-run: rows written, then spooled, then replayed.
            for n in range(10, 15):
                sink.add_agent(agent_row(n))
            await eventually(lambda: _stored(api), lambda rows: len(rows) == 15, 20)
            await servers.pop().stop(grace_s=0.5)
            for n in range(15, 20):
                sink.add_agent(agent_row(n))
            await eventually(lambda: _value(sink.rows_spooled), lambda spooled: spooled == 15)

            servers.append(await start(settings))
            await eventually(lambda: _stored(api), lambda rows: len(rows) >= 20, 20)
            await eventually(lambda: _value(bool(spool)), lambda left: not left)
        finally:
            await sink.close()
        # Each row once, every field intact, newest first.
        assert await audit(api, "acme") == [agent_row(n) for n in reversed(range(20))]
        assert (sink.rows_spooled, sink.rows_replayed, sink.rows_written) == (15, 15, 20)
        assert sink.rows_dropped == 0


async def _value(value: Any) -> Any:
    return value


async def _stored(api: Api) -> list[AgentLogRow]:
    """acme's rows, or none while the channel has not yet reconnected to the service."""
    try:
        return await audit(api, "acme")
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            raise
        return []
