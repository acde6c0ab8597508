"""The agent part of compile_policy: MCP servers become routable targets with their credential
header, agent policies become deny-by-default rules picked per caller; every fault rejects the
whole snapshot with an InvalidPolicy naming it."""

from __future__ import annotations

from typing import Any

import pytest

from gatez import keys
from gatez.agent_policy import (
    DEFAULT_APPROVAL_TIMEOUT_S,
    DEFAULT_CALLS_PER_SESSION,
    DEFAULT_CONCURRENT_PER_SESSION,
    DEFAULT_CONCURRENT_PER_TENANT,
    DEFAULT_MAX_ARGUMENT_BYTES,
    DEFAULT_MAX_RESULT_BYTES,
    NO_AGENT_POLICIES,
    AgentLimits,
    AgentRules,
    ResultScan,
    ToolAction,
    mcp_credential_name,
)
from gatez.errors import InvalidPolicy
from gatez.policy import (
    UPSTREAM_CLUSTER_PLAIN,
    UPSTREAM_CLUSTER_TLS,
    CompiledPolicy,
    RouteKind,
    compile_policy,
)
from gatez.secrets import SecretBox
from gatez.v1 import policy_pb2

ALLOW = policy_pb2.TOOL_ACTION_ALLOW
DENY = policy_pb2.TOOL_ACTION_DENY
APPROVAL = policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL


def rule(
    tool: str, action: policy_pb2.ToolAction = ALLOW, server: str = "", **fields: Any
) -> policy_pb2.ToolRule:
    return policy_pb2.ToolRule(server=server, tool=tool, action=action, **fields)


def snapshot(
    *,
    servers: list[policy_pb2.McpServer] | None = None,
    credentials: dict[str, str] | None = None,
    policies: list[policy_pb2.AgentPolicy] | None = None,
) -> policy_pb2.PolicySnapshot:
    """Two tenants with a key each (acme has two); credentials given in clear, by name."""
    return policy_pb2.PolicySnapshot(
        version=1,
        tenants=[policy_pb2.Tenant(id="acme"), policy_pb2.Tenant(id="globex")],
        api_keys=[
            policy_pb2.ApiKey(id="key-a1", tenant_id="acme", secret_sha256=keys.digest("gz-a1")),
            policy_pb2.ApiKey(id="key-a2", tenant_id="acme", secret_sha256=keys.digest("gz-a2")),
            policy_pb2.ApiKey(id="key-g1", tenant_id="globex", secret_sha256=keys.digest("gz-g")),
        ],
        mcp_servers=servers or [],
        mcp_server_credentials=[
            policy_pb2.ProviderCredential(provider=name, api_key=secret)
            for name, secret in (credentials or {}).items()
        ],
        agent_policies=policies or [],
    )


def server(name: str = "github", url: str = "https://mcp.example.com/mcp", **fields: Any) -> Any:
    return policy_pb2.McpServer(
        tenant_id=fields.pop("tenant_id", "acme"), name=name, url=url, **fields
    )


def agent(policy_id: str = "default", **fields: Any) -> policy_pb2.AgentPolicy:
    return policy_pb2.AgentPolicy(id=policy_id, tenant_id=fields.pop("tenant_id", "acme"), **fields)


def rules_of(*tools: policy_pb2.ToolRule, **fields: Any) -> AgentRules:
    compiled = compile_policy(snapshot(policies=[agent(tools=list(tools), **fields)]))
    rules = compiled.agent_policies_of("acme").default
    assert rules is not None
    return rules


def refused(message: str, **parts: Any) -> None:
    with pytest.raises(InvalidPolicy) as caught:
        compile_policy(snapshot(**parts))
    assert message in caught.value.public_message, caught.value.public_message


# MCP servers


