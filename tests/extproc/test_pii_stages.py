"""RedactPrompt and RedactAnswer on Flows, in the LLM pipeline's order: prompts of every client
schema redacted before routing, blocked requests answered in the client's schema, answers
redacted whole and streamed (same schema and translated), split entities caught."""

from __future__ import annotations

import hashlib
import string
from collections.abc import Sequence
from typing import Any

import orjson
import pytest

from extproc.stages.client_api import Endpoint
from extproc.stages.model_route import ModelRouting
from extproc.stages.pii import MIN_ENTITY_CHARS, STREAM_WINDOW_CHARS, RedactAnswer, RedactPrompt
from extproc.stages.provider_headers import ProviderHeaders
from extproc.stages.response import DecodeResponse, EncodeResponse
from gatez.pii import SUPPORTED_ENTITIES, PiiScanner
from gatez.pipeline import CONTINUE, Continue, Flow, Pipeline, Principal, Respond
from gatez.policy import compile_policy
from gatez.translate.model import ChatResponse, Text, TextDelta, ToolCall, ToolCallDelta
from gatez.translate.schemas import (
    ANTHROPIC_MESSAGES,
    BEDROCK_CONVERSE,
    GEMINI,
    OLLAMA_CHAT,
    OPENAI_CHAT,
    WireSchema,
)
from gatez.v1 import policy_pb2
from tests.support.flows import make_flow

EMAIL = "jane.doe@example.com"
TAG = "<EMAIL_ADDRESS>"
# Put where nothing may be scanned (tool schemas, media, ids, signed reasoning): if it were
# scanned it would be replaced, and the body would differ from the expected one.
KEEP = "keep.me@example.org"
# An AWS key inside base64 image data: found wherever text is scanned.
AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
IMAGE_B64 = f"iVBORw0KGgo+{AWS_KEY}/AAAA"
# Ids are never scanned (a changed one would no longer pair a tool call with its result).
CALL_ID = f"call_{KEEP}"
CARD = "4111 1111 1111 1111"
SSN = "536-22-1234"
SALT = b"tenant-salt-0123456789"
OTHER_SALT = b"another-salt-9876543210"

REPLACE = policy_pb2.PII_ACTION_REPLACE
PROVIDERS = {
    "openai": (policy_pb2.PROVIDER_KIND_OPENAI, "https://api.openai.com/v1"),
    "anthropic": (policy_pb2.PROVIDER_KIND_ANTHROPIC, "https://api.anthropic.com"),
    "gemini": (policy_pb2.PROVIDER_KIND_GEMINI, "https://generativelanguage.googleapis.com"),
    "ollama": (policy_pb2.PROVIDER_KIND_OLLAMA, "http://ollama:11434"),
    "bedrock": (
        policy_pb2.PROVIDER_KIND_BEDROCK,
        "https://bedrock-runtime.us-east-1.amazonaws.com",
    ),
}
ALIASES = {
    "gpt": ("openai", "gpt-4o-mini"),
    "embed": ("openai", "text-embedding-3-small"),
    "claude": ("anthropic", "claude-sonnet-4-5"),
    "gem": ("gemini", "gemini-2.5-flash"),
    "llama": ("ollama", "llama3.2"),
    "br": ("bedrock", "anthropic.claude-3-haiku-20240307-v1:0"),
}


def pii_policy(tenant: str, **fields: Any) -> policy_pb2.PiiPolicy:
    return policy_pb2.PiiPolicy(tenant_id=tenant, **fields)


POLICIES = [
    pii_policy("acme", default_action=REPLACE, scan_output=True),
    pii_policy("hashco", default_action=policy_pb2.PII_ACTION_HASH, hash_salt=SALT),
    pii_policy("hashco2", default_action=policy_pb2.PII_ACTION_HASH, hash_salt=OTHER_SALT),
    pii_policy("maskco", default_action=policy_pb2.PII_ACTION_MASK),
    pii_policy(
        "blockco",
        entities={
            "CREDIT_CARD": policy_pb2.PII_ACTION_BLOCK,
            "US_SSN": policy_pb2.PII_ACTION_BLOCK,
        },
        scan_output=True,
    ),
    pii_policy("outonly", skip_prompts=True, scan_output=True),
]
POLICY = compile_policy(
    policy_pb2.PolicySnapshot(
        version=1,
        tenants=[
            policy_pb2.Tenant(id=t)
            for t in ("acme", "hashco", "hashco2", "maskco", "blockco", "outonly", "plain")
        ],
        routes=[policy_pb2.Route(id="llm", path_prefix="/", kind=policy_pb2.ROUTE_KIND_LLM)],
        providers=[
            policy_pb2.Provider(
                name=name,
                kind=kind,
                base_url=url,
                # Bedrock by API key: no SigV4 key pair to make up.
                auth=policy_pb2.PROVIDER_AUTH_API_KEY
                if kind == policy_pb2.PROVIDER_KIND_BEDROCK
                else policy_pb2.PROVIDER_AUTH_UNSPECIFIED,
            )
            for name, (kind, url) in PROVIDERS.items()
        ],
        provider_credentials=[
            policy_pb2.ProviderCredential(provider=name, api_key="provider-key")
            for name in PROVIDERS
            if name != "ollama"
        ],
        model_routes=[
            policy_pb2.ModelRoute(id=alias, alias=alias, provider=provider, upstream_model=model)
            for alias, (provider, model) in ALIASES.items()
        ],
        pii_policies=POLICIES,
    )
)


