"""Deny-by-default tool policy: which tools, prompts and resources a caller may use, and with
which arguments.

A `tools/call` runs only when the first rule of the caller's agent policy that matches the
server and tool allows it (or holds it for approval, `agent.stages.approval`); no rule, or a
DENY rule, is a JSON-RPC error. Then its arguments are judged, each check naming the argument
and never echoing its value: the rule's constraints (allowed values, patterns, sizes, ranges),
network destinations in any string (private, loopback, link-local and metadata addresses and
internal names refused unless the policy allows them), and file paths (confined to the policy's
roots after decoding and normalising). Prompts and resources are allowed by name and URI prefix;
`completion/complete` is judged by the prompt or resource it completes for.

The same rules hide what a caller may not use from `tools/list`, `prompts/list` and
`resources/list` answers (`agent.stages.answers`).
"""

from __future__ import annotations

from typing import Any

from agent.jsonrpc import Refused
from gatez.agent_policy import AgentRules, ToolAction
from gatez.agent_rules import check_arguments, check_destinations, check_paths
from gatez.errors import quoted
from gatez.pipeline import CONTINUE, Flow, McpCall, Stage, Verdict


class ToolPolicy(Stage):
    """Refuses what the caller's agent policy does not allow (see the module doc)."""

    def on_request_body(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        if mcp is None or (mcp.kind != "request" and mcp.kind != "notification"):
            return CONTINUE
        rules = mcp.rules
        assert rules is not None
        method = mcp.method
        params: dict[str, Any] = (flow.request_json or {}).get("params") or {}
        if method == "tools/call":
            _judge_call(mcp, rules, params.get("arguments") or {})
        elif method == "prompts/get":
            _allow_prompt(mcp, rules, mcp.name)
        elif method in ("resources/read", "resources/subscribe", "resources/unsubscribe"):
            uri = params.get("uri")
            _allow_resource(mcp, rules, uri if isinstance(uri, str) else "")
        elif method == "completion/complete":
            ref = params.get("ref")
            ref = ref if isinstance(ref, dict) else {}
            if ref.get("type") == "ref/prompt":
                name = ref.get("name")
                _allow_prompt(mcp, rules, name if isinstance(name, str) else "")
            else:
                uri = ref.get("uri")
                _allow_resource(mcp, rules, uri if isinstance(uri, str) else "")
        return CONTINUE


def _judge_call(mcp: McpCall, rules: AgentRules, arguments: dict[str, Any]) -> None:
    server, tool = mcp.server.name, mcp.name
    rule = rules.rule_for(server, tool)
    mcp.rule = rule
    if rule is None or rule.action is ToolAction.DENY:
        mcp.decision = "denied"
        mcp.reason = f"no rule allows tool {tool}" if rule is None else rule.describe()
        raise Refused(f"tool {quoted(tool)} is not allowed by this gateway's policy")
    violation = (
        check_arguments(arguments, rule.constraints)
        or check_destinations(arguments, rules.destinations)
        or check_paths(arguments, rules.paths)
    )
    if violation is not None:
        mcp.decision = "denied"
        mcp.reason = f"argument {violation.argument}: {violation.reason}"
        raise Refused(
            f"tool {quoted(tool)}: argument {quoted(violation.argument)} refused: "
            f"{violation.reason}"
        )
    mcp.decision = "allowed"


def _allow_prompt(mcp: McpCall, rules: AgentRules, name: str) -> None:
    if not rules.allows_prompt(name):
        mcp.decision = "denied"
        mcp.reason = f"prompt {name} not allowed"
        raise Refused(f"prompt {quoted(name)} is not allowed by this gateway's policy")
    mcp.decision = "allowed"


def _allow_resource(mcp: McpCall, rules: AgentRules, uri: str) -> None:
    if not uri or not rules.allows_resource(uri):
        mcp.decision = "denied"
        mcp.reason = f"resource {uri[:200]} not allowed"
        raise Refused(f"resource {quoted(uri, 128)} is not allowed by this gateway's policy")
    mcp.decision = "allowed"
