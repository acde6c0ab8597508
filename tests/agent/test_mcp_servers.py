"""The MCP servers the agent tests run behind Gatez, straight (no gateway): they serve every
revision in JSON and SSE, with and without sessions, record what reached them, and behave as
the official SDK does where the gateway must mirror it (the 2026-07-28 header checks)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import httpx
import mcp_types
import pytest
from mcp.client.session import IncomingMessage

from tests.support.mcp_servers import (
    INJECTION_PHRASE,
    LOOKUP_DESCRIPTION,
    MODERN_VERSION,
    PULLED_LOOKUP_DESCRIPTION,
    RECEIVED_PATH,
    RUG_PULL_PATH,
    RUG_RESTORE_PATH,
    ZERO_WIDTH,
    ClientProtocol,
    ClientWire,
    McpUpstream,
    McpUpstreams,
    initialize_request,
    mcp_client,
    modern_request,
    open_raw_session,
    post_jsonrpc,
)

WORKBENCH_TOOLS = {
    "echo",
    "add",
    "search",
    "fetch_url",
    "read_file",
    "delete_repo",
    "slow",
    "big",
    "inject",
    "progress",
}

MODES = [
    pytest.param({"json_response": False, "stateless": False}, id="sse"),
    pytest.param({"json_response": True, "stateless": False}, id="json"),
    pytest.param({"json_response": False, "stateless": True}, id="sse-stateless"),
    pytest.param({"json_response": True, "stateless": True}, id="json-stateless"),
]


@pytest.fixture(scope="module")
def workbenches(mcp_upstreams: McpUpstreams) -> dict[tuple[bool, bool], McpUpstream]:
    """One workbench per (json_response, stateless)."""
    return {
        (json_response, stateless): mcp_upstreams.workbench(
            json_response=json_response, stateless=stateless
        )
        for json_response in (False, True)
        for stateless in (False, True)
    }


def text_of(result: mcp_types.CallToolResult) -> str:
    content = result.content[0]
    assert isinstance(content, mcp_types.TextContent)
    return content.text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_workbench_lists_and_calls_tools(
    workbenches: dict[tuple[bool, bool], McpUpstream],
    mode: dict[str, bool],
    protocol: ClientProtocol,
) -> None:
    upstream = workbenches[(mode["json_response"], mode["stateless"])]
    async with mcp_client(upstream.url, protocol=protocol) as client:
        assert client.protocol_version == protocol
        tools = await client.list_tools()
        assert {tool.name for tool in tools.tools} == WORKBENCH_TOOLS
        assert text_of(await client.call_tool("echo", {"text": "hi"})) == "hi"
        added = await client.call_tool("add", {"a": 2, "b": 3})
        assert added.structured_content == {"result": 5}
        assert text_of(await client.call_tool("fetch_url", {"url": "http://10.0.0.1/"})) == (
            "http://10.0.0.1/"
        )
        assert text_of(await client.call_tool("read_file", {"path": "/etc/passwd"})) == (
            "/etc/passwd"
        )
        assert text_of(await client.call_tool("delete_repo", {"name": "gatez"})) == "deleted gatez"
        assert len(text_of(await client.call_tool("big", {"n": 5000}))) == 5000
        assert INJECTION_PHRASE in text_of(await client.call_tool("inject", {}))
        destructive = next(t for t in tools.tools if t.name == "delete_repo")
        assert destructive.annotations is not None
        assert destructive.annotations.destructive_hint is True


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_prompts_and_resources(
    workbenches: dict[tuple[bool, bool], McpUpstream], protocol: ClientProtocol
) -> None:
    async with mcp_client(workbenches[(False, False)].url, protocol=protocol) as client:
        prompts = await client.list_prompts()
        assert {p.name for p in prompts.prompts} == {"greeting", "review_code"}
        prompt = await client.get_prompt("greeting", {"name": "Ada"})
        content = prompt.messages[0].content
        assert isinstance(content, mcp_types.TextContent)
        assert "Ada" in content.text
        resources = await client.list_resources()
        assert {str(r.uri) for r in resources.resources} == {
            "workbench://readme",
            "workbench://secrets",
        }
        read = await client.read_resource("workbench://readme")
        assert isinstance(read.contents[0], mcp_types.TextResourceContents)
        assert read.contents[0].text == "The workbench readme."


@pytest.mark.parametrize("protocol", ["2025-03-26", "2025-06-18", "2025-11-25"])
async def test_the_sdk_client_speaks_each_handshake_revision(
    workbenches: dict[tuple[bool, bool], McpUpstream], protocol: ClientProtocol
) -> None:
    upstream = workbenches[(False, False)]
    wire = ClientWire()
    async with mcp_client(upstream.url, protocol=protocol, wire=wire) as client:
        assert client.protocol_version == protocol
        assert text_of(await client.call_tool("echo", {"text": protocol})) == protocol
    assert wire.session_id is not None
    call = next(e for e in wire.exchanges if e.jsonrpc_method == "tools/call")
    assert call.request_headers["mcp-protocol-version"] == protocol
    assert call.request_headers["mcp-session-id"] == wire.session_id


async def test_auto_discovers_the_modern_revision(
    workbenches: dict[tuple[bool, bool], McpUpstream],
) -> None:
    wire = ClientWire()
    async with mcp_client(workbenches[(True, False)].url, protocol="auto", wire=wire) as client:
        assert client.protocol_version == MODERN_VERSION
        await client.call_tool("echo", {"text": "x"})
    # The SDK lists the tools itself after a call (to check its output schema).
    assert [e.jsonrpc_method for e in wire.exchanges] == [
        "server/discover",
        "tools/call",
        "tools/list",
    ]
    call = wire.exchanges[1]
    assert call.request_headers["mcp-method"] == "tools/call"
    assert call.request_headers["mcp-name"] == "echo"
    assert "mcp-session-id" not in call.request_headers


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_progress_notifications_precede_the_result(
    workbenches: dict[tuple[bool, bool], McpUpstream], protocol: ClientProtocol
) -> None:
    upstream = workbenches[(False, False)]
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with mcp_client(upstream.url, protocol=protocol) as client:
        result = await client.call_tool("progress", {"steps": 3}, progress_callback=on_progress)
    assert text_of(result) == "done 3"
    assert seen == [1, 2, 3]


async def test_raw_progress_is_an_sse_stream_of_notifications_then_the_response(
    workbenches: dict[tuple[bool, bool], McpUpstream],
) -> None:
    url = workbenches[(False, False)].url
    session = await open_raw_session(url)
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "progress", "arguments": {"steps": 2}, "_meta": {"progressToken": "t"}},
    }
    reply = await post_jsonrpc(url, call, headers=session.headers())
    assert reply.is_sse
    assert [m.get("method") for m in reply.messages] == [
        "notifications/progress",
        "notifications/progress",
        None,
    ]
    assert reply.message["id"] == 7
    assert all(event.id is None for event in reply.events)  # no event store: no ids


async def test_resumable_sse_events_carry_ids(mcp_upstreams: McpUpstreams) -> None:
    upstream = mcp_upstreams.workbench(resumable=True)
    session = await open_raw_session(upstream.url)
    call = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "a"}},
    }
    reply = await post_jsonrpc(upstream.url, call, headers=session.headers())
    assert reply.is_sse
    assert all(event.id for event in reply.events)
    assert reply.message["result"]["content"][0]["text"] == "a"


@pytest.mark.parametrize("version", ["2025-03-26", "2025-06-18", "2025-11-25"])
async def test_raw_initialize_gets_the_offered_revision(
    workbenches: dict[tuple[bool, bool], McpUpstream], version: str
) -> None:
    reply = await post_jsonrpc(workbenches[(True, False)].url, initialize_request(version))
    assert reply.status == 200
    assert reply.message["result"]["protocolVersion"] == version
    assert reply.headers["mcp-session-id"]


async def test_stateless_initialize_has_no_session(
    workbenches: dict[tuple[bool, bool], McpUpstream],
) -> None:
    reply = await post_jsonrpc(workbenches[(True, True)].url, initialize_request("2025-06-18"))
    assert reply.message["result"]["protocolVersion"] == "2025-06-18"
    assert "mcp-session-id" not in reply.headers


@pytest.mark.parametrize(
    "header, value",
    [("mcp-name", "delete_repo"), ("mcp-method", "tools/list"), ("mcp-protocol-version", None)],
)
async def test_modern_header_body_mismatch_is_refused(
    workbenches: dict[tuple[bool, bool], McpUpstream], header: str, value: str | None
) -> None:
    """What the SDK's server does, and the gateway must do before forwarding: 400, -32020."""
    upstream = workbenches[(False, False)]
    body, headers = modern_request("tools/call", {"name": "echo", "arguments": {"text": "x"}})
    assert (await post_jsonrpc(upstream.url, body, headers=headers)).status == 200
    if value is None:  # a version header naming another modern revision than the body
        body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = "2026-12-31"
    else:
        headers[header] = value
    reply = await post_jsonrpc(upstream.url, body, headers=headers)
    assert reply.status == 400
    assert reply.message["id"] == 1
    assert reply.error_code == -32020


