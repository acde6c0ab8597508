"""The agent gateway's part of the compiled policy: MCP servers and agent policies.

Compiled once per snapshot, like the rest of `gatez.policy`: names checked, patterns compiled,
networks parsed, defaults filled in, so a `tools/call` only looks things up. A fault rejects the
whole snapshot (`InvalidPolicy`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from gatez.agent_rules import (
    ArgumentConstraint,
    DestinationPolicy,
    PathPolicy,
    build_constraint,
    build_destination_policy,
    build_path_policy,
)
from gatez.errors import InvalidPolicy, quoted
from gatez.v1 import policy_pb2

if TYPE_CHECKING:
    from gatez.policy import Upstream

# The MCP route's path: "/mcp/{tenant_id}/{server}" under the route's prefix.
DEFAULT_MCP_PREFIX: Final = "/mcp"
# RFC 9728: where an MCP client finds how to log in to "/mcp/{tenant}/{server}".
PROTECTED_RESOURCE_PREFIX: Final = "/.well-known/oauth-protected-resource"
MCP_SERVER_NAME: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
POLICY_ID: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+")
# Headers a server credential may not go in: the proxy's own (hop-by-hop ones included: a
# proxy never forwards them), or the MCP protocol's; nor any x-gatez-* (the gateway's).
_RESERVED_CREDENTIAL_HEADERS: Final = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "accept",
        "mcp-session-id",
        "mcp-protocol-version",
        "mcp-method",
        "mcp-name",
        "last-event-id",
    }
)
_GATEWAY_HEADER_PREFIX: Final = "x-gatez-"
# The MCP credential's associated data names the server (see policy.proto, PolicySnapshot).
MCP_CREDENTIAL_PREFIX: Final = "mcp:"
DEFAULT_CREDENTIAL_HEADER: Final = "authorization"

DEFAULT_CALLS_PER_SESSION: Final = 20
DEFAULT_CONCURRENT_PER_SESSION: Final = 4
DEFAULT_CONCURRENT_PER_TENANT: Final = 64
DEFAULT_MAX_ARGUMENT_BYTES: Final = 64 * 1024
DEFAULT_MAX_RESULT_BYTES: Final = 1024 * 1024
DEFAULT_APPROVAL_TIMEOUT_S: Final = 300
# The proxy gives a held call at most this long (`gatez.pipeline.verdicts.MAX_HOLD_S`).
MAX_APPROVAL_TIMEOUT_S: Final = 900
PATTERN_LIMIT: Final = 1000


def mcp_credential_name(tenant_id: str, server: str) -> str:
    """The name an MCP server's credential is sealed under (its associated data)."""
    return f"{MCP_CREDENTIAL_PREFIX}{tenant_id}/{server}"


@dataclass(frozen=True, slots=True)
class McpServerTarget:
    """One tenant's upstream MCP server, ready to route to."""

    tenant_id: str
    name: str
    # The proxy's cluster (plain or TLS), `:authority`, and the endpoint's path as registered.
    cluster: str
    authority: str
    path: str
    # The header the server's credential goes in, and its whole value; None: no credential.
    credential_header: str
    credential_value: str | None


