"""ControlService: MCP servers. Their credentials are write-only (no response carries them),
sealed in Redis and in what data planes receive (opening only under the server's own name),
re-sealed by RotateSecretKey, and deleted with their server or tenant."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
from google.protobuf.message import Message

from control import start
from control.store import SNAPSHOT_KEY
from gatez.agent_policy import mcp_credential_name
from gatez.policy import compile_policy
from gatez.secrets import SecretBox, SecretConfigError, new_secret_key, secret_box
from gatez.settings import Settings
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, raw, rpc_error
from tests.control.test_admin import create_tenant, current_snapshot, policy_version

SECRET = "ghp-mcp-server-secret-never-in-clear-0001"


def mcp_server(name: str = "github", tenant_id: str = "acme", **fields: Any) -> Any:
    return policy_pb2.McpServer(
        tenant_id=tenant_id,
        name=name,
        url=fields.pop("url", "https://mcp.example.com/mcp"),
        **fields,
    )


async def create_server(api: Api, name: str = "github", credential: str = "", **fields: Any) -> Any:
    return await api.control.CreateMcpServer(
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server(name, **fields), credential=credential),
        metadata=AUTH,
    )


async def list_servers(api: Api, tenant_id: str = "acme") -> list[Any]:
    listed = await api.control.ListMcpServers(
        api_pb.ListMcpServersRequest(tenant_id=tenant_id), metadata=AUTH
    )
    return list(listed.mcp_servers)


async def stored_values(redis: aioredis.Redis) -> bytes:
    """Every string value Redis holds, raw (the policy snapshot among them)."""
    values = [
        raw(await redis.get(key))
        for key in await redis.keys("*")
        if raw(await redis.type(key)) == b"string"
    ]
    stored = b"".join(values)
    # The policy is there (so a clear credential would be too): the check can fail.
    assert b"mcp.example.com" in stored
    return stored


async def test_create_list_and_delete(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    before = await policy_version(api)

    created = await create_server(api, "jira", url="http://jira-mcp.internal:8000/mcp")
    assert created.policy_version == before + 1
    assert created.mcp_server == mcp_server("jira", url="http://jira-mcp.internal:8000/mcp")
    second = await create_server(api, "github", credential=SECRET, credential_header="x-api-key")
    assert second.policy_version == before + 2
    await create_server(api, "github", tenant_id="globex")

    listed = await list_servers(api)
    assert [(s.name, s.has_credential) for s in listed] == [("github", True), ("jira", False)]
    assert listed[0].credential_header == "x-api-key"
    assert [s.name for s in await list_servers(api, "globex")] == ["github"]

    deleted = await api.control.DeleteMcpServer(
        api_pb.DeleteMcpServerRequest(tenant_id="acme", name="github"), metadata=AUTH
    )
    assert deleted.policy_version == before + 4
    assert [s.name for s in await list_servers(api)] == ["jira"]
    snapshot = await current_snapshot(api)
    # Its credential went with it; globex's server of the same name stays.
    assert list(snapshot.mcp_server_credentials) == []
    assert {(s.tenant_id, s.name) for s in snapshot.mcp_servers} == {
        ("acme", "jira"),
        ("globex", "github"),
    }


async def test_output_only_fields_sent_by_the_caller_are_ignored(api: Api) -> None:
    await create_tenant(api, "acme")
    given = mcp_server(has_credential=True)
    given.credential_update_time.FromSeconds(1_700_000_000)
    created = await api.control.CreateMcpServer(
        api_pb.CreateMcpServerRequest(mcp_server=given), metadata=AUTH
    )
    assert not created.mcp_server.has_credential
    assert not created.mcp_server.HasField("credential_update_time")


async def test_the_credential_is_write_only_and_sealed_under_the_servers_name(
    api: Api, redis_client: aioredis.Redis, box: SecretBox
) -> None:
    await create_tenant(api, "acme")
    created = await create_server(api, credential=SECRET)
    assert created.mcp_server.has_credential
    first_set = created.mcp_server.credential_update_time.ToDatetime()
    await create_server(api, "jira")
    replaced = await api.control.SetMcpServerCredential(
        api_pb.SetMcpServerCredentialRequest(
            tenant_id="acme", name="jira", credential=SECRET + "-2"
        ),
        metadata=AUTH,
    )
    assert replaced.mcp_server.has_credential
    assert replaced.mcp_server.credential_update_time.ToDatetime() >= first_set
    listed = await api.control.ListMcpServers(
        api_pb.ListMcpServersRequest(tenant_id="acme"), metadata=AUTH
    )
    status = await api.control.GetPolicyStatus(api_pb.GetPolicyStatusRequest(), metadata=AUTH)
    for response in (created, replaced, listed, status):
        assert SECRET.encode() not in response.SerializeToString()

    assert SECRET.encode() not in await stored_values(redis_client)
    snapshot = await current_snapshot(api)
    assert SECRET.encode() not in snapshot.SerializeToString()
    assert all(not c.api_key and c.key_id == box.key_id for c in snapshot.mcp_server_credentials)
    opened = {c.provider: box.open_credential(c) for c in snapshot.mcp_server_credentials}
    assert opened == {"mcp:acme/github": SECRET, "mcp:acme/jira": SECRET + "-2"}
    # What a data plane makes of it: the secret in the server's header.
    targets = compile_policy(snapshot, box).mcp_servers
    assert targets[("acme", "github")].credential_value == f"Bearer {SECRET}"


async def test_a_credential_saved_in_clear_is_sealed_by_the_next_change(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    legacy = policy_pb2.PolicySnapshot(
        version=3,
        tenants=[policy_pb2.Tenant(id="acme")],
        mcp_servers=[mcp_server()],
        mcp_server_credentials=[
            policy_pb2.ProviderCredential(
                provider=mcp_credential_name("acme", "github"), api_key=SECRET
            )
        ],
    )
    await redis_client.set(SNAPSHOT_KEY, legacy.SerializeToString())
    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api.on(channel)
            await create_tenant(api, "globex")
            assert SECRET.encode() not in await stored_values(redis_client)
            snapshot = await current_snapshot(api)
    finally:
        await server.stop(grace_s=0.5)
    box = secret_box(settings, create=False)
    assert [box.open_credential(c) for c in snapshot.mcp_server_credentials] == [SECRET]


async def test_rotate_secret_key_reseals_mcp_server_credentials(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    # redis_client is asked for so Redis is flushed first.
    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api.on(channel)
            await create_tenant(api, "acme")
            await create_server(api, credential=SECRET)
    finally:
        await server.stop(grace_s=0.5)
    old = settings.secret_key_file.read_text().strip()
    settings.secret_key_file.write_text(f"{new_secret_key()}\n{old}\n")
    rotated_box = secret_box(settings, create=False)

    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api.on(channel)
            rotated = await api.control.RotateSecretKey(
                api_pb.RotateSecretKeyRequest(), metadata=AUTH
            )
            assert (rotated.key_id, rotated.resealed) == (rotated_box.key_id, 1)
            snapshot = await current_snapshot(api)
    finally:
        await server.stop(grace_s=0.5)
    [credential] = snapshot.mcp_server_credentials
    assert credential.key_id == rotated_box.key_id
    # The old key can go: the newest alone opens it.
    settings.secret_key_file.write_text(settings.secret_key_file.read_text().splitlines()[0])
    assert secret_box(settings, create=False).open_credential(credential) == SECRET


async def test_a_key_that_cannot_open_an_mcp_credential_refuses_to_start(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api.on(channel)
            await create_tenant(api, "acme")
            await create_server(api, credential=SECRET)
    finally:
        await server.stop(grace_s=0.5)
    settings.secret_key_file.write_text(new_secret_key())
    with pytest.raises(SecretConfigError, match="does not hold"):
        await start(settings)


async def test_deleting_a_tenant_deletes_its_servers_credentials_and_agent_policies(
    api: Api,
) -> None:
    # "acme2" starts like "acme": its credentials must survive acme's deletion.
    for tenant in ("acme", "acme2"):
        await create_tenant(api, tenant)
        await create_server(api, tenant_id=tenant, credential=SECRET)
        await api.control.SetAgentPolicy(
            api_pb.SetAgentPolicyRequest(
                agent_policy=policy_pb2.AgentPolicy(
                    id=f"{tenant}-default",
                    tenant_id=tenant,
                    tools=[policy_pb2.ToolRule(tool="*", action=policy_pb2.TOOL_ACTION_ALLOW)],
                )
            ),
            metadata=AUTH,
        )
    before = await policy_version(api)

    deleted = await api.control.DeleteTenant(
        api_pb.DeleteTenantRequest(tenant_id="acme"), metadata=AUTH
    )

    assert deleted.policy_version == before + 1
    snapshot = await current_snapshot(api)
    assert [(s.tenant_id, s.name) for s in snapshot.mcp_servers] == [("acme2", "github")]
    assert [c.provider for c in snapshot.mcp_server_credentials] == ["mcp:acme2/github"]
    assert [p.id for p in snapshot.agent_policies] == ["acme2-default"]


REFUSED: list[tuple[str, Message, grpc.StatusCode, str]] = [
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mcp_server is required",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server("GitHub")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mcp_server.name 'GitHub' is not valid",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server("a/b")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mcp_server.name 'a/b' is not valid",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server(tenant_id="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mcp_server.tenant_id is required",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server(url="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "mcp_server.url is required",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server(tenant_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server("jira", url="ftp://jira/mcp")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "url must be a URL (http or https, with a host)",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server("jira", url="https://jira/mcp?t=1")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "url must not carry ?query",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(
            mcp_server=mcp_server("jira", credential_header="Mcp-Session-Id")
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "credential_header 'mcp-session-id' is not allowed",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server()),
        grpc.StatusCode.ALREADY_EXISTS,
        "MCP server 'github' of tenant 'acme' already exists",
    ),
    (
        "CreateMcpServer",
        api_pb.CreateMcpServerRequest(mcp_server=mcp_server("jira"), credential="tok\nen"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "the credential must be printable ASCII",
    ),
    (
        "ListMcpServers",
        api_pb.ListMcpServersRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id is required",
    ),
    (
        "ListMcpServers",
        api_pb.ListMcpServersRequest(tenant_id="nope"),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "DeleteMcpServer",
        api_pb.DeleteMcpServerRequest(tenant_id="acme", name="jira"),
        grpc.StatusCode.NOT_FOUND,
        "MCP server 'jira' of tenant 'acme' not found",
    ),
    (
        "DeleteMcpServer",
        api_pb.DeleteMcpServerRequest(tenant_id="acme"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "name is required",
    ),
    (
        "SetMcpServerCredential",
        api_pb.SetMcpServerCredentialRequest(tenant_id="acme", name="jira", credential="x"),
        grpc.StatusCode.NOT_FOUND,
        "MCP server 'jira' of tenant 'acme' not found",
    ),
    (
        "SetMcpServerCredential",
        api_pb.SetMcpServerCredentialRequest(tenant_id="acme", name="github"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "credential is required",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "code", "words"),
    REFUSED,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(REFUSED)],
)
async def test_refused_changes_name_the_fault_and_save_nothing(
    api: Api, method: str, request_message: Message, code: grpc.StatusCode, words: str
) -> None:
    await create_tenant(api, "acme")
    await create_server(api)
    before = await policy_version(api)

    error = await rpc_error(getattr(api.control, method)(request_message, metadata=AUTH))

    assert error.code() == code, error.details()
    assert words in (error.details() or ""), error.details()
    assert await policy_version(api) == before
