"""The frames between the Gatez APISIX plugin (`apisix/plugins/gatez.lua`) and the runner.

APISIX's ext-plugin protocol has no streaming body hook (asking for the response body under
`ext-plugin-post-resp` buffers all of it, and that plugin makes the provider call itself without
SNI or host-name checks). So on LLM routes our own Lua plugin makes the provider call, as
APISIX's `ai-proxy` does, and talks to the runner on the same unix socket with the same framing
(1 byte type, 3 bytes big-endian length, payload). Its types start at 64, far from APISIX's
0 to 4, so the runner tells them apart by the first byte:

- `UPSTREAM_REQUEST` (plugin → runner): `{"flow": key}`. The answer is the provider request:
  `{"scheme", "host", "port", "server_name", "method", "path", "headers": [[name, value]…]}`
  with the body as data. The key came in the pre-req Rewrite's `x-gatez-flow` header; the
  provider's credential exists only here, never in the request APISIX proxies.
- `RESPONSE_START`: `{"flow", "status", "headers"}` when the provider's headers arrived, or
  `{"flow", "error"}` when it could not be reached (connect, tls, timeout, send, resolve). The
  answer: `{"status", "headers", "body": "none" | "buffered" | "streamed"}` — what the client
  gets and how the plugin sends the body on — or a whole answer (`"body": "replace"`, status,
  headers, data).
- `RESPONSE_CHUNK`: `{"flow", "eos"}` with a chunk as data (streamed), or the whole body with
  eos (buffered). The answer is the chunk to send (data), or a whole answer (`"body":
  "replace"`, status, headers, data) when a stage refused the body.
- `RESPONSE_END`: `{"flow", "error"}` — the exchange ended without (or after) its last chunk:
  the client went away, the provider's stream broke, or the body was passed on unread. Answered
  with `{}`.

Every payload is a 4-byte big-endian length, that many bytes of JSON (the meta), then raw data.
An answer whose meta has `"error"` tells the plugin the runner could not do it (a flow it does
not know: the runner restarted); the plugin then answers the client itself.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any, Final

import orjson

from extproc.apisix.frames import MalformedMessage

META_LENGTH: Final = struct.Struct(">I")


class PluginRpc(enum.IntEnum):
    """The first byte of a Gatez plugin frame."""

    UPSTREAM_REQUEST = 64
    RESPONSE_START = 65
    RESPONSE_CHUNK = 66
    RESPONSE_END = 67


PLUGIN_RPCS: Final = frozenset(int(rpc) for rpc in PluginRpc)


class BodyPlan(enum.Enum):
    """How the plugin passes the provider's body on (the answer to RESPONSE_START)."""

    NONE = "none"  # straight to the client; only RESPONSE_END follows
    BUFFERED = "buffered"  # read whole, one RESPONSE_CHUNK with eos, then sent
    STREAMED = "streamed"  # each chunk through the runner, sent as it comes back
    REPLACE = "replace"  # the runner's own answer; the provider's body is dropped
    # The provider failed before its body: call `target` (as UPSTREAM_REQUEST gives it) with
    # the data as body instead, and send RESPONSE_START again (a fallback chain's next target).
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class PluginFrame:
    """One decoded plugin frame: its meta object and data."""

    rpc: PluginRpc
    flow: str
    meta: dict[str, Any]
    data: bytes


def decode(rpc_type: int, payload: bytes) -> PluginFrame:
    """A plugin frame; MalformedMessage when it is not one."""
    if len(payload) < META_LENGTH.size:
        raise MalformedMessage("plugin frame shorter than its meta length")
    (length,) = META_LENGTH.unpack_from(payload)
    end = META_LENGTH.size + length
    if end > len(payload):
        raise MalformedMessage("plugin frame meta runs past the payload")
    try:
        meta = orjson.loads(payload[META_LENGTH.size : end])
    except orjson.JSONDecodeError:
        raise MalformedMessage("plugin frame meta is not JSON") from None
    if not isinstance(meta, dict):
        raise MalformedMessage("plugin frame meta is not an object")
    flow = meta.get("flow")
    if not isinstance(flow, str) or not flow:
        raise MalformedMessage("plugin frame names no flow")
    return PluginFrame(PluginRpc(rpc_type), flow, meta, payload[end:])


def encode(meta: dict[str, Any], data: bytes = b"") -> bytes:
    """A plugin frame's payload (the caller adds the frame header)."""
    encoded = orjson.dumps(meta)
    return META_LENGTH.pack(len(encoded)) + encoded + data


def header_list(value: object) -> list[tuple[str, str]]:
    """`[[name, value]…]` from a frame's meta, names lower-cased; MalformedMessage otherwise."""
    if value == {}:
        # cjson encodes an empty Lua table as `{}`: a response with no headers at all.
        return []
    if not isinstance(value, list):
        raise MalformedMessage("plugin frame headers are not a list")
    headers: list[tuple[str, str]] = []
    for entry in value:
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or not isinstance(entry[0], str)
            or not isinstance(entry[1], str)
        ):
            raise MalformedMessage("plugin frame header is not a [name, value] pair")
        headers.append((entry[0].lower(), entry[1]))
    return headers