@pytest.mark.parametrize(
    ("url", "cluster", "authority", "path"),
    [
        ("https://mcp.example.com/mcp", UPSTREAM_CLUSTER_TLS, "mcp.example.com", "/mcp"),
        ("https://mcp.example.com:443/mcp", UPSTREAM_CLUSTER_TLS, "mcp.example.com", "/mcp"),
        (
            "https://mcp.example.com:8443/v1/mcp",
            UPSTREAM_CLUSTER_TLS,
            "mcp.example.com:8443",
            "/v1/mcp",
        ),
        ("http://tools.internal:8000/mcp", UPSTREAM_CLUSTER_PLAIN, "tools.internal:8000", "/mcp"),
        ("http://tools.internal:80/mcp", UPSTREAM_CLUSTER_PLAIN, "tools.internal", "/mcp"),
        ("http://127.0.0.1:9000", UPSTREAM_CLUSTER_PLAIN, "127.0.0.1:9000", "/"),
        ("http://[::1]:9000/mcp", UPSTREAM_CLUSTER_PLAIN, "[::1]:9000", "/mcp"),
        # The endpoint as registered: a server mounted at "/mcp/" redirects "/mcp".
        ("https://mcp.example.com/mcp/", UPSTREAM_CLUSTER_TLS, "mcp.example.com", "/mcp/"),
    ],
)
def test_an_mcp_server_compiles_to_its_cluster_authority_and_path(
    url: str, cluster: str, authority: str, path: str
) -> None:
    compiled = compile_policy(snapshot(servers=[server(url=url)]))
    target = compiled.mcp_servers[("acme", "github")]
    assert (target.cluster, target.authority, target.path) == (cluster, authority, path)
    assert (target.tenant_id, target.name) == ("acme", "github")
    assert (target.credential_header, target.credential_value) == ("authorization", None)


@pytest.mark.parametrize(
    ("header", "sent_as", "value"),
    [
        ("", "authorization", "Bearer ghp_secret"),
        ("Authorization", "authorization", "Bearer ghp_secret"),
        ("x-api-key", "x-api-key", "ghp_secret"),
        ("X-API-Key", "x-api-key", "ghp_secret"),
    ],
)
def test_the_credential_goes_in_its_header_bearer_only_for_authorization(
    header: str, sent_as: str, value: str
) -> None:
    compiled = compile_policy(
        snapshot(
            servers=[server(credential_header=header)],
            credentials={mcp_credential_name("acme", "github"): "ghp_secret"},
        )
    )
    target = compiled.mcp_servers[("acme", "github")]
    assert (target.credential_header, target.credential_value) == (sent_as, value)


def test_a_sealed_credential_opens_only_under_its_servers_name() -> None:
    box = SecretBox.generate()
    sealed = box.seal(mcp_credential_name("acme", "github"), "ghp_secret")
    parts = snapshot(servers=[server(), server("jira")])
    parts.mcp_server_credentials.append(sealed)
    target = compile_policy(parts, box).mcp_servers[("acme", "github")]
    assert target.credential_value == "Bearer ghp_secret"

    moved = policy_pb2.ProviderCredential()
    moved.CopyFrom(sealed)
    moved.provider = mcp_credential_name("acme", "jira")
    del parts.mcp_server_credentials[:]
    parts.mcp_server_credentials.append(moved)
    with pytest.raises(InvalidPolicy, match="sealed for another provider"):
        compile_policy(parts, box)


def test_the_same_server_name_in_two_tenants_is_two_servers() -> None:
    compiled = compile_policy(
        snapshot(
            servers=[server(), server(tenant_id="globex", url="http://other:1/mcp")],
            credentials={mcp_credential_name("globex", "github"): "g"},
        )
    )
    assert compiled.mcp_servers[("acme", "github")].credential_value is None
    assert compiled.mcp_servers[("globex", "github")].credential_value == "Bearer g"


def test_the_mcp_routes_are_built_in() -> None:
    routes = compile_policy(snapshot()).routes
    for path in ("/mcp/acme/github", "/.well-known/oauth-protected-resource/mcp/acme/github"):
        route = routes.match(path)
        assert route is not None and route.kind is RouteKind.MCP, path


