"""What upstream models cost: a price table per model name, and the cost of one call's usage.

Prices are USD per million tokens, as providers publish them. Token counts follow OpenAI's
meaning: `input_tokens` includes the cached input and the input written to a cache, so a call
costs

    (input - cached - cache_write) * input_price + cached * cached_input_price
        + cache_write * cache_write_input_price + output * output_price,   all / 1e6.

A model the table does not know costs nothing and is marked unknown, never guessed. The shipped
defaults below are overlaid by the policy's `model_prices` (see `compile_prices`): an admin's
price for a name replaces the default of that name.

A name is looked up exactly (case-insensitive), then through these normalisations, each applied
on top of the one before, so a price set for any of the intermediate forms is found:

1. Gemini resource names lose their prefix: `models/gemini-2.5-flash`,
   `publishers/google/models/gemini-2.5-flash` → `gemini-2.5-flash`.
2. Bedrock ARNs keep their last path part: `arn:aws:bedrock:…:inference-profile/<id>` → `<id>`.
3. Bedrock cross-region inference profiles lose their geography: `us.anthropic.…` → `anthropic.…`.
4. Bedrock model ids lose provider and version: `anthropic.claude-3-5-haiku-20241022-v1:0` →
   `claude-3-5-haiku-20241022`; Vertex ids their `@version`: `claude-sonnet-4-5@20250929`.
5. Snapshot dates and `-latest` go: `gpt-4o-2024-08-06` → `gpt-4o`,
   `claude-sonnet-4-5-20250929` → `claude-sonnet-4-5`, `claude-3-5-haiku-latest`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Protocol

from gatez.errors import InvalidPolicy, quoted
from gatez.v1 import policy_pb2

# Above any published price (the dearest model lists $600 per million output tokens): a bound
# that catches a price typed per token or per thousand instead of per million.
MAX_USD_PER_MTOK: Final = 10_000.0
MAX_MODEL_NAME: Final = 200
_MODEL_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._:/@+-]*")
PER_MTOK: Final = 1_000_000


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens of each kind. A provider that does not price cached input or
    cache writes apart charges them as input (`of` fills them so)."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    cached_input_usd_per_mtok: float
    cache_write_input_usd_per_mtok: float

    @classmethod
    def of(
        cls,
        input_usd: float,
        output_usd: float,
        cached_input_usd: float | None = None,
        cache_write_input_usd: float | None = None,
    ) -> ModelPrice:
        """A price whose unset cached-input and cache-write rates are the input rate."""
        return cls(
            input_usd,
            output_usd,
            input_usd if cached_input_usd is None else cached_input_usd,
            input_usd if cache_write_input_usd is None else cache_write_input_usd,
        )


class MeteredUsage(Protocol):
    """One call's token counts (`gatez.pipeline.TokenUsage`), in OpenAI's meaning."""

    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def cached_input_tokens(self) -> int: ...
    @property
    def cache_write_input_tokens(self) -> int: ...


def cost_usd(usage: MeteredUsage, price: ModelPrice) -> float:
    """What `usage` costs at `price`, in USD. Counts a provider reported inconsistently (more
    cached than input) are never charged below zero."""
    cached = max(usage.cached_input_tokens, 0)
    written = max(usage.cache_write_input_tokens, 0)
    uncached = max(usage.input_tokens - cached - written, 0)
    return (
        uncached * price.input_usd_per_mtok
        + cached * price.cached_input_usd_per_mtok
        + written * price.cache_write_input_usd_per_mtok
        + max(usage.output_tokens, 0) * price.output_usd_per_mtok
    ) / PER_MTOK


_GEMINI_PREFIX: Final = re.compile(
    r"^(?:projects/[^/]+/locations/[^/]+/)?(?:publishers/[^/]+/)?models/"
)
_BEDROCK_GEOGRAPHY: Final = re.compile(r"^(?:us|us-gov|eu|apac|global|jp|au|ca)\.(?=[a-z]+\.)")
_BEDROCK_MODEL: Final = re.compile(
    r"^(?:anthropic|amazon|meta|mistral|cohere|ai21)\.(.+?)(?:-v\d+(?::\d+)?)?$"
)
_SNAPSHOT: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")


def lookup_names(model: str) -> Iterator[str]:
    """The names `model` is looked up by, most specific first (see the module's docstring)."""
    name = model.strip().lower()
    yield name
    for step in (_strip_gemini_prefix, _strip_arn, _strip_geography, _strip_bedrock, _strip_date):
        shorter = step(name)
        if shorter and shorter != name:
            name = shorter
            yield name


def _strip_gemini_prefix(name: str) -> str:
    return _GEMINI_PREFIX.sub("", name)


def _strip_arn(name: str) -> str:
    return name.rpartition("/")[2] if name.startswith("arn:") else name


def _strip_geography(name: str) -> str:
    return _BEDROCK_GEOGRAPHY.sub("", name)


def _strip_bedrock(name: str) -> str:
    if match := _BEDROCK_MODEL.fullmatch(name):
        return match.group(1)
    return name.partition("@")[0]


def _strip_date(name: str) -> str:
    return _SNAPSHOT.sub("", name)


# Lookups remembered per table (the names a policy routes to are few); bounded against a flood
# of distinct names.
_REMEMBERED_LOOKUPS: Final = 4096


_MISSING: Final = object()


class PriceTable:
    """Prices by model name, with the lookup the module's docstring describes. Immutable."""

    __slots__ = ("_found", "_prices")

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        self._prices = MappingProxyType({name.lower(): price for name, price in prices.items()})
        self._found: dict[str, ModelPrice | None] = {}

    def lookup(self, model: str) -> ModelPrice | None:
        """The price of `model`, or None when neither it nor a normalised form is known."""
        found = self._found.get(model, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]  # the sentinel was ruled out
        price = next((p for n in lookup_names(model) if (p := self._prices.get(n))), None)
        if len(self._found) < _REMEMBERED_LOOKUPS:
            self._found[model] = price
        return price

    def get(self, name: str) -> ModelPrice | None:
        """The price set for exactly `name` (case-insensitive), without normalisation."""
        return self._prices.get(name.lower())

    def items(self) -> list[tuple[str, ModelPrice]]:
        """Every named price, sorted by name."""
        return sorted(self._prices.items())

    def overlaid(self, overrides: Mapping[str, ModelPrice]) -> PriceTable:
        """This table with `overrides` replacing the prices of the same names."""
        return PriceTable({**self._prices, **overrides})

    def __len__(self) -> int:
        return len(self._prices)


def model_name(value: str, where: str) -> str:
    """A model name as prices are keyed: lower-case, checked; InvalidPolicy otherwise."""
    name = value.strip().lower()
    if not name:
        raise InvalidPolicy(f"{where}: model is required")
    if len(name) > MAX_MODEL_NAME or not _MODEL_NAME.fullmatch(name):
        raise InvalidPolicy(
            f"{where}: model {quoted(value)} is not valid: up to {MAX_MODEL_NAME} letters, "
            "digits and . _ : / @ + -"
        )
    return name


def _rate(message: policy_pb2.ModelPrice, field: str, where: str) -> float | None:
    if not message.HasField(field):
        return None
    value = float(getattr(message, field))
    if not math.isfinite(value) or not 0.0 <= value <= MAX_USD_PER_MTOK:
        raise InvalidPolicy(
            f"{where}: {field} must be a number from 0 to {MAX_USD_PER_MTOK:g} (USD per million "
            "tokens)"
        )
    return value


def parse_price(message: policy_pb2.ModelPrice) -> tuple[str, ModelPrice]:
    """A policy's price, checked: a valid name, input and output set, every rate finite and
    within 0..MAX_USD_PER_MTOK. Raises InvalidPolicy naming the fault."""
    name = model_name(message.model, "model price")
    where = f"model price {quoted(name)}"
    input_usd = _rate(message, "input_usd_per_mtok", where)
    output_usd = _rate(message, "output_usd_per_mtok", where)
    if input_usd is None or output_usd is None:
        raise InvalidPolicy(f"{where}: input_usd_per_mtok and output_usd_per_mtok are required")
    return name, ModelPrice.of(
        input_usd,
        output_usd,
        _rate(message, "cached_input_usd_per_mtok", where),
        _rate(message, "cache_write_input_usd_per_mtok", where),
    )


def price_to_proto(name: str, price: ModelPrice) -> policy_pb2.ModelPrice:
    """A price as the control API shows it, every rate set."""
    return policy_pb2.ModelPrice(
        model=name,
        input_usd_per_mtok=price.input_usd_per_mtok,
        output_usd_per_mtok=price.output_usd_per_mtok,
        cached_input_usd_per_mtok=price.cached_input_usd_per_mtok,
        cache_write_input_usd_per_mtok=price.cache_write_input_usd_per_mtok,
    )


def compile_prices(messages: Iterable[policy_pb2.ModelPrice]) -> PriceTable:
    """The shipped defaults overlaid by a policy's prices; InvalidPolicy for a bad or repeated
    one."""
    overrides: dict[str, ModelPrice] = {}
    for message in messages:
        name, price = parse_price(message)
        if name in overrides:
            raise InvalidPolicy(f"model price {quoted(name)} appears twice")
        overrides[name] = price
    return DEFAULT_PRICES.overlaid(overrides) if overrides else DEFAULT_PRICES


def _family(names: Iterable[str], price: ModelPrice) -> dict[str, ModelPrice]:
    return dict.fromkeys(names, price)


# OpenAI, Standard tier: https://platform.openai.com/docs/pricing (checked 2026-12 against the
# page and its copies). Cached input is OpenAI's "Cached input" column; writing the cache is
# free, so cache writes cost input. gpt-4o's first snapshot kept its launch price.
_OPENAI: Final = {
    "gpt-4o": ModelPrice.of(2.50, 10.00, 1.25),
    "gpt-4o-2024-05-13": ModelPrice.of(5.00, 15.00),
    "gpt-4o-mini": ModelPrice.of(0.15, 0.60, 0.075),
    "gpt-4.1": ModelPrice.of(2.00, 8.00, 0.50),
    "gpt-4.1-mini": ModelPrice.of(0.40, 1.60, 0.10),
    "gpt-4.1-nano": ModelPrice.of(0.10, 0.40, 0.025),
    "o3": ModelPrice.of(2.00, 8.00, 0.50),
    "o4-mini": ModelPrice.of(1.10, 4.40, 0.275),
    "o3-mini": ModelPrice.of(1.10, 4.40, 0.55),
}

# Anthropic: https://platform.claude.com/docs/en/about-claude/pricing (checked 2026-12), and
# https://platform.claude.com/docs/en/models/sonnet-5/overview for Sonnet 5. Cached input is
# "Cache hits & refreshes", cache writes the default 5-minute "Cache writes" (1-hour writes cost
# more: set an override if you use them). Left out: models whose published cache prices changed
# recently or differ by prompt length (Sonnet 5.5, Haiku 5.5, Opus 5.5); set them by policy.
_OPUS_4: Final = ModelPrice.of(15.00, 75.00, 1.50, 18.75)
_OPUS_4_5: Final = ModelPrice.of(5.00, 25.00, 0.50, 6.25)
_SONNET_4: Final = ModelPrice.of(3.00, 15.00, 0.30, 3.75)
_ANTHROPIC: Final = {
    **_family(["claude-opus-4", "claude-opus-4-0", "claude-opus-4-1"], _OPUS_4),
    **_family(
        [
            "claude-opus-4-5",
            "claude-opus-4-6",
            "claude-opus-4-7",
            "claude-opus-4-8",
            "claude-opus-5",
        ],
        _OPUS_4_5,
    ),
    **_family(
        ["claude-sonnet-4", "claude-sonnet-4-0", "claude-sonnet-4-5", "claude-sonnet-4-6"],
        _SONNET_4,
    ),
    "claude-3-7-sonnet": _SONNET_4,
    "claude-sonnet-5": ModelPrice.of(2.00, 10.00, 0.20, 2.50),
    "claude-haiku-4-5": ModelPrice.of(1.00, 5.00, 0.10, 1.25),
    "claude-3-5-haiku": ModelPrice.of(0.80, 4.00, 0.08, 1.00),
    "claude-3-haiku": ModelPrice.of(0.25, 1.25, 0.03, 0.30),
}
# Bedrock ids of the same models reach these prices through the normalisation above. Bedrock
# charges Anthropic's list prices in-region and on global cross-region profiles; its geographic
# profiles (us., eu., apac.) of Claude Sonnet 4.5 and later cost about 10% more
# (https://docs.aws.amazon.com/bedrock/latest/userguide/global-cross-region-inference.html,
# https://aws.amazon.com/bedrock/pricing/): set a price for the exact profile id to bill that.

# Google Gemini Developer API, paid tier: https://ai.google.dev/gemini-api/docs/pricing (checked
# 2026-12). Text/image/video input; Gemini 2.5 Pro at its prompts ≤ 200k tokens rates (longer
# prompts cost $2.50 in, $15 out, $0.25 cached). Context-cache storage is billed per hour, apart
# from requests, so cache writes cost input here.
_GEMINI: Final = {
    "gemini-2.5-pro": ModelPrice.of(1.25, 10.00, 0.125),
    "gemini-2.5-flash": ModelPrice.of(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": ModelPrice.of(0.10, 0.40, 0.01),
}

DEFAULT_PRICES: Final = PriceTable({**_OPENAI, **_ANTHROPIC, **_GEMINI})
