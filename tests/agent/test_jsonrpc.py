"""JSON-RPC 2.0 as MCP carries it: every message the gateway cannot read safely is refused with
the JSON-RPC error the specification names, before any policy looks at it."""

from __future__ import annotations

import orjson
import pytest

from agent.jsonrpc import (
    GATEWAY_REFUSED,
    ID_LIMIT,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    MAX_SAFE_INTEGER,
    METHOD_LIMIT,
    PARSE_ERROR,
    InvalidMessage,
    LimitExceeded,
    MessageKind,
    ParseError,
    Refused,
    error_body,
    parse_message,
    rpc_code_of,
)
from gatez.errors import GatewayError, NotFound, PermissionDenied, Unavailable


def body(**fields: object) -> bytes:
    return orjson.dumps({"jsonrpc": "2.0", **fields})


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"{'jsonrpc': '2.0'}",
        b'{"jsonrpc": "2.0", "id": 1, "method": "ping"} trailing',
        b"\xff\xfe",
        # Beyond a double: orjson cannot read the document at all (answered -32700, id null).
        b'{"jsonrpc": "2.0", "id": 1e400, "method": "ping"}',
        b'{"jsonrpc": "2.0", "id": ' + b"1" * 400 + b', "method": "ping"}',
        # Deeper than any JSON parser should follow.
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_what_is_not_json_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError) as caught:
        parse_message(raw)
    assert caught.value.rpc_code == PARSE_ERROR
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"[]", "batch"),
        (b'[{"jsonrpc": "2.0", "id": 1, "method": "ping"}]', "batch"),
        (b'"ping"', "JSON object"),
        (b"1", "JSON object"),
        (b"null", "JSON object"),
        (b'{"id": 1, "method": "ping"}', '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc": 2.0, "id": 1, "method": "ping"}', '"jsonrpc" must be "2.0"'),
        (b'{"jsonrpc": "2.0"}', "needs a method"),
        (b'{"jsonrpc": "2.0", "id": 1}', "needs a method"),
        (b'{"jsonrpc": "2.0", "result": {}}', "needs a method"),
        (b'{"jsonrpc": "2.0", "id": 1, "result": {}, "error": {}}', "needs a method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 7}', '"method"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": ""}', '"method"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": ["ping"]}', '"method"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": []}', '"params"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": "x"}', '"params"'),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": 3}', '"params"'),
        (b'{"jsonrpc": "2.0", "method": "notifications/x", "params": [1]}', '"params"'),
    ],
)
def test_malformed_messages_are_invalid_requests(raw: bytes, why: str) -> None:
    with pytest.raises(InvalidMessage) as caught:
        parse_message(raw)
    assert caught.value.rpc_code == INVALID_REQUEST
    assert caught.value.http_status == 400
    assert why in caught.value.public_message


def test_a_method_longer_than_the_limit_is_refused() -> None:
    parse_message(body(id=1, method="m" * METHOD_LIMIT))
    with pytest.raises(InvalidMessage):
        parse_message(body(id=1, method="m" * (METHOD_LIMIT + 1)))


@pytest.mark.parametrize(
    "message_id",
    [
        True,
        False,
        None,
        1.5,
        1.0,
        -0.0,
        MAX_SAFE_INTEGER + 1,
        -(MAX_SAFE_INTEGER + 1),
        2**63,
        "x" * (ID_LIMIT + 1),
        [1],
        {"id": 1},
    ],
)
@pytest.mark.parametrize("shape", ["request", "response"])
def test_ids_that_cannot_be_echoed_faithfully_are_refused(message_id: object, shape: str) -> None:
    fields: dict[str, object] = {"id": message_id}
    if shape == "request":
        fields["method"] = "tools/call"
    else:
        fields["result"] = {}
    with pytest.raises(InvalidMessage) as caught:
        parse_message(body(**fields))
    assert caught.value.rpc_code == INVALID_REQUEST
    assert '"id"' in caught.value.public_message