class ToolAction(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"


_TOOL_ACTIONS: Final = {
    policy_pb2.TOOL_ACTION_ALLOW: ToolAction.ALLOW,
    policy_pb2.TOOL_ACTION_DENY: ToolAction.DENY,
    policy_pb2.TOOL_ACTION_REQUIRE_APPROVAL: ToolAction.REQUIRE_APPROVAL,
}


class ResultScan(enum.Enum):
    FLAG = "flag"
    STRIP = "strip"
    BLOCK = "block"
    OFF = "off"


_RESULT_SCANS: Final = {
    policy_pb2.RESULT_SCAN_ACTION_UNSPECIFIED: ResultScan.FLAG,
    policy_pb2.RESULT_SCAN_ACTION_FLAG: ResultScan.FLAG,
    policy_pb2.RESULT_SCAN_ACTION_STRIP: ResultScan.STRIP,
    policy_pb2.RESULT_SCAN_ACTION_BLOCK: ResultScan.BLOCK,
    policy_pb2.RESULT_SCAN_ACTION_OFF: ResultScan.OFF,
}


@dataclass(frozen=True, slots=True)
class ToolRule:
    """One rule of an agent policy (see `ToolRule` in policy.proto)."""

    # "" matches every server; `tool` is a name, or a prefix when `prefix` is set ("*": "").
    server: str
    tool: str
    prefix: bool
    action: ToolAction
    constraints: Mapping[str, ArgumentConstraint] = field(default_factory=dict)
    # (argument, pattern): REQUIRE_APPROVAL holds a call only when one matches (all when empty).
    approve_when: tuple[tuple[str, re.Pattern[str]], ...] = ()

    def matches(self, server: str, tool: str) -> bool:
        if self.server and self.server != server:
            return False
        return tool.startswith(self.tool) if self.prefix else tool == self.tool

    def describe(self) -> str:
        """The rule as an operator reads it in audit rows and approvals."""
        server = self.server or "*"
        tool = f"{self.tool}*" if self.prefix else self.tool
        return f"{self.action.value} {server}/{tool}"


@dataclass(frozen=True, slots=True)
class AgentLimits:
    calls_per_session: int = DEFAULT_CALLS_PER_SESSION
    concurrent_per_session: int = DEFAULT_CONCURRENT_PER_SESSION
    concurrent_per_tenant: int = DEFAULT_CONCURRENT_PER_TENANT
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES


@dataclass(frozen=True, slots=True)
class AgentRules:
    """One compiled agent policy: deny by default."""

    id: str
    tenant_id: str
    tools: tuple[ToolRule, ...]
    # Prompt names allowed ("*" in it: all); resource URI prefixes ("" in it: all).
    prompts: frozenset[str]
    resources: tuple[str, ...]
    limits: AgentLimits
    destinations: DestinationPolicy
    paths: PathPolicy
    result_scan: ResultScan
    approval_timeout_s: float
    audit_raw_arguments: bool

    def rule_for(self, server: str, tool: str) -> ToolRule | None:
        """The first rule matching a tool of `server`, or None (denied)."""
        for rule in self.tools:
            if rule.matches(server, tool):
                return rule
        return None

    def allows_tool(self, server: str, tool: str) -> bool:
        """Whether `tools/list` shows the tool: some rule lets calls to it run or wait."""
        rule = self.rule_for(server, tool)
        return rule is not None and rule.action is not ToolAction.DENY

    def allows_prompt(self, name: str) -> bool:
        return "*" in self.prompts or name in self.prompts

    def allows_resource(self, uri: str) -> bool:
        return any(uri.startswith(prefix) for prefix in self.resources)


@dataclass(frozen=True, slots=True)
class TenantAgentPolicies:
    """A tenant's agent policies, by whom they apply to (most specific first)."""

    by_key: Mapping[str, AgentRules]
    # (group, policy), in policy id order: the first naming one of a caller's groups wins.
    by_group: tuple[tuple[str, AgentRules], ...]
    default: AgentRules | None

    def for_caller(self, key_id: str, groups: Sequence[str]) -> AgentRules | None:
        """The policy that applies to a caller, or None (no MCP access)."""
        rules = self.by_key.get(key_id)
        if rules is not None:
            return rules
        if groups:
            for group, grouped in self.by_group:
                if group in groups:
                    return grouped
        return self.default


NO_AGENT_POLICIES: Final = TenantAgentPolicies(MappingProxyType({}), (), None)


def compile_mcp_servers(
    servers: Sequence[policy_pb2.McpServer],
    credentials: Mapping[str, str],
    tenants: Mapping[str, object],
    upstream: Callable[[str, str], Upstream],
) -> MappingProxyType[tuple[str, str], McpServerTarget]:
    """Servers by (tenant, name). `credentials`: clear secrets by `mcp_credential_name`;
    `upstream`: the policy's URL rules (`gatez.policy`), a URL and where it is → `Upstream`."""
    compiled: dict[tuple[str, str], McpServerTarget] = {}
    for server in servers:
        where = f"MCP server {quoted(server.tenant_id)}/{quoted(server.name)}"
        _check(server.tenant_id in tenants, f"{where}: unknown tenant")
        _check(MCP_SERVER_NAME.fullmatch(server.name), f"{where}: name is not valid")
        key = (server.tenant_id, server.name)
        _check(key not in compiled, f"{where} appears twice")
        # `upstream` refuses a query, a fragment and user info in the URL.
        target = upstream(server.url, f"{where}: url")
        # The endpoint exactly as registered: `Upstream.path_prefix` drops a trailing '/', and
        # a server mounted at "/mcp/" answers "/mcp" with a redirect (and vice versa).
        path = urlsplit(server.url).path or "/"
        _check(
            all(c.isprintable() and not c.isspace() for c in path),
            f"{where}: url's path may not hold spaces or control characters",
        )
        header = (server.credential_header or DEFAULT_CREDENTIAL_HEADER).lower()
        _check(
            _HEADER_NAME.fullmatch(header)
            and header not in _RESERVED_CREDENTIAL_HEADERS
            and not header.startswith(_GATEWAY_HEADER_PREFIX),
            f"{where}: credential_header {quoted(header)} is not allowed",
        )
        secret = credentials.get(mcp_credential_name(server.tenant_id, server.name))
        value = None
        if secret is not None:
            _check(
                all(32 <= ord(c) < 127 for c in secret),
                f"{where}: the credential must be printable ASCII",
            )
            value = f"Bearer {secret}" if header == "authorization" else secret
        compiled[key] = McpServerTarget(
            tenant_id=server.tenant_id,
            name=server.name,
            cluster=target.cluster,
            authority=target.authority,
            path=path,
            credential_header=header,
            credential_value=value,
        )
    known = {mcp_credential_name(tenant, name) for tenant, name in compiled}
    unknown = sorted(set(credentials) - known)
    _check(not unknown, f"credentials for unknown MCP servers: {_names(unknown)}")
    return MappingProxyType(compiled)


def compile_agent_policies(
    policies: Sequence[policy_pb2.AgentPolicy],
    tenants: Mapping[str, object],
    key_tenants: Mapping[str, str],
) -> MappingProxyType[str, TenantAgentPolicies]:
    """Each tenant's agent policies. `key_tenants`: API key id → its tenant."""
    ids: set[str] = set()
    scopes: dict[str, dict[str, AgentRules]] = {}
    grouped: dict[str, list[tuple[str, str, AgentRules]]] = {}
    defaults: dict[str, AgentRules] = {}
    for policy in sorted(policies, key=lambda p: p.id):
        where = f"agent policy {quoted(policy.id)}"
        _check(POLICY_ID.fullmatch(policy.id), f"{where}: id is not valid")
        _check(policy.id not in ids, f"{where} appears twice")
        ids.add(policy.id)
        _check(policy.tenant_id in tenants, f"{where}: unknown tenant {quoted(policy.tenant_id)}")
        rules = _agent_rules(policy, where)
        keys = scopes.setdefault(policy.tenant_id, {})
        for key_id in policy.api_key_ids:
            _check(
                key_tenants.get(key_id) == policy.tenant_id,
                f"{where}: api key {quoted(key_id)} is not one of the tenant's",
            )
            _check(key_id not in keys, f"{where}: api key {quoted(key_id)} has two policies")
            keys[key_id] = rules
        for group in policy.groups:
            _check(group != "", f"{where}: a group is empty")
            grouped.setdefault(policy.tenant_id, []).append((policy.id, group, rules))
        if not policy.api_key_ids and not policy.groups:
            _check(
                policy.tenant_id not in defaults,
                f"{where}: tenant {quoted(policy.tenant_id)} has two policies for everyone",
            )
            defaults[policy.tenant_id] = rules
    return MappingProxyType(
        {
            tenant: TenantAgentPolicies(
                MappingProxyType(scopes.get(tenant, {})),
                tuple((group, rules) for _, group, rules in grouped.get(tenant, [])),
                defaults.get(tenant),
            )
            for tenant in {p.tenant_id for p in policies}
        }
    )


def _agent_rules(policy: policy_pb2.AgentPolicy, where: str) -> AgentRules:
    tools: list[ToolRule] = []
    for position, rule in enumerate(policy.tools):
        at = f"{where}: tools[{position}]"
        action = _TOOL_ACTIONS.get(rule.action)
        _check(action is not None, f"{at}: action is required")
        assert action is not None
        server = "" if rule.server in ("", "*") else rule.server
        _check(server == "" or MCP_SERVER_NAME.fullmatch(server), f"{at}: server is not valid")
        _check(rule.tool != "", f"{at}: tool is required ('*' for every tool)")
        prefix = rule.tool.endswith("*")
        tool = rule.tool[:-1] if prefix else rule.tool
        _check("*" not in tool, f"{at}: '*' may only end a tool name")
        constraints: dict[str, ArgumentConstraint] = {}
        for name, constraint in rule.arguments.items():
            try:
                constraints[name] = build_constraint(
                    allowed_values=tuple(constraint.allowed_values),
                    pattern=constraint.pattern or None,
                    max_length=(
                        constraint.max_length if constraint.HasField("max_length") else None
                    ),
                    minimum=constraint.minimum if constraint.HasField("minimum") else None,
                    maximum=constraint.maximum if constraint.HasField("maximum") else None,
                    required=constraint.required,
                )
            except ValueError as error:
                raise InvalidPolicy(f"{at}: argument {quoted(name)}: {error}") from None
        approve_when: list[tuple[str, re.Pattern[str]]] = []
        for match in rule.approve_when:
            _check(
                action is ToolAction.REQUIRE_APPROVAL,
                f"{at}: approve_when needs action TOOL_ACTION_REQUIRE_APPROVAL",
            )
            _check(match.argument != "", f"{at}: approve_when needs an argument")
            approve_when.append((match.argument, _pattern(match.pattern, at)))
        tools.append(
            ToolRule(
                server, tool, prefix, action, MappingProxyType(constraints), tuple(approve_when)
            )
        )
    for prompt in policy.prompts:
        _check(prompt != "", f"{where}: a prompt name is empty")
    resources = tuple("" if r == "*" else r for r in policy.resources)
    for resource in policy.resources:
        _check(resource != "", f"{where}: a resource prefix is empty")
    try:
        destinations = build_destination_policy(
            tuple(policy.allowed_hosts), tuple(policy.allowed_networks)
        )
        paths = build_path_policy(tuple(policy.allowed_path_roots))
    except ValueError as error:
        raise InvalidPolicy(f"{where}: {error}") from None
    timeout = policy.approval_timeout_s or DEFAULT_APPROVAL_TIMEOUT_S
    _check(
        timeout <= MAX_APPROVAL_TIMEOUT_S,
        f"{where}: approval_timeout_s may be at most {MAX_APPROVAL_TIMEOUT_S}",
    )
    scan = _RESULT_SCANS.get(policy.result_scan)
    _check(scan is not None, f"{where}: result_scan is not valid")
    assert scan is not None
    return AgentRules(
        id=policy.id,
        tenant_id=policy.tenant_id,
        tools=tuple(tools),
        prompts=frozenset(policy.prompts),
        resources=resources,
        limits=_limits(policy.limits, where),
        destinations=destinations,
        paths=paths,
        result_scan=scan,
        approval_timeout_s=float(timeout),
        audit_raw_arguments=policy.audit_raw_arguments,
    )


def _limits(limits: policy_pb2.AgentLimits, where: str) -> AgentLimits:
    def value(name: str, default: int) -> int:
        if not limits.HasField(name):
            return default
        number = int(getattr(limits, name))
        _check(number > 0, f"{where}: limits.{name} must be greater than 0")
        return number

    return AgentLimits(
        calls_per_session=value("calls_per_session", DEFAULT_CALLS_PER_SESSION),
        concurrent_per_session=value(
            "concurrent_calls_per_session", DEFAULT_CONCURRENT_PER_SESSION
        ),
        concurrent_per_tenant=value("concurrent_calls_per_tenant", DEFAULT_CONCURRENT_PER_TENANT),
        max_argument_bytes=value("max_argument_bytes", DEFAULT_MAX_ARGUMENT_BYTES),
        max_result_bytes=value("max_result_bytes", DEFAULT_MAX_RESULT_BYTES),
    )


def _pattern(pattern: str, where: str) -> re.Pattern[str]:
    if len(pattern) > PATTERN_LIMIT:
        raise InvalidPolicy(f"{where}: a pattern is longer than {PATTERN_LIMIT} characters")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise InvalidPolicy(f"{where}: pattern {quoted(pattern)} is not valid: {error}") from None


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(quoted(name) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check(condition: object, message: str) -> None:
    if not condition:
        raise InvalidPolicy(message)
