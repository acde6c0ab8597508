"""A provider failing mid-request, and the call moving on to the next target of its chain,
translated for that target's schema.

Behind APISIX the Gatez plugin makes the provider call, so a 429/5xx or an unreachable provider
before the first byte sends the request on to the next target within the same request, plain
and streamed. Behind Envoy the failure is answered (the ext_proc cannot resend); the calls after
skip the target once its circuit is open (tests/e2e/test_fallback.py).
"""

from __future__ import annotations

import uuid
from typing import Any

import openai
import pytest

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import PROVIDER, Admin, TenantAccess, provision
from tests.e2e.providers.calls import ALIAS_OF, ALIASES, Kind
from tests.e2e.providers.conftest import Fakes
from tests.e2e.test_chat import wait_for_ai_logs

MESSAGES: list[Any] = [{"role": "user", "content": "hello failover"}]
FALLBACK_MODEL = "upstream-model-1"


def chain_tenant(admin: Admin, provider_names: dict[Kind, str]) -> tuple[TenantAccess, str]:
    """A tenant whose alias `chain` goes to the Anthropic fake, then to the OpenAI fake; and
    the Anthropic target's circuit name."""
    access = provision(admin, models={})
    _, anthropic_model = ALIASES[ALIAS_OF[Kind.ANTHROPIC]]
    route = admin.control.CreateModelRoute(
        control_pb2.CreateModelRouteRequest(
            model_route=policy_pb2.ModelRoute(
                tenant_id=access.tenant_id,
                alias=f"chain-{uuid.uuid4().hex[:6]}",
                provider=provider_names[Kind.ANTHROPIC],
                upstream_model=anthropic_model,
                fallbacks=[
                    policy_pb2.FallbackTarget(provider=PROVIDER, upstream_model=FALLBACK_MODEL)
                ],
            )
        ),
        metadata=admin.metadata,
    )
    admin.wait_applied(route.policy_version)
    return access, route.model_route.alias


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_overloaded_provider_moves_the_call_on_to_the_next_target(
    stack: Stack,
    admin: Admin,
    gateway_url: str,
    provider_names: dict[Kind, str],
    fakes: Fakes,
    stream: bool,
) -> None:
    access, alias = chain_tenant(admin, provider_names)
    _, anthropic_model = ALIASES[ALIAS_OF[Kind.ANTHROPIC]]
    fakes.replays[Kind.ANTHROPIC].queue_error("anthropic/errors/overloaded")
    client = openai.OpenAI(base_url=gateway_url, api_key=access.api_key, max_retries=0)

    if stack.config.proxy != "apisix":
        with pytest.raises(openai.InternalServerError) as raised:
            answer: Any = client.chat.completions.create(
                model=alias, messages=MESSAGES, stream=stream
            )
            if stream:
                list(answer)
        assert raised.value.status_code == 529
        (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
        assert (row.provider, row.status, list(row.attempts)) == (
            provider_names[Kind.ANTHROPIC],
            529,
            [],
        )
        return

    if stream:
        chunks = list(client.chat.completions.create(model=alias, messages=MESSAGES, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        reply = client.chat.completions.create(model=alias, messages=MESSAGES)
        text = reply.choices[0].message.content or ""
    assert text == "Echo: hello failover"
    # The Anthropic fake was called in Anthropic's schema, the OpenAI fake in OpenAI's.
    (first,) = fakes.replays[Kind.ANTHROPIC].requests
    assert first.path.endswith("/v1/messages") and first.json["model"] == anthropic_model
    second = fakes.openai.requests[-1]
    assert second.json["model"] == FALLBACK_MODEL and second.json["messages"][-1] == {
        "role": "user",
        "content": "hello failover",
    }
    assert "x-api-key" not in second.headers
    (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
    assert (row.provider, row.upstream_model, row.status) == (PROVIDER, FALLBACK_MODEL, 200)
    assert list(row.attempts) == [f"{provider_names[Kind.ANTHROPIC]}/{anthropic_model}=529"]
    assert row.input_tokens > 0 and not row.usage_estimated