@pytest.mark.parametrize(
    ("parts", "message"),
    [
        ({"servers": [server(tenant_id="nope")]}, "unknown tenant"),
        ({"servers": [server("GitHub")]}, "name is not valid"),
        ({"servers": [server("-x")]}, "name is not valid"),
        ({"servers": [server(), server()]}, "appears twice"),
        ({"servers": [server(url="ftp://mcp.example.com/mcp")]}, "must be a URL"),
        ({"servers": [server(url="mcp.example.com/mcp")]}, "must be a URL"),
        ({"servers": [server(url="https://mcp.example.com/mcp?x=1")]}, "must not carry ?query"),
        (
            {"servers": [server(url="https://u:p@mcp.example.com/mcp")]},
            "must not carry credentials",
        ),
        ({"servers": [server(url="https://mcp.example.com/a b")]}, "may not hold spaces"),
        ({"servers": [server(credential_header="mcp-session-id")]}, "credential_header"),
        ({"servers": [server(credential_header="host")]}, "credential_header"),
        ({"servers": [server(credential_header="connection")]}, "credential_header"),
        ({"servers": [server(credential_header="x-gatez-tenant")]}, "credential_header"),
        ({"servers": [server(credential_header="bad header")]}, "credential_header"),
        (
            {"servers": [server()], "credentials": {"mcp:acme/jira": "x"}},
            "credentials for unknown MCP servers: 'mcp:acme/jira'",
        ),
        (
            {"servers": [server()], "credentials": {"mcp:globex/github": "x"}},
            "credentials for unknown MCP servers",
        ),
        ({"servers": [server()], "credentials": {"github": "x"}}, "is not named mcp:"),
        (
            {"servers": [server()], "credentials": {"mcp:acme/github": "tok\nen"}},
            "printable ASCII",
        ),
    ],
)
def test_a_faulty_mcp_server_refuses_the_snapshot(parts: dict[str, Any], message: str) -> None:
    refused(message, **parts)


def test_a_refused_credential_is_never_quoted() -> None:
    with pytest.raises(InvalidPolicy) as caught:
        compile_policy(
            snapshot(servers=[server()], credentials={"mcp:acme/github": "sëcret-value"})
        )
    assert "sëcret" not in caught.value.public_message


# Agent policies: rules


def test_no_rule_matching_denies() -> None:
    rules = rules_of()
    assert rules.rule_for("github", "create_issue") is None
    assert not rules.allows_tool("github", "create_issue")
    assert not rules.allows_prompt("summarise")
    assert not rules.allows_resource("file:///etc/passwd")


def test_a_rule_matches_a_name_a_prefix_or_every_tool() -> None:
    rules = rules_of(rule("get_issue"), rule("list_*"), rule("*", server="jira"))
    assert rules.allows_tool("github", "get_issue")
    assert not rules.allows_tool("github", "get_issues")
    assert not rules.allows_tool("github", "get")
    assert rules.allows_tool("github", "list_")
    assert rules.allows_tool("github", "list_repos")
    assert not rules.allows_tool("github", "xlist_repos")
    assert rules.allows_tool("jira", "anything")
    assert not rules.allows_tool("github", "anything")


@pytest.mark.parametrize("any_server", ["", "*"])
def test_an_empty_or_star_server_matches_every_server(any_server: str) -> None:
    rules = rules_of(rule("search", server=any_server))
    assert rules.allows_tool("github", "search") and rules.allows_tool("jira", "search")


def test_the_first_matching_rule_decides() -> None:
    rules = rules_of(
        rule("delete_*", DENY),
        rule("merge_pr", APPROVAL, server="github"),
        rule("*"),
        rule("merge_pr", DENY),
    )
    delete = rules.rule_for("github", "delete_repo")
    assert delete is not None and delete.action is ToolAction.DENY
    assert not rules.allows_tool("github", "delete_repo")
    merge = rules.rule_for("github", "merge_pr")
    assert merge is not None and merge.action is ToolAction.REQUIRE_APPROVAL
    # Held calls are listed: the client may call them and wait.
    assert rules.allows_tool("github", "merge_pr")
    other = rules.rule_for("jira", "merge_pr")
    assert other is not None and other.action is ToolAction.ALLOW
    assert [r.describe() for r in rules.tools] == [
        "deny */delete_*",
        "require_approval github/merge_pr",
        "allow */*",
        "deny */merge_pr",
    ]


