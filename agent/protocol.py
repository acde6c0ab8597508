"""MCP protocol revisions and the request-metadata headers of the stateless revision.

Session-based revisions (2025-03-26, 2025-06-18, 2025-11-25; 2024-11-05 clients too) negotiate
a version in `initialize` and send `MCP-Protocol-Version` afterwards (absent: 2025-03-26).
2026-07-28 has no session: every request carries `MCP-Protocol-Version`, `Mcp-Method` and, for
`tools/call`, `resources/read` and `prompts/get`, `Mcp-Name`, and these must match the body
(`_meta["io.modelcontextprotocol/protocolVersion"]`, `method`, `params.name`/`params.uri`).
Intermediaries that act on the headers must check them against the body: a load balancer
routing on `Mcp-Name` while the server runs the body's tool is the attack the rule prevents.
A mismatch is HTTP 400 with JSON-RPC error -32020 (HeaderMismatch). `Mcp-Param-*` headers
(tool arguments a tool's schema mirrors into headers) are forwarded unjudged: the tool call
itself is judged from the body, which is what the server runs.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Final

from agent.jsonrpc import HeaderMismatch, Message, UnsupportedVersion
from gatez.errors import quoted

STATELESS_VERSION: Final = "2026-07-28"
SESSION_VERSIONS: Final = frozenset({"2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"})
SUPPORTED_VERSIONS: Final = frozenset({*SESSION_VERSIONS, STATELESS_VERSION})
# What a session-based request without the header speaks (the 2025-06-18 transport rule).
DEFAULT_VERSION: Final = "2025-03-26"

VERSION_HEADER: Final = "mcp-protocol-version"
METHOD_HEADER: Final = "mcp-method"
NAME_HEADER: Final = "mcp-name"
SESSION_HEADER: Final = "mcp-session-id"
VERSION_META_KEY: Final = "io.modelcontextprotocol/protocolVersion"
# The methods whose `Mcp-Name` names what they act on, and the param it mirrors.
NAMED_METHODS: Final = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
_SENTINEL_START: Final = "=?base64?"
_SENTINEL_END: Final = "?="


def request_version(headers: Mapping[str, str]) -> str:
    """The revision a request says it speaks, from its header (absent: 2025-03-26). An
    unsupported one is refused (400), as the transport says."""
    version = headers.get(VERSION_HEADER)
    if version is None:
        return DEFAULT_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedVersion(
            f"unsupported MCP-Protocol-Version {quoted(version)}; supported: "
            + ", ".join(sorted(SUPPORTED_VERSIONS))
        )
    return version


def check_stateless_headers(headers: Mapping[str, str], message: Message) -> None:
    """A 2026-07-28 request's headers against its body; HeaderMismatch names the first fault."""
    meta = message.params.get("_meta")
    body_version = meta.get(VERSION_META_KEY) if isinstance(meta, dict) else None
    if body_version != headers.get(VERSION_HEADER):
        raise HeaderMismatch(
            "Header mismatch: MCP-Protocol-Version does not match the body's "
            f"_meta[{VERSION_META_KEY!r}]"
        )
    method_header = headers.get(METHOD_HEADER)
    if method_header is None:
        raise HeaderMismatch("Header mismatch: the Mcp-Method header is required")
    if method_header != message.method:
        raise HeaderMismatch(
            f"Header mismatch: Mcp-Method header value {quoted(method_header)} does not match "
            f"body value {quoted(message.method)}"
        )
    param = NAMED_METHODS.get(message.method)
    if param is None:
        return
    name_header = headers.get(NAME_HEADER)
    if name_header is None:
        raise HeaderMismatch("Header mismatch: the Mcp-Name header is required")
    header_name = decode_header_value(name_header)
    body_name = message.params.get(param)
    if header_name is None or header_name != body_name:
        raise HeaderMismatch(
            f"Header mismatch: Mcp-Name header value {quoted(name_header)} does not match "
            f"body value {quoted(str(body_name))}"
        )


def decode_header_value(value: str) -> str | None:
    """A header value as the transport encodes it: plain, or `=?base64?…?=` around the UTF-8
    text's Base64 (None when that does not decode)."""
    if not (value.startswith(_SENTINEL_START) and value.endswith(_SENTINEL_END)):
        return value
    encoded = value[len(_SENTINEL_START) : -len(_SENTINEL_END)]
    try:
        return base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
