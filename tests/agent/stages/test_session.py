"""McpSessions against a real Redis: a session id is bound to its tenant, caller and server
when the server mints it, and refused (404, as an unknown one) to anyone else."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from agent.stages.routing import McpRouting, digest
from agent.stages.session import McpSessions, SessionNotFound, session_key
from extproc.redis_pipe import PipelinedRedis
from gatez.errors import InvalidRequest, Unavailable
from gatez.pipeline import CONTINUE, Flow, Principal
from tests.agent.stages.flows import (
    ACME,
    ACME_OTHER,
    GLOBEX,
    build_policy,
    mcp_flow,
    request_flow,
    respond,
    rpc,
)
from tests.support.flows import run_stage

POLICY = build_policy()
SESSION = "3f6c1c1e-session"


@pytest.fixture
def sessions(pipelined: PipelinedRedis) -> McpSessions:
    return McpSessions(pipelined, ttl_s=600)


def later(
    session: str = SESSION,
    *,
    caller: Principal = ACME,
    path: str = "/mcp/acme/github",
    method: str = "POST",
) -> Flow:
    body = rpc("tools/list") if method == "POST" else None
    return mcp_flow(
        POLICY, body, caller=caller, path=path, method=method, headers={"mcp-session-id": session}
    )


async def bind(sessions: McpSessions, session: str = SESSION, caller: Principal = ACME) -> None:
    flow = mcp_flow(POLICY, rpc("initialize", protocolVersion="2025-06-18"), caller=caller)
    assert await run_stage(sessions.on_request_headers, flow) is CONTINUE
    respond(flow, headers={"content-type": "application/json", "mcp-session-id": session})
    assert await run_stage(sessions.on_response_headers, flow) is CONTINUE


async def test_the_initialize_answer_binds_the_session_to_its_caller_and_server(
    sessions: McpSessions, redis_client: aioredis.Redis
) -> None:
    await bind(sessions)
    key = session_key("acme", digest(SESSION))
    assert await redis_client.get(key) == b"key-a1\ngithub"
    assert 0 < await redis_client.ttl(key) <= 600
    # The id itself is stored nowhere.
    assert not [k for k in await redis_client.keys("*") if SESSION.encode() in k]

    assert await run_stage(sessions.on_request_headers, later()) is CONTINUE


@pytest.mark.parametrize(
    ("caller", "path"),
    [
        (ACME_OTHER, "/mcp/acme/github"),  # another caller of the tenant
        (ACME, "/mcp/acme/files"),  # another server
        (GLOBEX, "/mcp/globex/github"),  # another tenant
    ],
)
async def test_a_session_used_by_anyone_else_is_not_found(
    sessions: McpSessions, caller: Principal, path: str
) -> None:
    await bind(sessions)
    with pytest.raises(SessionNotFound) as caught:
        await run_stage(sessions.on_request_headers, later(caller=caller, path=path))
    assert caught.value.http_status == 404
    # Its owner still has it.
    assert await run_stage(sessions.on_request_headers, later()) is CONTINUE


@pytest.mark.parametrize("session", ["never-bound", "x" * 2000, "sëssion"])
async def test_an_unknown_or_unusable_session_is_not_found(
    sessions: McpSessions, session: str
) -> None:
    with pytest.raises(SessionNotFound):
        await run_stage(sessions.on_request_headers, later(session))


async def test_a_use_extends_the_binding(
    sessions: McpSessions, redis_client: aioredis.Redis
) -> None:
    await bind(sessions)
    key = session_key("acme", digest(SESSION))
    await redis_client.expire(key, 5)
    await run_stage(sessions.on_request_headers, later())
    assert await redis_client.ttl(key) > 5


async def test_delete_ends_the_binding(sessions: McpSessions) -> None:
    await bind(sessions)
    flow = later(method="DELETE")
    assert await run_stage(sessions.on_request_headers, flow) is CONTINUE
    respond(flow, 200)
    assert await run_stage(sessions.on_response_headers, flow) is CONTINUE

    with pytest.raises(SessionNotFound):
        await run_stage(sessions.on_request_headers, later())


async def test_a_failed_delete_keeps_the_binding(sessions: McpSessions) -> None:
    await bind(sessions)
    flow = later(method="DELETE")
    respond(flow, 500)
    await run_stage(sessions.on_response_headers, flow)
    assert await run_stage(sessions.on_request_headers, later()) is CONTINUE


@pytest.mark.parametrize("method", ["GET", "DELETE"])
async def test_get_and_delete_need_a_session(sessions: McpSessions, method: str) -> None:
    flow = mcp_flow(POLICY, method=method)
    with pytest.raises(InvalidRequest):
        await run_stage(sessions.on_request_headers, flow)


async def test_a_server_reusing_another_callers_id_is_refused(sessions: McpSessions) -> None:
    await bind(sessions)
    with pytest.raises(Unavailable):
        await bind(sessions, caller=ACME_OTHER)


async def test_an_unusable_minted_id_is_refused(sessions: McpSessions) -> None:
    flow = mcp_flow(POLICY, rpc("initialize"))
    respond(flow, headers={"mcp-session-id": "ü" * 10})
    with pytest.raises(Unavailable):
        await run_stage(sessions.on_response_headers, flow)


async def test_an_error_answer_binds_nothing(
    sessions: McpSessions, redis_client: aioredis.Redis
) -> None:
    flow = mcp_flow(POLICY, rpc("initialize"))
    respond(flow, 400, headers={"mcp-session-id": SESSION})
    assert await run_stage(sessions.on_response_headers, flow) is CONTINUE
    assert await redis_client.keys("*") == []


async def test_the_stateless_revision_binds_nothing(
    sessions: McpSessions, redis_client: aioredis.Redis
) -> None:
    flow = request_flow(
        POLICY, headers={"mcp-protocol-version": "2026-07-28", "mcp-session-id": "x"}, body=b"{}"
    )
    McpRouting().on_request_headers(flow)
    assert sessions.on_request_headers(flow) is CONTINUE
    respond(flow, headers={"mcp-session-id": SESSION})
    assert sessions.on_response_headers(flow) is CONTINUE
    assert await redis_client.keys("*") == []


async def test_without_redis_sessions_cannot_be_checked_or_bound(
    dead_redis: PipelinedRedis,
) -> None:
    sessions = McpSessions(dead_redis)
    with pytest.raises(Unavailable) as caught:
        await run_stage(sessions.on_request_headers, later())
    assert caught.value.http_status == 503
    with pytest.raises(Unavailable):
        await bind(sessions)


async def test_a_checked_session_is_remembered_for_a_while_and_forgotten_when_deleted(
    pipelined: PipelinedRedis, redis_client: aioredis.Redis
) -> None:
    now = [1000.0]
    sessions = McpSessions(pipelined, ttl_s=600, checked_for_s=10, clock=lambda: now[0])
    await bind(sessions)
    assert await run_stage(sessions.on_request_headers, later()) is CONTINUE
    key = session_key("acme", digest(SESSION))
    await redis_client.delete(key)

    # Within the window the check is remembered: no Redis, no refusal.
    remembered = later()
    assert sessions.on_request_headers(remembered) is CONTINUE
    assert remembered.deferred == []

    # Once it lapses, Redis is asked again (and the binding is gone).
    now[0] += 11
    with pytest.raises(SessionNotFound):
        await run_stage(sessions.on_request_headers, later())

    # A DELETE through this data plane forgets it at once.
    await bind(sessions)
    assert await run_stage(sessions.on_request_headers, later()) is CONTINUE
    deleted = later(method="DELETE")
    assert await run_stage(sessions.on_request_headers, deleted) is CONTINUE
    respond(deleted, status=200, headers={})
    assert await run_stage(sessions.on_response_headers, deleted) is CONTINUE
    assert await redis_client.get(key) is None
    with pytest.raises(SessionNotFound):
        await run_stage(sessions.on_request_headers, later())