def flow_for(path: str, body: dict[str, Any] | bytes, tenant: str = "acme") -> Flow:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    flow = make_flow(POLICY, path=path, body=raw)
    flow.principal = Principal(tenant_id=tenant, key_id="key-1", subject="key-1")
    return flow


def llm_pipeline() -> Pipeline:
    """The LLM pipeline's stages around PII redaction, in the lead's order."""
    return Pipeline(
        [
            RedactPrompt(),
            ModelRouting(),
            ProviderHeaders(),
            DecodeResponse(),
            RedactAnswer(),
            EncodeResponse(),
        ]
    )


async def send(pipeline: Pipeline, flow: Flow) -> Continue | Respond:
    """The request phases; returns the body phase's decision."""
    assert await pipeline.request_headers(flow) is CONTINUE
    return await pipeline.request_body(flow)


def redact_prompt(flow: Flow) -> None:
    assert RedactPrompt().on_request_body(flow) is CONTINUE


def replaced(body: dict[str, Any], value: str = EMAIL, tag: str = TAG) -> dict[str, Any]:
    """`body` with every occurrence of `value` replaced by `tag` (also inside JSON strings)."""
    result: dict[str, Any] = orjson.loads(orjson.dumps(body).replace(value.encode(), tag.encode()))
    return result


def arguments(value: dict[str, Any]) -> str:
    return orjson.dumps(value).decode()


# --- prompts: every client schema ----------------------------------------------------------

TOOL_SCHEMA = {
    "type": "object",
    "properties": {"to": {"type": "string", "description": f"an address such as {KEEP}"}},
}

