"""The APISIX ext-plugin wire: frames, and the messages they carry, both directions.

A frame is 1 byte RPC type, 3 bytes big-endian payload length, then a flatbuffer with no size
prefix and no file identifier. Messages are decoded once into frozen values (names and values as
`str`, header values as latin-1 so any byte survives) and encoded from them; nothing above this
module sees a flatbuffers type. The runner uses the "APISIX → runner" decoders and "runner →
APISIX" encoders; the harness (`tests.support.apisix`) uses the other half, which is what lets it
play APISIX byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import ipaddress
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

import flatbuffers

from extproc.apisix import flat
from extproc.apisix.fbs.A6 import TextEntry
from extproc.apisix.fbs.A6.Err import Resp as ErrResp
from extproc.apisix.fbs.A6.ExtraInfo import Info as InfoKind
from extproc.apisix.fbs.A6.ExtraInfo import Req as ExtraInfoReq
from extproc.apisix.fbs.A6.ExtraInfo import ReqBody as ExtraInfoReqBody
from extproc.apisix.fbs.A6.ExtraInfo import Resp as ExtraInfoResp
from extproc.apisix.fbs.A6.ExtraInfo import RespBody as ExtraInfoRespBody
from extproc.apisix.fbs.A6.ExtraInfo import Var as ExtraInfoVar
from extproc.apisix.fbs.A6.HTTPReqCall import Action as ActionKind
from extproc.apisix.fbs.A6.HTTPReqCall import Req as ReqCallReq
from extproc.apisix.fbs.A6.HTTPReqCall import Resp as ReqCallResp
from extproc.apisix.fbs.A6.HTTPReqCall import Rewrite as ReqCallRewrite
from extproc.apisix.fbs.A6.HTTPReqCall import Stop as ReqCallStop
from extproc.apisix.fbs.A6.HTTPRespCall import Req as RespCallReq
from extproc.apisix.fbs.A6.HTTPRespCall import Resp as RespCallResp
from extproc.apisix.fbs.A6.PrepareConf import Req as PrepareConfReq
from extproc.apisix.fbs.A6.PrepareConf import Resp as PrepareConfResp

MAX_PAYLOAD: Final = (1 << 24) - 1
HEADER: Final = struct.Struct(">I")


class RpcType(enum.IntEnum):
    """The first byte of a frame (apisix/constants.lua)."""

    ERROR = 0
    PREPARE_CONF = 1
    HTTP_REQ_CALL = 2
    EXTRA_INFO = 3
    HTTP_RESP_CALL = 4


class ErrorCode(enum.IntEnum):
    """`A6.Err.Code`: what a type-0 frame says went wrong."""

    BAD_REQUEST = 0
    SERVICE_UNAVAILABLE = 1
    # APISIX flushes its token caches, sends PrepareConf again and retries the call.
    CONF_TOKEN_NOT_FOUND = 2


# `A6.Method`, by position.
METHODS: Final = (
    "GET", "HEAD", "POST", "PUT", "DELETE", "MKCOL", "COPY", "MOVE",
    "OPTIONS", "PROPFIND", "PROPPATCH", "LOCK", "UNLOCK", "PATCH", "TRACE",
)  # fmt: skip
METHOD_CODES: Final = {name: code for code, name in enumerate(METHODS)}


class FrameError(Exception):
    """The byte stream is not a frame any more (short header, truncated data, too large)."""


class MalformedMessage(Exception):
    """A complete frame whose payload is not the flatbuffer its type promises."""


# -- frames ------------------------------------------------------------------------------------


def encode_frame(rpc_type: int, payload: bytes) -> bytes:
    if len(payload) > MAX_PAYLOAD:
        raise FrameError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return HEADER.pack((rpc_type << 24) | len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes] | None:
    """The next frame, read to its full length; None when the peer closed between frames."""
    try:
        header = await reader.readexactly(4)
    except asyncio.IncompleteReadError as error:
        if not error.partial:
            return None
        raise FrameError(f"header too short ({len(error.partial)} of 4 bytes)") from None
    (word,) = HEADER.unpack(header)
    length = word & MAX_PAYLOAD
    if length == 0:
        return word >> 24, b""
    try:
        payload = await reader.readexactly(length)
    except asyncio.IncompleteReadError as error:
        raise FrameError(f"data truncated ({len(error.partial)} of {length} bytes)") from None
    return word >> 24, payload


# -- values ------------------------------------------------------------------------------------

# Name and value; None is an absent value (a bare query flag, or "delete" in a rewrite).
Entry = tuple[str, str | None]


@dataclass(frozen=True, slots=True)
class PrepareConf:
    """APISIX → runner: a route's runner-plugin configuration, to exchange for a token."""

    conf: tuple[tuple[str, str], ...]
    key: str


