"""Redis from settings, in one place: where it is (`GATEZ_REDIS_URL`), its password
(`GATEZ_REDIS_PASSWORD_FILE`, or in the URL), and whether it is a Redis Cluster.

URL forms: `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS),
`unix://[[user]:password@]/path/to/redis.sock?db=N`, and for a Redis Cluster
`redis+cluster://[[user]:password@]host[:port]` or `rediss+cluster://…` naming any one node
(clients discover the rest; a cluster has database 0 only).

The control service builds its redis-py client with `connect`; the data plane builds its
hot-path client (`extproc.redis_pipe.hot_path_client`) from the same `RedisTarget`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gatez.settings import Settings

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
PLAIN_SCHEMES = ("redis", "rediss", "unix")

# What `connect` returns: one server (or a managed Redis behind one address), or a cluster.
RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis to connect to. `url` is in redis-py's form (`redis://`, `rediss://`, `unix://`);
    `password`, when set, came from a password file. Neither shows in a repr."""

    url: str = field(repr=False)
    cluster: bool = False
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str, password: str | None = None) -> RedisTarget:
        """Raises ValueError for a URL that cannot name a Redis (never echoing it: it may hold
        a password)."""
        scheme, _, rest = url.partition("://")
        cluster = scheme in CLUSTER_SCHEMES
        if cluster:
            url = f"{CLUSTER_SCHEMES[scheme]}://{rest}"
        elif scheme not in PLAIN_SCHEMES:
            allowed = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, *CLUSTER_SCHEMES))
            raise ValueError(f"GATEZ_REDIS_URL must start with one of {allowed}")
        parts = urlsplit(url)
        if cluster and parts.path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: drop the /db from its URL")
        if password is not None and parts.password:
            raise ValueError(
                "the Redis password is set twice: in GATEZ_REDIS_URL and in "
                "GATEZ_REDIS_PASSWORD_FILE; keep one"
            )
        return cls(url=url, cluster=cluster, password=password)

    @classmethod
    def from_settings(cls, settings: Settings) -> RedisTarget:
        password = None
        if settings.redis_password_file is not None:
            password = read_password(settings.redis_password_file)
        return cls.parse(settings.redis_url, password)


def read_password(path: Path) -> str:
    """A password file's content without its trailing line break; an empty file is an error."""
    password = path.read_text().rstrip("\r\n")
    if not password:
        raise ValueError(f"the Redis password file {path} is empty")
    return password


async def connect(target: RedisTarget) -> RedisClient:
    """A redis-py asyncio client for `target`, replying with bytes. A cluster client has read
    the cluster's slot map when this returns (its pub/sub needs it); close it with `aclose()`."""
    # A password in the URL wins over this one (None); `parse` refuses both at once.
    if not target.cluster:
        return aioredis.Redis.from_url(target.url, password=target.password)
    cluster = aioredis.RedisCluster.from_url(target.url, password=target.password)
    try:
        await cluster.initialize()
    except BaseException:
        await cluster.aclose()
        raise
    return cluster
