"""ToolPolicy: deny by default, the first matching rule decides, arguments are judged (each
refusal names the argument, never its value), prompts, resources and completions by policy."""

from __future__ import annotations

import pytest

from agent.jsonrpc import GATEWAY_REFUSED, Refused
from agent.stages.tools import ToolPolicy
from gatez.pipeline import CONTINUE
from gatez.v1 import policy_pb2
from tests.agent.stages.flows import APPROVAL, DENY, agent, build_policy, call, mcp_flow, rpc, rule

Constraint = policy_pb2.ArgumentConstraint
POLICY = build_policy(
    agent(
        rule("delete_repo", DENY),
        rule("delete_*"),
        rule("read_*"),
        rule("deploy", server="files"),
        rule("merge", APPROVAL),
        rule(
            "create_issue",
            arguments={
                "repo": Constraint(pattern="acme/[a-z-]+", required=True),
                "title": Constraint(max_length=10),
                "priority": Constraint(minimum=1, maximum=5),
                "kind": Constraint(allowed_values=["bug", "feature"]),
            },
        ),
        rule("fetch"),
        prompts=["greet"],
        resources=["file:///public/", "db://acme/"],
        allowed_hosts=["api.example.com"],
        allowed_path_roots=["/data"],
    )
)
SECRET = "s3cr3t-VALUE"


def judged(body: bytes, path: str = "/mcp/acme/github") -> tuple[str, str]:
    flow = mcp_flow(POLICY, body, path=path)
    assert ToolPolicy().on_request_body(flow) is CONTINUE
    assert flow.mcp is not None
    return flow.mcp.decision, flow.mcp.reason


def refused(body: bytes, path: str = "/mcp/acme/github") -> tuple[Refused, str]:
    flow = mcp_flow(POLICY, body, path=path)
    with pytest.raises(Refused) as caught:
        ToolPolicy().on_request_body(flow)
    assert flow.mcp is not None
    assert flow.mcp.decision == "denied"
    assert caught.value.rpc_code == GATEWAY_REFUSED
    assert caught.value.http_status == 200
    return caught.value, flow.mcp.reason


@pytest.mark.parametrize(
    ("tool", "path"),
    [
        ("delete_branch", "/mcp/acme/github"),  # the prefix rule after the exact deny
        ("read_file", "/mcp/acme/github"),
        ("read_", "/mcp/acme/github"),  # a prefix matches itself
        ("deploy", "/mcp/acme/files"),  # a rule for one server
        ("merge", "/mcp/acme/github"),  # allowed, to be held by the approval gate
    ],
)
def test_a_tool_a_rule_allows_runs(tool: str, path: str) -> None:
    flow = mcp_flow(POLICY, call(tool), path=path)
    assert ToolPolicy().on_request_body(flow) is CONTINUE
    assert flow.mcp is not None
    assert flow.mcp.decision == "allowed"
    assert flow.mcp.rule is not None


@pytest.mark.parametrize(
    ("tool", "path", "reason"),
    [
        ("delete_repo", "/mcp/acme/github", "deny */delete_repo"),  # the first rule wins
        ("deploy", "/mcp/acme/github", "no rule allows tool deploy"),  # another server's rule
        ("write_file", "/mcp/acme/github", "no rule allows tool write_file"),  # deny by default
        ("rea", "/mcp/acme/github", "no rule allows tool rea"),
        ("Read_file", "/mcp/acme/github", "no rule allows tool Read_file"),
    ],
)
def test_a_tool_no_rule_allows_is_refused(tool: str, path: str, reason: str) -> None:
    error, why = refused(call(tool), path)
    assert error.public_message == f"tool '{tool}' is not allowed by this gateway's policy"
    assert why == reason


def test_with_no_rules_every_tool_is_refused() -> None:
    policy = build_policy(agent())
    flow = mcp_flow(policy, call("echo"))
    with pytest.raises(Refused):
        ToolPolicy().on_request_body(flow)


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"title": "ok"}, "repo"),  # required
        ({"repo": f"other/{SECRET}"}, "repo"),  # pattern
        ({"repo": "acme/x", "title": SECRET * 3}, "title"),  # max_length
        ({"repo": "acme/x", "priority": 9}, "priority"),  # maximum
        ({"repo": "acme/x", "priority": 0}, "priority"),  # minimum
        ({"repo": "acme/x", "kind": SECRET}, "kind"),  # allowed values
    ],
)
def test_constraints_refuse_naming_the_argument_not_its_value(
    arguments: dict[str, object], argument: str
) -> None:
    error, reason = refused(call("create_issue", **arguments))
    assert f"argument '{argument}' refused" in error.public_message
    assert reason.startswith(f"argument {argument}:")
    for text in (error.public_message, reason):
        assert SECRET not in text
        assert "other/" not in text