@dataclass(frozen=True, slots=True)
class HttpRequestCall:
    """APISIX → runner: a request's line and headers (the body only through ExtraInfo)."""

    id: int
    src_ip: bytes
    method: str
    path: str
    args: tuple[Entry, ...]
    headers: tuple[tuple[str, str], ...]
    conf_token: int

    @property
    def client_address(self) -> str:
        return str(ipaddress.ip_address(self.src_ip)) if len(self.src_ip) in (4, 16) else ""


@dataclass(frozen=True, slots=True)
class Stop:
    """Runner → APISIX: answer the client now. Status 0 is answered as 200."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Rewrite:
    """Runner → APISIX: change the request before it goes upstream (and response headers)."""

    path: str | None = None
    headers: tuple[Entry, ...] = ()
    args: tuple[Entry, ...] = ()
    resp_headers: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class HttpRequestCallReply:
    """Runner → APISIX: the action for a request; None passes it on unchanged."""

    id: int
    action: Stop | Rewrite | None = None


@dataclass(frozen=True, slots=True)
class HttpResponseCall:
    """APISIX → runner (post-resp): the upstream's status and headers."""

    id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    conf_token: int


@dataclass(frozen=True, slots=True)
class HttpResponseCallReply:
    """Runner → APISIX: status 0 keeps the upstream's; a non-empty body replaces its body."""

    id: int
    status: int = 0
    headers: tuple[Entry, ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class VarInfo:
    """Ask for an nginx variable."""

    name: str


@dataclass(frozen=True, slots=True)
class RequestBodyInfo:
    """Ask for the whole request body."""


@dataclass(frozen=True, slots=True)
class ResponseBodyInfo:
    """Ask for the whole upstream response body (post-resp only)."""


ExtraInfo = VarInfo | RequestBodyInfo | ResponseBodyInfo


# -- runner side: decode what APISIX sends, encode the answers ---------------------------------


def decode_prepare_conf(payload: bytes) -> PrepareConf:
    with _malformed("PrepareConf"):
        req = PrepareConfReq.Req.GetRootAs(payload, 0)
        conf = tuple(
            (_text(entry.Name()), _text(entry.Value()))
            for entry in (req.Conf(i) for i in range(req.ConfLength()))
        )
        return PrepareConf(conf=conf, key=_text(req.Key()))


def decode_http_request_call(payload: bytes) -> HttpRequestCall:
    with _malformed("HTTPReqCall"):
        call_id, src_ip, method, path, args, headers, conf_token = flat.fields(
            payload, flat.root(payload), 7
        )
        code = flat.u8(payload, method)
        return HttpRequestCall(
            id=flat.u32(payload, call_id),
            src_ip=flat.byte_string(payload, src_ip) or b"",
            method=METHODS[code] if code < len(METHODS) else "",
            path=flat.text(payload, path),
            args=tuple(flat.entries(payload, args, headers=False)),
            headers=flat.headers(payload, headers),
            conf_token=flat.u32(payload, conf_token),
        )


def decode_http_response_call(payload: bytes) -> HttpResponseCall:
    with _malformed("HTTPRespCall"):
        call_id, status, headers, conf_token = flat.fields(payload, flat.root(payload), 4)
        return HttpResponseCall(
            id=flat.u32(payload, call_id),
            status=flat.u16(payload, status),
            headers=flat.headers(payload, headers),
            conf_token=flat.u32(payload, conf_token),
        )


def decode_extra_info_reply(payload: bytes) -> bytes | None:
    """The ExtraInfo answer; None when APISIX had no value (a missing variable)."""
    with _malformed("ExtraInfo.Resp"):
        (result,) = flat.fields(payload, flat.root(payload), 1)
        return flat.byte_string(payload, result)


def encode_prepare_conf_reply(token: int) -> bytes:
    builder = flatbuffers.Builder(32)
    PrepareConfResp.Start(builder)
    PrepareConfResp.AddConfToken(builder, token)
    return _finish(builder, PrepareConfResp.End(builder))


def encode_error(code: ErrorCode) -> bytes:
    builder = flatbuffers.Builder(16)
    ErrResp.Start(builder)
    ErrResp.AddCode(builder, code)
    return _finish(builder, ErrResp.End(builder))


@functools.lru_cache(maxsize=64)
def encode_extra_info_request(info: ExtraInfo) -> bytes:
    """Cached: a runner asks for the same few things (`$request_id`, the bodies) every call."""
    builder = flatbuffers.Builder(64)
    if isinstance(info, VarInfo):
        name = builder.CreateString(info.name)
        ExtraInfoVar.Start(builder)
        ExtraInfoVar.AddName(builder, name)
        table, kind = ExtraInfoVar.End(builder), InfoKind.Info.Var
    elif isinstance(info, RequestBodyInfo):
        ExtraInfoReqBody.Start(builder)
        table, kind = ExtraInfoReqBody.End(builder), InfoKind.Info.ReqBody
    else:
        ExtraInfoRespBody.Start(builder)
        table, kind = ExtraInfoRespBody.End(builder), InfoKind.Info.RespBody
    ExtraInfoReq.Start(builder)
    ExtraInfoReq.AddInfoType(builder, kind)
    ExtraInfoReq.AddInfo(builder, table)
    return _finish(builder, ExtraInfoReq.End(builder))


def encode_http_request_call_reply(reply: HttpRequestCallReply) -> bytes:
    # Written directly (see `flat`): Resp{id 0, action_type 1, action 2},
    # Stop{status 0, headers 1, body 2}, Rewrite{path 0, headers 1, args 2, resp_headers 3, body 4}.
    writer = flat.Writer()
    action = reply.action
    if action is None:
        writer.table(words=((0, reply.id),))
        return writer.finish()
    kind = ActionKind.Action.Stop if isinstance(action, Stop) else ActionKind.Action.Rewrite
    _, resp_fields = writer.table(words=((0, reply.id),), byte_fields=((1, kind),), references=(2,))
    if isinstance(action, Stop):
        stop_slots = (1, 2) if action.body else (1,)
        start, fields = writer.table(halves=((0, action.status),), references=stop_slots)
        writer.point(resp_fields[2], start)
        writer.entries(fields[1], action.headers, headers=True)
        if action.body:
            writer.byte_vector(fields[2], action.body)
        return writer.finish()
    vectors: list[tuple[int, Sequence[Entry], bool]] = []
    if action.headers:
        vectors.append((1, action.headers, True))
    if action.args:
        vectors.append((2, action.args, False))
    if action.resp_headers:
        vectors.append((3, action.resp_headers, True))
    slots = [slot for slot, _, _ in vectors]
    if action.path is not None:
        slots.append(0)
    if action.body is not None:
        slots.append(4)
    start, fields = writer.table(references=slots)
    writer.point(resp_fields[2], start)
    if action.path is not None:
        writer.string(fields[0], action.path.encode("utf-8", "surrogateescape"))
    for slot, entries, headers in vectors:
        writer.entries(fields[slot], entries, headers=headers)
    if action.body is not None:
        writer.byte_vector(fields[4], action.body)
    return writer.finish()


def encode_http_response_call_reply(reply: HttpResponseCallReply) -> bytes:
    # Written directly (see `flat`): Resp{id 0, status 1, headers 2, body 3}.
    writer = flat.Writer()
    slots: tuple[int, ...] = (2,) if reply.headers else ()
    if reply.body:
        slots += (3,)
    _, fields = writer.table(words=((0, reply.id),), halves=((1, reply.status),), references=slots)
    if reply.headers:
        writer.entries(fields[2], reply.headers, headers=True)
    if reply.body:
        writer.byte_vector(fields[3], reply.body)
    return writer.finish()


# -- APISIX side (the harness): encode what APISIX sends, decode the answers ------------------


def encode_prepare_conf(message: PrepareConf) -> bytes:
    builder = flatbuffers.Builder(256)
    key = builder.CreateString(message.key)
    conf = _entries(builder, message.conf) if message.conf else None
    PrepareConfReq.Start(builder)
    PrepareConfReq.AddKey(builder, key)
    if conf is not None:
        PrepareConfReq.AddConf(builder, conf)
    return _finish(builder, PrepareConfReq.End(builder))


def encode_http_request_call(message: HttpRequestCall) -> bytes:
    builder = flatbuffers.Builder(512)
    src_ip = builder.CreateByteVector(message.src_ip)
    path = builder.CreateString(message.path)
    args = _entries(builder, message.args)
    headers = _entries(builder, message.headers, latin1=True)
    ReqCallReq.Start(builder)
    ReqCallReq.AddId(builder, message.id)
    ReqCallReq.AddConfToken(builder, message.conf_token)
    ReqCallReq.AddSrcIp(builder, src_ip)
    ReqCallReq.AddPath(builder, path)
    ReqCallReq.AddArgs(builder, args)
    ReqCallReq.AddHeaders(builder, headers)
    ReqCallReq.AddMethod(builder, METHOD_CODES[message.method])
    return _finish(builder, ReqCallReq.End(builder))


def encode_http_response_call(message: HttpResponseCall) -> bytes:
    builder = flatbuffers.Builder(512)
    headers = _entries(builder, message.headers, latin1=True)
    RespCallReq.Start(builder)
    RespCallReq.AddId(builder, message.id)
    RespCallReq.AddStatus(builder, message.status)
    RespCallReq.AddHeaders(builder, headers)
    RespCallReq.AddConfToken(builder, message.conf_token)
    return _finish(builder, RespCallReq.End(builder))


def encode_extra_info_reply(result: bytes | None) -> bytes:
    builder = flatbuffers.Builder(64 + len(result or b""))
    vector = builder.CreateByteVector(result) if result is not None else None
    ExtraInfoResp.Start(builder)
    if vector is not None:
        ExtraInfoResp.AddResult(builder, vector)
    return _finish(builder, ExtraInfoResp.End(builder))


def decode_prepare_conf_reply(payload: bytes) -> int:
    with _malformed("PrepareConf.Resp"):
        token: int = PrepareConfResp.Resp.GetRootAs(payload, 0).ConfToken()
        return token


def decode_error(payload: bytes) -> ErrorCode:
    with _malformed("Err.Resp"):
        return ErrorCode(ErrResp.Resp.GetRootAs(payload, 0).Code())


def decode_extra_info_request(payload: bytes) -> ExtraInfo:
    with _malformed("ExtraInfo.Req"):
        req = ExtraInfoReq.Req.GetRootAs(payload, 0)
        kind, table = req.InfoType(), req.Info()
        if kind == InfoKind.Info.Var and table is not None:
            var = ExtraInfoVar.Var()
            var.Init(table.Bytes, table.Pos)
            return VarInfo(_text(var.Name()))
        if kind == InfoKind.Info.ReqBody:
            return RequestBodyInfo()
        if kind == InfoKind.Info.RespBody:
            return ResponseBodyInfo()
        raise MalformedMessage(f"unsupported ExtraInfo type {kind}")


def decode_http_request_call_reply(payload: bytes) -> HttpRequestCallReply:
    with _malformed("HTTPReqCall.Resp"):
        resp = ReqCallResp.Resp.GetRootAs(payload, 0)
        kind, table = resp.ActionType(), resp.Action()
        action: Stop | Rewrite | None = None
        if kind == ActionKind.Action.Stop and table is not None:
            stop = ReqCallStop.Stop()
            stop.Init(table.Bytes, table.Pos)
            action = Stop(
                status=stop.Status(),
                headers=tuple(_header(stop.Headers(i)) for i in range(stop.HeadersLength())),
                body=_byte_vector(stop, 8),
            )
        elif kind == ActionKind.Action.Rewrite and table is not None:
            rewrite = ReqCallRewrite.Rewrite()
            rewrite.Init(table.Bytes, table.Pos)
            path = rewrite.Path()
            action = Rewrite(
                path=None if path is None else _text(path),
                headers=tuple(
                    _entry(rewrite.Headers(i), latin1=True) for i in range(rewrite.HeadersLength())
                ),
                args=tuple(_entry(rewrite.Args(i)) for i in range(rewrite.ArgsLength())),
                resp_headers=tuple(
                    _header(rewrite.RespHeaders(i)) for i in range(rewrite.RespHeadersLength())
                ),
                body=None if rewrite.BodyIsNone() else _byte_vector(rewrite, 12),
            )
        return HttpRequestCallReply(id=resp.Id(), action=action)


def decode_http_response_call_reply(payload: bytes) -> HttpResponseCallReply:
    with _malformed("HTTPRespCall.Resp"):
        resp = RespCallResp.Resp.GetRootAs(payload, 0)
        return HttpResponseCallReply(
            id=resp.Id(),
            status=resp.Status(),
            headers=tuple(
                _entry(resp.Headers(i), latin1=True) for i in range(resp.HeadersLength())
            ),
            body=_byte_vector(resp, 10),
        )


# -- helpers -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _malformed(what: str) -> Iterator[None]:
    """Turns any decoding failure into MalformedMessage: a flatbuffer read past its end raises
    struct.error, IndexError, UnicodeDecodeError...; which one depends on where the garbage is."""
    try:
        yield
    except MalformedMessage:
        raise
    except Exception as error:
        raise MalformedMessage(f"malformed {what}: {error!r}") from error


def _text(raw: bytes | None) -> str:
    return raw.decode("utf-8", "surrogateescape") if raw is not None else ""


def _entry(entry: Any, *, latin1: bool = False) -> Entry:
    name, value = entry.Name(), entry.Value()
    if latin1:
        return _text(name).lower(), None if value is None else value.decode("latin-1")
    return _text(name), None if value is None else _text(value)


def _header(entry: Any) -> tuple[str, str]:
    value = entry.Value()
    return _text(entry.Name()).lower(), "" if value is None else value.decode("latin-1")


def _byte_vector(table: Any, slot: int) -> bytes:
    """A [ubyte] field as bytes, sliced in one go (the generated accessors read byte by byte)."""
    tab = table._tab
    offset = tab.Offset(slot)
    if offset == 0:
        return b""
    start = tab.Vector(offset)
    return bytes(tab.Bytes[start : start + tab.VectorLen(offset)])


def _entries(
    builder: flatbuffers.Builder, entries: Sequence[Entry], *, latin1: bool = False
) -> int:
    offsets = []
    for name, value in entries:
        name_offset = builder.CreateString(name)
        value_offset = None
        if value is not None:
            value_offset = builder.CreateString(
                value.encode("latin-1") if latin1 else value.encode("utf-8", "surrogateescape")
            )
        TextEntry.Start(builder)
        TextEntry.AddName(builder, name_offset)
        if value_offset is not None:
            TextEntry.AddValue(builder, value_offset)
        offsets.append(TextEntry.End(builder))
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    vector: int = builder.EndVector()
    return vector


def _finish(builder: flatbuffers.Builder, root: int) -> bytes:
    builder.Finish(root)
    return bytes(builder.Output())
