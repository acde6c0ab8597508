"""The L2 guardrails and economy of a compiled policy: each tenant's PII redaction, its token
budgets (and its API keys'), and its answer-cache settings per route.

Compiled from the snapshot's `pii_policies`, `budgets` and `cache_policies` with the rest of
the policy (`gatez.policy.compile_policy`); a fault refuses the whole snapshot. The stages that
enforce them live in `extproc/stages/` (pii, cache, budget).

PERSON and LOCATION are accepted only in a process whose NER model is set
(`gatez.pii.configure_ner` from GATEZ_PII_NER_MODEL, at start): the control service and every
data plane read the same setting, so a policy the control service accepts compiles in the data
planes too.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

from gatez.budgets import BudgetLimits
from gatez.errors import InvalidPolicy, quoted
from gatez.v1 import policy_pb2

if TYPE_CHECKING:
    # Imported when a policy has PII rules (`_pii_rules`): Presidio costs ~0.9 s to import,
    # which a process whose tenants redact nothing (a restarted APISIX runner, the control
    # service) should not pay before it serves.
    from gatez.pii import Action, PiiScanner

DEFAULT_PII_MIN_SCORE: Final = 0.5
DEFAULT_SOFT_PERCENT: Final = 80
DEFAULT_MAX_OUTPUT_TOKENS: Final = 4096
DEFAULT_CACHE_TTL_S: Final = 3600
MAX_CACHE_TTL_S: Final = 30 * 86400
DEFAULT_SIMILARITY: Final = 0.85
# USD limits are kept in whole micro-dollars (Redis adds integers).
USD_MICROS: Final = 1_000_000
MAX_USD: Final = 1e12

# The policy's actions by gatez.pii's Action value.
_PII_ACTIONS: Final = {
    policy_pb2.PII_ACTION_MASK: "mask",
    policy_pb2.PII_ACTION_REPLACE: "replace",
    policy_pb2.PII_ACTION_HASH: "hash",
    policy_pb2.PII_ACTION_BLOCK: "block",
}


@dataclass(frozen=True, slots=True)
class PiiRules:
    """A tenant's PII redaction: what is looked for, and what becomes of each type found."""

    actions: Mapping[str, Action]
    scan_prompts: bool
    scan_output: bool
    salt: bytes
    # Built once per policy for exactly the types in `actions`.
    scanner: PiiScanner

    @property
    def output_rules(self) -> str:
        """What answers are redacted by, as text ("" when they are not): the answer cache keeps
        answers written under other rules apart."""
        if not self.scan_output:
            return ""
        return ",".join(f"{entity}={action}" for entity, action in sorted(self.actions.items()))

    @property
    def blocks(self) -> bool:
        return "block" in self.actions.values()


@dataclass(frozen=True, slots=True)
class TenantBudgets:
    """A tenant's budgets: its own (None: none) and its API keys' by key id."""

    tenant: BudgetLimits | None
    keys: Mapping[str, BudgetLimits]
    # Per owner ("" for the tenant, else the key id): fails open when Redis is away.
    fail_open: Mapping[str, bool]
    # Fraction of a limit reported as a soft threshold (0: none), per owner likewise.
    soft_fraction: Mapping[str, float]
    default_max_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS

    def for_key(self, key_id: str) -> tuple[BudgetLimits | None, BudgetLimits | None]:
        """(the tenant's limits, the key's limits) a call by `key_id` counts against."""
        return self.tenant, self.keys.get(key_id)

    def fails_open(self, key_id: str) -> bool:
        """Whether a call by `key_id` goes on uncounted when Redis is away: only if every
        budget it counts against says so."""
        owners = [o for o in ("", key_id) if o in self.fail_open]
        return bool(owners) and all(self.fail_open[o] for o in owners)


