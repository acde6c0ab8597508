"""The price table: lookup through the documented normalisations, never a guess for an unknown
model; cost arithmetic with cached input and cache writes priced apart; policy prices checked
and overlaid on the shipped defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from gatez.errors import InvalidPolicy
from gatez.policy import compile_policy
from gatez.prices import (
    DEFAULT_PRICES,
    ModelPrice,
    PriceTable,
    compile_prices,
    cost_usd,
    lookup_names,
)
from gatez.v1 import policy_pb2


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0


@pytest.mark.parametrize(
    ("model", "priced_as"),
    [
        ("gpt-4o", "gpt-4o"),
        ("GPT-4o", "gpt-4o"),
        (" gpt-4o-mini ", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
        ("claude-opus-4-1-20250805", "claude-opus-4-1"),
        ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
        ("anthropic.claude-haiku-4-5-20251001-v1:0", "claude-haiku-4-5"),
        ("us.anthropic.claude-sonnet-4-20250514-v1:0", "claude-sonnet-4"),
        ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", "claude-sonnet-4-5"),
        (
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
            "eu.anthropic.claude-opus-4-1-20250805-v1:0",
            "claude-opus-4-1",
        ),
        (
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "claude-3-haiku",
        ),
        ("claude-sonnet-4-5@20250929", "claude-sonnet-4-5"),
        ("models/gemini-2.5-flash", "gemini-2.5-flash"),
        ("publishers/google/models/gemini-2.5-pro", "gemini-2.5-pro"),
        (
            "projects/p-1/locations/us-central1/publishers/google/models/gemini-2.5-flash-lite",
            "gemini-2.5-flash-lite",
        ),
    ],
)
def test_a_model_is_priced_through_its_normalised_name(model: str, priced_as: str) -> None:
    assert list(lookup_names(model))[-1] == priced_as
    price = DEFAULT_PRICES.lookup(model)
    assert price is not None
    assert price == DEFAULT_PRICES.get(priced_as)


@pytest.mark.parametrize(
    "model",
    [
        "gpt-5",
        "o3-pro",
        "gpt-4o-audio-preview",
        "gpt-4",
        "claude-2",
        "anthropic.claude-v2:1",
        "gemini-3-pro",
        "models/",
        "",
        "llama3.2:3b",
        "meta.llama3-70b-instruct-v1:0",
    ],
)
def test_an_unknown_model_has_no_price_never_a_neighbours(model: str) -> None:
    assert DEFAULT_PRICES.lookup(model) is None


def test_an_exact_name_wins_over_its_normalised_form() -> None:
    # gpt-4o's first snapshot kept its launch price.
    first = DEFAULT_PRICES.lookup("gpt-4o-2024-05-13")
    assert first is not None and (first.input_usd_per_mtok, first.output_usd_per_mtok) == (5, 15)
    table = PriceTable(
        {
            "claude-sonnet-4-5": ModelPrice.of(3, 15),
            "us.anthropic.claude-sonnet-4-5-20250929-v1:0": ModelPrice.of(3.3, 16.5),
        }
    )
    profile = table.lookup("US.anthropic.claude-sonnet-4-5-20250929-v1:0")
    assert profile is not None and profile.input_usd_per_mtok == 3.3
    assert table.lookup("global.anthropic.claude-sonnet-4-5-20250929-v1:0") == ModelPrice.of(3, 15)


def test_cost_prices_each_kind_of_token_at_its_own_rate() -> None:
    price = ModelPrice(
        input_usd_per_mtok=3.0,
        output_usd_per_mtok=15.0,
        cached_input_usd_per_mtok=0.3,
        cache_write_input_usd_per_mtok=3.75,
    )
    # Anthropic's split: 1,000 fresh, 50,000 read from the cache, 2,000 written; 500 out.
    usage = Usage(
        input_tokens=53_000,
        output_tokens=500,
        cached_input_tokens=50_000,
        cache_write_input_tokens=2_000,
    )
    expected = (1_000 * 3.0 + 50_000 * 0.3 + 2_000 * 3.75 + 500 * 15.0) / 1e6
    assert cost_usd(usage, price) == pytest.approx(expected)
    assert cost_usd(usage, price) == pytest.approx(0.033)
    # Without the cache, the same prompt costs its full input price.
    assert cost_usd(Usage(53_000, 500), price) == pytest.approx((53_000 * 3 + 500 * 15) / 1e6)


def test_cost_of_nothing_is_nothing_and_inconsistent_counts_never_go_negative() -> None:
    price = ModelPrice.of(2.5, 10.0, 1.25)
    assert cost_usd(Usage(0, 0), price) == 0.0
    # More cached than input (a provider's mistake): the cached tokens are charged, no more.
    assert cost_usd(Usage(100, 0, cached_input_tokens=150), price) == pytest.approx(
        150 * 1.25 / 1e6
    )
    assert cost_usd(Usage(-5, -5, -5, -5), price) == 0.0


def test_unset_cache_rates_are_the_input_rate() -> None:
    assert ModelPrice.of(1.0, 2.0) == ModelPrice(1.0, 2.0, 1.0, 1.0)
    assert ModelPrice.of(1.0, 2.0, 0.0) == ModelPrice(1.0, 2.0, 0.0, 1.0)


def test_every_shipped_price_is_sane() -> None:
    for name, price in DEFAULT_PRICES.items():
        assert name == name.strip().lower(), name
        rates = (
            price.input_usd_per_mtok,
            price.output_usd_per_mtok,
            price.cached_input_usd_per_mtok,
            price.cache_write_input_usd_per_mtok,
        )
        assert all(0 < rate <= 100 for rate in rates), name
        assert price.cached_input_usd_per_mtok <= price.input_usd_per_mtok, name
        assert price.cache_write_input_usd_per_mtok >= price.input_usd_per_mtok, name
        assert price.output_usd_per_mtok > price.input_usd_per_mtok, name


def policy_price(model: str, **rates: float) -> policy_pb2.ModelPrice:
    return policy_pb2.ModelPrice(model=model, **rates)


def test_a_policys_prices_overlay_the_defaults() -> None:
    table = compile_prices(
        [
            policy_price("GPT-4o", input_usd_per_mtok=1.0, output_usd_per_mtok=4.0),
            policy_price("acme-llm", input_usd_per_mtok=0.0, output_usd_per_mtok=0.0),
        ]
    )
    assert table.lookup("gpt-4o-2024-08-06") == ModelPrice.of(1.0, 4.0)
    assert table.lookup("acme-llm") == ModelPrice.of(0.0, 0.0)
    assert table.lookup("gpt-4o-mini") == DEFAULT_PRICES.lookup("gpt-4o-mini")
    assert len(table) == len(DEFAULT_PRICES) + 1
    # The defaults themselves are untouched.
    assert DEFAULT_PRICES.lookup("gpt-4o") == ModelPrice.of(2.5, 10.0, 1.25)
    assert compile_prices([]) is DEFAULT_PRICES


@pytest.mark.parametrize(
    ("prices", "says"),
    [
        ([policy_price("", input_usd_per_mtok=1, output_usd_per_mtok=1)], "model is required"),
        ([policy_price("a b", input_usd_per_mtok=1, output_usd_per_mtok=1)], "not valid"),
        ([policy_price("m", input_usd_per_mtok=1)], "are required"),
        ([policy_price("m", input_usd_per_mtok=1, output_usd_per_mtok=-1)], "from 0 to"),
        ([policy_price("m", input_usd_per_mtok=math.inf, output_usd_per_mtok=1)], "from 0 to"),
        ([policy_price("m", input_usd_per_mtok=1, output_usd_per_mtok=1e5)], "from 0 to"),
        (
            [
                policy_price("m", input_usd_per_mtok=1, output_usd_per_mtok=1),
                policy_price("M", input_usd_per_mtok=2, output_usd_per_mtok=2),
            ],
            "appears twice",
        ),
    ],
)
def test_a_bad_policy_price_rejects_the_whole_snapshot(
    prices: list[policy_pb2.ModelPrice], says: str
) -> None:
    with pytest.raises(InvalidPolicy, match=says):
        compile_policy(policy_pb2.PolicySnapshot(version=1, model_prices=prices))


def test_a_compiled_policy_carries_its_prices() -> None:
    snapshot = policy_pb2.PolicySnapshot(
        version=1,
        model_prices=[policy_price("o3", input_usd_per_mtok=1, output_usd_per_mtok=2)],
    )
    assert compile_policy(snapshot).prices.lookup("o3-2025-04-16") == ModelPrice.of(1, 2)
    assert compile_policy(policy_pb2.PolicySnapshot()).prices is DEFAULT_PRICES
