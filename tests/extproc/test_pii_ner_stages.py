"""RedactPrompt and RedactAnswer with NER types in the tenant's policy (the process's
GATEZ_PII_NER_MODEL set: a tiny saved spaCy pipeline, no download): names and places replaced in
prompts before routing, and in streamed answers however the stream splits them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from gatez.pipeline import CONTINUE, Flow, Pipeline, Principal
from gatez.policy import CompiledPolicy, compile_policy
from gatez.translate.schemas import WireSchema
from gatez.v1 import policy_pb2
from tests.extproc.test_pii_stages import (
    ALIASES,
    PAIRS,
    PROVIDERS,
    answer,
    chat,
    client_view,
    llm_pipeline,
    provider_stream,
    schema_of,
    send,
    splits,
)
from tests.support.flows import make_flow
from tests.support.ner import ner_configured, save_tiny_ner_pipeline

NAMED = {
    "PERSON": policy_pb2.PII_ACTION_REPLACE,
    "LOCATION": policy_pb2.PII_ACTION_REPLACE,
}


@pytest.fixture(scope="module")
def policy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CompiledPolicy]:
    model = save_tiny_ner_pipeline(Path(tmp_path_factory.mktemp("ner")))
    with ner_configured(model):
        yield compile_policy(
            policy_pb2.PolicySnapshot(
                version=1,
                tenants=[policy_pb2.Tenant(id="acme")],
                routes=[
                    policy_pb2.Route(id="llm", path_prefix="/", kind=policy_pb2.ROUTE_KIND_LLM)
                ],
                providers=[
                    policy_pb2.Provider(name=name, kind=kind, base_url=url)
                    for name, (kind, url) in PROVIDERS.items()
                    if name in ("openai", "anthropic")
                ],
                provider_credentials=[
                    policy_pb2.ProviderCredential(provider=name, api_key="provider-key")
                    for name in ("openai", "anthropic")
                ],
                model_routes=[
                    policy_pb2.ModelRoute(
                        id=alias, alias=alias, provider=provider, upstream_model=model
                    )
                    for alias, (provider, model) in ALIASES.items()
                    if provider in ("openai", "anthropic")
                ],
                pii_policies=[
                    policy_pb2.PiiPolicy(
                        tenant_id="acme",
                        default_action=policy_pb2.PII_ACTION_REPLACE,
                        entities=NAMED,
                        scan_output=True,
                    )
                ],
            )
        )


def flow_for(policy: CompiledPolicy, path: str, body: dict[str, Any]) -> Flow:
    flow = make_flow(policy, path=path, body=orjson.dumps(body))
    flow.principal = Principal(tenant_id="acme", key_id="key-1", subject="key-1")
    return flow


async def test_names_and_places_leave_the_prompt_before_routing(policy: CompiledPolicy) -> None:
    prompt = "Book Ada Lovelace a room in Zurich; confirm to ada@example.com."
    flow = flow_for(policy, "/v1/chat/completions", chat(prompt))
    assert await send(llm_pipeline(), flow) is CONTINUE
    sent = orjson.loads(flow.request_body)["messages"][0]["content"]
    assert sent == "Book <PERSON> a room in <LOCATION>; confirm to <EMAIL_ADDRESS>."
    assert flow.pii_counts == {"PERSON": 1, "LOCATION": 1, "EMAIL_ADDRESS": 1}


ANSWER = "Grace Hopper flies from New York to Lake Geneva, then on to Paris with Alan Turing."
REDACTED = "<PERSON> flies from <LOCATION> to <LOCATION>, then on to <LOCATION> with <PERSON>."


@pytest.mark.parametrize(("path", "model", "provider"), PAIRS)
async def test_streamed_answer_names_split_at_every_position(
    policy: CompiledPolicy, path: str, model: str, provider: WireSchema
) -> None:
    client = schema_of(path)
    body = chat("Who travels where?", model, stream=True)
    if path == "/v1/messages":
        body["max_tokens"] = 100
    for deltas in [*splits(ANSWER), list(ANSWER)]:
        pipeline: Pipeline = llm_pipeline()
        flow = flow_for(policy, path, body)
        assert await send(pipeline, flow) is CONTINUE
        flow.take_pending()
        received, _ = await answer(
            pipeline, flow, provider_stream(provider, deltas), "text/event-stream"
        )
        where = f"split {[len(d) for d in deltas][:3]}"
        for name in ("Grace", "Hopper", "York", "Geneva", "Paris", "Turing"):
            assert name.encode() not in received, where
        assert client_view(client, received)[0] == REDACTED, where
        assert flow.pii_counts == {"PERSON": 2, "LOCATION": 3}, where
