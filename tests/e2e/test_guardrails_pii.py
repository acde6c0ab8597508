"""PII redaction end to end, through both adapters with the official SDKs (issue 11).

The fake provider records every request it receives and echoes the last user message, so what
it saw is checked on its recorded bodies (it must never receive a raw value) and what the
client got is that echo. Each test's tenant routes to an upstream model of its own, so its
requests are told apart from every other test's at the shared fake provider.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any, Final

import anthropic
import openai
import orjson
import pytest
from google.protobuf import json_format

from gatez.stack import Stack
from gatez.v1 import control_pb2, policy_pb2
from tests.e2e.conftest import Admin, TenantAccess, provision
from tests.e2e.test_chat import wait_for_ai_logs, wait_for_request_logs
from tests.fakes.openai_upstream import RecordedRequest, UpstreamServer, message_text

pytestmark = [
    pytest.mark.e2e,
    # Both adapters and both ext_proc servers; redaction keeps nothing in Redis, so the Redis
    # Cluster variant adds nothing here.
    pytest.mark.parametrize("stack", ["envoy", "envoy-grpcio", "apisix"], indirect=True),
]

#: One value of each kind, as written in the prompt; a bare phone number scores 0.4, so a
#: context word ("call me at") lifts it over the default threshold as Presidio's would.
RAW: Final[Mapping[str, str]] = {
    "EMAIL_ADDRESS": "jane.doe@example.com",
    "PHONE_NUMBER": "(212) 555-0134",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "AWS_ACCESS_KEY": "AKIAIOSFODNN7EXAMPLE",
}
PROMPT: Final = (
    f"Contact {RAW['EMAIL_ADDRESS']} or call me at {RAW['PHONE_NUMBER']}, "
    f"card {RAW['CREDIT_CARD']}, aws key {RAW['AWS_ACCESS_KEY']}."
)
REDACTED: Final = (
    "Contact <EMAIL_ADDRESS> or call me at <PHONE_NUMBER>, card <CREDIT_CARD>, "
    "aws key <AWS_ACCESS_KEY>."
)
#: Pieces of the raw values that no redacted body may hold either.
FRAGMENTS: Final = ("jane.doe", "example.com", "555-0134", "4111", "AKIAIOSFODNN7")
ALL_FOUND: Final = {entity: 1 for entity in RAW}
#: HASH writes 16 hex digits of a salted SHA-256 (Presidio's hash operator), no type tag.
HASH_TAG: Final = re.compile(r"[0-9a-f]{16}")


def pii_tenant(admin: Admin, **policy: Any) -> tuple[TenantAccess, str]:
    """A fresh tenant with a PII policy (`policy`: PiiPolicy fields), applied on the data
    plane, and the upstream model its alias `gpt-test` reaches (its own)."""
    model = f"pii-{uuid.uuid4().hex[:8]}"
    access = provision(admin, models={"gpt-test": model})
    response = admin.control.SetPiiPolicy(
        control_pb2.SetPiiPolicyRequest(
            pii_policy=policy_pb2.PiiPolicy(tenant_id=access.tenant_id, **policy)
        ),
        metadata=admin.metadata,
    )
    assert not response.pii_policy.hash_salt, "the salt is never returned"
    admin.wait_applied(response.policy_version)
    return access, model


def received(upstream: UpstreamServer, model: str) -> list[RecordedRequest]:
    """The chat requests the fake provider received for `model`."""
    return [r for r in upstream.requests if r.json is not None and r.json.get("model") == model]


def assert_no_raw_value(text: str | bytes) -> None:
    shown = text.decode(errors="replace") if isinstance(text, bytes) else text
    for value in (*RAW.values(), *FRAGMENTS):
        assert value not in shown, f"{value!r} leaked: {shown[:2000]}"


def openai_client(stack: Stack, access: TenantAccess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.config.gateway_url}/v1", api_key=access.api_key, max_retries=0
    )


def anthropic_client(stack: Stack, access: TenantAccess) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.config.gateway_url, api_key=access.api_key, max_retries=0
    )


def ask(stack: Stack, access: TenantAccess, sdk: str, messages: list[Any], **extra: Any) -> str:
    """The answer's text, asked through `sdk` ("openai" or "anthropic") plainly."""
    if sdk == "openai":
        reply = openai_client(stack, access).chat.completions.create(
            model="gpt-test", messages=messages, **extra
        )
        return reply.choices[0].message.content or ""
    message = anthropic_client(stack, access).messages.create(
        model="gpt-test", max_tokens=256, messages=messages, **extra
    )
    return "".join(block.text for block in message.content if block.type == "text")