@pytest.mark.parametrize(
    "body",
    [
        pytest.param([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}], id="batch"),
        pytest.param({"jsonrpc": "1.0", "id": 1, "method": "tools/list"}, id="version-1.0"),
        pytest.param(b"{not json", id="not-json"),
    ],
)
async def test_modern_malformed_messages_are_refused(
    workbenches: dict[tuple[bool, bool], McpUpstream], body: Any
) -> None:
    reply = await post_jsonrpc(
        workbenches[(True, False)].url,
        body,
        headers={"mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/list"},
    )
    assert reply.status == 400
    assert reply.message["id"] is None
    assert reply.error_code in (-32600, -32700)


async def test_the_sdk_server_accepts_a_huge_id(
    workbenches: dict[tuple[bool, bool], McpUpstream],
) -> None:
    """Ids beyond 64 bits are the gateway's to refuse: the SDK's server takes one and echoes
    it back digit for digit."""
    url = workbenches[(True, False)].url
    session = await open_raw_session(url)
    huge = 10**30
    body = b'{"jsonrpc":"2.0","id":%d,"method":"tools/list"}' % huge
    reply = await post_jsonrpc(url, body, headers=session.headers())
    assert reply.status == 200
    assert reply.message["id"] == huge


async def test_poisoned_and_colliding_tools(mcp_upstreams: McpUpstreams) -> None:
    poisoned, notes = mcp_upstreams.poisoned(), mcp_upstreams.notes()
    async with mcp_client(poisoned.url) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == {"get_weather", "translate", "get_time"}
    weather = tools["get_weather"].description or ""
    assert "<IMPORTANT>" in weather
    assert any(c in weather for c in ZERO_WIDTH)
    language = tools["translate"].input_schema["properties"]["language"]["description"]
    assert any(0xE0000 <= ord(c) <= 0xE007F for c in language)
    assert "<IMPORTANT>" not in (tools["get_time"].description or "")
    async with mcp_client(notes.url) as client:
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert text_of(await client.call_tool("search", {"query": "q"})) == "notes results for q"
    assert names & WORKBENCH_TOOLS == {"search"}


