"""Placeholder of the agent argument rules (replaced by the `arguments` branch on merge)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ArgumentConstraint:
    required: bool = False


@dataclass(frozen=True, slots=True)
class DestinationPolicy:
    allowed_hosts: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class PathPolicy:
    allowed_roots: tuple[str, ...] = ()


def build_constraint(
    *,
    allowed_values: Sequence[str],
    pattern: str | None,
    max_length: int | None,
    minimum: float | None,
    maximum: float | None,
    required: bool,
) -> ArgumentConstraint:
    return ArgumentConstraint(required)


def build_destination_policy(hosts: Sequence[str], networks: Sequence[str]) -> DestinationPolicy:
    return DestinationPolicy(frozenset(hosts))


def build_path_policy(roots: Sequence[str]) -> PathPolicy:
    return PathPolicy(tuple(roots))


@dataclass(frozen=True, slots=True)
class Violation:
    argument: str
    reason: str


def check_arguments(arguments: object, constraints: object) -> Violation | None:
    return None


def check_destinations(arguments: object, policy: DestinationPolicy) -> Violation | None:
    return None


def check_paths(arguments: object, policy: PathPolicy) -> Violation | None:
    return None