def log_text(admin: Admin, tenant_id: str) -> str:
    """Every AI-log and request-log row of the tenant, as the control API shows them."""
    ai = admin.control.ListAiLogs(
        control_pb2.ListAiLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
    )
    requests = admin.control.ListRequestLogs(
        control_pb2.ListRequestLogsRequest(tenant_id=tenant_id), metadata=admin.metadata
    )
    return json_format.MessageToJson(ai) + json_format.MessageToJson(requests)


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_the_provider_gets_type_tags_never_the_values(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str
) -> None:
    access, model = pii_tenant(admin)  # every default type, REPLACE

    answer = ask(stack, access, sdk, [{"role": "user", "content": PROMPT}])

    (seen,) = received(upstream, model)
    assert_no_raw_value(seen.body)
    assert message_text(seen.json["messages"][-1]) == REDACTED
    # The fake echoes what it got: the client sees the redacted prompt come back.
    assert answer == f"Echo: {REDACTED}"
    if sdk == "openai":  # the log rows once (each wait costs a log flush)
        (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
        assert dict(row.pii_entities) == ALL_FOUND
        assert row.status == 200
        wait_for_request_logs(admin, access.tenant_id, 1)
        assert_no_raw_value(log_text(admin, access.tenant_id))


@pytest.mark.parametrize(
    ("action", "email_becomes"),
    [
        (policy_pb2.PII_ACTION_REPLACE, "<EMAIL_ADDRESS>"),
        (policy_pb2.PII_ACTION_MASK, "*" * len(RAW["EMAIL_ADDRESS"])),
    ],
    ids=["replace", "mask"],
)
def test_each_type_takes_its_own_action(
    stack: Stack, admin: Admin, upstream: UpstreamServer, action: int, email_becomes: str
) -> None:
    # The e-mail address takes `action`; the other types the default (REPLACE); the AWS key is
    # not looked for at all.
    access, model = pii_tenant(
        admin,
        entities={"EMAIL_ADDRESS": action, "AWS_ACCESS_KEY": policy_pb2.PII_ACTION_OFF},
    )

    answer = ask(stack, access, "openai", [{"role": "user", "content": PROMPT}])

    (seen,) = received(upstream, model)
    expected = (
        f"Contact {email_becomes} or call me at <PHONE_NUMBER>, card <CREDIT_CARD>, "
        f"aws key {RAW['AWS_ACCESS_KEY']}."
    )
    assert seen.json["messages"][-1]["content"] == expected
    assert answer == f"Echo: {expected}"


def test_hash_gives_the_same_digits_for_the_same_value_within_the_tenant(
    stack: Stack, admin: Admin, upstream: UpstreamServer
) -> None:
    access, model = pii_tenant(admin, default_action=policy_pb2.PII_ACTION_HASH)
    other = "john.roe@example.org"
    twice = f"First {RAW['EMAIL_ADDRESS']}, again {RAW['EMAIL_ADDRESS']}, then {other}."

    ask(stack, access, "openai", [{"role": "user", "content": twice}])
    ask(stack, access, "openai", [{"role": "user", "content": f"Only {RAW['EMAIL_ADDRESS']}"}])

    first, second = received(upstream, model)
    assert_no_raw_value(first.body + second.body)
    assert "john.roe" not in first.body.decode()
    hashed = HASH_TAG.pattern
    seen_first = re.fullmatch(
        rf"First ({hashed}), again ({hashed}), then ({hashed})\.",
        first.json["messages"][-1]["content"],
    )
    seen_second = re.fullmatch(rf"Only ({hashed})", second.json["messages"][-1]["content"])
    assert seen_first is not None and seen_second is not None, (first.json, second.json)
    same, again, different = seen_first.groups()
    assert same == again == seen_second.group(1)
    assert different != same


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_block_refuses_in_the_clients_format_naming_the_type_only(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str
) -> None:
    access, model = pii_tenant(admin, entities={"CREDIT_CARD": policy_pb2.PII_ACTION_BLOCK})
    messages = [{"role": "user", "content": PROMPT}]

    error: openai.BadRequestError | anthropic.BadRequestError
    if sdk == "openai":
        with pytest.raises(openai.BadRequestError) as openai_caught:
            ask(stack, access, sdk, messages)
        error = openai_caught.value
        assert isinstance(error.body, dict)
        assert error.body["type"] == "invalid_request_error"
    else:
        with pytest.raises(anthropic.BadRequestError) as anthropic_caught:
            ask(stack, access, sdk, messages)
        error = anthropic_caught.value
        # Anthropic's error shape: {"type": "error", "error": {"type", "message"}}.
        body = error.response.json()
        assert body["type"] == "error"
        assert body["error"]["type"] == "invalid_request_error"
    assert error.status_code == 400
    assert "CREDIT_CARD" in error.message
    assert_no_raw_value(error.response.text)
    assert received(upstream, model) == []
    if sdk == "openai":
        (row,) = wait_for_request_logs(admin, access.tenant_id, 1)
        assert row.status == 400
        assert_no_raw_value(log_text(admin, access.tenant_id))


def _openai_tool_history() -> list[Any]:
    arguments = orjson.dumps({"email": RAW["EMAIL_ADDRESS"], "card": RAW["CREDIT_CARD"]})
    return [
        {"role": "user", "content": "Look the customer up."},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_lookup_1",
                    "type": "function",
                    "function": {"name": "lookup_customer", "arguments": arguments.decode()},
                }
            ],
        },
        {
            "role": "tool",
            "tool_call_id": "call_lookup_1",
            "content": f"Found: call me at {RAW['PHONE_NUMBER']}, key {RAW['AWS_ACCESS_KEY']}",
        },
        {"role": "user", "content": "Summarise the record."},
    ]


