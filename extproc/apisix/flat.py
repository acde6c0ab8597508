"""Flatbuffers read and written directly, for the runner's hot path.

The flatc-generated Python bindings read a field through five or six calls (vtable lookup,
`enforce_number`, one `Get` per scalar) and the `flatbuffers.Builder` writes byte by byte; for
the handful of tables the runner reads and writes on every call, that was most of its own time.
This module reads those tables with one `struct` call per vtable and per field, and writes the
replies front to back into one `bytearray`. The format is flatbuffers' own (little-endian; a
table starts with a signed offset back to its vtable; strings and vectors are a uint32 length
then the data; every reference is an unsigned offset forward from where it is stored), so any
flatbuffers reader — APISIX's Lua one, the generated bindings the harness uses — reads the
result. The generated bindings stay the reference: the tests check this module against them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final

_U32: Final = struct.Struct("<I")
_I32: Final = struct.Struct("<i")
_U16: Final = struct.Struct("<H")
_u32_at = _U32.unpack_from
_i32_at = _I32.unpack_from
_u16_at = _U16.unpack_from

# Name and value; None is an absent value.
Entry = tuple[str, str | None]


# -- reading -----------------------------------------------------------------------------------


def root(buf: bytes) -> int:
    """Where the root table starts (no size prefix, no file identifier)."""
    position: int = _u32_at(buf, 0)[0]
    return position


def fields(buf: bytes, table: int, slots: int) -> tuple[int, ...]:
    """Each slot's absolute field position, 0 where the field is absent."""
    vtable: int = table - _i32_at(buf, table)[0]
    present: int = min((_u16_at(buf, vtable)[0] - 4) >> 1, slots)
    offsets: tuple[int, ...] = (
        struct.unpack_from(f"<{present}H", buf, vtable + 4) if present > 0 else ()
    )
    return tuple(table + o if o else 0 for o in offsets) + (0,) * (slots - max(present, 0))


def u32(buf: bytes, field: int) -> int:
    value: int = _u32_at(buf, field)[0] if field else 0
    return value


def u16(buf: bytes, field: int) -> int:
    value: int = _u16_at(buf, field)[0] if field else 0
    return value


def u8(buf: bytes, field: int) -> int:
    return buf[field] if field else 0


def target(buf: bytes, field: int) -> int:
    """Where a reference field (string, vector, table) points."""
    position: int = field + _u32_at(buf, field)[0]
    return position


def byte_string(buf: bytes, field: int) -> bytes | None:
    """A string or [ubyte] field; None when absent."""
    if not field:
        return None
    start = field + _u32_at(buf, field)[0]
    length = _u32_at(buf, start)[0]
    return bytes(buf[start + 4 : start + 4 + length])


def text(buf: bytes, field: int) -> str:
    """A string field as text ("" when absent); undecodable bytes survive as surrogates."""
    if not field:
        return ""
    start = field + _u32_at(buf, field)[0]
    length = _u32_at(buf, start)[0]
    return str(buf[start + 4 : start + 4 + length], "utf-8", "surrogateescape")


def headers(buf: bytes, field: int) -> tuple[tuple[str, str], ...]:
    """A [TextEntry] field of headers: names lower-cased, values latin-1 ("" when absent)."""
    return tuple(
        (name, "" if value is None else value) for name, value in entries(buf, field, headers=True)
    )


def entries(buf: bytes, field: int, *, headers: bool) -> list[Entry]:
    """A [TextEntry] field. As headers: names lower-cased and values latin-1 (any byte
    survives); otherwise both as text."""
    if not field:
        return []
    vector = field + _u32_at(buf, field)[0]
    count = _u32_at(buf, vector)[0]
    result: list[Entry] = []
    append = result.append
    value_codec = "latin-1" if headers else "utf-8"
    value_errors = "strict" if headers else "surrogateescape"
    slot = vector + 4
    for _ in range(count):
        table = slot + _u32_at(buf, slot)[0]
        slot += 4
        vtable = table - _i32_at(buf, table)[0]
        vtable_size = _u16_at(buf, vtable)[0]
        name_offset = _u16_at(buf, vtable + 4)[0] if vtable_size > 4 else 0
        value_offset = _u16_at(buf, vtable + 6)[0] if vtable_size > 6 else 0
        if name_offset:
            name_field = table + name_offset
            start = name_field + _u32_at(buf, name_field)[0]
            end = start + 4 + _u32_at(buf, start)[0]
            name = str(buf[start + 4 : end], "utf-8", "surrogateescape")
            if headers:
                name = name.lower()
        else:
            name = ""
        if value_offset:
            value_field = table + value_offset
            start = value_field + _u32_at(buf, value_field)[0]
            end = start + 4 + _u32_at(buf, start)[0]
            append((name, str(buf[start + 4 : end], value_codec, value_errors)))
        else:
            append((name, None))
    return result


