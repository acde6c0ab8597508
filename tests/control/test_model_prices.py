"""Model prices through the control API: set, listed beside the shipped defaults, deleted back
to the default; bad prices refused whole; an override reaches a data plane's compiled policy."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from control import ControlServer
from extproc.policy_source import PolicyHolder, PolicyWatcher
from gatez.prices import DEFAULT_PRICES, ModelPrice
from gatez.secrets import SecretBox
from gatez.v1 import control_pb2, policy_pb2
from tests.control.support import AUTH, DATAPLANE_TOKEN, Api, eventually, rpc_error


def price(model: str, **rates: float) -> control_pb2.SetModelPriceRequest:
    return control_pb2.SetModelPriceRequest(model_price=policy_pb2.ModelPrice(model=model, **rates))


async def listed(api: Api) -> dict[str, control_pb2.ListedModelPrice]:
    response = await api.control.ListModelPrices(
        control_pb2.ListModelPricesRequest(), metadata=AUTH
    )
    names = [entry.model_price.model for entry in response.model_prices]
    assert names == sorted(names)
    return {entry.model_price.model: entry for entry in response.model_prices}


@pytest.fixture
async def data_plane(
    control_server: ControlServer, box: SecretBox, tmp_path: Path
) -> AsyncIterator[PolicyHolder]:
    """A data plane's policy side (holder and watcher), watching the control service."""
    holder = PolicyHolder(tmp_path / "dataplane", box)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{control_server.port}") as channel:
        watcher = PolicyWatcher(holder, channel, DATAPLANE_TOKEN, "dp-1", max_backoff_s=0.1)
        task = asyncio.create_task(watcher.run())
        yield holder
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_price_set_reaches_the_data_planes_compiled_policy(
    api: Api, data_plane: PolicyHolder
) -> None:
    set_ = await api.control.SetModelPrice(
        price(
            "GPT-4o", input_usd_per_mtok=2.0, output_usd_per_mtok=8.0, cached_input_usd_per_mtok=0.5
        ),
        metadata=AUTH,
    )
    # Stored lower-cased, the unset cache-write rate filled with the input rate.
    assert set_.model_price == policy_pb2.ModelPrice(
        model="gpt-4o",
        input_usd_per_mtok=2.0,
        output_usd_per_mtok=8.0,
        cached_input_usd_per_mtok=0.5,
        cache_write_input_usd_per_mtok=2.0,
    )

    async def served() -> ModelPrice | None:
        policy = data_plane.current
        return policy.prices.lookup("gpt-4o-2024-08-06") if policy else None

    assert await eventually(served, lambda p: p is not None and p.input_usd_per_mtok == 2.0) == (
        ModelPrice(2.0, 8.0, 0.5, 2.0)
    )
    policy = data_plane.current
    assert policy is not None and policy.version == set_.policy_version
    # Other models keep their shipped prices.
    assert policy.prices.lookup("gpt-4o-mini") == DEFAULT_PRICES.lookup("gpt-4o-mini")

    await api.control.DeleteModelPrice(
        control_pb2.DeleteModelPriceRequest(model="gpt-4o"), metadata=AUTH
    )
    assert await eventually(served, lambda p: p is not None and p.input_usd_per_mtok == 2.5) == (
        DEFAULT_PRICES.lookup("gpt-4o")
    )


