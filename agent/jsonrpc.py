"""JSON-RPC 2.0 as MCP carries it: one message per HTTP POST, checked before anything acts on it.

A message the gateway cannot read safely is refused here, with the JSON-RPC error the
specification names, before a policy looks at it: invalid JSON (-32700), a batch (MCP removed
batching in 2025-06-18, and a gateway that judged only one element of a batch could be walked
around), a wrong `jsonrpc` version, ids that are neither a string nor an integer or are too big
to compare reliably (beyond 2^53, or longer than `ID_LIMIT` characters), non-string methods,
params that are not an object (-32600 for all of those).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Final

import orjson

from gatez.errors import GatewayError, InvalidRequest

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
# Implementation-defined server errors (-32000 to -32099): the gateway's refusals.
GATEWAY_REFUSED: Final = -32001
LIMIT_EXCEEDED: Final = -32002
# MCP 2026-07-28: HTTP headers that do not match the body; an unsupported protocol version.
HEADER_MISMATCH: Final = -32020
UNSUPPORTED_PROTOCOL_VERSION: Final = -32022

# Ids beyond these cannot be echoed faithfully by every peer (JavaScript numbers, say).
MAX_SAFE_INTEGER: Final = 2**53 - 1
ID_LIMIT: Final = 256
METHOD_LIMIT: Final = 256

RequestId = str | int


class MessageKind(enum.Enum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    # A client's answer to a server's request (sampling, elicitation, roots) in the
    # session-based revisions.
    RESPONSE = "response"


class RpcError(GatewayError):
    """A refusal answered as a JSON-RPC error. `rpc_code` is the JSON-RPC error code; the
    HTTP status is `http_status` (transport-level faults) — policy refusals of a request use
    200, so the client's SDK surfaces them as the call's error."""

    rpc_code: int = INTERNAL_ERROR


class ParseError(RpcError, InvalidRequest):
    rpc_code = PARSE_ERROR
    kind = "parse_error"


class InvalidMessage(RpcError, InvalidRequest):
    rpc_code = INVALID_REQUEST
    kind = "invalid_request"


class HeaderMismatch(RpcError, InvalidRequest):
    rpc_code = HEADER_MISMATCH
    kind = "header_mismatch"


class UnsupportedVersion(RpcError, InvalidRequest):
    rpc_code = UNSUPPORTED_PROTOCOL_VERSION
    kind = "unsupported_protocol_version"


class Refused(RpcError):
    """The gateway's policy refuses the message (a denied tool, an argument, a limit)."""

    http_status = 200
    rpc_code = GATEWAY_REFUSED
    kind = "refused"


class LimitExceeded(Refused):
    rpc_code = LIMIT_EXCEEDED
    kind = "limit_exceeded"


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message, checked. `params` is {} when the message had none."""

    kind: MessageKind
    id: RequestId | None
    method: str
    params: dict[str, Any]
    raw: dict[str, Any]


def parse_message(body: bytes) -> Message:
    """The message of a POST body, or a `RpcError` saying what is wrong with it."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ParseError("the body is not valid JSON") from None
    if isinstance(value, list):
        raise InvalidMessage("batch requests are not supported: send one message per request")
    if not isinstance(value, dict):
        raise InvalidMessage("a JSON-RPC message must be a JSON object")
    if value.get("jsonrpc") != "2.0":
        raise InvalidMessage('"jsonrpc" must be "2.0"')
    has_id = "id" in value
    message_id = value.get("id")
    if has_id:
        check_id(message_id)
    method = value.get("method")
    if method is None:
        if not has_id or ("result" in value) == ("error" in value):
            raise InvalidMessage("a message needs a method, or an id with a result or an error")
        return Message(MessageKind.RESPONSE, message_id, "", {}, value)
    if not isinstance(method, str) or not method or len(method) > METHOD_LIMIT:
        raise InvalidMessage('"method" must be a non-empty string')
    params = value.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidMessage('"params" must be an object')
    kind = MessageKind.REQUEST if has_id else MessageKind.NOTIFICATION
    return Message(kind, message_id, method, params, value)


def check_id(value: object) -> None:
    """A request id must be a string or an integer (JSON-RPC; MCP forbids null), small enough
    to be compared and echoed faithfully."""
    if isinstance(value, bool) or value is None:
        raise InvalidMessage('"id" must be a string or an integer')
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise InvalidMessage(f'"id" must lie within ±{MAX_SAFE_INTEGER}')
        return
    if isinstance(value, str):
        if len(value) > ID_LIMIT:
            raise InvalidMessage(f'"id" may be at most {ID_LIMIT} characters')
        return
    raise InvalidMessage('"id" must be a string or an integer')


def error_body(request_id: RequestId | None, code: int, message: str) -> bytes:
    """A JSON-RPC error response; `request_id` None when the request's id is unknown."""
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    )


def rpc_code_of(error: GatewayError) -> int:
    """The JSON-RPC code of any gateway error: its own, else one by HTTP status."""
    if isinstance(error, RpcError):
        return error.rpc_code
    status = error.http_status
    if status == 400:
        return INVALID_REQUEST
    if status in (401, 403, 404, 409, 429):
        return GATEWAY_REFUSED
    return INTERNAL_ERROR
