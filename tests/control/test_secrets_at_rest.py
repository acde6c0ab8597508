"""Provider credentials at rest: sealed in Redis (read raw), sealed in what data planes receive,
re-sealed by RotateSecretKey; the control service creates its key file on a first start and
refuses to start with a key that cannot open the stored credentials."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as aioredis

from control import ControlServer, start
from control.store import SNAPSHOT_KEY
from gatez.secrets import SecretBox, SecretConfigError, new_secret_key, secret_box
from gatez.settings import Settings
from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, raw
from tests.control.test_admin import create_provider, current_snapshot

SECRET = "sk-provider-secret-never-in-clear-0001"


async def every_stored_byte(redis: aioredis.Redis) -> bytes:
    """Every value Redis holds, raw, whatever its key or type (not DUMP: it may compress)."""
    values: list[object] = []
    for key in await redis.keys("*"):
        kind = raw(await redis.type(key)).decode()
        if kind == "string":
            values.append(await redis.get(key))
        elif kind == "hash":
            values += [raw(k) + raw(v) for k, v in (await redis.hgetall(key)).items()]
        elif kind == "list":
            values += await redis.lrange(key, 0, -1)
        elif kind == "set":
            values += await redis.smembers(key)
        elif kind == "zset":
            values += await redis.zrange(key, 0, -1)
        else:
            raise AssertionError(f"{key!r}: cannot read a {kind} raw")
    stored = b"".join(raw(value) for value in values)
    # The policy is there (so a clear key would be too): the check below can fail.
    assert b"openai" in stored
    return stored


async def test_redis_never_holds_a_provider_key_in_clear(
    api: Api, redis_client: aioredis.Redis, box: SecretBox
) -> None:
    await create_provider(api, "openai", api_key=SECRET)
    await create_provider(api, "azure")
    await api.control.SetProviderCredential(
        api_pb.SetProviderCredentialRequest(provider="azure", api_key=SECRET + "-azure"),
        metadata=AUTH,
    )
    stored = await every_stored_byte(redis_client)
    assert SECRET.encode() not in stored

    snapshot = await current_snapshot(api)
    assert SECRET.encode() not in snapshot.SerializeToString()
    opened = {c.provider: box.open_credential(c) for c in snapshot.provider_credentials}
    assert opened == {"openai": SECRET, "azure": SECRET + "-azure"}
    assert {c.key_id for c in snapshot.provider_credentials} == {box.key_id}


async def test_the_key_file_is_created_on_the_first_start_with_mode_0600(
    control_server: ControlServer, settings: Settings
) -> None:
    assert settings.secret_key_file.parent == settings.state_dir
    assert stat.S_IMODE(settings.secret_key_file.stat().st_mode) == 0o600


async def test_a_credential_saved_in_clear_before_sealing_existed_is_sealed_by_the_next_change(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    legacy = policy_pb2.PolicySnapshot(
        version=3,
        providers=[
            policy_pb2.Provider(
                name="openai", kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="https://x/v1"
            )
        ],
        provider_credentials=[policy_pb2.ProviderCredential(provider="openai", api_key=SECRET)],
    )
    await redis_client.set(SNAPSHOT_KEY, legacy.SerializeToString())
    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            api = Api.on(channel)
            await api.control.CreateTenant(
                api_pb.CreateTenantRequest(tenant=policy_pb2.Tenant(id="acme")), metadata=AUTH
            )
            assert SECRET.encode() not in await every_stored_byte(redis_client)
            snapshot = await current_snapshot(api)
            assert snapshot.version == 4 and snapshot.lineage
            box = secret_box(settings, create=False)
            assert [box.open_credential(c) for c in snapshot.provider_credentials] == [SECRET]
    finally:
        await server.stop(grace_s=0.5)


@pytest.fixture
async def sealed_with_the_first_key(
    settings: Settings, redis_client: aioredis.Redis
) -> AsyncIterator[Settings]:
    """A stored policy with one credential sealed by the key the first start created."""
    server = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await create_provider(Api.on(channel), "openai", api_key=SECRET)
    finally:
        await server.stop(grace_s=0.5)
    yield settings


async def test_rotate_secret_key_reseals_every_credential_with_the_newest_key(
    sealed_with_the_first_key: Settings,
) -> None:
    settings = sealed_with_the_first_key
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
            again = await api.control.RotateSecretKey(
                api_pb.RotateSecretKeyRequest(), metadata=AUTH
            )
            assert again.resealed == 0
            snapshot = await current_snapshot(api)
    finally:
        await server.stop(grace_s=0.5)
    [credential] = snapshot.provider_credentials
    assert credential.key_id == rotated_box.key_id
    # The old key can go: the newest alone opens everything.
    settings.secret_key_file.write_text(settings.secret_key_file.read_text().splitlines()[0])
    assert secret_box(settings, create=False).open_credential(credential) == SECRET


async def test_a_key_that_cannot_open_the_stored_credentials_refuses_to_start(
    sealed_with_the_first_key: Settings,
) -> None:
    settings = sealed_with_the_first_key
    settings.secret_key_file.write_text(new_secret_key())
    with pytest.raises(SecretConfigError, match="does not hold"):
        await start(settings)