@pytest.mark.parametrize("digits", ["18446744073709551616", "-18446744073709551617", "1" * 300])
def test_an_id_beyond_64_bits_is_refused_as_an_id_not_as_unreadable_json(digits: str) -> None:
    # orjson reads integers beyond 64 bits as floats: the answer is still "invalid id".
    with pytest.raises(InvalidMessage):
        parse_message(b'{"jsonrpc": "2.0", "id": ' + digits.encode() + b', "method": "ping"}')


@pytest.mark.parametrize(
    "message_id",
    [0, 1, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, "", "abc", "x" * ID_LIMIT, "ünï"],
)
def test_string_and_safe_integer_ids_are_kept_as_sent(message_id: str | int) -> None:
    message = parse_message(body(id=message_id, method="tools/list"))
    assert message.kind is MessageKind.REQUEST
    assert message.id == message_id
    assert type(message.id) is type(message_id)


def test_a_request_carries_its_method_and_params() -> None:
    raw = body(id=7, method="tools/call", params={"name": "echo", "arguments": {"a": 1}})
    message = parse_message(raw)
    assert message.kind is MessageKind.REQUEST
    assert (message.id, message.method) == (7, "tools/call")
    assert message.params == {"name": "echo", "arguments": {"a": 1}}
    assert message.raw == orjson.loads(raw)


@pytest.mark.parametrize("params", [None, "absent"])
def test_missing_or_null_params_read_as_an_empty_object(params: object) -> None:
    fields: dict[str, object] = {"id": 1, "method": "ping"}
    if params != "absent":
        fields["params"] = params
    assert parse_message(body(**fields)).params == {}


def test_a_message_without_an_id_is_a_notification() -> None:
    message = parse_message(body(method="notifications/initialized"))
    assert message.kind is MessageKind.NOTIFICATION
    assert message.id is None
    assert message.method == "notifications/initialized"


def test_a_null_id_does_not_make_a_notification() -> None:
    # MCP forbids null ids; a request with one is not silently treated as a notification.
    with pytest.raises(InvalidMessage):
        parse_message(body(id=None, method="tools/call"))


@pytest.mark.parametrize(
    "fields",
    [
        {"id": 3, "result": {}},
        {"id": "s-1", "result": {"roots": []}},
        {"id": 3, "error": {"code": -1, "message": "no"}},
    ],
)
def test_a_client_answer_to_a_server_request_is_a_response(fields: dict[str, object]) -> None:
    message = parse_message(body(**fields))
    assert message.kind is MessageKind.RESPONSE
    assert message.id == fields["id"]
    assert message.method == ""
    assert message.params == {}


def test_deeply_nested_params_within_the_parser_limit_are_read() -> None:
    nested = b'{"a":' * 1000 + b"{}" + b"}" * 1000
    message = parse_message(
        b'{"jsonrpc": "2.0", "id": 1, "method": "x", "params": {"d": ' + nested + b"}}"
    )
    assert "d" in message.params


@pytest.mark.parametrize("request_id", [1, "abc", None])
def test_error_body_is_a_json_rpc_error_response(request_id: str | int | None) -> None:
    decoded = orjson.loads(error_body(request_id, -32600, "nope"))
    assert decoded == {
        "jsonrpc": "2.0",
        "id": request_id,
        "error": {"code": -32600, "message": "nope"},
    }


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ParseError("x"), PARSE_ERROR),
        (InvalidMessage("x"), INVALID_REQUEST),
        (Refused("x"), GATEWAY_REFUSED),
        (LimitExceeded("x"), -32002),
        (GatewayError("x"), INTERNAL_ERROR),
        (NotFound("x"), GATEWAY_REFUSED),
        (PermissionDenied("x"), GATEWAY_REFUSED),
        (Unavailable("x"), INTERNAL_ERROR),
    ],
)
def test_every_gateway_error_has_a_json_rpc_code(error: GatewayError, code: int) -> None:
    assert rpc_code_of(error) == code


def test_refusals_are_answered_with_200_so_the_sdk_sees_the_call_fail() -> None:
    assert Refused("x").http_status == 200
    assert LimitExceeded("x").http_status == 200