OPENAI_BODY: dict[str, Any] = {
    "model": "gpt",
    "messages": [
        {"role": "system", "content": f"Escalations go to {EMAIL}."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"I am {EMAIL}"},
                {
                    "type": "image_url",
                    "image_url": {"url": f"data:image/png;base64,{IMAGE_B64}", "detail": "low"},
                },
                {"type": "input_audio", "input_audio": {"data": IMAGE_B64, "format": "wav"}},
                {"type": "file", "file": {"filename": KEEP, "file_data": IMAGE_B64}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": CALL_ID,
                    "type": "function",
                    "function": {
                        "name": "send_mail",
                        "arguments": arguments({"to": EMAIL, "cc": [EMAIL], "n": 2}),
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": CALL_ID, "content": f"sent to {EMAIL}"},
        {"role": "user", "content": "ok"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "send_mail",
                "description": f"Mails someone, e.g. {KEEP}",
                "parameters": TOOL_SCHEMA,
            },
        }
    ],
    "user": "user-1",
    "temperature": 0.2,
}
RESPONSES_BODY: dict[str, Any] = {
    "model": "gpt",
    "instructions": f"Be polite to {EMAIL}.",
    "input": [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": f"My mail is {EMAIL}"},
                {"type": "input_image", "image_url": f"data:image/jpeg;base64,{IMAGE_B64}"},
                {"type": "input_file", "filename": KEEP, "file_data": IMAGE_B64},
            ],
        },
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": IMAGE_B64},
        {
            "type": "function_call",
            "call_id": CALL_ID,
            "name": "lookup",
            "arguments": arguments({"email": EMAIL}),
        },
        {"type": "function_call_output", "call_id": CALL_ID, "output": f"found {EMAIL}"},
    ],
    "tools": [
        {"type": "function", "name": "lookup", "description": KEEP, "parameters": TOOL_SCHEMA}
    ],
}
ANTHROPIC_BODY: dict[str, Any] = {
    "model": "claude",
    "max_tokens": 256,
    "system": [
        {"type": "text", "text": f"Escalate to {EMAIL}", "cache_control": {"type": "ephemeral"}}
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"I'm {EMAIL}"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_B64},
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": KEEP},
                },
                {
                    "type": "document",
                    "source": {"type": "content", "content": [{"type": "text", "text": KEEP}]},
                    "title": f"Notes on {EMAIL}",
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": f"The user is {KEEP}.", "signature": IMAGE_B64},
                {"type": "text", "text": "Sending."},
                {
                    "type": "tool_use",
                    "id": CALL_ID,
                    "name": "send_mail",
                    # Tool input is the caller's data: every string, whatever its field name.
                    "input": {"to": EMAIL, "id": EMAIL, "attachment": f"data:text/plain,{KEEP}"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": CALL_ID,
                    "content": [{"type": "text", "text": f"delivered to {EMAIL}"}],
                },
                {"type": "tool_result", "tool_use_id": "toolu_02", "content": f"{EMAIL} bounced"},
            ],
        },
    ],
    "tools": [{"name": "send_mail", "description": KEEP, "input_schema": TOOL_SCHEMA}],
    "metadata": {"user_id": "user-1"},
}
GEMINI_BODY: dict[str, Any] = {
    "contents": [
        {
            "role": "user",
            "parts": [
                {"text": f"I'm {EMAIL}"},
                {"inlineData": {"mimeType": "image/png", "data": IMAGE_B64}},
                {"fileData": {"mimeType": "application/pdf", "fileUri": f"gs://b/{KEEP}.pdf"}},
            ],
        },
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"id": CALL_ID, "name": "send_mail", "args": {"to": EMAIL}},
                    "thoughtSignature": IMAGE_B64,
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {
                    "functionResponse": {
                        "name": "send_mail",
                        "response": {"result": f"sent to {EMAIL}", "to": [EMAIL]},
                    }
                }
            ],
        },
    ],
    "systemInstruction": {"parts": [{"text": f"Escalate to {EMAIL}"}]},
    "tools": [
        {
            "functionDeclarations": [
                {"name": "send_mail", "description": KEEP, "parameters": TOOL_SCHEMA}
            ]
        }
    ],
    "generationConfig": {"stopSequences": [KEEP], "maxOutputTokens": 100},
}
OLLAMA_BODY: dict[str, Any] = {
    "model": "llama",
    "messages": [
        {"role": "system", "content": f"Escalate to {EMAIL}"},
        {"role": "user", "content": f"I'm {EMAIL}", "images": [IMAGE_B64]},
        {
            "role": "assistant",
            "content": "",
            "thinking": f"the user is {KEEP}",
            "tool_calls": [{"function": {"name": "send_mail", "arguments": {"to": EMAIL}}}],
        },
        {"role": "tool", "content": f"sent to {EMAIL}", "tool_name": "send_mail"},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": "send_mail", "description": KEEP, "parameters": TOOL_SCHEMA},
        }
    ],
    "format": TOOL_SCHEMA,
    "options": {"stop": [KEEP]},
    "stream": False,
}
OLLAMA_GENERATE_BODY: dict[str, Any] = {
    "model": "llama",
    "prompt": f"Write to {EMAIL}",
    "system": f"Escalate to {EMAIL}",
    "images": [IMAGE_B64],
    "options": {"stop": [KEEP]},
    "stream": False,
}
BEDROCK_BODY: dict[str, Any] = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"text": f"I'm {EMAIL}"},
                {"image": {"format": "png", "source": {"bytes": IMAGE_B64}}},
                {"document": {"format": "txt", "name": "notes", "source": {"bytes": IMAGE_B64}}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"reasoningContent": {"reasoningText": {"text": KEEP, "signature": "c2ln"}}},
                {
                    "toolUse": {
                        "toolUseId": CALL_ID,
                        "name": "send_mail",
                        "input": {"to": EMAIL},
                    }
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "toolResult": {
                        "toolUseId": CALL_ID,
                        "content": [{"text": f"sent to {EMAIL}"}, {"json": {"recipient": EMAIL}}],
                        "status": "success",
                    }
                }
            ],
        },
    ],
    "system": [{"text": f"Escalate to {EMAIL}"}, {"cachePoint": {"type": "default"}}],
    "toolConfig": {
        "tools": [
            {
                "toolSpec": {
                    "name": "send_mail",
                    "description": KEEP,
                    "inputSchema": {"json": TOOL_SCHEMA},
                }
            }
        ]
    },
    "inferenceConfig": {"maxTokens": 100, "stopSequences": [KEEP]},
    "requestMetadata": {"team": "mail"},
}
EMBEDDINGS_BODY: dict[str, Any] = {"model": "embed", "input": [f"doc of {EMAIL}", "plain"]}

CLIENT_BODIES = [
    pytest.param("/v1/chat/completions", OPENAI_BODY, id="openai-chat"),
    pytest.param("/v1/responses", RESPONSES_BODY, id="openai-responses"),
    pytest.param("/v1/embeddings", EMBEDDINGS_BODY, id="openai-embeddings"),
    pytest.param("/v1/messages", ANTHROPIC_BODY, id="anthropic"),
    pytest.param("/v1beta/models/gem:generateContent", GEMINI_BODY, id="gemini"),
    pytest.param("/api/chat", OLLAMA_BODY, id="ollama-chat"),
    pytest.param("/api/generate", OLLAMA_GENERATE_BODY, id="ollama-generate"),
    pytest.param("/model/br/converse", BEDROCK_BODY, id="bedrock-converse"),
]


@pytest.mark.parametrize(("path", "body"), CLIENT_BODIES)
async def test_every_client_schema_has_its_prompt_redacted_and_nothing_else(
    path: str, body: dict[str, Any]
) -> None:
    flow = flow_for(path, body)
    redact_prompt(flow)
    sent = orjson.loads(flow.request_body)
    assert sent == replaced(body)
    # What must not be scanned is there as it was: media, tool schemas, ids, signed reasoning.
    raw = orjson.dumps(body)
    assert flow.request_body.count(KEEP.encode()) == raw.count(KEEP.encode())
    assert flow.request_body.count(IMAGE_B64.encode()) == raw.count(IMAGE_B64.encode())
    assert EMAIL.encode() not in flow.request_body
    assert flow.pii_counts["EMAIL_ADDRESS"] == raw.count(EMAIL.encode())
    assert flow.request_json == sent
    assert flow.pending.set_headers["content-length"] == str(len(flow.request_body))


