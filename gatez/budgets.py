"""What a token budget is, shared by the data plane (which enforces budgets, `extproc.budgets`)
and the control service (which sets them and reads their spend): owners, periods, units, limits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    """Whose budget: the tenant's, or one API key's."""

    TENANT = "tenant"
    KEY = "key"


class Period(StrEnum):
    """A calendar period in UTC."""

    DAY = "day"
    MONTH = "month"


class Unit(StrEnum):
    """What a budget counts: tokens, or USD (kept in integer micro-dollars)."""

    TOKENS = "tokens"
    USD = "usd"


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """One owner's limits (a tenant's or a key's); None: no limit of that kind."""

    tokens_per_day: int | None = None
    tokens_per_month: int | None = None
    usd_micros_per_day: int | None = None
    usd_micros_per_month: int | None = None

    def for_period(self, period: Period) -> tuple[int | None, int | None]:
        """(token limit, USD limit) over `period`."""
        if period is Period.DAY:
            return self.tokens_per_day, self.usd_micros_per_day
        return self.tokens_per_month, self.usd_micros_per_month
