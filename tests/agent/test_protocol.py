"""MCP protocol revisions: the version header, and the 2026-07-28 request headers checked
against the body (a mismatch of any kind is a HeaderMismatch, -32020, HTTP 400)."""

from __future__ import annotations

import base64

import orjson
import pytest

from agent.jsonrpc import (
    HEADER_MISMATCH,
    UNSUPPORTED_PROTOCOL_VERSION,
    HeaderMismatch,
    Message,
    UnsupportedVersion,
    parse_message,
)
from agent.protocol import (
    DEFAULT_VERSION,
    STATELESS_VERSION,
    SUPPORTED_VERSIONS,
    check_stateless_headers,
    decode_header_value,
    request_version,
)


def sentinel(text: str) -> str:
    return "=?base64?" + base64.b64encode(text.encode()).decode() + "?="


def stateless(method: str, **params: object) -> Message:
    meta = {"io.modelcontextprotocol/protocolVersion": STATELESS_VERSION}
    return parse_message(
        orjson.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": meta, **params}}
        )
    )


def headers(method: str, name: str | None = None, **more: str) -> dict[str, str]:
    found = {"mcp-protocol-version": STATELESS_VERSION, "mcp-method": method, **more}
    if name is not None:
        found["mcp-name"] = name
    return found


@pytest.mark.parametrize("version", sorted(SUPPORTED_VERSIONS))
def test_a_supported_version_is_spoken(version: str) -> None:
    assert request_version({"mcp-protocol-version": version}) == version


def test_without_the_header_a_request_speaks_2025_03_26() -> None:
    assert request_version({}) == DEFAULT_VERSION == "2025-03-26"


@pytest.mark.parametrize("version", ["", "2025-01-01", "2026-07-28 ", "latest", "2025-06-18,x"])
def test_an_unsupported_version_is_refused_naming_the_supported_ones(version: str) -> None:
    with pytest.raises(UnsupportedVersion) as caught:
        request_version({"mcp-protocol-version": version})
    assert caught.value.http_status == 400
    assert caught.value.rpc_code == UNSUPPORTED_PROTOCOL_VERSION
    assert all(v in caught.value.public_message for v in SUPPORTED_VERSIONS)


@pytest.mark.parametrize(
    ("method", "params", "name"),
    [
        ("tools/list", {}, None),
        ("server/discover", {}, None),
        ("tools/call", {"name": "echo", "arguments": {}}, "echo"),
        ("prompts/get", {"name": "greet"}, "greet"),
        ("resources/read", {"uri": "file:///a/b.txt"}, "file:///a/b.txt"),
        # Names outside the header-safe set arrive Base64-encoded, and are decoded to compare.
        ("tools/call", {"name": "grüßen"}, sentinel("grüßen")),
        ("tools/call", {"name": " padded "}, sentinel(" padded ")),
        ("resources/read", {"uri": "file:///ü"}, sentinel("file:///ü")),
        # A plain name that looks like the sentinel is itself encoded by clients.
        ("tools/call", {"name": "=?base64?literal?="}, sentinel("=?base64?literal?=")),
    ],
)
def test_headers_that_match_the_body_pass(
    method: str, params: dict[str, object], name: str | None
) -> None:
    check_stateless_headers(headers(method, name), stateless(method, **params))


@pytest.mark.parametrize(
    ("sent", "message", "why"),
    [
        # The version: absent, different, or absent from the body.
        (
            {"mcp-method": "tools/list"},
            stateless("tools/list"),
            "MCP-Protocol-Version",
        ),
        (
            headers("tools/list", **{"mcp-protocol-version": "2025-11-25"}),
            stateless("tools/list"),
            "MCP-Protocol-Version",
        ),
        (
            headers("tools/list"),
            parse_message(b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}'),
            "MCP-Protocol-Version",
        ),
        (
            headers("tools/list"),
            parse_message(
                b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": 1}}'
            ),
            "MCP-Protocol-Version",
        ),
        # The method: absent, or another one.
        (
            {"mcp-protocol-version": STATELESS_VERSION},
            stateless("tools/list"),
            "Mcp-Method header is required",
        ),
        (headers("prompts/list"), stateless("tools/list"), "does not match"),
        (headers("Tools/List"), stateless("tools/list"), "does not match"),
        # The name: absent, another one, a wrong case, badly encoded, another encoded one.
        (
            headers("tools/call"),
            stateless("tools/call", name="echo"),
            "Mcp-Name header is required",
        ),
        (headers("tools/call", "rm"), stateless("tools/call", name="echo"), "does not match"),
        (headers("tools/call", "Echo"), stateless("tools/call", name="echo"), "does not match"),
        (
            headers("tools/call", "=?base64?not base64!?="),
            stateless("tools/call", name="echo"),
            "does not match",
        ),
        (
            headers("tools/call", "=?base64?//4=?="),  # Base64 of bytes that are not UTF-8
            stateless("tools/call", name="echo"),
            "does not match",
        ),
        (
            headers("tools/call", sentinel("rm")),
            stateless("tools/call", name="echo"),
            "does not match",
        ),
        # The sentinel's markers are lowercase: an upper-case one is a plain (different) value.
        (
            headers("tools/call", "=?BASE64?ZWNobw==?="),
            stateless("tools/call", name="echo"),
            "does not match",
        ),
        (
            headers("resources/read", "file:///b"),
            stateless("resources/read", uri="file:///a"),
            "does not match",
        ),
        # The body lacks the name the header gives.
        (headers("prompts/get", "greet"), stateless("prompts/get"), "does not match"),
    ],
)
def test_a_mismatch_of_any_kind_is_refused(
    sent: dict[str, str], message: Message, why: str
) -> None:
    with pytest.raises(HeaderMismatch) as caught:
        check_stateless_headers(sent, message)
    assert caught.value.rpc_code == HEADER_MISMATCH == -32020
    assert caught.value.http_status == 400
    assert caught.value.public_message.startswith("Header mismatch")
    assert why in caught.value.public_message


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("echo", "echo"),
        ("", ""),
        ("=?base64?ZWNobw==?=", "echo"),
        ("=?base64?SGVsbG8sIOS4lueVjA==?=", "Hello, 世界"),
        ("=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?=", "=?base64?literal?="),
        ("=?base64??=", ""),
        ("=?base64?***?=", None),
        ("=?base64?ZWNobw?=", None),  # padding missing
        ("=?base64?echo", "=?base64?echo"),  # no end marker: a plain value
    ],
)
def test_header_values_decode_as_the_transport_encodes_them(
    value: str, decoded: str | None
) -> None:
    assert decode_header_value(value) == decoded