@pytest.mark.parametrize(("path", "body"), CLIENT_BODIES)
async def test_the_redacted_prompt_is_what_the_provider_gets(
    path: str, body: dict[str, Any]
) -> None:
    flow = flow_for(path, body)
    verdict = await send(llm_pipeline(), flow)
    assert verdict is CONTINUE
    assert flow.llm is not None
    # Routing took the redacted body (renaming the model in it, where the body names it).
    assert EMAIL.encode() not in flow.request_body
    assert TAG.encode() in flow.request_body


async def test_responses_and_embeddings_plain_string_inputs() -> None:
    for path in ("/v1/responses", "/v1/embeddings"):
        flow = flow_for(path, {"model": "gpt", "input": f"mail {EMAIL}"})
        redact_prompt(flow)
        assert orjson.loads(flow.request_body)["input"] == f"mail {TAG}"
    tokens = {"model": "embed", "input": [[101, 2023, 2003], [7592]]}
    flow = flow_for("/v1/embeddings", tokens)
    redact_prompt(flow)
    assert not flow.pending and not flow.pii_counts


async def test_anthropic_and_ollama_plain_string_system_and_content() -> None:
    body = {
        "model": "claude",
        "max_tokens": 10,
        "system": f"Escalate to {EMAIL}",
        "messages": [{"role": "user", "content": f"I'm {EMAIL}"}],
    }
    flow = flow_for("/v1/messages", body)
    redact_prompt(flow)
    assert orjson.loads(flow.request_body) == replaced(body)


@pytest.mark.parametrize(
    ("text", "scanned"),
    [
        (f"data:text/plain,{EMAIL}", False),
        (f"data:image/png;base64,{IMAGE_B64}", False),
        (f"data:,{EMAIL}", False),
        (f"data: {EMAIL}", True),
        (f"data:{EMAIL} and more", True),
    ],
)
async def test_data_urls_are_not_scanned_but_text_that_starts_like_one_is(
    text: str, scanned: bool
) -> None:
    flow = flow_for("/v1/chat/completions", chat(text))
    redact_prompt(flow)
    if scanned:
        assert sent_text(flow) == text.replace(EMAIL, TAG)
    else:
        assert sent_text(flow) == text and not flow.pii_counts


async def test_openai_arguments_are_rewritten_only_when_they_change() -> None:
    spaced = '{\n  "city": "Boston, MA"\n}'
    body = {
        "model": "gpt",
        "messages": [
            {"role": "user", "content": f"I'm {EMAIL}"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "w", "arguments": spaced},
                    },
                    {
                        "id": "c2",
                        "type": "function",
                        "function": {"name": "m", "arguments": f'{{"to": "{EMAIL}"}}'},
                    },
                    {
                        "id": "c3",
                        "type": "function",
                        "function": {"name": "m", "arguments": f"not json {EMAIL}"},
                    },
                ],
            },
        ],
    }
    flow = flow_for("/v1/chat/completions", body)
    redact_prompt(flow)
    calls = orjson.loads(flow.request_body)["messages"][1]["tool_calls"]
    assert calls[0]["function"]["arguments"] == spaced
    assert calls[1]["function"]["arguments"] == f'{{"to":"{TAG}"}}'
    assert calls[2]["function"]["arguments"] == f"not json {TAG}"


# --- actions -------------------------------------------------------------------------------


