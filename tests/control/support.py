"""Helpers for the control service tests: typed handles on the generated stubs, auth metadata,
and small waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import pytest

from gatez.v1 import control_pb2_grpc

ADMIN_TOKEN = "test-admin-token-0123456789"
AUTH = (("authorization", f"Bearer {ADMIN_TOKEN}"),)
DATAPLANE_TOKEN = "gzdp_test-dataplane-token-0123456789"
DATAPLANE_AUTH = (("authorization", f"Bearer {DATAPLANE_TOKEN}"),)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Api:
    """Both services' stubs on one channel to a running control service."""

    channel: grpc.aio.Channel
    # The generated stubs are untyped: their methods are Any.
    control: Any
    data_plane: Any

    @classmethod
    def on(cls, channel: grpc.aio.Channel) -> Api:
        return cls(
            channel=channel,
            control=control_pb2_grpc.ControlServiceStub(channel),
            data_plane=control_pb2_grpc.DataPlaneServiceStub(channel),
        )


def raw(value: object) -> bytes:
    """A value read from Redis (redis-py types it loosely) as the bytes it must be."""
    assert isinstance(value, bytes), value
    return value


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error the call ends with; fails the test when it succeeds."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout_s: float = 2.0
) -> T:
    """Polls `probe` until `accept` holds for its result; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await probe()
        if accept(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout_s}s; last value: {value!r}")
        await asyncio.sleep(0.02)