class EmbeddingSource(StrEnum):
    LOCAL = "local"
    PROVIDER = "provider"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The answer cache as one route of one tenant has it."""

    enabled: bool = True
    ttl_s: int = DEFAULT_CACHE_TTL_S
    similarity_threshold: float = DEFAULT_SIMILARITY
    exact_only: bool = False
    cache_tool_calls: bool = False
    cache_sampled: bool = False
    embeddings: EmbeddingSource = EmbeddingSource.LOCAL
    # PROVIDER: the tenant's model alias whose provider embeds.
    embedding_model: str = ""


@dataclass(frozen=True, slots=True)
class Guardrails:
    """Every tenant's guardrails in one compiled policy."""

    pii: Mapping[str, PiiRules]
    budgets: Mapping[str, TenantBudgets]
    # (tenant, route id) → settings; route id "" is the tenant-wide policy.
    cache: Mapping[tuple[str, str], CacheSettings]

    def cache_for(self, tenant_id: str, route_id: str) -> CacheSettings | None:
        """The route's own cache settings, else the tenant's; None (or disabled): no cache."""
        settings = self.cache.get((tenant_id, route_id)) or self.cache.get((tenant_id, ""))
        return settings if settings is not None and settings.enabled else None


NO_GUARDRAILS: Final = Guardrails(MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


def compile_guardrails(
    snapshot: policy_pb2.PolicySnapshot, tenants: Collection[str], key_tenants: Mapping[str, str]
) -> Guardrails:
    """Validates and compiles the snapshot's guardrails; `key_tenants` maps API key ids to their
    tenants. Raises InvalidPolicy naming the first fault."""
    pii: dict[str, PiiRules] = {}
    for policy in snapshot.pii_policies:
        where = f"PII policy of tenant {quoted(policy.tenant_id)}"
        _check(policy.tenant_id in tenants, f"{where}: unknown tenant")
        _check(policy.tenant_id not in pii, f"{where} appears twice")
        pii[policy.tenant_id] = _pii_rules(policy, where)

    owners: dict[str, dict[str, policy_pb2.Budget]] = {}
    for budget in snapshot.budgets:
        owner = budget.api_key_id
        where = f"budget of tenant {quoted(budget.tenant_id)}" + (
            f", API key {quoted(owner)}" if owner else ""
        )
        _check(budget.tenant_id in tenants, f"{where}: unknown tenant")
        _check(
            not owner or key_tenants.get(owner) == budget.tenant_id,
            f"{where}: the tenant has no such API key",
        )
        of_tenant = owners.setdefault(budget.tenant_id, {})
        _check(owner not in of_tenant, f"{where} appears twice")
        of_tenant[owner] = budget
    budgets = {tenant: _tenant_budgets(of_tenant) for tenant, of_tenant in owners.items()}

    cache: dict[tuple[str, str], CacheSettings] = {}
    for cache_policy in snapshot.cache_policies:
        where = f"cache policy of tenant {quoted(cache_policy.tenant_id)}" + (
            f", route {quoted(cache_policy.route_id)}" if cache_policy.route_id else ""
        )
        _check(cache_policy.tenant_id in tenants, f"{where}: unknown tenant")
        key = (cache_policy.tenant_id, cache_policy.route_id)
        _check(key not in cache, f"{where} appears twice")
        cache[key] = _cache_settings(cache_policy, where)
    return Guardrails(MappingProxyType(pii), MappingProxyType(budgets), MappingProxyType(cache))


def _pii_rules(policy: policy_pb2.PiiPolicy, where: str) -> PiiRules:
    from gatez.pii import (
        DEFAULT_ENTITIES,
        NER_ENTITIES,
        NER_SETTING,
        Action,
        PiiScanner,
        ner_available,
        supported_entities,
    )

    default = policy.default_action or policy_pb2.PII_ACTION_REPLACE
    _check(default in policy_pb2.PiiAction.values(), f"{where}: default_action unknown")
    actions: dict[str, Action] = {}
    if default != policy_pb2.PII_ACTION_OFF:
        actions = dict.fromkeys(DEFAULT_ENTITIES, Action(_PII_ACTIONS[default]))
    known = supported_entities()
    for entity, action in sorted(policy.entities.items()):
        # NER types are never in the default set: a policy names them (they cost far more).
        _check(
            entity not in NER_ENTITIES or ner_available(),
            f"{where}: {entity} needs a spaCy NER model, which this gateway does not load: "
            f"set {NER_SETTING} (an installed spaCy package or a saved pipeline's directory) "
            "for the control service and every data plane",
        )
        _check(
            entity in known,
            f"{where}: unknown entity type {quoted(entity)} (known: {', '.join(sorted(known))})",
        )
        _check(action in policy_pb2.PiiAction.values(), f"{where}: {entity}: action unknown")
        # UNSPECIFIED takes the default, which may be OFF.
        chosen = action or default
        if chosen == policy_pb2.PII_ACTION_OFF:
            actions.pop(entity, None)
        else:
            actions[entity] = Action(_PII_ACTIONS[chosen])
    min_score = policy.min_score if policy.HasField("min_score") else DEFAULT_PII_MIN_SCORE
    _check(0.0 <= min_score <= 1.0, f"{where}: min_score must be from 0 to 1")
    _check(
        Action.HASH not in actions.values() or len(policy.hash_salt) >= 16,
        f"{where}: HASH needs a hash_salt of at least 16 bytes (the control service draws one)",
    )
    return PiiRules(
        actions=MappingProxyType(actions),
        scan_prompts=not policy.skip_prompts,
        scan_output=policy.scan_output,
        salt=bytes(policy.hash_salt),
        scanner=PiiScanner(frozenset(actions), min_score=min_score),
    )


def _tenant_budgets(owners: Mapping[str, policy_pb2.Budget]) -> TenantBudgets:
    tenant = owners.get("")
    cap = DEFAULT_MAX_OUTPUT_TOKENS
    if tenant is not None and tenant.HasField("default_max_tokens"):
        cap = tenant.default_max_tokens
    limits = {owner: _limits(budget, owner) for owner, budget in owners.items()}
    return TenantBudgets(
        tenant=limits.pop("", None),
        keys=MappingProxyType(limits),
        fail_open=MappingProxyType({o: b.fail_open for o, b in owners.items()}),
        soft_fraction=MappingProxyType(
            {
                o: (b.soft_percent if b.HasField("soft_percent") else DEFAULT_SOFT_PERCENT) / 100
                for o, b in owners.items()
            }
        ),
        default_max_tokens=max(cap, 1),
    )


def _limits(budget: policy_pb2.Budget, owner: str) -> BudgetLimits:
    where = f"budget of tenant {quoted(budget.tenant_id)}" + (
        f", API key {quoted(owner)}" if owner else ""
    )
    _check(
        not budget.HasField("soft_percent") or budget.soft_percent <= 100,
        f"{where}: soft_percent must be from 0 to 100",
    )

    def usd(field: str) -> int | None:
        if not budget.HasField(field):
            return None
        value: float = getattr(budget, field)
        _check(
            math.isfinite(value) and 0 <= value <= MAX_USD,
            f"{where}: {field} must be from 0 to {MAX_USD:g}",
        )
        return round(value * USD_MICROS)

    def tokens(field: str) -> int | None:
        return getattr(budget, field) if budget.HasField(field) else None

    limits = BudgetLimits(
        tokens_per_day=tokens("tokens_per_day"),
        tokens_per_month=tokens("tokens_per_month"),
        usd_micros_per_day=usd("usd_per_day"),
        usd_micros_per_month=usd("usd_per_month"),
    )
    _check(limits != BudgetLimits(), f"{where} sets no limit")
    return limits


def _cache_settings(policy: policy_pb2.CachePolicy, where: str) -> CacheSettings:
    ttl = policy.ttl_s or DEFAULT_CACHE_TTL_S
    _check(ttl <= MAX_CACHE_TTL_S, f"{where}: ttl_s may be at most {MAX_CACHE_TTL_S}")
    threshold = (
        policy.similarity_threshold
        if policy.HasField("similarity_threshold")
        else DEFAULT_SIMILARITY
    )
    _check(0.0 < threshold <= 1.0, f"{where}: similarity_threshold must be above 0, at most 1")
    source = EmbeddingSource.LOCAL
    if policy.embeddings == policy_pb2.EMBEDDING_SOURCE_PROVIDER:
        source = EmbeddingSource.PROVIDER
        _check(policy.embedding_model, f"{where}: PROVIDER embeddings need an embedding_model")
    else:
        _check(
            policy.embeddings in policy_pb2.EmbeddingSource.values(),
            f"{where}: embeddings unknown",
        )
        _check(not policy.embedding_model, f"{where}: embedding_model is for PROVIDER embeddings")
    return CacheSettings(
        enabled=policy.enabled,
        ttl_s=ttl,
        similarity_threshold=threshold,
        exact_only=policy.exact_only,
        cache_tool_calls=policy.cache_tool_calls,
        cache_sampled=policy.cache_sampled,
        embeddings=source,
        embedding_model=policy.embedding_model,
    )


def _check(condition: object, message: str) -> None:
    if not condition:
        raise InvalidPolicy(message)