def chat(text: str, model: str = "gpt", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def sent_text(flow: Flow) -> str:
    content: str = orjson.loads(flow.request_body)["messages"][0]["content"]
    return content


def digest(salt: bytes, value: str) -> str:
    return hashlib.sha256(salt + value.encode()).hexdigest()[:16]


async def test_mask_keeps_the_length() -> None:
    flow = flow_for("/v1/chat/completions", chat(f"I'm {EMAIL}."), tenant="maskco")
    redact_prompt(flow)
    assert sent_text(flow) == f"I'm {'*' * len(EMAIL)}."


async def test_hash_gives_one_tag_per_value_and_tenant() -> None:
    other = "john.roe@example.net"
    text = f"{EMAIL} wrote to {other}, then {EMAIL} again"
    tags = {}
    for tenant, salt in (("hashco", SALT), ("hashco2", OTHER_SALT)):
        flow = flow_for("/v1/chat/completions", chat(text), tenant=tenant)
        redact_prompt(flow)
        mine, theirs = digest(salt, EMAIL), digest(salt, other)
        assert sent_text(flow) == f"{mine} wrote to {theirs}, then {mine} again"
        tags[tenant] = mine
        assert flow.pii_counts == {"EMAIL_ADDRESS": 3}
    assert tags["hashco"] != tags["hashco2"]


async def test_several_types_are_counted() -> None:
    text = f"Mail {EMAIL}, call 415-555-0132, card {CARD}, ssn {SSN}, key {AWS_KEY}, {EMAIL}"
    flow = flow_for("/v1/chat/completions", chat(text))
    redact_prompt(flow)
    assert sent_text(flow) == (
        "Mail <EMAIL_ADDRESS>, call <PHONE_NUMBER>, card <CREDIT_CARD>, ssn <US_SSN>, "
        "key <AWS_ACCESS_KEY>, <EMAIL_ADDRESS>"
    )
    assert flow.pii_counts == {
        "EMAIL_ADDRESS": 2,
        "PHONE_NUMBER": 1,
        "CREDIT_CARD": 1,
        "US_SSN": 1,
        "AWS_ACCESS_KEY": 1,
    }


# --- block ---------------------------------------------------------------------------------

BLOCKED_REQUESTS = [
    pytest.param("/v1/chat/completions", OPENAI_CHAT, chat, id="openai"),
    pytest.param(
        "/v1/messages",
        ANTHROPIC_MESSAGES,
        lambda text: chat(text, "claude", max_tokens=10),
        id="anthropic",
    ),
    pytest.param(
        "/v1beta/models/gem:generateContent",
        GEMINI,
        lambda text: {"contents": [{"role": "user", "parts": [{"text": text}]}]},
        id="gemini",
    ),
    pytest.param("/api/chat", OLLAMA_CHAT, lambda text: chat(text, "llama"), id="ollama"),
    pytest.param(
        "/model/br/converse",
        BEDROCK_CONVERSE,
        lambda text: {"messages": [{"role": "user", "content": [{"text": text}]}]},
        id="bedrock",
    ),
]


@pytest.mark.parametrize(("path", "schema", "build"), BLOCKED_REQUESTS)
async def test_block_answers_400_in_the_clients_schema_naming_types_not_values(
    path: str, schema: WireSchema, build: Any
) -> None:
    flow = flow_for(path, build(f"ssn {SSN}, card {CARD}, mail {EMAIL}"), tenant="blockco")
    verdict = await send(llm_pipeline(), flow)
    assert isinstance(verdict, Respond)
    assert verdict.status == 400
    assert verdict.reason == "pii_blocked"
    api = flow.api
    assert isinstance(api, Endpoint) and api.schema is schema
    # The gateway's own error, rendered as this API renders its errors.
    assert verdict.error is not None
    rendered = api.error_response(verdict.error)
    assert (verdict.body, verdict.headers) == (rendered.body, rendered.headers)
    if schema is BEDROCK_CONVERSE:
        assert ("x-amzn-errortype", "ValidationException") in verdict.headers
    error = api.schema.decode_error(400, verdict.body, None)
    assert "CREDIT_CARD, US_SSN" in error.message
    for value in (CARD, SSN, EMAIL, "4111", "1234"):
        assert value.encode() not in verdict.body
    assert flow.llm is None  # refused before routing: no provider was chosen
    assert flow.pii_counts == {"CREDIT_CARD": 1, "US_SSN": 1, "EMAIL_ADDRESS": 1}


async def test_block_in_openais_format_has_its_code() -> None:
    flow = flow_for("/v1/chat/completions", chat(f"card {CARD}"), tenant="blockco")
    verdict = await send(llm_pipeline(), flow)
    assert isinstance(verdict, Respond)
    assert orjson.loads(verdict.body) == {
        "error": {
            "message": "the request was refused: it contains CREDIT_CARD, which this gateway "
            "does not forward",
            "type": "invalid_request_error",
            "param": None,
            "code": "pii_blocked",
        }
    }


async def test_block_in_tool_arguments_and_results() -> None:
    body = OPENAI_BODY | {
        "messages": [
            {"role": "tool", "tool_call_id": "c1", "content": arguments({"card": CARD})},
        ]
    }
    flow = flow_for("/v1/chat/completions", body, tenant="blockco")
    verdict = await send(llm_pipeline(), flow)
    assert isinstance(verdict, Respond) and verdict.status == 400


# --- what is not scanned, and what costs nothing -------------------------------------------


async def test_a_tenant_without_rules_is_not_even_parsed() -> None:
    raw = orjson.dumps(chat(f"I'm {EMAIL}"))
    flow = flow_for("/v1/chat/completions", raw, tenant="plain")
    redact_prompt(flow)
    assert flow.request_body is raw
    assert flow.request_json is None
    assert not flow.pending and not flow.pii_counts
    await send(llm_pipeline(), flow_for("/v1/chat/completions", raw, tenant="plain"))


async def test_a_tenant_that_skips_prompts_passes_them() -> None:
    raw = orjson.dumps(chat(f"I'm {EMAIL}"))
    flow = flow_for("/v1/chat/completions", raw, tenant="outonly")
    redact_prompt(flow)
    assert flow.request_body is raw and flow.request_json is None


async def test_a_prompt_without_entities_is_parsed_once_and_not_rewritten() -> None:
    raw = orjson.dumps(chat("What is the capital of France?"))
    flow = flow_for("/v1/chat/completions", raw)
    redact_prompt(flow)
    assert flow.request_body is raw
    assert not flow.pending and not flow.pii_counts
    parsed = flow.request_json
    assert parsed == orjson.loads(raw)
    # Model routing uses that parse rather than its own.
    assert ModelRouting().on_request_body(flow) is CONTINUE
    assert flow.request_json is parsed


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
async def test_bad_json_is_answered_as_model_routing_answers_it(raw: bytes) -> None:
    with_pii = await send(llm_pipeline(), flow_for("/v1/chat/completions", raw))
    without = await send(
        Pipeline([ModelRouting()]), flow_for("/v1/chat/completions", raw, tenant="plain")
    )
    assert isinstance(with_pii, Respond) and isinstance(without, Respond)
    assert (with_pii.status, with_pii.body) == (without.status, without.body)


async def test_a_fallback_re_run_does_not_scan_again() -> None:
    flow = flow_for("/v1/chat/completions", chat(f"I'm {EMAIL}"))
    assert await send(llm_pipeline(), flow) is CONTINUE
    body = flow.request_body
    redact_prompt(flow)  # the body phase once more, as `fallback.fail_over` has it run
    assert flow.request_body is body
    assert flow.pii_counts == {"EMAIL_ADDRESS": 1}


async def test_deep_nesting_is_walked() -> None:
    nested: Any = f"mail {EMAIL}"
    for _ in range(120):  # as deep as orjson writes back
        nested = {"x": [nested]}
    body = chat("hi") | {
        "messages": [{"role": "tool", "tool_call_id": "c", "content": "ok", "input": nested}]
    }
    flow = flow_for("/v1/chat/completions", body)
    redact_prompt(flow)
    assert flow.pii_counts == {"EMAIL_ADDRESS": 1}
    assert flow.request_body == orjson.dumps(replaced(body))


def test_no_string_shorter_than_min_entity_chars_holds_an_entity() -> None:
    scanner = PiiScanner(SUPPORTED_ENTITIES, min_score=0.0)
    assert MIN_ENTITY_CHARS == 2
    for char in string.printable + "\uff10\uff11\uff20":  # fullwidth 0, 1 and @
        assert scanner.scan(char) == [], repr(char)
    assert scanner.scan("::") != []  # the shortest there is


# --- answers: the pipeline's response side -------------------------------------------------

TEXT = (
    "Here is what I found after looking through the directory entries you asked about, "
    "in the order they were listed there. "
    f"Write to {EMAIL} or call 415-555-0132 today, and bring the receipt."
)
REDACTED_TEXT = TEXT.replace(EMAIL, TAG).replace("415-555-0132", "<PHONE_NUMBER>")
ARGS = arguments({"to": EMAIL, "subject": "hello"})
REDACTED_ARGS = arguments({"to": TAG, "subject": "hello"})


def openai_completion(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1741569952,
            "model": "gpt-4o-mini-2024-07-18",
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "tool_calls": [
                            {
                                "id": "call_1",
                                "type": "function",
                                "function": {"name": "send_mail", "arguments": ARGS},
                            }
                        ],
                    },
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
        }
    )


