"""A provider failing mid-request, and the call moving on to the next target of its chain,
translated for that target's schema.

A 429/5xx or an unreachable provider before the first byte sends the request on to the next
target within the same request, plain and streamed: behind APISIX the Gatez plugin calls it;
behind Envoy the route retries on the chain cluster's next priority and the cluster's upstream
ext_proc rewrites the attempt for its target (extproc.envoy_chains). Each target gets its own
credential only.
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, UPSTREAM_KEY, Admin, TenantAccess, provision
from tests.e2e.providers.calls import ALIAS_OF, ALIASES, Kind
from tests.e2e.providers.conftest import PROVIDER_KEYS, Fakes
from tests.e2e.test_chat import wait_for_ai_logs
from tests.e2e.test_fallback import wait_for_chain_clusters

MESSAGES: list[Any] = [{"role": "user", "content": "hello failover"}]
FALLBACK_MODEL = "upstream-model-1"
# Headers only some kind of provider is given: none may reach another kind.
PROVIDER_ONLY_HEADERS = ("x-api-key", "anthropic-version", "x-goog-api-key", "api-key")


def chain_tenant(
    admin: Admin, fakes: Fakes, *, via: str | None = None
) -> tuple[TenantAccess, str, str]:
    """A tenant whose alias `chain-…` goes to the Anthropic fake, then (`via`: to that
    provider's "m-via" first) to the OpenAI fake; the alias, and the Anthropic target's
    circuit. The Anthropic fake is reached as a provider of this test's own, so no other
    test's failures count against its circuit."""
    anthropic = f"anthropic-{uuid.uuid4().hex[:8]}"
    admin.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=anthropic,
                kind=policy_pb2.PROVIDER_KIND_ANTHROPIC,
                base_url=fakes.replays[Kind.ANTHROPIC].base_url,
                auth=policy_pb2.PROVIDER_AUTH_API_KEY,
            ),
            api_key=PROVIDER_KEYS[Kind.ANTHROPIC],
        ),
        metadata=admin.metadata,
    )
    access = provision(admin, models={})
    _, anthropic_model = ALIASES[ALIAS_OF[Kind.ANTHROPIC]]
    fallbacks = [policy_pb2.FallbackTarget(provider=PROVIDER, upstream_model=FALLBACK_MODEL)]
    if via is not None:
        fallbacks.insert(0, policy_pb2.FallbackTarget(provider=via, upstream_model="m-via"))
    route = admin.control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                tenant_id=access.tenant_id,
                alias=f"chain-{uuid.uuid4().hex[:6]}",
                provider=anthropic,
                upstream_model=anthropic_model,
                fallbacks=fallbacks,
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(route.policy_version)
    return access, route.model_route.alias, f"{anthropic}/{anthropic_model}"