def test_approve_when_compiles_its_patterns() -> None:
    rules = rules_of(
        rule(
            "transfer",
            APPROVAL,
            approve_when=[policy_pb2.ArgumentMatch(argument="amount", pattern="[0-9]{4,}")],
        )
    )
    [(argument, pattern)] = rules.tools[0].approve_when
    assert argument == "amount"
    assert pattern.fullmatch("12000") and not pattern.fullmatch("120")


def test_prompts_and_resources_are_allowed_by_name_prefix_or_star() -> None:
    rules = rules_of(prompts=["summarise"], resources=["file:///srv/docs/", "db://"])
    assert rules.allows_prompt("summarise") and not rules.allows_prompt("summarise2")
    assert rules.allows_resource("file:///srv/docs/a.md")
    assert rules.allows_resource("db://orders")
    assert not rules.allows_resource("file:///etc/passwd")
    everything = rules_of(prompts=["*"], resources=["*"])
    assert everything.allows_prompt("anything")
    assert everything.allows_resource("file:///etc/passwd")


def test_unset_limits_and_settings_take_their_defaults() -> None:
    rules = rules_of()
    assert rules.limits == AgentLimits(
        calls_per_session=DEFAULT_CALLS_PER_SESSION,
        concurrent_per_session=DEFAULT_CONCURRENT_PER_SESSION,
        concurrent_per_tenant=DEFAULT_CONCURRENT_PER_TENANT,
        max_argument_bytes=DEFAULT_MAX_ARGUMENT_BYTES,
        max_result_bytes=DEFAULT_MAX_RESULT_BYTES,
    )
    assert (DEFAULT_CALLS_PER_SESSION, DEFAULT_APPROVAL_TIMEOUT_S) == (20, 300)
    assert rules.approval_timeout_s == DEFAULT_APPROVAL_TIMEOUT_S
    assert rules.result_scan is ResultScan.FLAG
    assert not rules.audit_raw_arguments


def test_set_limits_replace_only_their_defaults() -> None:
    rules = rules_of(
        limits=policy_pb2.AgentLimits(calls_per_session=5, max_result_bytes=1000),
        approval_timeout_s=900,
        result_scan=policy_pb2.RESULT_SCAN_ACTION_STRIP,
    )
    assert rules.limits == AgentLimits(calls_per_session=5, max_result_bytes=1000)
    assert rules.approval_timeout_s == 900
    assert rules.result_scan is ResultScan.STRIP


# Agent policies: who gets which


def caller_policies(compiled: CompiledPolicy, key_id: str, *groups: str) -> str | None:
    rules = compiled.agent_policies_of("acme").for_caller(key_id, groups)
    return None if rules is None else rules.id


def test_a_caller_gets_its_keys_policy_else_its_groups_else_the_tenants() -> None:
    compiled = compile_policy(
        snapshot(
            policies=[
                agent("everyone"),
                agent("ci", api_key_ids=["key-a1"]),
                agent("b-ops", groups=["ops"]),
                agent("a-admins", groups=["admins", "ops"]),
                agent("other", tenant_id="globex", groups=["ops"]),
            ]
        )
    )
    assert caller_policies(compiled, "key-a1", "ops") == "ci"
    # Of the policies naming one of the caller's groups, the first by id.
    assert caller_policies(compiled, "key-a2", "ops") == "a-admins"
    assert caller_policies(compiled, "", "ops", "admins") == "a-admins"
    assert caller_policies(compiled, "", "nobody") == "everyone"
    assert caller_policies(compiled, "key-a2") == "everyone"
    globex = compiled.agent_policies_of("globex").for_caller("key-g1", ("ops",))
    assert globex is not None and globex.id == "other"


def test_without_a_policy_for_the_caller_there_is_no_mcp_access() -> None:
    compiled = compile_policy(snapshot(policies=[agent("ci", api_key_ids=["key-a1"])]))
    assert caller_policies(compiled, "key-a2", "ops") is None
    assert compiled.agent_policies_of("globex") is NO_AGENT_POLICIES
    assert NO_AGENT_POLICIES.for_caller("key-g1", ("ops",)) is None