def anthropic_message(text: str) -> bytes:
    return orjson.dumps(
        {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-sonnet-4-5",
            "content": [
                {"type": "text", "text": text},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "send_mail",
                    "input": orjson.loads(ARGS),
                },
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 9, "output_tokens": 12},
        }
    )


def sse(payload: dict[str, Any], name: str | None = None) -> bytes:
    head = f"event: {name}\n".encode() if name else b""
    return head + b"data: " + orjson.dumps(payload) + b"\n\n"


def openai_stream(deltas: Sequence[str], tool_deltas: Sequence[str] = ()) -> list[bytes]:
    """OpenAI's events, one network chunk each, with the usage the gateway asked for."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse({**head, "choices": [choice], "usage": None})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": d}) for d in deltas]
    if tool_deltas:
        call = {"index": 0, "id": "call_1", "type": "function"}
        events.append(
            chunk({"tool_calls": [call | {"function": {"name": "send_mail", "arguments": ""}}]})
        )
        events += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": d}}]}) for d in tool_deltas
        ]
    events.append(chunk({}, "tool_calls" if tool_deltas else "stop"))
    usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
    events.append(sse({**head, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def anthropic_stream(deltas: Sequence[str], tool_deltas: Sequence[str] = ()) -> list[bytes]:
    message: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 9, "output_tokens": 1},
    }
    events = [sse({"type": "message_start", "message": message}, "message_start")]
    start = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    events.append(sse(start, "content_block_start"))
    for d in deltas:
        delta = {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": d},
        }
        events.append(sse(delta, "content_block_delta"))
    events.append(sse({"type": "content_block_stop", "index": 0}, "content_block_stop"))
    if tool_deltas:
        block = {"type": "tool_use", "id": "toolu_1", "name": "send_mail", "input": {}}
        start = {"type": "content_block_start", "index": 1, "content_block": block}
        events.append(sse(start, "content_block_start"))
        for d in tool_deltas:
            delta = {
                "type": "content_block_delta",
                "index": 1,
                "delta": {"type": "input_json_delta", "partial_json": d},
            }
            events.append(sse(delta, "content_block_delta"))
        events.append(sse({"type": "content_block_stop", "index": 1}, "content_block_stop"))
    reason = "tool_use" if tool_deltas else "end_turn"
    end = {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": None},
        "usage": {"output_tokens": 12},
    }
    events.append(sse(end, "message_delta"))
    events.append(sse({"type": "message_stop"}, "message_stop"))
    return events


# (client path, model alias, the provider's schema): same schema and translated pairs.
PAIRS = [
    pytest.param("/v1/chat/completions", "gpt", OPENAI_CHAT, id="openai-openai"),
    pytest.param("/v1/messages", "claude", ANTHROPIC_MESSAGES, id="anthropic-anthropic"),
    pytest.param("/v1/chat/completions", "claude", ANTHROPIC_MESSAGES, id="openai-anthropic"),
    pytest.param("/v1/messages", "gpt", OPENAI_CHAT, id="anthropic-openai"),
]


def question(path: str, model: str, *, stream: bool, **extra: Any) -> dict[str, Any]:
    body = chat("Whom do I write to?", model, stream=stream, **extra)
    if path == "/v1/messages":
        body["max_tokens"] = 100
    return body


async def ask(
    path: str, model: str, tenant: str = "acme", *, stream: bool, **extra: Any
) -> tuple[Pipeline, Flow]:
    pipeline = llm_pipeline()
    flow = flow_for(path, question(path, model, stream=stream, **extra), tenant=tenant)
    assert await send(pipeline, flow) is CONTINUE
    flow.take_pending()
    return pipeline, flow


async def answer(
    pipeline: Pipeline, flow: Flow, chunks: list[bytes], content_type: str, status: int = 200
) -> tuple[bytes, list[str]]:
    """The provider's answer through the response phases; (what the client gets, the headers
    removed)."""
    flow.upstream_reached = True
    flow.response_status = status
    flow.response_headers = {"content-type": content_type, "content-length": "1234"}
    assert await pipeline.response_headers(flow) is CONTINUE
    removed = flow.take_pending().remove_headers
    out = []
    for position, chunk in enumerate(chunks):
        flow.response_chunk = chunk
        flow.end_of_stream = position == len(chunks) - 1
        assert await pipeline.response_body(flow) is CONTINUE
        pending = flow.take_pending()
        out.append(chunk if pending.body is None else pending.body)
    pipeline.done_now(flow)
    return b"".join(out), removed


def provider_stream(
    schema: WireSchema, deltas: Sequence[str], tools: Sequence[str] = ()
) -> list[bytes]:
    if schema is OPENAI_CHAT:
        return openai_stream(deltas, tools)
    return anthropic_stream(deltas, tools)


def client_view(client: WireSchema, received: bytes) -> tuple[str, str]:
    """The text and tool-call arguments a client of `client`'s schema reads from its stream."""
    decoder = client.stream_decoder(model="")
    events = decoder.feed(received) + decoder.finish()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    args = "".join(e.partial_json for e in events if isinstance(e, ToolCallDelta))
    return text, args


