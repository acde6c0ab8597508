"""ControlService: agent policies. Set creates or replaces by id, each change a new policy
version; every rule of the policy compiler refuses a faulty one with INVALID_ARGUMENT naming the
fault; revoking an API key takes it out of the policies that named it."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf.message import Message

from gatez.v1 import control_pb2 as api_pb
from gatez.v1 import policy_pb2
from tests.control.support import AUTH, Api, rpc_error
from tests.control.test_admin import create_tenant, current_snapshot, policy_version

ALLOW = policy_pb2.TOOL_ACTION_ALLOW
DENY = policy_pb2.TOOL_ACTION_DENY
APPROVAL = policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL


def agent_policy(policy_id: str = "default", tenant_id: str = "acme", **fields: Any) -> Any:
    return policy_pb2.AgentPolicy(id=policy_id, tenant_id=tenant_id, **fields)


def rule(tool: str, action: policy_pb2.ToolAction = ALLOW, **fields: Any) -> Any:
    return policy_pb2.ToolRule(tool=tool, action=action, **fields)


async def set_policy(api: Api, policy: policy_pb2.AgentPolicy) -> Any:
    return await api.control.SetAgentPolicy(
        api_pb.SetAgentPolicyRequest(agent_policy=policy), metadata=AUTH
    )


async def list_policies(api: Api, tenant_id: str = "acme") -> list[Any]:
    listed = await api.control.ListAgentPolicies(
        api_pb.ListAgentPoliciesRequest(tenant_id=tenant_id), metadata=AUTH
    )
    return list(listed.agent_policies)


async def create_key(api: Api, tenant_id: str = "acme") -> str:
    created = await api.control.CreateApiKey(
        api_pb.CreateApiKeyRequest(tenant_id=tenant_id), metadata=AUTH
    )
    key_id: str = created.api_key.id
    return key_id


async def test_set_creates_then_replaces_by_id_list_sorts_delete_removes(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    key = await create_key(api)
    before = await policy_version(api)
    everyone = agent_policy(
        tools=[
            rule("delete_*", DENY),
            rule(
                "merge_pr",
                APPROVAL,
                server="github",
                approve_when=[policy_pb2.ArgumentMatch(argument="base", pattern="main|release/.*")],
            ),
            rule(
                "search_*",
                arguments={
                    "query": policy_pb2.ArgumentConstraint(max_length=200, required=True),
                },
            ),
        ],
        prompts=["summarise"],
        resources=["file:///srv/docs/"],
        limits=policy_pb2.AgentLimits(calls_per_session=50),
        allowed_hosts=["api.github.com"],
        allowed_path_roots=["/srv/work"],
        approval_timeout_s=600,
    )

    created = await set_policy(api, everyone)
    assert created.policy_version == before + 1
    assert created.agent_policy == everyone
    ci = await set_policy(api, agent_policy("ci", api_key_ids=[key], tools=[rule("*")]))
    assert ci.policy_version == before + 2
    await set_policy(api, agent_policy("ops", groups=["ops"]))
    await set_policy(api, agent_policy("globex-default", "globex"))
    listed = await list_policies(api)
    assert [p.id for p in listed] == ["ci", "default", "ops"]
    assert listed[1] == everyone

    replaced = await set_policy(api, agent_policy(tools=[rule("read_*")]))
    assert replaced.policy_version == before + 5
    listed = await list_policies(api)
    assert [p.id for p in listed] == ["ci", "default", "ops"]
    assert listed[1] == agent_policy(tools=[rule("read_*")])

    deleted = await api.control.DeleteAgentPolicy(
        api_pb.DeleteAgentPolicyRequest(id="ops"), metadata=AUTH
    )
    assert deleted.policy_version == before + 6
    assert [p.id for p in await list_policies(api)] == ["ci", "default"]
    snapshot = await current_snapshot(api)
    assert sorted((p.tenant_id, p.id) for p in snapshot.agent_policies) == [
        ("acme", "ci"),
        ("acme", "default"),
        ("globex", "globex-default"),
    ]


async def test_an_empty_id_draws_one(api: Api) -> None:
    await create_tenant(api, "acme")
    created = await set_policy(api, agent_policy(""))
    assert created.agent_policy.id.startswith("agent-")
    assert [p.id for p in await list_policies(api)] == [created.agent_policy.id]


async def test_revoking_a_key_takes_it_out_of_the_policies_that_named_it(api: Api) -> None:
    await create_tenant(api, "acme")
    shared, kept, alone, grouped = [await create_key(api) for _ in range(4)]
    await set_policy(api, agent_policy("both", api_key_ids=[shared, kept]))
    await set_policy(api, agent_policy("alone", api_key_ids=[alone]))
    await set_policy(api, agent_policy("grouped", api_key_ids=[grouped], groups=["ops"]))
    await set_policy(api, agent_policy("everyone"))
    before = await policy_version(api)

    for key in (shared, alone, grouped):
        await api.control.RevokeApiKey(api_pb.RevokeApiKeyRequest(api_key_id=key), metadata=AUTH)

    assert await policy_version(api) == before + 3
    policies = {p.id: (list(p.api_key_ids), list(p.groups)) for p in await list_policies(api)}
    # "alone" would otherwise have become a second policy for everyone: it goes with its key.
    assert policies == {
        "both": ([kept], []),
        "everyone": ([], []),
        "grouped": ([], ["ops"]),
    }


REFUSED: list[tuple[str, Message, grpc.StatusCode, str]] = [
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "agent_policy is required",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy(tenant_id="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "agent_policy.tenant_id is required",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy("Bad Id")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "agent_policy.id 'Bad Id' is not valid",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy(tenant_id="nope")),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy("existing", "globex")),
        grpc.StatusCode.ALREADY_EXISTS,
        "agent policy 'existing' already exists for another tenant",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy(api_key_ids=["key-nope"])),
        grpc.StatusCode.INVALID_ARGUMENT,
        "api key 'key-nope' is not one of the tenant's",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(agent_policy=agent_policy()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant 'acme' has two policies for everyone",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy("slow", groups=["ops"], approval_timeout_s=901)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "approval_timeout_s may be at most 900",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy("star", groups=["ops"], tools=[rule("*_repo")])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0]: '*' may only end a tool name",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy("empty", groups=["ops"], tools=[rule("")])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0]: tool is required ('*' for every tool)",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy(
                "when",
                groups=["ops"],
                tools=[
                    rule("x"),
                    rule("y", approve_when=[policy_pb2.ArgumentMatch(argument="a", pattern=".*")]),
                ],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[1]: approve_when needs action TOOL_ACTION_REQUIRE_APPROVAL",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy(
                "noaction", groups=["ops"], tools=[rule("x", policy_pb2.TOOL_ACTION_UNSPECIFIED)]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tools[0]: action is required",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy(
                "zero", groups=["ops"], limits=policy_pb2.AgentLimits(calls_per_session=0)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limits.calls_per_session must be greater than 0",
    ),
    (
        "SetAgentPolicy",
        api_pb.SetAgentPolicyRequest(
            agent_policy=agent_policy(
                "zero", groups=["ops"], limits=policy_pb2.AgentLimits(max_result_bytes=0)
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "limits.max_result_bytes must be greater than 0",
    ),
    (
        "ListAgentPolicies",
        api_pb.ListAgentPoliciesRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "tenant_id is required",
    ),
    (
        "ListAgentPolicies",
        api_pb.ListAgentPoliciesRequest(tenant_id="nope"),
        grpc.StatusCode.NOT_FOUND,
        "tenant 'nope' not found",
    ),
    (
        "DeleteAgentPolicy",
        api_pb.DeleteAgentPolicyRequest(id="nope"),
        grpc.StatusCode.NOT_FOUND,
        "agent policy 'nope' not found",
    ),
    (
        "DeleteAgentPolicy",
        api_pb.DeleteAgentPolicyRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "id is required",
    ),
]


@pytest.mark.parametrize(
    ("method", "request_message", "code", "words"),
    REFUSED,
    ids=[f"{case[0]}-{index}" for index, case in enumerate(REFUSED)],
)
async def test_refused_changes_name_the_fault_and_save_nothing(
    api: Api, method: str, request_message: Message, code: grpc.StatusCode, words: str
) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    await set_policy(api, agent_policy("existing", "acme"))
    before = await policy_version(api)

    error = await rpc_error(getattr(api.control, method)(request_message, metadata=AUTH))

    assert error.code() == code, error.details()
    assert words in (error.details() or ""), error.details()
    assert await policy_version(api) == before


async def test_a_key_of_another_tenant_is_refused(api: Api) -> None:
    await create_tenant(api, "acme")
    await create_tenant(api, "globex")
    foreign = await create_key(api, "globex")
    error = await rpc_error(set_policy(api, agent_policy(api_key_ids=[foreign])))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"api key '{foreign}' is not one of the tenant's" in (error.details() or "")