def _anthropic_tool_history() -> list[Any]:
    return [
        {"role": "user", "content": "Look the customer up."},
        {
            "role": "assistant",
            "content": [
                {
                    "type": "tool_use",
                    "id": "toolu_lookup_1",
                    "name": "lookup_customer",
                    "input": {"email": RAW["EMAIL_ADDRESS"], "card": RAW["CREDIT_CARD"]},
                }
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_lookup_1",
                    "content": f"Found: call me at {RAW['PHONE_NUMBER']}, "
                    f"key {RAW['AWS_ACCESS_KEY']}",
                },
                {"type": "text", "text": "Summarise the record."},
            ],
        },
    ]


TOOL_SCHEMA: Final = {
    "type": "object",
    "properties": {"email": {"type": "string"}, "card": {"type": "string"}},
}


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_tool_call_arguments_and_results_are_redacted(
    stack: Stack, admin: Admin, upstream: UpstreamServer, sdk: str
) -> None:
    access, model = pii_tenant(admin)
    if sdk == "openai":
        tools: list[Any] = [
            {
                "type": "function",
                "function": {"name": "lookup_customer", "parameters": TOOL_SCHEMA},
            }
        ]
        ask(stack, access, sdk, _openai_tool_history(), tools=tools)
    else:
        tools = [{"name": "lookup_customer", "input_schema": TOOL_SCHEMA}]
        ask(stack, access, sdk, _anthropic_tool_history(), tools=tools)

    (seen,) = received(upstream, model)
    assert_no_raw_value(seen.body)
    messages = seen.json["messages"]
    (call,) = [m for m in messages if m.get("tool_calls")]
    arguments = orjson.loads(call["tool_calls"][0]["function"]["arguments"])
    assert arguments == {"email": "<EMAIL_ADDRESS>", "card": "<CREDIT_CARD>"}
    (result,) = [m for m in messages if m["role"] == "tool"]
    result_text = orjson.dumps(result["content"]).decode()
    assert "<PHONE_NUMBER>" in result_text and "<AWS_ACCESS_KEY>" in result_text
    if sdk == "openai":
        (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
        assert dict(row.pii_entities) == ALL_FOUND


#: Spoken back by the fake one word per chunk: " 212", " 555", " 0134" arrive apart. Longer
#: than the redactor's look-behind (128 characters), so the answer streams on: the phone number
#: is released mid-stream, the address when the stream ends.
FILLER: Final = (
    "please write it down somewhere safe because I will not be reachable during the long trip "
    "across the mountains with the whole family"
)
SPOKEN: Final = f"My phone is 212 555 0134 and {FILLER}, my mail is {RAW['EMAIL_ADDRESS']}"
SPOKEN_REDACTED: Final = (
    f"Echo: My phone is <PHONE_NUMBER> and {FILLER}, my mail is <EMAIL_ADDRESS>"
)


def _streamed_openai(stack: Stack, access: TenantAccess) -> list[str]:
    stream = openai_client(stack, access).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": SPOKEN}], stream=True
    )
    return [c.choices[0].delta.content or "" for c in stream if c.choices]