def schema_of(path: str) -> WireSchema:
    return OPENAI_CHAT if path == "/v1/chat/completions" else ANTHROPIC_MESSAGES


@pytest.mark.parametrize(("path", "model", "provider"), PAIRS)
async def test_whole_answer_is_redacted(path: str, model: str, provider: WireSchema) -> None:
    pipeline, flow = await ask(path, model, stream=False)
    assert flow.llm is not None and flow.llm.reencode and flow.llm.rewrites
    body = openai_completion(TEXT) if provider is OPENAI_CHAT else anthropic_message(TEXT)
    received, removed = await answer(pipeline, flow, [body], "application/json")
    assert "content-length" in removed
    response = schema_of(path).decode_response(received, model="")
    assert response.content == (
        Text(REDACTED_TEXT),
        ToolCall(response.content[1].id, "send_mail", REDACTED_ARGS),  # type: ignore[union-attr]
    )
    assert EMAIL.encode() not in received and b"415-555-0132" not in received
    assert flow.pii_counts == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
    assert flow.llm.response is not None and flow.llm.response.usage is not None


async def test_whole_answer_without_entities_is_kept() -> None:
    pipeline, flow = await ask("/v1/chat/completions", "gpt", stream=False)
    await answer(pipeline, flow, [openai_completion("Paris.")], "application/json")
    assert flow.llm is not None and isinstance(flow.llm.response, ChatResponse)
    assert flow.llm.response.content[0] == Text("Paris.")
    assert flow.pii_counts == {"EMAIL_ADDRESS": 1}  # in the tool call's arguments


def splits(text: str) -> list[list[str]]:
    return [[text[:i], text[i:]] for i in range(1, len(text))]


@pytest.mark.parametrize(("path", "model", "provider"), PAIRS)
async def test_streamed_answer_split_at_every_position(
    path: str, model: str, provider: WireSchema
) -> None:
    client = schema_of(path)
    for deltas in [*splits(TEXT), list(TEXT)]:
        pipeline, flow = await ask(path, model, stream=True)
        received, removed = await answer(
            pipeline, flow, provider_stream(provider, deltas), "text/event-stream"
        )
        where = f"split {[len(d) for d in deltas][:3]}"
        assert EMAIL.encode() not in received, where
        assert b"415-555-0132" not in received, where
        assert client_view(client, received)[0] == REDACTED_TEXT, where
        assert flow.pii_counts == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}, where
        assert "content-length" in removed


