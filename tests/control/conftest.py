"""A real control service per test: in-process on a free port, with the session's redis-server
(flushed per test) and an embedded chDB in the test's tmp dir. The data-plane token is set; the
secret key file is created by the service in the tmp dir, as on a first start."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import redis.asyncio as aioredis

from control import ControlServer, start
from gatez.secrets import SecretBox, secret_box
from gatez.settings import Settings
from tests.control.support import ADMIN_TOKEN, DATAPLANE_TOKEN, Api
from tests.support.redis import RedisServer


@pytest.fixture
def settings(redis_server: RedisServer, tmp_path: Path) -> Settings:
    return Settings.from_env(
        {
            "GATEZ_STATE_DIR": str(tmp_path),
            "GATEZ_ADMIN_TOKEN": ADMIN_TOKEN,
            "GATEZ_DATAPLANE_TOKEN": DATAPLANE_TOKEN,
            "GATEZ_CONTROL_ADDRESS": "127.0.0.1:0",
            "GATEZ_REDIS_URL": redis_server.url,
            "GATEZ_CLICKHOUSE_DSN": f"chdb://{tmp_path / 'ch'}",
        }
    )


@pytest.fixture
async def control_server(
    settings: Settings, redis_client: aioredis.Redis
) -> AsyncIterator[ControlServer]:
    # redis_client is asked for so Redis is flushed before the service loads its snapshot.
    server = await start(settings)
    yield server
    await server.stop(grace_s=1.0)


@pytest.fixture
def box(settings: Settings, control_server: ControlServer) -> SecretBox:
    """The secret key the control service created on its start."""
    return secret_box(settings, create=False)


@pytest.fixture
async def channel(control_server: ControlServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_server.port}") as channel:
        yield channel


@pytest.fixture
def api(channel: grpc.aio.Channel) -> Api:
    return Api.on(channel)
