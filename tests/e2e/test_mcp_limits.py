"""Blast-radius limits end to end, each through the SDK client: calls per session, calls at
once per session and per tenant, network destinations and file paths found in arguments, and
the sizes of arguments and results."""

from __future__ import annotations

import asyncio
import secrets
import time

import pytest
from mcp.shared.exceptions import MCPError

from gatez.stack import Stack
from gatez.v1 import policy_pb2
from tests.e2e.conftest import Admin
from tests.e2e.mcp_gateway import (
    UPSTREAM_TOKEN,
    McpTenant,
    audit_row,
    mcp_tenant,
    rule,
    wait_for_audit,
)
from tests.support.mcp_servers import McpUpstream, McpUpstreams, mcp_client

pytestmark = pytest.mark.e2e

LIMIT_EXCEEDED = -32002
REFUSED = -32001
TOOLS = ("echo", "slow", "big", "fetch_url", "read_file")


@pytest.fixture(scope="module")
def workbench(mcp_upstreams: McpUpstreams) -> McpUpstream:
    return mcp_upstreams.workbench(require_token=UPSTREAM_TOKEN)


@pytest.fixture(scope="module")
def limited(admin: Admin, stack: Stack, workbench: McpUpstream) -> McpTenant:
    """Three calls per session, one at a time; 2 KiB messages, 4 KiB answers; one private
    network and one file root allowed."""
    return mcp_tenant(
        admin,
        stack,
        {"workbench": workbench},
        *(rule(tool) for tool in TOOLS),
        limits=policy_pb2.AgentLimits(
            calls_per_session=3,
            concurrent_calls_per_session=1,
            max_argument_bytes=2048,
            max_result_bytes=4096,
        ),
        allowed_networks=["10.20.0.0/16"],
        allowed_path_roots=["/srv/data"],
    )


@pytest.fixture(scope="module")
def one_at_a_time(admin: Admin, stack: Stack, workbench: McpUpstream) -> McpTenant:
    """One tool call at a time across the whole tenant."""
    return mcp_tenant(
        admin,
        stack,
        {"workbench": workbench},
        *(rule(tool) for tool in TOOLS),
        limits=policy_pb2.AgentLimits(concurrent_calls_per_tenant=1),
    )


def unique_seconds() -> float:
    """How long a `slow` call sleeps: about 0.6 s, and unlike any other call's (the upstream
    serves every stack in turn, so it has seen other runs' calls)."""
    return 0.6 + secrets.randbelow(10**6) / 10**9


async def wait_until_received(upstream: McpUpstream, tool: str, marker: object) -> None:
    """Until the upstream is running the call to `tool` whose arguments hold `marker`."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for request in upstream.received_mcp():
            if request.jsonrpc_method == "tools/call":
                params = request.json["params"]
                if params["name"] == tool and marker in params["arguments"].values():
                    return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"the upstream never got {tool}")


async def test_calls_per_session(admin: Admin, limited: McpTenant) -> None:
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        for n in range(3):
            result = await client.call_tool("echo", {"text": f"call {n}"})
            assert result.content[0].text == f"call {n}"  # type: ignore[union-attr]
        with pytest.raises(MCPError, match=r"used all its tool calls \(3\)") as refused:
            await client.call_tool("echo", {"text": "call 4"})
        assert refused.value.code == LIMIT_EXCEEDED
    # A new session has its own budget.
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        await client.call_tool("echo", {"text": "fresh"})
    refusal = audit_row(tool="echo", decision="denied", reason="limit calls_per_session")
    await asyncio.to_thread(wait_for_audit, admin, limited.tenant_id, [refusal])


async def test_concurrent_calls_per_session(limited: McpTenant, workbench: McpUpstream) -> None:
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        seconds = unique_seconds()
        slow = asyncio.create_task(client.call_tool("slow", {"seconds": seconds}))
        await wait_until_received(workbench, "slow", seconds)
        with pytest.raises(MCPError, match=r"too many tool calls at once in this session \(1\)"):
            await client.call_tool("echo", {"text": "meanwhile"})
        assert (await slow).content[0].text == f"slept {seconds}"  # type: ignore[union-attr]
        # The slot was given back when the slow call's exchange ended: the next call runs.
        await client.call_tool("echo", {"text": "after"})


async def test_concurrent_calls_per_tenant(
    one_at_a_time: McpTenant, workbench: McpUpstream
) -> None:
    url, key = one_at_a_time.url("workbench"), one_at_a_time.api_key
    async with mcp_client(url, bearer=key) as first, mcp_client(url, bearer=key) as second:
        seconds = unique_seconds()
        slow = asyncio.create_task(first.call_tool("slow", {"seconds": seconds}))
        await wait_until_received(workbench, "slow", seconds)
        with pytest.raises(MCPError, match=r"too many tool calls at once for this tenant \(1\)"):
            await second.call_tool("echo", {"text": "meanwhile"})
        await slow
        await second.call_tool("echo", {"text": "after"})


async def test_network_destinations_in_arguments(limited: McpTenant) -> None:
    refused = [
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://127.0.0.1:8080/admin",
        "http://localhost/",
        "http://10.30.0.1/",  # private, outside the allowed network
        "http://[::1]/",
        "http://0x7f000001/",  # 127.0.0.1 in hex
    ]
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        for url in refused:
            with pytest.raises(MCPError, match="argument 'url' refused") as error:
                await client.call_tool("fetch_url", {"url": url})
            assert error.value.code == REFUSED, url
            assert url not in error.value.message  # the reason never echoes the value
        for url in ("https://example.com/page", "http://10.20.3.4/inside"):
            result = await client.call_tool("fetch_url", {"url": url})
            assert result.content[0].text == url  # type: ignore[union-attr]


async def test_file_paths_in_arguments(limited: McpTenant) -> None:
    refused = [
        "/etc/passwd",
        "/srv/database/dump.sql",  # a sibling sharing the root's prefix
        "/srv/data/../../etc/passwd",
        "/srv/data/%2e%2e/%2e%2e/etc/passwd",
        "/srv/data/%252e%252e/%252e%252e/etc/passwd",  # encoded twice
        "%2e%2e/%2e%2e/etc/passwd",
        "~/.ssh/id_rsa",
        "file:///etc/shadow",
    ]
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        for path in refused:
            with pytest.raises(MCPError, match="argument 'path' refused"):
                await client.call_tool("read_file", {"path": path})
        for path in ("/srv/data/report.txt", "/srv/data/a/./b/../c.txt"):
            result = await client.call_tool("read_file", {"path": path})
            assert result.content[0].text == path  # type: ignore[union-attr]


async def test_sizes_of_arguments_and_results(limited: McpTenant, workbench: McpUpstream) -> None:
    async with mcp_client(limited.url("workbench"), bearer=limited.api_key) as client:
        with pytest.raises(MCPError, match="2048"):
            await client.call_tool("echo", {"text": "y" * 3000})
        small = await client.call_tool("big", {"n": 100})
        assert small.content[0].text == "x" * 100  # type: ignore[union-attr]
        with pytest.raises(MCPError, match="over 4096 bytes") as cut:
            await client.call_tool("big", {"n": 10_000})
        assert cut.value.code == LIMIT_EXCEEDED
    assert not any("y" * 3000 in r.body.decode() for r in workbench.received_mcp())
