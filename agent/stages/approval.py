"""Human approval gates: a tool call the policy marks is held until an operator decides.

When the rule that allowed a `tools/call` is REQUIRE_APPROVAL (and, with `approve_when`, one of
its argument patterns matches), the call is recorded as a pending approval in Redis
(`gatez.approvals`) and held (`Hold`: the proxy is told to wait that long — Envoy's
`override_message_timeout`, APISIX by the runner's keep-alive questions) while operators list,
approve or deny it through the control service. The client just waits. Approved, the call goes on
to the server; denied, timed out or abandoned, it is refused with a JSON-RPC error saying so.

The record is keyed by the call (tenant, caller, server, session, tool, arguments): a client that
retries the same call after the data plane holding it died is held again under the same approval,
or goes on at once if it was approved meanwhile. A data plane that stops answers its held calls
with an error ("gateway stopping"), never silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import Awaitable
from typing import Any, Final

import orjson

from agent.approvals import ApprovalGate
from agent.jsonrpc import Refused
from gatez.agent_policy import ToolAction
from gatez.approvals import Approval, ApprovalState, ApprovalStore
from gatez.errors import Unavailable, quoted
from gatez.pipeline import (
    CONTINUE,
    MAX_HOLD_S,
    Decision,
    Flow,
    Hold,
    McpCall,
    Respond,
    Stage,
    Verdict,
)

# The hold outlives the approval's own deadline by this much, so the timeout is the store's
# (TIMED_OUT written), not the pipeline's 504.
HOLD_MARGIN_S: Final = 5.0
ARGUMENTS_LIMIT: Final = 16 * 1024


class ApprovalRefused(Refused):
    kind = "approval_refused"


class ApprovalGateStage(Stage):
    """Holds the calls that need a human decision (see the module doc)."""

    name = "approval_gate"

    def __init__(self, store: ApprovalStore, gate: ApprovalGate) -> None:
        self._store = store
        self._gate = gate

    def on_request_body(self, flow: Flow) -> Verdict | Awaitable[Verdict]:
        mcp = flow.mcp
        if mcp is None or mcp.method != "tools/call" or mcp.kind != "request":
            return CONTINUE
        rule = mcp.rule
        if rule is None or rule.action is not ToolAction.REQUIRE_APPROVAL:
            return CONTINUE
        arguments: dict[str, Any] = ((flow.request_json or {}).get("params") or {}).get(
            "arguments"
        ) or {}
        because = _held_because(rule.approve_when, arguments)
        if because is None:
            return CONTINUE
        return self._hold(flow, mcp, because)

    async def _hold(self, flow: Flow, mcp: McpCall, because: str) -> Verdict:
        rules = mcp.rules
        assert rules is not None
        # The checks earlier stages deferred (the tool-call admission) first: a call they
        # refuse must not reach an operator. Their refusal is the pipeline's to answer.
        checks = [check for _, check in flow.deferred]
        if checks:
            await asyncio.wait(checks)
            if any(c.cancelled() or c.exception() is not None for c in checks) or any(
                isinstance(c.result(), Respond) for c in checks
            ):
                return CONTINUE
        caller = flow.caller
        params = (flow.request_json or {}).get("params") or {}
        arguments_json = _arguments_json(params.get("arguments"))
        call_key = hashlib.sha256(
            "\n".join(
                (caller.key_id, mcp.server.name, mcp.session_digest, mcp.name, mcp.arguments_digest)
            ).encode()
        ).hexdigest()
        try:
            record = await self._store.create(
                caller.tenant_id,
                caller=caller.key_id,
                server=mcp.server.name,
                tool=mcp.name,
                arguments_json=arguments_json,
                session_digest=mcp.session_digest,
                held_because=because,
                timeout_s=rules.approval_timeout_s,
                call_key=call_key,
            )
        except Exception:
            raise Unavailable("the approval store is unavailable, try again") from None
        if record.state.final:
            return _decided(mcp, record)
        timeout_s = min(record.remaining_s(_now()) + HOLD_MARGIN_S, MAX_HOLD_S)
        return Hold(self._decision(mcp, record), timeout_s)

    async def _decision(self, mcp: McpCall, record: Approval) -> Decision:
        final = await self._gate.wait(record)
        verdict = _decided(mcp, final)
        assert not isinstance(verdict, Hold)
        return verdict


class NoApprovals(Stage):
    """Without an approval store (a data plane built without one, as some tests are): a call
    the policy holds for a decision is refused, never run unapproved."""

    name = "approval_gate"

    def on_request_body(self, flow: Flow) -> Verdict:
        mcp = flow.mcp
        rule = mcp.rule if mcp is not None else None
        if mcp is None or rule is None or rule.action is not ToolAction.REQUIRE_APPROVAL:
            return CONTINUE
        arguments = ((flow.request_json or {}).get("params") or {}).get("arguments") or {}
        if _held_because(rule.approve_when, arguments) is None:
            return CONTINUE
        mcp.decision, mcp.reason = "denied", "approvals unavailable"
        raise Unavailable("tool calls that need approval cannot be held by this gateway")


def _decided(mcp: McpCall, record: Approval) -> Verdict:
    mcp.approver = record.approver
    state = record.state
    if state is ApprovalState.APPROVED:
        mcp.decision, mcp.reason = "approved", f"approval {record.id}"
        return CONTINUE
    if state is ApprovalState.DENIED:
        mcp.decision = "approval_denied"
        mcp.reason = f"approval {record.id}: {record.reason}"[:500]
        why = f": {record.reason}" if record.reason else ""
        raise ApprovalRefused(
            f"tool {quoted(mcp.name)} was denied by {record.approver or 'an operator'}{why}"
        )
    if state is ApprovalState.TIMED_OUT:
        mcp.decision, mcp.reason = "approval_timeout", f"approval {record.id}"
        raise ApprovalRefused(
            f"tool {quoted(mcp.name)} needs an operator's approval, and none came in time "
            f"(approval {record.id})"
        )
    mcp.decision, mcp.reason = "error", f"approval {record.id}: {record.reason}"[:500]
    # A JSON-RPC error of the call (HTTP 200), so the client's SDK surfaces the message.
    raise ApprovalRefused(
        f"the approval of tool {quoted(mcp.name)} was abandoned ({record.reason}); "
        "retry the call to be held for approval again"
    )


def _held_because(
    approve_when: tuple[tuple[str, re.Pattern[str]], ...], arguments: dict[str, Any]
) -> str | None:
    """Why a REQUIRE_APPROVAL call waits, or None when its `approve_when` patterns all miss."""
    if not approve_when:
        return "the tool needs approval"
    for argument, pattern in approve_when:
        value = arguments.get(argument)
        if value is None:
            continue
        text = value if isinstance(value, str) else _json_text(value)
        if pattern.fullmatch(text):
            return f"argument {argument} matches {pattern.pattern}"
    return None


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


def _arguments_json(arguments: object) -> str:
    return orjson.dumps(arguments or {}, option=orjson.OPT_SORT_KEYS).decode()[:ARGUMENTS_LIMIT]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