async def test_listing_marks_defaults_and_overrides(api: Api) -> None:
    before = await listed(api)
    assert len(before) == len(DEFAULT_PRICES)
    assert {e.source for e in before.values()} == {control_pb2.PRICE_SOURCE_DEFAULT}
    sonnet = before["claude-sonnet-4-5"].model_price
    assert (sonnet.input_usd_per_mtok, sonnet.cached_input_usd_per_mtok) == (3.0, 0.3)
    assert sonnet.cache_write_input_usd_per_mtok == 3.75

    await api.control.SetModelPrice(
        price("claude-sonnet-4-5", input_usd_per_mtok=3.3, output_usd_per_mtok=16.5),
        metadata=AUTH,
    )
    await api.control.SetModelPrice(
        price("acme-finetune", input_usd_per_mtok=0.0, output_usd_per_mtok=0.0), metadata=AUTH
    )
    # Setting a price again replaces it: one override per name.
    await api.control.SetModelPrice(
        price("acme-finetune", input_usd_per_mtok=1.0, output_usd_per_mtok=4.0), metadata=AUTH
    )
    after = await listed(api)
    assert len(after) == len(DEFAULT_PRICES) + 1
    overridden = after["claude-sonnet-4-5"]
    assert overridden.source == control_pb2.PRICE_SOURCE_OVERRIDE
    assert overridden.model_price.input_usd_per_mtok == 3.3
    assert overridden.default_price == sonnet
    custom = after["acme-finetune"]
    assert custom.source == control_pb2.PRICE_SOURCE_OVERRIDE
    assert not custom.HasField("default_price")
    assert custom.model_price.output_usd_per_mtok == 4.0

    await api.control.DeleteModelPrice(
        control_pb2.DeleteModelPriceRequest(model="Claude-Sonnet-4-5"), metadata=AUTH
    )
    assert (await listed(api))["claude-sonnet-4-5"].source == control_pb2.PRICE_SOURCE_DEFAULT


@pytest.mark.parametrize(
    ("request_", "says"),
    [
        (control_pb2.SetModelPriceRequest(), "model_price is required"),
        (price("", input_usd_per_mtok=1, output_usd_per_mtok=1), "model is required"),
        (price("gpt 4o", input_usd_per_mtok=1, output_usd_per_mtok=1), "is not valid"),
        (price("m" * 5000, input_usd_per_mtok=1, output_usd_per_mtok=1), "is not valid"),
        (price("gpt-4o", output_usd_per_mtok=1), "input_usd_per_mtok and output_usd_per_mtok"),
        (price("gpt-4o", input_usd_per_mtok=-0.01, output_usd_per_mtok=1), "from 0 to 10000"),
        (price("gpt-4o", input_usd_per_mtok=1, output_usd_per_mtok=math.inf), "from 0 to 10000"),
        (price("gpt-4o", input_usd_per_mtok=math.nan, output_usd_per_mtok=1), "from 0 to 10000"),
        (
            price(
                "gpt-4o",
                input_usd_per_mtok=1,
                output_usd_per_mtok=1,
                cache_write_input_usd_per_mtok=10_000.5,
            ),
            "cache_write_input_usd_per_mtok must be a number from 0 to 10000",
        ),
    ],
)
async def test_a_bad_price_is_refused_and_nothing_changes(
    api: Api, request_: control_pb2.SetModelPriceRequest, says: str
) -> None:
    error = await rpc_error(api.control.SetModelPrice(request_, metadata=AUTH))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert says in details
    assert len(details) < 300  # a 5000-character name is quoted, bounded
    status = await api.control.GetPolicyStatus(control_pb2.GetPolicyStatusRequest(), metadata=AUTH)
    assert status.version == 0
    assert all(e.source == control_pb2.PRICE_SOURCE_DEFAULT for e in (await listed(api)).values())


async def test_deleting_a_price_no_policy_set_is_not_found(api: Api) -> None:
    shipped = await rpc_error(
        api.control.DeleteModelPrice(
            control_pb2.DeleteModelPriceRequest(model="gpt-4o"), metadata=AUTH
        )
    )
    assert shipped.code() == grpc.StatusCode.NOT_FOUND
    assert "shipped default cannot be deleted" in (shipped.details() or "")
    unknown = await rpc_error(
        api.control.DeleteModelPrice(
            control_pb2.DeleteModelPriceRequest(model="nobody-prices-me"), metadata=AUTH
        )
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    empty = await rpc_error(
        api.control.DeleteModelPrice(control_pb2.DeleteModelPriceRequest(), metadata=AUTH)
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_prices_need_the_admin_token(api: Api) -> None:
    error = await rpc_error(
        api.control.SetModelPrice(price("gpt-4o", input_usd_per_mtok=0, output_usd_per_mtok=0))
    )
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
