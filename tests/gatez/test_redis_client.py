"""Redis targets from settings: URL forms, cluster URLs, the password file, and refused
settings named without echoing a password."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gatez.redis_client import RedisTarget, connect
from gatez.settings import Settings
from tests.support.redis import RedisServer
from tests.support.redis_cluster import LocalRedisCluster


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("redis://h:6380/2", RedisTarget("redis://h:6380/2")),
        ("rediss://:pw@h", RedisTarget("rediss://:pw@h")),
        ("unix:///run/redis.sock?db=1", RedisTarget("unix:///run/redis.sock?db=1")),
        ("redis+cluster://h:7000", RedisTarget("redis://h:7000", cluster=True)),
        ("rediss+cluster://:pw@h:7000/0", RedisTarget("rediss://:pw@h:7000/0", cluster=True)),
    ],
)
def test_url_forms(url: str, target: RedisTarget) -> None:
    assert RedisTarget.parse(url) == target


@pytest.mark.parametrize(
    ("url", "password", "error"),
    [
        ("http://:s3cret@h", None, "must start with one of redis://, rediss://, unix://"),
        ("redis+cluster://:s3cret@h/3", None, "database 0 only"),
        ("redis://:s3cret@h", "also-s3cret", "set twice"),
    ],
)
def test_refused_urls_are_named_without_their_password(
    url: str, password: str | None, error: str
) -> None:
    with pytest.raises(ValueError, match=error) as refused:
        RedisTarget.parse(url, password)
    assert "s3cret" not in str(refused.value)


def test_the_password_comes_from_its_file_and_stays_out_of_reprs(tmp_path: Path) -> None:
    (tmp_path / "password").write_text("from-the-file\n")
    settings = Settings.from_env(
        {
            "GATEZ_REDIS_URL": "unix:///run/redis.sock",
            "GATEZ_REDIS_PASSWORD_FILE": str(tmp_path / "password"),
        }
    )

    target = RedisTarget.from_settings(settings)

    assert target.password == "from-the-file"
    assert "from-the-file" not in repr(target)
    (tmp_path / "password").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        RedisTarget.from_settings(settings)


async def test_clients_log_in_with_the_password(
    redis_server: RedisServer, redis_cluster: LocalRedisCluster
) -> None:
    single = await connect(RedisTarget.parse(redis_server.unix_url))
    cluster = await connect(RedisTarget.parse(redis_cluster.seed_url, redis_cluster.password))

    assert isinstance(single, aioredis.Redis) and await single.ping()
    assert isinstance(cluster, aioredis.RedisCluster) and await cluster.ping()
    assert len(cluster.get_primaries()) == 3
    await single.aclose()
    await cluster.aclose()