async def test_the_mutable_server_pulls_the_rug(mcp_upstreams: McpUpstreams) -> None:
    upstream = mcp_upstreams.mutable()
    changed = anyio.Event()

    async def on_message(message: IncomingMessage) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            changed.set()

    async with mcp_client(upstream.url, message_handler=on_message) as client:
        before = (await client.list_tools()).tools
        assert [(t.name, t.description) for t in before] == [("lookup", LOOKUP_DESCRIPTION)]
        upstream.pull_rug()
        after = (await client.list_tools()).tools
        assert [(t.name, t.description) for t in after] == [("lookup", PULLED_LOOKUP_DESCRIPTION)]
        assert "context" in after[0].input_schema["properties"]
        assert "context" not in before[0].input_schema["properties"]
        # Told on the session's GET stream, which the SDK client opens.
        with anyio.fail_after(2):
            await changed.wait()
        async with httpx.AsyncClient() as http:
            assert (await http.post(upstream.base_url + RUG_RESTORE_PATH)).json() == {
                "pulled": False
            }
            assert (await client.list_tools()).tools[0].description == LOOKUP_DESCRIPTION
            await http.post(upstream.base_url + RUG_PULL_PATH)
        assert (await client.list_tools()).tools[0].description == PULLED_LOOKUP_DESCRIPTION


@pytest.mark.parametrize("protocol", ["2025-11-25", "2026-07-28"])
async def test_recordings_show_every_header(
    mcp_upstreams: McpUpstreams, protocol: ClientProtocol
) -> None:
    upstream = mcp_upstreams.workbench()
    async with mcp_client(
        upstream.url, bearer="client-key", headers={"X-Api-Key": "k2"}, protocol=protocol
    ) as client:
        await client.call_tool("echo", {"text": "x"})
    calls = [r for r in upstream.received_mcp() if r.jsonrpc_method == "tools/call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.header("authorization") == "Bearer client-key"
    assert call.header("x-api-key") == "k2"
    assert call.header("mcp-protocol-version") == protocol
    assert call.json["params"]["name"] == "echo"
    if protocol == MODERN_VERSION:
        assert (call.header("mcp-method"), call.header("mcp-name")) == ("tools/call", "echo")
        assert call.header("mcp-session-id") is None
    else:
        assert call.header("mcp-session-id")
        assert call.header("mcp-method") is None
        # The SDK client ends its session with a DELETE.
        assert upstream.received_mcp()[-1].method == "DELETE"
    async with httpx.AsyncClient() as http:
        listed = (await http.get(upstream.base_url + RECEIVED_PATH)).json()
    assert ["authorization", "Bearer client-key"] in listed[0]["headers"]
    upstream.clear_received()
    assert upstream.received == []


async def test_a_required_token_is_enforced(mcp_upstreams: McpUpstreams) -> None:
    upstream = mcp_upstreams.workbench(require_token="upstream-secret", json_response=True)
    refused = await post_jsonrpc(upstream.url, initialize_request(), bearer="client-key")
    assert refused.status == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    async with mcp_client(upstream.url, bearer="upstream-secret") as client:
        assert text_of(await client.call_tool("echo", {"text": "in"})) == "in"
    assert upstream.received[0].header("authorization") == "Bearer client-key"


async def test_slow_calls_run_concurrently(
    workbenches: dict[tuple[bool, bool], McpUpstream],
) -> None:
    async with mcp_client(workbenches[(True, False)].url) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.call_tool("slow", {"seconds": 0.3}) for _ in range(3))
        )
        elapsed = time.monotonic() - started
    assert [text_of(r) for r in results] == ["slept 0.3"] * 3
    assert elapsed < 0.8