def _streamed_anthropic(stack: Stack, access: TenantAccess) -> list[str]:
    with anthropic_client(stack, access).messages.stream(
        model="gpt-test", max_tokens=256, messages=[{"role": "user", "content": SPOKEN}]
    ) as events:
        return list(events.text_stream)


@pytest.mark.parametrize("mode", ["openai-stream", "anthropic-stream", "openai-plain"])
def test_answers_are_redacted_also_when_a_value_spans_chunks(
    stack: Stack, admin: Admin, upstream: UpstreamServer, mode: str
) -> None:
    # Prompts pass as they are, so the provider's echo carries the raw values back.
    access, model = pii_tenant(admin, skip_prompts=True, scan_output=True)

    if mode == "openai-stream":
        pieces = _streamed_openai(stack, access)
    elif mode == "anthropic-stream":
        pieces = _streamed_anthropic(stack, access)
    else:
        pieces = [ask(stack, access, "openai", [{"role": "user", "content": SPOKEN}])]

    (seen,) = received(upstream, model)
    assert message_text(seen.json["messages"][-1]) == SPOKEN
    assert "".join(pieces) == SPOKEN_REDACTED
    if mode != "openai-plain":
        # Still a stream, not one buffered answer: what lies further back than the look-behind
        # goes out as the answer comes, the phone number's replacement included.
        released = [p for p in pieces if p]
        assert len(released) >= 3, pieces
        assert "<PHONE_NUMBER>" in "".join(released[:-1]), pieces
    for piece in pieces:
        assert not any(number in piece for number in ("212", "555", "0134")), pieces
    if mode == "openai-stream":
        # Found in the answer only (prompts are not scanned); the values never logged.
        (row,) = wait_for_ai_logs(admin, access.tenant_id, 1)
        assert dict(row.pii_entities) == {"PHONE_NUMBER": 1, "EMAIL_ADDRESS": 1}
        for value in ("jane.doe", "555 0134"):
            assert value not in log_text(admin, access.tenant_id)