@pytest.mark.parametrize(("path", "model", "provider"), PAIRS)
async def test_streamed_tool_arguments_are_redacted_as_json(
    path: str, model: str, provider: WireSchema
) -> None:
    client = schema_of(path)
    for cut in range(1, len(ARGS)):
        pipeline, flow = await ask(path, model, stream=True)
        chunks = provider_stream(provider, ["Sending it."], [ARGS[:cut], ARGS[cut:]])
        received, _ = await answer(pipeline, flow, chunks, "text/event-stream")
        text, args = client_view(client, received)
        assert text == "Sending it."
        assert args == REDACTED_ARGS, f"cut at {cut}"
        assert EMAIL.encode() not in received


async def test_the_window_is_held_back_and_released_in_order() -> None:
    pipeline, flow = await ask("/v1/chat/completions", "gpt", stream=True)
    flow.upstream_reached, flow.response_status = True, 200
    flow.response_headers = {"content-type": "text/event-stream"}
    await pipeline.response_headers(flow)
    deltas = ["a" * 100, "b" * 100, "c" * 100]
    texts = []
    for chunk in openai_stream(deltas):
        flow.response_chunk, flow.end_of_stream = chunk, chunk == b"data: [DONE]\n\n"
        await pipeline.response_body(flow)
        body = flow.take_pending().body
        texts.append(client_view(OPENAI_CHAT, body or b"")[0])
    # Nothing of a delta within the window of the newest text goes out with it.
    assert texts[1:4] == ["", "a" * 72, "a" * 28 + "b" * 72]
    assert "".join(texts) == "".join(deltas)
    assert STREAM_WINDOW_CHARS == 128


@pytest.mark.parametrize("client_wants_usage", [False, True])
async def test_a_rewritten_openai_stream_keeps_usage_as_the_client_asked(
    client_wants_usage: bool,
) -> None:
    extra: dict[str, Any] = (
        {"stream_options": {"include_usage": True}} if client_wants_usage else {}
    )
    pipeline, flow = await ask("/v1/chat/completions", "gpt", stream=True, **extra)
    received, _ = await answer(pipeline, flow, openai_stream([TEXT]), "text/event-stream")
    assert (b'"usage":{' in received) is client_wants_usage
    assert received.endswith(b"data: [DONE]\n\n")


async def test_block_on_output_acts_as_replace() -> None:
    pipeline, flow = await ask("/v1/chat/completions", "gpt", tenant="blockco", stream=True)
    text = f"Your card {CARD} and ssn {SSN} are on file."
    received, _ = await answer(
        pipeline, flow, openai_stream([text[:14], text[14:]]), "text/event-stream"
    )
    assert client_view(OPENAI_CHAT, received)[0] == (
        "Your card <CREDIT_CARD> and ssn <US_SSN> are on file."
    )
    assert flow.pii_counts == {"CREDIT_CARD": 1, "US_SSN": 1}
    pipeline, flow = await ask("/v1/chat/completions", "gpt", tenant="blockco", stream=False)
    received, _ = await answer(pipeline, flow, [openai_completion(text)], "application/json")
    assert orjson.loads(received)["choices"][0]["message"]["content"] == (
        "Your card <CREDIT_CARD> and ssn <US_SSN> are on file."
    )


async def test_output_is_passed_when_the_tenant_does_not_scan_it() -> None:
    for tenant in ("plain", "maskco"):
        pipeline, flow = await ask("/v1/chat/completions", "gpt", tenant=tenant, stream=False)
        assert flow.llm is not None and not flow.llm.reencode
        body = openai_completion(TEXT)
        received, _ = await answer(pipeline, flow, [body], "application/json")
        assert received == body


async def test_an_error_answer_of_a_same_schema_call_passes_untouched() -> None:
    pipeline, flow = await ask("/v1/chat/completions", "gpt", stream=False)
    flow.upstream_reached, flow.response_status = True, 429
    flow.response_headers = {"content-type": "application/json", "content-length": "99"}
    assert await pipeline.response_headers(flow) is CONTINUE
    assert not flow.take_pending()
    assert flow.response_body_mode.value == "none"


async def test_several_choices_are_refused_before_the_call() -> None:
    pipeline = llm_pipeline()
    flow = flow_for("/v1/chat/completions", chat("hi", n=2))
    verdict = await send(pipeline, flow)
    assert isinstance(verdict, Respond) and verdict.status == 400
    assert b"'n'" in verdict.body


async def test_passthrough_apis_are_not_rewritten() -> None:
    pipeline = llm_pipeline()
    flow = flow_for("/v1/responses", {"model": "gpt", "input": "hi"})
    assert await send(pipeline, flow) is CONTINUE
    assert flow.llm is not None and not flow.llm.reencode and flow.llm.redaction is None


async def test_prompt_and_answer_counts_add_up() -> None:
    pipeline = llm_pipeline()
    flow = flow_for("/v1/chat/completions", chat(f"I'm {EMAIL}", stream=True))
    assert await send(pipeline, flow) is CONTINUE
    await answer(pipeline, flow, openai_stream([TEXT]), "text/event-stream")
    assert flow.pii_counts == {"EMAIL_ADDRESS": 2, "PHONE_NUMBER": 1}