def test_arguments_within_the_constraints_pass() -> None:
    decision, _ = judged(
        call("create_issue", repo="acme/gatez", title="bug", priority=3, kind="bug")
    )
    assert decision == "allowed"


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:8080/admin",
        "http://10.1.2.3/",
        "http://[::1]/",
        "http://localhost/",
        "http://metadata.google.internal/computeMetadata/v1/",
    ],
)
def test_network_destinations_outside_the_policy_are_refused(url: str) -> None:
    error, reason = refused(call("fetch", url=url))
    assert "argument 'url' refused" in error.public_message
    assert "denied network destination" in error.public_message
    host = url.split("/")[2]
    assert host not in error.public_message
    assert host not in reason


def test_an_allowed_host_passes() -> None:
    assert judged(call("fetch", url="https://api.example.com/v1/items"))[0] == "allowed"


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/data/../etc/passwd", "/data/%2e%2e/etc/shadow", "../../etc/passwd"],
)
def test_file_paths_outside_the_roots_are_refused(path: str) -> None:
    error, reason = refused(call("read_file", path=path))
    assert "argument 'path' refused" in error.public_message
    assert "etc" not in error.public_message
    assert "etc" not in reason


def test_a_path_inside_a_root_passes() -> None:
    assert judged(call("read_file", path="/data/reports/q1.csv"))[0] == "allowed"


@pytest.mark.parametrize(
    ("body", "allowed"),
    [
        (rpc("prompts/get", name="greet"), True),
        (rpc("prompts/get", name="exfiltrate"), False),
        (rpc("resources/read", uri="file:///public/a.txt"), True),
        (rpc("resources/read", uri="file:///private/a.txt"), False),
        (rpc("resources/read", uri="db://acme/t"), True),
        (rpc("resources/subscribe", uri="file:///public/a.txt"), True),
        (rpc("resources/subscribe", uri="file:///etc/x"), False),
        (rpc("resources/unsubscribe", uri="file:///etc/x"), False),
        (rpc("resources/subscribe"), False),
        (rpc("completion/complete", ref={"type": "ref/prompt", "name": "greet"}), True),
        (rpc("completion/complete", ref={"type": "ref/prompt", "name": "other"}), False),
        (rpc("completion/complete", ref={"type": "ref/prompt"}), False),
        (
            rpc("completion/complete", ref={"type": "ref/resource", "uri": "file:///public/{x}"}),
            True,
        ),
        (rpc("completion/complete", ref={"type": "ref/resource", "uri": "file:///{x}"}), False),
        (rpc("completion/complete", ref="nonsense"), False),
        (rpc("completion/complete"), False),
    ],
)
def test_prompts_resources_and_completions_follow_the_policy(body: bytes, allowed: bool) -> None:
    flow = mcp_flow(POLICY, body)
    if allowed:
        assert ToolPolicy().on_request_body(flow) is CONTINUE
        assert flow.mcp is not None
        assert flow.mcp.decision == "allowed"
    else:
        with pytest.raises(Refused):
            ToolPolicy().on_request_body(flow)


@pytest.mark.parametrize(
    "body",
    [
        rpc("tools/list"),
        rpc("initialize", protocolVersion="2025-06-18"),
        rpc("ping"),
        rpc("notifications/initialized", None),
        b'{"jsonrpc": "2.0", "id": 1, "result": {}}',
    ],
)
def test_other_messages_are_not_judged_here(body: bytes) -> None:
    flow = mcp_flow(POLICY, body)
    assert ToolPolicy().on_request_body(flow) is CONTINUE
    assert flow.mcp is not None
    assert flow.mcp.decision == ""


def test_get_streams_are_not_judged_here() -> None:
    flow = mcp_flow(POLICY, method="GET", headers={"mcp-session-id": "s"})
    assert ToolPolicy().on_request_body(flow) is CONTINUE