# Agent policies: refusals


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (agent("Default"), "id is not valid"),
        (agent(tenant_id="nope"), "unknown tenant 'nope'"),
        (agent(api_key_ids=["key-nope"]), "api key 'key-nope' is not one of the tenant's"),
        (agent(api_key_ids=["key-g1"]), "api key 'key-g1' is not one of the tenant's"),
        (agent(groups=[""]), "a group is empty"),
        (
            agent(tools=[rule("x", action=policy_pb2.TOOL_ACTION_UNSPECIFIED)]),
            "tools[0]: action is required",
        ),
        (agent(tools=[rule("")]), "tool is required"),
        (agent(tools=[rule("*a")]), "'*' may only end a tool name"),
        (agent(tools=[rule("a*b")]), "'*' may only end a tool name"),
        (agent(tools=[rule("**")]), "'*' may only end a tool name"),
        (agent(tools=[rule("x", server="Bad Server")]), "server is not valid"),
        (
            agent(tools=[rule("x", approve_when=[policy_pb2.ArgumentMatch(argument="a")])]),
            "approve_when needs action TOOL_ACTION_REQUIRE_APPROVAL",
        ),
        (
            agent(tools=[rule("x", APPROVAL, approve_when=[policy_pb2.ArgumentMatch()])]),
            "approve_when needs an argument",
        ),
        (
            agent(
                tools=[
                    rule(
                        "x",
                        APPROVAL,
                        approve_when=[policy_pb2.ArgumentMatch(argument="a", pattern="(")],
                    )
                ]
            ),
            "pattern '(' is not valid",
        ),
        (
            agent(
                tools=[
                    rule(
                        "x",
                        APPROVAL,
                        approve_when=[policy_pb2.ArgumentMatch(argument="a", pattern="a" * 1001)],
                    )
                ]
            ),
            "longer than 1000 characters",
        ),
        (agent(prompts=[""]), "a prompt name is empty"),
        (agent(resources=[""]), "a resource prefix is empty"),
        (agent(approval_timeout_s=901), "approval_timeout_s may be at most 900"),
        (agent(result_scan=99), "result_scan is not valid"),
        (
            agent(limits=policy_pb2.AgentLimits(calls_per_session=0)),
            "limits.calls_per_session must be greater than 0",
        ),
        (
            agent(limits=policy_pb2.AgentLimits(concurrent_calls_per_tenant=0)),
            "limits.concurrent_calls_per_tenant must be greater than 0",
        ),
    ],
)
def test_a_faulty_agent_policy_refuses_the_snapshot(
    policy: policy_pb2.AgentPolicy, message: str
) -> None:
    refused(message, policies=[policy])


@pytest.mark.parametrize(
    ("policies", "message"),
    [
        ([agent("a"), agent("a", tenant_id="globex")], "agent policy 'a' appears twice"),
        ([agent("a"), agent("b")], "tenant 'acme' has two policies for everyone"),
        (
            [agent("a", api_key_ids=["key-a1"]), agent("b", api_key_ids=["key-a1"])],
            "api key 'key-a1' has two policies",
        ),
    ],
)
def test_policies_that_overlap_refuse_the_snapshot(
    policies: list[policy_pb2.AgentPolicy], message: str
) -> None:
    refused(message, policies=policies)


def test_a_tenant_may_have_one_default_and_many_scoped_policies() -> None:
    compiled = compile_policy(
        snapshot(
            policies=[
                agent("a"),
                agent("b", api_key_ids=["key-a1"], groups=["ops"]),
                agent("c", groups=["ops"]),
                agent("d", tenant_id="globex"),
            ]
        )
    )
    acme = compiled.agent_policies_of("acme")
    assert acme.default is not None and acme.default.id == "a"
    assert [(group, rules.id) for group, rules in acme.by_group] == [("ops", "b"), ("ops", "c")]
    assert set(acme.by_key) == {"key-a1"}
