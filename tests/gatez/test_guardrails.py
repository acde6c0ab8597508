"""compile_guardrails: each tenant's PII rules, budgets and cache settings with their defaults,
the rule that decides when a call fails open, which cache settings a route gets, and every
refusal, naming its fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gatez.budgets import BudgetLimits
from gatez.errors import InvalidPolicy
from gatez.guardrails import (
    DEFAULT_CACHE_TTL_S,
    DEFAULT_MAX_OUTPUT_TOKENS,
    DEFAULT_SIMILARITY,
    CacheSettings,
    EmbeddingSource,
    Guardrails,
    compile_guardrails,
)
from gatez.pii import DEFAULT_ENTITIES, NER_ENTITIES, Action, ner_available
from gatez.policy import compile_policy
from gatez.v1 import policy_pb2
from tests.support.ner import ner_configured, save_tiny_ner_pipeline

TENANTS = {"acme", "globex"}
KEY_TENANTS = {"key-a1": "acme", "key-a2": "acme", "key-g1": "globex"}
SALT = b"0123456789abcdef"


def compiled(**lists: Any) -> Guardrails:
    return compile_guardrails(policy_pb2.PolicySnapshot(**lists), TENANTS, KEY_TENANTS)


def refused(**lists: Any) -> str:
    with pytest.raises(InvalidPolicy) as caught:
        compiled(**lists)
    return caught.value.public_message


def pii(**fields: Any) -> policy_pb2.PiiPolicy:
    return policy_pb2.PiiPolicy(**({"tenant_id": "acme"} | fields))


def budget(**fields: Any) -> policy_pb2.Budget:
    return policy_pb2.Budget(**({"tenant_id": "acme"} | fields))


def cache(**fields: Any) -> policy_pb2.CachePolicy:
    defaults: dict[str, Any] = {"tenant_id": "acme", "enabled": True}
    return policy_pb2.CachePolicy(**(defaults | fields))


def test_nothing_set_compiles_to_no_guardrails() -> None:
    guardrails = compiled()
    assert (guardrails.pii, guardrails.budgets, guardrails.cache) == ({}, {}, {})
    assert guardrails.cache_for("acme", "default-llm") is None


# PII


def test_a_bare_pii_policy_replaces_the_default_types_in_prompts_only() -> None:
    rules = compiled(pii_policies=[pii()]).pii["acme"]
    assert dict(rules.actions) == dict.fromkeys(DEFAULT_ENTITIES, Action.REPLACE)
    assert "URL" not in rules.actions
    assert (rules.scan_prompts, rules.scan_output, rules.blocks) == (True, False, False)
    assert rules.scanner.entities == DEFAULT_ENTITIES
    # min_score 0.5 by default: a bare phone number (0.4) is not reported, one after "phone" is.
    assert not rules.scanner.scan("555-123-4567")
    assert [f.entity_type for f in rules.scanner.scan("phone 555-123-4567")] == ["PHONE_NUMBER"]


def test_listed_types_override_the_default_action() -> None:
    rules = compiled(
        pii_policies=[
            pii(
                default_action=policy_pb2.PII_ACTION_MASK,
                entities={
                    "URL": policy_pb2.PII_ACTION_UNSPECIFIED,  # the default action
                    "EMAIL_ADDRESS": policy_pb2.PII_ACTION_OFF,
                    "CREDIT_CARD": policy_pb2.PII_ACTION_BLOCK,
                    "IP_ADDRESS": policy_pb2.PII_ACTION_HASH,
                },
                hash_salt=SALT,
                scan_output=True,
                skip_prompts=True,
                min_score=0.3,
            )
        ]
    ).pii["acme"]
    assert rules.actions["URL"] is Action.MASK
    assert rules.actions["PHONE_NUMBER"] is Action.MASK
    assert "EMAIL_ADDRESS" not in rules.actions
    assert rules.actions["CREDIT_CARD"] is Action.BLOCK
    assert rules.actions["IP_ADDRESS"] is Action.HASH
    assert (rules.scan_prompts, rules.scan_output, rules.blocks, rules.salt) == (
        False,
        True,
        True,
        SALT,
    )
    assert rules.scanner.entities == frozenset(rules.actions)
    # min_score 0.3 keeps a bare phone number (0.4).
    assert [f.entity_type for f in rules.scanner.scan("555-123-4567")] == ["PHONE_NUMBER"]


def test_default_off_looks_only_for_the_listed_types() -> None:
    rules = compiled(
        pii_policies=[
            pii(
                default_action=policy_pb2.PII_ACTION_OFF,
                entities={
                    "EMAIL_ADDRESS": policy_pb2.PII_ACTION_MASK,
                    # Takes the default: not looked for.
                    "PHONE_NUMBER": policy_pb2.PII_ACTION_UNSPECIFIED,
                },
            )
        ]
    ).pii["acme"]
    assert dict(rules.actions) == {"EMAIL_ADDRESS": Action.MASK}


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (pii(tenant_id="nobody"), "PII policy of tenant 'nobody': unknown tenant"),
        (pii(default_action=99), "PII policy of tenant 'acme': default_action unknown"),
        (
            pii(entities={"PERSON": policy_pb2.PII_ACTION_MASK}),
            "PII policy of tenant 'acme': PERSON needs a spaCy NER model, which this gateway "
            "does not load",
        ),
        (
            pii(entities={"SHOE_SIZE": policy_pb2.PII_ACTION_MASK}),
            "PII policy of tenant 'acme': unknown entity type 'SHOE_SIZE' (known: ",
        ),
        (
            pii(entities={"EMAIL_ADDRESS": 99}),
            "PII policy of tenant 'acme': EMAIL_ADDRESS: action unknown",
        ),
        (pii(min_score=1.5), "PII policy of tenant 'acme': min_score must be from 0 to 1"),
        (pii(min_score=float("nan")), "PII policy of tenant 'acme': min_score must be from 0"),
        (
            pii(default_action=policy_pb2.PII_ACTION_HASH),
            "PII policy of tenant 'acme': HASH needs a hash_salt of at least 16 bytes",
        ),
        (
            pii(entities={"IP_ADDRESS": policy_pb2.PII_ACTION_HASH}, hash_salt=b"short"),
            "PII policy of tenant 'acme': HASH needs a hash_salt of at least 16 bytes",
        ),
    ],
)
def test_faulty_pii_policies_are_refused(policy: policy_pb2.PiiPolicy, message: str) -> None:
    assert refused(pii_policies=[policy]).startswith(message)


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_ner_pipeline(tmp_path_factory.mktemp("ner"))


def test_person_and_location_compile_in_a_process_with_an_ner_model(ner_model: Path) -> None:
    named = {"PERSON": policy_pb2.PII_ACTION_MASK, "LOCATION": policy_pb2.PII_ACTION_BLOCK}
    with ner_configured(ner_model):
        rules = compiled(pii_policies=[pii(entities=named)]).pii["acme"]
        out = rules.scanner.redact("Ada Lovelace, a@example.com, Paris", rules.actions)
    assert dict(rules.actions) == dict.fromkeys(DEFAULT_ENTITIES, Action.REPLACE) | {
        "PERSON": Action.MASK,
        "LOCATION": Action.BLOCK,
    }
    assert rules.scanner.entities == DEFAULT_ENTITIES | NER_ENTITIES
    assert out.text == f"{'*' * 12}, <EMAIL_ADDRESS>, <LOCATION>"
    assert out.blocked == frozenset({"LOCATION"})


def test_a_default_action_never_adds_the_ner_types(ner_model: Path) -> None:
    with ner_configured(ner_model):
        rules = compiled(pii_policies=[pii(default_action=policy_pb2.PII_ACTION_MASK)]).pii["acme"]
        message = refused(pii_policies=[pii(entities={"NAME": policy_pb2.PII_ACTION_MASK})])
    assert not NER_ENTITIES & rules.actions.keys()
    assert "LOCATION" in message and "PERSON" in message  # listed among the known types


@pytest.mark.parametrize("entity", sorted(NER_ENTITIES))
def test_without_an_ner_model_the_ner_types_are_refused_naming_the_setting(entity: str) -> None:
    assert not ner_available()
    message = refused(pii_policies=[pii(entities={entity: policy_pb2.PII_ACTION_MASK})])
    assert message == (
        f"PII policy of tenant 'acme': {entity} needs a spaCy NER model, which this gateway does "
        "not load: set GATEZ_PII_NER_MODEL (an installed spaCy package or a saved pipeline's "
        "directory) for the control service and every data plane"
    )


def test_one_pii_policy_per_tenant() -> None:
    assert refused(pii_policies=[pii(), pii()]) == "PII policy of tenant 'acme' appears twice"


# Budgets


def test_budget_defaults_and_units() -> None:
    budgets = compiled(
        budgets=[
            budget(tokens_per_day=1000, usd_per_month=2.5),
            budget(api_key_id="key-a1", usd_per_day=0.000_001, soft_percent=0),
        ]
    ).budgets["acme"]
    assert budgets.tenant == BudgetLimits(tokens_per_day=1000, usd_micros_per_month=2_500_000)
    assert dict(budgets.keys) == {"key-a1": BudgetLimits(usd_micros_per_day=1)}
    assert budgets.for_key("key-a1") == (budgets.tenant, budgets.keys["key-a1"])
    assert budgets.for_key("key-a2") == (budgets.tenant, None)
    assert dict(budgets.soft_fraction) == {"": 0.8, "key-a1": 0.0}
    assert dict(budgets.fail_open) == {"": False, "key-a1": False}
    assert budgets.default_max_tokens == DEFAULT_MAX_OUTPUT_TOKENS


def test_the_tenant_budget_sets_the_assumed_output() -> None:
    budgets = compiled(budgets=[budget(tokens_per_day=10, default_max_tokens=512)])
    assert budgets.budgets["acme"].default_max_tokens == 512


def test_a_zero_limit_is_a_limit() -> None:
    limits = compiled(budgets=[budget(tokens_per_month=0)]).budgets["acme"].tenant
    assert limits == BudgetLimits(tokens_per_month=0)


@pytest.mark.parametrize(
    ("tenant_open", "key_open", "key_id", "fails_open"),
    [
        # Every budget the call counts against must say so.
        (True, True, "key-a1", True),
        (True, False, "key-a1", False),
        (False, True, "key-a1", False),
        (True, None, "key-a1", True),
        (None, True, "key-a1", True),
        (None, False, "key-a1", False),
        # A key with no budget of its own counts against the tenant's only.
        (True, True, "key-a2", True),
        (False, True, "key-a2", False),
        (None, True, "key-a2", False),
    ],
)
def test_a_call_fails_open_only_if_every_budget_it_counts_against_says_so(
    tenant_open: bool | None, key_open: bool | None, key_id: str, fails_open: bool
) -> None:
    budgets = []
    if tenant_open is not None:
        budgets.append(budget(tokens_per_day=10, fail_open=tenant_open))
    if key_open is not None:
        budgets.append(budget(api_key_id="key-a1", tokens_per_day=10, fail_open=key_open))
    assert compiled(budgets=budgets).budgets["acme"].fails_open(key_id) is fails_open


@pytest.mark.parametrize(
    ("faulty", "message"),
    [
        (budget(tenant_id="nobody", tokens_per_day=1), "budget of tenant 'nobody': unknown tenant"),
        (
            budget(api_key_id="key-g1", tokens_per_day=1),
            "budget of tenant 'acme', API key 'key-g1': the tenant has no such API key",
        ),
        (
            budget(api_key_id="key-zz", tokens_per_day=1),
            "budget of tenant 'acme', API key 'key-zz': the tenant has no such API key",
        ),
        (budget(), "budget of tenant 'acme' sets no limit"),
        (budget(fail_open=True, soft_percent=50), "budget of tenant 'acme' sets no limit"),
        (
            budget(tokens_per_day=1, soft_percent=101),
            "budget of tenant 'acme': soft_percent must be from 0 to 100",
        ),
        (budget(usd_per_day=-1), "budget of tenant 'acme': usd_per_day must be from 0 to 1e+12"),
        (
            budget(usd_per_month=float("inf")),
            "budget of tenant 'acme': usd_per_month must be from 0 to 1e+12",
        ),
        (
            budget(usd_per_month=float("nan")),
            "budget of tenant 'acme': usd_per_month must be from 0 to 1e+12",
        ),
        (budget(usd_per_day=2e12), "budget of tenant 'acme': usd_per_day must be from 0 to 1e+12"),
    ],
)
def test_faulty_budgets_are_refused(faulty: policy_pb2.Budget, message: str) -> None:
    assert refused(budgets=[faulty]) == message


def test_one_budget_per_owner() -> None:
    twice = [budget(api_key_id="key-a1", tokens_per_day=1)] * 2
    assert refused(budgets=twice) == "budget of tenant 'acme', API key 'key-a1' appears twice"
    # The tenant's own and a key's are two owners.
    assert compiled(budgets=[budget(tokens_per_day=1), twice[0]]).budgets["acme"].keys


# Cache


def test_cache_defaults() -> None:
    settings = compiled(cache_policies=[cache()]).cache_for("acme", "default-llm")
    assert settings == CacheSettings(
        enabled=True,
        ttl_s=DEFAULT_CACHE_TTL_S,
        similarity_threshold=DEFAULT_SIMILARITY,
        embeddings=EmbeddingSource.LOCAL,
    )


def test_provider_embeddings_name_their_model() -> None:
    policy = cache(
        embeddings=policy_pb2.EMBEDDING_SOURCE_PROVIDER,
        embedding_model="embed",
        ttl_s=60,
        similarity_threshold=1.0,
        exact_only=True,
        cache_tool_calls=True,
        cache_sampled=True,
    )
    assert compiled(cache_policies=[policy]).cache_for("acme", "r") == CacheSettings(
        ttl_s=60,
        similarity_threshold=1.0,
        exact_only=True,
        cache_tool_calls=True,
        cache_sampled=True,
        embeddings=EmbeddingSource.PROVIDER,
        embedding_model="embed",
    )


def test_a_routes_own_cache_policy_wins_over_the_tenant_wide_one() -> None:
    guardrails = compiled(
        cache_policies=[
            cache(ttl_s=100),
            cache(route_id="chat", ttl_s=200),
            cache(route_id="batch", enabled=False),
            cache(tenant_id="globex", route_id="chat", ttl_s=300),
        ]
    )

    def ttl(tenant_id: str, route_id: str) -> int | None:
        settings = guardrails.cache_for(tenant_id, route_id)
        return None if settings is None else settings.ttl_s

    assert ttl("acme", "chat") == 200
    assert ttl("acme", "default-llm") == 100  # tenant-wide
    assert ttl("acme", "batch") is None  # its own policy turns the cache off there
    assert ttl("globex", "chat") == 300
    assert ttl("globex", "default-llm") is None  # globex has no tenant-wide policy


def test_a_disabled_tenant_wide_policy_caches_nothing_but_a_route_may_turn_it_on() -> None:
    guardrails = compiled(cache_policies=[cache(enabled=False), cache(route_id="chat")])
    assert guardrails.cache_for("acme", "default-llm") is None
    assert guardrails.cache_for("acme", "chat") is not None


@pytest.mark.parametrize(
    ("faulty", "message"),
    [
        (cache(tenant_id="nobody"), "cache policy of tenant 'nobody': unknown tenant"),
        (
            cache(route_id="chat", ttl_s=30 * 86400 + 1),
            "cache policy of tenant 'acme', route 'chat': ttl_s may be at most 2592000",
        ),
        (
            cache(similarity_threshold=0.0),
            "cache policy of tenant 'acme': similarity_threshold must be above 0, at most 1",
        ),
        (
            cache(similarity_threshold=1.01),
            "cache policy of tenant 'acme': similarity_threshold must be above 0, at most 1",
        ),
        (
            cache(embeddings=policy_pb2.EMBEDDING_SOURCE_PROVIDER),
            "cache policy of tenant 'acme': PROVIDER embeddings need an embedding_model",
        ),
        (
            cache(embedding_model="embed"),
            "cache policy of tenant 'acme': embedding_model is for PROVIDER embeddings",
        ),
        (cache(embeddings=99), "cache policy of tenant 'acme': embeddings unknown"),
    ],
)
def test_faulty_cache_policies_are_refused(faulty: policy_pb2.CachePolicy, message: str) -> None:
    assert refused(cache_policies=[faulty]) == message


def test_one_cache_policy_per_tenant_and_route() -> None:
    twice = [cache(route_id="chat"), cache(route_id="chat", ttl_s=5)]
    assert (
        refused(cache_policies=twice) == "cache policy of tenant 'acme', route 'chat' appears twice"
    )


def test_a_faulty_guardrail_refuses_the_whole_snapshot() -> None:
    snapshot = policy_pb2.PolicySnapshot(
        tenants=[policy_pb2.Tenant(id="acme")],
        budgets=[budget(tokens_per_day=10)],
        cache_policies=[cache(similarity_threshold=2.0)],
    )
    with pytest.raises(InvalidPolicy, match="similarity_threshold"):
        compile_policy(snapshot)
    del snapshot.cache_policies[:]
    assert compile_policy(snapshot).guardrails.budgets["acme"].tenant == BudgetLimits(
        tokens_per_day=10
    )