# -- writing -----------------------------------------------------------------------------------

# The two TextEntry vtables (with and without a value), written once per vector.
_ENTRY_VTABLES: Final = struct.pack("<HHHHHHH", 8, 12, 4, 8, 6, 8, 4) + b"\0\0"
_WITH_VALUE_AT: Final = 0
_NAME_ONLY_AT: Final = 8


class Writer:
    """One flatbuffer, written front to back: the root offset, then the root table, then what
    it refers to. `table` leaves reference fields to `refer`, which points them at what is
    written next, so every reference points forward as flatbuffers requires."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        # The root offset, filled in by the first table.
        self.buf = bytearray(4)

    def table(
        self,
        words: Sequence[tuple[int, int]] = (),
        halves: Sequence[tuple[int, int]] = (),
        byte_fields: Sequence[tuple[int, int]] = (),
        references: Sequence[int] = (),
    ) -> tuple[int, dict[int, int]]:
        """Writes a table of (slot, value) uint32, uint16 and uint8 fields, with room for the
        reference fields in `references` (slots). Returns where the table starts and where each
        reference field is, to be set by `refer` or `point`. The first table is the root."""
        self._align()
        buf = self.buf
        slots = 1 + max((slot for slot, _ in (*words, *halves, *byte_fields)), default=-1)
        slots = max(slots, 1 + max(references, default=-1))
        offsets = [0] * slots
        at = 4
        for slot, _ in words:
            offsets[slot] = at
            at += 4
        for slot in references:
            offsets[slot] = at
            at += 4
        for slot, _ in halves:
            offsets[slot] = at
            at += 2
        for slot, _ in byte_fields:
            offsets[slot] = at
            at += 1
        size = (at + 3) & ~3
        # The vtable goes right before the table, which must start 4-aligned.
        vtable_size = 4 + 2 * slots
        if vtable_size & 3:
            buf += b"\0\0"
        vtable = len(buf)
        buf += struct.pack(f"<HH{slots}H", vtable_size, size, *offsets)
        start = len(buf)
        buf += bytes(size)
        _I32.pack_into(buf, start, start - vtable)
        for slot, value in words:
            _U32.pack_into(buf, start + offsets[slot], value)
        for slot, value in halves:
            _U16.pack_into(buf, start + offsets[slot], value)
        for slot, value in byte_fields:
            buf[start + offsets[slot]] = value
        if not _u32_at(buf, 0)[0]:
            _U32.pack_into(buf, 0, start)
        return start, {slot: start + offsets[slot] for slot in references}

    def point(self, field: int, position: int) -> None:
        """Points a reference field at something already written after it (a table)."""
        _U32.pack_into(self.buf, field, position - field)

    def refer(self, field: int) -> None:
        """Points a reference field at what is written next (4-aligned)."""
        self._align()
        _U32.pack_into(self.buf, field, len(self.buf) - field)

    def string(self, field: int, value: bytes) -> None:
        self.refer(field)
        buf = self.buf
        buf += _U32.pack(len(value))
        buf += value
        buf += b"\0"

    def byte_vector(self, field: int, value: bytes) -> None:
        self.refer(field)
        buf = self.buf
        buf += _U32.pack(len(value))
        buf += value

    def entries(self, field: int, values: Sequence[Entry], *, headers: bool) -> None:
        """A [TextEntry] vector: values latin-1 as headers, else UTF-8 (surrogates restored)."""
        buf = self.buf
        self._align()
        vtables = len(buf)
        buf += _ENTRY_VTABLES
        self.refer(field)
        vector = len(buf)
        buf += _U32.pack(len(values))
        buf += bytes(4 * len(values))
        for index, (name, value) in enumerate(values):
            slot = vector + 4 + 4 * index
            start = len(buf)
            _U32.pack_into(buf, slot, start - slot)
            name_bytes = name.encode("utf-8", "surrogateescape")
            if value is None:
                buf += struct.pack("<iI", start - vtables - _NAME_ONLY_AT, 4)
            else:
                value_bytes = value.encode("latin-1" if headers else "utf-8", "surrogateescape")
                padded = (len(name_bytes) + 4) & ~3
                buf += struct.pack("<iII", start - vtables - _WITH_VALUE_AT, 8, 8 + 4 + padded - 4)
                buf += _U32.pack(len(name_bytes))
                buf += name_bytes
                buf += b"\0" * (padded - len(name_bytes))
                buf += _U32.pack(len(value_bytes))
                buf += value_bytes
                buf += b"\0"
                self._align()
                continue
            buf += _U32.pack(len(name_bytes))
            buf += name_bytes
            buf += b"\0"
            self._align()

    def finish(self) -> bytes:
        return bytes(self.buf)

    def _align(self) -> None:
        pad = -len(self.buf) & 3
        if pad:
            self.buf += b"\0" * pad