def unreachable_provider(admin: Admin) -> str:
    """An OpenAI-kind provider nobody listens for (a refused connection)."""
    name = f"down-{uuid.uuid4().hex[:8]}"
    created = admin.control.CreateProvider(
        control_pb2.CreateProviderRequest(
            provider=policy_pb2.Provider(
                name=name, kind=policy_pb2.PROVIDER_KIND_OPENAI, base_url="http://127.0.0.1:9/v1"
            ),
            api_key="sk-down",
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(created.policy_version)
    return name


def chat(client: openai.OpenAI, alias: str, *, stream: bool) -> str:
    """One chat through the gateway: the answer's text."""
    if stream:
        chunks = list(client.chat.completions.create(model=alias, messages=MESSAGES, stream=True))
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reply = client.chat.completions.create(model=alias, messages=MESSAGES)
    return reply.choices[0].message.content or ""


def assert_openai_fake_got_its_own_key_only(fakes: Fakes, since: int) -> None:
    """What the OpenAI fake received after its first `since` requests carried its own key and
    nothing the other providers were given, nor the gateway's routing headers."""
    received = fakes.openai.requests[since:]
    assert received
    for request in received:
        assert request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert not [name for name in PROVIDER_ONLY_HEADERS if name in request.headers]
        assert not [name for name in request.headers if name.startswith(("x-gatez", "x-envoy"))]
        assert PROVIDER_KEYS[Kind.ANTHROPIC] not in str(dict(request.headers))


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_overloaded_provider_moves_the_call_on_to_the_next_target(
    stack: Stack,
    admin: Admin,
    gateway_url: str,
    fakes: Fakes,
    stream: bool,
) -> None:
    access, alias, anthropic = chain_tenant(admin, fakes)
    wait_for_chain_clusters(stack)
    _, anthropic_model = ALIASES[ALIAS_OF[Kind.ANTHROPIC]]
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/overloaded")
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    openai_before = fakes.received(Kind.OPENAI)

    assert chat(client, alias, stream=stream) == "Echo: hello failover"
    # The Anthropic fake was called in Anthropic's schema, the OpenAI fake in OpenAI's.
    (first,) = fakes.replays[Kind.ANTHROPIC].requests
    assert first.path.endswith("/v1/messages") and first.json["model"] == anthropic_model
    assert first.headers["x-api-key"] == PROVIDER_KEYS[Kind.ANTHROPIC]
    second = fakes.openai.requests[-1]
    assert second.json["model"] == FALLBACK_MODEL and second.json["messages"][-1] == {
        "role": "user",
        "content": "hello failover",
    }
    assert second.path.endswith("/chat/completions")
    assert_openai_fake_got_its_own_key_only(fakes, openai_before)
    (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
    assert (row.provider, row.upstream_model, row.status) == (PROVIDER, FALLBACK_MODEL, 200)
    assert list(row.attempts) == [f"{anthropic}=529"]
    assert row.input_tokens > 0 and not row.usage_estimated


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_rate_limited_then_an_unreachable_provider_move_the_call_on_twice(
    stack: Stack,
    admin: Admin,
    gateway_url: str,
    fakes: Fakes,
    stream: bool,
) -> None:
    """Anthropic answers 429, the next target refuses the connection, OpenAI answers: one
    response, and the row lists both failures."""
    down = unreachable_provider(admin)
    access, alias, anthropic = chain_tenant(admin, fakes, via=down)
    wait_for_chain_clusters(stack)
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/rate_limit")
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    openai_before = fakes.received(Kind.OPENAI)

    assert chat(client, alias, stream=stream) == "Echo: hello failover"
    assert len(fakes.replays[Kind.ANTHROPIC].requests) == 1
    assert_openai_fake_got_its_own_key_only(fakes, openai_before)
    (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
    assert (row.provider, row.upstream_model, row.status) == (PROVIDER, FALLBACK_MODEL, 200)
    assert list(row.attempts) == [
        f"{anthropic}=429",
        f"{down}/m-via=connect",
    ]
    assert row.output_tokens > 0 and not row.usage_estimated


def test_a_cooling_down_provider_is_skipped_and_the_rest_of_the_chain_still_moves_on(
    stack: Stack,
    admin: Admin,
    gateway_url: str,
    fakes: Fakes,
) -> None:
    """Once the Anthropic target's circuit is open, calls start at the chain's next target and
    still move on from there (Envoy: the cluster of the chain's suffix)."""
    down = unreachable_provider(admin)
    access, alias, anthropic = chain_tenant(admin, fakes, via=down)
    wait_for_chain_clusters(stack)
    # Enough failures to open the Anthropic target's circuit (and the unreachable one's).
    threshold = 5
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/overloaded", times=threshold)
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)
    for _ in range(threshold + 1):
        assert chat(client, alias, stream=False) == "Echo: hello failover"
    assert len(fakes.replays[Kind.ANTHROPIC].requests) in (threshold, threshold + 1)
    rows = wait_for_ai_logs(admin, access.tenant_id, threshold + 1)
    assert {(row.provider, row.status) for row in rows} == {(PROVIDER, 200)}
    attempts = {tuple(row.attempts) for row in rows}
    # Skipped once open; the unreachable target after it tried (and opened) as well.
    assert (f"{anthropic}=529", f"{down}/m-via=connect") in attempts
    assert any(
        row.attempts[0] == f"{anthropic}=skipped"
        and set(row.attempts[1:]) <= {f"{down}/m-via=connect", f"{down}/m-via=skipped"}
        for row in rows
    )
